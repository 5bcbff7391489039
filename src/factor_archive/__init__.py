"""factor-archive: archive a Factor run and restore it so that it can be resumed."""

__version__ = "0.1.0"
FORMAT_VERSION = 1
