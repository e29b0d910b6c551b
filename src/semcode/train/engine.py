"""The DeepSpeed training engine shared by the encoder and decoder stages: a few plain functions.

Every run goes through ``deepspeed.initialize``, on a laptop CPU (gloo, one process, fp32) and on GPUs
(NCCL, bf16, ZeRO stage 1 or 2) alike. A stage sets up and calls the shared loop (``run_steps``)::

    setup_distributed()                                   # env defaults for one process, process group
    seed_everything(seed)
    optimizer = adamw(model, lr, weight_decay)            # a torch optimizer: DeepSpeed builds no C++ Adam
    scheduler = warmup_cosine_schedule(optimizer, warmup_steps, total_steps, min_lr_ratio)
    engine = initialize(model, optimizer, scheduler, deepspeed_config(...))
    plan = plan_steps(len(pairs), batch_size, grad_accum, world_size, epochs, max_steps, ...)
    state = resume_state(checkpoints_dir, engine, resume, run_shape)  # None for a fresh run
    log = TrainingLog("encoder", "pairs", plan.total_steps, plan.epochs)  # history.json and progress lines
    step, stopped_by = run_steps(engine, plan, log, schedule, micro_batches, forward, evaluate, ...)
        # per micro-batch: forward, engine.backward(loss), engine.step() (steps LR, clips, accumulates);
        # after each optimizer step: the time budget, evaluate when due, save_checkpoint when due

Checkpoint layout (one directory per optimizer step)::

    checkpoints/
      step-000120/
        model.safetensors   full fp32 weights, loadable without DeepSpeed (load_weights). Under ZeRO 1/2
                            or bf16 they come from the optimizer's fp32 master copy, gathered across ranks
        trainer_state.pt    the caller's state (step, data position, history, ...)
        rng_state_rank0.pt  python, numpy and torch RNG states, one file per rank
        deepspeed/          engine.save_checkpoint: module, optimizer and LR scheduler state; DeepSpeed
                            partitions the optimizer per rank under ZeRO, so any stage resumes the same way
      latest                the name of the newest complete checkpoint, written only after it is complete

A checkpoint is written to ``step-000120.partial/`` and renamed when complete, so a crash mid-write never
leaves a directory that ``latest`` could point to.

On CPU with two or more ranks the first ``deepspeed.init_distributed`` in a fresh environment compiles
DeepSpeed's shared-memory communication op (about 40 s on 2 cores); it is cached under
``TORCH_EXTENSIONS_DIR`` (torch's default: ``~/.cache/torch_extensions``), after which set-up takes well
under a second. A single CPU process skips it (``setup_distributed``): a world of one reduces nothing.

Live metrics (docs/observability.md): ``run_steps`` writes TensorBoard event files as it trains, with
torch.utils.tensorboard, into the stage's output directory::

    tensorboard/            rank 0: train/* (loss and its parts, lr, grad_norm, items_per_second, as-is
                            values such as the temperature), valid/* (each evaluation), rank/* (its own)
    tensorboard/rank-1/     rank 1: its rank/* only (items_per_second, step_seconds, data_wait_seconds,
                            peak_rss_mib, cuda_max_allocated_mib), and so on per rank

``SEMCODE_TENSORBOARD_DIR=/some/dir`` also writes the same files to ``/some/dir/<tag>/`` (a local or mounted
path); with ``s3://bucket/prefix`` each rank uploads its event files to ``<prefix>/<tag>/[rank-<r>/]`` every
``TENSORBOARD_UPLOAD_SECONDS`` while it trains and once more at the end (EventFileMirror), so
``tensorboard --logdir s3://bucket/prefix`` shows the curves live. ``SEMCODE_TENSORBOARD=0`` writes none
(for benchmarks).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import resource
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import semcode
from semcode import storage
from semcode.config import ConfigError
from semcode.progress import Progress, format_seconds, log
from semcode.train.safe_load import check_checkpoint

CHECKPOINT_PREFIX = "step-"
DURABLE_CHECKPOINT_DIR = "checkpoint"  # <checkpoint_root>/step-NNNNNN/checkpoint/: the local step-NNNNNN/
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: what Kubernetes reports for a container stopped by its signal
LATEST_FILE = "latest"
WEIGHTS_FILE = "model.safetensors"
TRAINER_STATE_FILE = "trainer_state.pt"
DEEPSPEED_TAG = "deepspeed"
DEEPSPEED_CONFIG_FILE = "deepspeed_config.json"
ZERO_STAGES = (0, 1, 2)
SHM_COMM_OP = (
    "deepspeed_shm_comm"  # deepspeed.ops.__compatible_ops__ name of the CPU shared-memory all-reduce
)
TENSORBOARD_DIR = "tensorboard"  # inside the stage's output directory, so the artifact carries the curves
TENSORBOARD_PREFIX_ENV = semcode.TENSORBOARD_PREFIX_ENV  # a second place for them: <prefix>/<tag>/
TENSORBOARD_SWITCH_ENV = "SEMCODE_TENSORBOARD"  # "0": no event files at all (throughput benchmarks)
TENSORBOARD_FLUSH_SECONDS = 5  # how stale a live curve may be; the writer's own thread flushes
TENSORBOARD_UPLOAD_SECONDS = 30.0  # how stale a curve on S3 may be: one PUT per grown event file


# ---------------------------------------------------------------------------------------------------------
# Distributed set-up and DeepSpeed


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def setup_distributed() -> str:
    """Initialise the process group DeepSpeed needs; returns the backend ("nccl" or "gloo").

    Launched by the deepspeed launcher or torchrun the environment already names rank and world size;
    a plain ``python``/``semcode`` process becomes rank 0 of a world of 1 on a free local port.
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # skips DeepSpeed's accelerator probing warning
    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)  # its INFO lines would drown our progress
    single_process = os.environ.get("WORLD_SIZE", "1") == "1"
    if (single_process and not torch.distributed.is_initialized()) or not os.environ.get("MASTER_PORT"):
        # A world of one needs no agreed port, and an inherited MASTER_PORT may be held by the parent
        # process's own process group (a runner that trained in-process, then started a subprocess).
        os.environ["MASTER_PORT"] = str(_free_port())
    for name, value in (
        ("RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("LOCAL_RANK", "0"),
        ("MASTER_ADDR", "127.0.0.1"),
    ):
        os.environ.setdefault(name, value)
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    elif single_process:
        # DeepSpeed's CPU backend compiles its shared-memory all-reduce op (about 40 s on 2 cores, once
        # per environment) even for a world of one, where there is nothing to reduce: mark it
        # unavailable so its comm backend falls back to gloo without building it.
        deepspeed.ops.__compatible_ops__[SHM_COMM_OP] = False
    deepspeed.init_distributed(dist_backend=backend)
    return backend


def rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def deepspeed_config(
    micro_batch_size: int,
    grad_accum: int = 1,
    grad_clip: float = 1.0,
    zero_stage: int = 0,
    bf16: bool | None = None,
) -> dict[str, Any]:
    """The DeepSpeed config for one run; ``bf16`` defaults to on with CUDA, off on CPU.

    No optimizer or scheduler section: both are passed to ``initialize`` as torch objects.
    """
    if zero_stage not in ZERO_STAGES:
        raise ValueError(f"zero_stage must be one of {ZERO_STAGES}, got {zero_stage}")
    if micro_batch_size < 1 or grad_accum < 1:
        raise ValueError(
            f"micro_batch_size and grad_accum must be >= 1, got {micro_batch_size}, {grad_accum}"
        )
    use_bf16 = torch.cuda.is_available() if bf16 is None else bf16
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": grad_clip,
        "bf16": {"enabled": use_bf16},
        "zero_optimization": {"stage": zero_stage},
        "steps_per_print": 10**9,  # our TrainingLog prints progress; DeepSpeed's own lines stay silent
        "wall_clock_breakdown": False,
    }
    if zero_stage > 0:
        config["zero_optimization"].update({"overlap_comm": True, "contiguous_gradients": True})
    return config


def save_deepspeed_config(config: dict[str, Any], out_dir: str | Path) -> Path:
    path = Path(out_dir) / DEEPSPEED_CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


def initialize(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    ds_config: dict[str, Any],
) -> Any:
    """``deepspeed.initialize`` with our torch optimizer and scheduler; returns the DeepSpeedEngine.

    The engine moves the model to the device, casts it to bf16 when configured, steps the scheduler
    at each gradient-accumulation boundary and clips gradients. Call ``setup_distributed()`` first.
    """
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    return engine


# ---------------------------------------------------------------------------------------------------------
# Seeds, optimizer, schedule


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices); data order is seeded separately, per epoch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def adamw(model: torch.nn.Module, lr: float, weight_decay: float = 0.01) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases, norms and scalars (parameters with fewer than 2 dims)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.999), eps=1e-8)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """LR multiplier for the update after ``step`` updates: linear warmup, then cosine down to min_lr_ratio.

    The first update uses 1/warmup_steps of the peak (never 0), update ``warmup_steps - 1`` the peak,
    the last one (``total_steps - 1``) close to ``min_lr_ratio``; past the end it stays there.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    if warmup_steps < 0 or total_steps < 1 or not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(
            f"bad schedule: warmup_steps={warmup_steps} (>= 0), total_steps={total_steps} (>= 1), "
            f"min_lr_ratio={min_lr_ratio} (0..1)"
        )
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, warmup_steps, total_steps, min_lr_ratio)
    )


def current_lr(engine: Any) -> float:
    """The LR the next update will use (the first param group's)."""
    return float(engine.optimizer.param_groups[0]["lr"])


# ---------------------------------------------------------------------------------------------------------
# Weights and checkpoints


def unwrap(model: Any) -> torch.nn.Module:
    """The plain module inside a DeepSpeedEngine (or the module itself)."""
    return getattr(model, "module", model)


def full_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """A CPU state dict with full fp32 weights, every key present (tied weights as separate copies).

    Under ZeRO 1/2 and bf16 the module holds low-precision or partitioned weights; DeepSpeed's
    ``safe_get_full_fp32_param`` returns the fp32 master copy (a collective: every rank must call this).
    """
    from deepspeed.utils import safe_get_full_fp32_param

    module = unwrap(model)
    masters: dict[str, torch.Tensor] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        master = safe_get_full_fp32_param(param)
        masters[name] = master if master is not None else param.detach()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in module.state_dict().items():
        value = masters.get(name, tensor)
        if value.is_floating_point():
            value = value.float()
        out[name] = value.detach().to("cpu").contiguous().clone()  # clone: safetensors refuses shared storage
    return out


def save_weights(model: Any, path: str | Path) -> Path:
    """Write full fp32 weights as safetensors (rank 0 writes; every rank must call)."""
    state = full_state_dict(model)
    path = Path(path)
    if is_main_process():
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(state, str(path))
    return path


def load_weights(model: torch.nn.Module, path: str | Path, strict: bool = True) -> None:
    """Load a ``model.safetensors`` written by save_weights into a plain module (no DeepSpeed needed)."""
    state = load_file(str(path))
    unwrap(model).load_state_dict(state, strict=strict)


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:06d}"


def list_checkpoints(checkpoints_dir: str | Path) -> list[Path]:
    """Complete checkpoint directories, oldest first."""
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX)]
    found = [
        p for p in found if not p.name.endswith(".partial") and p.name[len(CHECKPOINT_PREFIX) :].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def latest_checkpoint(checkpoints_dir: str | Path) -> Path | None:
    """The checkpoint the ``latest`` pointer names, or None when there is no pointer."""
    pointer = Path(checkpoints_dir) / LATEST_FILE
    if not pointer.exists():
        return None
    path = Path(checkpoints_dir) / pointer.read_text().strip()
    if not path.is_dir():
        raise FileNotFoundError(f"{pointer} names {path.name}, which does not exist")
    return path


def rng_state_file(rank: int) -> str:
    return f"rng_state_rank{rank}.pt"


def _rng_state() -> dict[str, Any]:
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state(legacy=True)
    return {
        "python": random.getstate(),
        "numpy": (np_name, np_keys.tolist(), np_pos, np_has_gauss, np_gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np.asarray(np_keys, dtype=np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    checkpoints_dir: str | Path, engine: Any, step: int, state: dict[str, Any], keep: int = 3
) -> Path:
    """Write ``checkpoints_dir/step-NNNNNN/`` (weights, DeepSpeed state, ``state`` + RNG), then ``latest``.

    ``state`` is the caller's resumable state: plain Python values and tensors (step, data position,
    history, best metric). Keeps the newest ``keep`` checkpoints (0 keeps all). Every rank must call.
    """
    root = Path(checkpoints_dir)
    final = root / checkpoint_name(step)
    partial = root / (final.name + ".partial")
    if is_main_process():
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    barrier()
    engine.save_checkpoint(str(partial), tag=DEEPSPEED_TAG, save_latest=False)
    save_weights(engine, partial / WEIGHTS_FILE)
    torch.save(_rng_state(), partial / rng_state_file(rank()))  # each rank draws its own dropout masks
    if is_main_process():
        torch.save({**state, "step": step}, partial / TRAINER_STATE_FILE)
    barrier()
    if is_main_process():
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        write_latest(root, final.name)
        if keep > 0:
            for old in list_checkpoints(root)[:-keep]:
                if old != final:
                    shutil.rmtree(old, ignore_errors=True)
    barrier()
    return final


def write_latest(checkpoints_dir: Path, name: str) -> None:
    """Point ``latest`` at ``name``, atomically: it always names a complete checkpoint."""
    pointer_tmp = checkpoints_dir / (LATEST_FILE + ".tmp")
    pointer_tmp.write_text(name + "\n")
    os.replace(pointer_tmp, checkpoints_dir / LATEST_FILE)


def load_latest_checkpoint(checkpoints_dir: str | Path, engine: Any) -> dict[str, Any] | None:
    """Restore module, optimizer, LR scheduler and RNG states from ``latest``; returns the saved state.

    Returns None when there is no checkpoint yet (a fresh run). Call after ``initialize`` with an
    engine built exactly as before (same model, optimizer, schedule and DeepSpeed config).
    """
    path = latest_checkpoint(checkpoints_dir)
    if path is None:
        return None
    check_checkpoint(path)  # DeepSpeed unpickles without weights_only: nothing planted gets that far
    load_path, _ = engine.load_checkpoint(str(path), tag=DEEPSPEED_TAG)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint in {path / DEEPSPEED_TAG}")
    state = torch.load(path / TRAINER_STATE_FILE, map_location="cpu", weights_only=True)
    rng_file = path / rng_state_file(rank())
    if not rng_file.is_file():
        raise FileNotFoundError(f"{rng_file} is missing: was {path.name} written with fewer ranks?")
    _set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=True))
    state["path"] = str(path)
    return state


# ---------------------------------------------------------------------------------------------------------
# What survives the pod: durable checkpoints, and SIGTERM


class Preempted(RuntimeError):
    """SIGTERM stopped training once a checkpoint was written (and made durable): the process should exit
    non-zero (PREEMPTED_EXIT_CODE from the command line) so that a retry continues from the checkpoint."""


def durable_location(root: str, run_id: str, task: str) -> str:
    """``<root>/<run_id>/<task>``: where one task of one pipeline run keeps its checkpoints. Without a
    root, a task of ``semcode run`` keeps them in its run's folder, ``$SEMCODE_RUN_CHECKPOINTS/<task>``;
    anything else keeps none ('')."""
    import semcode

    if not root:
        run_checkpoints = os.environ.get(semcode.RUN_CHECKPOINTS_ENV, "")
        return (
            storage.join(run_checkpoints, storage.check_relative_name(task, "task name"))
            if run_checkpoints
            else ""
        )
    for value, what in ((run_id, "pipeline run id"), (task, "task name")):
        if not value or "/" in value:
            raise ValueError(f"{what} {value!r} must be one non-empty path segment")
        storage.check_relative_name(value, what)
    return storage.join(root, run_id, task)


class DurableCheckpointError(storage.StorageError):
    """The durable store failed mid-training (after the S3 client's own retries)."""


@dataclass(frozen=True)
class DurableCheckpoints:
    """``root`` (an s3:// prefix, or a folder on a volume that outlives the pod) mirrors ``checkpoints/``.

    Layout under ``root``::

        step-000120/checkpoint/...   the local checkpoints/step-000120/, as save_checkpoint wrote it
        step-000120/<extra>/...      each folder of ``extras`` (the best weights so far) at that step
        latest                       the name of the newest complete upload, written last

    ``push`` uploads a complete local checkpoint (botocore retries failed requests, with backoff), and
    only then moves ``latest``: a task killed mid-upload leaves ``latest`` on the previous complete
    upload, never on a half one. It then deletes all but the newest ``keep`` uploads (0 keeps all).
    ``restore`` copies the upload ``latest`` names back into the local folders, for the stage to resume
    from exactly as from its own checkpoints. Ranks share the local checkpoints folder (one node, or a
    shared volume): the main process uploads and downloads, the others wait at a barrier.
    """

    root: str
    checkpoints_dir: Path
    extras: tuple[Path, ...] = ()
    keep: int = 2

    def restore(self) -> str | None:
        """Download the upload ``latest`` names into the local folders; its name, or None (no upload yet)."""
        pointer = storage.join(self.root, LATEST_FILE)
        if not storage.exists(pointer):
            return None
        name = storage.check_relative_name(
            storage.read_text(pointer).strip(), f"the checkpoint {pointer} names"
        )
        source = storage.join(self.root, name)
        local = self.checkpoints_dir / name
        shutil.rmtree(local, ignore_errors=True)
        storage.copy_tree(storage.join(source, DURABLE_CHECKPOINT_DIR), local)
        for folder in self.extras:
            shutil.rmtree(folder, ignore_errors=True)
            if storage.list_files(storage.join(source, folder.name)):
                storage.copy_tree(storage.join(source, folder.name), folder)
        write_latest(self.checkpoints_dir, name)
        return name

    def push(self, checkpoint: Path) -> str:
        """Upload a complete local checkpoint (and the extras), then ``latest``; returns where it went.

        Raises DurableCheckpointError (a StorageError) when the store stays unreachable after the S3
        client's retries: the task ends (the stages exit 1 with that one line) and ``latest`` still names
        the previous complete upload, which a retry continues from.
        """
        target = storage.join(self.root, checkpoint.name)
        try:
            storage.remove_tree(target)  # what a killed earlier upload of this step left
            _mirror(checkpoint, storage.join(target, DURABLE_CHECKPOINT_DIR))
            for folder in self.extras:  # copied: unlike a checkpoint, an extra is rewritten in place
                if folder.is_dir() and any(folder.iterdir()):
                    storage.copy_tree(folder, storage.join(target, folder.name))
            storage.write_text(storage.join(self.root, LATEST_FILE), checkpoint.name + "\n")
            if self.keep > 0:
                for old in self.uploads()[: -self.keep]:
                    storage.remove_tree(storage.join(self.root, old))
        except storage.StorageError as error:
            raise DurableCheckpointError(
                f"durable checkpoint {checkpoint.name} not stored: {error}; {storage.join(self.root, LATEST_FILE)} "
                "still names the last complete upload, which a retry of the task continues from"
            ) from None
        return target

    def uploads(self) -> list[str]:
        """The step-NNNNNN names under ``root``, oldest first (complete or not: ``latest`` says which is)."""
        prefix = self.root.rstrip("/") + "/"  # list_files gives root/name, local or s3://
        names = {uri[len(prefix) :].split("/")[0] for uri in storage.list_files(self.root)}
        return sorted(name for name in names if name.startswith(CHECKPOINT_PREFIX))


def restore_durable(
    config: Any, checkpoints_dir: Path, extras: tuple[Path, ...] = ()
) -> tuple[DurableCheckpoints | None, bool]:
    """Before ``resume_state``, for a training stage config (``checkpoint_root``, ``keep_checkpoints``,
    ``resume``): the stage's DurableCheckpoints (None without a root), with the newest durable checkpoint
    brought into the local folder (by the main process; every rank calls), and whether to resume: asked
    for, or a durable checkpoint found."""
    if not config.checkpoint_root:
        return None, config.resume
    durable = DurableCheckpoints(config.checkpoint_root, checkpoints_dir, extras, config.keep_checkpoints)
    if is_main_process():
        name = durable.restore()
        log("train", f"checkpoint_root {durable.root}: " + (f"restored {name}" if name else "nothing yet"))
    barrier()
    return durable, config.resume or (checkpoints_dir / LATEST_FILE).exists()


def _mirror(folder: Path, destination: str) -> None:
    """Copy a complete checkpoint folder to S3 or another folder; on the same local file system, hard
    links instead: save_checkpoint never writes a complete checkpoint's files again (a new one is a new
    folder), so a link is as good as a copy, and `semcode run`'s durable copy of a 360 MB checkpoint
    costs nothing."""
    if not storage.is_s3(destination):
        try:
            shutil.copytree(folder, destination, copy_function=os.link)
            return
        except OSError:  # another file system (EXDEV) or no links there: copy
            shutil.rmtree(destination, ignore_errors=True)
    storage.copy_tree(folder, destination)


class StopRequest:
    """SIGTERM (Kubernetes' notice, a grace period before SIGKILL) as a flag the loop reads between steps.

    Installed only in the main thread (Python delivers signals there); elsewhere it never fires. With
    several ranks ``agreed`` all-reduces the flag, so every rank stops at the same step even when only
    one was signalled.
    """

    def __init__(self) -> None:
        self.received = False
        self._previous: Any = None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = True

    def agreed(self, device: Any) -> bool:
        if not (torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
            return self.received
        flag = torch.tensor([float(self.received)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())


# ---------------------------------------------------------------------------------------------------------
# The loop's bookkeeping: how many steps, resuming, when to evaluate, checkpoint and stop


@dataclass(frozen=True)
class StepPlan:
    """The shape of a run, in optimizer steps and in this rank's micro-batches."""

    micro_per_epoch: int  # micro-batches per epoch on each rank
    total_steps: int  # optimizer steps of the whole run
    total_micro: int  # micro-batches of the whole run on each rank (total_steps * grad_accum)
    epochs: int  # epochs started, the last one possibly partial
    warmup_steps: int


def plan_steps(
    num_items: int,
    batch_size: int,
    grad_accum: int,
    world_size: int,
    epochs: int,
    max_steps: int = 0,
    warmup_steps: int = 0,
    warmup_ratio: float = 0.0,
    unit: str = "training pairs",
) -> StepPlan:
    """Steps of a run over ``num_items`` examples cut into full micro-batches (semcode.train.data.epoch_batches).

    ``max_steps`` > 0 wins over ``epochs``; ``warmup_steps`` 0 means ``warmup_ratio`` of the steps.
    Raises ValueError when the data makes no optimizer step at all.
    """
    micro_per_epoch = num_items // (batch_size * world_size)
    total_steps = max_steps or (epochs * micro_per_epoch) // grad_accum
    if micro_per_epoch == 0 or total_steps == 0:
        raise ValueError(
            f"{num_items} {unit} make no optimizer step with batch_size {batch_size}, "
            f"grad_accum {grad_accum} and {world_size} rank(s); use more pairs or smaller batches"
        )
    total_micro = total_steps * grad_accum
    return StepPlan(
        micro_per_epoch=micro_per_epoch,
        total_steps=total_steps,
        total_micro=total_micro,
        epochs=math.ceil(total_micro / micro_per_epoch),
        warmup_steps=warmup_steps or round(warmup_ratio * total_steps),
    )


def check_checkpoints_dir(checkpoints_dir: str | Path, resume: bool, checkpoint_root: str = "") -> None:
    """Refuse to start a fresh run over an earlier run's checkpoints, or with a ``checkpoint_root`` that
    cannot be written (call before any expensive work).

    Never mix two runs' checkpoints (pruning would then delete the new ones), never delete a run.
    """
    if checkpoint_root:
        storage.check_writable(checkpoint_root, "checkpoint_root")
    if not resume and (Path(checkpoints_dir) / LATEST_FILE).exists():
        raise ValueError(
            f"{checkpoints_dir} holds an earlier run's checkpoints; pass --resume to continue it, "
            "or use a new --out directory"
        )


def resume_state(
    checkpoints_dir: str | Path, engine: Any, resume: bool, run_shape: dict[str, Any]
) -> dict[str, Any] | None:
    """With ``resume``, restore the latest checkpoint and return its state (None when there is none yet).

    ``run_shape`` (total steps, batch size, seed, data size, ...) must equal the one the checkpoint was
    saved with (``state["run"]``): a run of another shape would not continue the same run.
    """
    state = load_latest_checkpoint(checkpoints_dir, engine) if resume else None
    if state is not None and state["run"] != run_shape:
        raise ConfigError(
            f"cannot resume from {state['path']}: it was trained with {state['run']}, this run has {run_shape}"
        )
    return state


def time_budget_exceeded(run_started: float, budget_minutes: float, device: Any) -> bool:
    """True once ``budget_minutes`` (0 = none) have passed since ``run_started`` (a perf_counter value).

    With several ranks the slowest rank's clock decides, so every rank stops at the same step.
    """
    if not budget_minutes:
        return False
    elapsed = torch.tensor(float(time.perf_counter() - run_started))
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        elapsed = elapsed.to(device)
        torch.distributed.all_reduce(elapsed, op=torch.distributed.ReduceOp.MAX)
    return float(elapsed) > budget_minutes * 60


def is_due(step: int, every: int) -> bool:
    """Whether a periodic action (evaluation, checkpoint) runs after ``step``; ``every`` 0 = never."""
    return every > 0 and step % every == 0


@dataclass(frozen=True)
class LoopSchedule:
    """When ``run_steps`` evaluates, checkpoints and stops (0 = never / no budget)."""

    grad_accum: int
    eval_every: int
    checkpoint_every: int
    keep_checkpoints: int
    time_budget_minutes: float

    @classmethod
    def from_config(cls, config: Any) -> LoopSchedule:
        """From a stage config that has the five fields of the same names (both training stages do)."""
        return cls(
            config.grad_accum,
            config.eval_every,
            config.checkpoint_every,
            config.keep_checkpoints,
            config.time_budget_minutes,
        )


class StepOutput(NamedTuple):
    """What one micro-batch's forward pass gives the loop (the ``forward`` callback of ``run_steps``)."""

    loss: torch.Tensor  # to backpropagate
    averaged: dict[
        str, torch.Tensor
    ]  # averaged over the accumulated micro-batches for the log, e.g. {"loss": ..}
    items: int  # what the micro-batch trained on (pairs, tokens): for items/s
    as_is: dict[str, float]  # logged as they are, e.g. a learnable temperature


class LoopResult(NamedTuple):
    last_step: int  # the last optimizer step taken
    stopped_by: str  # "steps" (the plan's end) or "time_budget"


def run_steps(
    engine: Any,
    plan: StepPlan,
    log_: TrainingLog,
    schedule: LoopSchedule,
    checkpoints_dir: Path,
    run_shape: dict[str, Any],
    start_step: int,
    micro_batches: Callable[[int, int, int], Iterable[Any]],
    forward: Callable[[Any], StepOutput],
    evaluate: Callable[[int], None],
    tensorboard_dir: Path | None = None,
    durable: DurableCheckpoints | None = None,
) -> LoopResult:
    """The training loop of both stages, from optimizer step ``start_step`` to the plan's end or the budget.

    ``micro_batches(epoch, position, count)`` yields this rank's micro-batches ``position`` ..
    ``position + count`` of that (0-based) epoch, at most to its end. ``forward(batch)`` runs the engine
    and returns (the loss to backpropagate, the values to average over the accumulated micro-batches
    for the progress line, e.g. ``{"loss": ...}``, the items the micro-batch trained on, values logged
    as they are, e.g. a learnable temperature). ``evaluate(step)`` runs when due and at the end.
    ``tensorboard_dir`` (default: ``checkpoints_dir``'s parent, the stage's output directory, /
    tensorboard) receives the live metrics. ``durable``: each checkpoint is also uploaded there.
    Returns the last optimizer step and what stopped the run ("steps" or "time_budget").

    SIGTERM (a preempted or evicted pod) ends the run after the optimizer step under way: a checkpoint
    (made durable), an evaluation only if one was due anyway (so the history matches an uninterrupted
    run's), then Preempted is raised.
    """
    ranks = world_size()
    step = start_step
    run_started = time.perf_counter()
    micro_step = step * schedule.grad_accum  # the data position: global index of the next micro-batch
    log_.start_live(tensorboard_dir or Path(checkpoints_dir).parent / TENSORBOARD_DIR, start_step)
    # DeepSpeed records the gradient norm only when its optimizer wrapper computes one (ZeRO 1/2, bf16);
    # with a plain torch optimizer (fp32, ZeRO 0: the CPU runs) it clips without keeping the norm.
    own_grad_norm = not hasattr(engine.optimizer, "_global_grad_norm")
    epochs_done = micro_step // plan.micro_per_epoch
    stopped_by = "steps"
    sums: dict[str, float] = {}
    items = 0
    data_seconds = 0.0
    allreduce = AllReduceClock(engine)
    checkpoint = None
    with StopRequest() as stop_request:
        try:
            while micro_step < plan.total_micro and stopped_by == "steps":
                epoch, position = divmod(micro_step, plan.micro_per_epoch)
                batches = micro_batches(epoch, position, plan.total_micro - micro_step)
                for batch, waited in _timed(batches):
                    data_seconds += waited
                    output = forward(batch)
                    engine.backward(output.loss)
                    for name, value in output.averaged.items():
                        sums[name] = sums.get(name, 0.0) + float(value.detach()) / schedule.grad_accum
                    items += output.items
                    as_is = output.as_is
                    boundary = engine.is_gradient_accumulation_boundary()
                    lr = current_lr(engine)  # the LR of this update: the scheduler steps after it
                    # Before the step: gradients are all-reduced by now and not yet clipped.
                    grad_norm = gradient_norm(engine) if boundary and own_grad_norm else None
                    engine.step()
                    micro_step += 1
                    if not boundary:
                        continue

                    step += 1
                    if not math.isfinite(sums["loss"]):
                        raise FloatingPointError(
                            f"loss is {sums['loss']} at step {step}; try a lower lr or grad_clip"
                        )
                    if grad_norm is None:
                        norm = engine.get_global_grad_norm()  # None when DeepSpeed computed none
                        grad_norm = None if norm is None else float(norm)
                    log_.step(
                        step,
                        epoch + 1,
                        {**sums, **as_is},
                        lr,
                        items * ranks,
                        rank_items=items,
                        grad_norm=grad_norm,
                        data_seconds=data_seconds,
                        allreduce_seconds=allreduce.take(),
                    )
                    sums, items, data_seconds = {}, 0, 0.0

                    last = step == plan.total_steps
                    if not last and stop_request.agreed(engine.device):
                        stopped_by = "preempted"
                        log_.message(f"SIGTERM: stopping after step {step} with a checkpoint")
                    elif not last and time_budget_exceeded(
                        run_started, schedule.time_budget_minutes, engine.device
                    ):
                        stopped_by = "time_budget"
                        log_.message(
                            f"time budget of {schedule.time_budget_minutes} min reached at step {step}"
                        )
                    final = last or stopped_by != "steps"
                    if is_due(step, schedule.eval_every) or (final and stopped_by != "preempted"):
                        evaluate(step)
                    if final or is_due(step, schedule.checkpoint_every):
                        train_state = {"run": run_shape, "micro_step": micro_step, "history": log_.history}
                        checkpoint = save_checkpoint(
                            checkpoints_dir, engine, step, train_state, schedule.keep_checkpoints
                        )
                        if durable is not None:
                            if is_main_process():
                                checkpoint = durable.push(checkpoint)
                            barrier()
                        log_.message(f"checkpoint {checkpoint}")
                        log_.restart_clock()
                    while epochs_done < micro_step // plan.micro_per_epoch:
                        epochs_done += 1
                        log_.end_epoch(epochs_done, step, complete=True)
                    if final:
                        if micro_step % plan.micro_per_epoch:  # max_steps or the budget ended it mid-epoch
                            log_.end_epoch(epochs_done + 1, step, complete=False)
                        break
        finally:
            log_.flush_live()  # a crash keeps the curves up to it
    if stopped_by == "preempted":
        raise Preempted(
            f"stopped by SIGTERM after step {step}: checkpoint {checkpoint}; a retry of the task"
            + (" (or a new run with its --resume)" if durable else " with --resume")
            + " continues from it"
        )
    return LoopResult(step, stopped_by)


class AllReduceClock:
    """Seconds this rank spends in DeepSpeed's gradient all-reduce: the transfer and the wait for the
    slowest rank, the idle time a load imbalance costs.

    DeepSpeed's engine calls ``engine.allreduce_gradients`` from ``backward`` (every ZeRO stage: the
    whole reduction with ZeRO 0/1, what overlapping did not hide with ZeRO 2); this wraps that bound
    method with a clock, on CUDA synchronising first so the clock sees NCCL's work, not its launch.
    Installed only with two or more ranks: a world of one reduces nothing.
    """

    def __init__(self, engine: Any) -> None:
        self.seconds = 0.0
        original = getattr(engine, "allreduce_gradients", None)
        if original is None or world_size() < 2:
            return
        on_cuda = getattr(engine, "device", torch.device("cpu")).type == "cuda"

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                if on_cuda:
                    torch.cuda.synchronize(engine.device)
                self.seconds += time.perf_counter() - started

        engine.allreduce_gradients = timed

    def take(self) -> float:
        """The seconds since the last take."""
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def _timed(batches: Iterable[Any]) -> Iterable[tuple[Any, float]]:
    """(batch, seconds spent getting it): the loop's wait on data (a DataLoader's workers, tokenizing)."""
    iterator = iter(batches)
    while True:
        started = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            return
        yield batch, time.perf_counter() - started


def gradient_norm(engine: Any) -> float:
    """The global L2 norm of the module's gradients (what DeepSpeed's clipping measures before it clips).

    Call after the accumulation boundary's ``backward`` (DeepSpeed has all-reduced the gradients there)
    and before ``step``, which clips and then zeroes them.
    """
    grads = [p.grad.detach() for p in unwrap(engine).parameters() if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))


def peak_rss_mib() -> float:
    """This process's peak resident memory (not its DataLoader workers'), in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


# ---------------------------------------------------------------------------------------------------------
# History and progress


def _format_value(value: float) -> str:
    return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def live_log_dirs(tag: str, tensorboard_dir: str | Path) -> list[Path]:
    """Where rank 0's event files are written: ``tensorboard_dir``, and ``$SEMCODE_TENSORBOARD_DIR/<tag>``
    when that is a local (or mounted) path. Empty with ``SEMCODE_TENSORBOARD=0``. An ``s3://`` prefix is
    not written to directly: see ``live_log_upload``."""
    if os.environ.get(TENSORBOARD_SWITCH_ENV, "1") == "0":
        return []
    dirs = [Path(tensorboard_dir)]
    prefix = os.environ.get(TENSORBOARD_PREFIX_ENV, "")
    if prefix and not storage.is_s3(prefix):
        if "://" in prefix:
            raise ValueError(f"{TENSORBOARD_PREFIX_ENV}={prefix}: give a local path or an s3:// prefix")
        dirs.append(Path(prefix) / tag)
    return dirs


def live_log_upload(tag: str) -> str | None:
    """The S3 prefix that rank 0's event files are uploaded to while training (``<prefix>/<tag>``), when
    ``$SEMCODE_TENSORBOARD_DIR`` is an ``s3://`` prefix (and logging is on); else None."""
    prefix = os.environ.get(TENSORBOARD_PREFIX_ENV, "")
    if os.environ.get(TENSORBOARD_SWITCH_ENV, "1") == "0" or not storage.is_s3(prefix):
        return None
    return storage.join(prefix, tag)


def check_live_log_prefix(tag: str) -> None:
    """Fail before training, naming the variable, when ``$SEMCODE_TENSORBOARD_DIR`` cannot be written."""
    prefix = os.environ.get(TENSORBOARD_PREFIX_ENV, "")
    if prefix and os.environ.get(TENSORBOARD_SWITCH_ENV, "1") != "0":
        storage.check_writable(live_log_upload(tag) or Path(prefix) / tag, TENSORBOARD_PREFIX_ENV)


class EventFileMirror:
    """Keeps copies of one folder's event files under an S3 prefix while they grow.

    TensorBoard's event files only ever grow, and S3 has no append: each upload PUTs the whole file,
    so a reader sees the events up to the last upload, never a torn file. A daemon thread uploads the
    files whose size changed every ``every`` seconds; ``close`` uploads once more. A failed upload is
    said once on stderr and retried at the next turn: the curves are not worth stopping training for.
    """

    def __init__(self, folder: Path, destination: str, every: float = TENSORBOARD_UPLOAD_SECONDS) -> None:
        self.folder, self.destination, self.every = folder, destination, every
        self._sizes: dict[str, int] = {}
        self._warned = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tensorboard-upload", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.sync()

    def sync(self) -> None:
        """Upload every event file of the folder (not its sub-folders: other ranks') that grew."""
        with self._lock:
            for path in sorted(self.folder.glob("events.out.tfevents.*")):
                size = path.stat().st_size
                if self._sizes.get(path.name) == size:
                    continue
                try:
                    storage.copy(path, storage.join(self.destination, path.name))
                except OSError as error:
                    if not self._warned:
                        log("tensorboard", f"upload to {self.destination} failed (retried): {error}")
                        self._warned = True
                    continue
                self._sizes[path.name] = size

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sync()


class LiveMetrics:
    """One rank's TensorBoard writers (torch.utils.tensorboard), one per log directory.

    Rank 0 writes into each directory itself, rank r into ``<dir>/rank-<r>/``: TensorBoard shows one run
    per rank and draws the ranks' values of one per-rank tag (``rank/items_per_second``) in one chart.
    ``purge_step`` (a resumed run's first step) hides what a crashed run logged past its checkpoint.
    """

    def __init__(
        self, log_dirs: list[Path], rank_: int, purge_step: int | None = None, upload_to: str | None = None
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.dirs = [d if rank_ == 0 else d / f"rank-{rank_}" for d in log_dirs]
        self.writers = [
            SummaryWriter(str(d), purge_step=purge_step, max_queue=100, flush_secs=TENSORBOARD_FLUSH_SECONDS)
            for d in self.dirs
        ]
        self.mirror = None
        if upload_to:  # the first folder's files, uploaded as they grow (``upload_to``/rank-<r> per rank)
            destination = upload_to if rank_ == 0 else storage.join(upload_to, f"rank-{rank_}")
            self.mirror = EventFileMirror(self.dirs[0], destination)

    def add(self, values: dict[str, float], step: int) -> None:
        """Write ``values`` (tag -> value) as scalars at ``step``: one event for all of them.

        ``SummaryWriter.add_scalar`` writes one event per scalar, about 8x the cost (1.2 ms against
        0.16 ms for a step's 12 scalars on a 2-core CPU), so the summary is built here and handed to
        the SummaryWriter's FileWriter; TensorBoard reads both alike.
        """
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(
            value=[Summary.Value(tag=tag, simple_value=float(value)) for tag, value in values.items()]
        )
        for writer in self.writers:
            writer.file_writer.add_summary(summary, step)

    def flush(self) -> None:
        for writer in self.writers:
            writer.flush()

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
        if self.mirror is not None:
            self.mirror.close()


class TrainingLog:
    """Per-step history (losses, LR, throughput), evaluations, the best metric, and progress on stderr.

    On a terminal a progress bar carries the latest values; otherwise (logs, CI, KFP pods) one line
    every ``log_every`` steps, and one line per epoch, shaped like::

        [encoder] epoch 1/3 step 120/700 | loss 2.3100 (contrastive 2.1000 hard 0.2100) | lr 4.8e-04 | 512 pairs/s | eta 3m12s | best mrr 0.4100
        [encoder] epoch 1 complete | train loss 2.4012 | valid loss 2.2000 | valid mrr 0.4100 | time 1m05s

    Throughput and ETA count training time only: the clock restarts after each evaluation and
    checkpoint. ``history`` (a dict) is what ``history.json`` holds; pass a saved one back to resume.
    Once ``start_live`` has run (``run_steps`` calls it) every step and evaluation also goes to
    TensorBoard (LiveMetrics): every rank writes its own ``rank/*`` values, rank 0 the rest.
    """

    def __init__(
        self,
        tag: str,
        unit: str,
        total_steps: int,
        epochs: int,
        log_every: int = 10,
        metric: str = "mrr",
        history: dict[str, Any] | None = None,
        force_plain: bool | None = None,
    ) -> None:
        self.tag, self.unit, self.total_steps, self.epochs = tag, unit, total_steps, epochs
        self.log_every, self.metric = max(1, log_every), metric
        self.history: dict[str, Any] = history or {"steps": [], "evals": [], "best": None}
        self.steps_this_run = 0
        self.items_this_run = 0
        self.train_seconds = 0.0
        # This rank's own share of this run, for rank_table: steps, items, seconds, data wait, loss sum.
        self.rank_totals = {
            "steps": 0,
            "items": 0,
            "seconds": 0.0,
            "data_seconds": 0.0,
            "allreduce_seconds": 0.0,
            "loss_sum": 0.0,
        }
        self._clock = time.perf_counter()
        self.quiet = not is_main_process()  # one process speaks for all ranks
        plain = not sys.stderr.isatty() if force_plain is None else force_plain
        start = self.history["steps"][-1]["step"] if self.history["steps"] else 0
        self._bar = None
        if not plain and not self.quiet:
            self._bar = Progress(tag, total=max(0, total_steps - start), unit="steps")
        self.live: LiveMetrics | None = None
        self.loss_name = "loss"  # the first of the step values (run_steps' StepOutput.averaged)
        self._epoch_clock = time.perf_counter()
        self._epoch_evals_from = len(self.history["evals"])

    def start_live(self, tensorboard_dir: str | Path, start_step: int) -> None:
        """Open this rank's TensorBoard writers (unless SEMCODE_TENSORBOARD=0) and start the epoch clock.

        A fresh run first writes the evaluations recorded before training (the zero-shot one at step 0);
        a resumed run's were written by the run that saved the checkpoint.
        """
        self._epoch_clock = time.perf_counter()
        self._epoch_evals_from = len(self.history["evals"])
        dirs = live_log_dirs(self.tag, tensorboard_dir)
        if not dirs or self.live is not None:
            return
        upload_to = live_log_upload(self.tag)
        self.live = LiveMetrics(
            dirs, rank(), purge_step=start_step + 1 if start_step else None, upload_to=upload_to
        )
        if start_step == 0 and not self.quiet:
            for entry in self.history["evals"]:
                self._write_eval(entry)
        shown = [str(d) for d in self.live.dirs] + ([upload_to] if upload_to else [])
        self.message(f"tensorboard: {', '.join(shown)}")

    def flush_live(self) -> None:
        if self.live is not None:
            self.live.flush()

    def _write_eval(self, entry: dict[str, Any]) -> None:
        values = {f"valid/{k}": v for k, v in entry.items() if k not in ("step", "seconds")}
        self.live.add(values, entry["step"])

    def restart_clock(self) -> None:
        """Exclude the time since the last step (evaluation, checkpoint) from throughput and ETA."""
        self._clock = time.perf_counter()

    def step(
        self,
        step: int,
        epoch: int,
        values: dict[str, float],
        lr: float,
        items: int,
        rank_items: int | None = None,
        grad_norm: float | None = None,
        data_seconds: float = 0.0,
        allreduce_seconds: float = 0.0,
    ) -> None:
        """Record optimizer step ``step`` (1-based) of ``epoch`` (1-based); ``values``' first key is the loss.

        ``items``: what all ranks trained on in this step; ``rank_items``: this rank's share (default
        all of it); ``grad_norm``: before clipping; ``data_seconds``: time this rank waited for batches;
        ``allreduce_seconds``: time it spent in the gradient all-reduce (AllReduceClock).
        """
        now = time.perf_counter()
        seconds = now - self._clock
        self._clock = now
        self.steps_this_run += 1
        self.items_this_run += items
        self.train_seconds += seconds
        self.loss_name = next(iter(values), self.loss_name)
        totals = self.rank_totals
        totals["steps"] += 1
        totals["items"] += items if rank_items is None else rank_items
        totals["seconds"] += seconds
        totals["data_seconds"] += data_seconds
        totals["allreduce_seconds"] += allreduce_seconds
        totals["loss_sum"] += float(values.get(self.loss_name, 0.0))
        entry = {"step": step, "epoch": epoch, "lr": lr, **{k: float(v) for k, v in values.items()}}
        if grad_norm is not None:
            entry["grad_norm"] = float(grad_norm)
        entry.update({"items": items, "seconds": round(seconds, 4), "data_seconds": round(data_seconds, 4)})
        if allreduce_seconds:
            entry["allreduce_seconds"] = round(allreduce_seconds, 4)
        self.history["steps"].append(entry)
        if self.live is not None:
            self._write_step(
                step, values, lr, items, rank_items, grad_norm, data_seconds, allreduce_seconds, seconds
            )
        text = self.step_line(step, epoch, values, lr)
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.update(1, postfix=text)
        elif step % self.log_every == 0 or self.steps_this_run == 1 or step >= self.total_steps:
            log(self.tag, text)

    def _write_step(
        self,
        step: int,
        values: dict[str, float],
        lr: float,
        items: int,
        rank_items: int | None,
        grad_norm: float | None,
        data_seconds: float,
        allreduce_seconds: float,
        seconds: float,
    ) -> None:
        per_second = 1.0 / seconds if seconds > 0 else 0.0
        scalars = {
            "rank/items_per_second": (items if rank_items is None else rank_items) * per_second,
            "rank/step_seconds": seconds,
            "rank/data_wait_seconds": data_seconds,
            "rank/allreduce_seconds": allreduce_seconds,
            "rank/peak_rss_mib": peak_rss_mib(),
        }
        if torch.cuda.is_available():
            scalars["rank/cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        if not self.quiet:  # rank 0 writes the run's values too; another rank only its own
            scalars.update({f"train/{name}": value for name, value in values.items()})
            scalars.update({"train/lr": lr, "train/items_per_second": items * per_second})
            if grad_norm is not None:
                scalars["train/grad_norm"] = grad_norm
        self.live.add(scalars, step)

    def rank_table(self) -> dict[str, Any]:
        """Every rank's share of this run, gathered (a collective: every rank calls it): ``{"ranks":
        [{rank, steps, items_per_second, mean_loss, data_wait_seconds, data_wait_share, allreduce_seconds,
        allreduce_share, peak_rss_mib}, ...], "items_per_second_spread": max / min}``; with two or more ranks also one line per rank."""
        totals = self.rank_totals
        seconds, steps = totals["seconds"], totals["steps"]
        mine = {
            "rank": rank(),
            "steps": steps,
            "items_per_second": round(totals["items"] / seconds, 2) if seconds > 0 else 0.0,
            "mean_loss": round(totals["loss_sum"] / steps, 6) if steps else None,
            "data_wait_seconds": round(totals["data_seconds"], 3),
            "data_wait_share": round(totals["data_seconds"] / seconds, 4) if seconds > 0 else 0.0,
            "allreduce_seconds": round(totals["allreduce_seconds"], 3),
            "allreduce_share": round(totals["allreduce_seconds"] / seconds, 4) if seconds > 0 else 0.0,
            "peak_rss_mib": round(peak_rss_mib(), 1),
        }
        ranks = [mine]
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            ranks = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(ranks, mine)
        rates = [entry["items_per_second"] for entry in ranks]
        spread = round(max(rates) / min(rates), 3) if min(rates) > 0 else None
        if len(ranks) > 1:
            for entry in ranks:
                self.message(
                    f"rank {entry['rank']}: {entry['steps']} steps | {entry['items_per_second']:,.1f} "
                    f"{self.unit}/s | mean loss {_format_value(entry['mean_loss'] or 0.0)} | data wait "
                    f"{entry['data_wait_share']:.1%} | all-reduce {entry['allreduce_share']:.1%} | "
                    f"peak RSS {entry['peak_rss_mib']:,.0f} MiB"
                )
            self.message(f"ranks: {len(ranks)} | {self.unit}/s max/min {spread}")
        return {"ranks": ranks, "items_per_second_spread": spread}

    def step_line(self, step: int, epoch: int, values: dict[str, float], lr: float) -> str:
        names = list(values)
        loss = f"{names[0]} {_format_value(values[names[0]])}" if names else ""
        if len(names) > 1:
            loss += " (" + " ".join(f"{k} {_format_value(values[k])}" for k in names[1:]) + ")"
        rate = self.items_this_run / self.train_seconds if self.train_seconds > 0 else 0.0
        seconds_per_step = self.train_seconds / max(1, self.steps_this_run)
        eta = format_seconds(max(0, self.total_steps - step) * seconds_per_step)
        best = self.history["best"]
        best_text = f" | best {self.metric} {best[self.metric]:.4f}" if best else ""
        return (
            f"epoch {epoch}/{self.epochs} step {step}/{self.total_steps} | {loss} | lr {lr:.1e} | "
            f"{rate:.0f} {self.unit}/s | eta {eta}{best_text}"
        )

    def evaluate(self, step: int, metrics: dict[str, float], seconds: float = 0.0) -> bool:
        """Record an evaluation; returns True when ``metrics[metric]`` is the best so far (higher wins)."""
        value = float(metrics[self.metric])
        best = self.history["best"]
        is_best = best is None or value > best[self.metric]
        entry = {"step": step, **{k: float(v) for k, v in metrics.items()}, "seconds": round(seconds, 3)}
        self.history["evals"].append(entry)
        if self.live is not None and not self.quiet:
            self._write_eval(entry)
        if is_best:
            self.history["best"] = {"step": step, self.metric: value}
        best = self.history["best"]
        others = " ".join(f"{k} {_format_value(float(v))}" for k, v in metrics.items() if k != self.metric)
        self.message(
            f"eval step {step} | {self.metric} {value:.4f}{' ' + others if others else ''} | "
            f"best {best[self.metric]:.4f} (step {best['step']})" + (" *" if is_best else "")
        )
        self.restart_clock()
        return is_best

    def end_epoch(self, epoch: int, step: int, complete: bool) -> str:
        """Print (and return) the summary line of ``epoch`` (1-based): its mean train loss, the last
        evaluation since the previous epoch ended (valid loss when it has one, the metric), wall time."""
        now = time.perf_counter()
        seconds, self._epoch_clock = now - self._epoch_clock, now
        losses = [e[self.loss_name] for e in self.history["steps"] if e["epoch"] == epoch]
        evals = self.history["evals"][self._epoch_evals_from :]
        self._epoch_evals_from = len(self.history["evals"])
        parts = [f"epoch {epoch} complete" if complete else f"epoch {epoch} stopped at step {step}"]
        if losses:
            parts.append(f"train {self.loss_name} {_format_value(sum(losses) / len(losses))}")
        if evals and "loss" in evals[-1]:
            parts.append(f"valid loss {_format_value(evals[-1]['loss'])}")
        if evals:
            parts.append(f"valid {self.metric} {evals[-1][self.metric]:.4f}")
        parts.append(f"time {format_seconds(seconds)}")
        text = " | ".join(parts)
        self.message(text)
        return text

    def announce_start(self, state: dict[str, Any] | None, resume: bool, checkpoints_dir: str | Path) -> None:
        """Say whether this run resumed (``state`` from resume_state) or starts from step 0."""
        if state is not None:
            self.message(f"resumed from {state['path']} at step {state['step']}/{self.total_steps}")
        elif resume:
            self.message(f"resume: no checkpoint in {checkpoints_dir} yet, starting from step 0")

    def message(self, text: str) -> None:
        """A line on stderr that does not break the progress bar."""
        if self.quiet:
            return
        if self._bar is not None:
            from tqdm import tqdm

            tqdm.write(f"[{self.tag}] {text}", file=sys.stderr)
        else:
            log(self.tag, text)

    def items_per_second(self) -> float:
        return self.items_this_run / self.train_seconds if self.train_seconds > 0 else 0.0

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if is_main_process():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.history, indent=1) + "\n")
        return path

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.live is not None:
            self.live.close()
            self.live = None
