"""`semcode run`: the pipeline through kfp.local end to end (tiny preset), the gate against the champion it
published, and the checks that fail before any task runs."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from semcode import bundle as bundles
from semcode.config import CONFIGS_DIR, ConfigError
from semcode.pipeline import local as local_run
from semcode.registry import resolve_latest


def tiny_preset_with(path: Path, **sections: dict) -> Path:
    """src/semcode/configs/tiny.yaml with some keys changed, written to ``path``."""
    preset = yaml.safe_load((CONFIGS_DIR / "tiny.yaml").read_text())
    for section, values in sections.items():
        preset.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(preset))
    return path


def read_summary(runs: Path, run_id: str) -> dict:
    return json.loads((runs / run_id / "summary.json").read_text())


def test_tiny_run_publishes_then_a_worse_run_is_refused(tmp_path, capsys):
    runs = tmp_path / "runs"
    registry = str((runs / "registry").resolve())

    # 1. The tiny preset end to end: no champion yet, so the gate passes and publish moves latest.
    assert local_run.main(["--preset", "tiny", "--runs-dir", str(runs), "--run-id", "first", "--cache"]) == 0
    out = capsys.readouterr().out
    first = read_summary(runs, "first")
    bundle = runs / "first" / "bundle"
    assert first["passed"] and first["published"], first["reasons"]
    assert bundles.validate_bundle(bundle)["version"] == first["version"]
    assert "bm25" in out and "PASSED" in out
    assert f"semcode search {bundle} 'read a file line by line'" in out
    # the quiet console: semcode's lines, not kfp.local's executor JSON and artifact reprs; the stages'
    # timings at the end
    assert '"outputFile"' not in out and '"executorInput"' not in out and "Dataset( name=" not in out
    assert "[run] ingest started" in out and "[encoder] epoch 1/" in out
    assert "[encoder] epoch 1 complete | train loss " in out
    table = out.rstrip().split("\n\n")[-1].splitlines()
    assert table[0].split() == ["stage", "seconds"] and table[-1].split()[0] == "total"
    timed = [row.split()[0] for row in table[1:-1]]
    assert timed[0] == "ingest" and "evaluate" in timed and any(t.startswith("train-encoder") for t in timed)
    assert [stage["task"] for stage in first["stages"]] == timed
    # the encoder's live curves, inside its artifact
    assert list(
        (runs / "first" / "artifacts").glob("*/train-encoder*/encoder/tensorboard/events.out.tfevents.*")
    )
    champion = resolve_latest(registry, "semcode")
    assert champion is not None and champion.endswith(first["version"])

    # 2. The same data, one training step: worse, so the gate refuses (exit 3, as semcode gate and submit)
    # and latest stays where it was. With TensorBoard served while it runs, and stopped after.
    # (no hard-negative round after it: that round's ten steps would train it again)
    worse = tiny_preset_with(
        tmp_path / "worse.yaml", train_encoder={"max_steps": 1}, hard_negative={"rounds": 0}
    )
    argv = ["--preset", str(worse), "--runs-dir", str(runs), "--run-id", "second", "--cache", "--tensorboard"]
    assert local_run.main([*argv, "--json"]) == local_run.EXIT_REFUSED == 3
    captured = capsys.readouterr()
    answer = json.loads(captured.out)  # --json: stdout is the summary alone, the progress on stderr
    assert "[run] " in captured.err and "[encoder] epoch 1/" in captured.err
    assert "[run] tensorboard: http://127.0.0.1:" in captured.err
    assert (
        f"to view the curves again: tensorboard --logdir {(runs / 'second').resolve() / 'tensorboard'}"
        in captured.err
    )
    curve_runs = [p.name for p in (runs / "second" / "tensorboard").iterdir()]  # short run names
    assert any(name.startswith("encoder") for name in curve_runs) and all(
        len(name) < 12 for name in curve_runs
    )
    second = read_summary(runs, "second")
    assert answer == second and second["run_id"] == "second" and second["champion"] == first["version"]
    assert first["published_version"] == first["version"] and second["published_version"] is None
    assert second["stages"] and all(set(stage) == {"task", "seconds", "status"} for stage in second["stages"])
    assert second["primary"]["value"] < first["primary"]["value"]
    assert not second["passed"] and not second["published"]
    assert any("worse than the tolerance" in reason for reason in second["reasons"])
    assert resolve_latest(registry, "semcode") == champion
    # a refused candidate's bundle is whole, only not published
    bundles.validate_bundle(runs / "second" / "bundle")
    # ingest and the tokenizer had the same inputs: reused from the first run (--cache, kfp.local's cache)
    artifacts = runs / "second" / "artifacts"
    assert not list(artifacts.glob("*/ingest")) and not list(artifacts.glob("*/train-tokenizer"))
    assert list(artifacts.glob("*/**/train-encoder*"))  # trained again (no round: outside that branch)

    # 3. A run directory is never reused.
    assert local_run.main(["--preset", "tiny", "--runs-dir", str(runs), "--run-id", "first"]) == 2


def test_preset_typo_fails_before_any_task(tmp_path, capsys):
    preset = tiny_preset_with(tmp_path / "typo.yaml", train_encoder={"batchsize": 8})
    assert local_run.main(["--preset", str(preset), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "batchsize" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_missing_source_fails_before_any_task(tmp_path, capsys):
    argv = [
        "--preset",
        "tiny",
        "--source",
        f"dir:{tmp_path / 'nowhere'}",
        "--runs-dir",
        str(tmp_path / "runs"),
    ]
    assert local_run.main(argv) == 2
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_stage_field_that_is_no_pipeline_parameter_fails_before_any_task(tmp_path, capsys):
    preset = tiny_preset_with(tmp_path / "unexposed.yaml", train_encoder={"log_every": 5})
    assert local_run.main(["--preset", str(preset), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert "train_encoder_log_every" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_source_and_registry_become_pipeline_arguments(tmp_path):
    registry = str(tmp_path / "registry")
    configs, arguments = local_run.prepare("tiny", [f"dir:{tmp_path}"], registry)
    assert configs["ingest"].sources == (f"dir:{tmp_path}",)
    assert arguments["ingest_sources"] == [f"dir:{tmp_path}"]
    assert arguments["gate_registry"] == registry
    assert configs["publish"].registry == registry
    assert arguments["train_encoder_max_steps"] == 30  # the preset's own values stay


def test_an_unwritable_registry_is_refused_before_any_task(tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    registry = str(tmp_path / "a_file" / "registry")  # a folder under a file: cannot be written
    argv = ["--preset", "tiny", "--runs-dir", str(tmp_path / "runs"), "--registry", registry]
    assert local_run.main(argv) == 2
    assert f"registry (--registry) {registry} is not writable" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_s3_locations_other_than_the_registry_are_checked_before_any_task(
    tmp_path, capsys, monkeypatch, s3_env
):
    """The starting checkpoint and the live curves' prefix: a missing S3 checkpoint or an unwritable
    prefix is refused, named, before the run folder exists."""
    runs = str(tmp_path / "runs")
    argv = [
        "--preset",
        "local",
        "--runs-dir",
        runs,
        "--param",
        f"train_encoder_init_from={s3_env}/no/encoder",
    ]
    assert local_run.main(argv) == 2
    assert f"train_encoder.init_from {s3_env}/no/encoder: neither" in capsys.readouterr().err

    monkeypatch.setenv("SEMCODE_TENSORBOARD_DIR", "s3://no-such-bucket-semcode/curves")
    assert local_run.main(["--preset", "tiny", "--runs-dir", runs]) == 2
    assert (
        "SEMCODE_TENSORBOARD_DIR s3://no-such-bucket-semcode/curves is not writable"
        in capsys.readouterr().err
    )
    assert not (tmp_path / "runs").exists()


def test_registry_location():
    assert local_run.resolve_location("s3://models/registry") == "s3://models/registry"
    assert local_run.resolve_location("runs/registry") == str(Path("runs/registry").resolve())


def test_params_override_the_preset_and_are_validated():
    overrides = local_run.parse_params(
        ["train_encoder_lr=3e-5", "train_encoder_init_from=runs/a/bundle/encoder", "hard_negative_rounds=1"]
    )
    assert overrides["train_encoder"]["init_from"] == "runs/a/bundle/encoder"
    assert overrides["hard_negative"] == {"rounds": 1}
    _, arguments = local_run.prepare(
        "tiny", None, "/tmp/registry", ["train_encoder_max_steps=3", "train_encoder_lr=3e-5"]
    )
    assert arguments["train_encoder_max_steps"] == 3 and arguments["gate_registry"] == "/tmp/registry"
    assert arguments["train_encoder_lr"] == 3e-5  # YAML reads 3e-5 as text; the field's type decides
    for bad in (
        ["gpu_count=2"],
        ["train_encoder_lr"],
        ["train_encoder_batchsize=8"],
        ["hard_negative_rounds=5"],
    ):
        with pytest.raises(ConfigError):
            local_run.prepare("tiny", None, "/tmp/registry", bad)


def test_tensorboard_serves_the_event_files_under_the_run_dir(tmp_path):
    """A real TensorBoard over a run directory: it lists a training curve's tag, and stops with the run."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(tmp_path / "artifacts" / "train-encoder" / "encoder" / "tensorboard")) as writer:
        for step in range(1, 4):
            writer.add_scalar("train/loss", 3.0 / step, step)
    with local_run.serve_tensorboard(tmp_path, enabled=True) as (url, process):
        tags = ""
        deadline = time.monotonic() + 90  # it starts in seconds, on a busy 2-core machine in tens
        while "train/loss" not in tags and time.monotonic() < deadline and process.poll() is None:
            time.sleep(1)
            try:
                with urllib.request.urlopen(url + "data/plugin/scalars/tags", timeout=5) as response:
                    tags = response.read().decode()
            except OSError:  # not listening yet
                continue
        assert "train/loss" in tags, (tmp_path / "tensorboard.log").read_text()[-2000:]
        assert "artifacts/train-encoder/encoder/tensorboard" in json.loads(tags)
    assert process.poll() is not None  # stopped when the block (the run) ends


def processes_of_run(run_pid: int) -> list[int]:
    """Live processes started by `semcode run` with pid ``run_pid`` (its tasks carry SEMCODE_RUN_PID)."""
    import semcode

    marker = f"{semcode.RUN_PID_ENV}={run_pid}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes().split(b"\0"):
                state = (environ.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(environ.parent.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


@pytest.mark.slow
def test_a_killed_run_takes_its_tasks_with_it_and_resume_finishes_it(tmp_path):
    """kill -9 of `semcode run` while the encoder trains: its tasks end within seconds; `--resume` reuses
    the finished tasks and continues the encoder from its checkpoint in the run's folder."""
    import subprocess
    import sys

    runs = tmp_path / "runs"
    semcode_command = str(Path(sys.executable).parent / "semcode")
    first_log = tmp_path / "first.log"
    with open(first_log, "w") as out:
        first = subprocess.Popen(
            [semcode_command, "run", "--preset", "tiny", "--runs-dir", str(runs), "--run-id", "r1"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 600
    while not list((runs / "r1" / "checkpoints").glob("*/latest")):
        assert first.poll() is None and time.monotonic() < deadline, first_log.read_text()[-3000:]
        time.sleep(0.2)
    assert processes_of_run(first.pid)  # the training task, at least
    first.kill()
    first.wait()
    deadline = time.monotonic() + 15
    while processes_of_run(first.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_of_run(first.pid) == [], "tasks outlived the run they belong to"
    assert not (runs / "r1" / "summary.json").exists()

    # The same run id cannot start afresh; --resume continues it with its own settings.
    assert local_run.main(["--runs-dir", str(runs), "--run-id", "r1"]) == 2
    resumed = subprocess.run(
        [semcode_command, "run", "--runs-dir", str(runs), "--resume", "r1"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    output = resumed.stdout + resumed.stderr
    assert "resuming preset tiny" in output and "restored step-" in output
    summary = read_summary(runs, "r1")
    assert summary["passed"] and summary["published"]
    jobs = sorted((runs / "r1" / "artifacts").iterdir())
    assert len(jobs) == 2 and (jobs[0] / "ingest").is_dir() and not (jobs[1] / "ingest").exists()
    assert not (runs / "r1" / "checkpoints").exists()  # done: nothing left to resume
    assert local_run.main(["--runs-dir", str(runs), "--resume", "r1"]) == 2  # finished: nothing to resume


@pytest.mark.slow
def test_sigterm_on_semcode_run_checkpoints_the_training_task_and_names_resume(tmp_path):
    """SIGTERM (a pod's stop, or Ctrl-C's SIGINT) reaches `semcode run`: the running training task is asked to
    checkpoint, the run exits 143 in one line naming `--resume RUN_ID`, and the checkpoint is in the run."""
    import os
    import signal
    import subprocess
    import sys

    runs = tmp_path / "runs"
    argv = [
        sys.executable,
        "-m",
        "semcode.cli",
        "run",
        "--preset",
        "tiny",
        "--runs-dir",
        str(runs),
        "--run-id",
        "r1",
    ]
    argv += ["--param", "train_encoder_max_steps=3000", "--param", "train_encoder_checkpoint_every=1000"]
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}  # each line as it is printed
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment
    )
    for line in process.stdout:
        if line.startswith("[encoder] epoch 1/1 step"):  # a training task's lines (they come when it ends)
            process.send_signal(signal.SIGTERM)  # lands in the next training task (the hard-negative round)
            break
    rest = process.communicate(timeout=300)[0]
    assert process.returncode == 143, rest[-2000:]
    assert f"continue with semcode run --runs-dir {runs} --resume r1" in rest
    assert list((runs / "r1" / "checkpoints").glob("train-encoder*/latest")), rest[-2000:]
