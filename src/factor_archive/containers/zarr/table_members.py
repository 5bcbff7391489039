"""A table member of a zarr archive decoded into a casacore table: by the reader itself, or by a
casacore worker process of a restore (worker.RUN), which opens a local store on its own.

Light on purpose: a worker reads the store without zarr (``ms.casacore_table.local_store``), so
it imports neither zarr nor the rest of the reader, about 0.3 s of CPU less for each worker, spent
while the first tables wait (benchmarks/README.md, seventh session).
"""

from __future__ import annotations

import gc
import posixpath
from pathlib import Path
from typing import Any

from ...errors import DamagedArchive, FactorArchiveError
from ...io.copy import Progress, no_progress
from ...io.failures import io_error
from ...manifest import Member
from ...ms.casacore_table.pipeline import PipelineSettings
from .layout import node_path


def member_node(root: Any, origin: str, member: Member) -> Any:
    """The member's node below the store's root group; a missing or unreadable one is damage."""
    try:
        return root[node_path(member.path)]
    except KeyError:
        raise DamagedArchive(f"{origin}: {member.path}: member missing from the archive") from None
    except Exception as exc:
        raise DamagedArchive(f"{origin}: {member.path}: metadata damaged ({what_failed(exc)})") from None


def decode_member(root: Any, origin: str, member: Member, out: Path, progress: Progress,
                  settings: PipelineSettings) -> None:
    """The member's table decoded at ``out``, its checksums checked."""
    from ...ms.casacore_table import decode_table
    from ...ms.casacore_table.worker_client import _full_disk_note

    group = member_node(root, origin, member)
    content = group.attrs.get("casacore_content") or {}
    if not isinstance(content, dict) or content.get("content_sha256") != member.sha256:
        raise FactorArchiveError(f"{origin}: {member.path}: table checksum in the store differs "
                                 f"from the manifest (archive damaged)")
    try:
        decode_table(group, out, progress=progress, settings=settings)
    except FactorArchiveError as exc:
        raise FactorArchiveError(name_in_archive(origin, member, str(exc))) from None
    except RuntimeError as exc:  # casacore's, writing the table or reading it back
        text = _full_disk_note(" ".join(str(exc).split()), str(out))
        raise FactorArchiveError(name_in_archive(origin, member, f"{type(exc).__name__}: {text}")) from None


def name_in_archive(origin: str, member: Member, message: str) -> str:
    """``message`` (which may begin with the table's own name) naming the member in the archive."""
    base = posixpath.basename(member.path)
    if message.startswith(base):
        message = posixpath.dirname(member.path) + ("/" if "/" in member.path else "") + message
    else:
        message = f"{member.path}: {message}"
    return f"{origin}: {message}"


def stored_damage(origin: str, what: str, exc: BaseException) -> DamagedArchive:
    """An unexpected error reading ``what`` from the store: its stored bytes are damaged."""
    return DamagedArchive(f"{origin}: {what}: stored data is damaged ({what_failed(exc)})")


def what_failed(exc: BaseException) -> str:
    """The first line of an unexpected library error, with its kind (``BadZipFile: ...``)."""
    text = str(exc).strip()
    line = text.splitlines()[0][:200] if text else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


# -- in a casacore worker ----------------------------------------------------------------------

_roots: dict[str, Any] = {}  # the stores this worker decodes from: their root groups


def prepare_decoding(store: str) -> None:
    """Run by a casacore worker started ahead (worker.RUN): the imports and the store opening
    that decode_stored_table needs, made while the parent still starts."""
    _root_here(store)


def _root_here(store: str) -> Any:
    """The root group of the local store ``store``, opened once, with the codec imported. The
    objects made so far (modules, mostly) are then frozen out of the garbage collector's passes:
    decoding allocates often, and the passes over the imported modules' objects took 5-9 % of a
    chunk MS's decoding CPU (perf)."""
    root = _roots.get(store)
    if root is None:
        from ...ms.casacore_table import decode  # noqa: F401  (casacore, the codec)
        from ...ms.casacore_table.local_store import open_group

        try:
            root = open_group(store)
        except FileNotFoundError:
            raise DamagedArchive(f"{store}: not a zarr store any more (no zarr.json)") from None
        except ValueError as exc:
            raise DamagedArchive(f"{store}: not a readable zarr v3 store ({exc})") from None
        _roots[store] = root
        gc.freeze()
    return root


def decode_stored_table(store: str, out: str, member: Member, settings: PipelineSettings, *,
                        progress: Progress = no_progress) -> None:
    """Run by a casacore worker process (worker.RUN): ``member``'s table, from the local zarr
    store at ``store``, decoded at ``out``; errors as ZarrReader._extract_one names them."""
    root = _root_here(store)
    try:
        decode_member(root, store, member, Path(out), progress, settings)
    except FactorArchiveError:
        raise
    except OSError as exc:
        raise io_error(exc.filename or out, exc) from None
    except Exception as exc:
        raise stored_damage(store, member.path, exc) from None
