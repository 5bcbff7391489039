"""Archive files on an S3 object store: streamed multipart uploads, ranged reads, one retry policy.

``S3Blobs`` is the object-store :class:`~factor_archive.io.blobs.BlobStore`: a blob is one object
below an ``s3://bucket/prefix``. Writing streams a multipart upload with bounded memory (at most
``concurrency`` parts in flight plus the one being filled) and the object appears only when the
upload completes; reading is a seekable file doing ranged GETs with a small read-ahead. Every
request goes through :func:`call_with_retries`: transient failures (connection refused or reset,
timeouts, 5xx, SlowDown) are retried with exponential backoff and full jitter, permanent ones
(no bucket, access denied, bad keys) stop at once with one line naming the URL. Requests and
bytes are counted (:class:`RequestCounts`) so tests and benchmarks can say what a listing costs.

The zarr form's s3fs store takes its options from :func:`s3_storage_options` here, so both
find credentials, endpoint, concurrency and retry limits the same way.
"""
from __future__ import annotations

import errno
import io
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..errors import BadInput, FactorArchiveError

T = TypeVar("T")

CONCURRENCY_ENV = "FACTOR_ARCHIVE_S3_CONCURRENCY"
DEFAULT_CONCURRENCY = 8            # parts (or zarr objects) uploaded at once
PART_SIZE = 16 << 20               # multipart part size: memory is at most (concurrency + 1) parts
MIN_PART_SIZE = 5 << 20            # S3's smallest part but the last
MAX_PARTS = 10_000                 # S3's most parts in one upload
READ_AHEAD = 64 << 10              # first ranged GET of a reader; doubles while reads are sequential
MAX_READ_AHEAD = 16 << 20


# ---------------------------------------------------------------------------------------------
# Configuration from the environment

def s3_endpoint() -> str | None:
    """``FACTOR_ARCHIVE_S3_ENDPOINT``, else ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``
    (passed explicitly, so it works whatever botocore version is installed), else AWS."""
    return (os.environ.get("FACTOR_ARCHIVE_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL_S3")
            or os.environ.get("AWS_ENDPOINT_URL")) or None


def s3_concurrency(default: int = DEFAULT_CONCURRENCY) -> int:
    """The cap on parallel uploads: ``FACTOR_ARCHIVE_S3_CONCURRENCY`` (``--s3-concurrency``
    sets it), else ``default`` (multipart parts: DEFAULT_CONCURRENCY; the zarr form's objects,
    smaller and many more: its own)."""
    text = os.environ.get(CONCURRENCY_ENV, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise BadInput(f"{CONCURRENCY_ENV}={text}: must be a whole number of at least 1")
    return int(text)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently a transient failure is retried: attempt ``n`` (from 0) waits
    a random time up to ``min(cap, base * 2**n)`` seconds ("full jitter") before the next.

    The default (6 attempts) gives up on a store that is gone after about 8 s at most."""

    attempts: int = 6
    base: float = 0.25
    cap: float = 8.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap, self.base * (2 ** attempt)))


DEFAULT_RETRY = RetryPolicy()
ZARR_ATTEMPTS = 3                  # botocore attempts of the zarr form's s3fs store (see below)


def s3_storage_options() -> dict:
    """fsspec/s3fs options from the environment, for the zarr form's store.

    Credentials (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``,
    ``AWS_PROFILE``, ``~/.aws/...``) are found by botocore itself; the endpoint is
    :func:`s3_endpoint`. Retries: botocore's "standard" mode, the same kind of policy as
    :func:`call_with_retries` (exponential backoff with jitter; SlowDown, 5xx and connection
    errors are retried, AccessDenied and NoSuchBucket are not), with ZARR_ATTEMPTS attempts:
    s3fs retries some errors again around it, and with these numbers a store that is gone is
    reported in about 10 s (botocore's own backoff and s3fs's loop are not ours to replace).
    At most :func:`s3_concurrency` connections (32 unless set), so ``--s3-concurrency`` caps a
    restore's requests too.
    """
    options: dict = {"config_kwargs": {"max_pool_connections": s3_concurrency(32),
                                       "connect_timeout": 10,
                                       "retries": {"mode": "standard",
                                                   "max_attempts": ZARR_ATTEMPTS}},
                     "skip_instance_cache": True}
    endpoint = s3_endpoint()
    if endpoint:
        options["endpoint_url"] = endpoint
    return options


# ---------------------------------------------------------------------------------------------
# Errors: transient or permanent, and the one line for the user

TRANSIENT_CODES = {"SlowDown", "RequestTimeout", "RequestTimeoutException", "InternalError",
                   "ServiceUnavailable", "Throttling", "ThrottlingException", "RequestLimitExceeded",
                   "TooManyRequests", "IncompleteBody"}
CREDENTIAL_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
                    "AccountProblem", "ExpiredToken", "InvalidToken", "InvalidSecurity"}


def error_code(exc: BaseException) -> str | None:
    """The S3 error code of a botocore ClientError (``NoSuchBucket``, ``SlowDown``, ...)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code is not None else None
    return None


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return None


def is_transient(exc: BaseException) -> bool:
    """A failure worth retrying: the connection, a timeout, the server busy or failing (5xx)."""
    code = error_code(exc)
    if code is not None:
        status = _http_status(exc) or 0
        return code in TRANSIENT_CODES or status >= 500 or status == 429
    from botocore import exceptions as bx

    if isinstance(exc, (bx.ConnectionError, bx.HTTPClientError, bx.ReadTimeoutError,
                        bx.ConnectTimeoutError, bx.ResponseStreamingError, bx.IncompleteReadError)):
        return True
    return isinstance(exc, (ConnectionError, TimeoutError))


def s3_error(url: str, exc: BaseException, *, attempts: int = 1) -> FactorArchiveError:
    """The one line for a failed request on ``url``."""
    code = error_code(exc)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if code == "NoSuchBucket":
        return BadInput(f"{url}: no such bucket")
    if code in CREDENTIAL_CODES or code == "403":     # (a HEAD answer has no body: no code)
        why = "HTTP 403" if code == "403" else code
        return FactorArchiveError(f"{url}: access denied ({why}); check AWS_ACCESS_KEY_ID / "
                                  f"AWS_SECRET_ACCESS_KEY and the bucket's permissions")
    if code in ("NoSuchKey", "404", "NotFound"):
        return BadInput(f"{url}: not found")
    if is_transient(exc):
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        return FactorArchiveError(f"{url}: object store unreachable or failing{tries} ({text})")
    return FactorArchiveError(f"{url}: {text}")


def call_with_retries(fn: Callable[[], T], url: str, policy: RetryPolicy = DEFAULT_RETRY,
                      *, on_retry: Callable[[BaseException], None] | None = None) -> T:
    """``fn()``, retried on transient failures per ``policy``; any failure ends as one
    :class:`FactorArchiveError` line naming ``url``."""
    for attempt in range(policy.attempts):
        try:
            return fn()
        except FactorArchiveError:
            raise
        except Exception as exc:
            if not is_transient(exc) or attempt + 1 >= policy.attempts:
                raise s3_error(url, exc, attempts=attempt + 1) from None
            if on_retry is not None:
                on_retry(exc)
            time.sleep(policy.delay(attempt))
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------
# Counting what a reader or writer costs

@dataclass
class RequestCounts:
    """Requests made and bytes moved, by kind (thread-safe)."""

    requests: dict[str, int] = field(default_factory=dict)   # operation -> requests sent
    retries: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def count(self, op: str, *, sent: int = 0, received: int = 0) -> None:
        with self._lock:
            self.requests[op] = self.requests.get(op, 0) + 1
            self.bytes_sent += sent
            self.bytes_received += received

    def retried(self) -> None:
        with self._lock:
            self.retries += 1

    def got(self, n: int) -> None:
        """``n`` bytes of an answer received (counted once the whole body is read)."""
        with self._lock:
            self.bytes_received += n

    def __getitem__(self, op: str) -> int:
        return self.requests.get(op, 0)

    @property
    def total(self) -> int:
        return sum(self.requests.values())


# ---------------------------------------------------------------------------------------------
# The store

def split_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("s3", "s3a") or not rest.strip("/"):
        raise BadInput(f"{url}: not an s3://bucket/prefix URL")
    bucket, _slash, prefix = rest.strip("/").partition("/")
    return bucket, prefix


def make_client(concurrency: int) -> Any:
    """A botocore S3 client for the environment's credentials and endpoint; botocore's own
    retries are off (one policy: :func:`call_with_retries`)."""
    import botocore.session
    from botocore.config import Config

    session = botocore.session.get_session()
    config = Config(max_pool_connections=concurrency + 4, connect_timeout=10, read_timeout=60,
                    retries={"total_max_attempts": 1})
    return session.create_client("s3", endpoint_url=s3_endpoint(), config=config)


class S3Blobs:
    """The blobs below ``s3://bucket/prefix``: each blob one object ``prefix/<name>``."""

    def __init__(self, url: str, *, concurrency: int | None = None, part_size: int = PART_SIZE,
                 retry: RetryPolicy = DEFAULT_RETRY, client: Any = None):
        self.bucket, self.prefix = split_s3_url(url)
        self.location = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.concurrency = concurrency or s3_concurrency()
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size {part_size}: S3 parts are at least {MIN_PART_SIZE} bytes")
        self.part_size = part_size
        self.retry = retry
        self.counts = RequestCounts()
        self.client = client or make_client(self.concurrency)

    # -- plumbing --------------------------------------------------------------------------------
    def key(self, name: str) -> str:
        if not name or "/" in name:
            raise ValueError(f"{name!r}: a blob name is one path component")
        return f"{self.prefix}/{name}" if self.prefix else name

    def url(self, name: str) -> str:
        return f"{self.location}/{name}"

    def call(self, op: str, url: str, *, sent: int = 0, **kwargs: Any) -> Any:
        """One S3 operation (``put_object``, ``upload_part``, ...) with retries, counted."""
        method = getattr(self.client, op)

        def once():
            self.counts.count(op, sent=sent)
            return method(**kwargs)

        return call_with_retries(once, url, self.retry, on_retry=lambda _exc: self.counts.retried())

    # -- BlobStore -------------------------------------------------------------------------------
    def create(self, name: str) -> S3BlobWriter:
        return S3BlobWriter(self, name)

    def open(self, name: str) -> S3ReadFile:
        size = self.size(name)
        if size is None:
            raise FileNotFoundError(errno.ENOENT, "no such object", self.url(name))  # as open() says
        return S3ReadFile(self, name, size)

    def size(self, name: str) -> int | None:
        try:
            head = self.call("head_object", self.url(name), Bucket=self.bucket, Key=self.key(name))
        except BadInput as exc:
            if str(exc).endswith(": not found"):
                return None
            raise
        return int(head["ContentLength"])

    def names(self) -> list[str]:
        start = f"{self.prefix}/" if self.prefix else ""
        found: list[str] = []
        token: str | None = None
        while True:
            extra: dict[str, Any] = {"ContinuationToken": token} if token else {}
            page = self.call("list_objects_v2", self.location, Bucket=self.bucket, Prefix=start,
                             Delimiter="/", **extra)
            found += [o["Key"][len(start):] for o in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return sorted(n for n in found if n)
            token = page.get("NextContinuationToken")

    def remove(self, name: str) -> None:
        self.call("delete_object", self.url(name), Bucket=self.bucket, Key=self.key(name))

    def abort_unfinished_uploads(self, name: str) -> int:
        """Abort multipart uploads of ``name`` left by killed runs (S3 keeps their parts, unseen
        but stored, until aborted); returns how many."""
        key = self.key(name)
        page = self.call("list_multipart_uploads", self.url(name), Bucket=self.bucket, Prefix=key)
        ids = [u["UploadId"] for u in page.get("Uploads", []) if u.get("Key") == key]
        for upload_id in ids:
            self.call("abort_multipart_upload", self.url(name), Bucket=self.bucket, Key=key,
                      UploadId=upload_id)
        return len(ids)


class S3BlobWriter:
    """One object being written by a multipart upload, part by part, ``concurrency`` parts in
    flight at most: memory is bounded by ``(concurrency + 1) * part_size`` whatever the size.

    An object smaller than one part is sent by one PUT at commit. Nothing is visible under the
    name before :meth:`commit` (S3 shows a multipart object only once it is completed)."""

    file = None                      # no local file: only write()

    def __init__(self, store: S3Blobs, name: str):
        self.store = store
        self.name = store.url(name)
        self.key = store.key(name)
        self._blob = name
        self.size = 0
        self._buffer = bytearray()
        self._filled = 0                 # bytes of _buffer written so far
        self._upload_id: str | None = None
        self._parts: list[Future[dict]] = []
        self._slots = threading.BoundedSemaphore(store.concurrency)
        self._pool: ThreadPoolExecutor | None = None
        self._failed: BaseException | None = None
        self._done = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self._done:
            raise ValueError(f"{self.name}: write after commit or abort")
        self._raise_failure()
        view = memoryview(data).cast("B")
        n = len(view)
        part = self.store.part_size
        while len(view):
            if not self._buffer:
                self._buffer = bytearray(part)      # one allocation per part, filled in place
                self._filled = 0
            take = min(part - self._filled, len(view))
            self._buffer[self._filled:self._filled + take] = view[:take]
            self._filled += take
            view = view[take:]
            if self._filled == part:
                full, self._buffer = self._buffer, bytearray()   # handed over, not copied
                self._send_part(full)
        self.size += n
        return n

    def _send_part(self, data: bytearray) -> None:
        if self._upload_id is None:
            self.store.abort_unfinished_uploads(self._blob)
            started = self.store.call("create_multipart_upload", self.name,
                                      Bucket=self.store.bucket, Key=self.key)
            self._upload_id = started["UploadId"]
            self._pool = ThreadPoolExecutor(self.store.concurrency, thread_name_prefix="s3-part")
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise FactorArchiveError(f"{self.name}: more than {MAX_PARTS} parts of "
                                     f"{self.store.part_size >> 20} MiB; write smaller volumes")
        self._slots.acquire()                       # at most `concurrency` parts in memory
        self._raise_failure(release=True)
        assert self._pool is not None
        self._parts.append(self._pool.submit(self._upload_part, number, data))

    def _upload_part(self, number: int, data: bytearray) -> dict:
        try:
            answer = self.store.call("upload_part", self.name, sent=len(data), Bucket=self.store.bucket,
                                     Key=self.key, UploadId=self._upload_id, PartNumber=number,
                                     Body=data)
            return {"PartNumber": number, "ETag": answer["ETag"]}
        except BaseException as exc:
            if self._failed is None:
                self._failed = exc
            raise
        finally:
            self._slots.release()

    def _raise_failure(self, release: bool = False) -> None:
        if self._failed is not None:
            if release:
                self._slots.release()
            raise self._failed

    def commit(self) -> None:
        if self._done:
            raise ValueError(f"{self.name}: already committed or aborted")
        self._raise_failure()
        try:
            if self._upload_id is None:             # smaller than one part: one PUT
                data = bytes(self._buffer[:self._filled])
                self.store.call("put_object", self.name, sent=len(data), Bucket=self.store.bucket,
                                Key=self.key, Body=data)
            else:
                if self._buffer:
                    full, self._buffer = self._buffer, bytearray()
                    del full[self._filled:]             # the last part: what was written
                    self._send_part(full)
                parts = [f.result() for f in self._parts]
                self.store.call("complete_multipart_upload", self.name, Bucket=self.store.bucket,
                                Key=self.key, UploadId=self._upload_id,
                                MultipartUpload={"Parts": parts})
        except BaseException:
            self.abort()
            raise
        self._buffer = bytearray()
        self._done = True
        self._shutdown()

    def abort(self) -> None:
        """Stop the parts still queued and abort the upload: S3 then drops every part."""
        if self._done:
            return
        self._done = True
        self._buffer = bytearray()
        for f in self._parts:
            f.cancel()
        self._shutdown()
        if self._upload_id is not None:
            try:
                self.store.call("abort_multipart_upload", self.name, Bucket=self.store.bucket,
                                Key=self.key, UploadId=self._upload_id)
            except FactorArchiveError:
                pass                # best effort: the next create() of this name aborts it too

    def _shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class S3ReadFile(io.RawIOBase):
    """A seekable read-only file over one object: each read that misses the cache is one ranged
    GET of at least the read-ahead, which doubles (to 16 MiB) while reads follow each other and
    falls back after a seek. ``gets`` and ``bytes_fetched`` count what this file cost."""

    def __init__(self, store: S3Blobs, name: str, size: int):
        super().__init__()
        self.store = store
        self.name = store.url(name)
        self.key = store.key(name)
        self.size = size
        self.gets = 0
        self.bytes_fetched = 0
        self._pos = 0
        self._cache_start = 0
        self._cache = b""
        self._ahead = READ_AHEAD
        self._next_sequential = -1

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError(f"{self.name}: seek before the start")
        self._pos = base + offset
        return self._pos

    def _fetch(self, start: int, length: int) -> bytes:
        end = min(self.size, start + length) - 1
        url = self.name

        def get():
            self.store.counts.count("get_object")
            self.gets += 1
            answer = self.store.client.get_object(Bucket=self.store.bucket, Key=self.key,
                                                  Range=f"bytes={start}-{end}")
            return answer["Body"].read()

        data = call_with_retries(get, url, self.store.retry,
                                 on_retry=lambda _exc: self.store.counts.retried())
        if len(data) != end - start + 1:
            raise FactorArchiveError(f"{url}: asked for bytes {start}-{end}, got {len(data)} bytes "
                                     f"(the object changed while being read?)")
        self.bytes_fetched += len(data)
        self.store.counts.got(len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        out = memoryview(buffer).cast("B")
        want = min(len(out), self.size - self._pos)
        if want <= 0:
            return 0
        offset = self._pos - self._cache_start
        if not (offset >= 0 and offset + want <= len(self._cache)):
            sequential = self._pos == self._next_sequential
            self._ahead = min(MAX_READ_AHEAD, self._ahead * 2) if sequential else READ_AHEAD
            self._cache_start = self._pos
            self._cache = self._fetch(self._pos, max(want, self._ahead))
            offset = 0
        out[:want] = self._cache[offset:offset + want]
        self._pos += want
        self._next_sequential = self._cache_start + len(self._cache)
        return want

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = max(0, self.size - self._pos)
        buffer = bytearray(min(size, max(0, self.size - self._pos)))
        n = self.readinto(buffer) if buffer else 0
        return bytes(buffer[:n])

    def readall(self) -> bytes:
        return self.read(-1)
