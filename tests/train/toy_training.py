"""The toy model and numbers the tests of semcode.train share (tests/train/test_*.py), and a reader of
TensorBoard event files. A plain module beside the tests: pytest and torchrun (test_loop's two ranks)
both find it in the tests' own folder."""

from __future__ import annotations

import torch
from torch import nn

TOTAL_STEPS = 8
MICRO_BATCH = 4
GRAD_ACCUM = 2
PEAK_LR = 1e-2
WARMUP = 2
EVAL_METRICS = {2: 0.2, 4: 0.6, 6: 0.4, 8: 0.5}  # step -> the "mrr" the toy validator reports


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # Dropout makes every step depend on torch's RNG: resume must restore it.
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in ``log_dir``'s event files, read by TensorBoard's own reader: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
