"""Run a semcode stage as two CPU ranks under torchrun (the slow multi-process tests)."""

from __future__ import annotations

import os
import subprocess
import sys


def run_two_ranks(module: str, *args: str) -> None:
    """``torchrun --nproc_per_node 2 -m module args``, one thread per rank; fails with the stage's stderr."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", module, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)  # this pytest process may be rank 0 of its own world of 1
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
