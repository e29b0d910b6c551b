"""Multi-node training: run a stage as a Kubeflow Trainer TrainJob, follow it, fail with its reason.

With ``num_nodes > 1`` a training component does not train in its own pod. It submits a TrainJob
(``trainer.kubeflow.org/v1alpha1``) that runs the *same* stage (``semcode train-encoder ...``) on every
node of a Kubeflow Trainer runtime, waits for it, and copies the stage's output directory back into its
own output artifact. ``run_distributed`` does all of that; for one node it returns None and the caller
runs the stage in its own process, as always::

    KFP component pod                            TrainJob: num_nodes pods, gpus_per_node GPUs each
    run_distributed("train-encoder", ...)   ->   torchrun --module semcode.cluster.trainjob --stage train-encoder
      trainjob_spec(...), submit_trainjob()          --input pairs=s3://.../pairs --output out=s3://.../work
      wait_for_trainjob(): progress, reason      each node downloads its inputs once, every rank runs
      copy s3://.../work -> the output artifact      `semcode train-encoder`; rank 0 uploads --out

Runtimes (the ClusterTrainingRuntimes Kubeflow Trainer installs):

- ``torch-distributed`` (the default): one pod per node, each running ``torchrun``. The Trainer gives
  every node PET_NNODES, PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR and PET_MASTER_PORT, which
  torchrun reads; torchrun gives every process RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
  MASTER_PORT, which DeepSpeed reads (semcode.train.distributed.setup_distributed). The image needs nothing
  beyond torch.
- ``deepspeed-distributed``: OpenMPI. A launcher pod runs ``mpirun`` over SSH into the node pods; the
  command below maps OpenMPI's ranks to the torch variables and forwards the S3 variables (processes
  started over SSH do not inherit the pod's environment). The image must be one the MPI runtime can
  run: OpenMPI, an sshd, user ``mpiuser`` (UID 1000) with home /home/mpiuser. Use it only with such an
  image; torch-distributed needs none of that.

Data. Nodes share no disk, so a TrainJob reads and writes object storage: inputs are s3:// prefixes
(a KFP artifact's ``.uri``; ``minio://`` URIs of KFP's default pipeline root are the same bucket and
key), downloaded once per node; rank 0 uploads the stage's output directory to
``<work_uri>/<trainjob name>/``. Every pod gets the S3 credentials from the Kubernetes Secret the
pipeline uses (keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, optionally AWS_ENDPOINT_URL and
AWS_DEFAULT_REGION) as ``valueFrom.secretKeyRef`` variables: the Trainer API has no ``envFrom``.

Why the Kubernetes CustomObjectsApi and not the Kubeflow SDK's ``TrainerClient``: its container trainer
takes environment variables as plain strings (no ``secretKeyRef``), its ``train()`` looks the runtime up
on the cluster first, and its ``wait_for_job_status`` raises a bare "TrainJob is Failed" without the
condition's reason. A plain manifest dict is easy to read and to test; it is checked against the
Trainer's own API models (the ``kubeflow-trainer-api`` package the SDK depends on) before it is sent.

The pods' own entry point is this module: ``python -m semcode.cluster.trainjob --stage STAGE --input FLAG=URI
... --output FLAG=URI -- STAGE FLAGS`` (``main`` below).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import fcntl
import hashlib
import importlib
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from semcode import storage
from semcode.progress import format_seconds, log

TAG = "trainjob"
GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TrainJob"
PLURAL = "trainjobs"

# Runtime name -> the replicated jobs of its JobSet that run training pods (and get our pod settings).
RUNTIMES: dict[str, tuple[str, ...]] = {
    "torch-distributed": ("node",),
    "deepspeed-distributed": ("node", "launcher"),
}
DEFAULT_RUNTIME = "torch-distributed"
TRAINER_CONTAINER = "node"  # the training container's name in every Trainer runtime
PATCH_MANAGER = "semcode"  # owner of our runtimePatches entry
GPU_RESOURCE = "nvidia.com/gpu"
# Per node, beside its GPUs: the same as the pipeline's single-pod GPU stage.
DEFAULT_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "4", "memory": "32Gi"},
    "limits": {"cpu": "16", "memory": "96Gi"},
}
SHM_SIZE = "16Gi"  # memory-backed /dev/shm for NCCL and data loader workers (the container default is 64 MB)
MAX_COMMAND_ITEMS = 128  # the TrainJob CRD's limit on trainer.command

S3_SECRET_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_OPTIONAL_SECRET_KEYS = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION")
DEFAULT_S3_SECRET = "semcode-s3"

ENTRY_MODULE = "semcode.cluster.trainjob"
MPI_HOSTFILE = "/etc/mpi/hostfile"  # mounted into the launcher by the Trainer's MPI plugin
MPI_MASTER_PORT = 29500
SCRATCH_VARIABLE = "SEMCODE_TRAINJOB_SCRATCH"  # where pods keep downloaded inputs and the local output

DEFAULT_TIMEOUT_SECONDS = 24 * 3600.0
PROGRESS_EVERY_SECONDS = 300.0  # a progress line at least this often, even when nothing changes
MAX_POLL_FAILURES = 5  # consecutive failed status requests tolerated while waiting
NAME_PATTERN = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # RFC 1035 label, as the CRD requires
MAX_NAME_LENGTH = 63


class TrainJobError(RuntimeError):
    """The TrainJob could not be created, or waiting for it went wrong; the message says what to do."""


class TrainJobFailed(TrainJobError):
    """The TrainJob ended with its Failed condition; ``reason`` and ``message`` are the condition's."""

    def __init__(self, name: str, namespace: str, reason: str, message: str) -> None:
        self.name, self.namespace, self.reason, self.message = name, namespace, reason, message
        super().__init__(
            f"TrainJob {namespace}/{name} failed: {reason}: {message or '(no message)'}\n"
            f"  pod logs: {logs_command(name, namespace)}\n"
            f"  details:  kubectl -n {namespace} describe trainjob {name}"
        )


class TrainJobTimeout(TrainJobError, TimeoutError):
    """The TrainJob did not finish within the time allowed."""


# ---------------------------------------------------------------------------------------------------------
# Building the TrainJob: pure functions


def s3_secret_env(secret_name: str = DEFAULT_S3_SECRET) -> list[dict[str, Any]]:
    """Container env entries that read the S3 settings from a Secret (the optional keys may be absent)."""
    entries = []
    for keys, optional in ((S3_SECRET_KEYS, False), (S3_OPTIONAL_SECRET_KEYS, True)):
        for key in keys:
            reference: dict[str, Any] = {"name": secret_name, "key": key}
            if optional:
                reference["optional"] = True
            entries.append({"name": key, "valueFrom": {"secretKeyRef": reference}})
    return entries


def config_flags(config: Any) -> list[str]:
    """The stage flags that give a stage config: ``--name value`` for each field that differs from its default.

    The inverse of ``semcode.config.add_arguments``: booleans become ``--flag`` / ``--no-flag``, tuples a
    repeated flag. Defaults are left out (the pods run the same code, hence the same defaults), which keeps
    the command short and readable.
    """
    flags: list[str] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if value == f.default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, tuple | list):
            if not value:
                raise ValueError(
                    f"{f.name}: an empty list cannot be given as flags (the stage would use its default)"
                )
            for item in value:
                flags += [flag, str(item)]
        else:
            flags += [flag, str(value)]
    return flags


def to_s3_uri(uri: str) -> str:
    """An artifact URI as an s3:// URI: ``minio://bucket/key`` (KFP's default pipeline root) is S3 too.

    Anything else (a local path, gs://) cannot be read by pods on other nodes: a clear ValueError.
    """
    if uri.startswith("minio://"):
        return "s3://" + uri[len("minio://") :]
    if storage.is_s3(uri):
        return uri
    raise ValueError(
        f"multi-node training reads and writes object storage, but {uri!r} is not an s3:// or minio:// URI: "
        "use an S3-compatible pipeline root (the bucket of the s3_secret_name Secret's endpoint)"
    )


def trainjob_name(stage: str) -> str:
    """A fresh, valid TrainJob name for a stage: ``semcode-train-encoder-1a2b3c4d``."""
    base = re.sub(r"[^a-z0-9-]+", "-", f"semcode-{stage}".lower()).strip("-")
    return f"{base[: MAX_NAME_LENGTH - 9]}-{uuid.uuid4().hex[:8]}"


def _entry_args(
    stage: str, stage_args: list[str], inputs: dict[str, str], outputs: dict[str, str]
) -> list[str]:
    args = ["--stage", stage]
    for flag, uri in inputs.items():
        args += ["--input", f"{flag}={uri}"]
    for flag, uri in outputs.items():
        args += ["--output", f"{flag}={uri}"]
    return [*args, "--", *stage_args]


def stage_command(
    runtime: str,
    stage: str,
    stage_args: list[str],
    inputs: dict[str, str],
    outputs: dict[str, str],
    forward_env: list[str] | tuple[str, ...] = (),
) -> list[str]:
    """The trainer command that runs ``semcode <stage>`` on every node of ``runtime``.

    ``inputs`` and ``outputs`` map a stage flag (without dashes, e.g. ``pairs``) to an s3:// prefix; the
    pods pass local copies to the stage. ``forward_env`` names the variables mpirun must pass on to the
    ranks it starts over SSH (deepspeed-distributed only; torchrun's children inherit the environment).
    """
    entry = _entry_args(stage, stage_args, inputs, outputs)
    if runtime == "torch-distributed":
        return ["torchrun", "--module", ENTRY_MODULE, *entry]
    if runtime == "deepspeed-distributed":
        # Rank 0 is the first host of the hostfile (the Trainer lists the node pods first).
        script = "\n".join(
            [
                "set -euo pipefail",
                f"master_addr=\"$(head -n 1 {MPI_HOSTFILE} | cut -d ' ' -f 1)\"",
                "forward=()",
                f"for name in {' '.join(forward_env) or 'PYTHONUNBUFFERED'}; do",
                '  if [ -n "${!name:-}" ]; then forward+=(-x "$name"); fi',
                "done",
                f'exec mpirun --hostfile {MPI_HOSTFILE} -x MASTER_ADDR="$master_addr" '
                f'-x MASTER_PORT={MPI_MASTER_PORT} "${{forward[@]}}" '
                + shlex.join(["python3", "-m", ENTRY_MODULE, *entry]),
            ]
        )
        return ["bash", "-c", script]
    raise ValueError(f"runtime must be one of {sorted(RUNTIMES)}, got {runtime!r}")


def trainjob_spec(
    name: str,
    namespace: str,
    image: str,
    command: list[str],
    num_nodes: int,
    gpus_per_node: int = 1,
    runtime: str = DEFAULT_RUNTIME,
    env: list[dict[str, Any]] | None = None,
    node_selector: dict[str, str] | None = None,
    tolerations: list[dict[str, Any]] | None = None,
    resources: dict[str, dict[str, str]] | None = None,
    labels: dict[str, str] | None = None,
    shm_size: str = SHM_SIZE,
    active_deadline_seconds: int = 0,
) -> dict[str, Any]:
    """A TrainJob manifest (a plain dict, ready for the Kubernetes API) that runs ``command`` on every node.

    ``resources`` are per node (requests/limits of cpu and memory; default DEFAULT_RESOURCES), to which
    ``gpus_per_node`` nvidia.com/gpu are added; one process per GPU (one per node without GPUs). ``env``
    entries are Kubernetes EnvVar dicts (``valueFrom.secretKeyRef`` included; see ``s3_secret_env``).
    ``node_selector``, ``tolerations`` and a memory-backed /dev/shm of ``shm_size`` go into the runtime's
    pod template through a runtimePatches entry. ``active_deadline_seconds`` > 0 makes the cluster stop
    the job after that long (condition Failed, reason DeadlineExceeded). The manifest is checked against
    the Trainer's API models (``validate_trainjob``); a bad argument raises ValueError.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {sorted(RUNTIMES)}, got {runtime!r}")
    if num_nodes < 1:
        raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
    if gpus_per_node < 0:
        raise ValueError(f"gpus_per_node must be >= 0, got {gpus_per_node}")
    if not image:
        raise ValueError("image is required: the image the pods run (the semcode GPU image)")
    if not command:
        raise ValueError("command is required")
    if active_deadline_seconds < 0:
        raise ValueError(f"active_deadline_seconds must be >= 0, got {active_deadline_seconds}")

    per_node = copy.deepcopy(DEFAULT_RESOURCES if resources is None else resources)
    if gpus_per_node > 0:
        for section in ("requests", "limits"):
            per_node.setdefault(section, {})[GPU_RESOURCE] = str(gpus_per_node)
    trainer: dict[str, Any] = {
        "image": image,
        "command": list(command),
        "numNodes": num_nodes,
        "numProcPerNode": max(gpus_per_node, 1),
        "resourcesPerNode": per_node,
    }
    if env:
        trainer["env"] = copy.deepcopy(env)

    pod: dict[str, Any] = {
        "volumes": [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}}],
        "containers": [
            {"name": TRAINER_CONTAINER, "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}
        ],
    }
    if node_selector:
        pod["nodeSelector"] = dict(node_selector)
    if tolerations:
        pod["tolerations"] = copy.deepcopy(tolerations)
    replicated_jobs = [
        {"name": job, "template": {"spec": {"template": {"spec": copy.deepcopy(pod)}}}}
        for job in RUNTIMES[runtime]
    ]
    spec: dict[str, Any] = {
        "runtimeRef": {"apiGroup": GROUP, "kind": "ClusterTrainingRuntime", "name": runtime},
        "trainer": trainer,
        "runtimePatches": [
            {
                "manager": PATCH_MANAGER,
                "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": replicated_jobs}}},
            }
        ],
    }
    if active_deadline_seconds:
        spec["activeDeadlineSeconds"] = int(active_deadline_seconds)
    manifest = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "semcode", **(labels or {})},
        },
        "spec": spec,
    }
    validate_trainjob(manifest)
    return manifest


def _differences(expected: Any, actual: Any, path: str = "") -> list[str]:
    """Paths where ``actual`` lacks or changed what ``expected`` holds (dicts and lists walked)."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        found = []
        for key, value in expected.items():
            where = f"{path}.{key}" if path else key
            found += _differences(value, actual[key], where) if key in actual else [where]
        return found
    if isinstance(expected, list) and isinstance(actual, list) and len(expected) == len(actual):
        return [
            d
            for i, (e, a) in enumerate(zip(expected, actual, strict=True))
            for d in _differences(e, a, f"{path}[{i}]")
        ]
    return [] if expected == actual else [path]


def validate_trainjob(manifest: dict[str, Any]) -> None:
    """Check a TrainJob manifest against the Trainer's API models; ValueError naming what is wrong.

    The manifest is parsed with ``kubeflow_trainer_api``'s TrainJob model (generated from the Trainer's
    OpenAPI spec: types and required fields) and written back: a field the API does not know would be
    dropped, so any difference names a misspelt or unsupported field. The name and command limits of the
    CRD's validation rules are checked here too.
    """
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob
    from pydantic import ValidationError

    name = manifest.get("metadata", {}).get("name", "")
    if not NAME_PATTERN.match(name) or len(name) > MAX_NAME_LENGTH:
        raise ValueError(
            f"TrainJob name {name!r} must be a lower-case RFC 1035 label of at most {MAX_NAME_LENGTH} characters"
        )
    command = manifest.get("spec", {}).get("trainer", {}).get("command") or []
    if len(command) > MAX_COMMAND_ITEMS:
        raise ValueError(f"the TrainJob command has {len(command)} items; the API allows {MAX_COMMAND_ITEMS}")
    try:
        parsed = TrainerV1alpha1TrainJob.from_dict(manifest)
    except ValidationError as error:
        raise ValueError(f"not a valid {API_VERSION} TrainJob: {error}") from None
    unknown = _differences(manifest, parsed.to_dict())
    if unknown:
        raise ValueError(
            f"TrainJob fields unknown to {API_VERSION} (or of the wrong shape): {', '.join(unknown)}"
        )


# ---------------------------------------------------------------------------------------------------------
# Talking to the cluster


def kubernetes_api() -> Any:
    """A CustomObjectsApi for this pod's cluster (in-cluster config), else the local kubeconfig's."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()


def current_namespace() -> str | None:
    """The namespace of the pod this runs in (its ServiceAccount's), or None outside a cluster."""
    path = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return path.read_text().strip() if path.is_file() else None


def logs_command(name: str, namespace: str) -> str:
    """The kubectl command that shows the TrainJob's pod logs (its JobSet has the TrainJob's name)."""
    return f"kubectl -n {namespace} logs -l jobset.sigs.k8s.io/jobset-name={name} --all-containers --prefix --tail=200"


def _api_message(error: Any) -> str:
    try:
        return json.loads(error.body).get("message", "") or str(error.reason)
    except (TypeError, ValueError, AttributeError):
        return str(getattr(error, "body", "") or getattr(error, "reason", "") or error)


def submit_trainjob(spec: dict[str, Any], api: Any = None) -> dict[str, Any]:
    """Create the TrainJob; returns the created object. TrainJobError says what the API refused and why."""
    from kubernetes.client.exceptions import ApiException

    api = api or kubernetes_api()
    name, namespace = spec["metadata"]["name"], spec["metadata"]["namespace"]
    try:
        created = api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, spec)
    except ApiException as error:
        message = _api_message(error)
        where = f"TrainJob {namespace}/{name}"
        if error.status == 404:
            hint = (
                f"the cluster has no {PLURAL}.{GROUP} API or no namespace {namespace}: install Kubeflow "
                "Trainer (docs/cluster.md, multi-node training)"
            )
        elif error.status in (401, 403):
            hint = (
                f"not allowed to create {PLURAL}.{GROUP} in {namespace}: the pipeline runner's ServiceAccount "
                "needs the TrainJob RBAC of the semcode Helm chart"
            )
        elif error.status == 409:
            hint = "a TrainJob of that name exists already"
        else:
            hint = "the Trainer refused it (e.g. an unknown runtime: kubectl get clustertrainingruntimes)"
        raise TrainJobError(f"cannot create {where}: {error.status} {message}; {hint}") from error
    log(
        TAG,
        f"created TrainJob {namespace}/{name} ({spec['spec']['runtimeRef']['name']}, "
        f"{spec['spec']['trainer']['numNodes']} nodes)",
    )
    return created


def _condition(status: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The condition of this type when it is True, else None."""
    for condition in status.get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return condition
    return None


def describe_status(status: dict[str, Any]) -> str:
    """One line: ``Running | node: 1 active, 0 succeeded, 0 failed | 42%`` (what the status says so far)."""
    if _condition(status, "Complete"):
        state = "Complete"
    elif _condition(status, "Suspended"):
        state = "Suspended (waiting for admission, e.g. a Kueue quota)"
    elif any(job.get("active") for job in status.get("jobsStatus") or []):
        state = "Running"
    else:
        state = "Pending"
    parts = [state]
    for job in status.get("jobsStatus") or []:
        parts.append(
            f"{job.get('name')}: {job.get('active', 0)} active, {job.get('succeeded', 0)} succeeded, "
            f"{job.get('failed', 0)} failed"
        )
    progress = (status.get("trainerStatus") or {}).get("progressPercentage")
    if progress is not None:
        parts.append(f"{progress}%")
    return " | ".join(parts)


def wait_for_trainjob(
    name: str,
    namespace: str,
    poll_seconds: float = 30.0,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    api: Any = None,
) -> dict[str, Any]:
    """Follow the TrainJob's conditions until it completes; returns its final status.

    Prints a progress line whenever the state changes (and every few minutes anyway). Raises
    TrainJobFailed with the Failed condition's reason and message (and the kubectl command for the pod
    logs), TrainJobTimeout after ``timeout_seconds``, TrainJobError when the TrainJob disappears or the
    API keeps failing.
    """
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    api = api or kubernetes_api()
    started = time.monotonic()
    failures, last_line, last_time = 0, "", float("-inf")
    while True:
        job = None
        try:
            job = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            failures = 0
        except (ApiException, HTTPError, OSError) as error:  # the API server restarting, a network hiccup
            if getattr(error, "status", None) == 404:
                raise TrainJobError(f"TrainJob {namespace}/{name} no longer exists (deleted?)") from error
            failures += 1
            if failures > MAX_POLL_FAILURES:
                raise TrainJobError(
                    f"reading TrainJob {namespace}/{name} failed {failures} times: {error}"
                ) from error
            log(TAG, f"reading TrainJob {name} failed ({failures}/{MAX_POLL_FAILURES}); retrying: {error}")

        now = time.monotonic()
        elapsed = now - started
        if job is not None:
            status = job.get("status") or {}
            failed = _condition(status, "Failed")
            if failed:
                raise TrainJobFailed(name, namespace, failed.get("reason", ""), failed.get("message", ""))
            line = describe_status(status)
            if line != last_line or now - last_time >= PROGRESS_EVERY_SECONDS:
                log(TAG, f"TrainJob {name} {format_seconds(elapsed)} | {line}")
                last_line, last_time = line, now
            if _condition(status, "Complete"):
                return status
        if elapsed >= timeout_seconds:
            raise TrainJobTimeout(
                f"TrainJob {namespace}/{name} did not finish within {format_seconds(timeout_seconds)} "
                f"(last state: {last_line or 'unknown'}); pod logs: {logs_command(name, namespace)}"
            )
        time.sleep(max(0.0, min(poll_seconds, timeout_seconds - elapsed)))


def delete_trainjob(name: str, namespace: str, api: Any = None) -> None:
    """Delete the TrainJob (and so its pods); a missing one is not an error."""
    from kubernetes.client.exceptions import ApiException

    api = api or kubernetes_api()
    try:
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as error:
        if error.status != 404:
            raise


def copy_outputs(src_prefix: str, out_dir: str | Path, skip: tuple[str, ...] = ()) -> list[str]:
    """Copy a TrainJob's output prefix into a local directory, leaving out the top-level names in ``skip``."""
    src_prefix = src_prefix.rstrip("/")
    copied = []
    for uri in storage.list_files(src_prefix):
        relative = uri[len(src_prefix) + 1 :]
        if relative.split("/", 1)[0] in skip:
            continue
        destination = Path(out_dir) / relative
        storage.copy(uri, destination)
        copied.append(str(destination))
    if not copied:
        raise FileNotFoundError(
            f"the TrainJob wrote nothing to {src_prefix} (rank 0 uploads the stage's --out)"
        )
    return copied


def run_distributed(
    stage: str,
    args: list[str],
    num_nodes: int,
    *,
    inputs: dict[str, str],
    out_dir: str | Path,
    work_uri: str,
    image: str,
    gpus_per_node: int = 1,
    runtime: str = DEFAULT_RUNTIME,
    namespace: str | None = None,
    s3_secret_name: str = DEFAULT_S3_SECRET,
    node_selector: dict[str, str] | None = None,
    tolerations: list[dict[str, Any]] | None = None,
    resources: dict[str, dict[str, str]] | None = None,
    skip_outputs: tuple[str, ...] = ("checkpoints", "best"),
    poll_seconds: float = 30.0,
    timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    api: Any = None,
) -> dict[str, Any] | None:
    """Run ``semcode <stage> <args>`` as a TrainJob over ``num_nodes`` nodes; None when num_nodes <= 1.

    ``inputs`` maps the stage's input flags (no dashes) to their object-store URIs, e.g.
    ``{"pairs": pairs.uri, "tokenizer": tokenizer.uri}`` (s3:// or KFP's minio://). The TrainJob writes the
    stage's ``--out`` to ``<work_uri>/<trainjob name>/``; once it completes, that is copied into ``out_dir``
    (less ``skip_outputs``: the checkpoints, which only a resumed process reads), so the caller finds what
    ``stage.run`` would have left there. Returns the output's metrics.json (what ``stage.run`` returns).
    The pods run ``image`` in ``namespace`` (default: this pod's), with the S3 Secret ``s3_secret_name``.
    A TrainJob still running at ``timeout_seconds`` is deleted (and the cluster stops it by then anyway).
    """
    if num_nodes <= 1:
        return None
    inputs = {flag: to_s3_uri(uri) for flag, uri in inputs.items()}
    work_uri = to_s3_uri(work_uri).rstrip("/")
    namespace = namespace or current_namespace()
    if not namespace:
        raise TrainJobError("no namespace given and not running in a pod: pass namespace=")
    name = trainjob_name(stage)
    output_uri = f"{work_uri}/{name}"
    env = [*s3_secret_env(s3_secret_name), {"name": "PYTHONUNBUFFERED", "value": "1"}]
    command = stage_command(
        runtime, stage, args, inputs, {"out": output_uri}, [entry["name"] for entry in env]
    )
    spec = trainjob_spec(
        name,
        namespace,
        image,
        command,
        num_nodes,
        gpus_per_node,
        runtime,
        env,
        node_selector,
        tolerations,
        resources,
        labels={"semcode.dev/stage": stage},
        active_deadline_seconds=int(timeout_seconds),
    )

    api = api or kubernetes_api()
    submit_trainjob(spec, api)
    try:
        wait_for_trainjob(name, namespace, poll_seconds, timeout_seconds, api)
    except TrainJobTimeout:
        log(TAG, f"deleting TrainJob {namespace}/{name}: it ran past the timeout")
        delete_trainjob(name, namespace, api)
        raise
    copied = copy_outputs(output_uri, out_dir, skip_outputs)
    log(TAG, f"copied {len(copied)} files of {output_uri} -> {out_dir}")
    metrics_path = Path(out_dir) / "metrics.json"
    return json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}


# ---------------------------------------------------------------------------------------------------------
# Inside the TrainJob's pods: python -m semcode.cluster.trainjob


def torch_env_from_mpi(environ: dict[str, str] | os._Environ) -> dict[str, str]:
    """RANK, WORLD_SIZE and LOCAL_RANK from OpenMPI's variables, when mpirun (not torchrun) started us."""
    if "RANK" in environ or "OMPI_COMM_WORLD_RANK" not in environ:
        return {}
    return {
        "RANK": environ["OMPI_COMM_WORLD_RANK"],
        "WORLD_SIZE": environ["OMPI_COMM_WORLD_SIZE"],
        "LOCAL_RANK": environ.get("OMPI_COMM_WORLD_LOCAL_RANK", "0"),
    }


def fetch_input(uri: str, inputs_dir: Path) -> Path:
    """A local copy of an input prefix, downloaded once per node: the first process fetches, the others wait.

    A local path (a volume every pod mounts, or a test) is used in place.
    """
    if not storage.is_s3(uri):
        return Path(uri)
    inputs_dir.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    target, done = inputs_dir / key, inputs_dir / f"{key}.complete"
    with open(inputs_dir / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if not done.exists():
            shutil.rmtree(target, ignore_errors=True)
            storage.copy_tree(uri, target)
            done.touch()
    return target


def run_stage(
    stage: str,
    stage_args: list[str],
    inputs: dict[str, str],
    outputs: dict[str, str],
    scratch: str | Path | None = None,
) -> int:
    """Run ``semcode <stage>`` on local copies of ``inputs``; rank 0 uploads each output dir. Returns the exit code.

    The stage's own ``main`` runs (semcode.stages.<stage>, dashes as underscores): the pods run stages only.
    """
    stage_module = importlib.import_module(f"semcode.stages.{stage.replace('-', '_')}")

    os.environ.update(torch_env_from_mpi(os.environ))
    rank = os.environ.get("RANK", "0")
    root = Path(scratch or os.environ.get(SCRATCH_VARIABLE) or tempfile.gettempdir()) / "semcode-trainjob"
    argv = list(stage_args)
    for flag, uri in inputs.items():
        argv += [f"--{flag}", str(fetch_input(uri, root / "inputs"))]
    local_outputs = {}
    for flag in outputs:
        local = root / f"rank-{rank}" / flag
        shutil.rmtree(local, ignore_errors=True)  # a restarted pod starts afresh
        local_outputs[flag] = local
        argv += [f"--{flag}", str(local)]
    log(TAG, f"rank {rank}: semcode {stage} {shlex.join(argv)}")
    code = stage_module.main(argv)
    if code != 0:
        return code
    if rank == "0":  # the stage writes its outputs on rank 0 only
        for flag, uri in outputs.items():
            copied = storage.copy_tree(local_outputs[flag], uri)
            log(TAG, f"uploaded {len(copied)} files of --{flag} to {uri}")
    return 0


def _flag_and_uri(text: str) -> tuple[str, str]:
    flag, separator, uri = text.partition("=")
    if not separator or not flag or not uri:
        raise argparse.ArgumentTypeError(f"expected FLAG=URI, e.g. pairs=s3://bucket/pairs, got {text!r}")
    return flag.lstrip("-"), uri


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    own, stage_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(
        prog=f"python -m {ENTRY_MODULE}",
        description="Inside a TrainJob pod: run a semcode stage on local copies of object-store inputs; rank 0 "
        "uploads the output directory. run_distributed() puts this command in the TrainJobs it creates.",
        epilog="example:\n"
        f"  torchrun --module {ENTRY_MODULE} --stage train-encoder --input pairs=s3://b/run/pairs \\\n"
        "      --input tokenizer=s3://b/run/tokenizer --output out=s3://b/run/encoder -- --size base --epochs 3",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--stage", required=True, help="the semcode subcommand, e.g. train-encoder")
    parser.add_argument(
        "--input",
        action="append",
        default=[],
        type=_flag_and_uri,
        metavar="FLAG=URI",
        help="a stage input flag and the s3:// prefix it reads (repeatable)",
    )
    parser.add_argument(
        "--output",
        action="append",
        default=[],
        type=_flag_and_uri,
        metavar="FLAG=URI",
        help="a stage output flag and the s3:// prefix rank 0 uploads it to (repeatable)",
    )
    args = parser.parse_args(own)
    return run_stage(args.stage, stage_args, dict(args.input), dict(args.output))


if __name__ == "__main__":
    sys.exit(main())
