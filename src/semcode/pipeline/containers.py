"""``semcode run --runner docker``: every task in the container image the pipeline names, through kfp.local's
own DockerRunner, on this machine's Docker engine.

The subprocess runner proves the stage code; this proves the images: each component's command, its paths,
its user and its artifacts inside the image a cluster would run. What differs from the subprocess runner:

- **images**: each task runs in the image the compiled pipeline names (src/semcode/components/images.py).
  They must be on the engine already (``images/build.sh --local`` builds the CPU one): nothing is pulled.
  The tasks of the GPU image run in the CPU image here, and one line says so: the GPU image starts from
  NVIDIA's CUDA images, which no local build can make, and there is no GPU to use.
- **files**: the containers see this machine's paths at the same places: the run's artifacts (kfp.local's
  pipeline root) and checkpoints and a local registry read-write, local sources and a local starting
  encoder read-only.
  Their working directory is the current one, so relative source paths mean what they mean here.
- **user**: the image's own (uid 1000) when ``semcode run`` runs as root, to which the folders the tasks
  write are then handed; otherwise this user's uid with group 0 (the images let group 0
  write their home), so the files stay this user's.
- **network**: the host's, as for a subprocess (an S3 endpoint on 127.0.0.1 works); **environment**: only
  what the tasks read (checkpoints folder, OpenMP policy, S3 credentials, the TensorBoard prefix).
- **stopping**: a task cannot watch ``semcode run``'s pid from another pid namespace; each container carries
  the run's label instead, and a stopped run stops its containers (``stop_containers``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import semcode
from semcode import config as cfg
from semcode import storage
from semcode.data.sources.spec import SourceError, parse_spec
from semcode.progress import log

RUNNER_NAMES = ("subprocess", "docker")
IMAGE_USER = "1000:1000"  # images/Dockerfile.* USER
RUN_LABEL = "semcode.run"  # each task container: <label>=<the run's folder, the pipeline root's parent>
SHM_SIZE = "2g"  # torch's DataLoader workers share tensors through /dev/shm (Docker's default: 64 MB)
PATH_SOURCE_KINDS = ("dir", "csn", "pairs", "text", "humaneval")  # source kinds whose location is a path
# Environment variables a task reads, passed on when set here (the subprocess runner passes everything).
PASSED_ENVIRONMENT = (
    "OMP_WAIT_POLICY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    *storage.ENDPOINT_VARIABLES,
    semcode.TENSORBOARD_PREFIX_ENV,
)
BUILD_HINT = "build it with images/build.sh --local (images/README.md)"


def engine() -> Any:
    """A client of this machine's Docker engine; ConfigError in one line when none answers."""
    try:
        import docker
    except ImportError:
        raise cfg.ConfigError("--runner docker needs the docker package: pip install docker") from None
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as error:
        raise cfg.ConfigError(
            f"--runner docker: no Docker engine answers ({error}); start one (as root: images/engine.sh start)"
        ) from None
    return client


def executors(pipeline: Any) -> Any:
    """The compiled pipeline's executors (protobuf Struct): {label: {"container": {"image": ...}}}."""
    return pipeline.pipeline_spec.deployment_spec["executors"]


@contextmanager
def gpu_tasks_on_the_cpu_image(pipeline: Any, gpu_image: str, cpu_image: str) -> Iterator[list[str]]:
    """While inside, the executors that name ``gpu_image`` name ``cpu_image``; yields their labels."""
    swapped = []
    for label, executor in executors(pipeline).items():
        if executor["container"]["image"] == gpu_image:
            executor["container"]["image"] = cpu_image
            swapped.append(label)
    try:
        yield swapped
    finally:
        for label in swapped:
            executors(pipeline)[label]["container"]["image"] = gpu_image


def check_images(client: Any, pipeline: Any) -> list[str]:
    """The images the pipeline's tasks run; ConfigError naming those the engine does not have."""
    import docker

    images = sorted({executor["container"]["image"] for executor in executors(pipeline).values()})
    missing = []
    for image in images:
        try:
            client.images.get(image)
        except docker.errors.ImageNotFound:
            missing.append(image)
    if missing:
        raise cfg.ConfigError(
            f"--runner docker: image {', '.join(missing)} not found on the engine: {BUILD_HINT}"
        )
    return images


def local_paths(arguments: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(read-write, read-only) local paths the tasks of a run with these pipeline arguments use, absolute."""
    writable, readable = [], []
    registry = arguments.get("gate_registry") or ""
    if registry and not storage.is_s3(registry):
        writable.append(registry)
    for text in arguments.get("ingest_sources") or []:
        try:
            spec = parse_spec(text)
        except SourceError:
            continue  # prepare() has refused it already
        if spec.kind in PATH_SOURCE_KINDS and spec.location and not storage.is_s3(spec.location):
            readable.append(spec.location)
    init_from = arguments.get("train_encoder_init_from") or ""
    if init_from and not storage.is_s3(init_from) and os.path.exists(init_from):
        readable.append(init_from)
    return [str(Path(path).resolve()) for path in writable], [str(Path(path).resolve()) for path in readable]


def hand_to_image_user(paths: list[Path]) -> None:
    """Make ``paths`` (made if missing) and what is in them the image user's: root runs the tasks as uid 1000."""
    uid, gid = (int(part) for part in IMAGE_USER.split(":"))
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
        for folder, dirs, files in os.walk(path):
            for name in [folder, *(os.path.join(folder, entry) for entry in dirs + files)]:
                os.lchown(name, uid, gid)


def docker_runner(arguments: dict[str, Any], pipeline_root: Path, environment: dict[str, str]) -> Any:
    """kfp.local's DockerRunner for a run whose artifacts go to ``pipeline_root`` (absolute, in the run's
    folder) with these pipeline arguments and task ``environment``: the mounts, user, network, environment
    and label of every task container (see the module docstring). kfp.local mounts ``pipeline_root`` itself."""
    from docker.types import Mount
    from kfp import local

    writable, readable = local_paths(arguments)
    checkpoints = environment.get(semcode.RUN_CHECKPOINTS_ENV)
    writable = ([checkpoints] if checkpoints else []) + writable
    if os.getuid() == 0:
        hand_to_image_user([pipeline_root, *(Path(path) for path in writable)])
        user, groups = IMAGE_USER, []
    else:
        pipeline_root.mkdir(parents=True, exist_ok=True)  # else the engine makes it, as root
        user, groups = f"{os.getuid()}:{os.getgid()}", [0]
    mounts, seen = [], {str(pipeline_root)}
    for path, read_only in [(path, False) for path in writable] + [(path, True) for path in readable]:
        if path not in seen:
            seen.add(path)
            mounts.append(Mount(target=path, source=path, type="bind", read_only=read_only))
    passed = {name: os.environ[name] for name in PASSED_ENVIRONMENT if os.environ.get(name)}
    environment = {name: value for name, value in environment.items() if name != semcode.RUN_PID_ENV}
    return local.DockerRunner(
        # The task's command replaces the image's ENTRYPOINT (semcode), as a Kubernetes container's command
        # does on the cluster; docker-py's command alone would only replace CMD: `semcode sh -c ...`.
        entrypoint=[""],
        mounts=mounts,
        user=user,
        group_add=groups,
        working_dir=os.getcwd(),
        network_mode="host",
        shm_size=SHM_SIZE,
        environment={**passed, **environment},
        labels={RUN_LABEL: str(pipeline_root.parent)},
    )


def check(runner: str, pipeline: Any) -> None:
    """Before a run's folder is made: for ``runner`` docker, an engine answers and has every image
    ``pipeline`` names (the GPU image's tasks counted as the CPU image's); ConfigError in one line if not."""
    if runner == "docker":
        from semcode.components.images import CPU_IMAGE, GPU_IMAGE

        with gpu_tasks_on_the_cpu_image(pipeline, GPU_IMAGE, CPU_IMAGE):
            check_images(engine(), pipeline)


@contextmanager
def task_runner(
    runner: str, pipeline: Any, arguments: dict[str, Any], pipeline_root: Path, environment: dict[str, str]
) -> Iterator[Any]:
    """kfp.local's runner for ``runner`` (RUNNER_NAMES) while the block runs ``pipeline``. subprocess: each
    task a process in this environment (``use_venv=False``: nothing installed). docker: checked first (an
    engine, every image the pipeline names), with the GPU image's tasks on the CPU image inside the block."""
    from kfp import local

    from semcode.components.images import CPU_IMAGE, GPU_IMAGE

    if runner not in RUNNER_NAMES:
        raise cfg.ConfigError(f"--runner {runner}: expected one of {list(RUNNER_NAMES)}")
    if runner == "subprocess":
        yield local.SubprocessRunner(use_venv=False)
        return
    client = engine()
    with gpu_tasks_on_the_cpu_image(pipeline, GPU_IMAGE, CPU_IMAGE) as swapped:
        if swapped:
            log(
                "run",
                f"docker: {len(swapped)} tasks of {GPU_IMAGE} run in {CPU_IMAGE} here (no GPU image locally)",
            )
        images = check_images(client, pipeline)
        log("run", f"docker: every task runs in {', '.join(images)}")
        yield docker_runner(arguments, pipeline_root, environment)


def stop_containers(run_dir: Path, seconds: float) -> list[str]:
    """Stop (SIGTERM, then SIGKILL after ``seconds``) every running container of the run in ``run_dir``:
    the training tasks save a checkpoint on SIGTERM. Returns their ids; none without an engine."""
    try:
        client = engine()
    except cfg.ConfigError:
        return []
    found = client.containers.list(filters={"label": f"{RUN_LABEL}={run_dir}"})
    for container in found:
        container.stop(timeout=int(seconds))
    return [container.short_id for container in found]
