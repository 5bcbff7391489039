"""Blobs in a local directory: the ``io.blobs`` interface over plain files.

A blob is written to ``.NAME.partial-PID`` opened "w+b" (so the tar writer can copy into it with
copy_file_range and hash it back from the page cache), made durable with fsync and published
under NAME by a link or rename; partials of killed runs are removed when a blob of that name is
next created.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import BinaryIO

from ...errors import BadInput
from ...io.durable import fsync_dir
from ...io.failures import io_error
from ...io.leftovers import remove_stale_partials


class LocalBlobWriter:
    """One file being written under a temporary name; visible under its name only at commit."""

    def __init__(self, directory: Path, name: str, clobber: bool) -> None:
        self.final = directory / name
        self.name = str(self.final)
        self.partial = directory / f".{name}.partial-{os.getpid()}"
        self._clobber = clobber
        try:
            self.file: BinaryIO | None = open(self.partial, "w+b")  # noqa: SIM115 - ours until commit/abort
        except OSError as exc:
            raise io_error(self.partial, exc) from None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        assert self.file is not None
        return self.file.write(data)

    def commit(self) -> None:
        assert self.file is not None
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        if self._clobber:
            os.replace(self.partial, self.final)
        else:
            self._link_without_replacing()
        fsync_dir(self.final.parent)

    def abort(self) -> None:
        try:
            if self.file is not None:
                self.file.close()
        except OSError:
            pass
        try:
            os.unlink(self.partial)
        except FileNotFoundError:
            pass

    def _link_without_replacing(self) -> None:
        """Publish the partial, failing instead of replacing a file that appeared meanwhile."""
        try:
            os.link(self.partial, self.final)
        except FileExistsError:
            os.unlink(self.partial)
            raise BadInput(f"{self.final}: appeared while archiving; not replaced") from None
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                raise
            if os.path.lexists(self.final):
                os.unlink(self.partial)
                raise BadInput(f"{self.final}: appeared while archiving; not replaced") from None
            os.rename(self.partial, self.final)
        else:
            os.unlink(self.partial)


class LocalBlobs:
    """A local directory as a ``BlobStore``; ``notices`` collects the leftovers it removed."""

    def __init__(self, directory: str | os.PathLike, *, clobber: bool = False) -> None:
        self.directory = Path(directory)
        self.location = str(self.directory)
        self.clobber = clobber
        self.notices: list[str] = []

    def create(self, name: str) -> LocalBlobWriter:
        self.notices += remove_stale_partials(self.directory / name, ("partial",))
        return LocalBlobWriter(self.directory, name, self.clobber)

    def open(self, name: str) -> BinaryIO:
        return open(self.directory / name, "rb")

    def size(self, name: str) -> int | None:
        try:
            return os.stat(self.directory / name).st_size
        except FileNotFoundError:
            return None

    def names(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.directory)
                          if not n.startswith(".") and (self.directory / n).is_file())
        except OSError:
            return []

    def remove(self, name: str) -> None:
        try:
            os.unlink(self.directory / name)
        except FileNotFoundError:
            pass
