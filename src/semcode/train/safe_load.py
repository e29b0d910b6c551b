"""Refuse a training checkpoint that would run code when it is loaded.

DeepSpeed's ``engine.load_checkpoint`` unpickles its ``.pt`` files with ``torch.load(weights_only=False)``:
a checkpoint planted on shared storage (a cluster's checkpoint prefix, a copied run directory) could run
any code on ``--resume``. Before DeepSpeed opens one, every ``.pt`` file of the checkpoint is scanned with
torch's own ``get_unsafe_globals_in_checkpoint`` (it reads the pickle's opcodes and imports nothing): the
only globals allowed beyond torch's weights-only set are the DeepSpeed types its checkpoints are known to
hold (``ALLOWED_GLOBALS``). Anything else is an error naming the file and the globals, and nothing is
loaded. The scan and the load read the same bytes, so what passed the scan is what DeepSpeed unpickles.

Every path is resolved first: the walk does not follow links but DeepSpeed's ``open`` does, so a link (a
``deepspeed/`` folder or a ``.pt`` file) whose target leaves the checkpoint folder, a dangling link, and
anything that is neither a regular file nor a folder (a FIFO would hang the load) are refused before a
byte is read. A link that stays inside is fine: what it points to is scanned under the link's name.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

# What DeepSpeed's own checkpoint files may reference besides tensors and plain containers (ZeRO's
# optimizer states record their stage and partitioning with these). Kept short on purpose: a new entry
# needs a reason.
ALLOWED_GLOBALS = frozenset(
    {
        "deepspeed.runtime.zero.config.ZeroStageEnum",
        "deepspeed.runtime.fp16.loss_scaler.LossScaler",
        "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
        "deepspeed.utils.tensor_fragment.fragment_address",
        "collections.OrderedDict",
        "torch.torch_version.TorchVersion",
    }
)


class UnsafeCheckpointError(ValueError):
    """A checkpoint file references code that loading it would import and may run."""


def check_checkpoint(path: str | Path, within: str | Path | None = None) -> list[Path]:
    """Every ``*.pt`` file under ``path`` (a checkpoint folder), checked; returns them.

    Raises UnsafeCheckpointError naming the first entry that resolves outside ``path`` (or ``path`` itself
    outside ``within``, the checkpoints folder), that is not a regular file or folder, or the first file
    that references a global outside torch's weights-only set and ``ALLOWED_GLOBALS``, or that is not a
    torch zip checkpoint at all (a raw pickle).
    """
    import torch

    root = Path(path)
    real_root = root.resolve()
    if within is not None and not real_root.is_relative_to(Path(within).resolve()):
        raise UnsafeCheckpointError(
            f"checkpoint {root} is a link to {real_root}, outside {within}: refusing to load it"
        )
    files = [file for file in _resolved_entries(root, real_root) if file.suffix == ".pt"]
    for file in files:
        try:
            found = torch.serialization.get_unsafe_globals_in_checkpoint(str(file))
        except Exception as error:  # torch raises RuntimeError, pickle errors and more for a non-zip file
            raise UnsafeCheckpointError(
                f"checkpoint file {file} is not a torch zip checkpoint ({type(error).__name__}: {error}); "
                "refusing to unpickle it"
            ) from None
        refused = sorted(set(found) - ALLOWED_GLOBALS)
        if refused:
            raise UnsafeCheckpointError(
                f"checkpoint file {file} references {refused}: loading it would import and may run that "
                "code, so it is refused (semcode's own checkpoints hold only tensors, plain values and "
                "DeepSpeed's state types); delete the checkpoint or train without --resume"
            )
    return files


def _resolved_entries(root: Path, real_root: Path) -> list[Path]:
    """The regular files under ``root``, sorted, each entry (file, folder or link) resolved and refused
    when it leaves ``real_root`` or is something else (a FIFO, a device, a dangling link)."""
    files = []
    for folder, dirnames, filenames in os.walk(root):  # links are listed, never followed
        for name in dirnames + filenames:
            entry = Path(folder) / name
            target = entry.resolve()
            if not target.is_relative_to(real_root):
                raise UnsafeCheckpointError(
                    f"checkpoint entry {entry} is a link to {target}, outside the checkpoint {root}: "
                    "refusing to load it (a checkpoint's files live inside its folder)"
                )
            try:
                mode = os.stat(entry).st_mode
            except OSError as error:
                raise UnsafeCheckpointError(
                    f"checkpoint entry {entry} cannot be read ({error.strerror}): refusing to load it"
                ) from None
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise UnsafeCheckpointError(
                    f"checkpoint entry {entry} is not a regular file or folder: refusing to load it"
                )
            if stat.S_ISREG(mode):  # a link inside is scanned under its own name: the bytes a load reads
                files.append(entry)
    return sorted(files)
