"""Checkpoints: full fp32 weights, resumable checkpoints, their durable copies, and SIGTERM.

Checkpoint layout (one directory per optimizer step)::

    checkpoints/
      step-000120/
        model.safetensors   full fp32 weights, loadable without DeepSpeed (load_weights). Under ZeRO 1/2,
                            bf16 or fp16 they come from the optimizer's fp32 master copy, gathered across ranks
        trainer_state.pt    the caller's state (step, data position, history, the run's shape, ...)
        rng_state_rank0.pt  python, numpy and torch RNG states, one file per rank
        deepspeed/          engine.save_checkpoint: module, optimizer and LR scheduler state; DeepSpeed
                            partitions the optimizer per rank under ZeRO, so any stage resumes the same way
        definition/         train_encoder's: the encoder's configuration and tokenizer, no weights, so the
                            checkpoint is an encoder too (encoder_from_checkpoint: --encoder of export-onnx,
                            mine-hard-negatives, build-index)
      latest                the name of the newest complete checkpoint, written only after it is complete

A checkpoint is written to ``step-000120.partial/`` and renamed when complete, so a crash mid-write never
leaves a directory that ``latest`` could point to. A stage resumes with ``resume_state`` (after
``restore_durable``, which first brings back the newest durable copy, DurableCheckpoints, when the pod's
disk is new), or with ``--resume-from PATH`` from any complete checkpoint (check_complete verifies it first,
the unsafe-pickle scan included; a run of another shape is refused, naming what differs). SIGTERM or Ctrl-C
(StopRequest) ends the loop after the step under way with a checkpoint, then
Preempted: the stage exits 128 + the signal's number (PREEMPTED_EXIT_CODE for SIGTERM, 130 for SIGINT) and
a retry, or the same command with ``--resume``, continues from it.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
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
DEFINITION_DIR = "definition"


# ---------------------------------------------------------------------------------------------------------
# Weights and checkpoints


def unwrap(model: Any) -> torch.nn.Module:
    """The plain module inside a DeepSpeedEngine (or the module itself)."""
    return getattr(model, "module", model)


def full_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """A CPU state dict with full fp32 weights, every key present (tied weights as separate copies).

    Under ZeRO 1/2, bf16 and fp16 the module holds low-precision or partitioned weights; DeepSpeed's
    ``safe_get_full_fp32_param`` returns the fp32 master copy (a collective: every rank must call this),
    and with ZeRO 0 the unfused optimizer's ``fp32_groups`` hold it.
    """
    from deepspeed.utils import safe_get_full_fp32_param

    module = unwrap(model)
    unfused = _unfused_masters(model)
    masters: dict[str, torch.Tensor] = {}
    for name, param in module.named_parameters(remove_duplicate=False):
        master = safe_get_full_fp32_param(param)
        if master is None:
            master = unfused.get(id(param))
        masters[name] = master if master is not None else param.detach()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in module.state_dict().items():
        value = masters.get(name, tensor)
        if value.is_floating_point():
            value = value.float()
        out[name] = value.detach().to("cpu").contiguous().clone()  # clone: safetensors refuses shared storage
    return out


def _unfused_masters(model: Any) -> dict[int, torch.Tensor]:
    """{id(low-precision param): its fp32 master} of DeepSpeed's unfused fp16/bf16 optimizer (ZeRO 0 with a
    torch optimizer), whose params carry no ``_hp_mapping``; {} for any other optimizer."""
    from deepspeed.runtime.fp16.unfused_optimizer import FP16_UnfusedOptimizer

    optimizer = getattr(model, "optimizer", None)
    if not isinstance(optimizer, FP16_UnfusedOptimizer):
        return {}
    return {
        id(low): high.detach()
        for low_group, high_group in zip(optimizer.fp16_groups, optimizer.fp32_groups, strict=True)
        for low, high in zip(low_group, high_group, strict=True)
    }


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
    checkpoints_dir: str | Path,
    engine: Any,
    step: int,
    state: dict[str, Any],
    keep: int = 3,
    definition: Path | None = None,
) -> Path:
    """Write ``checkpoints_dir/step-NNNNNN/`` (weights, DeepSpeed state, ``state`` + RNG), then ``latest``.

    ``state`` is the caller's resumable state: plain Python values and tensors (step, data position,
    history, best metric). Keeps the newest ``keep`` checkpoints (0 keeps all). ``definition``: a folder
    copied in as ``definition/`` (the model without its weights). Every rank must call.
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
        if definition is not None:
            shutil.copytree(definition, partial / DEFINITION_DIR)
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
    return None if path is None else load_checkpoint(path, engine, within=checkpoints_dir)


def check_complete(path: str | Path, what: str = "checkpoint") -> Path:
    """The checkpoint folder ``path`` names (itself, or the ``checkpoint/`` of a durable upload), once it
    holds every part of a complete checkpoint, readable weights, and no file that would run code when
    DeepSpeed unpickles it (safe_load.check_checkpoint). Raises FileNotFoundError or ValueError naming
    ``path`` and what is wrong; costs milliseconds (the weights' header is read, not the weights)."""
    from safetensors import SafetensorError, safe_open

    folder = Path(path)
    if (folder / DURABLE_CHECKPOINT_DIR / TRAINER_STATE_FILE).is_file():
        folder = folder / DURABLE_CHECKPOINT_DIR
    if not folder.is_dir():
        raise FileNotFoundError(f"{what} {path}: not a directory")
    if folder.name.endswith(".partial"):
        raise ValueError(f"{what} {path}: a checkpoint whose writing never finished (.partial); pick another")
    needed = (WEIGHTS_FILE, TRAINER_STATE_FILE, rng_state_file(0), DEEPSPEED_TAG)
    missing = [name for name in needed if not (folder / name).exists()]
    if missing:
        inner = list_checkpoints(folder) or list_checkpoints(folder / "checkpoints")
        hint = f"; did you mean {inner[-1]}?" if inner else ""
        raise FileNotFoundError(
            f"{what} {path} is not a complete training checkpoint: it lacks {', '.join(missing)} (expected a "
            f"checkpoints/step-NNNNNN folder of train-encoder or train-decoder){hint}"
        )
    try:
        with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as opened:
            opened.keys()
    except SafetensorError as error:
        raise ValueError(
            f"{what} {folder / WEIGHTS_FILE}: unreadable weights, truncated or corrupt ({error})"
        ) from None
    # DeepSpeed unpickles without weights_only: nothing planted (nor linked from outside) gets that far
    check_checkpoint(folder)
    return folder


def check_run_shape(path: str | Path, saved: dict[str, Any], run_shape: dict[str, Any]) -> None:
    """Raise ConfigError when a checkpoint's run (``saved``, its ``state["run"]``) differs from this one,
    naming each setting that differs and both values: resuming a run of another shape (model size,
    tokenizer, data, batch, schedule) would not continue that run, or would not load at all."""
    differ = sorted(key for key in saved.keys() | run_shape.keys() if saved.get(key) != run_shape.get(key))
    if differ:
        details = "; ".join(
            f"{key}: checkpoint {saved.get(key, 'not recorded')!r}, this run {run_shape.get(key, 'not recorded')!r}"
            for key in differ
        )
        raise ConfigError(
            f"cannot resume from {path}: it belongs to a run of another shape ({details}); use the settings "
            "and inputs it was trained with, or train without resuming"
        )


def vocabulary_digest(tokenizer: Any) -> str:
    """A short sha256 of a tokenizer's vocabulary (transformers or tokenizers): part of a run's shape, as
    a checkpoint's token ids mean nothing under another vocabulary."""
    vocabulary = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocabulary).encode()).hexdigest()[:16]


def load_checkpoint(
    path: Path, engine: Any, run_shape: dict[str, Any] | None = None, within: str | Path | None = None
) -> dict[str, Any]:
    """Restore module, optimizer, LR scheduler and RNG states from the checkpoint ``path``; returns its
    state (with ``path``). With ``run_shape``, the checkpoint's must equal it, checked before DeepSpeed
    loads anything; ``within``: the checkpoints folder ``path`` must not leave (a link planted there)."""
    # DeepSpeed unpickles without weights_only: nothing planted (nor linked from outside) gets that far
    check_checkpoint(path, within=within)
    state = torch.load(path / TRAINER_STATE_FILE, map_location="cpu", weights_only=True)
    if run_shape is not None:
        check_run_shape(path, state.get("run", {}), run_shape)
    load_path, _ = engine.load_checkpoint(str(path), tag=DEEPSPEED_TAG)
    if load_path is None:
        raise RuntimeError(f"DeepSpeed could not load the checkpoint in {path / DEEPSPEED_TAG}")
    rng_file = path / rng_state_file(rank())
    if not rng_file.is_file():
        raise FileNotFoundError(f"{rng_file} is missing: was {path.name} written with fewer ranks?")
    _set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=True))
    state["path"] = str(path)
    return state


def check_checkpoints_dir(
    checkpoints_dir: str | Path, resume: bool, checkpoint_root: str = "", resume_from: str = ""
) -> None:
    """Refuse to start a fresh run over an earlier run's checkpoints, with a ``checkpoint_root`` that
    cannot be written, or from a ``resume_from`` that is not a complete, safe checkpoint (call before any
    expensive work).

    Never mix two runs' checkpoints (pruning would then delete the new ones), never delete a run.
    """
    if checkpoint_root:
        storage.check_writable(checkpoint_root, "checkpoint_root")
    if resume_from:
        check_complete(resume_from, "resume_from")
    if not resume and (Path(checkpoints_dir) / LATEST_FILE).exists():
        raise ValueError(
            f"{checkpoints_dir} holds an earlier run's checkpoints; pass --resume to continue it, "
            "or use a new --out directory"
        )


def resume_state(
    checkpoints_dir: str | Path,
    engine: Any,
    resume: bool,
    run_shape: dict[str, Any],
    resume_from: str = "",
) -> dict[str, Any] | None:
    """Restore a checkpoint and return its state, or None (a fresh run): with ``resume`` this run's latest
    one; without one (or without ``resume``), the checkpoint ``resume_from`` names, if any. This run's own
    latest wins: after ``--resume-from`` a stopped run goes on with the same command and ``--resume``.

    ``run_shape`` (model, tokenizer, total steps, batch size, seed, data size, ...) must equal the one the
    checkpoint was saved with (``state["run"]``): a run of another shape would not continue the same run.
    """
    latest = latest_checkpoint(checkpoints_dir) if resume else None
    if latest is not None:
        if resume_from and is_main_process():
            log(
                "train",
                f"--resume: {latest} (this run's latest) is where it goes on, not --resume-from {resume_from}",
            )
        return load_checkpoint(latest, engine, run_shape, within=checkpoints_dir)
    if resume_from:
        return load_checkpoint(check_complete(resume_from, "resume_from"), engine, run_shape)
    return None


# ---------------------------------------------------------------------------------------------------------
# A checkpoint as an encoder

ENCODER_KEY_PREFIX = "encoder."  # train_encoder checkpoints EncoderWithLoss, which holds it as .encoder


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a local training checkpoint folder (or a durable upload of one): what it holds
    is a trainer_state.pt, which no encoder directory has."""
    folder = Path(path)
    return (folder / TRAINER_STATE_FILE).is_file() or (
        folder / DURABLE_CHECKPOINT_DIR / TRAINER_STATE_FILE
    ).is_file()


def encoder_from_checkpoint(spec: str) -> str:
    """``spec`` as an encoder directory: as it is, unless it names a train-encoder checkpoint. That one is
    checked first (check_complete: every part there, readable weights, the unsafe-pickle scan of resume),
    then its ``definition/`` and weights are written out as an encoder directory (CodeSearchEncoder.save) in
    a temporary folder, removed when the process exits; returns that folder."""
    if storage.is_s3(spec) or not is_checkpoint(spec):
        return spec
    from semcode.contract import ENCODER_CONFIG_FILE
    from semcode.models.encoder import load_encoder

    folder = check_complete(spec, "encoder")
    definition = folder / DEFINITION_DIR
    if not (definition / ENCODER_CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"encoder {spec} is a training checkpoint without {DEFINITION_DIR}/{ENCODER_CONFIG_FILE}: a "
            "train-decoder checkpoint, or a train-encoder one written before checkpoints carried it; give "
            "the run's encoder/ instead"
        )
    model = load_encoder(definition, weights=False)
    weights = load_file(str(folder / WEIGHTS_FILE))
    prefix = ENCODER_KEY_PREFIX
    model.load_state_dict({name[len(prefix) :]: t for name, t in weights.items() if name.startswith(prefix)})
    out = Path(tempfile.mkdtemp(prefix="semcode-checkpoint-encoder-"))
    atexit.register(shutil.rmtree, out, True)
    model.save(out, definition)
    log("encoder", f"{spec} is a training checkpoint: using the encoder it holds (written to {out})")
    return str(out)


# ---------------------------------------------------------------------------------------------------------
# A training stage's output: complete or absent, and resumable across the swap

CHECKPOINTS_DIR = "checkpoints"  # a training stage's checkpoints, inside its output folder


def launched_rank() -> int:
    """This process's rank as its launcher (torchrun, the deepspeed launcher) set ``RANK``: known before the
    process group exists, unlike ``rank()``. 0 for a plain process."""
    return int(os.environ.get("RANK") or 0)


@contextlib.contextmanager
def training_output(out_dir: str | Path, resume: bool, durable: bool = False) -> Iterator[Path]:
    """The folder a training stage writes its output into: storage.stage_output of ``out_dir``, a partial
    folder beside it that replaces it whole once the run is complete. What ``--resume`` needs survives:

    - a run stopped before its end (SIGTERM, Ctrl-C, a crash, kill -9) leaves its partial, which holds
      ``checkpoints/latest``; the same command with ``--resume`` continues in it (without, it is refused
      here, by name, unless ``durable``: a stage with a checkpoint_root, whose retry resumes on its own);
    - ``--resume`` over a complete earlier output starts from a copy of it (its checkpoints hard-linked), so
      the earlier output stays whole until the new one replaces it;
    - a fresh run over an earlier run's checkpoints is refused here, before anything is written: replacing
      the output would delete that run.

    With several ranks only rank 0 (``launched_rank``) prepares, fills the outputs of, and swaps the
    partial; the others get its path and write into it only after the process group is set up, which
    waits for rank 0."""
    target = Path(os.fspath(out_dir))
    partial = storage.partial_path(target)
    check_checkpoints_dir(target / CHECKPOINTS_DIR, resume)
    if not (resume or durable) and (partial / CHECKPOINTS_DIR / LATEST_FILE).exists():
        raise ValueError(
            f"{partial} holds the checkpoints of a run into {target} that stopped before its end; pass --resume "
            f"to continue it, or remove {partial} to start afresh"
        )
    if launched_rank() != 0:
        yield partial
        return
    with storage.stage_output(target, keep=f"{CHECKPOINTS_DIR}/{LATEST_FILE}", resume=resume) as partial:
        yield partial


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
    SIGUSR1 (``kill -USR1 PID``: "save now") asks for a checkpoint at the next step boundary, after which
    training goes on (``checkpoint_asked``).

    Installed only in the main thread (Python delivers signals there); elsewhere it never fires. With
    several ranks ``agreed`` and ``checkpoint_asked`` all-reduce their flag, so every rank stops, or
    checkpoints, at the same step even when only one was signalled.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)
    SAVE_SIGNAL = signal.SIGUSR1

    def __init__(self) -> None:
        self.received = False
        self.signal_number = signal.SIGTERM  # the first signal received (SIGTERM on a rank told by another)
        self.save_asked = False  # SIGUSR1 since the last checkpoint_asked
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
            self._previous[self.SAVE_SIGNAL] = signal.signal(self.SAVE_SIGNAL, self._handle_save)
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

    def _handle_save(self, signum: int, frame: Any) -> None:
        self.save_asked = True

    @property
    def name(self) -> str:
        """The signal as a user knows it: "SIGTERM", "SIGINT (Ctrl-C)"."""
        name = signal.Signals(self.signal_number).name
        return name + " (Ctrl-C)" if self.signal_number == signal.SIGINT else name

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signal_number)

    def agreed(self, device: Any) -> bool:
        """Whether any rank was told to stop."""
        return _on_any_rank(self.received, device)

    def checkpoint_asked(self, device: Any) -> bool:
        """Whether any rank got SIGUSR1 since the last call: checkpoint after this step, then go on. Every
        rank calls it after every step (a collective with several ranks)."""
        asked, self.save_asked = self.save_asked, False
        return _on_any_rank(asked, device)


def _on_any_rank(flag: bool, device: Any) -> bool:
    """``flag`` or-ed over the ranks (a collective; the flag itself in a world of one)."""
    if not (torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1):
        return flag
    value = torch.tensor([float(flag)], device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


@contextlib.contextmanager
def save_requests_outside_steps() -> Iterator[None]:
    """Around a whole training stage: SIGUSR1 while it sets up, evaluates or saves (outside run_steps, whose
    StopRequest answers it with a checkpoint) is one line, not the signal's default action, which ends the
    process and the run with it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    line = b"[train] SIGUSR1: no training step under way (setting up, evaluating, saving): no checkpoint\n"

    def answer(signum: int, frame: Any) -> None:
        os.write(2, line)  # not print: a handler may interrupt a print to stderr (a reentrant call)

    previous = signal.signal(signal.SIGUSR1, answer)
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR1, previous if previous is not None else signal.SIG_DFL)
