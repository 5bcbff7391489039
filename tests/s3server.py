"""A real S3 endpoint for tests: SeaweedFS (``weed server -s3``) on loopback, in a temporary directory.

Only the S3 gateway and what it needs (master, volume server, filer) run, each on a free loopback
port (gRPC ports included, so nothing clashes with another instance); telemetry is off. The gateway
is configured with one identity holding dummy keys, so requests must be signed with them: the
tests exercise the same credential path (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_ENDPOINT_URL``) a user's object store needs.

    with SeaweedS3(tmp_path) as s3:
        s3.make_bucket("archive")
        monkeypatch.setenv(...)  # s3.env holds the variables

``weed_binary()`` is None when the binary is absent; tests skip only then.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ACCESS_KEY = "factorarchivetest"
SECRET_KEY = "factorarchivetestsecret0123456789"
START_TIMEOUT = 45.0


def weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    return shutil.which("weed")


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class SeaweedS3:
    """One ``weed server`` with an S3 gateway; a context manager that stops it on exit."""

    def __init__(self, workdir: Path, binary: str | None = None, *, max_volumes: int = 32):
        """``max_volumes``: SeaweedFS volumes of 64 MB each, so 32 hold 2 GB (benchmarks ask more)."""
        self.max_volumes = max_volumes
        self.binary = binary or weed_binary()
        if self.binary is None:
            raise RuntimeError("weed binary not found")
        self.workdir = Path(workdir)
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log_path = self.workdir / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The environment a client needs (botocore reads AWS_ENDPOINT_URL itself)."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1"}

    def start(self) -> SeaweedS3:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "tester",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]}))
        (master, master_g, volume, volume_g, filer, filer_g, s3, s3_g, metrics) = free_ports(9)
        self.port = s3
        args = [
            self.binary, "server", "-s3", "-filer",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}",
            f"-master.port={master}", f"-master.port.grpc={master_g}", "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64", "-master.raftHashicorp",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_g}", f"-volume.max={self.max_volumes}",
            "-volume.preStopSeconds=0",
            f"-filer.port={filer}", f"-filer.port.grpc={filer_g}",
            f"-s3.port={s3}", f"-s3.port.grpc={s3_g}", f"-s3.config={config}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-metricsPort={metrics}",
        ]
        with open(self.log_path, "wb") as log:  # the server keeps its own copy of the descriptor
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.workdir, start_new_session=True)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        """Until the gateway accepts a signed request and the cluster can store an object."""
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(self.port):
            self._check_alive(deadline)
            time.sleep(0.2)
        fs = self.filesystem()
        probe = f"probe-{os.getpid()}"
        while True:
            try:
                fs.mkdir(probe)
                fs.pipe(f"{probe}/x", b"ready")
                if fs.cat(f"{probe}/x") == b"ready":
                    fs.rm(probe, recursive=True)
                    return
            except Exception:
                pass
            self._check_alive(deadline)
            fs.invalidate_cache()
            time.sleep(0.3)

    def _check_alive(self, deadline: float) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"weed server exited ({self.proc.returncode}); see {self.log_path}:\n"
                               + self.log_path.read_text(errors="replace")[-3000:])
        if time.monotonic() > deadline:
            self.stop()
            raise RuntimeError(f"weed server did not become ready in {START_TIMEOUT:.0f} s; "
                               f"see {self.log_path}")

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(key=ACCESS_KEY, secret=SECRET_KEY, endpoint_url=self.endpoint,
                                 skip_instance_cache=True, use_listings_cache=False)

    def make_bucket(self, name: str) -> str:
        self.filesystem().mkdir(name)
        return name

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # weed shuts down gracefully but slowly; the data is throw-away, so do not wait long.
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> SeaweedS3:
        return self.start()

    def __exit__(self, *_exc) -> None:
        self.stop()
