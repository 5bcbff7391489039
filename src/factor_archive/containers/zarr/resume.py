"""Resuming an interrupted zarr archive: a record per member, written once its objects are stored.

While a member is written, every object stored below its node is noted with its size and MD5
(:class:`RecordingStore`). Once they are all durable (an object store: every upload acknowledged;
a local store: the rerun re-reads them anyway), the member's record is written at
``.factor-archive-resume/<sha256 of the member path>.json`` inside the store: the member's
manifest entry, the source's size and mtime, and the objects. A rerun keeps a member only when its
record parses, names the same member, the source is unchanged, and the objects below the node are
exactly the recorded ones with the recorded sizes and digests (on an object store the MD5: its
ETag of a single PUT is the MD5, so this costs no download; in a local directory, where every file
is read and hashed again anyway, the XXH3-128, written ``xxh3:<hex>``, several times faster than
either; records written before hold ``sha256:<hex>``, still read). Anything else below the node
is removed and the member written again.
formats/zarr.md ("Resuming") says the same.
"""
from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

import xxhash

from ...manifest import FileEntry, Member

RESUME_DIR = ".factor-archive-resume"
RECORD_VERSION = 1


def record_key(member_path: str) -> str:
    return f"{RESUME_DIR}/{hashlib.sha256(member_path.encode('utf-8')).hexdigest()}.json"


def below(key: str, node: str) -> bool:
    """Whether ``key`` is one of the objects of the node ``node`` (its zarr.json included)."""
    return key.startswith(node + "/")


# A record's digest is "<kind>:<hex>", or bare hex for an MD5 (object stores, older records).
DIGEST_KINDS = ("md5", "sha256", "xxh3")


@dataclass(frozen=True)
class StoredObject:
    size: int
    digest: str  # MD5 in hex, or "xxh3:" / "sha256:" and that digest in hex


def new_digest(kind: str):
    """A hash object of ``kind`` ("md5", "sha256" or "xxh3", the last XXH3-128)."""
    if kind == "xxh3":
        return xxhash.xxh3_128()
    return hashlib.new(kind, usedforsecurity=False)


def digest_of(kind: str, data) -> str:
    """The digest of ``data`` as a record writes it."""
    h = new_digest(kind)
    h.update(memoryview(data).cast("B"))
    return digest_text(kind, h)


def digest_text(kind: str, h) -> str:
    return h.hexdigest() if kind == "md5" else f"{kind}:{h.hexdigest()}"


def file_matches(f, digest: str) -> bool:
    """Whether the bytes read from ``f`` have the recorded ``digest`` (of any kind)."""
    kind = digest.split(":", 1)[0] if ":" in digest else "md5"
    if kind not in DIGEST_KINDS:
        return False
    return digest_text(kind, hashlib.file_digest(f, lambda: new_digest(kind))) == digest


def _recording_store_class():
    from zarr.storage import WrapperStore

    class RecordingStore(WrapperStore):
        """Passes everything through, noting the size and digest of each object set (the last
        value of a key counts; a deleted key is forgotten): the MD5 on an object store (its
        ETag), the XXH3-128 on a local directory."""

        def __init__(self, store):
            from zarr.storage import LocalStore

            super().__init__(store)
            self.objects: dict[str, StoredObject] = {}
            self._lock = threading.Lock()  # two members may be written at once
            self.digest_kind = "xxh3" if isinstance(store, LocalStore) else "md5"

        def _note(self, key: str, value) -> None:
            self.note_stored(key, value.to_bytes())

        def note_stored(self, key: str, data) -> None:
            """Note an object the caller stored in the wrapped store itself (bytes-like)."""
            noted = StoredObject(memoryview(data).nbytes, digest_of(self.digest_kind, data))
            with self._lock:
                self.objects[key] = noted

        def new_hash(self):
            """A hash object for an object the caller stores part by part (LocalObject)."""
            return new_digest(self.digest_kind)

        def note_hash(self, key: str, size: int, h) -> None:
            """Note an object the caller stored itself, hashed with ``new_hash`` as it went."""
            noted = StoredObject(size, digest_text(self.digest_kind, h))
            with self._lock:
                self.objects[key] = noted

        async def set(self, key, value) -> None:
            self._note(key, value)
            await self._store.set(key, value)

        async def set_if_not_exists(self, key, value) -> None:
            if not await self._store.exists(key):
                await self.set(key, value)

        async def _set_many(self, values) -> None:
            for key, value in values:
                await self.set(key, value)

        async def delete(self, key) -> None:
            with self._lock:
                self.objects.pop(key, None)
            await self._store.delete(key)

        async def delete_dir(self, prefix) -> None:
            with self._lock:
                for key in [k for k in self.objects if k.startswith(prefix.rstrip("/") + "/")]:
                    self.objects.pop(key, None)
            await self._store.delete_dir(prefix)

        def take(self, node: str) -> dict[str, StoredObject]:
            """The objects noted below ``node``, forgetting them."""
            with self._lock:
                taken = {k: v for k, v in self.objects.items() if below(k, node)}
                for k in taken:
                    del self.objects[k]
            return taken

    return RecordingStore


def recording_store(store) -> Any:
    return _recording_store_class()(store)


def record_bytes(member: Member, source: dict | None, objects: dict[str, StoredObject],
                 codec_choices: list | None = None) -> bytes:
    doc = {"version": RECORD_VERSION, "member": asdict(member), "source": source,
           "objects": {k: [o.size, o.digest] for k, o in sorted(objects.items())}}
    if codec_choices:
        doc["codec_choices"] = codec_choices
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True)
class ResumeRecord:
    member: Member
    source: dict | None                   # {"size", "mtime"} of the source, None if generated
    objects: dict[str, StoredObject]
    codec_choices: list[tuple[tuple, str]] = field(default_factory=list)  # (column kind, label)


def parse_record(data: bytes) -> ResumeRecord | None:
    """The record, or None for anything that is not one we wrote (torn, foreign, newer)."""
    try:
        doc = json.loads(data.decode("utf-8"))
        if doc.get("version") != RECORD_VERSION:
            return None
        m = doc["member"]
        member = Member(**{**m, "files": [FileEntry(**f) for f in m.get("files", [])]})
        objects = {str(k): StoredObject(int(v[0]), str(v[1])) for k, v in doc["objects"].items()}
        source = doc.get("source")
        if source is not None and not isinstance(source, dict):
            return None
        from ...ms.casacore_table.codec_choice import kind_from_json
        from ...ms.casacore_table.codecs import CODECS

        choices = [(kind_from_json(kind), label) for kind, label in doc.get("codec_choices", [])]
        if not all(isinstance(label, str) and label in CODECS for _kind, label in choices):
            return None
        return ResumeRecord(member, source, objects, choices)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError):
        return None
