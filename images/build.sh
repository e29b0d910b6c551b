#!/usr/bin/env bash
# Build and push the semcode images under the names src/semcode/components/images.py gives the pipeline's components:
#   ${REGISTRY}/semcode-cpu:${TAG}   images/Dockerfile.cpu
#   ${REGISTRY}/semcode-gpu:${TAG}   images/Dockerfile.gpu
#
#   images/build.sh                                        # both, pushed to ghcr.io/semcode, tag = semcode version
#   REGISTRY=registry.example.com/ml TAG=2024.10 images/build.sh
#   PUSH=0 images/build.sh cpu                             # the CPU image only, kept local (e.g. for `kind load`)
#   DRY_RUN=1 images/build.sh                              # print the docker commands, run nothing
#
# REGISTRY defaults to $SEMCODE_IMAGE_REGISTRY, else ghcr.io/semcode; TAG to $SEMCODE_IMAGE_TAG, else the
# semcode version (src/semcode/__init__.py), the same defaults as src/semcode/components/images.py. Compile the pipeline
# with the same SEMCODE_IMAGE_REGISTRY and SEMCODE_IMAGE_TAG so its YAML names these images (each image
# compiles its own copy of src/semcode/pipeline/train_pipeline.yaml with them). Other settings: PUSH (1 push, 0 build
# only), DOCKER (docker, or podman), PLATFORM (linux/amd64).
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

run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    echo "$*"
  else
    "$@"
  fi
}

if [[ -z "${tag}" ]]; then
  echo "build.sh: no TAG given and no __version__ found in src/semcode/__init__.py" >&2
  exit 2
fi

flavours=("$@")
if [[ ${#flavours[@]} -eq 0 ]]; then
  flavours=(cpu gpu)
fi

for flavour in "${flavours[@]}"; do
  if [[ "${flavour}" != cpu && "${flavour}" != gpu ]]; then
    echo "build.sh: unknown image '${flavour}': expected cpu and/or gpu" >&2
    exit 2
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
