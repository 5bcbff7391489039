"""Reading the tar in one sequential pass: the header scanner, and restoring a stream (a pipe or
a tape) before its manifest, which comes last, has been seen."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ...errors import BadInput, DamagedArchive, FactorArchiveError, UnsafeArchive
from ...io.copy import Progress, copy_stream, no_progress
from ...io.failures import io_error
from ...io.install import Undo, discard, install, partial_name, set_meta, set_table_meta
from ...manifest import (
    CHECKSUMS_NAME,
    MANIFEST_NAME,
    TAG_MANIFEST_NAME,
    Manifest,
    Member,
    check_checksums_file,
    check_member_paths,
    safe_relpath,
    tag_problems,
    tree_digest,
)
from .format import (
    ANNOUNCED,
    BLOCKSIZE,
    INDEX_NAME,
    MAX_MANIFEST,
    MAX_PAX,
    MEMBER_MAGIC,
    METADATA_NAMES,
    Header,
    _describe,
    parse_header,
    parse_index,
    parse_pax,
)


class _Truncated(Exception):
    pass


@dataclass
class _Entry:
    typeflag: bytes
    name: str                  # as stored (pax path), trailing "/" removed
    size: int
    data_offset: int
    comment: str | None
    index: dict[str, tuple[int, int, str]] | None = None


class _Scanner:
    """Walks tar headers in order; pax 'x' records are folded into the entry they describe."""

    def __init__(self, f: BinaryIO, origin: str, seek_base: int | None) -> None:
        self.f = f
        self.origin = origin
        self.base = seek_base          # None: a stream, data is skipped by reading
        self.pos = 0
        self.last = "the first entry"

    def read_exact(self, n: int) -> bytes:
        chunks, got = [], 0
        while got < n:
            try:
                block = self.f.read(n - got)
            except OSError as exc:
                raise io_error(self.origin, exc) from None
            if not block:
                break
            chunks.append(block)
            got += len(block)
        data = b"".join(chunks)
        self.pos += len(data)
        if len(data) < n:
            raise _Truncated
        return data

    def _header(self) -> Header | None:
        at = self.pos
        try:
            block = self.read_exact(BLOCKSIZE)
        except _Truncated:
            raise DamagedArchive(f"{self.origin}: archive truncated after {self.last}") from None
        try:
            return parse_header(block)
        except ValueError:
            raise DamagedArchive(f"{self.origin}: damaged tar header at byte {at} "
                                 f"(after {self.last})") from None

    def _small_data(self, size: int, what: str) -> bytes:
        if size > MAX_PAX:
            raise BadInput(f"{self.origin}: oversized {what} after {self.last}")
        try:
            data = self.read_exact(size)
            self.read_exact(-size % BLOCKSIZE)
        except _Truncated:
            raise DamagedArchive(f"{self.origin}: archive truncated in {what} after "
                                 f"{self.last}") from None
        return data

    def next(self) -> _Entry | None:
        """The next entry, or None at the end-of-archive blocks."""
        pax: dict[str, str] = {}
        while True:
            header = self._header()
            if header is None:
                return None
            if header.typeflag == b"x":
                try:
                    pax.update(parse_pax(self._small_data(header.size, "pax header")))
                except (ValueError, UnicodeDecodeError):
                    raise DamagedArchive(f"{self.origin}: damaged pax header after "
                                         f"{self.last}") from None
                continue
            if header.typeflag == b"g":
                raise BadInput(f"{self.origin}: unexpected pax global header after "
                               f"{self.last}")
            if any(key.startswith("GNU.sparse") for key in pax):
                raise BadInput(f"{self.origin}: sparse entries are not supported "
                               f"(after {self.last})")
            try:
                name = pax["path"] if "path" in pax else header.name.decode("utf-8")
                size = int(pax["size"]) if "size" in pax else header.size
            except (ValueError, UnicodeDecodeError):
                raise DamagedArchive(f"{self.origin}: undecodable entry after {self.last}") from None
            if size < 0:
                raise BadInput(f"{self.origin}: bad size in entry {name!r}")
            self.last = repr(name)
            return _Entry(header.typeflag, name.rstrip("/") if name != "/" else name, size,
                          self.pos, pax.get("comment"))

    def copy_data(self, entry: _Entry, dst: Any, progress: Progress,
                  dst_name: str = "") -> str:
        try:
            sha, n = copy_stream(self.f, dst, progress, limit=entry.size)
        except OSError as exc:
            raise io_error(dst_name or self.origin, exc) from None
        self.pos += n
        if n < entry.size:
            raise DamagedArchive(f"{self.origin}: archive truncated in {entry.name!r}")
        try:
            self.read_exact(-entry.size % BLOCKSIZE)
        except _Truncated:
            raise DamagedArchive(f"{self.origin}: archive truncated in {entry.name!r}") from None
        return sha

    def skip_data(self, entry: _Entry) -> None:
        if self.base is None or entry.size == 0:
            self.copy_data(entry, None, no_progress)
            return
        skip = entry.size + (-entry.size % BLOCKSIZE)
        end = self.f.seek(0, os.SEEK_END)
        if self.base + self.pos + skip > end:
            raise DamagedArchive(f"{self.origin}: archive truncated in {entry.name!r}")
        self.pos += skip
        self.f.seek(self.base + self.pos)


@dataclass
class _Placed:
    """A member seen in a one-pass read: where its bytes went and what they hashed to."""

    announced: dict[str, Any]
    dest: Path | None
    tmp: Path | None
    files: dict[str, tuple[int, int, str | None]] = field(default_factory=dict)  # sha None: not hashed
    dirs: list[str] = field(default_factory=list)


class OnePass:
    """The one-pass half of TarReader: streams, and verify's walk over the structure."""

    name: str                       # the archive as the user named it
    _f: BinaryIO
    _consumed: bool                 # a stream already read (or an index already found)
    _manifest: Manifest | None
    _spool: Path | None             # a stream spooled because its manifest was asked for first
    _staging_parent: Path | None
    _hash_data: bool
    _count_skipped: bool

    def _check_tag_listed(self, manifest: Manifest, index: dict[str, tuple[int, int, str]]) -> None:
        if manifest.tag_manifest and manifest.tag_manifest not in index:
            raise DamagedArchive(f"{self.name}: the index does not list {manifest.tag_manifest} "
                                 "(damaged)")

    def _metadata_problems(self, manifest: Manifest, blobs: dict[str, tuple[int, bytes]]) -> list[str]:
        """verify: the tag manifest and manifest-sha256.txt agree with the manifest."""
        files = {name: blobs[name][1] if name in blobs else None
                 for name in (MANIFEST_NAME, CHECKSUMS_NAME)}
        problems: list[str] = []
        if TAG_MANIFEST_NAME in blobs:
            try:
                problems += tag_problems(self.name, blobs[TAG_MANIFEST_NAME][1], files).values()
            except DamagedArchive as exc:
                problems.append(str(exc))
        if not any(CHECKSUMS_NAME in line for line in problems):
            problems += check_checksums_file(self.name, manifest, files[CHECKSUMS_NAME])
        return problems


    def _one_pass(self, dest_for: Callable[[Member], Path | None], wanted: set[str] | None,
                  progress: Progress, *, strict: bool, scanner: _Scanner | None = None,
                  hash_data: bool = True) -> list[str]:
        """Read the archive once, placing selected members under temp names; check against the
        manifest at the end, then rename all (strict) or report problems (verify)."""
        if scanner is None:
            if self._consumed:
                raise FactorArchiveError(f"{self.name}: the stream has already been read")
            self._consumed = True
            scanner = _Scanner(self._f, self.name, None)
        cleanup = Undo()
        placed: dict[str, _Placed] = {}
        problems: list[str] = []
        self._hash_data = hash_data
        self._count_skipped = not strict        # verify counts every byte, extract its own
        try:
            blobs, index = self._scan(scanner, dest_for, wanted, progress, placed, cleanup)
            manifest = self._check_pass(blobs, index)
            problems = self._compare(manifest, placed, dest_for if strict else None, wanted)
            if not strict:
                problems = self._metadata_problems(manifest, blobs) + problems
            if strict and problems:
                more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
                raise DamagedArchive(problems[0] + more)
            if strict:
                self._finish(manifest, placed)
            self._manifest = self._manifest or manifest
        except FactorArchiveError as exc:
            cleanup.undo()
            if strict:
                raise
            return [str(exc)]
        except BaseException:
            cleanup.undo()
            raise
        return problems

    def _scan(self, scanner: _Scanner, dest_for: Callable[[Member], Path | None],
              wanted: set[str] | None, progress: Progress, placed: dict[str, _Placed],
              cleanup: Undo) -> tuple[dict[str, tuple[int, bytes]], _Entry | None]:
        origin = self.name
        blobs: dict[str, tuple[int, bytes]] = {}
        index: _Entry | None = None
        current: tuple[str, _Placed] | None = None
        while True:
            entry = scanner.next()
            if entry is None:
                break
            if index is not None:
                raise BadInput(f"{origin}: entry {entry.name!r} after the index")
            if entry.name == INDEX_NAME and entry.typeflag in (b"0", b"\0"):
                entry.index = parse_index(self._read_blob(scanner, entry))
                if entry.index is None:
                    raise DamagedArchive(f"{origin}: damaged factor-archive index")
                index = entry
                continue
            if entry.typeflag not in (b"0", b"\0", b"5", b"7"):
                raise UnsafeArchive(f"{origin}: refusing {_describe(entry.typeflag)} entry "
                                    f"{entry.name!r}")
            name = safe_relpath(entry.name, origin)
            if name != entry.name:
                raise UnsafeArchive(f"{origin}: refusing entry name {entry.name!r} "
                                    "(not in normal form)")
            is_dir = entry.typeflag == b"5"
            if entry.comment is not None and entry.comment.startswith(MEMBER_MAGIC):
                current = self._announce(entry, name, is_dir, dest_for, wanted, placed,
                                         cleanup, scanner, progress)
                continue
            if name in METADATA_NAMES and not is_dir:
                if entry.size > MAX_MANIFEST:
                    raise BadInput(f"{origin}: oversized {name}")
                at = entry.data_offset
                blobs[name] = (at, self._read_blob(scanner, entry))
                current = None
                continue
            if current is not None and name.startswith(current[0] + "/"):
                sub = name[len(current[0]) + 1:]
                item = current[1]
                if is_dir:
                    item.dirs.append(sub)
                    if item.tmp is not None:
                        (item.tmp / sub).mkdir(parents=True, exist_ok=True)
                    scanner.skip_data(entry)
                    continue
                if sub in item.files:
                    raise BadInput(f"{origin}: duplicate entry {name!r}")
                item.files[sub] = (entry.data_offset, entry.size,
                                   self._take(scanner, entry, item.tmp and item.tmp / sub,
                                              progress))
                continue
            raise UnsafeArchive(f"{origin}: entry {name!r} is not part of any archived member")
        self._drain(scanner)
        return blobs, index

    @staticmethod
    def _read_blob(scanner: _Scanner, entry: _Entry) -> bytes:
        chunks: list[bytes] = []

        class _Collect:
            def write(self, data: bytes) -> None:
                chunks.append(bytes(data))

        scanner.copy_data(entry, _Collect(), no_progress)
        return b"".join(chunks)

    def _take(self, scanner: _Scanner, entry: _Entry, target: Path | None,
              progress: Progress) -> str | None:
        if target is None:
            if not self._hash_data:
                scanner.skip_data(entry)
                return None
            return scanner.copy_data(entry, None,
                                     progress if self._count_skipped else no_progress)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            out = open(target, "wb")  # noqa: SIM115 - opened apart from its with, so an OSError names the file
        except OSError as exc:
            raise io_error(target, exc) from None
        with out:
            return scanner.copy_data(entry, out, progress, str(target))

    def _announce(self, entry: _Entry, name: str, is_dir: bool,
                  dest_for: Callable[[Member], Path | None], wanted: set[str] | None,
                  placed: dict[str, _Placed], cleanup: Undo, scanner: _Scanner,
                  progress: Progress) -> tuple[str, _Placed] | None:
        origin = self.name
        assert entry.comment is not None        # an announcement is a comment
        try:
            fields = json.loads(entry.comment[len(MEMBER_MAGIC):])
            provisional = Member(**{k: fields.get(k) for k in ANNOUNCED if k != "extra"},
                                 extra=fields.get("extra") or {}, size=0, mode=0, mtime=0.0,
                                 sha256="")
        except (ValueError, TypeError, AttributeError):
            raise DamagedArchive(f"{origin}: damaged member announcement at {name!r}") from None
        check_member_paths(provisional, origin)
        if provisional.path != name or provisional.kind != ("table" if is_dir else "file"):
            raise UnsafeArchive(f"{origin}: member announcement does not match entry {name!r}")
        if name in placed:
            raise BadInput(f"{origin}: member {name!r} appears twice")
        dest = None
        if wanted is None or name in wanted:
            dest = dest_for(provisional)
        tmp = None
        if dest is not None:
            dest = Path(dest)
            cleanup.makedirs(dest.parent)
            tmp = cleanup.fresh(partial_name(dest))
            if is_dir:
                os.mkdir(tmp, 0o700)
        item = _Placed({k: getattr(provisional, k) for k in ANNOUNCED}, dest, tmp)
        placed[name] = item
        if is_dir:
            scanner.skip_data(entry)
            return name, item
        item.files[""] = (entry.data_offset, entry.size, self._take(scanner, entry, tmp,
                                                                    progress))
        return None

    def _drain(self, scanner: _Scanner) -> None:
        """After the end blocks; a stream is read to its end so the writer sees no broken pipe."""
        if scanner.base is not None:
            return
        try:
            while self._f.read(1 << 20):
                pass
        except OSError:
            pass

    def _check_pass(self, blobs: dict[str, tuple[int, bytes]], index: _Entry | None) -> Manifest:
        origin = self.name
        if index is None or index.index is None or MANIFEST_NAME not in blobs:
            raise DamagedArchive(f"{origin}: archive truncated or incomplete: no "
                                 f"{'index' if MANIFEST_NAME in blobs else 'manifest'} found")
        for name, (offset, size, sha) in index.index.items():
            at, data = blobs.get(name, (None, b""))
            if at != offset or len(data) != size or hashlib.sha256(data).hexdigest() != sha:
                raise DamagedArchive(f"{origin}: {name} does not match the index (damaged)")
        manifest = Manifest.from_json(blobs[MANIFEST_NAME][1], f"{origin}: {MANIFEST_NAME}")
        self._check_tag_listed(manifest, index.index)
        return manifest

    def _compare(self, manifest: Manifest, placed: dict[str, _Placed],
                 dest_for: Callable[[Member], Path | None] | None,
                 wanted: set[str] | None) -> list[str]:
        origin = self.name
        problems: list[str] = []
        by_path = {m.path: m for m in manifest.members}
        for path, item in placed.items():
            member = by_path.get(path)
            if member is None:
                problems.append(f"{origin}: entry {path!r} is not listed in the manifest")
                continue
            if {k: getattr(member, k) for k in ANNOUNCED} != item.announced:
                problems.append(f"{origin}: member {path!r} differs from its manifest entry")
                continue
            if dest_for is not None and item.dest is None:
                continue            # not extracting it: its damage is not this restore's problem
            if member.kind == "file":
                expect = {"": (member.offset, member.size, member.sha256)}
            else:
                expect = {e.path: (e.offset, e.size, e.sha256) for e in member.files}
                if set(member.dirs) != set(item.dirs) or tree_digest(member.files) != \
                        member.sha256:
                    problems.append(f"{origin}: member {path!r} differs from its manifest entry")
                    continue
            for sub in sorted(set(expect) | set(item.files)):
                label = repr(path) if not sub else f"{path!r} (file {sub!r})"
                got, want = item.files.get(sub), expect.get(sub)
                if want is None:
                    problems.append(f"{origin}: {label} is not listed in the manifest")
                elif got is None:
                    problems.append(f"{origin}: member {label} is missing from the archive")
                elif got[:2] != want[:2]:
                    problems.append(f"{origin}: manifest offset of member {label} does not "
                                    "point at its data")
                elif got[2] is not None and got[2] != want[2]:
                    problems.append(f"{origin}: member {label} is damaged (sha256 mismatch)")
        for member in manifest.members:
            if member.kind in ("file", "table") and member.path not in placed and (
                    dest_for is None or ((wanted is None or member.path in wanted)
                                         and dest_for(member) is not None)):
                problems.append(f"{origin}: member {member.path!r} is missing from the archive")
        return problems

    def _finish(self, manifest: Manifest, placed: dict[str, _Placed]) -> None:
        by_path = {m.path: m for m in manifest.members}
        for path, item in placed.items():
            if item.tmp is None or item.dest is None:
                continue
            member = by_path[path]
            try:
                if member.kind == "table":
                    set_table_meta(item.tmp, [(e.path, e.mode, e.mtime) for e in member.files],
                                   member.dirs, member.mode, member.mtime)
                    install(item.tmp, item.dest)
                else:
                    set_meta(item.tmp, member.mode, member.mtime)
                    install(item.tmp, item.dest)
            except OSError as exc:
                raise io_error(item.dest, exc) from None

    # -- streams read before the caller chose members ------------------------------------------

    def _spool_all(self) -> None:
        try:
            self._spool = Path(tempfile.mkdtemp(prefix=".factor-archive-spool-",
                                                dir=self._staging_parent))
        except OSError as exc:
            raise io_error(self._staging_parent or tempfile.gettempdir(), exc) from None
        spool = self._spool
        try:
            self._one_pass(lambda m: spool / m.path, None, no_progress, strict=True)
        except BaseException:
            discard(spool)
            self._spool = None
            raise

    def _extract_spooled(self, members: list[Member] | None,
                         dest_for: Callable[[Member], Path | None], progress: Progress) -> None:
        assert self._spool is not None and self._manifest is not None
        for member in self._manifest.members if members is None else members:
            dest = dest_for(member)
            src = self._spool / member.path
            if dest is None or member.kind not in ("file", "table") or not src.exists():
                continue
            dest = Path(dest)
            tmp = partial_name(dest)
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.replace(src, tmp)            # same file system: the usual case
                except OSError as exc:
                    if exc.errno != errno.EXDEV:
                        raise
                    if member.kind == "table":
                        shutil.copytree(src, tmp, copy_function=shutil.copy2)
                    else:
                        shutil.copy2(src, tmp)
                    discard(src)
                install(tmp, dest)
            except OSError as exc:
                discard(tmp)
                raise io_error(dest, exc) from None
            progress(member.size)


