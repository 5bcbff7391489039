"""Where whole archive files (tar volumes) are kept: a local directory or an object-store prefix.

One small interface, as fsspec gives one filesystem interface for local disks and S3, so that
the tar form's volumes, its resumable writes and its ranged reads are written once and work the
same on both. A blob is one file or object, named by a plain name (no ``/``) under a location.
Implementations: a local directory (``containers.tar``) and an S3 prefix (``io.objectstore``).
"""

from __future__ import annotations

from typing import BinaryIO, Protocol


class BlobWriter(Protocol):
    """One blob being written, never seeking; it becomes visible under its name only at commit."""

    name: str                   # the final path or URL, for messages
    file: BinaryIO | None       # a real local file opened "w+b" (kernel copies, page-cache
    #                             hashing), or None for an object store: then only write() works

    def write(self, data: bytes | bytearray | memoryview) -> int: ...

    def commit(self) -> None:
        """Make the blob durable, then visible under its name in one step (rename, or the
        completion of a multipart upload)."""

    def abort(self) -> None:
        """Remove everything written; nothing appears under the name."""


class BlobStore(Protocol):
    """A location holding blobs: a directory, or an object-store prefix."""

    location: str               # the directory or URL prefix, for messages

    def create(self, name: str) -> BlobWriter: ...

    def open(self, name: str) -> BinaryIO:
        """A seekable, read-only file over the blob (ranged reads on an object store);
        FileNotFoundError when there is no such blob, as the built-in open says."""

    def size(self, name: str) -> int | None:
        """The blob's size in bytes, or None when there is no such blob."""

    def names(self) -> list[str]:
        """The names of the blobs directly at this location, sorted."""

    def remove(self, name: str) -> None: ...
