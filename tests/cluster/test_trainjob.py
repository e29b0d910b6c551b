"""Multi-node training through Kubeflow Trainer TrainJobs (semcode.cluster.trainjob).

No cluster here: the Kubernetes API is an in-memory stand-in with the CustomObjectsApi's create / get /
delete methods and its ApiException errors, whose TrainJob status goes through a scripted sequence. The
manifests are checked against the Trainer's own API models, the torchrun command against torchrun's
own parser, the MPI command with bash and shellcheck, and the pods' entry point runs a real stage on a
real S3 server.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob
from kubernetes.client.exceptions import ApiException

from semcode import config as cfg
from semcode import storage
from semcode.cluster import trainjob
from semcode.data.pairs import write_shards

GPU_POOL = {"nvidia.com/gpu.present": "true"}
GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


class FakeCustomObjectsApi:
    """Stands in for kubernetes.client.CustomObjectsApi: created objects are kept; each read of one returns
    the next status of ``statuses`` (the last one repeats), or raises the next of ``get_errors`` first.
    ``on_create`` plays the Trainer controller when a test needs the job to really run."""

    def __init__(
        self,
        statuses: list[dict] | None = None,
        get_errors: list[Exception] | None = None,
        create_error: Exception | None = None,
        on_create: Any = None,
    ) -> None:
        self.objects: dict[tuple[str, str], dict] = {}
        self.statuses = list(statuses or [{}])
        self.get_errors = list(get_errors or [])
        self.create_error = create_error
        self.on_create = on_create
        self.reads = 0

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, plural) == ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
        if self.create_error is not None:
            raise self.create_error
        key = (namespace, body["metadata"]["name"])
        if key in self.objects:
            raise ApiException(status=409, reason="Conflict")
        self.objects[key] = json.loads(json.dumps(body))
        if self.on_create is not None:
            self.on_create(body)
        return self.objects[key]

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        if self.get_errors:
            raise self.get_errors.pop(0)
        if (namespace, name) not in self.objects:
            raise ApiException(status=404, reason="Not Found")
        status = self.statuses[min(self.reads, len(self.statuses) - 1)]
        self.reads += 1
        return {**self.objects[(namespace, name)], "status": status}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        if self.objects.pop((namespace, name), None) is None:
            raise ApiException(status=404, reason="Not Found")


def condition(kind: str, reason: str = "", message: str = "") -> dict:
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2025-01-01T00:00:00Z",
    }


RUNNING = {
    "jobsStatus": [{"name": "node", "active": 1, "ready": 1, "succeeded": 0, "failed": 0, "suspended": 0}]
}
COMPLETE = {
    "conditions": [condition("Complete", "JobSetCompleted", "jobset completed")],
    "jobsStatus": [{"name": "node", "active": 0, "ready": 0, "succeeded": 1, "failed": 0, "suspended": 0}],
}


def encoder_spec(runtime: str = "torch-distributed", **overrides: Any) -> dict:
    command = trainjob.stage_command(
        runtime,
        "train-encoder",
        ["--size", "base", "--zero-stage", "2"],
        {"pairs": "s3://b/run/pairs", "tokenizer": "s3://b/run/tokenizer"},
        {"out": "s3://b/run/work/x"},
        [entry["name"] for entry in trainjob.s3_secret_env("semcode-s3")],
    )
    arguments = dict(
        name="semcode-train-encoder-1a2b3c4d",
        namespace="kubeflow",
        image="ghcr.io/semcode/semcode-gpu:0.1.0",
        command=command,
        num_nodes=4,
        gpus_per_node=8,
        runtime=runtime,
        env=trainjob.s3_secret_env("semcode-s3"),
        node_selector=GPU_POOL,
        tolerations=GPU_TOLERATIONS,
        labels={"team": "search"},
        active_deadline_seconds=3600,
    )
    arguments.update(overrides)
    return trainjob.trainjob_spec(**arguments)


# --- the manifest ----------------------------------------------------------------------------------------


def test_torch_spec_runs_the_stage_on_every_node_with_gpus_and_secrets() -> None:
    spec = encoder_spec()
    assert spec["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and spec["kind"] == "TrainJob"
    assert spec["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "semcode", "team": "search"}
    assert spec["spec"]["runtimeRef"] == {
        "apiGroup": "trainer.kubeflow.org",
        "kind": "ClusterTrainingRuntime",
        "name": "torch-distributed",
    }
    assert spec["spec"]["activeDeadlineSeconds"] == 3600
    trainer = spec["spec"]["trainer"]
    assert trainer["numNodes"] == 4 and trainer["numProcPerNode"] == 8
    assert trainer["image"] == "ghcr.io/semcode/semcode-gpu:0.1.0"
    assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    assert trainer["resourcesPerNode"]["requests"] == {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": "8"}

    # S3 credentials come from the Secret: two required keys, two optional ones; no value in the manifest.
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in trainer["env"]}
    assert refs["AWS_ACCESS_KEY_ID"] == {"name": "semcode-s3", "key": "AWS_ACCESS_KEY_ID"}
    assert refs["AWS_SECRET_ACCESS_KEY"] == {"name": "semcode-s3", "key": "AWS_SECRET_ACCESS_KEY"}
    assert refs["AWS_ENDPOINT_URL"]["optional"] is True and refs["AWS_DEFAULT_REGION"]["optional"] is True

    # Scheduling and /dev/shm go into the runtime's one training job through a runtime patch.
    (patch,) = spec["spec"]["runtimePatches"]
    (job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert patch["manager"] == "semcode" and job["name"] == "node"
    pod = job["template"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == GPU_POOL and pod["tolerations"] == GPU_TOLERATIONS
    assert pod["volumes"] == [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}]
    assert pod["containers"] == [
        {"name": "node", "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}
    ]

    # The Trainer's own API model reads it back unchanged: no unknown field, every type right.
    assert TrainerV1alpha1TrainJob.from_dict(spec).to_dict() == spec


def test_torch_command_is_what_torchrun_and_the_pod_entry_point_expect() -> None:
    from torch.distributed.run import get_args_parser

    command = encoder_spec()["spec"]["trainer"]["command"]
    assert command[0] == "torchrun"
    # torchrun takes its node count, rank and master from the PET_* variables the Trainer sets.
    launched = get_args_parser().parse_args(command[1:])
    assert launched.module and launched.training_script == "semcode.cluster.trainjob"
    entry = launched.training_script_args
    assert entry == [
        "--stage",
        "train-encoder",
        "--input",
        "pairs=s3://b/run/pairs",
        "--input",
        "tokenizer=s3://b/run/tokenizer",
        "--output",
        "out=s3://b/run/work/x",
        "--",
        "--size",
        "base",
        "--zero-stage",
        "2",
    ]


def test_deepspeed_spec_patches_launcher_and_nodes_and_its_script_is_clean_bash(tmp_path: Path) -> None:
    spec = encoder_spec("deepspeed-distributed")
    jobs = spec["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert [job["name"] for job in jobs] == ["node", "launcher"]
    command = spec["spec"]["trainer"]["command"]
    assert command[:2] == ["bash", "-c"]
    script = command[2]
    assert "mpirun --hostfile /etc/mpi/hostfile" in script and "-x MASTER_PORT=29500" in script
    # The S3 variables are forwarded to ranks started over SSH when they are set.
    assert (
        "for name in AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_ENDPOINT_URL AWS_DEFAULT_REGION;" in script
    )
    python_part = shlex.split(script.rsplit('"${forward[@]}" ', 1)[1])
    assert python_part[:3] == ["python3", "-m", "semcode.cluster.trainjob"]
    assert python_part[3:5] == ["--stage", "train-encoder"]

    path = tmp_path / "launcher.sh"
    path.write_text("#!/usr/bin/env bash\n" + script + "\n")
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    result = subprocess.run([shellcheck, str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_mpi_ranks_become_torch_ranks() -> None:
    mpi = {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}
    assert trainjob.torch_env_from_mpi(mpi) == {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}
    assert trainjob.torch_env_from_mpi({**mpi, "RANK": "3"}) == {}  # torchrun already set them
    assert trainjob.torch_env_from_mpi({}) == {}


def test_cpu_nodes_get_one_process_and_no_gpu() -> None:
    spec = encoder_spec(
        gpus_per_node=0,
        node_selector=None,
        tolerations=None,
        resources={"requests": {"cpu": "1", "memory": "2Gi"}},
    )
    trainer = spec["spec"]["trainer"]
    assert trainer["numProcPerNode"] == 1
    assert trainer["resourcesPerNode"] == {"requests": {"cpu": "1", "memory": "2Gi"}}
    pod = spec["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    assert "nodeSelector" not in pod["template"]["spec"]["template"]["spec"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"runtime": "jax-distributed"}, "runtime must be one of"),
        ({"num_nodes": 0}, "num_nodes must be >= 1"),
        ({"gpus_per_node": -1}, "gpus_per_node must be >= 0"),
        ({"image": ""}, "image is required"),
        ({"name": "Semcode_Train"}, "RFC 1035"),
        ({"name": "x" * 64}, "RFC 1035"),
        ({"command": ["torchrun", *["--flag"] * 128]}, "allows 128"),
        ({"tolerations": [{"key": "a", "operator": "Exists", "tolerationSeconds": "soon"}]}, "not a valid"),
    ],
)
def test_bad_arguments_are_refused_before_any_request(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encoder_spec(**overrides)


def test_validation_names_fields_the_api_does_not_know() -> None:
    spec = encoder_spec()
    spec["spec"]["trainer"]["numGpus"] = 8  # not a Trainer field: the API server would drop it
    spec["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0][
        "template"
    ]["spec"]["template"]["spec"]["hostNetwork"] = True
    with pytest.raises(ValueError, match=r"spec\.trainer\.numGpus.*hostNetwork"):
        trainjob.validate_trainjob(spec)
    spec = encoder_spec()
    spec["spec"]["trainer"]["numNodes"] = "4"  # a string where the API wants an integer
    with pytest.raises(ValueError, match="not a valid"):
        trainjob.validate_trainjob(spec)


def test_names_and_uris() -> None:
    name = trainjob.trainjob_name("Train_Encoder")
    assert name.startswith("semcode-train-encoder-") and trainjob.NAME_PATTERN.match(name)
    assert trainjob.trainjob_name("train-encoder") != trainjob.trainjob_name("train-encoder")
    assert len(trainjob.trainjob_name("x" * 100)) <= 63
    assert trainjob.to_s3_uri("minio://mlpipeline/v2/artifacts/a") == "s3://mlpipeline/v2/artifacts/a"
    assert trainjob.to_s3_uri("s3://b/k") == "s3://b/k"
    for bad in ("/minio/mlpipeline/v2/a", "gs://b/k"):
        with pytest.raises(ValueError, match="not an s3:// or minio://"):
            trainjob.to_s3_uri(bad)


def test_config_flags_give_back_the_same_config() -> None:
    from semcode.stages.train_encoder import TrainEncoderConfig

    config = cfg.from_dict(
        TrainEncoderConfig,
        {
            "size": "base",
            "lr": 3e-4,
            "learnable_temperature": True,
            "max_steps": 20,
            "time_budget_minutes": 1.5,
        },
    )
    flags = trainjob.config_flags(config)
    assert flags[:2] == ["--size", "base"] and "--learnable-temperature" in flags
    assert "--batch-size" not in flags  # defaults stay out of the command
    parser = argparse.ArgumentParser()
    cfg.add_arguments(parser, TrainEncoderConfig)
    assert cfg.from_args(TrainEncoderConfig, parser.parse_args(flags)) == config

    from semcode.stages.train_tokenizer import TrainTokenizerConfig

    columns = cfg.from_dict(TrainTokenizerConfig, {"columns": ["code"], "vocab_size": 500})
    flags = trainjob.config_flags(columns)
    assert flags == ["--vocab-size", "500", "--columns", "code"]  # a tuple: the flag repeated
    parser = argparse.ArgumentParser()
    cfg.add_arguments(parser, TrainTokenizerConfig)
    assert cfg.from_args(TrainTokenizerConfig, parser.parse_args(flags)) == columns

    @dataclasses.dataclass(frozen=True)
    class SourcesConfig:
        sources: tuple[str, ...] = cfg.field(("python:stdlib",), "sources")

    with pytest.raises(ValueError, match="sources: an empty list"):
        trainjob.config_flags(SourcesConfig(sources=()))


# --- submitting and following ------------------------------------------------------------------------------


def test_submit_then_wait_follows_the_conditions_to_complete(capsys: pytest.CaptureFixture) -> None:
    api = FakeCustomObjectsApi(statuses=[{}, RUNNING, RUNNING, COMPLETE])
    spec = encoder_spec()
    created = trainjob.submit_trainjob(spec, api)
    assert created["spec"] == spec["spec"]
    status = trainjob.wait_for_trainjob(spec["metadata"]["name"], "kubeflow", poll_seconds=0.001, api=api)
    assert status == COMPLETE and api.reads == 4
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("[trainjob] TrainJob")]
    # One line per change of state, not per poll.
    assert [line.split(" | ", 1)[1] for line in lines] == [
        "Pending",
        "Running | node: 1 active, 0 succeeded, 0 failed",
        "Complete | node: 0 active, 1 succeeded, 0 failed",
    ]


def test_a_failed_trainjob_raises_its_reason_and_where_the_logs_are() -> None:
    failed = {"conditions": [condition("Failed", "FailedJobs", "ReplicatedJob node failed: exit code 2")]}
    api = FakeCustomObjectsApi(statuses=[RUNNING, failed])
    spec = encoder_spec()
    trainjob.submit_trainjob(spec, api)
    with pytest.raises(trainjob.TrainJobFailed) as raised:
        trainjob.wait_for_trainjob(spec["metadata"]["name"], "kubeflow", poll_seconds=0.001, api=api)
    error = raised.value
    assert (error.reason, error.message) == ("FailedJobs", "ReplicatedJob node failed: exit code 2")
    assert "jobset.sigs.k8s.io/jobset-name=semcode-train-encoder-1a2b3c4d" in str(error)
    assert "kubectl -n kubeflow logs" in str(error)


def test_waiting_times_out() -> None:
    api = FakeCustomObjectsApi(statuses=[RUNNING])
    trainjob.submit_trainjob(encoder_spec(), api)
    with pytest.raises(trainjob.TrainJobTimeout, match="did not finish within 0s.*last state: Running"):
        trainjob.wait_for_trainjob("semcode-train-encoder-1a2b3c4d", "kubeflow", 0.01, 0.05, api)


def test_waiting_rides_out_api_hiccups_but_not_a_deleted_job() -> None:
    api = FakeCustomObjectsApi(
        statuses=[COMPLETE],
        get_errors=[ApiException(status=503, reason="Unavailable"), ConnectionResetError()],
    )
    trainjob.submit_trainjob(encoder_spec(), api)
    assert (
        trainjob.wait_for_trainjob("semcode-train-encoder-1a2b3c4d", "kubeflow", 0.001, 10, api) == COMPLETE
    )

    api = FakeCustomObjectsApi(get_errors=[ApiException(status=500)] * (trainjob.MAX_POLL_FAILURES + 1))
    trainjob.submit_trainjob(encoder_spec(), api)
    with pytest.raises(trainjob.TrainJobError, match="failed 6 times"):
        trainjob.wait_for_trainjob("semcode-train-encoder-1a2b3c4d", "kubeflow", 0.001, 10, api)

    with pytest.raises(trainjob.TrainJobError, match="no longer exists"):
        trainjob.wait_for_trainjob("semcode-train-encoder-1a2b3c4d", "elsewhere", 0.001, 10, api)


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (404, "install Kubeflow Trainer"),
        (403, "needs the TrainJob RBAC"),
        (409, "exists already"),
        (422, "ClusterTrainingRuntime torch-distributed not found"),
    ],
)
def test_submit_explains_what_the_api_refused(status: int, message: str) -> None:
    error = ApiException(status=status, reason="Refused")
    error.body = json.dumps({"message": "ClusterTrainingRuntime torch-distributed not found"})
    with pytest.raises(trainjob.TrainJobError, match=message):
        trainjob.submit_trainjob(encoder_spec(), FakeCustomObjectsApi(create_error=error))


def test_one_node_runs_locally() -> None:
    # None, before any check or request: the caller trains in its own pod.
    assert (
        trainjob.run_distributed("train-encoder", [], 1, inputs={}, out_dir="x", work_uri="", image="")
        is None
    )


# --- end to end: run_distributed, the pods' entry point, a real stage, a real S3 server -----------------


def _corpus_rows() -> list[dict]:
    """Real stdlib functions with docstrings: the first paragraph is the query."""
    rows = []
    for module in ("textwrap.py", "shlex.py", "fnmatch.py", "json/decoder.py", "argparse.py", "csv.py"):
        source = (Path(sysconfig.get_paths()["stdlib"]) / module).read_text(encoding="utf-8")
        lines = source.splitlines(keepends=True)
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef) and ast.get_docstring(node):
                code = "".join(lines[node.lineno - 1 : node.end_lineno])
                query = ast.get_docstring(node).split("\n\n")[0]
                rows.append({"query": query, "code": code, "repo": module})
    return rows


def write_corpus(corpus_dir: Path) -> None:
    """A small corpus, enough for a few-hundred-token BPE."""
    write_shards(_corpus_rows(), corpus_dir)


def test_run_distributed_runs_the_stage_through_s3_and_copies_its_output(
    s3_env: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_corpus(tmp_path / "corpus")
    storage.copy_tree(tmp_path / "corpus", f"{s3_env}/run/corpus")

    def trainer_controller(body: dict) -> None:
        """What one node's torchrun would start: the entry point, with the command's own arguments."""
        command = body["spec"]["trainer"]["command"]
        assert command[:3] == ["torchrun", "--module", "semcode.cluster.trainjob"]
        monkeypatch.setenv(trainjob.SCRATCH_VARIABLE, str(tmp_path / "pod"))
        assert trainjob.main(command[3:]) == 0

    api = FakeCustomObjectsApi(statuses=[RUNNING, COMPLETE], on_create=trainer_controller)
    out = tmp_path / "artifact"
    metrics = trainjob.run_distributed(
        "train-tokenizer",
        ["--vocab-size", "300", "--min-frequency", "1"],
        2,
        inputs={"corpus": f"{s3_env}/run/corpus".replace("s3://", "minio://")},
        out_dir=out,
        work_uri=f"{s3_env}/run/work",
        image="semcode-gpu:test",
        gpus_per_node=0,
        namespace="kubeflow",
        poll_seconds=0.001,
        timeout_seconds=60,
        api=api,
    )

    ((namespace, name),) = api.objects
    assert namespace == "kubeflow" and name.startswith("semcode-train-tokenizer-")
    assert api.objects[(namespace, name)]["metadata"]["labels"]["semcode.dev/stage"] == "train-tokenizer"
    # The stage ran on the downloaded corpus, rank 0 uploaded its output, and it came back into `out`.
    assert storage.exists(f"{s3_env}/run/work/{name}/tokenizer.json")
    assert (out / "tokenizer.json").is_file() and (out / "config.json").is_file()
    assert metrics == json.loads((out / "metrics.json").read_text()) and metrics["vocab_size"] == 300
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["vocab_size"] == 300 and saved["min_frequency"] == 1


@pytest.mark.slow
def test_two_ranks_under_torchrun_train_one_encoder(s3_env: str, tmp_path: Path) -> None:
    """The torch-distributed path for real: torchrun reads the PET_* variables the Trainer sets on a node,
    starts two ranks of the pods' entry point, and DeepSpeed trains one encoder over both (gloo, CPU)."""
    import os
    import socket

    write_corpus(tmp_path / "corpus")
    rows = _corpus_rows()
    write_shards([r for i, r in enumerate(rows) if i % 5], tmp_path / "pairs" / "train")
    write_shards([r for i, r in enumerate(rows) if i % 5 == 0], tmp_path / "pairs" / "valid")
    from semcode.stages import train_tokenizer

    train_tokenizer.run(
        train_tokenizer.TrainTokenizerConfig(vocab_size=400), tmp_path / "corpus", tmp_path / "tok"
    )
    storage.copy_tree(tmp_path / "pairs", f"{s3_env}/run/pairs")
    storage.copy_tree(tmp_path / "tok", f"{s3_env}/run/tokenizer")

    command = trainjob.stage_command(
        "torch-distributed",
        "train-encoder",
        [
            "--size",
            "tiny",
            "--max-steps",
            "3",
            "--batch-size",
            "4",
            "--max-length",
            "32",
            "--eval-every",
            "0",
        ],
        {"pairs": f"{s3_env}/run/pairs", "tokenizer": f"{s3_env}/run/tokenizer"},
        {"out": f"{s3_env}/run/work"},
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    node_env = {  # what the Trainer's torch plugin gives the one node of this test
        "PET_NNODES": "1",
        "PET_NPROC_PER_NODE": "2",
        "PET_NODE_RANK": "0",
        "PET_MASTER_ADDR": "127.0.0.1",
        "PET_MASTER_PORT": str(port),
        trainjob.SCRATCH_VARIABLE: str(tmp_path / "pod"),
    }
    torchrun = str(Path(sys.executable).parent / "torchrun")
    result = subprocess.run(
        [torchrun, *command[1:]], env={**os.environ, **node_env}, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(storage.read_text(f"{s3_env}/run/work/metrics.json"))
    assert metrics["world_size"] == 2 and metrics["steps"] == 3
    assert storage.exists(f"{s3_env}/run/work/encoder/model.safetensors")


def test_a_trainjob_past_its_timeout_is_deleted(s3_env: str, tmp_path: Path) -> None:
    api = FakeCustomObjectsApi(statuses=[RUNNING])
    with pytest.raises(trainjob.TrainJobTimeout):
        trainjob.run_distributed(
            "train-encoder",
            [],
            2,
            inputs={"pairs": f"{s3_env}/pairs"},
            out_dir=tmp_path,
            work_uri=f"{s3_env}/w",
            image="img",
            namespace="kubeflow",
            poll_seconds=0.01,
            timeout_seconds=0.05,
            api=api,
        )
    assert api.objects == {}


def test_copy_outputs_leaves_checkpoints_behind(s3_env: str, tmp_path: Path) -> None:
    for name in ("encoder/model.safetensors", "metrics.json", "checkpoints/step-000010/model.safetensors"):
        storage.write_text(f"{s3_env}/work/{name}", name)
    copied = trainjob.copy_outputs(f"{s3_env}/work/", tmp_path / "out", skip=("checkpoints", "best"))
    assert sorted(Path(p).relative_to(tmp_path / "out").as_posix() for p in copied) == [
        "encoder/model.safetensors",
        "metrics.json",
    ]
    with pytest.raises(FileNotFoundError, match="wrote nothing"):
        trainjob.copy_outputs(f"{s3_env}/nothing", tmp_path / "empty")


def test_pod_entry_point_downloads_each_input_once_per_node(s3_env: str, tmp_path: Path) -> None:
    storage.write_text(f"{s3_env}/pairs/train/part-00000.parquet", "x")
    first = trainjob.fetch_input(f"{s3_env}/pairs", tmp_path)
    (first / "marker").write_text("kept")  # a second process on the node reuses the first one's copy
    assert trainjob.fetch_input(f"{s3_env}/pairs", tmp_path) == first and (first / "marker").exists()
    assert (first / "train" / "part-00000.parquet").read_text() == "x"
    assert trainjob.fetch_input(str(tmp_path), tmp_path / "x") == tmp_path  # local paths are used in place


def test_pod_entry_point_rejects_malformed_flags(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        trainjob.main(["--stage", "train-encoder", "--input", "pairs"])
    assert "expected FLAG=URI" in capsys.readouterr().err
