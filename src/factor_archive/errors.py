"""Errors that reach the user as one line and an exit status."""


class FactorArchiveError(Exception):
    """A failure while doing the work (I/O error, full disk): exit status 1."""

    exit_code = 1


class DiskFull(FactorArchiveError):
    """Writing failed because a file system is full or a quota is reached: exit status 1.

    ``path`` is the file being written when that is known.
    """

    def __init__(self, message: str, path: str | None = None):
        super().__init__(message)
        self.path = path


class BadInput(FactorArchiveError):
    """The user's input is wrong (parset, paths, archive contents): exit status 2."""

    exit_code = 2


class UnsafeArchive(BadInput):
    """An archive asks for something we refuse to do (escape the output, run code)."""


class DamagedArchive(BadInput):
    """The archive's bytes are not what was written (truncated, flipped, missing): exit status 1.

    A BadInput (the archive is input, and callers that refuse bad input refuse this too), but
    with the status of a failure: the archive was ours and something happened to it.
    """

    exit_code = 1
