#!/usr/bin/env bash
# semcode on a local kind cluster: create the cluster, install Kubeflow Pipelines (platform-agnostic
# manifests, SeaweedFS as the object store), optionally Kubeflow Trainer, build and load the images, create
# the S3 Secret, install the Helm chart, and run the `tiny` preset end to end with `semcode submit`.
# Needs a Docker engine (kind runs its nodes as containers) and about 4 CPUs / 8 GB free for KFP.
#
#   deploy/kind/up.sh                      # cluster + KFP + images + chart + the tiny run, then the search service
#   deploy/kind/up.sh --with-trainer       # also Kubeflow Trainer and its runtimes (multi-node TrainJobs)
#   deploy/kind/up.sh --no-run             # everything but the run
#   deploy/kind/up.sh --gpu-image          # build the real CUDA image too (default: the CPU image under both names)
#   deploy/kind/down.sh                    # delete the cluster
#
# Settings (environment): CLUSTER_NAME (semcode), KFP_VERSION (2.17.1), TRAINER_VERSION (v2.3.0),
# KIND_NODE_IMAGE (kindest/node:v1.33.1), SEMCODE (the semcode command: the repository's .venv if present).
set -euo pipefail

CLUSTER_NAME="${CLUSTER_NAME:-semcode}"
KFP_VERSION="${KFP_VERSION:-2.17.1}"
TRAINER_VERSION="${TRAINER_VERSION:-v2.3.0}"
KIND_NODE_IMAGE="${KIND_NODE_IMAGE:-kindest/node:v1.33.1}"
NAMESPACE=kubeflow                  # standalone KFP runs pipelines here; the chart and the Secret go here too
REGISTRY=ghcr.io/semcode            # the names the committed pipeline YAML uses (src/semcode/components/images.py)
S3_SECRET=semcode-s3                # the pipeline's s3_secret_name default
S3_ENDPOINT="http://seaweedfs.${NAMESPACE}.svc.cluster.local:8333"
GATE_REGISTRY=s3://mlpipeline/semcode/registry   # KFP's own bucket: no bucket to create
API_PORT=8888

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "${here}/../.." && pwd)"
with_trainer=0
run_tiny=1
gpu_image=0

usage() {  # the comment block at the top of this file
  awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

for argument in "$@"; do
  case "${argument}" in
    --with-trainer) with_trainer=1 ;;
    --no-run) run_tiny=0 ;;
    --gpu-image) gpu_image=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "up.sh: unknown option ${argument} (see --help)" >&2; exit 2 ;;
  esac
done

step() { echo "==> $*" >&2; }
die() { echo "up.sh: error: $*" >&2; exit 1; }
k() { kubectl --context "kind-${CLUSTER_NAME}" "$@"; }

need() {
  command -v "$1" >/dev/null 2>&1 || die "$1 not found: $2"
}

# --- 0. prerequisites ---------------------------------------------------------------------------------
need docker "install Docker (https://docs.docker.com/engine/install/); kind runs its nodes as containers"
need kind "install kind >= 0.27 (https://kind.sigs.k8s.io/docs/user/quick-start/#installation)"
need kubectl "install kubectl >= 1.31 (https://kubernetes.io/docs/tasks/tools/)"
need helm "install Helm 3 (https://helm.sh/docs/intro/install/)"
need git "install git (kubectl fetches the KFP and Trainer kustomizations from GitHub with it)"
need curl "install curl"
docker info >/dev/null 2>&1 || die "the Docker engine is not running (docker info failed)"
if [[ -z "${SEMCODE:-}" ]]; then
  if [[ -x "${repo_root}/.venv/bin/semcode" ]]; then
    SEMCODE="${repo_root}/.venv/bin/semcode"
  else
    SEMCODE=semcode
  fi
fi
need "${SEMCODE}" "run 'make setup' in the repository (or pip install -e .), or set SEMCODE=/path/to/semcode"
version="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "${repo_root}/src/semcode/__init__.py")"
[[ -n "${version}" ]] || die "no __version__ in src/semcode/__init__.py"

# --- 1. the cluster -----------------------------------------------------------------------------------
if kind get clusters 2>/dev/null | grep -qx "${CLUSTER_NAME}"; then
  step "kind cluster ${CLUSTER_NAME} exists; reusing it"
else
  step "creating kind cluster ${CLUSTER_NAME} (${KIND_NODE_IMAGE})"
  kind create cluster --name "${CLUSTER_NAME}" --image "${KIND_NODE_IMAGE}" \
    --config "${here}/kind-config.yaml" --wait 5m
fi

# --- 2. Kubeflow Pipelines, platform-agnostic (SeaweedFS object store, MySQL) --------------------------
step "installing Kubeflow Pipelines ${KFP_VERSION}"
k apply -k "github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=${KFP_VERSION}"
k wait --for condition=established --timeout=120s crd/applications.app.k8s.io
k apply -k "github.com/kubeflow/pipelines/manifests/kustomize/env/platform-agnostic?ref=${KFP_VERSION}"
step "waiting for KFP to come up (a few minutes on first pull)"
k -n "${NAMESPACE}" wait --for=condition=Available deployment --all --timeout=1200s
# The UI on http://localhost:8080 through kind-config.yaml's port mapping.
k -n "${NAMESPACE}" patch service ml-pipeline-ui \
  -p '{"spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}}'

# --- 3. Kubeflow Trainer (only for multi-node training) -------------------------------------------------
if [[ "${with_trainer}" == 1 ]]; then
  step "installing Kubeflow Trainer ${TRAINER_VERSION} and its runtimes"
  k apply --server-side -k "github.com/kubeflow/trainer.git/manifests/overlays/manager?ref=${TRAINER_VERSION}"
  k -n kubeflow-system wait --for=condition=Available deployment --all --timeout=600s
  # The runtimes go through the Trainer's webhook, which has to be up first.
  k apply --server-side -k "github.com/kubeflow/trainer.git/manifests/overlays/runtimes?ref=${TRAINER_VERSION}"
  k get clustertrainingruntimes
fi

# --- 4. images, built here and loaded into the nodes -------------------------------------------------------
cpu_image="${REGISTRY}/semcode-cpu:${version}"
gpu_image_name="${REGISTRY}/semcode-gpu:${version}"
if [[ "${gpu_image}" == 1 ]]; then
  step "building ${cpu_image} and ${gpu_image_name}"
  REGISTRY="${REGISTRY}" TAG="${version}" PUSH=0 "${repo_root}/images/build.sh" cpu gpu
else
  # No GPU in kind: the CPU image runs train_encoder too, under the GPU image's name (no CUDA download).
  step "building ${cpu_image} (also tagged ${gpu_image_name})"
  REGISTRY="${REGISTRY}" TAG="${version}" PUSH=0 "${repo_root}/images/build.sh" cpu
  docker tag "${cpu_image}" "${gpu_image_name}"
fi
kind load docker-image --name "${CLUSTER_NAME}" "${cpu_image}" "${gpu_image_name}"

# --- 5. the S3 Secret every pipeline task reads: KFP's own SeaweedFS and credentials ---------------------
step "creating Secret ${NAMESPACE}/${S3_SECRET} for ${S3_ENDPOINT}"
access_key="$(k -n "${NAMESPACE}" get secret mlpipeline-minio-artifact -o jsonpath='{.data.accesskey}' | base64 -d)"
secret_key="$(k -n "${NAMESPACE}" get secret mlpipeline-minio-artifact -o jsonpath='{.data.secretkey}' | base64 -d)"
k -n "${NAMESPACE}" create secret generic "${S3_SECRET}" \
  --from-literal=AWS_ACCESS_KEY_ID="${access_key}" \
  --from-literal=AWS_SECRET_ACCESS_KEY="${secret_key}" \
  --from-literal=AWS_ENDPOINT_URL="${S3_ENDPOINT}" \
  --from-literal=AWS_DEFAULT_REGION=us-east-1 \
  --dry-run=client -o yaml | k apply -f -

# --- 6. the chart: RBAC and S3 wiring now; the search service once a bundle is published -----------------
step "installing charts/semcode (values-kind.yaml)"
helm upgrade --install semcode "${repo_root}/charts/semcode" --kube-context "kind-${CLUSTER_NAME}" \
  --namespace "${NAMESPACE}" -f "${here}/values-kind.yaml" \
  --set image.registry="${REGISTRY}" --set image.tag="${version}" --set serve.enabled=false

if [[ "${run_tiny}" != 1 ]]; then
  step "done (--no-run). KFP UI: http://localhost:8080"
  exit 0
fi

# --- 7. the tiny run through the KFP API ------------------------------------------------------------
step "port-forwarding the KFP API to localhost:${API_PORT}"
k -n "${NAMESPACE}" port-forward svc/ml-pipeline "${API_PORT}:8888" >/dev/null 2>&1 &
forward_pid=$!
trap 'kill "${forward_pid}" 2>/dev/null || true' EXIT
for _ in $(seq 1 30); do
  curl -sf "http://localhost:${API_PORT}/apis/v2beta1/healthz" >/dev/null && break
  sleep 2
done
curl -sf "http://localhost:${API_PORT}/apis/v2beta1/healthz" >/dev/null \
  || die "the KFP API did not answer on localhost:${API_PORT}"

step "submitting the tiny preset (no GPU: gpu_count=0, no GPU node pool)"
(
  cd "${repo_root}"
  "${SEMCODE}" submit --host "http://localhost:${API_PORT}" --preset tiny --no-cache --wait --timeout 1h \
    --param gate_registry="${GATE_REGISTRY}" --param s3_secret_name="${S3_SECRET}" \
    --param gpu_count=0 --param 'gpu_node_selector={}' --param 'gpu_tolerations=[]'
)

# --- 8. the search service, serving the bundle the run just published -------------------------------------
step "enabling the search service"
helm upgrade semcode "${repo_root}/charts/semcode" --kube-context "kind-${CLUSTER_NAME}" \
  --namespace "${NAMESPACE}" --reuse-values --set serve.enabled=true --wait --timeout 10m
step "done. KFP UI: http://localhost:8080 | search: curl 'http://localhost:8000/search?q=read+a+file'"
