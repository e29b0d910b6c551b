"""`semcode run` retries a task only where a retry can help: an I/O or network error is tried again as the
task's retry policy says, a bad-input error and a bug are not; each failure is one line.

A one-task pipeline runs through the same kfp.local set-up as `semcode run` (local.run_pipeline); its task
counts its tries in a file and fails as asked. (No ``from __future__ import annotations``: KFP reads the
component's annotations as types.)"""

from pathlib import Path

import pytest
from kfp import dsl

from semcode.pipeline import kfp_local
from semcode.pipeline import local as local_run


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def fail_with(kind: str, tries_file: str):
    """Count a try, then fail with a bad input, an I/O error or a bug."""
    from semcode.stages.ingest import IngestError  # importing semcode sets up a `semcode run` task's exit

    with open(tries_file, "a") as tries:
        tries.write("try\n")
    if kind == "bad-input":
        raise IngestError("dir:/nowhere: 0 pairs left after cleaning; training needs at least min_pairs=2")
    if kind == "io":
        raise ConnectionResetError("the S3 endpoint hung up")
    raise KeyError("a bug")


@dsl.pipeline(name="one-failing-task")
def one_failing_task(kind: str, tries_file: str):
    task = fail_with(kind=kind, tries_file=tries_file)
    task.set_retry(num_retries=2, backoff_duration="0s", backoff_factor=1.0)


def run_failing(kind: str, tmp_path: Path) -> int:
    """Run the pipeline with a task failing as ``kind`` says; returns how many times the task ran."""
    tries = tmp_path / f"{kind}.tries"
    with pytest.raises(RuntimeError), kfp_local.quiet_stdout(verbose=False):
        local_run.run_pipeline(
            {"kind": kind, "tries_file": str(tries)},
            tmp_path / kind,
            tmp_path / kind / ".cache",
            one_failing_task,
        )
    return len(tries.read_text().splitlines())


def test_a_bad_input_error_is_not_retried_and_says_so_in_one_line(tmp_path, capsys):
    assert run_failing("bad-input", tmp_path) == 1
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert "Traceback" not in out
    assert out.count("error: dir:/nowhere: 0 pairs left after cleaning") == 1
    assert "[run] fail-with failed (bad input, exit 2): not tried again" in out
    assert local_run.task_failed(RuntimeError("kfp.local's message")) == 2
    line = capsys.readouterr().err.strip()
    assert line == "semcode run: error: task fail-with failed (bad input, exit 2); its output is above"


def test_an_io_error_is_retried_a_bug_is_not(tmp_path, capsys):
    assert run_failing("io", tmp_path) == 3  # the first try and the policy's two retries
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert "[run] fail-with failed (an I/O, network or S3 error, exit 75): try 2 of 3 in 0s" in out
    assert "[run] fail-with failed (an I/O, network or S3 error, exit 75) on its last try (3 of 3)" in out

    assert run_failing("bug", tmp_path) == 1
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert out.count("Traceback") == 1 and "KeyError: 'a bug'" in out
    assert "[run] fail-with failed (an error a retry would repeat, exit 1): not tried again" in out


def test_what_can_pass_on_a_retry():
    assert kfp_local.retryable(75) and kfp_local.retryable(-9) and kfp_local.retryable(143)
    assert not kfp_local.retryable(2) and not kfp_local.retryable(1)
    assert kfp_local.exit_meaning(-9) == "stopped by SIGKILL, exit -9"
    assert kfp_local.exit_meaning(143) == "stopped by SIGTERM, exit 143"
