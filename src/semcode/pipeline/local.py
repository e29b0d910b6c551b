"""``semcode run``: the training pipeline on this machine through kfp.local, artifacts under ./runs/<run-id>/.

It runs the very pipeline function the cluster runs (src/semcode/pipeline/train_pipeline.py) with KFP's local
SubprocessRunner: every task is a fresh Python process in this environment (``use_venv=False``: nothing
is installed), artifacts are folders under runs/<run-id>/artifacts/, and the Kubernetes settings (GPUs,
node pool, Secret, resources) have no effect. Retries do: a failing task is tried three times.

Parameters come from a preset (src/semcode/configs/<name>.yaml, mapped by semcode.pipeline.params), ``--source``
(replaces the ingest sources) and ``--registry`` (the gate compares with its champion and publish
writes to it; default <runs-dir>/registry, so publishing works on a laptop). Every stage config is
validated and every source path checked before the first task starts: a typo fails in a second.

Afterwards it prints the evaluation's summary table (model vs BM25 vs zero-shot per suite), the gate's
decision, whether the bundle was published, and a ready-to-paste ``semcode search`` line. The outputs
are found through the pipeline's declared outputs (bundle, evaluation, decision), which kfp.local hands
back, rather than by walking pipeline_root, whose layout (<pipeline>-<timestamp>/<task>/<output>) is
kfp.local's own; runs/<run-id>/bundle links to the bundle. A refused candidate is not an error (exit 0):
the bundle is still there to try, it is only not published.

Caching is off by default here (on a cluster it is on): kfp.local keys a task on its parameters and
input artifacts, not on the files behind a dir: source nor on the semcode code installed here, so a
cached ingest would silently reuse old data after you edit either. ``--cache`` reuses every task whose
inputs are unchanged from an earlier ``--cache`` run in the same --runs-dir (kfp.local's cache in
<runs-dir>/.kfp-cache; an entry whose artifacts were deleted is a miss), e.g. to try other training
settings on the same data. The gate and publish always run.

The console (docs/observability.md): kfp.local relays each task's output to stdout and logs every task's
executor input (JSON) and outputs (artifact reprs) around it; by default QuietConsole keeps semcode's own
lines and warnings, errors and tracebacks, drops those dumps, says when each stage starts and how long it
took, and the summary ends with a per-stage timing table. ``--verbose`` passes kfp.local's lines through.
``--tensorboard`` serves the run's live training curves (the training stages' tensorboard/ event files)
on 127.0.0.1 while the run lasts.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import semcode
from semcode import bundle as bundles
from semcode import config as cfg
from semcode import storage
from semcode.embed import check_encoder_spec
from semcode.pipeline import params as pipeline_params
from semcode.pipeline.compile import load_pipeline
from semcode.progress import format_seconds, log
from semcode.stages import evaluate, ingest

TAG = "run"
REGISTRY_DIR = "registry"  # default registry: <runs-dir>/registry
CACHE_DIR = ".kfp-cache"  # kfp.local's cache: shared by the --cache runs of a --runs-dir, else one per run
RUN_FILE = "run.json"  # <run-dir>/run.json: what --resume needs to run the same pipeline again
CHECKPOINTS_DIR = "checkpoints"  # <run-dir>/checkpoints: the training tasks' durable checkpoints
SEARCH_EXAMPLE = "read a file line by line"
# kfp.local warns about settings it cannot apply on one machine (accelerators) and about images
# without "python" in their name; both are expected here.
EXPECTED_WARNINGS = (r".*have no effect in the current local runner.*", r".*non-Python base image.*")

DEFAULT_RUNS_DIR = "runs"
EXIT_REFUSED = 3  # the gate refused the candidate (as semcode gate and semcode submit exit)

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
            done = "done" if status == "SUCCESS" else status.lower()
            return f"[{TAG}] {task} {done} in {seconds:.1f}s"
        if TASK_OUTPUTS.match(message):
            state.skip_until = RULE  # the artifact reprs, up to the task's closing rule
            return None
        return None if level == "INFO" else f"[{TAG}] {level.lower()}: {message}"


def resolve_location(location: str) -> str:
    """A registry or path as the task processes should see it: s3:// as is, a local path made absolute."""
    return location if storage.is_s3(location) else str(Path(location).expanduser().resolve())


def parse_params(params: list[str] | None) -> dict[str, dict]:
    """``--param train_encoder_lr=3e-5`` -> ``{"train_encoder": {"lr": 3e-5}}``: preset overrides.

    The name is a stage parameter of the pipeline (``<section>_<key>``, as for ``semcode submit``); the
    value is read as YAML and then checked against the field's type with the rest of the preset.
    """
    import yaml

    overrides: dict[str, dict] = {}
    for item in params or []:
        name, sep, text = item.partition("=")
        split = pipeline_params.split_parameter(name) if sep else None
        if split is None:
            raise cfg.ConfigError(
                f"--param {item}: expected <section>_<key>=VALUE with a section of "
                f"{list(pipeline_params.STAGE_CONFIGS)} (cluster parameters have no effect locally)"
            )
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError as error:
            raise cfg.ConfigError(f"--param {item}: not a YAML value ({error})") from None
        section, key = split
        overrides.setdefault(section, {})[key] = text if isinstance(value, str) else value
    return overrides


def prepare(
    preset_name: str,
    sources: list[str] | None,
    registry: str,
    params: list[str] | None = None,
    languages: list[str] | None = None,
) -> tuple[dict, dict[str, Any]]:
    """(validated stage configs, pipeline arguments) of a preset with --param, --source, --languages and
    --registry.

    Raises ConfigError for a bad preset or parameter, IngestError for a source that does not exist or (a
    small local dir:) holds too few doc comments to train on, and StorageError for a registry that cannot
    be written, before any task runs.
    """
    overrides = parse_params(params)
    overrides.setdefault("gate", {})["registry"] = registry
    if sources:
        overrides.setdefault("ingest", {})["sources"] = list(sources)
    if languages:
        overrides.setdefault("ingest", {})["languages"] = list(languages)
    preset = cfg.load_yaml(preset_name)
    configs = pipeline_params.resolve_configs(preset, preset_name, overrides)
    ingest.check_sources(configs["ingest"])
    ingest.check_trainable(configs["ingest"])  # too few doc comments to train: one line now, not a failed run
    # The registry is written at the very end: a dead endpoint or read-only bucket is found now, not
    # after the training.
    if registry:
        storage.check_writable(registry, "registry (--registry)")
    # The other places outside the run folder a run reads or writes: the starting checkpoint, the live
    # curves' prefix (both may be s3://).
    init_from = configs["train_encoder"].init_from
    if init_from:
        check_encoder_spec(init_from, "train_encoder.init_from")
    live_prefix = os.environ.get(semcode.TENSORBOARD_PREFIX_ENV, "")
    if live_prefix:
        storage.check_writable(live_prefix, semcode.TENSORBOARD_PREFIX_ENV)
    arguments = pipeline_params.preset_arguments(preset, preset_name, overrides)
    return configs, arguments


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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tensorboard_command(logdir: Path, port: int | None = None) -> list[str]:
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1"]
    return command + (["--port", str(port)] if port else [])


@contextmanager
def serve_tensorboard(run_dir: Path, enabled: bool) -> Any:
    """With ``enabled``, TensorBoard over ``run_dir`` on a free 127.0.0.1 port while the block runs;
    yields (its address, the process), else (None, None).

    It finds the training stages' event files (<task>/<output>/tensorboard/) as they appear, and reloads
    them every few seconds; its own output goes to <run_dir>/tensorboard.log, not the console.
    """
    if not enabled:
        yield None, None
        return
    port = _free_port()
    log_path = run_dir / "tensorboard.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            tensorboard_command(run_dir, port), stdout=log_file, stderr=subprocess.STDOUT
        )
        url = f"http://127.0.0.1:{port}/"
        log(TAG, f"tensorboard: {url} (logdir {run_dir}, its log {log_path})")
        try:
            yield url, process
        finally:
            if process.poll() is not None:
                log(TAG, f"tensorboard had exited with {process.returncode}: see {log_path}")
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            view = shlex.join(["tensorboard", "--logdir", str(run_dir)])
            log(TAG, f"tensorboard stopped; to view the curves again: {view}")


def run_pipeline(arguments: dict[str, Any], run_dir: Path, cache_dir: Path) -> dict[str, Any]:
    """Run the pipeline through kfp.local; returns its outputs (bundle, evaluation, decision artifacts)."""
    from kfp import local

    import semcode

    allow_oneof_artifacts()
    thread_safe_task_logging()
    # Idle OpenMP threads sleep instead of spinning: on a laptop (or a shared machine) the task's torch
    # threads otherwise burn the cores that ONNX Runtime, the tokenizer workers or anything else need.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    for_the_tasks = {
        semcode.RUN_PID_ENV: str(os.getpid()),  # each task ends itself once this process is gone
        # The training tasks keep durable checkpoints in the run's folder (not a parameter: a cached
        # task stays cached across --cache runs); --resume finds them there.
        semcode.RUN_CHECKPOINTS_ENV: str(run_dir / CHECKPOINTS_DIR),
    }
    with environment(for_the_tasks):
        local.init(
            runner=local.SubprocessRunner(use_venv=False),
            pipeline_root=str(run_dir / "artifacts"),
            enable_caching=True,  # a run's own cache is what --resume reuses the finished tasks from
            cache_root=str(cache_dir),
        )
        with warnings.catch_warnings():
            for message in EXPECTED_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            task = load_pipeline()(**arguments)
    return task.outputs


@contextmanager
def environment(variables: dict[str, str]) -> Any:
    """Set environment variables for the tasks started inside, and put back what was there before."""
    before = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def new_run_id() -> str:
    """A new run's default id: the UTC time it starts, to the second."""
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


# ---------------------------------------------------------------------------------------------
# A stop that saves: SIGTERM or Ctrl-C on `semcode run` asks its running task to checkpoint and stop (the
# training stages save on SIGTERM, semcode.train.checkpoints), waits for it, and names the --resume command.
# The tasks lead process groups of their own (semcode._end_with_the_run), so a terminal's Ctrl-C reaches only
# this process; without this they would be killed with it, losing everything since their last checkpoint.
TASK_STOP_SECONDS = 120.0  # how long a task may take to write its checkpoint and exit


class RunStopped(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, frame: Any) -> None:
    raise RunStopped(signum)


def task_processes() -> list[int]:
    """The pids of this process's children (kfp.local's task processes), from /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # state, ppid, ...: after the command name
        if fields[1] == str(os.getpid()) and fields[0] != "Z":
            children.append(int(entry.name))
    return children


def stop_tasks(seconds: float = TASK_STOP_SECONDS) -> list[int]:
    """SIGTERM to every running task's process group, then wait up to ``seconds`` for them to exit; a
    second Ctrl-C (or SIGTERM) meanwhile stops waiting. Returns the pids that were asked to stop."""
    tasks = task_processes()
    for pid in tasks:
        try:
            os.killpg(pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and any(pid in task_processes() for pid in tasks):
            for pid in tasks:  # reap the ones that exited (kfp.local is no longer waiting for them)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)
            time.sleep(0.2)
    except RunStopped:
        pass
    return tasks


def run(
    preset_name: str,
    sources: list[str] | None,
    runs_dir: str | Path,
    run_id: str | None,
    registry: str | None = None,
    cache: bool = False,
    params: list[str] | None = None,
    languages: list[str] | None = None,
    verbose: bool = False,
    tensorboard: bool = False,
    resume: bool = False,
) -> dict:
    """Run the pipeline for a preset under ``runs_dir/run_id``; returns the summary (also summary.json).

    ``verbose`` shows kfp.local's own output; ``tensorboard`` serves the live curves while it runs.
    ``resume``: continue the unfinished run ``run_id`` with its own settings (run.json): its finished
    tasks come from its cache, the training task that was cut off continues from its checkpoint.
    """
    runs_dir = Path(runs_dir)
    if resume:
        run_dir, settings = resumable_run(runs_dir, run_id)
        preset_name, registry, cache = settings["preset"], settings["registry"], settings["cache"]
        arguments, gate_name = settings["arguments"], settings["gate_name"]
    else:
        registry = resolve_location(registry or str(runs_dir / REGISTRY_DIR))
        configs, arguments = prepare(preset_name, sources, registry, params, languages)
        pipeline_params.check_arguments(
            arguments, load_pipeline().component_spec.inputs, f"preset {preset_name}"
        )
        run_id = run_id or new_run_id()
        run_dir = runs_dir / run_id
        if run_dir.exists() and any(run_dir.iterdir()):
            raise FileExistsError(
                f"{run_dir} already holds a run; pick another --run-id (or continue it: --resume {run_id})"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        gate_name = configs["gate"].name
        settings = dict(
            preset=preset_name, registry=registry, cache=cache, arguments=arguments, gate_name=gate_name
        )
        (run_dir / RUN_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    log(
        TAG,
        f"{'resuming ' if resume else ''}preset {preset_name} -> {run_dir} (kfp.local, registry {registry}, "
        f"cache {'on' if cache else 'off'})",
    )

    started = time.perf_counter()
    cache_dir = runs_dir.resolve() / CACHE_DIR if cache else run_dir.resolve() / CACHE_DIR
    with serve_tensorboard(run_dir.resolve(), tensorboard), quiet_stdout(verbose) as console:
        outputs = run_pipeline(arguments, run_dir.resolve(), cache_dir)
    seconds = time.perf_counter() - started
    shutil.rmtree(run_dir / CHECKPOINTS_DIR, ignore_errors=True)  # the run is done: nothing to resume

    bundle_dir = Path(outputs["bundle"].path)
    metrics = json.loads((Path(outputs["evaluation"].path) / "metrics.json").read_text())
    decision = json.loads((Path(outputs["decision"].path) / "decision.json").read_text())
    bundle_link = run_dir / "bundle"
    bundle_link.unlink(missing_ok=True)  # a resumed run's bundle replaces the link
    bundle_link.symlink_to(os.path.relpath(bundle_dir, run_dir))
    name, version = gate_name, decision["candidate"]["version"]
    latest = bundles.read_latest(registry, name)
    published = bool(decision["passed"] and latest and latest["version"] == version)

    summary = {
        "run_dir": str(run_dir),
        "preset": preset_name,
        "seconds": round(seconds, 1),
        "primary": metrics["primary"],
        "bundle": str(bundle_link),
        "bundle_artifact": str(bundle_dir),
        "version": version,
        "passed": decision["passed"],
        "reasons": decision["reasons"],
        "registry": registry,
        "published": published,
        "latest": None if latest is None else latest["version"],
        "stages": console.stages,  # (task, seconds, status) per finished task, retries included
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print_summary(summary, metrics, name)
    return summary


def resumable_run(runs_dir: Path, run_id: str | None) -> tuple[Path, dict]:
    """(run directory, run.json) of the unfinished run ``run_id``; ValueError when it cannot be resumed."""
    if not run_id:
        raise ValueError("--resume needs the id of the run to continue: --resume RUN_ID")
    run_dir = runs_dir / run_id
    settings_file = run_dir / RUN_FILE
    if not settings_file.is_file():
        raise FileNotFoundError(
            f"--resume {run_id}: {settings_file} not found (not a run of this --runs-dir, or a run started "
            "before semcode recorded its settings)"
        )
    if (run_dir / "summary.json").is_file():
        raise ValueError(
            f"--resume {run_id}: that run finished ({run_dir / 'summary.json'}); nothing to resume"
        )
    return run_dir, json.loads(settings_file.read_text())


def print_summary(summary: dict, metrics: dict, name: str) -> None:
    print(evaluate.summary_table(metrics["suites"]))
    print(f"\ngate: {'PASSED' if summary['passed'] else 'REFUSED'}")
    for reason in summary["reasons"]:
        print(f"  {reason}")
    if summary["published"]:
        print(f"published: {name} {summary['version']} -> {summary['registry']} (latest)")
    else:
        latest = summary["latest"] or "nothing published yet"
        print(f"not published: {summary['registry']} latest stays at {latest}")
    print(
        f"\nrun {Path(summary['run_dir']).name} done in {format_seconds(summary['seconds'])}: {summary['run_dir']}"
    )
    print(f"bundle: {summary['bundle']}")
    print("search it:")
    print(f"  semcode search {shlex.quote(summary['bundle'])} {shlex.quote(SEARCH_EXAMPLE)}")
    print()
    print(timing_table(summary["stages"], summary["seconds"]))


def timing_table(stages: list[dict[str, Any]], total_seconds: float) -> str:
    """Per-stage seconds in the order the stages finished; a failed try is marked, cached tasks do not
    appear (they did not run); the last row is the whole run's wall time."""
    width = max([len("stage"), len("total")] + [len(stage["task"]) for stage in stages])
    rows = [f"{'stage':<{width}}  {'seconds':>8}"]
    for stage in stages:
        mark = "" if stage["status"] == "success" else f"  ({stage['status']})"
        rows.append(f"{stage['task']:<{width}}  {stage['seconds']:>8.1f}{mark}")
    rows.append(f"{'total':<{width}}  {total_seconds:>8.1f}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="semcode run",
        description="Run the training pipeline locally (kfp.local, CPU): ingest, tokenizer, encoder, evaluation, "
        "index, ONNX export, gate and publish, with artifacts under <runs-dir>/<run-id>/.",
        epilog="examples:\n  semcode run\n  semcode run --preset tiny --source dir:./myrepo --run-id try1\n"
        "  semcode run --preset tiny --source dir:./service --languages go,java\n"
        "  semcode run --preset tiny --registry s3://models/registry --cache\n"
        "  semcode run --preset tiny --tensorboard     # live training curves in the browser\n"
        "  semcode run --preset with_hard_negatives --param train_encoder_init_from=runs/<run-id>/bundle/encoder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--preset", default="local", help="preset name (semcode/configs/) or a YAML path (default: local)"
    )
    parser.add_argument(
        "--source",
        action="append",
        default=None,
        metavar="SPEC",
        help="source spec, repeatable; replaces the preset's ingest sources",
    )
    parser.add_argument(
        "--languages",
        action="append",
        default=None,
        metavar="LANG[,LANG]",
        help="read only these languages from dir: and JSONL sources (default: all ten: python, go, java, "
        "javascript, typescript, ruby, php, rust, c, cpp); repeatable or comma-separated",
    )
    parser.add_argument(
        "--registry",
        default=None,
        metavar="DIR|S3_URI",
        help="registry the gate compares with and publish writes to (default: <runs-dir>/registry)",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=None,
        metavar="NAME=VALUE",
        help="set a pipeline parameter over the preset, repeatable: train_encoder_lr=3e-5 "
        "(as for semcode submit; the value is YAML)",
    )
    parser.add_argument(
        "--runs-dir",
        default=DEFAULT_RUNS_DIR,
        help=f"where run directories go (default: ./{DEFAULT_RUNS_DIR})",
    )
    parser.add_argument("--run-id", default=None, help="name of this run's directory (default: a timestamp)")
    parser.add_argument(
        "--resume",
        default=None,
        metavar="RUN_ID",
        help="continue an unfinished run (killed, crashed) with its own settings: its finished tasks are "
        "reused and a training task goes on from its last checkpoint",
    )
    parser.add_argument(
        "--cache",
        action="store_true",
        help="reuse tasks whose inputs are unchanged from earlier --cache runs in --runs-dir "
        "(only while your sources and the semcode code stay unchanged)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show kfp.local's own output too: each task's executor input and outputs",
    )
    parser.add_argument(
        "--tensorboard",
        action="store_true",
        help="serve the live training curves with TensorBoard on 127.0.0.1 (a free port, printed) "
        "while the run lasts",
    )
    args = parser.parse_args(argv)
    changed = [flag for flag, value in (("--source", args.source), ("--languages", args.languages),
               ("--registry", args.registry), ("--param", args.param), ("--run-id", args.run_id),
               ("--cache", args.cache)) if value]  # fmt: skip
    if args.resume and (changed or args.preset != "local"):
        parser.error(f"--resume continues a run with its own settings: leave out {changed or ['--preset']}")
    run_id = args.resume or args.run_id or new_run_id()
    previous = {signum: signal.signal(signum, _raise_stopped) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        summary = run(
            args.preset,
            args.source,
            args.runs_dir,
            run_id,
            registry=args.registry,
            cache=args.cache,
            params=args.param,
            languages=cfg.comma_list(args.languages),
            verbose=args.verbose,
            tensorboard=args.tensorboard,
            resume=bool(args.resume),
        )
    except (*cfg.BAD_INPUT_ERRORS, storage.StorageError) as error:
        return cfg.bad_input("run", error)
    except RuntimeError as error:  # kfp.local: a task failed; its log is above
        print(f"semcode run: error: {error}", file=sys.stderr)
        return 1
    except RunStopped as stop:
        print(f"[run] {stop}: asking the running task to checkpoint and stop", file=sys.stderr, flush=True)
        stop_tasks()
        runs_dir = (
            "" if args.runs_dir == DEFAULT_RUNS_DIR else f"--runs-dir {shlex.quote(str(args.runs_dir))} "
        )
        print(
            f"semcode run: stopped by {stop}; finished tasks and the training checkpoint are kept: continue with "
            f"semcode run {runs_dir}--resume {run_id}",
            file=sys.stderr,
        )
        return 128 + stop.signum
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0 if summary["passed"] else EXIT_REFUSED
