"""``semcode submit``: upload the training pipeline to a KFP cluster, start a run, wait, and say how it went.

The cluster counterpart of ``semcode run``, made for CI and the retraining CronJob::

    semcode submit --host https://kfp.example.com --preset gpu --param gate_registry=s3://models/registry

``--pipeline index`` does the same with the index pipeline (index_pipeline.py: code indexed with a model
that exists, the previous index updated, published to an index registry; the re-indexing CronJob): no
preset, its parameters set with ``--param`` (``index_encoder``, ``index_sources``, ``index_previous``,
``publish_registry``, ``index_<key>``: checked by the index stage's config first), no gate: exit 0 when the
run succeeded, and the line says whether the index was published.

1. Bad input fails first, before any request: the preset (src/semcode/configs/<name>.yaml) is resolved into pipeline
   arguments ``<section>_<key>`` and validated with the stage configs (semcode.pipeline.params);
   ``--param KEY=VALUE`` sets any parameter the package declares, cluster ones included (``gpu_count``).
   A VALUE is read as YAML (``100``, ``true``, ``[python:stdlib]``) except for a string parameter,
   which takes the text as it is (``gate_version=2024.10`` stays "2024.10").
2. The package (default: the committed src/semcode/pipeline/train_pipeline.yaml; compiled into a temporary file when
   it is missing) is uploaded as a new **version** of the pipeline ``--pipeline-name``; the pipeline is
   created first when it does not exist (KFP then also makes a first version named after the pipeline).
   The version is named ``<UTC time>-<git short sha>`` unless ``--version-name`` says otherwise.
3. A run of that version starts in ``--experiment`` (created when missing), then we poll it until it
   ends, with a progress line on stderr whenever something changes (and every five minutes anyway).

Caching. KFP reads caching from the pipeline spec's tasks; kfp.Client's ``enable_caching`` only rewrites
a package it submits inline, and is ignored for a run of an uploaded version. So ``--no-cache`` uploads a
copy of the package with caching off in every task, and the version's description says so. With
caching on (the default) the compile-time settings hold: every task caches except gate and publish.
Scheduled retraining wants ``--no-cache``: a cached ingest would reuse the sources as they were.

Whether the gate passed. The v2beta1 Run reports each task's state (``run_details.task_details``:
display_name, state) but not its output parameters, so the gate's bool cannot be read from the API. The
pipeline runs ``publish`` only when the gate passed (and a registry is given), so for a run that
SUCCEEDED with ``gate_registry`` set: a ``publish`` task that SUCCEEDED means passed; ``publish`` absent
or SKIPPED means refused. Without a registry nothing is published whatever the gate said, and when the
API lists no ``gate`` task the rule cannot be applied either: the verdict is then unknown (exit 0, with
a warning; the gate's decision artifact in the KFP UI has it).

Exit codes: 0 the run succeeded and the gate passed (or its verdict is unknown, see above; also after
starting a run with ``--no-wait``); 1 the run failed, was canceled, or did not end within ``--timeout``
(it goes on running on the cluster), or the API failed; 2 bad input (unknown parameter, missing host,
package not found); 3 the run succeeded but the gate refused the candidate.

Auth: ``--token`` / KFP_TOKEN is sent as ``Authorization: Bearer <token>`` (kfp.Client's existing_token).
``--token-file`` / KFP_TOKEN_FILE (or kfp's KF_PIPELINES_SA_TOKEN_PATH) reads the token from a file
before every request, as a projected ServiceAccount token that the kubelet rotates (kfp.Client's
ServiceAccountTokenVolumeCredentials), so a six-hour wait outlives a one-hour token.

The API's task_details come from the Argo workflow's nodes: a task is listed under its key in the
compiled spec (ingest, train-encoder, gate, publish), beside Argo's own nodes (root, root-driver,
<task>-driver, executor, condition-N); a task inside a ``dsl.If`` whose condition was false gets no node.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from semcode import config as cfg
from semcode.pipeline import params as pipeline_params
from semcode.pipeline.compile import DEFAULT_OUTPUT, INDEX_OUTPUT, compile_pipeline
from semcode.progress import format_seconds, log

TAG = "submit"
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_REFUSED = 0, 1, 2, 3

DEFAULT_PIPELINE_NAME = "semcode-train"  # src/semcode/pipeline/train_pipeline.py PIPELINE_NAME
INDEX_PIPELINE_NAME = "semcode-index"  # src/semcode/pipeline/index_pipeline.py PIPELINE_NAME
DEFAULT_EXPERIMENT = "semcode"
DEFAULT_PRESET = "gpu"
DEFAULT_TIMEOUT_SECONDS = 6 * 3600.0  # a gpu-preset run takes hours; CI jobs usually allow 6 h or more
DEFAULT_POLL_SECONDS = 30.0
PROGRESS_EVERY_SECONDS = 300.0  # a progress line at least this often, even when nothing changed
MAX_POLL_FAILURES = 5  # consecutive failed polls (network, API restarts) before giving up

TERMINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELED", "SKIPPED")
GATE_TASK, PUBLISH_TASK = "gate", "publish"  # task names in the compiled spec, as the API reports them
REGISTRY_PARAMETER = "gate_registry"
INDEX_REGISTRY_PARAMETER = "publish_registry"  # the index pipeline's registry
CHECKPOINT_ROOT_PARAMETER = "checkpoint_root"  # durable checkpoints of the training tasks
RESUME_PARAMETER = "resume_run_id"  # continue that run's training tasks from their durable checkpoints

# The package's parameter types (root.inputDefinitions) -> what a --param value must be.
PARAMETER_KINDS: dict[str, tuple[tuple[type, ...], str]] = {
    "NUMBER_INTEGER": ((int,), "an integer"),
    "NUMBER_DOUBLE": ((int, float), "a number"),
    "BOOLEAN": ((bool,), "true or false"),
    "LIST": ((list,), "a YAML list, e.g. '[a, b]'"),
    "STRUCT": ((dict,), "a YAML mapping, e.g. '{key: value}'"),
}


class SubmitError(ValueError):
    """Bad input (exit 2): the message names the flag or file and what is wrong."""


@dataclass(frozen=True)
class Package:
    """A compiled pipeline: its YAML documents (pipeline spec, platform spec) and parameter types."""

    path: Path
    documents: list[dict]

    @property
    def spec(self) -> dict:
        return self.documents[0]

    @property
    def parameters(self) -> dict[str, dict]:
        """name -> {parameterType, defaultValue, ...} from root.inputDefinitions."""
        return self.spec["root"].get("inputDefinitions", {}).get("parameters", {})

    def task_names(self) -> list[str]:
        """The pipeline's tasks (not the condition DAGs around them), as the API reports them."""
        components = self.spec.get("components", {})
        return [
            name
            for dag in spec_dags(self.spec)
            for name, task in dag["tasks"].items()
            if "dag" not in components.get(task["componentRef"]["name"], {})
        ]


def spec_dags(spec: dict) -> list[dict]:
    """Every DAG of a pipeline spec: the root and the components that are DAGs (dsl.If bodies)."""
    components = spec.get("components", {}).values()
    return [spec["root"]["dag"], *(component["dag"] for component in components if "dag" in component)]


@dataclass(frozen=True)
class SubmitOptions:
    host: str
    preset: str | None = None  # None: DEFAULT_PRESET (the training pipeline; the index pipeline has none)
    pipeline: str = "train"  # or "index"
    params: tuple[str, ...] = ()  # KEY=VALUE
    package: str | None = None  # None: the committed YAML (compiled when missing)
    pipeline_name: str | None = (
        None  # None: DEFAULT_PIPELINE_NAME, INDEX_PIPELINE_NAME for the index pipeline
    )
    version_name: str | None = None  # None: <UTC time>-<git short sha>
    experiment: str = DEFAULT_EXPERIMENT
    run_name: str | None = None  # None: <preset> <version name>
    namespace: str | None = None
    cache: bool = True
    wait: bool = True
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
    poll_seconds: float = DEFAULT_POLL_SECONDS
    token: str | None = None
    token_file: str | None = None
    output_json: str | None = None  # the result as JSON: written when the run starts and when it ends
    resume: str | None = None  # an earlier run's id: continue its training tasks from their checkpoints


# --- input: package, parameters, names (no network) ---------------------------------------------------


def read_package(path: str | Path) -> Package:
    path = Path(path)
    if not path.is_file():
        raise SubmitError(f"--package {path}: not found (compile one with: semcode compile --output {path})")
    try:
        documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    except yaml.YAMLError as error:
        raise SubmitError(f"--package {path}: not YAML: {error}") from None
    if not documents or "root" not in documents[0] or "pipelineInfo" not in documents[0]:
        raise SubmitError(f"--package {path}: not a compiled KFP pipeline (no pipelineInfo/root)")
    return Package(path, documents)


@contextlib.contextmanager
def package_to_upload(package: str | None, cache: bool, kind: str = "train") -> Iterator[Package]:
    """The package to upload: as given (default: the committed YAML of the ``kind`` pipeline), compiled
    when the default is missing, and rewritten with caching off in every task when ``cache`` is False (a
    temporary file either way)."""
    with tempfile.TemporaryDirectory(prefix="semcode-submit-") as scratch:
        default = INDEX_OUTPUT if kind == "index" else DEFAULT_OUTPUT
        path = Path(package) if package else default
        if package is None and not path.is_file():
            log(TAG, f"{path} is missing: compiling the pipeline")
            path = Path(scratch) / default.name
            compile_pipeline(path, kind)
        loaded = read_package(path)
        if not cache:
            uncached = Package(Path(scratch) / f"no-cache-{path.name}", without_caching(loaded.documents))
            uncached.path.write_text(yaml.safe_dump_all(uncached.documents, sort_keys=False))
            loaded = uncached
        yield loaded


def without_caching(documents: list[dict]) -> list[dict]:
    """A copy of the pipeline documents with ``cachingOptions.enableCache: false`` in every task of every
    DAG (the root and the condition DAGs); what kfp.Client does for runs it submits inline."""
    documents = copy.deepcopy(documents)
    for dag in spec_dags(documents[0]):
        for task in dag["tasks"].values():
            task["cachingOptions"] = {"enableCache": False}
    return documents


def parse_value(name: str, text: str, parameter_type: str) -> Any:
    """A --param value for a parameter of ``parameter_type``: YAML, or the text itself for a string."""
    if parameter_type == "STRING":
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SubmitError(f"--param {name}={text}: not a YAML value ({error})") from None
    types, expected = PARAMETER_KINDS.get(parameter_type, ((object,), parameter_type))
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise SubmitError(f"--param {name}={text}: expected {expected}")
    return float(value) if parameter_type == "NUMBER_DOUBLE" else value


def parse_params(texts: tuple[str, ...] | list[str], parameters: dict[str, dict]) -> dict[str, Any]:
    """``KEY=VALUE`` texts -> {parameter: value}; unknown keys raise SubmitError listing the valid ones."""
    values: dict[str, Any] = {}
    unknown = []
    for text in texts:
        name, equals, raw = text.partition("=")
        name = name.strip()
        if not equals or not name:
            raise SubmitError(f"--param {text!r}: expected KEY=VALUE, e.g. train_encoder_max_steps=100")
        if name not in parameters:
            unknown.append(name)
            continue
        values[name] = parse_value(name, raw, parameters[name]["parameterType"])
    if unknown:
        raise SubmitError(
            f"--param: unknown pipeline parameter(s) {', '.join(unknown)}; "
            f"valid: {', '.join(sorted(parameters))}"
        )
    return values


def pipeline_arguments(preset_name: str, overrides: dict[str, Any], parameters: dict[str, dict]) -> dict:
    """The run's arguments: the preset's keys as ``<section>_<key>``, then the --param overrides.

    Stage parameters go through the stage configs (types coerced, values validated, ConfigError on a bad
    one); cluster parameters (gpu_count, ...) are passed as parsed.
    """
    sections: dict[str, dict] = {}
    cluster = {}
    for name, value in overrides.items():
        split = pipeline_params.split_parameter(name)
        if split is None:
            cluster[name] = value
        else:
            sections.setdefault(split[0], {})[split[1]] = value
    arguments = pipeline_params.preset_arguments(cfg.load_yaml(preset_name), preset_name, sections)
    pipeline_params.check_arguments(arguments, parameters, f"preset {preset_name}")
    return {**arguments, **cluster}


def git_short_sha() -> str | None:
    """The commit being submitted: $GITHUB_SHA or $CI_COMMIT_SHA in CI, else git in the working directory."""
    for variable in ("GITHUB_SHA", "CI_COMMIT_SHA"):
        if os.environ.get(variable):
            return os.environ[variable][:7]
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None  # not a checkout (an installed package, a container image)
    return result.stdout.strip() or None


def default_version_name(now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    sha = git_short_sha()
    return f"{stamp}-{sha}" if sha else stamp


def parse_duration(text: str) -> float:
    """Seconds from ``3600``, ``45s``, ``90m`` or ``6h`` (an argparse type)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds or a duration such as 45s, 90m, 6h")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


# --- the KFP API (kfp.Client) --------------------------------------------------------------------------


def check_api(host: str, token: str | None, token_file: str | None) -> bool:
    """One GET /apis/v2beta1/healthz; returns whether the KFP is multi-user. Raises ApiException (a wrong
    URL, a refused token) or urllib3's HTTPError (nothing listening) at once.

    kfp.Client() asks healthz itself, but retries a failure five times 5 s apart and then says only that
    it failed; this check names the status and costs one request.
    """
    import kfp_server_api

    configuration = kfp_server_api.Configuration(host=host)
    if token_file:
        token = Path(token_file).read_text().strip()
    if token:
        configuration.api_key["authorization"] = token
        configuration.api_key_prefix["authorization"] = "Bearer"
    healthz = kfp_server_api.HealthzServiceApi(kfp_server_api.ApiClient(configuration))
    return bool(healthz.healthz_service_get_healthz().multi_user)


def connect(host: str, token: str | None, token_file: str | None, namespace: str | None) -> Any:
    """A kfp.Client for ``host``, with a bearer token (or a token file re-read per request)."""
    from kfp import client as kfp_client

    if check_api(host, token, token_file) and not namespace:
        log(TAG, "warning: this KFP is multi-user: pass --namespace <your profile namespace>")
    credentials = kfp_client.ServiceAccountTokenVolumeCredentials(token_file) if token_file else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # "only works with KFP v2.0.0-beta.2+"
        return kfp_client.Client(
            host=host,
            existing_token=token,
            credentials=credentials,
            namespace=namespace or "kubeflow",  # kfp's default, meaning "not set"
        )


def find_pipeline(client: Any, name: str, namespace: str | None) -> str | None:
    """The id of the pipeline named ``name`` (in ``namespace`` on a multi-user KFP), or None."""
    name_filter = json.dumps(
        {"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": name}]}
    )
    found = client.list_pipelines(filter=name_filter, namespace=namespace).pipelines or []
    if len(found) > 1:
        raise RuntimeError(f"{len(found)} pipelines are named {name}; pass --pipeline-name to pick another")
    return found[0].pipeline_id if found else None


def upload(
    client: Any, package: Package, pipeline_name: str, version_name: str, namespace: str | None, cache: bool
) -> tuple[str, str]:
    """Upload ``package`` as version ``version_name`` of ``pipeline_name`` (created when missing).

    Returns (pipeline id, version id).
    """
    pipeline_id = find_pipeline(client, pipeline_name, namespace)
    if pipeline_id is None:
        log(TAG, f"creating pipeline {pipeline_name}")
        description = package.spec["pipelineInfo"].get("description")
        pipeline_id = client.upload_pipeline(
            str(package.path), pipeline_name=pipeline_name, description=description, namespace=namespace
        ).pipeline_id
    caching = "caching on (the compiled settings)" if cache else "caching off in every task (--no-cache)"
    version = client.upload_pipeline_version(
        str(package.path),
        pipeline_version_name=version_name,
        pipeline_id=pipeline_id,
        description=f"uploaded by semcode submit; {caching}",
    )
    log(TAG, f"uploaded {pipeline_name} version {version_name} ({version.pipeline_version_id})")
    return pipeline_id, version.pipeline_version_id


def run_state(run: Any) -> str:
    state = getattr(run, "state", None)
    return "PENDING" if state in (None, "", "RUNTIME_STATE_UNSPECIFIED") else str(state)


def task_states(run: Any) -> dict[str, str]:
    """{task display_name: state} from the run's task details (Argo's drivers and DAGs included)."""
    details = getattr(getattr(run, "run_details", None), "task_details", None) or []
    return {task.display_name: str(task.state) for task in details if task.display_name}


def gate_verdict(run: Any, registry: str) -> bool | None:
    """Whether the gate passed, from a SUCCEEDED run's tasks: publish ran (the rule in the module doc).

    None when the tasks cannot tell: no registry (publish never runs), or no gate task reported.
    """
    tasks = task_states(run)
    if not registry or GATE_TASK not in tasks:
        return None
    return tasks.get(PUBLISH_TASK) == "SUCCEEDED"


def run_error(run: Any, task_names: list[str]) -> str:
    """Why a run failed: the run's error, else the failed tasks' errors, else their names."""
    error = getattr(run, "error", None)
    if error is not None and getattr(error, "message", None):
        return error.message
    details = getattr(getattr(run, "run_details", None), "task_details", None) or []
    failed = [t for t in details if t.display_name in task_names and t.state == "FAILED"]
    messages = [f"{t.display_name}: {t.error.message}" for t in failed if t.error and t.error.message]
    if messages:
        return "; ".join(messages)
    if failed:
        return "failed task(s): " + ", ".join(t.display_name for t in failed)
    return "no error message from the API; see the run in the KFP UI"


def progress(run: Any, task_names: list[str]) -> str:
    """`` | running: train-encoder | 2/8 tasks done``: the pipeline's tasks only, not Argo's drivers."""
    tasks = task_states(run)
    running = [name for name in task_names if tasks.get(name) == "RUNNING"]
    finished = sum(tasks.get(name) in ("SUCCEEDED", "SKIPPED") for name in task_names)
    text = f" | running: {', '.join(running)}" if running else ""
    return f"{text} | {finished}/{len(task_names)} tasks done" if tasks else text


def wait_for_run(client: Any, run_id: str, timeout: float, poll: float, task_names: list[str]) -> Any:
    """Poll the run until it reaches a terminal state or ``timeout`` seconds pass; returns the last Run.

    Not kfp.Client.wait_for_run_completion: its finished states lack CANCELED (a canceled run would be
    waited on until the timeout), it prints nothing, and one failed poll ends it.
    """
    from kfp_server_api import ApiException
    from urllib3.exceptions import HTTPError

    started = time.monotonic()
    run, failures = None, 0
    last_shown, last_time = "", 0.0
    while True:
        try:
            run = client.get_run(run_id)
            failures = 0
        except (ApiException, HTTPError, OSError) as error:
            failures += 1
            if failures > MAX_POLL_FAILURES:
                raise
            reason = getattr(error, "reason", None) or error
            log(TAG, f"polling run {run_id} failed ({failures}/{MAX_POLL_FAILURES}): {reason}; retrying")
        now = time.monotonic()
        if run is not None:
            state, tasks = run_state(run), progress(run, task_names)
            if state + tasks != last_shown or now - last_time >= PROGRESS_EVERY_SECONDS:
                log(TAG, f"run {run_id} {state} {format_seconds(now - started)}{tasks}")
                last_shown, last_time = state + tasks, now
            if state in TERMINAL_STATES:
                return run
        if now - started >= timeout:
            return run
        time.sleep(max(0.0, min(poll, timeout - (now - started))))


# --- the command ---------------------------------------------------------------------------------------


def normalize_host(host: str) -> str:
    """``kfp.example.com/`` -> ``https://kfp.example.com``, as kfp.Client reads a host."""
    host = host.strip().rstrip("/")
    return host if host.startswith(("http://", "https://")) else f"https://{host}"


def run_url(host: str, run_id: str) -> str:
    """The run's page in the KFP UI (the UI serves the API under /apis, so the host is the same)."""
    return f"{host}/#/runs/details/{run_id}"


def submit(options: SubmitOptions) -> dict:
    """Validate, upload, start and (with ``options.wait``) wait; returns the result (see --output-json).

    Raises SubmitError or ConfigError for bad input before any request is made.
    """
    host, token_file = normalize_host(options.host), options.token_file
    if token_file and not Path(token_file).is_file():
        raise SubmitError(f"--token-file {token_file}: not found")
    if options.token and token_file:
        raise SubmitError("give --token (KFP_TOKEN) or --token-file (KFP_TOKEN_FILE), not both")
    index = options.pipeline == "index"
    if index and options.preset:
        raise SubmitError(
            "--pipeline index has no preset: set its parameters with --param (index_sources=...)"
        )
    preset = options.preset or DEFAULT_PRESET
    pipeline_name = options.pipeline_name or (INDEX_PIPELINE_NAME if index else DEFAULT_PIPELINE_NAME)
    registry_parameter = INDEX_REGISTRY_PARAMETER if index else REGISTRY_PARAMETER
    with package_to_upload(options.package, options.cache, options.pipeline) as package:
        overrides = parse_params(options.params, package.parameters)
        if index:
            arguments = pipeline_params.index_arguments(overrides)
        else:
            arguments = pipeline_arguments(preset, overrides, package.parameters)
        default_registry = package.parameters.get(registry_parameter, {}).get("defaultValue", "")
        registry = arguments.get(registry_parameter, default_registry)
        version_name = options.version_name or default_version_name()
        run_name = options.run_name or f"{'index' if index else preset} {version_name}"
        task_names = package.task_names()
        where = "index pipeline" if index else f"preset {preset}"
        log(TAG, f"{where}: {len(arguments)} parameters set, overrides {overrides or 'none'}")
        if not registry:
            verdict = "" if index else " and the gate's verdict cannot be read from the run"
            log(
                TAG,
                f"warning: no {registry_parameter}: nothing will be published{verdict} (pass --param "
                f"{registry_parameter}=s3://...)",
            )

        # kfp.Client prints links ("Pipeline details: ...") on stdout; stdout is for our result.
        with contextlib.redirect_stdout(sys.stderr):
            client = connect(host, options.token, token_file, options.namespace)
            if options.resume:
                arguments = resume_arguments(client, options.resume, arguments)
            pipeline_id, version_id = upload(
                client, package, pipeline_name, version_name, options.namespace, options.cache
            )
            experiment = client.create_experiment(options.experiment, namespace=options.namespace)
            run = client.run_pipeline(
                experiment_id=experiment.experiment_id,
                job_name=run_name,
                params=arguments,
                pipeline_id=pipeline_id,
                version_id=version_id,
            )
    url = run_url(host, run.run_id)
    log(TAG, f"started run {run.run_id} ({run_name}) in experiment {options.experiment}: {url}")
    result = {
        "run_id": run.run_id,
        "run_name": run_name,
        "url": url,
        "state": run_state(run),
        "passed": None,
        "error": None,
        "registry": registry,
        "pipeline": options.pipeline,
        "pipeline_id": pipeline_id,
        "pipeline_version_id": version_id,
        "version_name": version_name,
        "experiment_id": experiment.experiment_id,
        "cache": options.cache,
        "parameters": arguments,
        "waited": options.wait,
        "seconds": 0.0,
    }
    write_result(options.output_json, result)  # the run id is on disk even if this job is killed waiting
    if options.wait:
        started = time.monotonic()
        with contextlib.redirect_stdout(sys.stderr):
            finished = wait_for_run(
                client, run.run_id, options.timeout_seconds, options.poll_seconds, task_names
            )
        result["seconds"] = round(time.monotonic() - started, 1)
        if finished is not None:
            result["state"] = run_state(finished)
            if result["state"] == "SUCCEEDED" and index:
                result["published"] = task_states(finished).get(PUBLISH_TASK) == "SUCCEEDED"
            elif result["state"] == "SUCCEEDED":
                result["passed"] = gate_verdict(finished, registry)
            elif result["state"] in TERMINAL_STATES:
                result["error"] = run_error(finished, task_names)
        if result["state"] not in TERMINAL_STATES:
            result["error"] = (
                f"still {result['state']} after {format_seconds(options.timeout_seconds)} (--timeout); "
                "stopped waiting, the run goes on on the cluster"
            )
        write_result(options.output_json, result)
    return result


def resume_arguments(client: Any, run_id: str, arguments: dict) -> dict:
    """``arguments`` for a run that continues ``run_id``'s training tasks from their durable checkpoints:
    ``resume_run_id``, and that run's ``checkpoint_root`` unless one is given. The training tasks refuse to
    resume when the run's shape (preset, batch size, steps, data) differs: give the same preset and params."""
    root = arguments.get(CHECKPOINT_ROOT_PARAMETER, "")
    if not root:
        from kfp_server_api import ApiException

        try:
            earlier = client.get_run(run_id)
        except ApiException as error:
            raise SubmitError(
                f"--resume {run_id}: no such run on this KFP ({error.status} {error.reason})"
            ) from None
        runtime_config = getattr(earlier, "runtime_config", None)
        root = ((getattr(runtime_config, "parameters", None) or {}).get(CHECKPOINT_ROOT_PARAMETER)) or ""
        if not root:
            raise SubmitError(
                f"--resume {run_id}: that run set no {CHECKPOINT_ROOT_PARAMETER}, so its training tasks kept no "
                f"durable checkpoints (give --param {CHECKPOINT_ROOT_PARAMETER}=s3://... to the runs to resume)"
            )
        log(TAG, f"--resume {run_id}: its {CHECKPOINT_ROOT_PARAMETER} {root}")
    return {**arguments, CHECKPOINT_ROOT_PARAMETER: root, RESUME_PARAMETER: run_id}


def write_result(path: str | None, result: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(result, indent=2) + "\n")


def exit_code(result: dict) -> int:
    if not result["waited"]:
        return EXIT_OK
    if result["state"] != "SUCCEEDED":
        return EXIT_FAILED
    return EXIT_REFUSED if result["passed"] is False else EXIT_OK


def print_result(result: dict) -> None:
    state, run_id = result["state"], result["run_id"]
    took = f" after {format_seconds(result['seconds'])}" if result["waited"] else ""
    if not result["waited"]:
        print(f"run {run_id} started ({state}); not waiting (--no-wait)")
    elif state == "SUCCEEDED" and result.get("pipeline") == "index":
        where = (
            f"published to {result['registry']}" if result.get("published") else "not published (no registry)"
        )
        print(f"run {run_id} SUCCEEDED{took}: index {where}")
    elif state == "SUCCEEDED" and result["passed"] is True:
        print(f"run {run_id} SUCCEEDED{took}: gate PASSED, published to {result['registry']}")
    elif state == "SUCCEEDED" and result["passed"] is False:
        print(
            f"run {run_id} SUCCEEDED{took}: gate REFUSED the candidate, not published "
            "(the gate task's decision and report say why)"
        )
    elif state == "SUCCEEDED":
        why = "no gate_registry given" if not result["registry"] else "the API reported no gate task"
        print(
            f"run {run_id} SUCCEEDED{took}: gate verdict unknown ({why}); read the gate's decision in the UI"
        )
    else:
        print(f"run {run_id} {state}{took}: {result['error']}")
    print(f"url: {result['url']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semcode submit",
        description="Upload the training pipeline as a new version to a Kubeflow Pipelines cluster, start a "
        "run with a preset's parameters, wait for it, and exit non-zero when the run fails (1) or the gate "
        "refuses the candidate (3); 2 is bad input. docs/ci-retraining.md has the whole story.",
        epilog="examples:\n"
        "  kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80 &\n"
        "  semcode submit --host http://localhost:8080 --preset tiny\n"
        "  semcode submit --host https://kfp.example.com --preset gpu --no-cache \\\n"
        "      --param gate_registry=s3://models/registry --param train_encoder_max_steps=20000 \\\n"
        "      --output-json submit.json\n"
        "  semcode submit --host https://kfp.example.com --pipeline index --no-cache \\\n"
        "      --param index_encoder=s3://models/registry/semcode/latest --param 'index_sources=[dir:s3://code/repo]' \\\n"
        "      --param publish_registry=s3://models/indexes --param index_previous=s3://models/indexes/code-index/latest\n"
        "  KFP_HOST=https://kfp.example.com KFP_TOKEN=$(cat token) semcode submit --no-wait",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--host",
        default=os.environ.get("KFP_HOST") or os.environ.get("KF_PIPELINES_ENDPOINT"),
        help="KFP API / UI URL, e.g. http://localhost:8080 (default: $KFP_HOST, else kfp's "
        "$KF_PIPELINES_ENDPOINT)",
    )
    parser.add_argument(
        "--pipeline",
        choices=("train", "index"),
        default="train",
        help="train (default): the training pipeline; index: the index pipeline (no training: --param "
        "index_encoder=... --param index_sources=[...] --param publish_registry=...)",
    )
    parser.add_argument(
        "--preset",
        default=None,
        help=f"training: preset name in configs/ or a YAML path (default: {DEFAULT_PRESET})",
    )
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a pipeline parameter, repeatable; VALUE is YAML (100, true, '[python:stdlib]') except for "
        "string parameters, e.g. --param train_encoder_max_steps=100 --param gate_registry=s3://m/registry",
    )
    parser.add_argument(
        "--package",
        default=None,
        metavar="YAML",
        help=f"compiled pipeline to upload (default: {DEFAULT_OUTPUT.name}, or {INDEX_OUTPUT.name} for --pipeline "
        f"index, in {DEFAULT_OUTPUT.parent}; compiled when missing)",
    )
    parser.add_argument(
        "--pipeline-name",
        default=None,
        help=f"pipeline to add the version to; created when missing (default: {DEFAULT_PIPELINE_NAME}, "
        f"{INDEX_PIPELINE_NAME} for --pipeline index)",
    )
    parser.add_argument(
        "--version-name", default=None, help="pipeline version name (default: <UTC time>-<git short sha>)"
    )
    parser.add_argument(
        "--experiment",
        default=DEFAULT_EXPERIMENT,
        help=f"experiment the run goes in; created when missing (default: {DEFAULT_EXPERIMENT})",
    )
    parser.add_argument(
        "--run-name",
        default=None,
        help="run name (default: '<preset> <version name>', 'index <version name>')",
    )
    parser.add_argument(
        "--namespace", default=None, help="Kubernetes namespace (profile) on a multi-user KFP (default: none)"
    )
    parser.add_argument(
        "--cache",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="reuse cached task results (default: on; gate and publish never cache); --no-cache runs every "
        "task afresh, which scheduled retraining on changing sources needs",
    )
    parser.add_argument(
        "--resume",
        default=None,
        metavar="RUN_ID",
        help="continue that earlier run's training tasks from their durable checkpoints (its "
        "checkpoint_root unless --param checkpoint_root=... is given); give the same --preset and --param",
    )
    parser.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="wait for the run to end and exit with its outcome (default: on)",
    )
    parser.add_argument(
        "--timeout",
        type=parse_duration,
        default=DEFAULT_TIMEOUT_SECONDS,
        metavar="DURATION",
        help=f"stop waiting after this long: seconds, or 45s/90m/6h (default: "
        f"{format_seconds(DEFAULT_TIMEOUT_SECONDS)}); exit 1",
    )
    parser.add_argument(
        "--poll-interval",
        type=parse_duration,
        default=DEFAULT_POLL_SECONDS,
        metavar="DURATION",
        help=f"seconds between status checks (default: {DEFAULT_POLL_SECONDS:g})",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("KFP_TOKEN"),
        help="bearer token for the KFP API (default: $KFP_TOKEN)",
    )
    parser.add_argument(
        "--token-file",
        default=os.environ.get("KFP_TOKEN_FILE") or os.environ.get("KF_PIPELINES_SA_TOKEN_PATH"),
        metavar="PATH",
        help="file holding the bearer token, re-read for every request, e.g. a projected ServiceAccount "
        "token /var/run/secrets/kubeflow/pipelines/token (default: $KFP_TOKEN_FILE, else "
        "$KF_PIPELINES_SA_TOKEN_PATH, which Kubeflow's PodDefault sets)",
    )
    parser.add_argument(
        "--output-json",
        default=None,
        metavar="FILE",
        help="write {run_id, state, passed, url, ...} here once the run is started (and again at the end)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.host:
        print(
            "semcode submit: error: no KFP host: pass --host URL or set KFP_HOST "
            "(e.g. http://localhost:8080 after: kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8080:80)",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    options = SubmitOptions(
        host=args.host,
        preset=args.preset,
        pipeline=args.pipeline,
        params=tuple(args.param),
        package=args.package,
        pipeline_name=args.pipeline_name,
        version_name=args.version_name,
        experiment=args.experiment,
        run_name=args.run_name,
        namespace=args.namespace,
        cache=args.cache,
        wait=args.wait,
        timeout_seconds=args.timeout,
        poll_seconds=args.poll_interval,
        token=args.token,
        token_file=args.token_file,
        output_json=args.output_json,
        resume=args.resume,
    )
    from kfp_server_api import ApiException
    from urllib3.exceptions import HTTPError

    try:
        result = submit(options)
    except (SubmitError, cfg.ConfigError) as error:
        print(f"semcode submit: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except ApiException as error:  # the API answered with an error
        hint = " (check --token / KFP_TOKEN)" if error.status in (401, 403) else ""
        print(
            f"semcode submit: error: KFP API at {args.host}: {error.status} {error.reason}{hint}: "
            f"{str(error.body or '').strip()}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    except (HTTPError, OSError, RuntimeError) as error:  # unreachable, or a state the API should not be in
        reason = getattr(error, "reason", None) or error
        print(
            f"semcode submit: error: KFP API at {args.host}: {type(error).__name__}: {reason}",
            file=sys.stderr,
        )
        return EXIT_FAILED
    print_result(result)
    return exit_code(result)


if __name__ == "__main__":
    sys.exit(main())
