"""Stage train_encoder on CPU with DeepSpeed: tiny real data, a tokenizer trained here, a tiny encoder.

The pairs look like small Python functions and their one-line docstrings; a query shares its rare words
(verb, noun, argument, method) with its code, so a model that learns anything ranks the gold code first.
One module-scoped training run (via ``main``) is inspected by several tests; the resume test replays its
second half from a checkpoint and must reproduce it exactly.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from two_ranks import run_two_ranks

from semcode import storage
from semcode.config import ConfigError
from semcode.data.pairs import write_shards
from semcode.stages import train_encoder
from semcode.stages.train_encoder import TrainEncoderConfig
from semcode.train.data import load_pairs

VERBS = [
    "parse",
    "render",
    "merge",
    "compress",
    "validate",
    "serialize",
    "fetch",
    "normalize",
    "encrypt",
    "index",
]
NOUNS = [
    "invoice",
    "glyph",
    "manifest",
    "tensor",
    "ledger",
    "sitemap",
    "palette",
    "tarball",
    "cookie",
    "quaternion",
    "histogram",
    "playlist",
    "waveform",
    "mailbox",
    "schema",
    "thumbnail",
    "polygon",
    "journal",
    "bitmap",
    "vertex",
]
ARGS = ["payload", "stream", "records", "buffer", "handle", "rows", "blob", "chunks"]
METHODS = ["decode", "flatten", "strip", "sorted_keys", "checksum", "as_dict", "rewind", "split_lines"]

TRAIN_FLAGS = [
    "--size",
    "tiny",
    "--max-length",
    "64",
    "--batch-size",
    "16",
    "--epochs",
    "3",
    "--lr",
    "2e-3",
    "--warmup-steps",
    "3",
    "--eval-every",
    "12",
    "--checkpoint-every",
    "12",
    "--keep-checkpoints",
    "0",
    "--hard-negative-weight",
    "0.2",
    "--max-hard-negatives",
    "2",
    "--max-valid-pairs",
    "40",
    "--seed",
    "7",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def make_pair(rng: random.Random, index: int) -> dict:
    verb, noun, arg, method = rng.choice(VERBS), rng.choice(NOUNS), rng.choice(ARGS), rng.choice(METHODS)
    code = (
        f"def {verb}_{noun}_{index}({arg}, strict=False):\n"
        f"    result = {arg}.{method}()\n"
        f"    if strict and not result:\n"
        f"        raise ValueError('empty {noun}')\n"
        f"    return result\n"
    )
    query = f"{verb.capitalize()} the {noun} from a {arg} with {method}."
    return {
        "query": query,
        "code": code,
        "language": "python",
        "repo": f"repo{index % 17}",
        "func_name": f"{verb}_{noun}_{index}",
        "path": "mod.py",
        "url": f"python://repo/mod.py#L{index}",
    }


def test_data_order_is_seeded_and_split_across_ranks():
    from semcode.train.data import epoch_batches

    one = epoch_batches(50, 8, seed=3, epoch=1)
    assert len(one) == 6 and all(len(b) == 8 for b in one)  # the incomplete batch is dropped
    assert all((a == b).all() for a, b in zip(one, epoch_batches(50, 8, seed=3, epoch=1), strict=True))
    assert not (one[0] == epoch_batches(50, 8, seed=3, epoch=2)[0]).all()  # each epoch reshuffles
    ranks = [epoch_batches(50, 4, seed=3, epoch=1, rank=r, world_size=2) for r in range(2)]
    for global_batch, part0, part1 in zip(one, *ranks, strict=True):  # two ranks see one rank's pairs
        assert (global_batch == np.concatenate([part0, part1])).all()


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from semcode.tokenizer import save_tokenizer, train_bpe

    root = tmp_path_factory.mktemp("train_encoder_data")
    rng = random.Random(0)
    pairs = [make_pair(rng, i) for i in range(280)]
    train, valid, test = pairs[:200], pairs[200:240], pairs[240:]
    for i, row in enumerate(train[:60]):  # some rows carry mined hard negatives: other pairs' code
        row["hard_negatives"] = [train[(i + 1) % 200]["code"], train[(i + 2) % 200]["code"]][: 1 + i % 2]
    for split, rows in (("train", train), ("valid", valid), ("test", test)):
        write_shards(rows, root / "pairs" / split)
    tokenizer = train_bpe([p["query"] for p in pairs] + [p["code"] for p in pairs], vocab_size=600)
    save_tokenizer(tokenizer, root / "tokenizer", model_max_length=64)
    return root / "pairs", root / "tokenizer"


@pytest.fixture(scope="module")
def trained(data_dirs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    pairs_dir, tokenizer_dir = data_dirs
    out = tmp_path_factory.mktemp("train_encoder_run") / "run"
    code = train_encoder.main(
        ["--pairs", str(pairs_dir), "--tokenizer", str(tokenizer_dir), "--out", str(out), *TRAIN_FLAGS]
    )
    assert code == 0
    return out


def test_main_writes_documented_outputs(trained: Path):
    for name in ("config.json", "deepspeed_config.json", "history.json", "metrics.json"):
        assert (trained / name).is_file(), name
    encoder_dir = trained / "encoder"
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "modules.json",
        "semcode_encoder.json",
    ):
        assert (encoder_dir / name).is_file(), name
    checkpoints = trained / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step-*")) == ["step-000012", "step-000024", "step-000036"]
    assert (checkpoints / "latest").read_text().strip() == "step-000036"
    assert (trained / "best" / "model.safetensors").is_file()

    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["steps"] == metrics["total_steps"] == 36  # 200 pairs // 16 = 12 steps x 3 epochs
    (only_rank,) = metrics["ranks"]
    assert only_rank["rank"] == 0 and only_rank["steps"] == 36 and metrics["items_per_second_spread"] == 1.0
    assert only_rank["allreduce_seconds"] == 0.0  # a world of one reduces nothing
    assert metrics["stopped_by"] == "steps"
    assert metrics["pairs_per_second"] > 0 and metrics["train_seconds"] > 0
    assert metrics["final_model"] == "best"
    assert metrics["zero_shot_valid_mrr"] is None  # from scratch: no step-0 evaluation
    ds_config = json.loads((trained / "deepspeed_config.json").read_text())
    assert ds_config["train_micro_batch_size_per_gpu"] == 16 and ds_config["zero_optimization"]["stage"] == 0
    config = json.loads((trained / "config.json").read_text())["config"]
    assert config["hard_negative_weight"] == 0.2 and config["size"] == "tiny"

    history = json.loads((trained / "history.json").read_text())
    assert [e["step"] for e in history["steps"]] == list(range(1, 37))
    assert {"loss", "contrastive", "hard", "lr"} <= set(history["steps"][0])
    assert any(e["hard"] > 0 for e in history["steps"])  # rows with hard negatives fed the hard term
    assert [e["step"] for e in history["evals"]] == [12, 24, 36]
    assert all(e["loss"] > 0 for e in history["evals"])  # the contrastive loss on the valid pairs
    assert history["evals"][-1]["loss"] < history["evals"][0]["loss"]
    assert history["best"]["mrr"] == max(e["mrr"] for e in history["evals"]) == metrics["best_valid_mrr"]


def test_training_raises_validation_mrr(trained: Path, data_dirs: tuple[Path, Path]):
    from transformers import AutoTokenizer

    from semcode.models.encoder import build_encoder, load_encoder
    from semcode.train.data import load_pairs
    from semcode.train.distributed import seed_everything

    pairs_dir, tokenizer_dir = data_dirs
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    valid = load_pairs(pairs_dir, "valid", 40, seed=7, unique_codes=True)
    seed_everything(7)  # the untrained model the run started from
    untrained = build_encoder("tiny", len(tokenizer), tokenizer.pad_token_id, max_length=64)
    before = train_encoder.validation_metrics(untrained, tokenizer, valid, 64, "cpu")["mrr"]

    shipped = load_encoder(trained / "encoder")
    after = train_encoder.validation_metrics(shipped, tokenizer, valid, 64, "cpu")["mrr"]
    metrics = json.loads((trained / "metrics.json").read_text())
    assert after == pytest.approx(metrics["best_valid_mrr"], abs=1e-5)  # the shipped model is the best one
    assert after > max(0.5, 2 * before), (before, after)
    history = json.loads((trained / "history.json").read_text())
    assert history["steps"][-1]["loss"] < history["steps"][0]["loss"]


def test_resume_replays_the_run_exactly(trained: Path, data_dirs: tuple[Path, Path], tmp_path: Path):
    pairs_dir, tokenizer_dir = data_dirs
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    # Pretend the run died after step 24: drop the last checkpoint, point `latest` back.
    shutil.rmtree(out / "checkpoints" / "step-000036")
    (out / "checkpoints" / "latest").write_text("step-000024\n")
    code = train_encoder.main(
        [
            "--pairs",
            str(pairs_dir),
            "--tokenizer",
            str(tokenizer_dir),
            "--out",
            str(out),
            *TRAIN_FLAGS,
            "--resume",
        ]
    )
    assert code == 0
    original = json.loads((trained / "history.json").read_text())
    resumed = json.loads((out / "history.json").read_text())
    assert [e["loss"] for e in resumed["steps"]] == [e["loss"] for e in original["steps"]]
    assert [e["mrr"] for e in resumed["evals"]] == [e["mrr"] for e in original["evals"]]
    last = "checkpoints/step-000036/model.safetensors"
    original_weights, resumed_weights = load_file(trained / last), load_file(out / last)
    for name, tensor in original_weights.items():
        assert torch.equal(resumed_weights[name], tensor), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps_this_run"] == 12


def test_init_from_checkpoint_evaluates_zero_shot_and_uses_its_tokenizer(trained: Path, data_dirs, tmp_path):
    pairs_dir, _ = data_dirs
    config = TrainEncoderConfig(
        init_from=str(trained / "encoder"),
        max_length=64,
        batch_size=16,
        max_steps=2,
        lr=1e-4,
        eval_every=0,
        checkpoint_every=0,
        max_valid_pairs=40,
        seed=7,
        distill_weight=1.0,
    )
    metrics = train_encoder.run(config, pairs_dir, None, tmp_path / "ft")
    original = json.loads((trained / "metrics.json").read_text())
    assert metrics["zero_shot_valid_mrr"] == pytest.approx(original["best_valid_mrr"], abs=1e-5)
    assert metrics["steps"] == 2 and metrics["init_from"] == str(trained / "encoder")
    assert (tmp_path / "ft" / "encoder" / "tokenizer.json").is_file()
    # The starting checkpoint is the distillation teacher: its term is logged, small but not zero at step 1
    # (the student's dropout makes its scores differ from the teacher's in eval mode).
    steps = json.loads((tmp_path / "ft" / "history.json").read_text())["steps"]
    assert all(0.0 < entry["distill"] < entry["contrastive"] for entry in steps)
    with pytest.raises(ConfigError, match="distill_weight 1.0 needs init_from"):
        TrainEncoderConfig(distill_weight=1.0).validate()


def test_epochs_0_passes_init_from_on_unchanged(trained: Path, data_dirs, tmp_path):
    """No training: the rounds of src/semcode/configs/with_hard_negatives.yaml start from an earlier run's encoder."""
    pairs_dir, _ = data_dirs
    config = TrainEncoderConfig(
        init_from=str(trained / "encoder"), epochs=0, max_length=64, max_valid_pairs=40
    )
    metrics = train_encoder.run(config, pairs_dir, None, tmp_path / "same")
    original = json.loads((trained / "metrics.json").read_text())
    assert metrics["steps"] == 0 and metrics["final_model"] == "init_from"
    assert metrics["best_valid_mrr"] == pytest.approx(original["best_valid_mrr"], abs=1e-5)
    before = load_file(trained / "encoder" / "model.safetensors")
    after = load_file(tmp_path / "same" / "encoder" / "model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert json.loads((tmp_path / "same" / "history.json").read_text())["evals"][0]["step"] == 0
    with pytest.raises(ConfigError, match="epochs must be >= 1, or 0"):
        TrainEncoderConfig(epochs=0).validate()  # nothing to pass on without init_from


def test_inference_max_length_is_what_the_saved_encoder_and_validation_use(
    trained: Path, data_dirs, tmp_path
):
    """Train at max_length, ship (and select on validation) at inference_max_length."""
    from transformers import AutoTokenizer

    from semcode.models.encoder import load_encoder

    pairs_dir, _ = data_dirs
    config = TrainEncoderConfig(
        init_from=str(trained / "encoder"),
        epochs=0,
        max_length=64,
        inference_max_length=16,
        max_valid_pairs=40,
    )
    metrics = train_encoder.run(config, pairs_dir, None, tmp_path / "short")
    saved = tmp_path / "short" / "encoder"
    assert json.loads((saved / "semcode_encoder.json").read_text())["max_length"] == 16
    assert json.loads((saved / "sentence_bert_config.json").read_text())["max_seq_length"] == 16
    model, tokenizer = load_encoder(saved), AutoTokenizer.from_pretrained(str(saved))
    valid = load_pairs(pairs_dir, "valid", 40, config.seed, unique_codes=True)
    at_16 = train_encoder.validation_metrics(model, tokenizer, valid, 64, "cpu", 16)
    at_64 = train_encoder.validation_metrics(model, tokenizer, valid, 64, "cpu", 64)
    assert metrics["best_valid_mrr"] == pytest.approx(at_16["mrr"], abs=1e-6) != pytest.approx(at_64["mrr"])
    too_long = TrainEncoderConfig(
        init_from=str(trained / "encoder"), epochs=0, max_length=64, inference_max_length=65
    )
    with pytest.raises(ConfigError, match="inference_max_length 65 exceeds the encoder's 64 positions"):
        train_encoder.run(too_long, pairs_dir, None, tmp_path / "long")
    with pytest.raises(ConfigError, match=r"inference_max_length must be 0 or in 8\.\.2048"):
        TrainEncoderConfig(inference_max_length=4).validate()
    with pytest.raises(ConfigError, match=r"max_length must be in 8\.\.2048 tokens .*got 100000"):
        TrainEncoderConfig(max_length=100_000).validate()  # from scratch it built a 45x larger model


def test_time_budget_stops_with_a_final_checkpoint(data_dirs, tmp_path):
    pairs_dir, tokenizer_dir = data_dirs
    config = TrainEncoderConfig(
        size="tiny",
        max_length=32,
        batch_size=8,
        epochs=50,
        time_budget_minutes=1e-6,
        eval_every=0,
        checkpoint_every=0,
        max_valid_pairs=16,
    )
    metrics = train_encoder.run(config, pairs_dir, tokenizer_dir, tmp_path / "budget")
    assert metrics["stopped_by"] == "time_budget" and metrics["steps"] == 1
    assert (tmp_path / "budget" / "checkpoints" / "latest").read_text().strip() == "step-000001"
    assert (tmp_path / "budget" / "encoder" / "model.safetensors").is_file()


def test_sigusr1_saves_then_ctrl_c_checkpoints_exits_130_in_one_line_and_resume_continues(
    data_dirs, tmp_path
):
    """ "Save now", then Ctrl-C at a terminal. Once step 4 is checkpointed, SIGUSR1 to the stage: a checkpoint
    after the step under way, and training goes on. Then SIGINT to the whole process group (the stage and its
    tokenizer worker): the step under way ends with a checkpoint, one line says so, exit 130. The output is
    not swapped in: the checkpoints wait in the partial folder beside --out (issue 31), and the same command
    with --resume continues from them and puts the complete output at --out."""
    pairs_dir, tokenizer_dir = data_dirs
    out, log = tmp_path / "run", tmp_path / "first.log"
    command = [sys.executable, "-m", "semcode.stages.train_encoder", "--pairs", str(pairs_dir)]
    command += ["--tokenizer", str(tokenizer_dir), "--out", str(out), *TRAIN_FLAGS]
    command += ["--epochs", "2", "--checkpoint-every", "4", "--eval-every", "0", "--num-workers", "1"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "SEMCODE_TENSORBOARD": "0"}
    with open(log, "w") as stderr:
        first = subprocess.Popen(command, env=environment, stderr=stderr, start_new_session=True)
    checkpoints = storage.partial_path(out) / "checkpoints"
    latest = checkpoints / "latest"

    def wait_for(done) -> None:
        deadline = time.monotonic() + 240
        while not done() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert done(), log.read_text()[-2000:]

    wait_for(latest.exists)
    os.kill(first.pid, signal.SIGUSR1)
    wait_for(lambda: "(asked for by SIGUSR1; training goes on)" in log.read_text())
    asked_at = latest.read_text().strip()
    assert asked_at > "step-000004", asked_at
    os.killpg(first.pid, signal.SIGINT)
    assert first.wait(timeout=120) == 130, log.read_text()[-2000:]
    text = log.read_text()
    stopped_at = latest.read_text().strip()
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-2000:]
    assert f"stopped by SIGINT (Ctrl-C) after step {int(stopped_at.removeprefix('step-'))}: " in text
    assert "the same command with --resume continues from it" in text
    assert asked_at <= stopped_at < "step-000024"  # 2 epochs of 12 steps: stopped early, not at the end
    assert not out.exists()

    resumed = subprocess.run([*command, "--resume"], env=environment, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed from {checkpoints / stopped_at} at step" in resumed.stderr
    assert json.loads((out / "metrics.json").read_text())["steps"] == 24
    assert (out / "checkpoints" / "step-000024").is_dir() and not storage.partial_path(out).exists()


def test_bad_inputs_fail_before_training(data_dirs, trained, tmp_path):
    pairs_dir, tokenizer_dir = data_dirs
    config = TrainEncoderConfig(size="tiny")
    with pytest.raises(FileNotFoundError, match="no train/part-"):
        train_encoder.run(config, tmp_path / "nowhere", tokenizer_dir, tmp_path / "out")
    empty = tmp_path / "empty"
    write_shards([], empty / "train")
    with pytest.raises(ValueError, match="0 usable pairs"):
        train_encoder.run(config, empty, tokenizer_dir, tmp_path / "out")
    with pytest.raises(ValueError, match="tokenizer directory is required"):
        train_encoder.run(config, pairs_dir, None, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        train_encoder.run(config, pairs_dir, tmp_path, tmp_path / "out")
    corrupt = tmp_path / "corrupt_tokenizer"
    corrupt.mkdir()
    (corrupt / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": ')  # cut short
    with pytest.raises(ValueError, match=r"corrupt_tokenizer/tokenizer.json is not a usable tokenizer"):
        train_encoder.run(config, pairs_dir, corrupt, tmp_path / "out")
    with pytest.raises(ConfigError, match="batch_size must be >= 2"):
        TrainEncoderConfig(batch_size=1).validate()
    with pytest.raises(ValueError, match="earlier run's checkpoints; pass --resume"):
        train_encoder.run(config, pairs_dir, tokenizer_dir, trained)  # would mix two runs
    assert not (tmp_path / "out").exists()
    assert train_encoder.main(["--pairs", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]) == 2


def test_precision_auto_is_fp32_on_the_cpu_and_half_precision_is_refused_before_training(
    trained, data_dirs, tmp_path
):
    pairs_dir, tokenizer_dir = data_dirs
    metrics = json.loads((trained / "metrics.json").read_text())
    assert json.loads((trained / "config.json").read_text())["config"]["precision"] == "auto"
    assert metrics["precision"] == "fp32" and metrics["bf16"] is False and metrics["skipped_steps"] == 0
    ds_config = json.loads((trained / "deepspeed_config.json").read_text())
    assert ds_config["bf16"] == ds_config["fp16"] == {"enabled": False}
    if not torch.cuda.is_available():
        for half in ("fp16", "bf16"):
            argv = [
                "--pairs",
                str(pairs_dir),
                "--tokenizer",
                str(tokenizer_dir),
                "--out",
                str(tmp_path / half),
            ]
            assert train_encoder.main([*argv, "--size", "tiny", "--precision", half]) == 2
            assert not (tmp_path / half).exists()  # refused before anything was read or written
    with pytest.raises(ConfigError, match="precision must be one of"):
        TrainEncoderConfig(precision="half").validate()


def test_epoch_checkpoints_in_fp32_named_in_the_log(data_dirs, tmp_path, capfd):
    """checkpoint_every_epochs beside the step setting: 200 pairs / 16 = 12 steps an epoch."""
    pairs_dir, tokenizer_dir = data_dirs
    config = TrainEncoderConfig(
        size="tiny",
        max_length=32,
        batch_size=16,
        epochs=3,
        checkpoint_every=0,
        checkpoint_every_epochs=2,
        keep_checkpoints=0,
        eval_every=0,
        max_valid_pairs=16,
        precision="fp32",
    )
    metrics = train_encoder.run(config, pairs_dir, tokenizer_dir, tmp_path / "epochs")
    assert metrics["precision"] == "fp32" and metrics["steps"] == 36
    checkpoints = sorted(p.name for p in (tmp_path / "epochs" / "checkpoints").glob("step-*"))
    assert checkpoints == ["step-000024", "step-000036"]  # the end of epoch 2, and the end of the run
    assert "step-000024 (end of epoch 2)" in capfd.readouterr().err


def test_resume_from_a_chosen_checkpoint_replays_the_rest_in_a_new_folder(trained, data_dirs, tmp_path):
    pairs_dir, tokenizer_dir = data_dirs
    chosen = trained / "checkpoints" / "step-000012"
    argv = ["--pairs", str(pairs_dir), "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "b")]
    assert train_encoder.main([*argv, *TRAIN_FLAGS, "--resume-from", str(chosen)]) == 0
    original = json.loads((trained / "history.json").read_text())
    resumed = json.loads((tmp_path / "b" / "history.json").read_text())
    assert [e["loss"] for e in resumed["steps"]] == [e["loss"] for e in original["steps"]]
    last = "checkpoints/step-000036/model.safetensors"
    original_weights, resumed_weights = load_file(trained / last), load_file(tmp_path / "b" / last)
    assert all(torch.equal(resumed_weights[name], tensor) for name, tensor in original_weights.items())
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["steps_this_run"] == 24


def test_resume_from_refuses_another_run_shape_and_an_incomplete_or_unsafe_checkpoint(
    trained, data_dirs, tmp_path, capfd
):
    from semcode.train.safe_load import UnsafeCheckpointError

    pairs_dir, tokenizer_dir = data_dirs
    chosen = trained / "checkpoints" / "step-000012"
    argv = ["--pairs", str(pairs_dir), "--tokenizer", str(tokenizer_dir), *TRAIN_FLAGS]
    assert (
        train_encoder.main(
            [*argv, "--out", str(tmp_path / "o1"), "--resume-from", str(chosen), "--size", "small"]
        )
        == 2
    )
    error = capfd.readouterr().err
    assert f"cannot resume from {chosen}: it belongs to a run of another shape" in error
    assert "size: checkpoint 'tiny', this run 'small'" in error and "hidden_size: checkpoint 64" in error

    from semcode.tokenizer import save_tokenizer, train_bpe

    other_tokenizer = train_bpe(["def other(): return 1", "Another vocabulary."] * 20, vocab_size=300)
    save_tokenizer(other_tokenizer, tmp_path / "other_tokenizer", model_max_length=64)
    config = TrainEncoderConfig(size="tiny", max_length=64, batch_size=16, seed=7, resume_from=str(chosen))
    with pytest.raises(ConfigError, match="vocabulary: checkpoint '[0-9a-f]{16}', this run '[0-9a-f]{16}'"):
        train_encoder.run(config, pairs_dir, tmp_path / "other_tokenizer", tmp_path / "o2")

    incomplete = tmp_path / "step-000012"
    shutil.copytree(chosen, incomplete)
    (incomplete / "trainer_state.pt").unlink()
    config = TrainEncoderConfig(size="tiny", resume_from=str(incomplete))
    with pytest.raises(
        FileNotFoundError, match=r"is not a complete training checkpoint: it lacks trainer_state\.pt"
    ):
        train_encoder.run(config, pairs_dir, tokenizer_dir, tmp_path / "o3")
    with pytest.raises(FileNotFoundError, match=r"did you mean .*step-000036\?"):
        train_encoder.run(
            TrainEncoderConfig(size="tiny", resume_from=str(trained)),
            pairs_dir,
            tokenizer_dir,
            tmp_path / "o4",
        )
    planted = tmp_path / "planted"
    shutil.copytree(chosen, planted)
    torch.save({"run": shutil.rmtree}, planted / "deepspeed" / "extra.pt")  # a global that could run code
    with pytest.raises(UnsafeCheckpointError, match=r"extra\.pt references \['shutil\.rmtree'\]"):
        train_encoder.run(
            TrainEncoderConfig(size="tiny", resume_from=str(planted)),
            pairs_dir,
            tokenizer_dir,
            tmp_path / "o5",
        )
    assert not any((tmp_path / name).exists() for name in ("o1", "o3", "o4", "o5"))


def test_a_checkpoint_is_an_encoder_for_export_mining_and_the_index(trained, data_dirs, tmp_path):
    from semcode.models.encoder import load_encoder
    from semcode.stages import build_index, export_onnx, mine_hard_negatives
    from semcode.train.checkpoints import encoder_from_checkpoint

    pairs_dir, _ = data_dirs
    best_step = json.loads((trained / "best" / "best.json").read_text())["step"]
    chosen = trained / "checkpoints" / f"step-{best_step:06d}"  # kept: --keep-checkpoints 0
    # The checkpoint's encoder is the shipped one (the best step's weights, at its inference length).
    shipped, restored = load_encoder(trained / "encoder"), load_encoder(encoder_from_checkpoint(str(chosen)))
    assert restored.max_length == shipped.max_length and restored.size == "tiny"
    assert all(
        torch.equal(a, b)
        for a, b in zip(shipped.state_dict().values(), restored.state_dict().values(), strict=True)
    )

    mined = tmp_path / "mined"
    assert (
        mine_hard_negatives.main(["--encoder", str(chosen), "--pairs", str(pairs_dir), "--out", str(mined)])
        == 0
    )
    assert json.loads((mined / "report.json").read_text())["encoder"] == str(chosen)
    index = tmp_path / "index"
    argv = [
        "--encoder",
        str(chosen),
        "--corpus",
        str(pairs_dir / "test"),
        "--out",
        str(index),
        "--device",
        "cpu",
    ]
    assert build_index.main(argv) == 0
    exported = tmp_path / "onnx"
    argv = ["--encoder", str(chosen), "--out", str(exported), "--no-int8", "--parity-texts", "8"]
    assert export_onnx.main([*argv, "--latency-repeats", "1"]) == 0
    assert json.loads((exported / "metrics.json").read_text())["encoder"] == str(chosen)

    without = tmp_path / "step-000012"  # a checkpoint written before checkpoints carried the encoder
    shutil.copytree(trained / "checkpoints" / "step-000012", without)
    shutil.rmtree(without / "definition")
    with pytest.raises(
        FileNotFoundError, match="a training checkpoint without definition/semcode_encoder.json"
    ):
        encoder_from_checkpoint(str(without))


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precision_trains_resumes_and_checkpoints_fp32_master_weights(data_dirs, tmp_path, precision):
    pairs_dir, tokenizer_dir = data_dirs
    argv = [
        "--pairs",
        str(pairs_dir),
        "--tokenizer",
        str(tokenizer_dir),
        *TRAIN_FLAGS,
        "--precision",
        precision,
    ]
    out = tmp_path / precision
    assert train_encoder.main([*argv, "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["precision"] == precision and metrics["device"].startswith("cuda")
    ds_config = json.loads((out / "deepspeed_config.json").read_text())
    assert ds_config[precision]["enabled"] is True
    if precision == "fp16":  # dynamic loss scaling: overflowing steps are skipped, not trained on
        assert ds_config["fp16"]["loss_scale"] == 0 and metrics["skipped_steps"] < metrics["steps"] // 2
    steps = json.loads((out / "history.json").read_text())["steps"]
    assert steps[-1]["loss"] < steps[0]["loss"] and metrics["best_valid_mrr"] > 0.3
    # The checkpoint holds the optimizer's fp32 master weights, not the half-precision module's copy.
    weights = load_file(out / "checkpoints" / "step-000036" / "model.safetensors")
    low = torch.float16 if precision == "fp16" else torch.bfloat16
    assert all(tensor.dtype == torch.float32 for tensor in weights.values())
    assert any(not torch.equal(tensor, tensor.to(low).float()) for tensor in weights.values())
    chosen = out / "checkpoints" / "step-000024"
    assert train_encoder.main([*argv, "--out", str(tmp_path / "resumed"), "--resume-from", str(chosen)]) == 0
    assert json.loads((tmp_path / "resumed" / "metrics.json").read_text())["steps_this_run"] == 12
    other = ["--precision", "bf16" if precision == "fp16" else "fp16"]
    assert (
        train_encoder.main([*argv, *other, "--out", str(tmp_path / "o"), "--resume-from", str(chosen)]) == 2
    )


@pytest.mark.slow
def test_minilm_fine_tuning_improves_on_zero_shot(data_dirs, tmp_path):
    pairs_dir, _ = data_dirs
    config = TrainEncoderConfig(
        init_from="minilm",
        max_length=64,
        batch_size=16,
        max_steps=12,
        lr=5e-5,
        eval_every=6,
        checkpoint_every=0,
        max_valid_pairs=40,
    )
    metrics = train_encoder.run(config, pairs_dir, None, tmp_path / "minilm")
    assert metrics["best_valid_mrr"] >= metrics["zero_shot_valid_mrr"]


@pytest.mark.slow
def test_two_ranks_with_zero2_resume_identically(data_dirs, tmp_path):
    """Two CPU processes (torchrun, gloo), ZeRO 2: each rank its own data slice, optimizer shard, RNG."""

    pairs_dir, tokenizer_dir = data_dirs
    flags = [
        "--size",
        "tiny",
        "--max-length",
        "64",
        "--batch-size",
        "8",
        "--max-steps",
        "12",
        "--eval-every",
        "6",
        "--checkpoint-every",
        "6",
        "--keep-checkpoints",
        "0",
        "--zero-stage",
        "2",
        "--max-valid-pairs",
        "40",
    ]

    def launch(out: Path, *extra: str) -> None:
        run_two_ranks(
            "semcode.stages.train_encoder",
            "--pairs",
            str(pairs_dir),
            "--tokenizer",
            str(tokenizer_dir),
            "--out",
            str(out),
            *flags,
            *extra,
        )

    launch(tmp_path / "full")
    shutil.copytree(tmp_path / "full", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step-000012")
    (tmp_path / "resumed" / "checkpoints" / "latest").write_text("step-000006\n")
    launch(tmp_path / "resumed", "--resume")
    for name in ("full", "resumed"):
        assert (tmp_path / name / "checkpoints" / "step-000012" / "rng_state_rank1.pt").is_file()
    full = json.loads((tmp_path / "full" / "history.json").read_text())
    resumed = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert [e["loss"] for e in resumed["steps"]] == [e["loss"] for e in full["steps"]]
    metrics = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    # Per-rank statistics: both ranks took every step, on their own slice of the data.
    assert [entry["rank"] for entry in metrics["ranks"]] == [0, 1]
    assert all(entry["steps"] == 12 and entry["items_per_second"] > 0 for entry in metrics["ranks"])
    assert all(0 <= entry["data_wait_share"] < 1 and entry["mean_loss"] > 0 for entry in metrics["ranks"])
    assert all(0 < entry["allreduce_share"] < 1 for entry in metrics["ranks"])  # ZeRO 2's reduce, timed
    assert metrics["items_per_second_spread"] >= 1.0
    last = "checkpoints/step-000012/model.safetensors"
    full_weights, resumed_weights = (
        load_file(tmp_path / "full" / last),
        load_file(tmp_path / "resumed" / last),
    )
    assert all(torch.equal(resumed_weights[name], tensor) for name, tensor in full_weights.items())


@pytest.mark.slow
def test_a_killed_then_preempted_task_resumes_from_s3_to_the_same_weights(
    trained: Path, data_dirs: tuple[Path, Path], s3_env: str, tmp_path: Path
):
    """The run of ``trained`` again with --checkpoint-root on the S3 server, as a pod that dies: kill -9
    once step 12 is uploaded, a retry on an empty disk resumes from it and is sent SIGTERM after step 24
    is uploaded (it checkpoints and exits 143), a second retry finishes. The final weights, the shipped
    (best) weights and every step's loss are those of the uninterrupted run."""
    from semcode import storage

    pairs_dir, tokenizer_dir = data_dirs
    root = f"{s3_env}/checkpoints/run-1/train-encoder"
    latest = storage.join(root, "latest")
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "SEMCODE_TENSORBOARD": "0"}

    def start(attempt: int) -> tuple[subprocess.Popen, Path]:
        out, log = tmp_path / f"attempt-{attempt}", tmp_path / f"attempt-{attempt}.log"
        command = [sys.executable, "-m", "semcode.stages.train_encoder", "--pairs", str(pairs_dir)]
        command += ["--tokenizer", str(tokenizer_dir), "--out", str(out), *TRAIN_FLAGS]
        command += ["--checkpoint-root", root]
        with open(log, "w") as stderr:
            return subprocess.Popen(command, env=environment, stderr=stderr), log

    def wait_for_upload(process: subprocess.Popen, name: str) -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if storage.exists(latest) and storage.read_text(latest).strip() == name:
                return
            time.sleep(0.1)
        raise AssertionError(f"{name} was never uploaded (exit code {process.poll()})")

    first, _ = start(1)
    wait_for_upload(first, "step-000012")
    first.send_signal(signal.SIGKILL)
    first.wait()

    second, second_log = start(2)
    wait_for_upload(second, "step-000024")
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=60) == 143
    text = second_log.read_text()
    assert "restored step-000012" in text and "stopped by SIGTERM after step" in text, text[-2000:]
    stopped_at = storage.read_text(latest).strip()
    assert "step-000024" < stopped_at < "step-000036"  # the step under way when SIGTERM came

    third, third_log = start(3)
    assert third.wait(timeout=240) == 0, third_log.read_text()[-2000:]
    assert f"restored {stopped_at}" in third_log.read_text()
    out = tmp_path / "attempt-3"
    original, resumed = (json.loads((d / "history.json").read_text()) for d in (trained, out))
    assert [e["loss"] for e in resumed["steps"]] == [e["loss"] for e in original["steps"]]
    assert [e["mrr"] for e in resumed["evals"]] == [e["mrr"] for e in original["evals"]]
    for name in ("checkpoints/step-000036/model.safetensors", "encoder/model.safetensors"):
        original_weights, resumed_weights = load_file(trained / name), load_file(out / name)
        for key, tensor in original_weights.items():
            assert torch.equal(resumed_weights[key], tensor), (name, key)
