"""The Helm chart charts/semcode, without a cluster.

Each values file is rendered with Helm's own Go SDK (PyPI helm-python-sdk: no helm binary, nothing
downloaded), linted as ``helm lint --strict`` does, and every manifest is validated against the Kubernetes
1.30 OpenAPI schemas (kubernetes-validate, strict: an unknown field fails). Then what matters in them: the S3
Secret wiring without a credential in sight, the probes on the paths `semcode serve` answers, the GPU pool
reaching the pipeline's parameters, the CronJob's `semcode submit`, RBAC for TrainJobs, and the CronJob's
own commands run for real: `semcode compile` as its init container, `semcode submit` against a fake KFP API.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from fake_kfp import FakeKFP, passed

import semcode
from semcode.serve.app import create_app

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "semcode"
KUBERNETES_VERSION = "1.30.0"
RELEASE, NAMESPACE = "semcode", "ml-team"
VALUES_FILES = [
    "values.yaml",
    "ci/gpu-values.yaml",
    "ci/no-serve-values.yaml",
    "ci/hpa-values.yaml",
    "ci/reindex-values.yaml",
]
IMAGE_USER = 1000  # USER 1000:1000 in images/Dockerfile.cpu and images/Dockerfile.gpu


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def values_file(name: str) -> dict:
    """The values a file adds to the defaults (values.yaml itself: nothing)."""
    return {} if name == "values.yaml" else yaml.safe_load((CHART / name).read_text()) or {}


def render(chart, values: dict | None = None) -> dict[tuple[str, str], dict]:
    """{(kind, name): manifest} of a release of the chart with ``values`` over the defaults."""
    manifests = {}
    for path, text in chart.render(values or {}, name=RELEASE, namespace=NAMESPACE).items():
        if path.endswith("NOTES.txt"):
            continue
        for document in yaml.safe_load_all(text):
            if document:
                manifests[document["kind"], document["metadata"]["name"]] = document
    return manifests


def pod_spec(manifest: dict) -> dict:
    if manifest["kind"] == "CronJob":
        return manifest["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return manifest["spec"]["template"]["spec"]


def container(manifest: dict, name: str) -> dict:
    spec = pod_spec(manifest)
    (found,) = [c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name]
    return found


def run_cronjob_commands(cronjob: dict, tmp_path: Path, monkeypatch, script: list) -> dict:
    """Run a CronJob's init container (`semcode compile`) and container (`semcode submit`) as rendered, the
    paths moved to tmp_path and the host to a fake KFP API that plays ``script``; returns the package's
    images, the started run's parameters and the experiment."""
    compile_step = container(cronjob, "compile")
    env = {e["name"]: e["value"] for e in compile_step["env"]}
    package = str(tmp_path / Path(compile_step["args"][-1]).name)
    args = [package if arg.startswith("/work/") else arg for arg in compile_step["args"]]
    # A fresh process: src/semcode/components/images.py reads the variables when it is first imported.
    subprocess.run(
        [sys.executable, "-m", "semcode.cli", *args], env=os.environ | env, check=True, cwd=tmp_path
    )
    images = {  # the executors' `image:` keys (component source code in the YAML mentions images too)
        line.split("image:")[1].strip()
        for line in Path(package).read_text().splitlines()
        if line.strip().startswith("image:")
    }
    submit = container(cronjob, "submit")
    for name in (
        "KFP_HOST",
        "KFP_TOKEN",
        "KFP_TOKEN_FILE",
        "KF_PIPELINES_SA_TOKEN_PATH",
        "GITHUB_SHA",
        "CI_COMMIT_SHA",
    ):
        monkeypatch.delenv(name, raising=False)
    token = {e["name"]: e.get("value") for e in submit["env"]}.get("KFP_TOKEN_FILE")
    if token:
        (tmp_path / "token").write_text("projected-token\n")
        monkeypatch.setenv("KFP_TOKEN_FILE", str(tmp_path / "token"))
    from semcode import cli

    with FakeKFP(token="projected-token" if token else None, script=script) as kfp:
        args = list(submit["args"])
        args[args.index("--host") + 1] = kfp.url
        args[args.index("--package") + 1] = package
        args[args.index("--timeout") + 1] = "30"
        assert cli.main([*args, "--poll-interval", "0.01"]) == 0
        (run,) = kfp.calls("POST", "/runs")
        (experiment,) = kfp.experiments.values()
    return {
        "images": images,
        "parameters": run.body["runtime_config"]["parameters"],
        "experiment": experiment,
    }


def submit_params(cronjob: dict) -> dict[str, str]:
    """The CronJob's `--param KEY=VALUE` pairs."""
    args = container(cronjob, "submit")["args"]
    pairs = [args[i + 1] for i, arg in enumerate(args) if arg == "--param"]
    return dict(pair.split("=", 1) for pair in pairs)


# ---------------------------------------------------------------------------------------------------------
# Lint and schema validation, for every values file


def test_chart_metadata_follows_the_semcode_version() -> None:
    metadata = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert metadata["apiVersion"] == "v2" and metadata["name"] == "semcode"
    assert metadata["version"] == "0.1.0"
    assert metadata["appVersion"] == semcode.__version__


@pytest.mark.parametrize("name", VALUES_FILES)
def test_lint_strict_passes(name: str) -> None:
    report = helm.lint(CHART, values_file(name), strict=True, kube_version=f"v{KUBERNETES_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 warning, 3 error (info is fine)
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("name", VALUES_FILES)
def test_every_manifest_is_valid_for_kubernetes_1_30(chart, name: str) -> None:
    started = time.perf_counter()
    manifests = render(chart, values_file(name))
    assert time.perf_counter() - started < 2.0  # offline and in-process: milliseconds, in fact
    assert manifests
    for manifest in manifests.values():
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)  # raises on any problem
        assert manifest["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
        assert manifest["metadata"]["labels"]["helm.sh/chart"] == "semcode-0.1.0"


def test_strict_validation_refuses_an_unknown_field(chart) -> None:
    """The validation above is not vacuous: a misplaced field fails it."""
    deployment = render(chart)["Deployment", "semcode-serve"]
    container(deployment, "serve")["readinessProbes"] = deployment["spec"]["template"]["spec"].pop(
        "securityContext"
    )
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_a_misspelt_value_fails_against_the_values_schema(chart) -> None:
    with pytest.raises(helm.HelmValuesError, match="replicaCount"):
        chart.render({"serve": {"replicaCount": 3}}, name=RELEASE, namespace=NAMESPACE)
    with pytest.raises(helm.HelmValuesError):  # an unquoted tag: 2024.10 would be the number 2024.1
        chart.render({"image": {"tag": 2024.10}}, name=RELEASE, namespace=NAMESPACE)


# ---------------------------------------------------------------------------------------------------------
# Images: one registry and tag, used by every container


@pytest.mark.parametrize("name", VALUES_FILES)
def test_every_container_runs_the_cpu_image_of_the_values(chart, name: str) -> None:
    image = {"registry": "ghcr.io/semcode", "tag": semcode.__version__} | values_file(name).get("image", {})
    expected = f"{image['registry']}/semcode-cpu:{image['tag']}"
    for manifest in render(chart, values_file(name)).values():
        if manifest["kind"] in ("Deployment", "CronJob"):
            spec = pod_spec(manifest)
            assert {c["image"] for c in spec["containers"] + spec.get("initContainers", [])} == {expected}


# ---------------------------------------------------------------------------------------------------------
# S3: the Secret's keys as variables, never a credential value


def test_by_default_credentials_come_from_the_existing_secret_and_none_is_rendered(chart) -> None:
    manifests = render(chart)
    assert not [key for key in manifests if key[0] == "Secret"]
    env = {e["name"]: e for e in container(manifests["Deployment", "semcode-serve"], "serve")["env"]}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert "value" not in env[name]
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "semcode-s3", "key": name}
    for name in ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"):  # unset in values: the Secret may have them
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": "semcode-s3", "key": name, "optional": True}
    # The pipeline's tasks read the same Secret: the CronJob names it in every run.
    assert submit_params(manifests["CronJob", "semcode-retrain"])["s3_secret_name"] == "semcode-s3"
    # The CronJob only talks to KFP: no S3 credentials there.
    cronjob_env = container(manifests["CronJob", "semcode-retrain"], "submit")["env"]
    assert not [e for e in cronjob_env if e["name"].startswith("AWS_")]


def test_endpoint_and_region_from_values_are_plain_variables(chart) -> None:
    manifests = render(chart, values_file("ci/gpu-values.yaml"))
    env = {e["name"]: e for e in container(manifests["Deployment", "semcode-serve"], "serve")["env"]}
    assert env["AWS_ENDPOINT_URL"] == {
        "name": "AWS_ENDPOINT_URL",
        "value": "http://seaweedfs.kubeflow.svc.cluster.local:8333",
    }
    assert env["AWS_DEFAULT_REGION"]["value"] == "eu-west-1"
    assert "secretKeyRef" in env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]


def test_create_secret_puts_the_values_in_a_secret_and_needs_both_keys(chart) -> None:
    s3 = {
        "createSecret": True,
        "existingSecret": "kind-s3",
        "accessKeyId": "key",
        "secretAccessKey": "secret",
    }
    manifests = render(chart, {"s3": s3 | {"endpoint": "http://minio:9000"}})
    data = {k: base64.b64decode(v).decode() for k, v in manifests["Secret", "kind-s3"]["data"].items()}
    assert data == {
        "AWS_ACCESS_KEY_ID": "key",
        "AWS_SECRET_ACCESS_KEY": "secret",
        "AWS_ENDPOINT_URL": "http://minio:9000",
    }
    env = {e["name"]: e for e in container(manifests["Deployment", "semcode-serve"], "serve")["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "kind-s3"
    with pytest.raises(helm.HelmError, match="s3.secretAccessKey is required"):
        render(chart, {"s3": s3 | {"secretAccessKey": ""}})


# ---------------------------------------------------------------------------------------------------------
# The search service


def test_the_service_serves_the_latest_bundle_with_probes_on_readyz_and_healthz(chart) -> None:
    manifests = render(chart)
    deployment = manifests["Deployment", "semcode-serve"]
    serve = container(deployment, "serve")
    assert serve["command"] == ["semcode"]
    assert serve["args"][:4] == ["serve", "s3://semcode/registry/semcode/latest", "--host", "0.0.0.0"]
    assert serve["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert serve["args"][serve["args"].index("--port") + 1] == "8080"
    assert serve["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert serve["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert serve["resources"]["limits"] and serve["resources"]["requests"]
    # The paths are the app's own.
    routes = {route.path for route in create_app(load=lambda: None).routes}
    assert {"/readyz", "/healthz", "/search"} <= routes
    service = manifests["Service", "semcode-serve"]
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert (
        deployment["spec"]["replicas"] == 2 and ("HorizontalPodAutoscaler", "semcode-serve") not in manifests
    )


def test_pods_run_as_the_images_user_on_a_read_only_root_with_emptydirs(chart) -> None:
    for key in (("Deployment", "semcode-serve"), ("CronJob", "semcode-retrain")):
        spec = pod_spec(render(chart)[key])
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] == IMAGE_USER
        assert spec["automountServiceAccountToken"] is False
        empty_dirs = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for c in spec["containers"] + spec.get("initContainers", []):
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
            mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
            assert mounts["/tmp"] in empty_dirs
    serve = container(render(chart)["Deployment", "semcode-serve"], "serve")
    cache_dir = serve["args"][serve["args"].index("--cache-dir") + 1]
    assert cache_dir in {m["mountPath"] for m in serve["volumeMounts"]}


def test_no_serve_renders_no_deployment_and_no_service(chart) -> None:
    kinds = {kind for kind, _ in render(chart, values_file("ci/no-serve-values.yaml"))}
    assert kinds == {"CronJob", "ServiceAccount", "Role", "RoleBinding"}


def test_hpa_replaces_the_fixed_replica_count(chart) -> None:
    manifests = render(chart, values_file("ci/hpa-values.yaml"))
    hpa = manifests["HorizontalPodAutoscaler", "semcode-serve"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "semcode-serve",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 20)
    assert hpa["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"] == 60
    assert "replicas" not in manifests["Deployment", "semcode-serve"]["spec"]
    assert ("CronJob", "semcode-retrain") not in manifests


def test_a_node_port_when_asked(chart) -> None:
    service = {"type": "NodePort", "nodePort": 30081}
    manifests = render(chart, {"serve": {"service": service}})
    assert manifests["Service", "semcode-serve"]["spec"]["ports"][0]["nodePort"] == 30081


# ---------------------------------------------------------------------------------------------------------
# Retraining: the CronJob and the runner's RBAC


def test_the_cronjob_runs_semcode_submit_on_the_schedule_one_at_a_time(chart) -> None:
    cronjob = render(chart)["CronJob", "semcode-retrain"]
    assert cronjob["spec"]["schedule"] == "0 2 * * 0"
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    job = cronjob["spec"]["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0 and job["template"]["spec"]["restartPolicy"] == "Never"
    submit = container(cronjob, "submit")
    assert submit["command"] == ["semcode"]
    host = "http://ml-pipeline-ui.kubeflow.svc.cluster.local"
    assert submit["args"][:6] == ["submit", "--host", host, "--preset", "gpu", "--wait"]
    assert "--no-cache" in submit["args"]
    assert submit_params(cronjob)["gate_registry"] == "s3://semcode/registry"
    assert pod_spec(cronjob)["serviceAccountName"] == "semcode-runner"


def test_the_gpu_pool_of_the_values_reaches_the_pipeline_parameters(chart) -> None:
    gpu = values_file("ci/gpu-values.yaml")["gpu"]
    params = submit_params(render(chart, values_file("ci/gpu-values.yaml"))["CronJob", "semcode-retrain"])
    selector = {k: v for k, v in gpu["nodeSelector"].items() if v is not None}  # null drops a default key
    assert yaml.safe_load(params["gpu_node_selector"]) == selector
    assert yaml.safe_load(params["gpu_tolerations"]) == gpu["tolerations"]
    assert params["gpu_count"] == "8"
    # and the defaults: the pipeline's own defaults for the GPU pool
    default = submit_params(render(chart)["CronJob", "semcode-retrain"])
    assert yaml.safe_load(default["gpu_node_selector"]) == {"nvidia.com/gpu.present": "true"}
    assert yaml.safe_load(default["gpu_tolerations"]) == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]


def test_a_cpu_only_cluster_can_be_described(chart) -> None:
    """kind has no GPU: gpu.count 0 with no node selector or toleration (docs/cluster.md) renders."""
    values = {"gpu": {"count": 0, "nodeSelector": {"nvidia.com/gpu.present": None}, "tolerations": []}}
    params = submit_params(render(chart, values)["CronJob", "semcode-retrain"])
    assert params["gpu_count"] == "0" and yaml.safe_load(params["gpu_node_selector"]) == {}


def test_rbac_lets_the_runner_and_kfps_pipeline_pods_run_trainjobs(chart) -> None:
    manifests = render(chart)
    rules = manifests["Role", "semcode-runner"]["rules"]
    trainjobs = [
        r for r in rules if r["apiGroups"] == ["trainer.kubeflow.org"] and "trainjobs" in r["resources"]
    ]
    assert trainjobs and {"create", "get", "list", "watch", "delete"} <= set(trainjobs[0]["verbs"])
    pods = [r for r in rules if r["apiGroups"] == [""]]
    assert pods and {"pods", "pods/log"} <= set(pods[0]["resources"])
    binding = manifests["RoleBinding", "semcode-runner"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "semcode-runner",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "semcode-runner", "namespace": NAMESPACE},
        {"kind": "ServiceAccount", "name": "pipeline-runner", "namespace": NAMESPACE},
    ]
    assert manifests["ServiceAccount", "semcode-runner"]["automountServiceAccountToken"] is False


def test_the_cronjobs_commands_compile_and_submit_against_a_kfp_api(chart, tmp_path, monkeypatch) -> None:
    """The init container's `semcode compile` and the container's `semcode submit`, run as rendered (the
    paths moved to tmp_path, the host to a fake KFP API): the run gets the chart's images and parameters."""
    cronjob = render(chart, values_file("ci/gpu-values.yaml"))["CronJob", "semcode-retrain"]
    compile_env = {e["name"]: e["value"] for e in container(cronjob, "compile")["env"]}
    assert (
        compile_env["SEMCODE_IMAGE_REGISTRY"] == "registry.example.com/ml"
        and compile_env["SEMCODE_IMAGE_TAG"] == "2024.10"
    )
    submit_env = {e["name"]: e["value"] for e in container(cronjob, "submit")["env"]}
    assert submit_env["KFP_TOKEN_FILE"] == "/var/run/secrets/kubeflow/pipelines/token"
    done = run_cronjob_commands(cronjob, tmp_path, monkeypatch, passed())
    assert done["images"] == {
        "registry.example.com/ml/semcode-cpu:2024.10",
        "registry.example.com/ml/semcode-gpu:2024.10",
    }
    parameters, experiment = done["parameters"], done["experiment"]
    assert parameters["gpu_count"] == 8
    assert parameters["gpu_node_selector"] == {
        "cloud.google.com/gke-accelerator": "nvidia-h100-80gb",
        "pool": "training",
    }
    assert parameters["gpu_tolerations"][0] == {
        "key": "dedicated",
        "operator": "Equal",
        "value": "gpu",
        "effect": "NoSchedule",
    }
    assert parameters["gate_registry"] == "s3://ml-models/registry" and parameters["gate_name"] == "semcode"
    assert parameters["s3_secret_name"] == "semcode-s3"
    assert parameters["train_encoder_max_steps"] == 20000 and parameters["gate_version"] == "2024.10"
    assert parameters["ingest_sources"] == ["python:stdlib", "dir:s3://ml-models/code/monorepo"]
    assert experiment["display_name"] == "nightly"


# ---------------------------------------------------------------------------------------------------------
# Re-indexing: the index pipeline's CronJob


def test_reindexing_is_off_by_default_and_needs_its_sources(chart) -> None:
    assert ("CronJob", "semcode-reindex") not in render(chart)
    with pytest.raises(Exception, match="reindex.sources is required"):
        render(chart, {"reindex": {"enabled": True}})


def test_the_reindex_cronjob_indexes_with_the_registrys_latest_model_and_updates_its_last_index(
    chart,
) -> None:
    cronjob = render(chart, values_file("ci/reindex-values.yaml"))["CronJob", "semcode-reindex"]
    assert cronjob["spec"]["schedule"] == "*/30 * * * *" and cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    assert cronjob["metadata"]["labels"]["app.kubernetes.io/component"] == "reindexing"
    args = container(cronjob, "submit")["args"]
    assert args[:5] == [
        "submit",
        "--host",
        "http://ml-pipeline-ui.kubeflow.svc.cluster.local",
        "--pipeline",
        "index",
    ]
    assert "--no-cache" in args and args[args.index("--package") + 1] == "/work/index_pipeline.yaml"
    assert container(cronjob, "compile")["args"] == [
        "compile",
        "--pipeline",
        "index",
        "--output",
        "/work/index_pipeline.yaml",
    ]
    params = submit_params(cronjob)
    assert params["index_encoder"] == "s3://semcode/registry/semcode/latest"  # the retraining's releases
    assert yaml.safe_load(params["index_sources"]) == ["dir:s3://code/api", "dir:s3://code/web"]
    assert params["publish_registry"] == "s3://semcode/indexes" and params["index_name"] == "team-code"
    assert params["index_previous"] == "s3://semcode/indexes/team-code/latest"
    assert params["publish_keep_versions"] == "24"  # a day of hourly indexes; older ones are removed
    assert yaml.safe_load(params["index_languages"]) == ["go", "typescript"]
    # the search service serves the index
    serve = container(
        render(chart, values_file("ci/reindex-values.yaml"))["Deployment", "semcode-serve"], "serve"
    )
    assert "s3://semcode/indexes/team-code/latest" in serve["args"]

    anew = {
        "reindex": {"enabled": True, "sources": ["dir:s3://code/api"], "update": False, "encoder": "minilm"}
    }
    params = submit_params(render(chart, anew)["CronJob", "semcode-reindex"])
    assert params["index_previous"] == "" and params["index_encoder"] == "minilm"


def test_the_reindex_cronjobs_commands_compile_and_submit_the_index_pipeline(
    chart, tmp_path, monkeypatch
) -> None:
    cronjob = render(chart, values_file("ci/reindex-values.yaml"))["CronJob", "semcode-reindex"]
    script = [("SUCCEEDED", {"index": "SUCCEEDED", "condition-1": "SUCCEEDED", "publish": "SUCCEEDED"})]
    done = run_cronjob_commands(cronjob, tmp_path, monkeypatch, script)
    assert done["images"] == {f"ghcr.io/semcode/semcode-cpu:{semcode.__version__}"}  # no GPU task
    parameters = done["parameters"]
    assert parameters["index_sources"] == ["dir:s3://code/api", "dir:s3://code/web"]
    assert parameters["index_languages"] == ["go", "typescript"]
    assert parameters["index_previous"] == "s3://semcode/indexes/team-code/latest"
