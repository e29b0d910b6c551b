"""`semcode run --runner docker` without an engine: what each task container would get (mounts, user,
environment, images) and the one-line refusals before a run's folder is made. The runs in containers
themselves are in tests/test_containers.py (the `container` marker)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from kfp import local

import semcode
from semcode.config import ConfigError
from semcode.pipeline import containers
from semcode.pipeline import local as local_run
from semcode.pipeline.compile import load_pipeline


@pytest.fixture
def no_engine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """DOCKER_HOST names a socket nothing listens on."""
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")


def test_the_gpu_tasks_run_in_the_cpu_image_inside_the_block_only() -> None:
    pipeline = load_pipeline()
    images = {label: e["container"]["image"] for label, e in containers.executors(pipeline).items()}
    gpu, cpu = "ghcr.io/semcode/semcode-gpu:0.1.0", "ghcr.io/semcode/semcode-cpu:0.1.0"
    with containers.gpu_tasks_on_the_cpu_image(pipeline, gpu, cpu) as swapped:
        assert "exec-train-encoder" in swapped and "exec-ingest" not in swapped
        assert {e["container"]["image"] for e in containers.executors(pipeline).values()} == {cpu}
    after = {label: e["container"]["image"] for label, e in containers.executors(pipeline).items()}
    assert after == images and after["exec-train-encoder"] == gpu


def test_local_paths_are_the_registry_the_path_sources_and_the_starting_encoder(tmp_path: Path) -> None:
    encoder = tmp_path / "encoder"
    encoder.mkdir()
    arguments = {
        "gate_registry": str(tmp_path / "registry"),
        "ingest_sources": [
            "python:stdlib",
            f"dir:{tmp_path}/code",
            "pairs:s3://bucket/pairs.jsonl",
            "dir:rel",
        ],
        "train_encoder_init_from": str(encoder),
    }
    writable, readable = containers.local_paths(arguments)
    assert writable == [str(tmp_path / "registry")]
    assert readable == [str(tmp_path / "code"), str(Path("rel").resolve()), str(encoder)]
    s3 = containers.local_paths(
        {"gate_registry": "s3://models/registry", "train_encoder_init_from": "minilm"}
    )
    assert s3 == ([], [])


def test_the_docker_runner_mounts_the_run_and_passes_only_what_the_tasks_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("SOME_HOST_VARIABLE", "x")
    run_dir, registry, code = tmp_path / "run", tmp_path / "registry", tmp_path / "code"
    code.mkdir()
    checkpoints = str(run_dir / "checkpoints")
    environment = {semcode.RUN_PID_ENV: "123", semcode.RUN_CHECKPOINTS_ENV: checkpoints}
    runner = containers.docker_runner(
        {"gate_registry": str(registry), "ingest_sources": [f"dir:{code}"]},
        run_dir / "artifacts",
        environment,
    )
    assert isinstance(runner, local.DockerRunner)
    args = runner.container_run_args
    # the pipeline root is kfp.local's own mount; it exists before the engine would make it as root
    mounts = {mount["Target"]: mount.get("ReadOnly", False) for mount in args["mounts"]}
    assert mounts == {checkpoints: False, str(registry): False, str(code): True}
    assert (run_dir / "artifacts").is_dir()
    assert args["environment"] == {"AWS_ACCESS_KEY_ID": "key", semcode.RUN_CHECKPOINTS_ENV: checkpoints}
    assert args["entrypoint"] == [""]  # the task's command replaces `semcode`, as on Kubernetes
    assert args["network_mode"] == "host" and args["working_dir"] == os.getcwd()
    assert args["labels"] == {containers.RUN_LABEL: str(run_dir)}
    if os.getuid() == 0:  # the image's user, which then owns the folders it writes
        assert args["user"] == containers.IMAGE_USER and args["group_add"] == []
        owners = {path.stat().st_uid for path in (registry, run_dir / "artifacts", run_dir / "checkpoints")}
        assert owners == {1000}
    else:
        assert args["user"] == f"{os.getuid()}:{os.getgid()}" and args["group_add"] == [0]


def test_the_subprocess_runner_is_the_default_and_an_unknown_runner_is_refused() -> None:
    with containers.task_runner("subprocess", load_pipeline(), {}, Path("/tmp"), {}) as runner:
        assert isinstance(runner, local.SubprocessRunner) and runner.use_venv is False
    with pytest.raises(ConfigError, match="--runner podman: expected one of"):
        with containers.task_runner("podman", load_pipeline(), {}, Path("/tmp"), {}):
            pass


def test_without_an_engine_the_run_stops_in_one_line_before_its_folder_exists(
    no_engine: None, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    runs = tmp_path / "runs"
    code = local_run.main(
        ["--preset", "tiny", "--runner", "docker", "--runs-dir", str(runs), "--run-id", "r"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("semcode run: error: --runner docker: no Docker engine answers")
    assert "images/engine.sh start" in err[0]
    assert not (runs / "r").exists()
    assert containers.stop_containers(runs / "r", 1) == []  # a stopped run without an engine: nothing to stop


def test_resume_keeps_the_runner_of_the_run_and_the_index_pipeline_refuses_docker(tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        local_run.main(["--resume", "r", "--runner", "docker", "--runs-dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        local_run.main(
            ["--pipeline", "index", "--runner", "docker", "--encoder", "minilm", "--source", "dir:."]
        )
