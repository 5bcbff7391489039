"""Store a casacore table (with its subtables) in a zarr v3 group and restore it bit for bit.

The group layout, attributes and checksums are specified in ``formats/zarr.md`` (section "Table
groups"). Entry points: :func:`encode_table`, :func:`decode_table`, :func:`verify_table`,
:func:`table_content_sha256`, :class:`RawTableRequired` (a table to keep as raw files),
:func:`worker_session`, :func:`in_session` and :func:`run_in_worker` (casacore writes in a
worker process),
:func:`remembered_codec_choices` (the columns of a run's tables choose their codec once) and
:func:`decide_codecs` (those choices made ahead, by a cluster's client).

Nothing is imported until it is asked for: the casacore worker process
(``python -m factor_archive.ms.casacore_table.worker``) imports this package first and must
start quickly, with numpy and casacore only.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .codec_choice import remembered_codec_choices
    from .common import FORMAT, FORMAT_VERSION, CorruptTableData, RawTableRequired
    from .decode import decode_table
    from .encode import decide_codecs, encode_table, table_content_sha256
    from .pipeline import PipelineSettings
    from .verify import verify_table
    from .worker_client import in_session, run_in_worker, worker_session

_EXPORTS = {
    "encode_table": "encode", "decide_codecs": "encode", "table_content_sha256": "encode", "decode_table": "decode",
    "verify_table": "verify", "RawTableRequired": "common", "CorruptTableData": "common",
    "FORMAT": "common", "FORMAT_VERSION": "common", "worker_session": "worker_client",
    "run_in_worker": "worker_client", "in_session": "worker_client", "PipelineSettings": "pipeline",
    "remembered_codec_choices": "codec_choice",
}

__all__ = ["FORMAT", "FORMAT_VERSION", "CorruptTableData", "PipelineSettings", "RawTableRequired", "decide_codecs",
           "decode_table", "encode_table", "in_session", "remembered_codec_choices", "run_in_worker",
           "table_content_sha256", "verify_table", "worker_session"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
