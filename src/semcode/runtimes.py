"""How the stages that only embed (evaluate, build_index, mine_hard_negatives, train_decoder) run an encoder.

``torch`` on the stage's device, or the encoder exported as the release bundle's is and run by ONNX
Runtime on the CPU: ``onnx-int8`` (what search uses; ~2.5x faster than torch on CPU cores) or
``onnx-fp32``. A module of its own, free of torch, so the stages' ``--help`` stays fast.
"""

from semcode.config import ConfigError

RUNTIMES = ("torch", "onnx-int8", "onnx-fp32")


def check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {list(RUNTIMES)}, got {runtime!r}")
