"""semcode.train.checkpoints on CPU with a toy model: checkpoints, identical resume, best weights and
history; durable checkpoints and SIGTERM.

The toy loop below has the shape of the stages' loops (micro-batches, accumulation, evaluations,
checkpoints), so these tests pin what the checkpoints promise them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from torch import nn
from toy_training import EVAL_METRICS, GRAD_ACCUM, MICRO_BATCH, PEAK_LR, TOTAL_STEPS, WARMUP, Toy

from semcode import storage
from semcode.train.checkpoints import (
    DEEPSPEED_TAG,
    DURABLE_CHECKPOINT_DIR,
    LATEST_FILE,
    TRAINER_STATE_FILE,
    WEIGHTS_FILE,
    DurableCheckpointError,
    DurableCheckpoints,
    StopRequest,
    check_checkpoints_dir,
    checkpoint_name,
    durable_location,
    full_state_dict,
    latest_checkpoint,
    list_checkpoints,
    load_latest_checkpoint,
    load_weights,
    save_checkpoint,
    save_requests_outside_steps,
    save_weights,
    training_output,
    write_latest,
)
from semcode.train.distributed import (
    adamw,
    current_lr,
    deepspeed_config,
    initialize,
    seed_everything,
    setup_distributed,
    warmup_cosine,
    warmup_cosine_schedule,
)
from semcode.train.history import TrainingLog

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def toy_run(out_dir, stop_at: int = TOTAL_STEPS, resume: bool = False, zero_stage: int = 0, keep: int = 0):
    """Train the toy model up to step ``stop_at`` (of TOTAL_STEPS), checkpointing every 2 steps."""
    setup_distributed()
    seed_everything(0)
    model = Toy()
    optimizer = adamw(model, PEAK_LR, weight_decay=0.01)
    scheduler = warmup_cosine_schedule(optimizer, WARMUP, TOTAL_STEPS, min_lr_ratio=0.1)
    config = deepspeed_config(MICRO_BATCH, GRAD_ACCUM, grad_clip=1.0, zero_stage=zero_stage)
    engine = initialize(model, optimizer, scheduler, config)
    state = load_latest_checkpoint(out_dir / "checkpoints", engine) if resume else None
    step = state["step"] if state else 0
    history = state["history"] if state else None
    log = TrainingLog("toy", "rows", TOTAL_STEPS, epochs=1, log_every=4, history=history, force_plain=True)

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
            lr = current_lr(engine)
            engine.step()
            loss_sum += loss.item() / GRAD_ACCUM
        step += 1
        log.step(step, 1, {"loss": loss_sum, "part": loss_sum / 2}, lr, items=MICRO_BATCH * GRAD_ACCUM)
        if step in EVAL_METRICS and log.evaluate(step, {"mrr": EVAL_METRICS[step]}):
            save_weights(engine, out_dir / "best" / WEIGHTS_FILE)
            best_weights = full_state_dict(engine)
        if step % 2 == 0:
            save_checkpoint(out_dir / "checkpoints", engine, step, {"history": log.history}, keep=keep)
    log.close()
    log.save(out_dir / "history.json")
    return log.history, full_state_dict(engine), best_weights


def losses(history):
    return [entry["loss"] for entry in history["steps"]]


@pytest.mark.parametrize("zero_stage", [0, 1])
def test_resume_continues_identically(tmp_path, zero_stage):
    full_dir, split_dir = tmp_path / "full", tmp_path / "split"
    full_history, full_weights, _ = toy_run(full_dir, zero_stage=zero_stage)
    toy_run(split_dir, stop_at=TOTAL_STEPS // 2, zero_stage=zero_stage)  # "interrupted" after step 4
    assert latest_checkpoint(split_dir / "checkpoints").name == "step-000004"
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
    assert [p.name for p in list_checkpoints(checkpoints)] == ["step-000006", "step-000008"]
    assert (checkpoints / "latest").read_text().strip() == "step-000008"
    latest = latest_checkpoint(checkpoints)
    assert (latest / WEIGHTS_FILE).is_file()
    assert (latest / TRAINER_STATE_FILE).is_file()
    assert (latest / DEEPSPEED_TAG).is_dir()
    assert not list(checkpoints.glob("*.partial"))

    plain = Toy()  # a plain module, no engine: the safetensors weights are the trained ones
    load_weights(plain, latest / WEIGHTS_FILE)
    for name, tensor in plain.state_dict().items():
        assert torch.equal(tensor, final_weights[name]), name

    state = torch.load(latest / TRAINER_STATE_FILE, weights_only=True)
    assert state["step"] == 8 and len(state["history"]["steps"]) == 8
    assert (checkpoints / "step-000006").exists()
    # LR per step follows the schedule the engine steps at accumulation boundaries.
    expected = [PEAK_LR * warmup_cosine(s, WARMUP, TOTAL_STEPS, 0.1) for s in range(TOTAL_STEPS)]
    assert [e["lr"] for e in history["steps"]] == pytest.approx(expected)


def test_best_checkpoint_and_history(tmp_path, capsys):
    history, _, best_weights = toy_run(tmp_path)
    assert history["best"] == {"step": 4, "mrr": 0.6}
    assert [e["step"] for e in history["evals"]] == sorted(EVAL_METRICS)
    assert [e["mrr"] for e in history["evals"]] == [EVAL_METRICS[s] for s in sorted(EVAL_METRICS)]
    best = Toy()
    load_weights(best, tmp_path / "best" / WEIGHTS_FILE)
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


# ------------------------------------------------------------------ durable checkpoints and SIGTERM


def fake_checkpoint(checkpoints_dir: Path, step: int) -> Path:
    """A complete local checkpoint as save_checkpoint leaves it (its files' contents name the step)."""
    path = checkpoints_dir / checkpoint_name(step)
    (path / DEEPSPEED_TAG).mkdir(parents=True)
    (path / WEIGHTS_FILE).write_text(f"weights {step}")
    (path / DEEPSPEED_TAG / "optimizer.pt").write_text(f"optimizer {step}")
    write_latest(checkpoints_dir, path.name)
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
    durable = DurableCheckpoints(root, pod / "checkpoints", (pod / "best",), keep=2)
    assert durable.restore() is None  # a first start: nothing there yet
    for step in (2, 4, 6):
        (pod / "best").mkdir(parents=True, exist_ok=True)
        (pod / "best" / "best.json").write_text(json.dumps({"step": step}))
        assert durable.push(fake_checkpoint(pod / "checkpoints", step)) == storage.join(
            root, f"step-00000{step}"
        )
    assert durable.uploads() == ["step-000004", "step-000006"]  # keep=2
    assert storage.read_text(storage.join(root, LATEST_FILE)).strip() == "step-000006"

    # An upload killed half-way leaves files of step 8 but `latest` on step 6: never used.
    storage.write_text(storage.join(root, "step-000008", DURABLE_CHECKPOINT_DIR, WEIGHTS_FILE), "half")
    shutil.rmtree(pod)  # the pod is gone (a hard-linked local copy outlives it too)
    new_pod = tmp_path / "pod-2"  # the retry: another node, an empty disk
    restored = DurableCheckpoints(root, new_pod / "checkpoints", (new_pod / "best",), keep=2)
    assert restored.restore() == "step-000006"
    checkpoint = latest_checkpoint(new_pod / "checkpoints")
    assert checkpoint == new_pod / "checkpoints" / "step-000006"
    assert (checkpoint / WEIGHTS_FILE).read_text() == "weights 6"
    assert (checkpoint / DEEPSPEED_TAG / "optimizer.pt").read_text() == "optimizer 6"
    assert json.loads((new_pod / "best" / "best.json").read_text()) == {"step": 6}  # the best as of step 6
    # Pushing step 8 for real replaces what the killed upload left.
    restored.push(fake_checkpoint(new_pod / "checkpoints", 8))
    assert (
        storage.read_text(storage.join(root, "step-000008", DURABLE_CHECKPOINT_DIR, WEIGHTS_FILE))
        == "weights 8"
    )

    # A pointer naming a place outside its root is refused, naming it.
    storage.write_text(storage.join(root, LATEST_FILE), "../../elsewhere\n")
    with pytest.raises(ValueError, match="elsewhere"):
        DurableCheckpoints(root, tmp_path / "pod-3" / "checkpoints").restore()


def test_a_store_lost_mid_training_is_one_error_and_latest_stays_on_the_last_complete_upload(
    tmp_path, monkeypatch, capsys
):
    root = str(tmp_path / "volume" / "run-1" / "train-encoder")
    durable = DurableCheckpoints(root, tmp_path / "pod" / "checkpoints")
    durable.push(fake_checkpoint(tmp_path / "pod" / "checkpoints", 2))

    def unreachable(*args, **kwargs):
        raise storage.StorageError("cannot reach S3 endpoint http://127.0.0.1:9 after 2 attempts")

    monkeypatch.setattr(storage, "copy_tree", unreachable)
    monkeypatch.setattr(storage, "write_text", unreachable)
    with pytest.raises(
        DurableCheckpointError, match="durable checkpoint step-000004 not stored: cannot reach"
    ):
        durable.push(fake_checkpoint(tmp_path / "pod" / "checkpoints", 4))
    monkeypatch.undo()
    assert storage.read_text(storage.join(root, LATEST_FILE)).strip() == "step-000002"

    # The training stages end with that one line and exit 1 (a fault: KFP retries the task), no traceback.
    from semcode.stages import train_decoder, train_encoder

    for stage, argv in (
        (train_encoder, ["--pairs", "p", "--out", str(tmp_path / "e"), "--init-from", "minilm"]),
        (train_decoder, ["--encoder", "e", "--pairs", "p", "--tokenizer", "t", "--out", str(tmp_path / "d")]),
    ):

        def lost(*args, **kwargs):
            raise DurableCheckpointError("durable checkpoint step-000004 not stored: gone")

        monkeypatch.setattr(stage, "run", lost)
        assert stage.main(argv) == 1
        err = capsys.readouterr().err
        assert "error: durable checkpoint step-000004 not stored: gone" in err and "Traceback" not in err


def test_durable_location_is_one_place_per_run_and_task(monkeypatch, tmp_path):
    import semcode

    monkeypatch.delenv(semcode.RUN_CHECKPOINTS_ENV, raising=False)
    assert durable_location("s3://b/checkpoints", "run-1", "train-encoder") == (
        "s3://b/checkpoints/run-1/train-encoder"
    )
    assert durable_location("", "run-1", "train-encoder") == ""  # no root: no durable copy
    monkeypatch.setenv(semcode.RUN_CHECKPOINTS_ENV, str(tmp_path / "runs" / "r1" / "checkpoints"))
    assert durable_location("", "kfp-job-7", "train-encoder") == str(  # semcode run: its run's folder
        tmp_path / "runs" / "r1" / "checkpoints" / "train-encoder"
    )
    for run_id, task in (("a/b", "train-encoder"), ("run-1", ".."), ("", "train-encoder")):
        with pytest.raises(ValueError):
            durable_location("s3://b/checkpoints", run_id, task)


def test_sigterm_becomes_a_stop_flag_and_the_old_handler_comes_back():
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert not stop.agreed("cpu")
        os.kill(os.getpid(), signal.SIGTERM)  # delivered to this (main) thread: the process lives on
        assert stop.received and stop.agreed("cpu")
    assert signal.getsignal(signal.SIGTERM) is before


def test_ctrl_c_is_a_stop_flag_with_exit_code_130_and_a_second_one_stops_at_once():
    before = signal.getsignal(signal.SIGINT)
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: the loop finishes its step first
        assert stop.agreed("cpu") and (stop.name, stop.exit_code) == ("SIGINT (Ctrl-C)", 130)
        os.kill(os.getpid(), signal.SIGTERM)  # a later SIGTERM changes nothing
        assert stop.exit_code == 130
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C again: the user will not wait
    assert signal.getsignal(signal.SIGINT) is before


def test_a_checkpoint_root_that_cannot_be_written_is_refused_before_training(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(storage.StorageError, match=f"checkpoint_root {blocker}/ckpt is not writable"):
        check_checkpoints_dir(tmp_path / "out" / "checkpoints", False, str(blocker / "ckpt"))


def test_sigusr1_asks_for_one_checkpoint_and_outside_the_steps_is_one_line(capfd):
    before = signal.getsignal(signal.SIGUSR1)
    with save_requests_outside_steps():
        os.kill(os.getpid(), signal.SIGUSR1)  # setting up: not the signal's default action (the end)
        with StopRequest() as stop:
            assert not stop.checkpoint_asked("cpu")
            os.kill(os.getpid(), signal.SIGUSR1)
            assert stop.checkpoint_asked("cpu") and not stop.checkpoint_asked("cpu")  # once per signal
            assert not stop.agreed("cpu")  # training goes on
        os.kill(os.getpid(), signal.SIGUSR1)  # evaluating or saving after the loop
    assert signal.getsignal(signal.SIGUSR1) is before
    assert capfd.readouterr().err.count("SIGUSR1: no training step under way") == 2


# ------------------------------------------------------------------ a training stage's output (issue 31)


def stage_run(out: Path, resume: bool, checkpoint: str, fail: bool = False) -> None:
    """What a training stage writes through training_output: a checkpoint (and latest), best weights, the
    metrics last; ``fail``: stopped after the checkpoint (SIGTERM, Ctrl-C, a crash)."""
    with training_output(out, resume) as partial:
        (partial / "checkpoints" / checkpoint).mkdir(parents=True)
        (partial / "checkpoints" / checkpoint / WEIGHTS_FILE).write_text(f"weights of {checkpoint}")
        (partial / "checkpoints" / LATEST_FILE).write_text(checkpoint + "\n")
        (partial / "best.json").write_text(checkpoint)
        if fail:
            raise KeyboardInterrupt
        (partial / "metrics.json").write_text(json.dumps({"at": checkpoint}))


def test_a_training_output_is_swapped_in_whole_and_a_stopped_run_resumes_across_the_swap(tmp_path):
    out = tmp_path / "encoder"
    partial = storage.partial_path(out)
    stage_run(out, resume=False, checkpoint="step-000004")
    assert json.loads((out / "metrics.json").read_text()) == {"at": "step-000004"} and not partial.exists()
    before = {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    with pytest.raises(ValueError, match="earlier run's checkpoints; pass --resume"):
        stage_run(out, resume=False, checkpoint="step-000002")  # a fresh run would delete that run
    # --resume over the complete output, stopped: the output is the earlier one, whole; the partial is kept
    with pytest.raises(KeyboardInterrupt):
        stage_run(out, resume=True, checkpoint="step-000008", fail=True)
    assert {p: p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} == before
    assert (partial / "checkpoints" / LATEST_FILE).read_text() == "step-000008\n"
    assert (partial / "checkpoints" / "step-000004" / WEIGHTS_FILE).is_file()  # the copy it started from
    with training_output(out, resume=True) as again:  # continues the stopped run, then swaps it in
        assert again == partial and latest_checkpoint(again / "checkpoints").name == "step-000008"
        (again / "metrics.json").write_text(json.dumps({"at": "step-000008"}))
    assert json.loads((out / "metrics.json").read_text()) == {"at": "step-000008"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder"]

    first = tmp_path / "first"  # a first run, stopped: nothing at --out, its checkpoints in the partial
    with pytest.raises(KeyboardInterrupt):
        stage_run(first, resume=False, checkpoint="step-000002", fail=True)
    kept = storage.partial_path(first)
    with pytest.raises(ValueError, match=f"{kept} holds the checkpoints of a run into {first} that stopped"):
        stage_run(first, resume=False, checkpoint="step-000001")
    assert latest_checkpoint(kept / "checkpoints").name == "step-000002" and not first.exists()
    with training_output(first, resume=False, durable=True) as retry:  # a checkpoint_root's retry goes on
        assert retry == kept and latest_checkpoint(retry / "checkpoints").name == "step-000002"
        (retry / "metrics.json").write_text("{}")
    assert (first / "checkpoints" / LATEST_FILE).is_file() and not kept.exists()


def test_only_rank_0_prepares_and_swaps_a_training_output(tmp_path, monkeypatch):
    out = tmp_path / "encoder"
    monkeypatch.setenv("RANK", "1")
    with training_output(out, resume=False) as partial:
        assert partial == storage.partial_path(out) and not partial.exists()  # rank 0 makes it
        partial.mkdir()
        (partial / "metrics.json").write_text("{}")
    assert not out.exists() and partial.is_dir()  # rank 1 never swaps, and never removes
