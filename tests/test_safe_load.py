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


def _payload_outside(tmp_path: Path) -> tuple[Path, Path]:
    """A folder outside the checkpoint holding DeepSpeed's model states with a payload, and its marker."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    marker = tmp_path / "pwned"
    torch.save(
        {"module": {"w": torch.ones(2)}, "extra": Payload(marker)}, outside / "mp_rank_00_model_states.pt"
    )
    return outside, marker


def test_a_deepspeed_folder_linked_outside_the_checkpoint_is_refused(tmp_path: Path) -> None:
    """The bypass of the second fault battery: the walk did not follow the link, DeepSpeed's open did."""
    outside, marker = _payload_outside(tmp_path)
    checkpoint = tmp_path / "checkpoints" / "step-000010"
    checkpoint.mkdir(parents=True)
    torch.save({"step": 10}, checkpoint / "trainer_state.pt")
    (checkpoint / "deepspeed").symlink_to(outside, target_is_directory=True)
    with pytest.raises(
        UnsafeCheckpointError, match=r"deepspeed is a link to .*elsewhere, outside the checkpoint"
    ):
        check_checkpoint(checkpoint)
    (checkpoint / "deepspeed").unlink()  # a file link out: refused as well, before a byte is read
    (checkpoint / "deepspeed").mkdir()
    (checkpoint / "deepspeed" / "mp_rank_00_model_states.pt").symlink_to(
        outside / "mp_rank_00_model_states.pt"
    )
    with pytest.raises(UnsafeCheckpointError, match=r"mp_rank_00_model_states\.pt is a link to .*outside"):
        check_checkpoint(checkpoint)
    assert not marker.exists()


def test_a_checkpoint_folder_linked_from_elsewhere_a_fifo_and_an_inside_link(tmp_path: Path) -> None:
    outside, marker = _payload_outside(tmp_path)
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "step-000010").symlink_to(outside, target_is_directory=True)
    with pytest.raises(
        UnsafeCheckpointError, match=r"step-000010 is a link to .*elsewhere, outside .*checkpoints"
    ):
        check_checkpoint(checkpoints / "step-000010", within=checkpoints)
    checkpoint = checkpoints / "step-000020"
    (checkpoint / "deepspeed").mkdir(parents=True)
    os.mkfifo(checkpoint / "deepspeed" / "mp_rank_00_model_states.pt")  # torch.load would wait forever
    with pytest.raises(UnsafeCheckpointError, match="is not a regular file or folder"):
        check_checkpoint(checkpoint, within=checkpoints)
    (checkpoint / "deepspeed" / "mp_rank_00_model_states.pt").unlink()
    # A link that stays inside is scanned under its own name, whatever its target is called.
    (checkpoint / "notes.txt").write_bytes((outside / "mp_rank_00_model_states.pt").read_bytes())
    (checkpoint / "deepspeed" / "mp_rank_00_model_states.pt").symlink_to(checkpoint / "notes.txt")
    with pytest.raises(
        UnsafeCheckpointError, match=r"mp_rank_00_model_states\.pt references \['posix\.system'\]"
    ):
        check_checkpoint(checkpoint, within=checkpoints)
    assert not marker.exists()
