"""What ``semcode run`` changes in kfp.local (2.17), and how it shows kfp.local's output.

kfp.local runs a pipeline on one machine: every task a child process, a ParallelFor's iterations in threads.
Four things it does not do as semcode run needs, each fixed here in one function that ``install`` applies
once per process (they patch kfp.local's own functions, so a kfp upgrade is checked against them):

- ``QuietConsole`` / ``quiet_stdout``: its console keeps semcode's lines and drops kfp.local's dumps;
- ``thread_safe_task_logging``: its per-task print indent and logger set-up, safe for a ParallelFor's threads;
- ``allow_oneof_artifacts``: ``dsl.OneOf`` over artifacts, as the KFP backend runs it;
- ``retry_only_transient_failures``: kfp.local retries a failed task as many times as its retry policy says,
  whatever made it fail (task_executor.execute_single_task): three tries and three tracebacks for a bad
  input that fails the same way every time. Here a task is tried again only when its failure can pass on a
  retry, read from its exit code: EXIT_TRANSIENT (an I/O, network or S3 error: semcode.config.exit_code_of,
  which a ``semcode run`` task exits with, semcode._exit_by_failure) or a signal (a killed process, a
  preempted training stage). Bad input (EXIT_BAD_INPUT: ValueError, FileNotFoundError, ... printed in one
  line by the task) and any other error (a bug: exit 1, one traceback) end the task at the first failure.
  Each failure is one ``[run]`` line naming the task, what the exit code means and what happens next. The
  cluster pipeline keeps its retry policy as compiled (a lost node, a preempted pod). It also starts each
  task process with the task's name in its environment (TASK_ENV), which semcode.pipeline.save_now reads
  to pass SIGUSR1 ("save now") on to a training stage only.
"""

from __future__ import annotations

import io
import re
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any

from semcode import config as cfg
from semcode.progress import log

TAG = "run"
TASK_ENV = "SEMCODE_RUN_TASK"  # a task process's task name, inherited by its children (save_now)

# What kfp.local (2.17) writes to stdout: its own log records (logging_utils.local_logger_context) and,
# indented, each task's merged stdout/stderr (subprocess_task_handler.run_local_subprocess).
ANSI = re.compile(r"\x1b\[[0-9;]*m")  # kfp.local colours task names and statuses
KFP_RECORD = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} - (?P<level>[A-Z]+) - (?P<message>.*)$")
TASK_STARTED = re.compile(r"^Executing task '(?P<task>[^']+)'$")
TASK_FINISHED = re.compile(r"^Task '(?P<task>[^']+)' finished with status (?P<status>[A-Z]+)$")
TASK_OUTPUTS = re.compile(r"^Task '[^']+' outputs:$")
RULE = re.compile(r"^-{20,}$")  # the horizontal line after each task
EXECUTOR_LINE = "[KFP Executor "  # the task's executor_main logging, e.g. "Got executor_input:" + JSON
EXECUTOR_INPUT_END = re.compile(r"(    )?\}")  # json.dumps(indent=4)'s last line, (relay-)indented


class QuietConsole(io.TextIOBase):
    """Stands in for stdout while the pipeline runs: semcode's lines pass, kfp.local's dumps do not.

    Dropped: kfp.local's INFO records (task start/finish become one ``[run]`` line each, with seconds),
    the artifact reprs after "Task 'x' outputs:", the executor's ``[KFP Executor ...]`` lines with the
    executor-input JSON that follows one, rules and blank lines. Everything else passes, with the relay's
    indent removed: semcode's progress lines, warnings, errors and tracebacks. With ``verbose`` every
    line passes as it is. Either way ``stages`` collects (task, seconds, status) per finished task.

    kfp.local runs a ParallelFor's tasks in threads, each relaying its task line by line: the partial
    line and the skipping state are per thread, whole lines are written under a lock.
    """

    RELAY_INDENT = "    "  # kfp.local's logging_utils.indented_print

    def __init__(self, out: Any, verbose: bool = False) -> None:
        self.out, self.verbose = out, verbose
        self.stages: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._local = threading.local()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # what code that checks sys.stdout.encoding should see
        return getattr(self.out, "encoding", None) or "utf-8"

    def write(self, text: str) -> int:
        state = self._state()
        state.partial += text
        *lines, state.partial = state.partial.split("\n")
        for line in lines:
            kept = self._filter(state, line)  # also when verbose: it times the stages
            if self.verbose:
                kept = line
            if kept is not None:
                with self._lock:
                    self.out.write(kept + "\n")
                    self.out.flush()
        return len(text)

    def flush(self) -> None:
        with self._lock:
            self.out.flush()

    def _state(self) -> Any:
        state = self._local
        if not hasattr(state, "partial"):
            state.partial, state.skip_until, state.started = "", None, {}
        return state

    def _filter(self, state: Any, line: str) -> str | None:
        """The line to show for ``line`` (None: drop it); records task starts and finishes."""
        plain = ANSI.sub("", line)
        if state.skip_until is not None:  # inside a JSON dump or an outputs block
            if state.skip_until.fullmatch(plain):
                state.skip_until = None
            return None
        record = KFP_RECORD.match(plain)
        if record:
            return self._kfp_record(state, record["level"], record["message"])
        if RULE.match(plain) or not plain.strip():
            return None
        text = plain[len(self.RELAY_INDENT) :] if plain.startswith(self.RELAY_INDENT) else plain
        if text.startswith(EXECUTOR_LINE):
            if text.endswith("Got executor_input:"):
                state.skip_until = EXECUTOR_INPUT_END
            return None
        return text

    def _kfp_record(self, state: Any, level: str, message: str) -> str | None:
        started, finished = TASK_STARTED.match(message), TASK_FINISHED.match(message)
        if started:
            state.started[started["task"]] = time.perf_counter()
            return f"[{TAG}] {started['task']} started"
        if finished:
            task, status = finished["task"], finished["status"]
            seconds = time.perf_counter() - state.started.pop(task, time.perf_counter())
            self.stages.append({"task": task, "seconds": round(seconds, 1), "status": status.lower()})
            done = "done" if status == "SUCCESS" else "failed"
            return f"[{TAG}] {task} {done} in {seconds:.1f}s"
        if TASK_OUTPUTS.match(message):
            state.skip_until = RULE  # the artifact reprs, up to the task's closing rule
            return None
        return None if level == "INFO" else f"[{TAG}] {level.lower()}: {message}"


def thread_safe_task_logging() -> None:
    """Make kfp.local's (2.17) per-task print indent and logger set-up safe for a ParallelFor's threads.

    ``logging_utils.indented_print`` swaps ``builtins.print`` for an indenting wrapper and puts back the
    one it found; ``local_logger_context`` clears the root logger's handlers, adds its own and puts the
    old ones back. Two iterations running at once undo both in the wrong order: print stayed indented
    for the rest of the run, and a record logged while another thread had just cleared the handlers was
    lost, so QuietConsole missed task lines (a 3-shard run's stage table lacked a shard, then ended at
    build_index). Here one print wrapper stays installed and each thread has its own indent, and the
    logger is set up by the first context to enter and put back by the last to leave.
    """
    import builtins

    from kfp.local import logging_utils

    if getattr(logging_utils, "_semcode_thread_safe", False):
        return
    original_print = builtins.print
    indent = threading.local()

    def indented(*args: Any, **kwargs: Any) -> None:
        spaces = getattr(indent, "spaces", 0)
        if spaces:
            original_print(" " * spaces, end="", file=kwargs.get("file"))
        original_print(*args, **kwargs)

    @contextmanager
    def indented_print(num_spaces: int = 4) -> Any:
        indent.spaces = getattr(indent, "spaces", 0) + num_spaces
        try:
            yield
        finally:
            indent.spaces -= num_spaces

    original_logger_context = logging_utils.local_logger_context
    lock = threading.Lock()
    users = {"count": 0, "context": None}  # threads inside; the context the first of them entered

    @contextmanager
    def local_logger_context() -> Any:
        with lock:
            if users["count"] == 0:
                users["context"] = original_logger_context()
                users["context"].__enter__()
            users["count"] += 1
        try:
            yield
        finally:
            with lock:
                users["count"] -= 1
                if users["count"] == 0:
                    users["context"].__exit__(None, None, None)

    builtins.print = indented
    logging_utils.indented_print = indented_print
    logging_utils.local_logger_context = local_logger_context
    logging_utils._semcode_thread_safe = True


def allow_oneof_artifacts() -> None:
    """Teach kfp.local (2.17) ``dsl.OneOf`` over artifacts, as the KFP backend runs it.

    The pipeline picks the encoder of the last hard-negative round with ``dsl.OneOf`` over the
    mutually exclusive round branches. kfp.local resolves OneOf for parameters (the branch that produced
    a value wins) but its artifact twin, ``OrchestratorUtils.get_dag_output_artifacts``, insists on one
    selector. This replaces it with the parameter rule: of the selectors, exactly one must have run.
    """
    from kfp.local.orchestrator.orchestrator_utils import OrchestratorUtils

    if getattr(OrchestratorUtils, "_semcode_oneof", False):
        return

    def get_dag_output_artifacts(cls, dag_outputs_spec, io_store) -> dict[str, Any]:
        outputs = {}
        for key, selector_spec in dag_outputs_spec.artifacts.items():
            found = []
            for selector in selector_spec.artifact_selectors:
                try:
                    found.append(
                        io_store.get_task_output(selector.producer_subtask, selector.output_artifact_key)
                    )
                except (KeyError, ValueError):  # a branch that did not run
                    continue
            if len(found) != 1:
                raise ValueError(f"dsl.OneOf output {key!r}: {len(found)} branches produced it, expected 1")
            outputs[key] = found[0]
        return outputs

    OrchestratorUtils.get_dag_output_artifacts = classmethod(get_dag_output_artifacts)
    OrchestratorUtils._semcode_oneof = True


@contextmanager
def quiet_stdout(verbose: bool) -> Any:
    """Route stdout through a QuietConsole while the pipeline runs (kfp.local's handlers and its relay
    of the task processes both write to whatever sys.stdout is when a task starts)."""
    console = QuietConsole(sys.stdout, verbose)
    original = sys.stdout
    sys.stdout = console
    try:
        yield console
    finally:
        sys.stdout = original


# The failed tasks of this process's runs, in order: {"task", "exit_code", "why"} (semcode run's last line).
FAILED_TASKS: list[dict[str, Any]] = []


def retryable(exit_code: int) -> bool:
    """Whether a task that exited ``exit_code`` may pass when tried again: an I/O, network or S3 error, or a
    process ended by a signal (subprocess gives -N; a shell or a stage that checkpointed on it, 128 + N)."""
    return exit_code == cfg.EXIT_TRANSIENT or exit_code < 0 or exit_code > 128


def exit_meaning(exit_code: int | None) -> str:
    """What a task's exit code says about its failure, in words."""
    if exit_code is None:
        return "no exit code"
    if exit_code == cfg.EXIT_BAD_INPUT:
        return "bad input, exit 2"
    if exit_code == cfg.EXIT_TRANSIENT:
        return f"an I/O, network or S3 error, exit {exit_code}"
    if exit_code < 0 or exit_code > 128:
        number = -exit_code if exit_code < 0 else exit_code - 128
        name = (
            signal.Signals(number).name if number in signal.Signals._value2member_map_ else f"signal {number}"
        )
        return f"stopped by {name}, exit {exit_code}"
    return f"an error a retry would repeat, exit {exit_code}"


def retry_only_transient_failures() -> None:
    """Make kfp.local retry a failed task only when ``retryable`` says its failure can pass, and name each
    task process's task in its environment (TASK_ENV; module doc)."""
    from kfp.local import status, subprocess_task_handler
    from kfp.local.orchestrator import task_executor

    if getattr(task_executor, "_semcode_retries", False):
        return
    run_subprocess = subprocess_task_handler.run_local_subprocess
    execute = task_executor.execute_single_task
    last = threading.local()  # the task this thread runs, the exit code of the task process it ran last

    def run_local_subprocess(*args: Any, env_vars: dict[str, str] | None = None, **kwargs: Any) -> int:
        env_vars = {**(env_vars or {}), TASK_ENV: getattr(last, "task", "")}
        last.exit_code = run_subprocess(*args, env_vars=env_vars, **kwargs)
        return last.exit_code

    try:  # the docker runner's task containers (semcode.pipeline.containers), when docker is installed
        from kfp.local import docker_task_handler
    except ImportError:
        pass
    else:
        run_container = docker_task_handler.run_docker_container

        def run_docker_container(*args: Any, **kwargs: Any) -> int:
            last.exit_code = run_container(*args, **kwargs)
            return last.exit_code

        docker_task_handler.run_docker_container = run_docker_container

    def execute_single_task(*, task_name: str, task_spec: Any, **kwargs: Any) -> tuple[dict, Any]:
        policy = task_spec.retry_policy
        tries = max(policy.max_retry_count, 0) + 1
        backoff = policy.backoff_duration.seconds if policy.HasField("backoff_duration") else 0
        factor = policy.backoff_factor if policy.backoff_factor > 0 else 2.0  # kfp.local's defaults
        cap = policy.backoff_max_duration.seconds if policy.HasField("backoff_max_duration") else 3600
        once = type(task_spec)()
        once.CopyFrom(task_spec)
        once.ClearField("retry_policy")  # kfp.local tries it once; the tries are counted here
        last.task = task_name
        for attempt in range(1, tries + 1):
            last.exit_code = None
            outputs, task_status = execute(task_name=task_name, task_spec=once, **kwargs)
            if task_status == status.Status.SUCCESS:
                return outputs, task_status
            why = exit_meaning(last.exit_code)
            if last.exit_code is None or not retryable(last.exit_code):
                log(TAG, f"{task_name} failed ({why}): not tried again")
                break
            if attempt == tries:
                log(TAG, f"{task_name} failed ({why}) on its last try ({attempt} of {tries})")
                break
            delay = min(backoff * factor ** (attempt - 1), cap)
            log(TAG, f"{task_name} failed ({why}): try {attempt + 1} of {tries} in {delay:.0f}s")
            time.sleep(delay)
        FAILED_TASKS.append({"task": task_name, "exit_code": last.exit_code, "why": why})
        return outputs, task_status

    subprocess_task_handler.run_local_subprocess = run_local_subprocess
    task_executor.execute_single_task = execute_single_task
    task_executor._semcode_retries = True


def install() -> None:
    """Every change of this module but the console's (quiet_stdout wraps a run): once per process."""
    allow_oneof_artifacts()
    thread_safe_task_logging()
    retry_only_transient_failures()
