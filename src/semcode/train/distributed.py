"""Distributed set-up and DeepSpeed, seeds, the optimizer and the LR schedule: what a training stage
builds its DeepSpeedEngine from before the loop (semcode.train.loop.run_steps) runs it.

Every run goes through ``deepspeed.initialize``, on a laptop CPU (gloo, one process, fp32) and on GPUs
(NCCL, bf16, ZeRO stage 1 or 2) alike; semcode.train.loop's docstring shows the order a stage calls
these functions in.

Precision (``--precision``, ``resolve_precision``): ``auto`` is bf16 whenever CUDA is there and fp32 on
the CPU; ``fp16`` is for GPUs without bf16 (V100, T4), with DeepSpeed's dynamic loss scaling: the loss is
multiplied by a scale before backward, a step whose gradients overflow is skipped (and, from the
``hysteresis``-th overflow on, halves the scale), and ``loss_scale_window`` clean steps double it
(FP16_LOSS_SCALE). ``fp32`` is the switch for a run that diverges in half precision. In every mode the
optimizer keeps fp32 master weights.

On CPU with two or more ranks the first ``deepspeed.init_distributed`` in a fresh environment compiles
DeepSpeed's shared-memory communication op (about 40 s on 2 cores); it is cached under
``TORCH_EXTENSIONS_DIR`` (torch's default: ``~/.cache/torch_extensions``), after which set-up takes well
under a second. A single CPU process skips it (``setup_distributed``): a world of one reduces nothing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import socket
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semcode.config import ConfigError
from semcode.contract import TRAINING_PRECISIONS

DEEPSPEED_CONFIG_FILE = "deepspeed_config.json"
ZERO_STAGES = (0, 1, 2)
SHM_COMM_OP = (
    "deepspeed_shm_comm"  # deepspeed.ops.__compatible_ops__ name of the CPU shared-memory all-reduce
)
# DeepSpeed's fp16 section beside "enabled": loss_scale 0 = dynamic, starting at 2**initial_scale_power;
# an overflow skips the step (and from the hysteresis-th overflow on halves the scale, never below
# min_loss_scale), and loss_scale_window steps without one double it.
FP16_LOSS_SCALE = {
    "loss_scale": 0,
    "initial_scale_power": 16,
    "loss_scale_window": 1000,
    "hysteresis": 2,
    "min_loss_scale": 1,
}


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


def resolve_precision(precision: str) -> str:
    """``--precision`` as the run will train: ``auto`` is bf16 with CUDA and fp32 without (what semcode
    always did); bf16 and fp16 need a CUDA GPU, and bf16 one that has it (compute capability 8.0+).
    Raises ConfigError naming the choice and what to use instead."""
    if precision not in TRAINING_PRECISIONS:
        raise ConfigError(f"precision must be one of {TRAINING_PRECISIONS}, got {precision!r}")
    cuda = torch.cuda.is_available()
    if precision == "auto":
        return "bf16" if cuda else "fp32"
    if precision != "fp32" and not cuda:
        raise ConfigError(
            f"precision {precision} needs a CUDA GPU and none is visible: use --precision fp32 (or auto) here"
        )
    if precision == "bf16" and torch.cuda.get_device_capability() < (8, 0):
        raise ConfigError(
            f"precision bf16: {torch.cuda.get_device_name()} has no bf16 (compute capability "
            f"{'.'.join(map(str, torch.cuda.get_device_capability()))} < 8.0): use --precision fp16 or fp32"
        )
    return precision


def precision_dtype(precision: str) -> torch.dtype:
    """The dtype the engine runs the module in at a resolved precision (bf16, fp16 or fp32)."""
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def deepspeed_config(
    micro_batch_size: int,
    grad_accum: int = 1,
    grad_clip: float = 1.0,
    zero_stage: int = 0,
    precision: str = "auto",
) -> dict[str, Any]:
    """The DeepSpeed config for one run at ``precision`` (``resolve_precision``: auto is bf16 with CUDA,
    fp32 on the CPU; fp16 adds dynamic loss scaling, FP16_LOSS_SCALE).

    No optimizer or scheduler section: both are passed to ``initialize`` as torch objects.
    """
    if zero_stage not in ZERO_STAGES:
        raise ValueError(f"zero_stage must be one of {ZERO_STAGES}, got {zero_stage}")
    if micro_batch_size < 1 or grad_accum < 1:
        raise ValueError(
            f"micro_batch_size and grad_accum must be >= 1, got {micro_batch_size}, {grad_accum}"
        )
    precision = resolve_precision(precision)
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": grad_clip,
        "bf16": {"enabled": precision == "bf16"},
        "fp16": {"enabled": True, **FP16_LOSS_SCALE} if precision == "fp16" else {"enabled": False},
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

    The engine moves the model to the device, casts it to bf16 or fp16 when configured, steps the scheduler
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
