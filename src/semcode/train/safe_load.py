"""Refuse a training checkpoint that would run code when it is loaded.

DeepSpeed's ``engine.load_checkpoint`` unpickles its ``.pt`` files with ``torch.load(weights_only=False)``:
a checkpoint planted on shared storage (a cluster's checkpoint prefix, a copied run directory) could run
any code on ``--resume``. Before DeepSpeed opens one, every ``.pt`` file of the checkpoint is scanned with
torch's own ``get_unsafe_globals_in_checkpoint`` (it reads the pickle's opcodes and imports nothing): the
only globals allowed beyond torch's weights-only set are the DeepSpeed types its checkpoints are known to
hold (``ALLOWED_GLOBALS``). Anything else is an error naming the file and the globals, and nothing is
loaded. The scan and the load read the same bytes, so what passed the scan is what DeepSpeed unpickles.
"""

from __future__ import annotations

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


def check_checkpoint(path: str | Path) -> list[Path]:
    """Every ``*.pt`` file under ``path`` (a checkpoint folder), checked; returns them.

    Raises UnsafeCheckpointError naming the first file that references a global outside torch's
    weights-only set and ``ALLOWED_GLOBALS``, or that is not a torch zip checkpoint at all (a raw pickle).
    """
    import torch

    files = sorted(Path(path).rglob("*.pt"))
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
