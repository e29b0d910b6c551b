"""The DeepSpeed engine on CPU with a toy model: LR schedule, checkpoints, identical resume, best, history.

The toy loop below has the shape of the stages' loops (micro-batches, accumulation, evaluations,
checkpoints), so these tests pin what the engine promises them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from semcode import storage
from semcode.train import engine as ds

TOTAL_STEPS = 8
MICRO_BATCH = 4
GRAD_ACCUM = 2
PEAK_LR = 1e-2
WARMUP = 2
EVAL_METRICS = {2: 0.2, 4: 0.6, 6: 0.4, 8: 0.5}  # step -> the "mrr" the toy validator reports


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # Dropout makes every step depend on torch's RNG: resume must restore it.
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def toy_run(out_dir, stop_at: int = TOTAL_STEPS, resume: bool = False, zero_stage: int = 0, keep: int = 0):
    """Train the toy model up to step ``stop_at`` (of TOTAL_STEPS), checkpointing every 2 steps."""
    ds.setup_distributed()
    ds.seed_everything(0)
    model = Toy()
    optimizer = ds.adamw(model, PEAK_LR, weight_decay=0.01)
    scheduler = ds.warmup_cosine_schedule(optimizer, WARMUP, TOTAL_STEPS, min_lr_ratio=0.1)
    config = ds.deepspeed_config(MICRO_BATCH, GRAD_ACCUM, grad_clip=1.0, zero_stage=zero_stage)
    engine = ds.initialize(model, optimizer, scheduler, config)
    state = ds.load_latest_checkpoint(out_dir / "checkpoints", engine) if resume else None
    step = state["step"] if state else 0
    history = state["history"] if state else None
    log = ds.TrainingLog("toy", "rows", TOTAL_STEPS, epochs=1, log_every=4, history=history, force_plain=True)

    data = torch.Generator().manual_seed(123)
    x = torch.randn(64, 8, generator=data)
    y = x.sum(dim=1, keepdim=True)
    best_weights = {}
    while step < stop_at:
        loss_sum = 0.0
        for micro in range(GRAD_ACCUM):
            start = ((step * GRAD_ACCUM + micro) * MICRO_BATCH) % len(x)
            loss = nn.functional.mse_loss(
                engine(x[start : start + MICRO_BATCH]), y[start : start + MICRO_BATCH]
            )
            engine.backward(loss)
            boundary = engine.is_gradient_accumulation_boundary()
            assert boundary == (micro == GRAD_ACCUM - 1)
            lr = ds.current_lr(engine)
            engine.step()
            loss_sum += loss.item() / GRAD_ACCUM
        step += 1
        log.step(step, 1, {"loss": loss_sum, "part": loss_sum / 2}, lr, items=MICRO_BATCH * GRAD_ACCUM)
        if step in EVAL_METRICS and log.evaluate(step, {"mrr": EVAL_METRICS[step]}):
            ds.save_weights(engine, out_dir / "best" / ds.WEIGHTS_FILE)
            best_weights = ds.full_state_dict(engine)
        if step % 2 == 0:
            ds.save_checkpoint(out_dir / "checkpoints", engine, step, {"history": log.history}, keep=keep)
    log.close()
    log.save(out_dir / "history.json")
    return log.history, ds.full_state_dict(engine), best_weights


def losses(history):
    return [entry["loss"] for entry in history["steps"]]


def test_warmup_cosine_shape():
    values = [ds.warmup_cosine(s, warmup_steps=4, total_steps=20, min_lr_ratio=0.1) for s in range(20)]
    assert values[0] == pytest.approx(0.25)  # the first update already learns
    assert values[3] == pytest.approx(1.0)  # the peak at the end of warmup
    assert all(a < b for a, b in zip(values[:4], values[1:4], strict=False))
    assert all(a >= b for a, b in zip(values[4:], values[5:], strict=False))  # then only down
    assert values[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 15 / 16)))
    assert ds.warmup_cosine(100, 4, 20, 0.1) == pytest.approx(0.1)  # past the end: the floor
    assert ds.warmup_cosine(0, 0, 10, 0.0) == pytest.approx(1.0)  # no warmup
    with pytest.raises(ValueError, match="total_steps"):
        ds.warmup_cosine_schedule(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), 0, 0)


def test_deepspeed_config_is_plain_and_checked(tmp_path):
    config = ds.deepspeed_config(16, grad_accum=4, grad_clip=0.5, zero_stage=2, bf16=False)
    assert config["train_micro_batch_size_per_gpu"] == 16
    assert config["gradient_accumulation_steps"] == 4
    assert config["gradient_clipping"] == 0.5
    assert config["zero_optimization"]["stage"] == 2
    assert config["bf16"] == {"enabled": False}
    assert ds.deepspeed_config(8)["bf16"]["enabled"] is torch.cuda.is_available()
    path = ds.save_deepspeed_config(config, tmp_path)
    assert json.loads(path.read_text()) == config
    with pytest.raises(ValueError, match="zero_stage"):
        ds.deepspeed_config(8, zero_stage=3)


@pytest.mark.parametrize("zero_stage", [0, 1])
def test_resume_continues_identically(tmp_path, zero_stage):
    full_dir, split_dir = tmp_path / "full", tmp_path / "split"
    full_history, full_weights, _ = toy_run(full_dir, zero_stage=zero_stage)
    toy_run(split_dir, stop_at=TOTAL_STEPS // 2, zero_stage=zero_stage)  # "interrupted" after step 4
    assert ds.latest_checkpoint(split_dir / "checkpoints").name == "step-000004"
    resumed_history, resumed_weights, _ = toy_run(split_dir, resume=True, zero_stage=zero_stage)

    assert losses(resumed_history) == losses(full_history)  # bit-identical on CPU
    assert [e["lr"] for e in resumed_history["steps"]] == [e["lr"] for e in full_history["steps"]]
    assert resumed_weights.keys() == full_weights.keys()
    for name, tensor in full_weights.items():
        assert torch.equal(resumed_weights[name], tensor), name
    assert resumed_history["evals"] == full_history["evals"]
    assert resumed_history["best"] == full_history["best"]


def test_checkpoints_layout_keep_and_weights_without_deepspeed(tmp_path):
    history, final_weights, _ = toy_run(tmp_path, keep=2)
    checkpoints = tmp_path / "checkpoints"
    assert [p.name for p in ds.list_checkpoints(checkpoints)] == ["step-000006", "step-000008"]
    assert (checkpoints / "latest").read_text().strip() == "step-000008"
    latest = ds.latest_checkpoint(checkpoints)
    assert (latest / ds.WEIGHTS_FILE).is_file()
    assert (latest / ds.TRAINER_STATE_FILE).is_file()
    assert (latest / ds.DEEPSPEED_TAG).is_dir()
    assert not list(checkpoints.glob("*.partial"))

    plain = Toy()  # a plain module, no engine: the safetensors weights are the trained ones
    ds.load_weights(plain, latest / ds.WEIGHTS_FILE)
    for name, tensor in plain.state_dict().items():
        assert torch.equal(tensor, final_weights[name]), name

    state = torch.load(latest / ds.TRAINER_STATE_FILE, weights_only=True)
    assert state["step"] == 8 and len(state["history"]["steps"]) == 8
    assert (checkpoints / "step-000006").exists()
    # LR per step follows the schedule the engine steps at accumulation boundaries.
    expected = [PEAK_LR * ds.warmup_cosine(s, WARMUP, TOTAL_STEPS, 0.1) for s in range(TOTAL_STEPS)]
    assert [e["lr"] for e in history["steps"]] == pytest.approx(expected)


def test_best_checkpoint_and_history(tmp_path, capsys):
    history, _, best_weights = toy_run(tmp_path)
    assert history["best"] == {"step": 4, "mrr": 0.6}
    assert [e["step"] for e in history["evals"]] == sorted(EVAL_METRICS)
    assert [e["mrr"] for e in history["evals"]] == [EVAL_METRICS[s] for s in sorted(EVAL_METRICS)]
    best = Toy()
    ds.load_weights(best, tmp_path / "best" / ds.WEIGHTS_FILE)
    for name, tensor in best.state_dict().items():
        assert torch.equal(tensor, best_weights[name]), name

    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["best"] == history["best"]
    first = saved["steps"][0]
    assert set(first) >= {"step", "epoch", "lr", "loss", "part", "items", "seconds"}
    assert [e["step"] for e in saved["steps"]] == list(range(1, TOTAL_STEPS + 1))

    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("[toy] epoch")]
    assert [line.split(" step ")[1].split(" ")[0] for line in lines] == ["1/8", "4/8", "8/8"]
    assert "| loss " in lines[0] and "(part " in lines[0] and " rows/s | eta " in lines[0]
    assert "[toy] eval step 4 | mrr 0.6000 | best 0.6000 (step 4) *" in err


def test_training_log_progress_line_format():
    log = ds.TrainingLog("encoder", "pairs", total_steps=700, epochs=3, force_plain=True)
    log.items_this_run, log.train_seconds, log.steps_this_run = 512 * 10, 10.0, 120
    line = log.step_line(120, 1, {"loss": 2.31, "contrastive": 2.1, "hard": 0.21}, 4.8e-4)
    assert line.startswith(
        "epoch 1/3 step 120/700 | loss 2.3100 (contrastive 2.1000 hard 0.2100) | lr 4.8e-04 |"
    )
    assert " 512 pairs/s | eta " in line


# ---------------------------------------------------------------------------------------------------------
# run_steps, the stages' loop, and its live metrics (TensorBoard event files)

LOOP_ROWS = 32  # per rank: 8 micro-batches of 4, 4 optimizer steps per epoch, 2 epochs in TOTAL_STEPS


def loop_run(out_dir, zero_stage: int = 0, evaluate_before: bool = True):
    """The toy model through ``run_steps`` for 2 epochs: evaluations every 2 steps, checkpoints every 4."""
    ds.setup_distributed()
    ds.seed_everything(0)
    model = Toy()
    optimizer = ds.adamw(model, PEAK_LR, weight_decay=0.01)
    scheduler = ds.warmup_cosine_schedule(optimizer, WARMUP, TOTAL_STEPS, min_lr_ratio=0.1)
    engine = ds.initialize(
        model, optimizer, scheduler, ds.deepspeed_config(MICRO_BATCH, GRAD_ACCUM, zero_stage=zero_stage)
    )
    world_size = ds.world_size()
    plan = ds.plan_steps(LOOP_ROWS * world_size, MICRO_BATCH, GRAD_ACCUM, world_size, epochs=2)
    assert plan.total_steps == TOTAL_STEPS and plan.epochs == 2
    log = ds.TrainingLog("toy", "rows", plan.total_steps, plan.epochs, log_every=4, force_plain=True)
    x = torch.randn(LOOP_ROWS * world_size, 8, generator=torch.Generator().manual_seed(123))
    x = x[ds.rank() :: world_size]  # each rank its own rows
    y = x.sum(dim=1, keepdim=True)

    def micro_batches(epoch, position, count):
        for index in range(position, min(plan.micro_per_epoch, position + count)):
            rows = slice(index * MICRO_BATCH, (index + 1) * MICRO_BATCH)
            yield x[rows], y[rows]

    def forward(batch):
        loss = nn.functional.mse_loss(engine(batch[0]), batch[1])
        return ds.StepOutput(loss, {"loss": loss, "half": loss / 2}, len(batch[0]), {"temperature": 0.05})

    def evaluate(step):
        log.evaluate(step, {"mrr": EVAL_METRICS.get(step, 0.1), "loss": 1.0 / (step + 1)})

    if evaluate_before:
        evaluate(0)  # before the loop, as the encoder's zero-shot evaluation
    schedule = ds.LoopSchedule(
        GRAD_ACCUM, eval_every=2, checkpoint_every=4, keep_checkpoints=1, time_budget_minutes=0
    )
    result = ds.run_steps(
        engine, plan, log, schedule, out_dir / "checkpoints", {"toy": 1}, 0, micro_batches, forward, evaluate
    )
    log.close()
    log.save(out_dir / "history.json")
    return result


def scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in ``log_dir``'s event files, read by TensorBoard's own reader: tag -> [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_run_steps_writes_tensorboard_events_that_match_history(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(ds.TENSORBOARD_PREFIX_ENV, str(tmp_path / "prefix"))
    assert loop_run(tmp_path / "out") == ds.LoopResult(TOTAL_STEPS, "steps")
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    steps = list(range(1, TOTAL_STEPS + 1))

    for log_dir in (tmp_path / "out" / "tensorboard", tmp_path / "prefix" / "toy"):
        found = scalars(log_dir)
        for tag, key in (("train/loss", "loss"), ("train/half", "half"), ("train/lr", "lr")):
            assert [s for s, _ in found[tag]] == steps, tag
            assert [v for _, v in found[tag]] == pytest.approx([e[key] for e in history["steps"]], rel=1e-6)
        assert [v for _, v in found["train/grad_norm"]] == pytest.approx(
            [e["grad_norm"] for e in history["steps"]], rel=1e-6
        )
        assert all(v > 0 for _, v in found["train/grad_norm"])
        assert [v for _, v in found["train/temperature"]] == pytest.approx([0.05] * TOTAL_STEPS)
        # evaluations, the one before the loop (step 0) included
        assert [s for s, _ in found["valid/mrr"]] == [e["step"] for e in history["evals"]] == [0, 2, 4, 6, 8]
        assert [v for _, v in found["valid/mrr"]] == pytest.approx([e["mrr"] for e in history["evals"]])
        for tag in (
            "items_per_second",
            "step_seconds",
            "data_wait_seconds",
            "allreduce_seconds",
            "peak_rss_mib",
        ):
            values = [v for _, v in found[f"rank/{tag}"]]
            assert len(values) == TOTAL_STEPS and all(v >= 0 for v in values), tag
        assert min(v for _, v in found["rank/peak_rss_mib"]) > 10  # a Python process with torch in it
    assert "data_seconds" in history["steps"][0]

    err = capsys.readouterr().err
    epoch_lines = [line for line in err.splitlines() if " complete | " in line]
    first_epoch_loss = sum(e["loss"] for e in history["steps"][:4]) / 4
    assert epoch_lines[0].startswith(f"[toy] epoch 1 complete | train loss {first_epoch_loss:.4f} | ")
    assert "| valid loss 0.2000 | valid mrr 0.6000 | time " in epoch_lines[0]  # the last eval of epoch 1
    assert epoch_lines[1].startswith("[toy] epoch 2 complete | train loss ")
    assert len(epoch_lines) == 2
    assert "| best mrr 0.6000" in err.split("[toy] epoch 2/2 step 8/8")[1].splitlines()[0]


def test_grad_norm_is_the_same_whether_deepspeed_or_the_loop_measures_it(tmp_path):
    """ZeRO 0 with a torch optimizer: DeepSpeed keeps no norm, the loop computes it; ZeRO 1: DeepSpeed's."""
    loop_run(tmp_path / "zero0", zero_stage=0, evaluate_before=False)
    loop_run(tmp_path / "zero1", zero_stage=1, evaluate_before=False)
    norms = [
        [e["grad_norm"] for e in json.loads((tmp_path / name / "history.json").read_text())["steps"]]
        for name in ("zero0", "zero1")
    ]
    assert norms[0] == pytest.approx(norms[1], rel=1e-5)


def test_live_log_dirs_switch_and_prefix(tmp_path, monkeypatch):
    assert ds.live_log_dirs("encoder", tmp_path / "tb") == [tmp_path / "tb"]
    assert ds.live_log_upload("encoder") is None
    monkeypatch.setenv(ds.TENSORBOARD_PREFIX_ENV, str(tmp_path / "logs"))
    assert ds.live_log_dirs("encoder", tmp_path / "tb") == [tmp_path / "tb", tmp_path / "logs" / "encoder"]
    assert ds.live_log_upload("encoder") is None
    monkeypatch.setenv(ds.TENSORBOARD_PREFIX_ENV, "s3://bucket/logs")
    assert ds.live_log_dirs("encoder", tmp_path / "tb") == [tmp_path / "tb"]  # uploaded, not written
    assert ds.live_log_upload("encoder") == "s3://bucket/logs/encoder"
    monkeypatch.setenv(ds.TENSORBOARD_PREFIX_ENV, "gs://bucket/logs")
    with pytest.raises(ValueError, match="gs://bucket/logs"):
        ds.live_log_dirs("encoder", tmp_path / "tb")
    monkeypatch.setenv(ds.TENSORBOARD_SWITCH_ENV, "0")
    assert ds.live_log_dirs("encoder", tmp_path / "tb") == []
    monkeypatch.setenv(ds.TENSORBOARD_PREFIX_ENV, "s3://bucket/logs")
    assert ds.live_log_upload("encoder") is None


def test_event_files_reach_s3_while_training_and_tensorboard_reads_them_there(tmp_path, monkeypatch, s3_env):
    """A live S3 prefix: the mirror uploads grown event files as it goes (not only at the end), and
    TensorBoard's own reader (its boto3 file system, S3_ENDPOINT) reads the curves back from S3."""

    prefix = f"{s3_env}/runs/one"
    monkeypatch.setenv(ds.TENSORBOARD_PREFIX_ENV, prefix)
    ds.check_live_log_prefix("toy")  # writable: no error
    local = tmp_path / "tb"
    live = ds.LiveMetrics([local], 0, upload_to=ds.live_log_upload("toy"))
    live.mirror.every = 3600.0  # the test drives the uploads itself
    live.add({"train/loss": 2.0}, 1)
    live.flush()
    live.mirror.sync()
    uploaded = storage.list_files(f"{prefix}/toy")
    assert len(uploaded) == 1 and "events.out.tfevents." in uploaded[0]
    first_size = len(storage.read_bytes(uploaded[0]))
    live.add({"train/loss": 1.0}, 2)
    live.close()  # flushes and uploads once more
    assert len(storage.read_bytes(uploaded[0])) > first_size

    monkeypatch.setenv("S3_ENDPOINT", os.environ["AWS_ENDPOINT_URL"])  # what TensorBoard's S3 reader reads
    assert scalars(f"{prefix}/toy")["train/loss"] == [(1, 2.0), (2, 1.0)]


def test_an_unwritable_live_log_prefix_is_refused_before_training(tmp_path, monkeypatch, s3_env):
    monkeypatch.setenv(ds.TENSORBOARD_PREFIX_ENV, "s3://no-such-bucket-semcode/logs")
    with pytest.raises(OSError, match=f"{ds.TENSORBOARD_PREFIX_ENV}.*no-such-bucket-semcode"):
        ds.check_live_log_prefix("encoder")


def test_a_failed_upload_is_said_once_and_retried(tmp_path, monkeypatch, capsys):

    calls = []

    def failing_copy(src, dst):
        calls.append(dst)
        if len(calls) <= 2:
            raise OSError("endpoint unreachable")

    monkeypatch.setattr(storage, "copy", failing_copy)
    (tmp_path / "events.out.tfevents.1").write_bytes(b"x")
    mirror = ds.EventFileMirror(tmp_path, "s3://bucket/logs", every=3600.0)
    mirror.sync()
    mirror.sync()
    mirror.close()  # the third try succeeds
    assert calls == ["s3://bucket/logs/events.out.tfevents.1"] * 3
    assert capsys.readouterr().err.count("endpoint unreachable") == 1


def test_no_event_files_when_switched_off(tmp_path, monkeypatch):
    monkeypatch.setenv(ds.TENSORBOARD_SWITCH_ENV, "0")
    loop_run(tmp_path, evaluate_before=False)
    assert not (tmp_path / "tensorboard").exists()
    assert len(json.loads((tmp_path / "history.json").read_text())["steps"]) == TOTAL_STEPS


@pytest.mark.slow
def test_two_ranks_each_write_their_own_scalars(tmp_path):
    """Two CPU processes (torchrun, gloo): rank 0 writes the run's curves, rank 1 its rank/* values."""
    run_two_ranks_script(__file__, str(tmp_path))
    rank0, rank1 = scalars(tmp_path / "tensorboard"), scalars(tmp_path / "tensorboard" / "rank-1")
    assert "train/loss" in rank0 and "valid/mrr" in rank0
    assert set(rank1) == {
        f"rank/{t}"
        for t in (
            "items_per_second",
            "step_seconds",
            "data_wait_seconds",
            "allreduce_seconds",
            "peak_rss_mib",
        )
    }
    assert [s for s, _ in rank1["rank/items_per_second"]] == list(range(1, TOTAL_STEPS + 1))
    # Two ranks all-reduce their gradients: each rank's clock saw time in it at every step.
    assert all(v > 0 for _, v in rank1["rank/allreduce_seconds"])
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


# ------------------------------------------------------------------ durable checkpoints and SIGTERM


def fake_checkpoint(checkpoints_dir: Path, step: int) -> Path:
    """A complete local checkpoint as save_checkpoint leaves it (its files' contents name the step)."""
    path = checkpoints_dir / ds.checkpoint_name(step)
    (path / ds.DEEPSPEED_TAG).mkdir(parents=True)
    (path / ds.WEIGHTS_FILE).write_text(f"weights {step}")
    (path / ds.DEEPSPEED_TAG / "optimizer.pt").write_text(f"optimizer {step}")
    ds.write_latest(checkpoints_dir, path.name)
    return path


@pytest.mark.parametrize("where", ["folder", "s3"])
def test_durable_checkpoints_move_latest_last_keep_the_newest_and_come_back_on_a_new_disk(
    where, tmp_path, request
):
    if where == "s3":
        root = request.getfixturevalue("s3_env") + "/checkpoints/run-1/train-encoder"
    else:
        root = str(tmp_path / "volume" / "run-1" / "train-encoder")
    pod = tmp_path / "pod-1"
    durable = ds.DurableCheckpoints(root, pod / "checkpoints", (pod / "best",), keep=2)
    assert durable.restore() is None  # a first start: nothing there yet
    for step in (2, 4, 6):
        (pod / "best").mkdir(parents=True, exist_ok=True)
        (pod / "best" / "best.json").write_text(json.dumps({"step": step}))
        assert durable.push(fake_checkpoint(pod / "checkpoints", step)) == storage.join(
            root, f"step-00000{step}"
        )
    assert durable.uploads() == ["step-000004", "step-000006"]  # keep=2
    assert storage.read_text(storage.join(root, ds.LATEST_FILE)).strip() == "step-000006"

    # An upload killed half-way leaves files of step 8 but `latest` on step 6: never used.
    storage.write_text(storage.join(root, "step-000008", ds.DURABLE_CHECKPOINT_DIR, ds.WEIGHTS_FILE), "half")
    shutil.rmtree(pod)  # the pod is gone (a hard-linked local copy outlives it too)
    new_pod = tmp_path / "pod-2"  # the retry: another node, an empty disk
    restored = ds.DurableCheckpoints(root, new_pod / "checkpoints", (new_pod / "best",), keep=2)
    assert restored.restore() == "step-000006"
    checkpoint = ds.latest_checkpoint(new_pod / "checkpoints")
    assert checkpoint == new_pod / "checkpoints" / "step-000006"
    assert (checkpoint / ds.WEIGHTS_FILE).read_text() == "weights 6"
    assert (checkpoint / ds.DEEPSPEED_TAG / "optimizer.pt").read_text() == "optimizer 6"
    assert json.loads((new_pod / "best" / "best.json").read_text()) == {"step": 6}  # the best as of step 6
    # Pushing step 8 for real replaces what the killed upload left.
    restored.push(fake_checkpoint(new_pod / "checkpoints", 8))
    assert (
        storage.read_text(storage.join(root, "step-000008", ds.DURABLE_CHECKPOINT_DIR, ds.WEIGHTS_FILE))
        == "weights 8"
    )

    # A pointer naming a place outside its root is refused, naming it.
    storage.write_text(storage.join(root, ds.LATEST_FILE), "../../elsewhere\n")
    with pytest.raises(ValueError, match="elsewhere"):
        ds.DurableCheckpoints(root, tmp_path / "pod-3" / "checkpoints").restore()


def test_a_store_lost_mid_training_is_one_error_and_latest_stays_on_the_last_complete_upload(
    tmp_path, monkeypatch, capsys
):
    root = str(tmp_path / "volume" / "run-1" / "train-encoder")
    durable = ds.DurableCheckpoints(root, tmp_path / "pod" / "checkpoints")
    durable.push(fake_checkpoint(tmp_path / "pod" / "checkpoints", 2))

    def unreachable(*args, **kwargs):
        raise storage.StorageError("cannot reach S3 endpoint http://127.0.0.1:9 after 2 attempts")

    monkeypatch.setattr(storage, "copy_tree", unreachable)
    monkeypatch.setattr(storage, "write_text", unreachable)
    with pytest.raises(
        ds.DurableCheckpointError, match="durable checkpoint step-000004 not stored: cannot reach"
    ):
        durable.push(fake_checkpoint(tmp_path / "pod" / "checkpoints", 4))
    monkeypatch.undo()
    assert storage.read_text(storage.join(root, ds.LATEST_FILE)).strip() == "step-000002"

    # The training stages end with that one line and exit 1 (a fault: KFP retries the task), no traceback.
    from semcode.stages import train_decoder, train_encoder

    for stage, argv in (
        (train_encoder, ["--pairs", "p", "--out", str(tmp_path / "e"), "--init-from", "minilm"]),
        (train_decoder, ["--encoder", "e", "--pairs", "p", "--tokenizer", "t", "--out", str(tmp_path / "d")]),
    ):

        def lost(*args, **kwargs):
            raise ds.DurableCheckpointError("durable checkpoint step-000004 not stored: gone")

        monkeypatch.setattr(stage, "run", lost)
        assert stage.main(argv) == 1
        err = capsys.readouterr().err
        assert "error: durable checkpoint step-000004 not stored: gone" in err and "Traceback" not in err


def test_durable_location_is_one_place_per_run_and_task(monkeypatch, tmp_path):
    import semcode

    monkeypatch.delenv(semcode.RUN_CHECKPOINTS_ENV, raising=False)
    assert ds.durable_location("s3://b/checkpoints", "run-1", "train-encoder") == (
        "s3://b/checkpoints/run-1/train-encoder"
    )
    assert ds.durable_location("", "run-1", "train-encoder") == ""  # no root: no durable copy
    monkeypatch.setenv(semcode.RUN_CHECKPOINTS_ENV, str(tmp_path / "runs" / "r1" / "checkpoints"))
    assert ds.durable_location("", "kfp-job-7", "train-encoder") == str(  # semcode run: its run's folder
        tmp_path / "runs" / "r1" / "checkpoints" / "train-encoder"
    )
    for run_id, task in (("a/b", "train-encoder"), ("run-1", ".."), ("", "train-encoder")):
        with pytest.raises(ValueError):
            ds.durable_location("s3://b/checkpoints", run_id, task)


def test_sigterm_becomes_a_stop_flag_and_the_old_handler_comes_back():
    before = signal.getsignal(signal.SIGTERM)
    with ds.StopRequest() as stop:
        assert not stop.agreed("cpu")
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to this (main) thread: the process lives on
        assert stop.received and stop.agreed("cpu")
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_checkpoint_root_that_cannot_be_written_is_refused_before_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(storage.StorageError, match=f"checkpoint_root {blocker}/ckpt is not writable"):
        ds.check_checkpoints_dir(tmp_path / "out" / "checkpoints", False, str(blocker / "ckpt"))
