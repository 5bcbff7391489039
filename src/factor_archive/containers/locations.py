"""Where an archive is: the one parser for what users type as an archive or output location.

``-`` is standard input or output; ``scheme://...`` is an object-store URL (it needs a bucket);
anything else is a local path (``.tar``, ``.zarr``, ``.zarr.zip``, a directory ...). Which form
a location holds or gets is the registry's business (``containers.registry``), by suffix when
writing and by content when reading.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInput

STDIO = "-"


@dataclass(frozen=True)
class Location:
    """An archive location as typed (``text``) and what it is."""

    text: str
    kind: str                       # "stdio", "path" or "url"
    path: Path | None = None        # absolute, for a local path
    url: str | None = None          # without a trailing "/", for a URL
    scheme: str | None = None       # lower case, for a URL

    @property
    def is_local(self) -> bool:
        return self.kind == "path"

    def local_path(self) -> Path:
        """The absolute path of a local location (an internal error for the others)."""
        assert self.path is not None, f"{self.text}: not a local path"
        return self.path

    def has_suffix(self, suffix: str) -> bool:
        """Whether a local path's or a URL's name ends with ``suffix`` (case-insensitive)."""
        return self.kind in ("path", "url") and self.text.rstrip("/").lower().endswith(suffix)

    def parent_and_name(self) -> tuple[str, str]:
        """A URL's prefix and last name (``s3://b/runs/run.tar`` -> ``s3://b/runs``, ``run.tar``)."""
        assert self.url is not None, f"{self.text}: not a URL"
        parent, _slash, name = self.url.rpartition("/")
        if not name or parent.endswith(":/"):
            raise BadInput(f"{self.text}: needs a bucket and a name (s3://bucket/run.tar)")
        return parent, name


def parse_location(text: str | os.PathLike[str]) -> Location:
    """The one place that tells ``-``, URLs and local paths apart."""
    text = os.fspath(text)
    if text == STDIO:
        return Location(text, "stdio")
    if "://" in text:
        scheme, _sep, rest = text.partition("://")
        if not rest.strip("/"):
            raise BadInput(f"{text}: an object-store URL needs a bucket (s3://bucket/prefix)")
        return Location(text, "url", url=text.rstrip("/"), scheme=scheme.lower())
    return Location(text, "path", path=Path(os.path.abspath(text)))
