"""Checkpoints: full fp32 weights, resumable checkpoints, their durable copies, and SIGTERM.

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
leaves a directory that ``latest`` could point to. A stage resumes with ``resume_state`` (after
``restore_durable``, which first brings back the newest durable copy, DurableCheckpoints, when the pod's
disk is new). SIGTERM or Ctrl-C (StopRequest) ends the loop after the step under way with a checkpoint, then
Preempted: the stage exits 128 + the signal's number (PREEMPTED_EXIT_CODE for SIGTERM, 130 for SIGINT) and
a retry, or the same command with ``--resume``, continues from it.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from semcode import storage
from semcode.config import ConfigError
from semcode.progress import log
from semcode.train.distributed import barrier, is_main_process, rank
from semcode.train.safe_load import check_checkpoint

CHECKPOINT_PREFIX = "step-"
DURABLE_CHECKPOINT_DIR = "checkpoint"  # <checkpoint_root>/step-NNNNNN/checkpoint/: the local step-NNNNNN/
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM: what Kubernetes reports for a container stopped by its signal
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT: a shell's code for a command stopped by Ctrl-C
RESUME_HINT = "no new checkpoint; the same command with --resume continues from the latest one, if any"
LATEST_FILE = "latest"
WEIGHTS_FILE = "model.safetensors"
TRAINER_STATE_FILE = "trainer_state.pt"
DEEPSPEED_TAG = "deepspeed"


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
    # DeepSpeed unpickles without weights_only: nothing planted (nor linked from outside) gets that far
    check_checkpoint(path, within=checkpoints_dir)
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


# ---------------------------------------------------------------------------------------------------------
# What survives the pod: durable checkpoints, and SIGTERM


class Preempted(RuntimeError):
    """SIGTERM (or Ctrl-C) stopped training once a checkpoint was written (and made durable): the process
    should exit ``exit_code`` (128 + the signal: PREEMPTED_EXIT_CODE for SIGTERM, 130 for SIGINT), non-zero
    so that a retry continues from the checkpoint."""

    def __init__(self, message: str, exit_code: int = PREEMPTED_EXIT_CODE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


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
    """SIGTERM (Kubernetes' notice, a grace period before SIGKILL) and SIGINT (Ctrl-C at a terminal) as a
    flag the loop reads between steps. A second Ctrl-C stops at once (KeyboardInterrupt, no checkpoint).

    Installed only in the main thread (Python delivers signals there); elsewhere it never fires. With
    several ranks ``agreed`` all-reduces the flag, so every rank stops at the same step even when only
    one was signalled.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received = False
        self.signal_number = signal.SIGTERM  # the first signal received (SIGTERM on a rank told by another)
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received and signum == signal.SIGINT == self.signal_number:
            raise KeyboardInterrupt  # Ctrl-C twice: the user will not wait for the step under way
        if not self.received:
            self.signal_number = signum
        self.received = True

    @property
    def name(self) -> str:
        """The signal as a user knows it: "SIGTERM", "SIGINT (Ctrl-C)"."""
        name = signal.Signals(self.signal_number).name
        return name + " (Ctrl-C)" if self.signal_number == signal.SIGINT else name

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signal_number)

    def agreed(self, device: Any) -> bool:
        if not (torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
            return self.received
        flag = torch.tensor([float(self.received)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())
