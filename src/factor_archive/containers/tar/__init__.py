"""The indexed tar form: one POSIX pax tar that ``tar xf`` turns into the directory-form tree.

The manifest records where each file's data starts, and a fixed-size index at the very end
points at the manifest, so a reader with a seekable file reads only what it extracts. Writing
never seeks, so an archive can go straight to a pipe or a tape. ``formats/tar.md`` specifies
the byte layout; ``format`` is the only module that depends on it.
"""

from .format import INDEX_NAME, is_tar_header
from .reader import TarReader
from .writer import TarWriter

__all__ = ["INDEX_NAME", "TarReader", "TarWriter", "is_tar_header"]
