"""semcode.storage against local folders and a real S3 server (rclone serve s3, see conftest.py)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from semcode import locks, storage
from semcode.storage import StorageError


@pytest.fixture(params=["local", "s3"])
def base(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same tests on a local folder and on a fresh S3 bucket."""
    if request.param == "local":
        return str(tmp_path / "store")
    return request.getfixturevalue("s3_env")


def test_uri_helpers() -> None:
    assert storage.is_s3("s3://b/k") and not storage.is_s3("/tmp/s3://x") and not storage.is_s3(Path("a"))
    assert storage.split_s3("s3://bucket/a/b.txt") == ("bucket", "a/b.txt")
    assert storage.split_s3("s3://bucket") == ("bucket", "")
    assert storage.join("s3://bucket/", "/a/", "b.txt") == "s3://bucket/a/b.txt"
    assert storage.join("/data", "a", "b.txt") == "/data/a/b.txt"
    with pytest.raises(ValueError, match="no bucket"):
        storage.split_s3("s3:///key")


def test_write_read_exists_round_trip(base: str) -> None:
    blob = bytes(range(256)) * 10
    storage.write_bytes(f"{base}/deep/er/blob.bin", blob)
    storage.write_text(f"{base}/notes.txt", "héllo\n")

    assert storage.read_bytes(f"{base}/deep/er/blob.bin") == blob
    assert storage.read_text(f"{base}/notes.txt") == "héllo\n"
    assert storage.exists(f"{base}/notes.txt")
    assert storage.exists(f"{base}/deep")  # a folder (on S3: a prefix with objects)
    assert not storage.exists(f"{base}/missing.txt")
    assert not storage.exists(f"{base}/dee")  # a key prefix that is not a folder


def test_list_files_nested(base: str) -> None:
    for name in ["a.py", "pkg/b.py", "pkg/sub/c.py", "pkg2/d.py"]:
        storage.write_text(f"{base}/{name}", name)

    assert storage.list_files(base) == [
        f"{base}/a.py",
        f"{base}/pkg/b.py",
        f"{base}/pkg/sub/c.py",
        f"{base}/pkg2/d.py",
    ]
    # "pkg" is a folder: pkg2/ is not under it, with or without the trailing slash.
    assert storage.list_files(f"{base}/pkg") == [f"{base}/pkg/b.py", f"{base}/pkg/sub/c.py"]
    assert storage.list_files(f"{base}/pkg/") == [f"{base}/pkg/b.py", f"{base}/pkg/sub/c.py"]
    assert storage.list_files(f"{base}/pkg", recursive=False) == [f"{base}/pkg/b.py"]


def test_copy_local_to_s3_to_local(s3_env: str, tmp_path: Path) -> None:
    source = tmp_path / "in" / "model.bin"
    source.parent.mkdir()
    source.write_bytes(b"\x00weights\xff" * 1000)

    storage.copy(source, f"{s3_env}/models/model.bin")
    storage.copy(f"{s3_env}/models/model.bin", f"{s3_env}/models/copy.bin")  # server-side
    storage.copy(f"{s3_env}/models/copy.bin", tmp_path / "out" / "nested" / "model.bin")
    storage.copy(tmp_path / "out" / "nested" / "model.bin", tmp_path / "again.bin")

    assert (tmp_path / "out" / "nested" / "model.bin").read_bytes() == source.read_bytes()
    assert (tmp_path / "again.bin").read_bytes() == source.read_bytes()
    assert not list((tmp_path / "out" / "nested").glob("*.partial"))


def test_copy_tree_any_mix(s3_env: str, tmp_path: Path) -> None:
    local = tmp_path / "bundle"
    for name in ["bundle.json", "encoder/config.json", "encoder/model.safetensors"]:
        storage.write_text(local / name, f"content of {name}")

    uploaded = storage.copy_tree(local, f"{s3_env}/registry/v1")
    assert uploaded == [
        f"{s3_env}/registry/v1/bundle.json",
        f"{s3_env}/registry/v1/encoder/config.json",
        f"{s3_env}/registry/v1/encoder/model.safetensors",
    ]
    storage.copy_tree(f"{s3_env}/registry/v1", f"{s3_env}/registry/latest")
    downloaded = storage.copy_tree(f"{s3_env}/registry/latest", tmp_path / "back")

    assert downloaded == [
        str(tmp_path / "back" / n)
        for n in ["bundle.json", "encoder/config.json", "encoder/model.safetensors"]
    ]
    assert (
        storage.read_text(tmp_path / "back" / "encoder" / "config.json") == "content of encoder/config.json"
    )
    with pytest.raises(FileNotFoundError, match="no files to copy"):
        storage.copy_tree(f"{s3_env}/registry/nothing", tmp_path / "empty")


def test_local_file_and_dir(s3_env: str) -> None:
    storage.write_text(f"{s3_env}/shards/part-0.txt", "zero")
    storage.write_text(f"{s3_env}/shards/sub/part-1.txt", "one")

    with storage.local_file(f"{s3_env}/shards/part-0.txt") as path:
        assert path.read_text() == "zero"
    assert not path.exists()  # the temporary download is gone
    with storage.local_dir(f"{s3_env}/shards") as folder:
        assert (folder / "sub" / "part-1.txt").read_text() == "one"


def test_multipart_upload_and_download_are_intact(
    s3_env: str, s3_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEMCODE_S3_MULTIPART_MB", "5")
    source = tmp_path / "big.bin"
    source.write_bytes(os.urandom(12 * 1024 * 1024))  # 5 + 5 + 2 MiB parts
    parts: list[int] = []
    events = storage.s3_client().meta.events

    def count_part(params: dict, **kwargs) -> None:
        parts.append(params["PartNumber"])

    events.register("before-parameter-build.s3.UploadPart", count_part)
    try:
        storage.copy(source, f"{s3_env}/big/big.bin")
    finally:
        events.unregister("before-parameter-build.s3.UploadPart", count_part)
    storage.copy(f"{s3_env}/big/big.bin", tmp_path / "big.back")

    assert sorted(parts) == [1, 2, 3]
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert hashlib.sha256((tmp_path / "big.back").read_bytes()).hexdigest() == digest
    bucket, _ = storage.split_s3(s3_env)
    assert hashlib.sha256((s3_server.root / bucket / "big" / "big.bin").read_bytes()).hexdigest() == digest


def test_missing_key_is_file_not_found(s3_env: str, tmp_path: Path) -> None:
    missing = f"{s3_env}/no/such.txt"
    with pytest.raises(FileNotFoundError, match="no/such.txt"):
        storage.read_bytes(missing)
    with pytest.raises(FileNotFoundError, match="no/such.txt"):
        storage.copy(missing, tmp_path / "x.txt")
    with pytest.raises(FileNotFoundError, match="no/such.txt"):
        storage.copy(missing, f"{s3_env}/x.txt")
    assert not (tmp_path / "x.txt").exists() and not (tmp_path / "x.txt.partial").exists()


def test_missing_bucket_names_bucket_and_endpoint(s3_env: str, s3_server) -> None:
    for action in [
        lambda: storage.read_bytes("s3://no-such-bucket/a.txt"),
        lambda: storage.write_text("s3://no-such-bucket/a.txt", "x"),
        lambda: storage.exists("s3://no-such-bucket/a.txt"),
        lambda: storage.list_files("s3://no-such-bucket/data"),
    ]:
        with pytest.raises(StorageError) as caught:
            action()
        assert "no-such-bucket" in str(caught.value) and s3_server.endpoint_url in str(caught.value)
        assert "does not exist" in str(caught.value)


def test_bad_credentials_name_endpoint_and_variables(
    s3_env: str, s3_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage.write_text(f"{s3_env}/a.txt", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    for action in [
        lambda: storage.read_text(f"{s3_env}/a.txt"),
        lambda: storage.exists(f"{s3_env}/a.txt"),
        lambda: storage.write_text(f"{s3_env}/b.txt", "y"),
    ]:
        with pytest.raises(StorageError, match="rejected the credentials") as caught:
            action()
        assert s3_server.endpoint_url in str(caught.value)
        assert "AWS_ACCESS_KEY_ID" in str(caught.value) and "AWS_SECRET_ACCESS_KEY" in str(caught.value)


def test_unreachable_endpoint_is_retried_then_named(s3_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    monkeypatch.setenv("SEMCODE_S3_MAX_ATTEMPTS", "2")
    sends: list[str] = []
    events = storage.s3_client().meta.events

    def count_send(**kwargs) -> None:
        sends.append(kwargs["event_name"])

    events.register("before-send.s3", count_send)
    try:
        with pytest.raises(StorageError, match=f"cannot reach S3 endpoint {dead}"):
            storage.read_text(f"{s3_env}/a.txt")
    finally:
        events.unregister("before-send.s3", count_send)
    assert len(sends) == 2  # one retry after the first refused connection


def test_endpoint_from_s3_endpoint_url_and_client_cache(
    s3_env: str, s3_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = storage.s3_client()
    assert storage.s3_client() is first  # cached per endpoint and credentials
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("S3_ENDPOINT_URL", s3_server.endpoint_url)

    storage.write_text(f"{s3_env}/fallback.txt", "via S3_ENDPOINT_URL")
    assert storage.read_text(f"{s3_env}/fallback.txt") == "via S3_ENDPOINT_URL"
    assert storage.s3_settings().endpoint_url == s3_server.endpoint_url


def test_bad_settings_and_uris_are_clear(s3_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEMCODE_S3_MULTIPART_MB", "1")
    with pytest.raises(ValueError, match="SEMCODE_S3_MULTIPART_MB must be at least 5"):
        storage.write_text(f"{s3_env}/a.txt", "x")
    monkeypatch.delenv("SEMCODE_S3_MULTIPART_MB")
    with pytest.raises(ValueError, match="not a file"):
        storage.read_bytes(s3_env)
    with pytest.raises(FileNotFoundError, match="folder not found"):
        storage.list_files("/no/such/folder")


# ---------------------------------------------------------------------------------------------
# Names from outside stay inside their folder


@pytest.mark.parametrize("name", ["../outside.txt", "a/../../outside.txt", "/etc/passwd", "a//b", "a\\b", ""])
def test_names_that_leave_their_folder_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="not a relative name inside its folder"):
        storage.check_relative_name(name, "key")


def test_copy_tree_refuses_s3_keys_that_climb_out(
    s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real S3 accepts a key like bundle/../../planted.txt (the test server refuses to store one, so its
    listing is given here); downloading it must write nothing, inside or outside the target."""
    storage.write_text(f"{s3_env}/bundle/ok.txt", "fine\n")
    real_listing = storage._relative_files
    monkeypatch.setattr(
        storage,
        "_relative_files",
        lambda prefix, recursive: [*real_listing(prefix, recursive), "../../planted.txt"],
    )
    target = tmp_path / "deep" / "target"
    with pytest.raises(ValueError, match=r"'\.\./\.\./planted\.txt'.*not a relative name"):
        storage.copy_tree(f"{s3_env}/bundle", target)
    assert not (tmp_path / "planted.txt").exists() and not target.exists()


def test_copy_tree_refuses_a_symlink_that_leads_out(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "file.txt").write_text("x")
    target.mkdir()
    (target / "sub").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(ValueError, match="resolves outside"):
        storage.copy_tree(source, target)
    assert not (tmp_path / "elsewhere" / "file.txt").exists()


def test_check_writable_finds_a_bad_registry_before_any_work(s3_env: str, tmp_path: Path) -> None:
    storage.check_writable(f"{s3_env}/registry", "registry")  # writable: no error, no probe left
    assert storage.list_files(s3_env) == []
    storage.check_writable(tmp_path / "runs" / "registry", "registry")
    assert not (tmp_path / "runs").exists()  # a local check creates nothing
    with pytest.raises(StorageError, match=r"registry s3://no-such-bucket-semcode/r is not writable"):
        storage.check_writable("s3://no-such-bucket-semcode/r", "registry")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(StorageError, match=r"registry .*a_file/registry is not writable"):
        storage.check_writable(tmp_path / "a_file" / "registry", "registry")


# ---------------------------------------------------------------------------------------------
# Writers that share a folder (issue 31): unique temporary names, and the lock publish moves latest under


def test_concurrent_downloads_of_one_file_never_collide(s3_env: str, tmp_path: Path) -> None:
    import threading

    blob = os.urandom(6 * 1024 * 1024)
    storage.write_bytes(f"{s3_env}/big.bin", blob)
    target = tmp_path / "cache" / "big.bin"
    errors: list[BaseException] = []

    def download() -> None:
        try:
            for _ in range(3):
                storage.copy(f"{s3_env}/big.bin", target)
                assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(blob).digest()
        except BaseException as error:  # collected: a thread's exception would be lost
            errors.append(error)

    threads = [threading.Thread(target=download) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert sorted(p.name for p in target.parent.iterdir()) == ["big.bin"]  # no temporary file left


def test_the_exclusive_lock_serialises_two_writers(base: str) -> None:
    import threading
    import time

    lock, counter = storage.join(base, ".counter.lock"), storage.join(base, "counter")
    storage.write_text(counter, "0")
    held: list[tuple[float, float]] = []

    def increment() -> None:
        with locks.exclusive_lock(lock, wait_seconds=60):
            started = time.monotonic()
            value = int(storage.read_text(counter))
            time.sleep(0.5)  # a read-check-write that would lose an update without the lock
            storage.write_text(counter, str(value + 1))
            held.append((started, time.monotonic()))

    threads = [threading.Thread(target=increment) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert storage.read_text(counter) == "2"
    (first_start, first_end), (second_start, _) = sorted(held)
    assert second_start >= first_end  # never held by both at once

    with locks.exclusive_lock(lock):  # held: another writer gives up after its wait, naming the holder
        with pytest.raises(locks.LockBusy, match=f"held by {socket.gethostname()}:{os.getpid()}"):
            with locks.exclusive_lock(lock, wait_seconds=0.3):
                pass


# ---------------------------------------------------------------------------------------------
# Stage outputs: complete or absent, never mixed (issue 31 item 1)


def _write_output(out: Path, version: str, files: int = 3) -> None:
    """A stage output of ``files`` parts and a manifest (last), each saying which version wrote it."""
    for index in range(files):
        (out / f"part-{index}.txt").write_text(version)
    (out / "manifest.json").write_text(json.dumps({"version": version}))


def _versions(out: Path) -> set[str]:
    return {
        json.loads(path.read_text())["version"] if path.suffix == ".json" else path.read_text()
        for path in out.iterdir()
    }


def test_a_stage_output_that_fails_midway_leaves_the_earlier_one_whole(tmp_path: Path) -> None:
    out = tmp_path / "runs" / "ingest"
    with storage.stage_output(out) as partial:
        assert partial == tmp_path / "runs" / ".ingest.partial" and partial.is_dir()
        _write_output(partial, "old")
    assert _versions(out) == {"old"} and sorted(p.name for p in out.parent.iterdir()) == ["ingest"]

    with pytest.raises(RuntimeError, match="killed"), storage.stage_output(out) as partial:
        (partial / "part-0.txt").write_text("new")
        raise RuntimeError("killed after one part")
    assert _versions(out) == {"old"} and len(list(out.iterdir())) == 4
    assert sorted(p.name for p in out.parent.iterdir()) == ["ingest"]  # the partial is gone

    with storage.stage_output(out) as partial:  # a complete re-run replaces it whole
        _write_output(partial, "new", files=2)
    assert _versions(out) == {"new"} and not (out / "part-2.txt").exists()
    assert sorted(p.name for p in out.parent.iterdir()) == ["ingest"]


@pytest.mark.parametrize("point", ["writing", "before-swap", "between-renames", "after-swap"])
def test_a_stage_output_killed_at_any_point_is_old_or_absent_and_the_next_run_cleans_up(
    tmp_path: Path, point: str
) -> None:
    """os._exit in a child process at a chosen point of a re-run (no cleanup code runs, as with kill -9):
    the output is the old one whole (or, between the two renames of the fallback swap, absent), never a mix;
    the next run removes what the killed one left and writes the new one."""
    out = tmp_path / "out"
    with storage.stage_output(out) as partial:
        _write_output(partial, "old")
    script = f"""
import os, sys
from pathlib import Path
from semcode import storage

point = {point!r}
if point == "between-renames":
    storage._exchange = lambda first, second: False  # the two-rename fallback of systems without it
    real_replace = os.replace
    def replace(src, dst):
        real_replace(src, dst)
        if str(dst).endswith(".out.old"):
            os._exit(9)
    os.replace = replace
if point == "after-swap":
    real_exchange = storage._exchange
    def exchange(first, second):
        assert real_exchange(first, second)
        os._exit(9)
    storage._exchange = exchange
with storage.stage_output(Path({str(out)!r})) as partial:
    (partial / "part-0.txt").write_text("new")
    if point == "writing":
        os._exit(9)
    (partial / "part-1.txt").write_text("new")
    (partial / "manifest.json").write_text('{{"version": "new"}}')
    if point == "before-swap":
        os._exit(9)
"""
    assert subprocess.run([sys.executable, "-c", script]).returncode == 9
    left = sorted(p.name for p in tmp_path.iterdir())
    if point == "between-renames":
        assert not out.exists() and left == [".out.old", ".out.partial"]
    elif point == "after-swap":  # the swap was one step: the new output, the old one under the temporary name
        assert _versions(out) == {"new"} and left == [".out.partial", "out"]
    else:
        assert _versions(out) == {"old"} and len(list(out.iterdir())) == 4 and left == [".out.partial", "out"]
    with storage.stage_output(out) as partial:
        _write_output(partial, "next", files=1)
    assert _versions(out) == {"next"} and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_stage_output_refuses_a_folder_that_is_not_one(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "notes.txt").write_text("mine")
    with (
        pytest.raises(FileExistsError, match="not a semcode stage output"),
        storage.stage_output(tmp_path / "home"),
    ):
        pass
    assert (tmp_path / "home" / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"), storage.stage_output(tmp_path / "file"):
        pass


def test_a_kept_partial_survives_a_failure_and_resume_seeds_from_a_complete_output(tmp_path: Path) -> None:
    out, keep = tmp_path / "encoder", "checkpoints/latest"
    with pytest.raises(KeyboardInterrupt), storage.stage_output(out, keep=keep) as partial:
        (partial / "checkpoints").mkdir()
        (partial / keep).write_text("step-4")
        raise KeyboardInterrupt
    assert (storage.partial_path(out) / keep).read_text() == "step-4" and not out.exists()
    with storage.stage_output(out, keep=keep, resume=True) as partial:  # continues the kept partial
        assert (partial / keep).read_text() == "step-4"
        (partial / keep).write_text("step-8")
        (partial / "metrics.json").write_text("{}")
    assert (out / keep).read_text() == "step-8" and not storage.partial_path(out).exists()
    (out / "checkpoints" / "step-8").mkdir()
    (out / "checkpoints" / "step-8" / "model.safetensors").write_text("weights at step 8")
    with storage.stage_output(out, keep=keep, resume=True) as partial:  # seeded from the complete output
        assert (partial / keep).read_text() == "step-8" and (partial / "metrics.json").read_text() == "{}"
        weights = "checkpoints/step-8/model.safetensors"  # a checkpoint's files are never rewritten: linked
        assert (partial / weights).stat().st_ino == (out / weights).stat().st_ino
        assert (partial / "metrics.json").stat().st_ino != (out / "metrics.json").stat().st_ino  # copied
        (partial / "metrics.json").write_text('{"resumed": true}')
        assert (out / "metrics.json").read_text() == "{}"  # the earlier output stays whole until the swap
    assert json.loads((out / "metrics.json").read_text()) == {"resumed": True}
    with storage.stage_output(out, keep=keep) as partial:  # a fresh run starts empty
        assert list(partial.iterdir()) == []
        (partial / "metrics.json").write_text("{}")


def test_an_unwritable_output_is_one_line_naming_the_path(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.geteuid() != 0:  # root writes anywhere
            with pytest.raises(
                storage.OutputError, match=f"Permission denied while writing {locked / 'out'}: "
            ):
                with storage.stage_output(locked / "out") as partial:
                    (partial / "manifest.json").write_text("{}")
    finally:
        locked.chmod(0o700)
    error = OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".out.partial" / "x"))
    with pytest.raises(storage.OutputError, match="read-only: write elsewhere") as raised:
        with storage.disk_space_errors(tmp_path / "out"):
            raise error
    assert raised.value.errno == errno.EROFS
    other = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "an-input"))
    with pytest.raises(PermissionError) as raised, storage.disk_space_errors(tmp_path / "out"):
        raise other  # an unreadable input is not the output's fault
    assert raised.value is other
