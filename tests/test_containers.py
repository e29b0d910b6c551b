"""The CPU image as its users run it, on a real Docker engine (the `container` marker; `make test-containers`
starts an engine, builds the image with images/build.sh --local and runs these).

What a Dockerfile lint cannot show: the entrypoint and ``semcode --help`` answer, the tasks' user is the
non-root uid the chart runs as and can write where KFP's launcher writes, nothing of the build machine (its
CA bundle, its paths, secrets) is in the image, the packages import with the versions the image promises,
``semcode serve`` from the image answers /readyz and /search on a loopback port with a bundle mounted
read-only, and the tiny pipeline runs task by task in the image (``semcode run --runner docker``) to a
published, searchable bundle.

An engine is started (images/engine.sh start) where none answers and this is root; otherwise, and where
the image is not built, every test skips with the reason.
"""

from __future__ import annotations

import json
import shutil
import socket
import statistics
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from bundle_fixture import TinyRun, assemble_tiny_bundle, cached_tiny_run

import semcode
from semcode import bundle as bundles
from semcode.components.images import CPU_IMAGE
from semcode.pipeline import local as local_run

pytestmark = pytest.mark.container

REPO = Path(__file__).resolve().parents[1]
ENGINE_SCRIPT = REPO / "images" / "engine.sh"
QUERY = "read a file line by line"


def docker(*arguments: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", *arguments], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(arguments)} exited {result.returncode}: {result.stderr}")
    return result


def in_image(*command: str, user: str | None = None) -> str:
    """stdout of ``command`` in a fresh container of the CPU image, without a network."""
    options = ["--user", user] if user else []
    return docker(
        "run", "--rm", "--network", "none", *options, "--entrypoint", command[0], CPU_IMAGE, *command[1:]
    ).stdout


@pytest.fixture(scope="module")
def engine() -> None:
    """A Docker engine that answers: the one running, else one images/engine.sh starts (root only)."""
    if shutil.which("docker") is None:
        pytest.skip("no docker client on this machine")
    if docker("info", check=False, timeout=30).returncode == 0:
        return
    started = subprocess.run([str(ENGINE_SCRIPT), "start"], capture_output=True, text=True, timeout=600)
    if started.returncode != 0:
        pytest.skip(f"no Docker engine: {started.stderr.strip().splitlines()[-1]}")


@pytest.fixture(scope="module")
def image(engine: None) -> dict:
    """`docker image inspect` of the CPU image the pipeline names."""
    found = docker("image", "inspect", CPU_IMAGE, check=False)
    if found.returncode != 0:
        pytest.skip(f"{CPU_IMAGE} is not built: images/build.sh --local (or make test-containers)")
    return json.loads(found.stdout)[0]


def test_the_entrypoint_is_semcode_and_help_answers(image: dict) -> None:
    config = image["Config"]
    assert config["Entrypoint"] == ["semcode"] and config["Cmd"] == ["--help"]
    assert config["User"] == "1000:1000" and config["WorkingDir"] == "/home/semcode"
    shown = docker("run", "--rm", "--network", "none", CPU_IMAGE).stdout
    assert shown.startswith("usage: semcode") and "serve" in shown and "run" in shown
    assert (
        docker("run", "--rm", "--network", "none", CPU_IMAGE, "--version").stdout.strip()
        == semcode.__version__
    )


def test_the_user_is_1000_and_writes_where_kfp_puts_artifacts(image: dict) -> None:
    script = 'id -u; id -g; touch /gcs/a /minio/a /s3/a "$HOME/a" && echo writable'
    assert in_image("sh", "-c", script).split() == ["1000", "1000", "writable"]
    # a cluster that picks an arbitrary uid in group 0 (OpenShift): still writable
    assert in_image("sh", "-c", script, user="123456:0").split() == ["123456", "0", "writable"]


def test_the_packages_are_the_ones_the_image_promises(image: dict) -> None:
    script = (
        "import glob, json, os, torch, deepspeed, faiss, onnxruntime, kfp, semcode\n"
        "from semcode.pipeline.compile import DEFAULT_OUTPUT\n"
        "ops = glob.glob(os.path.join(os.path.dirname(deepspeed.__file__), 'ops/comm/deepspeed_shm_comm_op*.so'))\n"
        "print(json.dumps(dict(torch=torch.__version__, cuda=torch.version.cuda, deepspeed=deepspeed.__version__,\n"
        "    faiss=faiss.__version__, shm_op=bool(ops), pipeline=DEFAULT_OUTPUT.read_text())))\n"
    )
    found = json.loads(in_image("python3", "-c", script).splitlines()[-1])  # after DeepSpeed's log line
    locked = dict(
        line.split("==") for line in (REPO / "requirements.lock").read_text().splitlines() if "==" in line
    )
    assert found["torch"].split("+")[0] == locked["torch"] and found["cuda"] is None
    assert found["deepspeed"] == locked["deepspeed"] and found["faiss"] == locked["faiss-cpu"]
    assert found["shm_op"], "DeepSpeed's shared-memory op is not prebuilt"
    assert f"image: {CPU_IMAGE}" in found["pipeline"]  # the packaged pipeline names this build's images


def test_nothing_of_the_build_machine_is_in_the_image(image: dict) -> None:
    config = image["Config"]
    names = [entry.partition("=")[0] for entry in config["Env"]]
    assert not [
        name for name in names if any(word in name for word in ("TOKEN", "SECRET", "PASSWORD", "AWS_"))
    ]
    history = docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", CPU_IMAGE).stdout
    assert "127.0.0.1" not in history and "BUILD_CA_URL" not in history and str(REPO) not in history
    assert str(REPO) not in json.dumps(config)
    # the CA bundle the builder trusted (a TLS-intercepting proxy's) stays there
    assert in_image("ls", "-A", "/usr/local/share/ca-certificates").strip() == ""
    bundle = in_image("cat", "/etc/ssl/certs/ca-certificates.crt")
    for extra in Path("/usr/local/share/ca-certificates").glob("*.crt"):
        body = "".join(
            line for line in extra.read_text().splitlines() if line and not line.startswith("-----")
        )
        assert body[:64] not in bundle.replace("\n", ""), f"{extra.name} from this machine is in the image"
    # no text file of the image names the build's checkout or the builder's scratch
    found = in_image("sh", "-c", f"grep -rIl -e '{REPO}' -e 'semcode-build\\.' /opt/venv /etc /home || true")
    assert found.strip() == "", found


def test_the_image_size(image: dict) -> None:
    """Recorded in bench/RESULTS.md; the bound catches a CUDA torch or a compiler slipping in."""
    assert image["Size"] < 3.5e9, f"{image['Size'] / 1e9:.2f} GB"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def readable_bundle(image: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle in a folder the image's user (uid 1000) can read (pytest's temporary folders are 0700)."""
    run: TinyRun = cached_tiny_run(tmp_path_factory)
    bundle = assemble_tiny_bundle(run, tmp_path_factory.mktemp("container_bundle") / "bundle")
    for path in [bundle, *bundle.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return bundle


def test_serve_from_the_image_answers_on_a_loopback_port(readable_bundle: Path) -> None:
    port = free_port()
    started = time.perf_counter()
    container = docker(
        "run", "--detach", "--rm", "--network", "host", "--read-only", "--tmpfs", "/tmp",
        "--volume", f"{readable_bundle}:/bundle:ro",
        CPU_IMAGE, "serve", "/bundle", "--host", "127.0.0.1", "--port", str(port),
    ).stdout.strip()  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        ready = None
        while time.perf_counter() - started < 180 and ready is None:
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=5) as response:
                    ready = time.perf_counter() - started if response.status == 200 else None
            except OSError:
                time.sleep(0.5)
        assert ready is not None, docker("logs", container, check=False).stderr[-2000:]
        seconds = []
        for _ in range(20):
            began = time.perf_counter()
            with urllib.request.urlopen(
                f"{base}/search?q={urllib.parse.quote(QUERY)}&k=5", timeout=30
            ) as response:
                found = json.loads(response.read())
            seconds.append(time.perf_counter() - began)
        assert found["results"] and found["results"][0]["code"]
        print(
            f"\nserve in a container: ready in {ready:.1f} s, query p50 {statistics.median(seconds) * 1000:.1f} ms"
        )
    finally:
        docker("stop", "--time", "5", container, check=False)


def test_the_tiny_pipeline_runs_in_the_image_to_a_published_searchable_bundle(
    image: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    runs = tmp_path / "runs"
    code = local_run.main(
        ["--preset", "tiny", "--runner", "docker", "--runs-dir", str(runs), "--run-id", "c"]
    )
    shown = capsys.readouterr()
    summary = json.loads((runs / "c" / "summary.json").read_text())
    assert code == 0 and summary["passed"] and summary["published"], summary["reasons"]
    assert "docker: every task runs in " + CPU_IMAGE in shown.out + shown.err
    assert f"tasks of {CPU_IMAGE.replace('-cpu', '-gpu')} run in {CPU_IMAGE} here" in shown.out + shown.err
    tasks = [stage["task"] for stage in summary["stages"]]
    assert tasks[0] == "ingest" and {"evaluate", "gate", "publish"} <= set(tasks)
    assert any(task.startswith("train-encoder") for task in tasks)
    # written by the image's user inside the containers, not by this process
    artifacts = next((runs / "c" / "artifacts").glob("*/ingest/pairs"))
    assert artifacts.stat().st_uid in (1000, Path.home().stat().st_uid)
    bundle = runs / "c" / "bundle"
    assert bundles.validate_bundle(bundle)["version"] == summary["version"]
    searched = subprocess.run(
        [str(Path(local_run.sys.executable).parent / "semcode"), "search", str(bundle), QUERY, "-k", "3"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert searched.stdout.strip()
