"""The byte-moving layer every form shares (``factor_archive.io``): the copy engine that hashes
while it copies, and the install / set-meta rules a restore relies on.

Each story copies real files (or a pipe) and checks the bytes and the checksum against an
independent ``hashlib`` of the source, so a copy that drops, repeats or misorders a block, or a
hash of the wrong buffer, fails here and not only in a round trip.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import threading

import pytest

from factor_archive.errors import BadInput
from factor_archive.io.copy import BLOCK, copy_stream, copy_stream_later, hash_file
from factor_archive.io.durable import replace_in_marked_tree, write_atomic
from factor_archive.io.install import install, remove, set_meta

# Sizes around the engine's seams: empty, one byte, one block, a block and a byte, several
# kernel ranges (the read-back hasher thread), a size that is not a multiple of anything.
SIZES = [0, 1, BLOCK, BLOCK + 1, 5 * BLOCK + 12345]


def _data(n: int, seed: int = 0) -> bytes:
    return (hashlib.sha256(str(seed).encode()).digest() * (n // 32 + 1))[:n] if n else b""


@pytest.mark.parametrize("size", SIZES)
def test_file_to_file_copy_gives_the_bytes_and_their_sha256(tmp_path, size):
    data = _data(size, seed=size)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    seen = []
    with open(src, "rb") as fin, open(tmp_path / "dst.bin", "w+b") as fout:
        sha, n = copy_stream(fin, fout, seen.append)
        assert fout.tell() == size  # the next member is written right after this one
    assert (n, sha) == (size, hashlib.sha256(data).hexdigest())
    assert sum(seen) == size
    assert (tmp_path / "dst.bin").read_bytes() == data


@pytest.mark.parametrize("size", [0, BLOCK - 1, 3 * BLOCK + 7])
def test_a_pipe_and_an_in_memory_destination_go_through_the_buffer_ring(size):
    data = _data(size, seed=7)
    rd, wr = os.pipe()
    feeder = threading.Thread(target=lambda: (os.write(wr, data) if data else None, os.close(wr)))
    feeder.start()
    out = io.BytesIO()
    with os.fdopen(rd, "rb", buffering=0) as fin:
        sha, n = copy_stream(fin, out)
    feeder.join()
    assert (n, sha) == (size, hashlib.sha256(data).hexdigest())
    assert out.getvalue() == data


def test_a_limit_copies_only_that_many_bytes_and_leaves_the_source_after_them(tmp_path):
    data = _data(2 * BLOCK + 100, seed=3)
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    limit = BLOCK + 50
    with open(src, "rb") as fin, open(tmp_path / "dst.bin", "w+b") as fout:
        sha, n = copy_stream(fin, fout, limit=limit)
        assert fin.tell() == limit
    assert (n, sha) == (limit, hashlib.sha256(data[:limit]).hexdigest())
    assert (tmp_path / "dst.bin").read_bytes() == data[:limit]


@pytest.mark.parametrize("size", [1, 4096, 3 * BLOCK + 5])
def test_members_read_from_a_buffered_archive_after_their_headers_are_copied_exactly(tmp_path, size):
    """A tar reader reads a member's 512-byte header through its buffer, then copies the data:
    the buffer has read ahead of the data's start, and the copy must still begin at the data."""
    header, data, after = _data(512, seed=1), _data(size, seed=2), _data(8192, seed=3)
    (tmp_path / "archive").write_bytes(header + data + after)
    with open(tmp_path / "archive", "rb") as fin, open(tmp_path / "member", "w+b") as fout:
        assert fin.read(512) == header
        finish, n = copy_stream_later(fin, fout, limit=size)
        assert (n, finish()) == (size, hashlib.sha256(data).hexdigest())
        assert fin.read(16) == after[:16]  # and the archive goes on right after the member
    assert (tmp_path / "member").read_bytes() == data


def test_members_copied_back_to_back_while_the_last_is_still_hashed_keep_their_checksums(tmp_path):
    """The tar writer copies the next file while the previous one is hashed from the page cache."""
    datas = [_data(3 * BLOCK + i, seed=i) for i in range(3)]
    for i, d in enumerate(datas):
        (tmp_path / f"m{i}").write_bytes(d)
    finishers = []
    with open(tmp_path / "out.bin", "w+b") as fout:
        for i in range(3):
            with open(tmp_path / f"m{i}", "rb") as fin:
                finishers.append(copy_stream_later(fin, fout))
        checksums = [finish() for finish, _n in finishers]
    assert checksums == [hashlib.sha256(d).hexdigest() for d in datas]
    assert (tmp_path / "out.bin").read_bytes() == b"".join(datas)


def test_hash_only_reads_the_file_once_and_writes_nothing(tmp_path):
    data = _data(BLOCK + 3, seed=11)
    (tmp_path / "f").write_bytes(data)
    assert hash_file(tmp_path / "f") == (hashlib.sha256(data).hexdigest(), len(data))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


# ---------------------------------------------------------------------------------------------
# Installing restored members

def test_restored_modes_keep_permission_bits_only_and_the_exact_mtime(tmp_path):
    f = tmp_path / "tool"
    f.write_bytes(b"#!/bin/sh\n")
    set_meta(f, 0o104755, 1_600_000_000.123456789)  # setuid in the manifest
    st = f.stat()
    assert stat.S_IMODE(st.st_mode) == 0o755  # never setuid, setgid or sticky
    assert st.st_mtime_ns == round(1_600_000_000.123456789 * 1e9)


def test_a_malformed_mode_in_a_manifest_is_one_line_naming_the_file(tmp_path):
    f = tmp_path / "state.pickle"
    f.write_bytes(b"x")
    with pytest.raises(BadInput, match=r"^state\.pickle: malformed mode or mtime"):
        set_meta(f, "rwxr-xr-x", 0)


def test_install_replaces_a_file_by_a_table_directory_and_back(tmp_path):
    dest = tmp_path / "chunk.ms"
    dest.write_bytes(b"old")
    table = tmp_path / ".chunk.ms.partial"
    (table / "sub").mkdir(parents=True)
    (table / "table.dat").write_bytes(b"new")
    install(table, dest)
    assert (dest / "table.dat").read_bytes() == b"new" and not table.exists()
    (dest / "sub").chmod(0o500)  # a read-only directory inside must not stop the replacement
    plain = tmp_path / ".chunk.ms.partial2"
    plain.write_bytes(b"file again")
    install(plain, dest)
    assert dest.read_bytes() == b"file again"
    remove(dest)
    remove(dest)  # absent is fine
    assert not dest.exists()


def test_write_atomic_leaves_the_old_file_or_the_whole_new_one(tmp_path):
    path = tmp_path / "manifest.json"
    write_atomic(path, b"{}")
    write_atomic(path, b'{"members": []}')
    assert path.read_bytes() == b'{"members": []}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]  # no temporary left


def test_a_file_rewritten_in_a_restore_is_written_over_and_keeps_its_mode_and_times(tmp_path):
    path = tmp_path / "state.pickle"
    path.write_bytes(b"a longer old content")
    os.chmod(path, 0o640)
    os.utime(path, ns=(1_500_000_000_123_456_789, 1_600_000_000_987_654_321))
    inode = path.stat().st_ino
    replace_in_marked_tree(path, b"shorter")
    st = path.stat()
    assert path.read_bytes() == b"shorter"           # cut to the new length
    assert st.st_ino == inode                        # no new file: making one is what costs on ext4
    assert (st.st_mode & 0o7777, st.st_atime_ns, st.st_mtime_ns) == (0o640, 1_500_000_000_123_456_789,
                                                                       1_600_000_000_987_654_321)
    replace_in_marked_tree(path, b"a content longer than the old one")
    assert path.read_bytes() == b"a content longer than the old one" and path.stat().st_ino == inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pickle"]


def test_a_file_rewritten_in_a_restore_keeps_its_mode_and_times_and_is_a_new_file_when_hard_linked(tmp_path):
    path = tmp_path / "concat.mapfile"
    path.write_bytes(b"[old]")
    os.chmod(path, 0o440)
    os.utime(path, ns=(1_500_000_000_123_456_789, 1_600_000_000_987_654_321))
    other_name = tmp_path / "hard link"
    os.link(path, other_name)
    replace_in_marked_tree(path, b"[new, longer]")
    st = path.stat()
    assert path.read_bytes() == b"[new, longer]" and other_name.read_bytes() == b"[old]"
    assert (st.st_mode & 0o7777, st.st_atime_ns, st.st_mtime_ns) == (0o440, 1_500_000_000_123_456_789,
                                                                       1_600_000_000_987_654_321)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["concat.mapfile", "hard link"]

    (tmp_path / "d" / "a directory").mkdir(parents=True)
    with pytest.raises(OSError):                   # it cannot be replaced: no temporary is left
        replace_in_marked_tree(tmp_path / "d" / "a directory", b"x")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["a directory"]


@pytest.mark.parametrize("err", [errno.EIO, errno.ENOSPC])
def test_an_error_of_the_final_write_back_is_reported_naming_the_path(tmp_path, monkeypatch, err):
    """The restore's workers skip casacore's fsyncs: the one syncfs at the end must report what
    they would have (syncfs returns write-back errors since Linux 5.8). A real failing disk is not
    available here, so syncfs itself is replaced."""
    import ctypes

    from factor_archive.io import durable

    class FailingLibc:
        def syncfs(self, fd):
            ctypes.set_errno(err)
            return -1

    monkeypatch.setattr(durable, "_load_libc", lambda: FailingLibc())
    with pytest.raises(OSError) as caught:
        durable.sync_filesystem(tmp_path)
    assert caught.value.errno == err and caught.value.filename == str(tmp_path)


def test_a_kernel_without_syncfs_falls_back_to_sync(tmp_path, monkeypatch):
    import ctypes

    from factor_archive.io import durable

    class OldKernel:
        def syncfs(self, fd):
            ctypes.set_errno(errno.ENOSYS)
            return -1

    synced = []
    monkeypatch.setattr(durable, "_load_libc", lambda: OldKernel())
    monkeypatch.setattr(durable.os, "sync", lambda: synced.append(True))
    durable.sync_filesystem(tmp_path)
    assert synced == [True]


def test_closing_a_tree_writeback_does_not_wait_but_the_final_flush_does(tmp_path, monkeypatch):
    """The restore goes on (rewriting paths) while the disk's queue takes the last tables'
    write-backs; its flush starts only once they are all started."""
    from factor_archive.io import durable

    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "big").write_bytes(b"x" * durable.WRITEBACK_MIN)
    release, started = threading.Event(), []

    def slow(fd: int) -> None:
        release.wait(10)
        started.append(fd)

    monkeypatch.setattr(durable, "start_writeback", slow)
    writeback = durable.TreeWriteback()
    writeback.start(tmp_path / "t")
    writeback.close()  # returns with the write-back not started yet
    assert started == []
    flushed = threading.Event()
    flusher = threading.Thread(target=lambda: (durable.sync_filesystem(tmp_path), flushed.set()))
    flusher.start()
    assert not flushed.wait(0.3)
    release.set()
    flusher.join(10)
    assert flushed.is_set() and len(started) == 1
