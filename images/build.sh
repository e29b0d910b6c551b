#!/usr/bin/env bash
# Build and push the semcode images under the names src/semcode/components/images.py gives the pipeline's components:
#   ${REGISTRY}/semcode-cpu:${TAG}   images/Dockerfile.cpu
#   ${REGISTRY}/semcode-gpu:${TAG}   images/Dockerfile.gpu
#
#   images/build.sh                                        # both, pushed to ghcr.io/semcode, tag = semcode version
#   REGISTRY=registry.example.com/ml TAG=2024.10 images/build.sh
#   PUSH=0 images/build.sh cpu                             # the CPU image only, kept local (e.g. for `kind load`)
#   DRY_RUN=1 images/build.sh                              # print the commands, run nothing
#   images/build.sh --local                                # the CPU image without any container registry
#
# REGISTRY defaults to $SEMCODE_IMAGE_REGISTRY, else ghcr.io/semcode; TAG to $SEMCODE_IMAGE_TAG, else the
# semcode version (src/semcode/__init__.py), the same defaults as src/semcode/components/images.py. Compile the pipeline
# with the same SEMCODE_IMAGE_REGISTRY and SEMCODE_IMAGE_TAG so its YAML names these images (each image
# compiles its own copy of src/semcode/pipeline/train_pipeline.yaml with them). Other settings: PUSH (1 push, 0 build
# only), DOCKER (docker, or podman), PLATFORM (linux/amd64).
#
# --local builds the CPU image (the only one: the GPU image needs NVIDIA's CUDA images) on a machine that
# reaches Debian's mirror and PyPI but no container registry, as root, with the engine running
# (images/engine.sh start). Never pushed. Instead of pulled images and downloads:
#   BASE_IMAGE   semcode-local/debian:bookworm, made once with `debootstrap --variant=minbase` (DEBIAN_MIRROR)
#   UV_IMAGE     semcode-local/uv:<the Dockerfile's uv version>, the uv binary of uv's PyPI wheel
#   Python       Debian's python3.11 (DEBIAN_PYTHON), instead of python-build-standalone
#   torch        the wheel this machine's pip takes for torch==<the Dockerfile's TORCH_VERSION> (pip
#                download: a CPU build where one is on disk), served to the build as a one-wheel index
#   CA bundle    CA_BUNDLE (default: this machine's), trusted by the builder stage only, for a proxy that
#                intercepts TLS; the runtime stage gets Debian's own ca-certificates
# (torch and the CA bundle are served on 127.0.0.1:INDEX_PORT, default 38271, while the build runs)
# everything else from PyPI and requirements.lock as in production. Build scratch goes to a temporary folder
# under TMPDIR (default /tmp), removed at the end. The legacy builder runs it (DOCKER_BUILDKIT=0), with
# --network host so the builder stage reaches the one-wheel index on 127.0.0.1.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
version="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "${repo_root}/src/semcode/__init__.py")"
registry="${REGISTRY:-${SEMCODE_IMAGE_REGISTRY:-ghcr.io/semcode}}"
registry="${registry%/}"
tag="${TAG:-${SEMCODE_IMAGE_TAG:-${version}}}"
push="${PUSH:-1}"
docker="${DOCKER:-docker}"
platform="${PLATFORM:-linux/amd64}"
revision="$(git -C "${repo_root}" rev-parse HEAD 2>/dev/null || echo unknown)"

local_base="semcode-local/debian:bookworm"
debian_mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
ca_bundle="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
# A fixed port: the index's address is a build argument, and a new one each build would miss the layer cache.
index_port="${INDEX_PORT:-38271}"
python="${PYTHON:-python3}"

run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    echo "$*"
  else
    "$@"
  fi
}

die() {
  echo "build.sh: $*" >&2
  exit 2
}

# The default of `ARG NAME=...` in a Dockerfile: the versions --local reproduces without a registry.
arg_default() {
  sed -n "s/^ARG $2=\"\{0,1\}\([^\"]*\)\"\{0,1\}$/\1/p" "$1" | head -n 1
}

has_image() {
  [[ "${DRY_RUN:-0}" != 1 ]] && "${docker}" image inspect "$1" >/dev/null 2>&1
}

# semcode-local/debian:bookworm: a minimal Debian made with debootstrap, trimmed like debian:bookworm-slim
# (no apt lists or package cache; docs, man pages and locales excluded from later installs too).
make_base_image() {
  local rootfs="$1/rootfs"
  if has_image "${local_base}"; then
    echo "==> ${local_base} is there" >&2
    return
  fi
  echo "==> making ${local_base} with debootstrap from ${debian_mirror}" >&2
  run debootstrap --variant=minbase bookworm "${rootfs}" "${debian_mirror}"
  if [[ "${DRY_RUN:-0}" != 1 ]]; then
    printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
      'path-exclude /usr/share/man/*' 'path-exclude /usr/share/info/*' 'path-exclude /usr/share/locale/*' \
      >"${rootfs}/etc/dpkg/dpkg.cfg.d/slim"
    rm -rf "${rootfs}"/var/cache/apt/archives/*.deb "${rootfs}"/var/cache/apt/*.bin \
      "${rootfs}"/var/lib/apt/lists/* "${rootfs}"/usr/share/man/* "${rootfs}"/usr/share/info/* \
      "${rootfs}"/usr/share/locale/*
    find "${rootfs}/usr/share/doc" -mindepth 2 ! -name copyright -delete
    tar -C "${rootfs}" -c . | "${docker}" import --change 'CMD ["bash"]' - "${local_base}"
    rm -rf "${rootfs}"
  fi
}

# semcode-local/uv:<version>: only /uv, from uv's wheel on PyPI (the binary ghcr.io/astral-sh/uv holds).
make_uv_image() {
  local scratch="$1" image="$2" uv_version="${2##*:}"
  if has_image "${image}"; then
    echo "==> ${image} is there" >&2
    return
  fi
  echo "==> making ${image} from uv ${uv_version}'s wheel" >&2
  run "${python}" -m pip download --quiet --no-deps --only-binary :all: -d "${scratch}/uv" "uv==${uv_version}"
  if [[ "${DRY_RUN:-0}" != 1 ]]; then
    "${python}" -m zipfile -e "${scratch}"/uv/uv-*.whl "${scratch}/uv/wheel"
    install -m 0755 "${scratch}"/uv/wheel/uv-*.data/scripts/uv "${scratch}/uv/uv"
    tar -C "${scratch}/uv" -c uv | "${docker}" import - "${image}"
  fi
}

# A one-wheel package index (PEP 503) of the torch this machine's pip takes, and the CA bundle, under
# ${scratch}/served, served on 127.0.0.1:${index_port} (a background python -m http.server).
serve_torch_and_ca() {
  local scratch="$1" torch_version="$2" served="$1/served" port="${index_port}"
  mkdir -p "${served}/simple/torch"
  run "${python}" -m pip download --quiet --no-deps --only-binary :all: --python-version 3.11 \
    -d "${served}/simple/torch" "torch==${torch_version}"
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    return
  fi
  local wheel
  wheel="$(cd "${served}/simple/torch" && ls torch-*.whl)"
  echo "==> torch for the image: ${wheel}" >&2
  printf '<a href="%s">%s</a>\n' "${wheel}" "${wheel}" >"${served}/simple/torch/index.html"
  cp "${ca_bundle}" "${served}/ca.crt"
  "${python}" -m http.server --bind 127.0.0.1 --directory "${served}" "${port}" >"${scratch}/http.log" 2>&1 &
  echo "$!" >"${scratch}/http.pid"
  for _ in $(seq 50); do
    if ! kill -0 "$(cat "${scratch}/http.pid")" 2>/dev/null; then
      die "the one-wheel index could not listen on 127.0.0.1:${port} (taken? set INDEX_PORT): $(tail -n 1 "${scratch}/http.log")"
    fi
    if "${python}" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:${port}/ca.crt')" 2>/dev/null; then
      return
    fi
    sleep 0.1
  done
  die "the one-wheel index on 127.0.0.1:${port} did not answer (${scratch}/http.log)"
}

build_local() {
  local dockerfile="${repo_root}/images/Dockerfile.cpu" image="${registry}/semcode-cpu:${tag}"
  local scratch uv_image torch_version
  [[ "$(id -u)" == 0 || "${DRY_RUN:-0}" == 1 ]] || die "--local needs root (debootstrap, the Docker engine)"
  [[ -r "${ca_bundle}" ]] || die "CA_BUNDLE ${ca_bundle}: not a readable file"
  if [[ "${DRY_RUN:-0}" != 1 ]] && ! "${docker}" info >/dev/null 2>&1; then
    die "no Docker engine answers '${docker} info': start one with images/engine.sh start"
  fi
  uv_image="semcode-local/uv:$(arg_default "${dockerfile}" UV_IMAGE | sed 's/.*://')"
  torch_version="$(arg_default "${dockerfile}" TORCH_VERSION)"
  scratch="$(mktemp -d "${TMPDIR:-/tmp}/semcode-build.XXXXXX")"
  # shellcheck disable=SC2064  # the paths are fixed now
  trap "if [[ -f '${scratch}/http.pid' ]]; then kill \"\$(cat '${scratch}/http.pid')\"; fi; rm -rf '${scratch}'" EXIT

  make_base_image "${scratch}"
  make_uv_image "${scratch}" "${uv_image}"
  serve_torch_and_ca "${scratch}" "${torch_version}"
  echo "==> building ${image} (local: ${local_base}, Debian's Python, this machine's torch)" >&2
  export DOCKER_BUILDKIT=0
  run "${docker}" build \
    --file "${dockerfile}" \
    --network host \
    --build-arg "BASE_IMAGE=${local_base}" \
    --build-arg "UV_IMAGE=${uv_image}" \
    --build-arg "DEBIAN_PYTHON=python3.11" \
    --build-arg "TORCH_INDEX_URL=http://127.0.0.1:${index_port}/simple" \
    --build-arg "BUILD_CA_URL=http://127.0.0.1:${index_port}/ca.crt" \
    --build-arg "SEMCODE_IMAGE_REGISTRY=${registry}" \
    --build-arg "SEMCODE_IMAGE_TAG=${tag}" \
    --label "org.opencontainers.image.revision=${revision}" \
    --tag "${image}" \
    "${repo_root}"
}

if [[ -z "${tag}" ]]; then
  die "no TAG given and no __version__ found in src/semcode/__init__.py"
fi

if [[ "${1:-}" == --local ]]; then
  shift
  if [[ $# -gt 0 && "$*" != cpu ]]; then
    die "--local builds the CPU image only (the GPU image starts from NVIDIA's CUDA images): got '$*'"
  fi
  build_local
  exit 0
fi

flavours=("$@")
if [[ ${#flavours[@]} -eq 0 ]]; then
  flavours=(cpu gpu)
fi

for flavour in "${flavours[@]}"; do
  if [[ "${flavour}" != cpu && "${flavour}" != gpu ]]; then
    die "unknown image '${flavour}': expected cpu and/or gpu"
  fi
  image="${registry}/semcode-${flavour}:${tag}"
  echo "==> building ${image}" >&2
  run "${docker}" build \
    --file "${repo_root}/images/Dockerfile.${flavour}" \
    --platform "${platform}" \
    --build-arg "SEMCODE_IMAGE_REGISTRY=${registry}" \
    --build-arg "SEMCODE_IMAGE_TAG=${tag}" \
    --label "org.opencontainers.image.revision=${revision}" \
    --tag "${image}" \
    "${repo_root}"
  if [[ "${push}" == 1 ]]; then
    echo "==> pushing ${image}" >&2
    run "${docker}" push "${image}"
  fi
done
