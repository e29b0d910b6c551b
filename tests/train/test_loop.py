"""run_steps, the stages' loop (semcode.train.loop), on CPU with a toy model, and its live metrics
(TensorBoard event files)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from toy_training import EVAL_METRICS, GRAD_ACCUM, MICRO_BATCH, PEAK_LR, TOTAL_STEPS, WARMUP, Toy, scalars

from semcode.train import distributed
from semcode.train.distributed import (
    adamw,
    deepspeed_config,
    initialize,
    seed_everything,
    setup_distributed,
    warmup_cosine_schedule,
)
from semcode.train.history import TENSORBOARD_PREFIX_ENV, TENSORBOARD_SWITCH_ENV, TrainingLog
from semcode.train.loop import LoopResult, LoopSchedule, StepOutput, plan_steps, run_steps

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

LOOP_ROWS = 32  # per rank: 8 micro-batches of 4, 4 optimizer steps per epoch, 2 epochs in TOTAL_STEPS


def loop_run(
    out_dir, zero_stage: int = 0, evaluate_before: bool = True, signal_at: tuple[int, int] | None = None
):
    """The toy model through ``run_steps`` for 2 epochs: evaluations every 2 steps, checkpoints every 4.
    ``signal_at`` (micro-batch of the first epoch, signal): the signal is sent to this process before it."""
    setup_distributed()
    seed_everything(0)
    model = Toy()
    optimizer = adamw(model, PEAK_LR, weight_decay=0.01)
    scheduler = warmup_cosine_schedule(optimizer, WARMUP, TOTAL_STEPS, min_lr_ratio=0.1)
    engine = initialize(
        model, optimizer, scheduler, deepspeed_config(MICRO_BATCH, GRAD_ACCUM, zero_stage=zero_stage)
    )
    world_size = distributed.world_size()
    plan = plan_steps(LOOP_ROWS * world_size, MICRO_BATCH, GRAD_ACCUM, world_size, epochs=2)
    assert plan.total_steps == TOTAL_STEPS and plan.epochs == 2
    log = TrainingLog("toy", "rows", plan.total_steps, plan.epochs, log_every=4, force_plain=True)
    x = torch.randn(LOOP_ROWS * world_size, 8, generator=torch.Generator().manual_seed(123))
    x = x[distributed.rank() :: world_size]  # each rank its own rows
    y = x.sum(dim=1, keepdim=True)

    def micro_batches(epoch, position, count):
        for index in range(position, min(plan.micro_per_epoch, position + count)):
            if signal_at is not None and (epoch, index) == (0, signal_at[0]):
                os.kill(os.getpid(), signal_at[1])
            rows = slice(index * MICRO_BATCH, (index + 1) * MICRO_BATCH)
            yield x[rows], y[rows]

    def forward(batch):
        loss = nn.functional.mse_loss(engine(batch[0]), batch[1])
        return StepOutput(loss, {"loss": loss, "half": loss / 2}, len(batch[0]), {"temperature": 0.05})

    def evaluate(step):
        log.evaluate(step, {"mrr": EVAL_METRICS.get(step, 0.1), "loss": 1.0 / (step + 1)})

    if evaluate_before:
        evaluate(0)  # before the loop, as the encoder's zero-shot evaluation
    schedule = LoopSchedule(
        GRAD_ACCUM, eval_every=2, checkpoint_every=4, keep_checkpoints=1, time_budget_minutes=0
    )
    result = run_steps(
        engine, plan, log, schedule, out_dir / "checkpoints", {"toy": 1}, 0, micro_batches, forward, evaluate
    )
    log.close()
    log.save(out_dir / "history.json")
    return result


def test_run_steps_writes_tensorboard_events_that_match_history(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(TENSORBOARD_PREFIX_ENV, str(tmp_path / "prefix"))
    assert loop_run(tmp_path / "out") == LoopResult(TOTAL_STEPS, "steps")
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    steps = list(range(1, TOTAL_STEPS + 1))

    for log_dir in (tmp_path / "out" / "tensorboard", tmp_path / "prefix" / "toy"):
        found = scalars(log_dir)
        for tag, key in (("toy/train/loss", "loss"), ("toy/train/half", "half"), ("toy/train/lr", "lr")):
            assert [s for s, _ in found[tag]] == steps, tag
            assert [v for _, v in found[tag]] == pytest.approx([e[key] for e in history["steps"]], rel=1e-6)
        assert [v for _, v in found["toy/train/grad_norm"]] == pytest.approx(
            [e["grad_norm"] for e in history["steps"]], rel=1e-6
        )
        assert all(v > 0 for _, v in found["toy/train/grad_norm"])
        assert [v for _, v in found["toy/train/temperature"]] == pytest.approx([0.05] * TOTAL_STEPS)
        # evaluations, the one before the loop (step 0) included
        assert (
            [s for s, _ in found["toy/valid/mrr"]] == [e["step"] for e in history["evals"]] == [0, 2, 4, 6, 8]
        )
        assert [v for _, v in found["toy/valid/mrr"]] == pytest.approx([e["mrr"] for e in history["evals"]])
        for tag in (
            "items_per_second",
            "step_seconds",
            "data_wait_seconds",
            "allreduce_seconds",
            "peak_rss_mib",
        ):
            values = [v for _, v in found[f"toy/rank/{tag}"]]
            assert len(values) == TOTAL_STEPS and all(v >= 0 for v in values), tag
        assert min(v for _, v in found["toy/rank/peak_rss_mib"]) > 10  # a Python process with torch in it
    assert "data_seconds" in history["steps"][0]

    err = capsys.readouterr().err
    epoch_lines = [line for line in err.splitlines() if " complete | " in line]
    first_epoch_loss = sum(e["loss"] for e in history["steps"][:4]) / 4
    assert epoch_lines[0].startswith(f"[toy] epoch 1 complete | train loss {first_epoch_loss:.4f} | ")
    assert "| valid loss 0.2000 | valid mrr 0.6000 | time " in epoch_lines[0]  # the last eval of epoch 1
    assert epoch_lines[1].startswith("[toy] epoch 2 complete | train loss ")
    assert len(epoch_lines) == 2
    assert "| best mrr 0.6000" in err.split("[toy] epoch 2/2 step 8/8")[1].splitlines()[0]


def test_sigusr1_checkpoints_at_the_next_step_and_training_goes_on(tmp_path, monkeypatch, capsys):
    """ "Save now": SIGUSR1 during step 3 (micro-batches 4 and 5) gives a checkpoint after it, beside the
    due ones (every 4 steps); the run goes on to its end exactly as without the signal."""
    monkeypatch.setenv(TENSORBOARD_SWITCH_ENV, "0")
    assert loop_run(tmp_path / "plain") == LoopResult(TOTAL_STEPS, "steps")
    capsys.readouterr()
    assert loop_run(tmp_path / "asked", signal_at=(5, signal.SIGUSR1)) == LoopResult(TOTAL_STEPS, "steps")
    checkpoints = [line for line in capsys.readouterr().err.splitlines() if "] checkpoint " in line]
    assert [line.split("checkpoints/")[1].split()[0] for line in checkpoints] == [
        "step-000003",
        "step-000004",
        "step-000008",
    ]
    assert checkpoints[0].endswith("(asked for by SIGUSR1; training goes on)")
    plain, asked = (json.loads((tmp_path / n / "history.json").read_text()) for n in ("plain", "asked"))
    assert [e["loss"] for e in asked["steps"]] == [e["loss"] for e in plain["steps"]]


def test_grad_norm_is_the_same_whether_deepspeed_or_the_loop_measures_it(tmp_path):
    """ZeRO 0 with a torch optimizer: DeepSpeed keeps no norm, the loop computes it; ZeRO 1: DeepSpeed's."""
    loop_run(tmp_path / "zero0", zero_stage=0, evaluate_before=False)
    loop_run(tmp_path / "zero1", zero_stage=1, evaluate_before=False)
    norms = [
        [e["grad_norm"] for e in json.loads((tmp_path / name / "history.json").read_text())["steps"]]
        for name in ("zero0", "zero1")
    ]
    assert norms[0] == pytest.approx(norms[1], rel=1e-5)


def test_no_event_files_when_switched_off(tmp_path, monkeypatch):
    monkeypatch.setenv(TENSORBOARD_SWITCH_ENV, "0")
    loop_run(tmp_path, evaluate_before=False)
    assert not (tmp_path / "tensorboard").exists()
    assert len(json.loads((tmp_path / "history.json").read_text())["steps"]) == TOTAL_STEPS


@pytest.mark.slow
def test_two_ranks_each_write_their_own_scalars(tmp_path):
    """Two CPU processes (torchrun, gloo): rank 0 writes the run's curves, rank 1 its rank/* values."""
    run_two_ranks_script(__file__, str(tmp_path))
    rank0, rank1 = scalars(tmp_path / "tensorboard"), scalars(tmp_path / "tensorboard" / "rank-1")
    assert "toy/train/loss" in rank0 and "toy/valid/mrr" in rank0
    assert set(rank1) == {
        f"toy/rank/{t}"
        for t in (
            "items_per_second",
            "step_seconds",
            "data_wait_seconds",
            "allreduce_seconds",
            "peak_rss_mib",
        )
    }
    assert [s for s, _ in rank1["toy/rank/items_per_second"]] == list(range(1, TOTAL_STEPS + 1))
    # Two ranks all-reduce their gradients: each rank's clock saw time in it at every step.
    assert all(v > 0 for _, v in rank1["toy/rank/allreduce_seconds"])
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["steps"][0]["items"] == MICRO_BATCH * GRAD_ACCUM * 2  # both ranks' rows
    assert all(e["allreduce_seconds"] > 0 for e in history["steps"])


def run_two_ranks_script(script: str, *args: str) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", script, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)  # this pytest process may be rank 0 of its own world of 1
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


if __name__ == "__main__":  # one rank of test_two_ranks_each_write_their_own_scalars, under torchrun
    loop_run(Path(sys.argv[1]))
