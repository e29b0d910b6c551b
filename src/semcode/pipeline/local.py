"""``semcode run``: the training pipeline on this machine through kfp.local, artifacts under ./runs/<run-id>/.

It runs the very pipeline function the cluster runs (src/semcode/pipeline/train_pipeline.py) with KFP's local
SubprocessRunner: every task is a fresh Python process in this environment (``use_venv=False``: nothing
is installed), artifacts are folders under runs/<run-id>/artifacts/, and the Kubernetes settings (GPUs,
node pool, Secret, resources) have no effect. Retries do, where they can help: a task that failed on an
I/O, network or S3 error or was killed is tried up to three times; bad input (one line from the task) and
other errors are not tried again (semcode.pipeline.kfp_local, which also holds the console and the other
changes to kfp.local). The run ends with one line naming the task that failed and why.

``semcode run --pipeline index`` runs the index pipeline (src/semcode/pipeline/index_pipeline.py) the same
way: ``--encoder`` (a bundle, a registry version or ``latest``, or minilm) indexes ``--source`` without
training, updating ``--previous`` (default: the last index it published, ``<registry>/<index_name>/latest``;
'' indexes anew), and publishes to ``--registry``; ``--param index_<key>=VALUE`` sets the index stage's
settings. No preset, evaluation or gate: it prints what was embedded and the search line.

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
``--tensorboard`` serves the run's live training curves on 127.0.0.1 while the run lasts: the training
stages also write them to <run-dir>/tensorboard/<run> (CURVES_DIR; SEMCODE_TENSORBOARD_DIR), one short-named
TensorBoard run per training (encoder, encoder-N for the task train-encoder-N, decoder) instead of their
artifacts' long paths.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
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
from semcode.contract import MINILM_ALIAS
from semcode.embed import check_encoder_spec
from semcode.pipeline import containers, kfp_local, save_now
from semcode.pipeline import params as pipeline_params
from semcode.pipeline.compile import load_pipeline
from semcode.pipeline.kfp_local import quiet_stdout
from semcode.progress import format_seconds, log
from semcode.registry import latest_uri, read_latest
from semcode.stages import evaluate, ingest

TAG = "run"
REGISTRY_DIR = "registry"  # default registry: <runs-dir>/registry
CACHE_DIR = ".kfp-cache"  # kfp.local's cache: shared by the --cache runs of a --runs-dir, else one per run
RUN_FILE = "run.json"  # <run-dir>/run.json: what --resume needs to run the same pipeline again
CHECKPOINTS_DIR = "checkpoints"  # <run-dir>/checkpoints: the training tasks' durable checkpoints
CURVES_DIR = "tensorboard"  # <run-dir>/tensorboard/<encoder|encoder-N|decoder>: the training curves
SEARCH_EXAMPLE = "read a file line by line"
# kfp.local warns about settings it cannot apply on one machine (accelerators) and about images
# without "python" in their name; both are expected here.
EXPECTED_WARNINGS = (r".*have no effect in the current local runner.*", r".*non-Python base image.*")

DEFAULT_RUNS_DIR = "runs"
EXIT_REFUSED = 3  # the gate refused the candidate (as semcode gate and semcode submit exit)


def resolve_location(location: str) -> str:
    """A registry or path as the task processes should see it: s3:// as is, a local path made absolute."""
    return location if storage.is_s3(location) else str(Path(location).expanduser().resolve())


def parse_params(params: list[str] | None) -> dict[str, dict]:
    """``--param train_encoder_lr=3e-5`` -> ``{"train_encoder": {"lr": 3e-5}}``: preset overrides.

    The name is a stage parameter of the pipeline (``<section>_<key>``, as for ``semcode submit``); the
    value is read as YAML and then checked against the field's type with the rest of the preset.
    """
    overrides: dict[str, dict] = {}
    for item in params or []:
        name, sep, text = item.partition("=")
        split = pipeline_params.split_parameter(name) if sep else None
        if split is None:
            raise cfg.ConfigError(
                f"--param {item}: expected <section>_<key>=VALUE with a section of "
                f"{list(pipeline_params.STAGE_CONFIGS)} (cluster parameters have no effect locally)"
            )
        section, key = split
        overrides.setdefault(section, {})[key] = param_value(item, text)
    return overrides


def param_value(item: str, text: str) -> Any:
    """The value of ``--param NAME=TEXT``: TEXT read as YAML, a string kept as it was written."""
    import yaml

    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError as error:
        raise cfg.ConfigError(f"--param {item}: not a YAML value ({error})") from None
    return text if isinstance(value, str) else value


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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tensorboard_command(logdir: Path, port: int | None = None) -> list[str]:
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1"]
    return command + (["--port", str(port)] if port else [])


def curves_dir(run_dir: Path, runner: str) -> Path | None:
    """Where this run's training tasks also write their curves (SEMCODE_TENSORBOARD_DIR): <run-dir>/tensorboard,
    unless the variable names a place already or the tasks run in containers (which see the artifacts only)."""
    if runner != "subprocess" or os.environ.get(semcode.TENSORBOARD_PREFIX_ENV):
        return None
    return run_dir / CURVES_DIR


@contextmanager
def serve_tensorboard(run_dir: Path, enabled: bool, logdir: Path | None = None) -> Any:
    """With ``enabled``, TensorBoard over ``run_dir`` on a free 127.0.0.1 port while the block runs;
    yields (its address, the process), else (None, None).

    It finds the training stages' event files (<task>/<output>/tensorboard/) as they appear, and reloads
    them every few seconds; its own output goes to <run_dir>/tensorboard.log, not the console.
    """
    if not enabled:
        yield None, None
        return
    port = _free_port()
    logdir = logdir or run_dir
    logdir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "tensorboard.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            tensorboard_command(logdir, port), stdout=log_file, stderr=subprocess.STDOUT
        )
        url = f"http://127.0.0.1:{port}/"
        log(TAG, f"tensorboard: {url} (logdir {logdir}, its log {log_path})")
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
            view = shlex.join(["tensorboard", "--logdir", str(logdir)])
            log(TAG, f"tensorboard stopped; to view the curves again: {view}")


def run_pipeline(
    arguments: dict[str, Any],
    run_dir: Path,
    cache_dir: Path,
    pipeline: Any = None,
    runner: str = "subprocess",
) -> dict[str, Any]:
    """Run ``pipeline`` (a pipeline function; default the training pipeline) through kfp.local; returns its
    outputs (the training pipeline's bundle, evaluation and decision artifacts). ``runner``: subprocess
    (the tasks in this environment) or docker (in their images, semcode.pipeline.containers)."""
    from kfp import local

    import semcode

    kfp_local.install()
    # Idle OpenMP threads sleep instead of spinning: on a laptop (or a shared machine) the task's torch
    # threads otherwise burn the cores that ONNX Runtime, the tokenizer workers or anything else need.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    for_the_tasks = {
        semcode.RUN_PID_ENV: str(os.getpid()),  # each task ends itself once this process is gone
        # The training tasks keep durable checkpoints in the run's folder (not a parameter: a cached
        # task stays cached across --cache runs); --resume finds them there.
        semcode.RUN_CHECKPOINTS_ENV: str(run_dir / CHECKPOINTS_DIR),
    }
    curves = curves_dir(run_dir, runner)  # each training stage a short-named TensorBoard run in it
    if curves is not None:
        for_the_tasks[semcode.TENSORBOARD_PREFIX_ENV] = str(curves)
    pipeline, pipeline_root = pipeline or load_pipeline(), run_dir / "artifacts"
    with (
        environment(for_the_tasks),
        containers.task_runner(runner, pipeline, arguments, pipeline_root, for_the_tasks) as task_runner,
        save_now.forward_save_requests(runner),  # SIGUSR1: a checkpoint of the training stage running
    ):
        local.init(
            runner=task_runner,
            pipeline_root=str(pipeline_root),
            enable_caching=True,  # a run's own cache is what --resume reuses the finished tasks from
            cache_root=str(cache_dir),
        )
        with warnings.catch_warnings():
            for message in EXPECTED_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            task = pipeline(**arguments)
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


def new_run_dir(runs_dir: Path, run_id: str | None, resumable: bool = False) -> Path:
    """A new run's directory, ``runs_dir/run_id`` (default id: new_run_id), made; FileExistsError when it
    already holds a run (naming --resume for a ``resumable`` pipeline's run)."""
    run_dir = runs_dir / (run_id or new_run_id())
    if run_dir.exists() and any(run_dir.iterdir()):
        resume = f" (or continue it: --resume {run_dir.name})" if resumable else ""
        raise FileExistsError(f"{run_dir} already holds a run; pick another --run-id{resume}")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


# ---------------------------------------------------------------------------------------------
# A stop that saves: SIGTERM or Ctrl-C on `semcode run` asks its running task to checkpoint and stop (the
# training stages save on SIGTERM, semcode.train.checkpoints), waits for it, and names the --resume command.
# The tasks lead process groups of their own (semcode._end_with_the_run), so a terminal's Ctrl-C reaches only
# this process; without this they would be killed with it, losing everything since their last checkpoint.
# SIGUSR1, a checkpoint without stopping, goes to the training stage only (semcode.pipeline.save_now).
TASK_STOP_SECONDS = 120.0  # how long a task may take to write its checkpoint and exit


class RunStopped(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, frame: Any) -> None:
    raise RunStopped(signum)


def task_processes() -> list[int]:
    """The pids of this process's children (kfp.local's task processes), from /proc."""
    return save_now.children_by_parent().get(os.getpid(), [])


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
    runner: str = "subprocess",
    as_json: bool = False,
) -> dict:
    """Run the pipeline for a preset under ``runs_dir/run_id``; returns the summary (also summary.json).

    ``verbose`` shows kfp.local's own output; ``tensorboard`` serves the live curves while it runs;
    ``as_json``: stdout carries only the summary, one JSON object at the end (the progress goes to stderr).
    ``resume``: continue the unfinished run ``run_id`` with its own settings (run.json): its finished
    tasks come from its cache, the training task that was cut off continues from its checkpoint.
    """
    runs_dir = Path(runs_dir)
    if resume:
        run_dir, settings = resumable_run(runs_dir, run_id)
        preset_name, registry, cache = settings["preset"], settings["registry"], settings["cache"]
        arguments, gate_name = settings["arguments"], settings["gate_name"]
        runner = settings.get("runner", "subprocess")
    else:
        registry = resolve_location(registry or str(runs_dir / REGISTRY_DIR))
        configs, arguments = prepare(preset_name, sources, registry, params, languages)
        pipeline_params.check_arguments(
            arguments, load_pipeline().component_spec.inputs, f"preset {preset_name}"
        )
        containers.check(runner, load_pipeline())
        run_dir = new_run_dir(runs_dir, run_id, resumable=True)
        gate_name = configs["gate"].name
        settings = dict(
            preset=preset_name,
            registry=registry,
            cache=cache,
            arguments=arguments,
            gate_name=gate_name,
            runner=runner,
        )
        (run_dir / RUN_FILE).write_text(json.dumps(settings, indent=2) + "\n")
    log(
        TAG,
        f"{'resuming ' if resume else ''}preset {preset_name} -> {run_dir} (kfp.local {runner} runner, registry {registry}, "
        f"cache {'on' if cache else 'off'})",
    )

    started = time.perf_counter()
    cache_dir = runs_dir.resolve() / CACHE_DIR if cache else run_dir.resolve() / CACHE_DIR
    curves = curves_dir(run_dir.resolve(), runner)
    with (
        contextlib.redirect_stdout(sys.stderr if as_json else sys.stdout),
        serve_tensorboard(run_dir.resolve(), tensorboard, curves),
        quiet_stdout(verbose) as console,
    ):
        outputs = run_pipeline(arguments, run_dir.resolve(), cache_dir, runner=runner)
    seconds = time.perf_counter() - started
    shutil.rmtree(run_dir / CHECKPOINTS_DIR, ignore_errors=True)  # the run is done: nothing to resume

    bundle_dir = Path(outputs["bundle"].path)
    metrics = json.loads((Path(outputs["evaluation"].path) / "metrics.json").read_text())
    decision = json.loads((Path(outputs["decision"].path) / "decision.json").read_text())
    bundle_link = run_dir / "bundle"
    bundle_link.unlink(missing_ok=True)  # a resumed run's bundle replaces the link
    bundle_link.symlink_to(os.path.relpath(bundle_dir, run_dir))
    name, version = gate_name, decision["candidate"]["version"]
    latest = read_latest(registry, name)
    published = bool(decision["passed"] and latest and latest["version"] == version)

    summary = {
        "run_id": run_dir.name,
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
        "published_version": version if published else None,
        "latest": None if latest is None else latest["version"],
        "champion": (decision.get("champion") or {}).get("version"),  # what the gate compared with
        "stages": console.stages,  # (task, seconds, status) per finished task, retries included
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
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


# ---------------------------------------------------------------------------------------------
# semcode run --pipeline index: index code with a model that exists, no training (the module doc)


def prepare_index(
    encoder: str,
    sources: list[str] | None,
    registry: str,
    previous: str | None,
    params: list[str] | None = None,
    languages: list[str] | None = None,
) -> dict[str, Any]:
    """The index pipeline's arguments, every one checked before any task runs: the index stage's settings
    (``--param index_<key>=VALUE``), the sources, the encoder, the index to update (None: the registry's
    ``latest`` of the index's name) and the registry."""
    from semcode.stages import index as index_stage

    values: dict[str, Any] = {}
    for item in params or []:
        name, sep, text = item.partition("=")
        key = name[len(pipeline_params.INDEX_PREFIX) :]
        if (
            not sep
            or not name.startswith(pipeline_params.INDEX_PREFIX)
            or key in pipeline_params.INDEX_INPUTS
        ):
            raise cfg.ConfigError(
                f"--param {item}: expected index_<key>=VALUE with a key of the index stage (semcode index "
                "--help); --encoder, --source, --previous and --registry set the others"
            )
        values[name] = param_value(item, text)
    if languages:
        values["index_languages"] = list(languages)
    arguments = pipeline_params.index_arguments(values)
    index_name = arguments.get("index_name") or "code-index"  # the pipeline's default: publish needs one
    if previous is None:
        previous = latest_uri(registry, index_name)
    arguments.update(
        index_encoder=encoder,
        index_sources=list(sources or []),
        index_previous=previous,
        index_name=index_name,
        publish_registry=registry,
    )
    index_stage.check_sources(arguments["index_sources"])
    if encoder != MINILM_ALIAS:
        index_stage.encoder_folder(encoder)
    index_stage.previous_folder(previous)
    storage.check_writable(registry, "registry (--registry)")
    return arguments


def run_index(
    encoder: str,
    sources: list[str] | None,
    runs_dir: str | Path,
    run_id: str | None,
    registry: str | None = None,
    previous: str | None = None,
    cache: bool = False,
    params: list[str] | None = None,
    languages: list[str] | None = None,
    verbose: bool = False,
) -> dict:
    """Run the index pipeline under ``runs_dir/run_id``; returns the summary (also summary.json)."""
    from semcode.stages import index as index_stage

    runs_dir = Path(runs_dir)
    registry = resolve_location(registry or str(runs_dir / REGISTRY_DIR))
    arguments = prepare_index(encoder, sources, registry, previous, params, languages)
    run_dir = new_run_dir(runs_dir, run_id)
    log(
        TAG,
        f"index pipeline -> {run_dir} (kfp.local, encoder {encoder}, registry {registry}, updating "
        f"{arguments['index_previous'] or 'nothing'})",
    )
    started = time.perf_counter()
    cache_dir = runs_dir.resolve() / CACHE_DIR if cache else run_dir.resolve() / CACHE_DIR
    with quiet_stdout(verbose) as console:
        outputs = run_pipeline(arguments, run_dir.resolve(), cache_dir, load_pipeline("index"))
    seconds = time.perf_counter() - started

    bundle_dir = Path(outputs["Output"].path)
    bundle_link = run_dir / "bundle"
    bundle_link.symlink_to(os.path.relpath(bundle_dir, run_dir))
    bundle = bundles.read_bundle_json(bundle_dir)
    latest = read_latest(registry, bundle["name"])
    summary = {
        "run_dir": str(run_dir),
        "pipeline": "index",
        "seconds": round(seconds, 1),
        "bundle": str(bundle_link),
        "bundle_artifact": str(bundle_dir),
        "name": bundle["name"],
        "version": bundle["version"],
        "update": bundle["source"]["update"],
        "registry": registry,
        "published": bool(latest and latest["version"] == bundle["version"]),
        "stages": console.stages,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(index_stage.summary(bundle))
    if summary["published"]:
        print(f"published: {bundle['name']} {bundle['version']} -> {registry} (latest)")
    print(
        f"\nrun {run_dir.name} done in {format_seconds(seconds)}: {run_dir}\nbundle: {bundle_link}\nsearch it:"
    )
    print(f"  semcode search {shlex.quote(str(bundle_link))} {shlex.quote(SEARCH_EXAMPLE)}\n")
    print(timing_table(summary["stages"], summary["seconds"]))
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="semcode run",
        description="Run the training pipeline locally (kfp.local, CPU): ingest, tokenizer, encoder, evaluation, "
        "index, ONNX export, gate and publish, with artifacts under <runs-dir>/<run-id>/.",
        epilog="examples:\n  semcode run\n  semcode run --preset tiny --source dir:./myrepo --run-id try1\n"
        "  semcode run --preset tiny --source dir:./service --languages go,java\n"
        "  semcode run --preset tiny --registry s3://models/registry --cache\n"
        "  semcode run --preset tiny --tensorboard     # live training curves in the browser\n"
        "  semcode run --preset with_hard_negatives --param train_encoder_init_from=runs/<run-id>/bundle/encoder\n"
        "  semcode run --pipeline index --encoder minilm --source dir:./myrepo     # no training\n"
        "  semcode run --source dir:./myrepo --when-untrainable index   # too few doc comments: index instead\n"
        "  semcode run --source pairs:train.jsonl --source 'pairs:val.jsonl#valid'   # your files, your splits\n"
        "  semcode run --source 'pairs:papers.json#query=title+abstract,code=code'   # a JSON array, its names\n"
        "  semcode run --pipeline index --encoder runs/registry/semcode/latest --source dir:./myrepo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--pipeline",
        choices=("train", "index"),
        default="train",
        help="train (default): the training pipeline; index: index --source with --encoder, no training, "
        "updating the last index published",
    )
    parser.add_argument(
        "--preset", default=None, help="preset name (semcode/configs/) or a YAML path (default: local)"
    )
    parser.add_argument(
        "--encoder",
        default=None,
        metavar="SPEC",
        help="--pipeline index: the model, a bundle, registry version or <registry>/<name>/latest, or minilm",
    )
    parser.add_argument(
        "--previous",
        default=None,
        metavar="SPEC",
        help="--pipeline index: the index to update (default: <registry>/<index_name>/latest, the last one "
        "published; '' = index anew)",
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
        "--runner",
        choices=containers.RUNNER_NAMES,
        default=None,
        help="subprocess (default): each task a process in this environment; docker: each task in the image "
        "the pipeline names, on this machine's Docker engine (images/README.md; the training pipeline)",
    )
    parser.add_argument(
        "--tensorboard",
        action="store_true",
        help="serve the live training curves with TensorBoard on 127.0.0.1 (a free port, printed) "
        "while the run lasts",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the run's summary as one JSON object on stdout (run_id, stages, passed, reasons, bundle, "
        "version, published_version, ...; as summary.json), the progress on stderr",
    )
    parser.add_argument(
        "--when-untrainable",
        choices=("refuse", "index"),
        default="refuse",
        help="when the sources (a local dir: of up to 5000 files) hold too few doc comments to train on: refuse "
        "in one line naming the index command (default), or index them with the zero-shot start, as "
        "--pipeline index --encoder minilm does",
    )
    args = parser.parse_args(argv)
    if args.pipeline == "index" and args.runner == "docker":
        parser.error("--runner docker runs the training pipeline; the index pipeline runs as subprocesses")
    if args.pipeline == "index" and args.json:
        parser.error(
            "--json summarises a training run; the index pipeline's summary is <run-dir>/summary.json"
        )
    if args.pipeline == "index":
        return main_index(parser, args)
    if args.encoder is not None or args.previous is not None:
        parser.error(
            "--encoder and --previous are for --pipeline index (training: --param train_encoder_init_from)"
        )
    changed = [flag for flag, value in (("--source", args.source), ("--languages", args.languages),
               ("--registry", args.registry), ("--param", args.param), ("--run-id", args.run_id),
               ("--cache", args.cache), ("--preset", args.preset), ("--runner", args.runner)) if value]  # fmt: skip
    if args.resume and changed:
        parser.error(f"--resume continues a run with its own settings: leave out {changed}")
    run_id = args.resume or args.run_id or new_run_id()
    previous = {signum: signal.signal(signum, _raise_stopped) for signum in (signal.SIGTERM, signal.SIGINT)}
    untrainable = None
    try:
        summary = run(
            args.preset or "local",
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
            runner=args.runner or "subprocess",
            as_json=args.json,
        )
    except ingest.TooFewPairs as error:  # found before any task ran
        if args.when_untrainable != "index":
            return cfg.bad_input("run", error)
        untrainable = error
    except (*cfg.BAD_INPUT_ERRORS, storage.StorageError) as error:
        return cfg.bad_input("run", error)
    except RuntimeError as error:  # kfp.local: a task failed; its log is above
        return task_failed(error)
    except RunStopped as stop:
        print(f"[run] {stop}: asking the running task to checkpoint and stop", file=sys.stderr, flush=True)
        stop_tasks()
        containers.stop_containers((Path(args.runs_dir) / run_id).resolve(), TASK_STOP_SECONDS)
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
    if untrainable is not None:  # --when-untrainable index: the index pipeline, with the zero-shot start
        log(TAG, f"{untrainable}\n[run] --when-untrainable index: indexing with {MINILM_ALIAS} instead")
        args.encoder, args.source, args.param, args.preset = MINILM_ALIAS, untrainable.sources, None, None
        args.tensorboard = False  # no training to watch
        return main_index(parser, args)
    return 0 if summary["passed"] else EXIT_REFUSED


def task_failed(error: RuntimeError) -> int:
    """How a run that kfp.local ended with ``error`` (a task failed) ends: one line naming the task and why
    (its own lines are above); exit 2 when the task failed on bad input, else 1."""
    if not kfp_local.FAILED_TASKS:
        print(f"semcode run: error: {error}", file=sys.stderr)
        return 1
    failed = kfp_local.FAILED_TASKS[-1]
    print(
        f"semcode run: error: task {failed['task']} failed ({failed['why']}); its output is above",
        file=sys.stderr,
    )
    return cfg.EXIT_BAD_INPUT if failed["exit_code"] == cfg.EXIT_BAD_INPUT else 1


def main_index(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``semcode run --pipeline index``: the index pipeline with the flags that apply to it."""
    unused = [flag for flag, value in (("--preset", args.preset), ("--resume", args.resume),
              ("--tensorboard", args.tensorboard)) if value]  # fmt: skip
    if unused:
        parser.error(f"--pipeline index has no preset, resume or training curves: leave out {unused}")
    if not args.encoder or not args.source:
        parser.error(
            "--pipeline index needs --encoder (a bundle, registry version or latest, or minilm) and --source"
        )
    try:
        run_index(
            args.encoder,
            args.source,
            args.runs_dir,
            args.run_id,
            registry=args.registry,
            previous=args.previous,
            cache=args.cache,
            params=args.param,
            languages=cfg.comma_list(args.languages),
            verbose=args.verbose,
        )
    except (*cfg.BAD_INPUT_ERRORS, storage.StorageError) as error:
        return cfg.bad_input("run", error)
    except RuntimeError as error:
        return task_failed(error)
    return 0
