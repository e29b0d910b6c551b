"""SIGUSR1 on `semcode run` reaches the training stage it runs and nothing else (semcode.pipeline.save_now):
on real processes labelled as tasks, then through kfp.local with the set-up `semcode run` uses, where a task
that catches SIGUSR1 (semcode's StopRequest) gets it and one that does not is left alone. (No ``from
__future__ import annotations``: KFP reads the components' annotations as types.)"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kfp import dsl

from semcode.pipeline import kfp_local, save_now
from semcode.pipeline import local as local_run

# A stand-in for a task's process: with "handler" it records each SIGUSR1 in a file, with "worker" it forks a
# child that inherits the handler (a tokenizer worker); it writes its pid to the ready file once set up.
STAGE = """
import os, signal, sys, time

record, ready, handler, worker = sys.argv[1], sys.argv[2], sys.argv[3] == "handler", sys.argv[4] == "worker"

def answer(signum, frame):
    with open(record, "a") as lines:
        lines.write(f"{os.getpid()}\\n")

if handler:
    signal.signal(signal.SIGUSR1, answer)
if worker and os.fork() == 0:
    time.sleep(60)
    os._exit(0)
with open(ready + ".part", "w") as pid:
    pid.write(str(os.getpid()))
os.replace(ready + ".part", ready)
time.sleep(60)
"""


def wait_for(done, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def start(tmp_path: Path, name: str, task: str | None, handler: bool, worker: bool = False) -> tuple:
    """A process as kfp.local starts a task (``sh -c`` with python below it; ``task`` None: no task's);
    returns (the shell, the python process's pid, the file its handler records in)."""
    record, ready = tmp_path / f"{name}.signals", tmp_path / f"{name}.ready"
    environment = {k: v for k, v in os.environ.items() if k != kfp_local.TASK_ENV}
    if task is not None:
        environment[kfp_local.TASK_ENV] = task
    flags = ["handler" if handler else "-", "worker" if worker else "-"]
    command = [sys.executable, "-c", STAGE, str(record), str(ready), *flags]
    shell = subprocess.Popen(["sh", "-c", '"$@"; true', "sh", *command], env=environment)
    wait_for(ready.exists)
    return shell, int(ready.read_text()), record


def stop(*shells: subprocess.Popen) -> None:
    for shell in shells:
        for pid in save_now.children_by_parent().get(shell.pid, []):  # the python stage, then its worker
            for child in [pid, *save_now.children_by_parent().get(pid, [])]:
                os.kill(child, signal.SIGKILL)
        shell.wait(timeout=30)


def test_sigusr1_goes_to_the_task_process_that_catches_it_not_its_worker_nor_other_processes(tmp_path, capfd):
    before = signal.getsignal(signal.SIGUSR1)
    training, stage_pid, record = start(tmp_path, "training", "train-encoder-2", handler=True, worker=True)
    other, _, other_record = start(tmp_path, "tensorboard", None, handler=True)  # catches it, no task's
    try:
        with save_now.forward_save_requests("subprocess"):
            assert signal.getsignal(signal.SIGUSR1) is not before
            os.kill(os.getpid(), signal.SIGUSR1)
            wait_for(record.exists)
            time.sleep(0.5)  # time for a wrongly signalled worker or other process to record it too
        assert signal.getsignal(signal.SIGUSR1) is before  # put back when the run ends
        assert record.read_text().split() == [str(stage_pid)]  # the stage, once; not its forked worker
        assert not other_record.exists()
        line = capfd.readouterr().err.strip()
        assert line == (
            f"[run] SIGUSR1 passed on to train-encoder-2 (pid {stage_pid}): a checkpoint after the step under "
            "way, then it trains on"
        )
    finally:
        stop(training, other)


def test_sigusr1_to_a_stage_without_a_handler_is_one_line_and_nothing_sent(tmp_path, capfd):
    with save_now.forward_save_requests("subprocess"):
        os.kill(os.getpid(), signal.SIGUSR1)  # no task yet
        time.sleep(0.1)
        assert capfd.readouterr().err == (
            "[run] SIGUSR1: no task is running, no training step to checkpoint: nothing sent\n"
        )
        ingest, _, record = start(tmp_path, "ingest", "ingest", handler=False)
        try:
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.5)  # time for the signal's default action, were it sent
            assert ingest.poll() is None and save_now.children_by_parent().get(ingest.pid)  # alive
            assert capfd.readouterr().err == (
                "[run] SIGUSR1: the running task ingest has no training step to checkpoint (not a training "
                "stage, or one still starting): nothing sent\n"
            )
        finally:
            stop(ingest)
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    with save_now.forward_save_requests("docker"):
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.1)
    assert "not passed on to task containers (--runner docker): docker kill --signal USR1" in (
        capfd.readouterr().err
    )


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def ask_without_a_handler(alive_file: str):
    """Like ingest: SIGUSR1 to `semcode run` while running, with no handler; say so if it lived on."""
    import os
    import signal
    import time

    import semcode  # noqa: F401  (a `semcode run` task, as the stages are)

    os.kill(int(os.environ["SEMCODE_RUN_PID"]), signal.SIGUSR1)
    time.sleep(1.0)  # time for the signal's default action, were it sent
    with open(alive_file, "w") as alive:
        alive.write("alive\n")


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def ask_a_training_stage(asked_file: str):
    """Like a training stage's loop: semcode's StopRequest installed, SIGUSR1 to `semcode run`, and the
    request it passes on recorded."""
    import os
    import signal
    import time

    from semcode.train.checkpoints import StopRequest

    with StopRequest() as request:
        os.kill(int(os.environ["SEMCODE_RUN_PID"]), signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while not request.save_asked and time.monotonic() < deadline:
            time.sleep(0.05)
        with open(asked_file, "w") as asked:
            asked.write(f"{request.save_asked}\n")


@dsl.pipeline(name="save-now")
def save_now_pipeline(alive_file: str, asked_file: str):
    first = ask_without_a_handler(alive_file=alive_file)
    ask_a_training_stage(asked_file=asked_file).after(first)


def test_through_kfp_local_sigusr1_reaches_a_training_stage_and_spares_another(tmp_path, capfd):
    before = signal.getsignal(signal.SIGUSR1)
    alive, asked = tmp_path / "alive", tmp_path / "asked"
    with kfp_local.quiet_stdout(verbose=False):
        local_run.run_pipeline(
            {"alive_file": str(alive), "asked_file": str(asked)},
            tmp_path / "run",
            tmp_path / "run" / ".cache",
            save_now_pipeline,
        )
    assert signal.getsignal(signal.SIGUSR1) is before
    assert alive.read_text() == "alive\n" and asked.read_text() == "True\n"
    err = capfd.readouterr().err
    assert "[run] SIGUSR1: the running task ask-without-a-handler has no training step to checkpoint" in err
    assert "[run] SIGUSR1 passed on to ask-a-training-stage (pid " in err


@pytest.mark.slow
def test_semcode_run_passes_sigusr1_to_its_training_stage_and_spares_ingest(tmp_path):
    """The tiny preset through `semcode run` (about 15 s on 2 cores): SIGUSR1 while ingest runs is one line
    and ingest finishes; SIGUSR1 once the encoder trains gives a checkpoint and training goes on; SIGTERM
    then stops the run as it always does."""
    argv = [sys.executable, "-m", "semcode.cli", "run", "--preset", "tiny", "--runs-dir", str(tmp_path)]
    argv += ["--run-id", "r1", "--param", "train_encoder_max_steps=3000"]
    environment = {**os.environ, "PYTHONUNBUFFERED": "1"}  # each line as it is printed
    process = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment
    )
    lines, deadline = [], time.monotonic() + 300
    asked_ingest = asked_encoder = False
    for line in process.stdout:
        lines.append(line)
        if time.monotonic() > deadline:
            process.kill()
        if line.startswith("[ingest] ") and not asked_ingest:  # ingest runs
            process.send_signal(signal.SIGUSR1)
            asked_ingest = True
        if line.startswith("[encoder] epoch 1/") and not asked_encoder:  # the encoder trains
            process.send_signal(signal.SIGUSR1)
            asked_encoder = True
        if "(asked for by SIGUSR1; training goes on)" in line:
            process.send_signal(signal.SIGTERM)
    output = "".join(lines)
    assert process.wait(timeout=120) == 143, output[-3000:]
    assert "[run] SIGUSR1: the running task ingest has no training step to checkpoint" in output
    assert "[run] ingest done in " in output and "failed" not in output
    assert "[run] SIGUSR1 passed on to train-encoder" in output
    asked = [line for line in lines if line.endswith("(asked for by SIGUSR1; training goes on)\n")]
    assert len(asked) == 1 and "/checkpoints/train-encoder" in asked[0], output[-3000:]
