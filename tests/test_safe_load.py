"""Checkpoint files that would run code when loaded are refused before anything unpickles them."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from semcode.train.safe_load import UnsafeCheckpointError, check_checkpoint


class Payload:
    """Unpickling this runs os.system: what a planted checkpoint would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_payload_is_refused_and_never_runs(tmp_path: Path) -> None:
    checkpoint = tmp_path / "step-000010" / "deepspeed"
    checkpoint.mkdir(parents=True)
    marker = tmp_path / "pwned"
    torch.save(
        {"module": {"w": torch.ones(2)}, "extra": Payload(marker)}, checkpoint / "mp_rank_00_model_states.pt"
    )
    with pytest.raises(
        UnsafeCheckpointError, match=r"mp_rank_00_model_states\.pt references \['posix\.system'\]"
    ):
        check_checkpoint(tmp_path / "step-000010")
    assert not marker.exists()


def test_a_raw_pickle_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "trainer_state.pt").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(UnsafeCheckpointError, match="not a torch zip checkpoint"):
        check_checkpoint(tmp_path)
    assert not marker.exists()


def test_tensors_and_plain_state_pass(tmp_path: Path) -> None:
    torch.save({"step": 3, "history": [{"loss": 1.5}], "w": torch.zeros(3)}, tmp_path / "trainer_state.pt")
    torch.save({"python": (3, (1, 2), None), "torch": torch.get_rng_state()}, tmp_path / "rng_state_rank0.pt")
    assert [path.name for path in check_checkpoint(tmp_path)] == ["rng_state_rank0.pt", "trainer_state.pt"]
