"""Moving bytes and making them durable, below every container form and the restore.

``copy``: the one hash-while-copying engine. ``durable``: fsync, syncfs, write-back and atomic
writes. ``install``: how a restored or archived file or table takes its name, loses it, and gets its
mode and mtime (one rule for every form, docs/layout.md). ``failures``: one-line errors for full
disks and I/O errors. ``tree``: walking a table directory. ``memory``: one malloc arena for
the commands that pass big buffers between threads.
"""
