"""Stage train_decoder on CPU with DeepSpeed: tiny real data, a BPE tokenizer and a tiny encoder made here.

The functions and docstrings are the encoder stage test's (a verb, a noun, an argument, a method); half
of the test split is the same functions written in Go, and some Python rows have no ``language`` (they
count as Python). The frozen encoder is a freshly initialised tiny one (the stage only embeds with it).
One module-scoped run (via ``main``) is inspected by several tests; the resume test replays its second
half from a checkpoint and must reproduce it exactly.
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file
from test_train_encoder import make_pair
from two_ranks import run_two_ranks

from semcode.config import ConfigError
from semcode.data.pairs import write_shards
from semcode.stages import train_decoder
from semcode.stages.train_decoder import TrainDecoderConfig

TRAIN_FLAGS = [
    "--size",
    "tiny",
    "--prefix-tokens",
    "4",
    "--max-length",
    "64",
    "--batch-size",
    "8",
    "--max-steps",
    "12",
    "--lr",
    "3e-3",
    "--warmup-steps",
    "2",
    "--eval-every",
    "6",
    "--checkpoint-every",
    "6",
    "--keep-checkpoints",
    "0",
    "--max-valid-pairs",
    "16",
    "--max-eval-pairs",
    "24",
    "--generate-samples",
    "4",
    "--generate-max-tokens",
    "24",
    "--query-share",
    "0.25",
    "--seed",
    "3",
    "--rerank-candidates",
    "3",
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def as_go(pair: dict, short: bool = False) -> dict:
    """The same function in Go: ``func VerbNoun7(arg string, strict bool) (string, error) {...}``, or
    ``short``: ``func VerbNoun7(arg string) string {...}`` (one that fits in 64 tokens, to train on)."""
    name = "".join(part.capitalize() for part in pair["func_name"].split("_"))
    header, body = pair["code"].split("\n", 1)
    arg = header.split("(")[1].split(",")[0]
    method = body.split(".")[1].split("(")[0]
    if short:
        code = f"func {name}({arg} string) string {{\n\treturn strings.{method.capitalize()}({arg})\n}}\n"
        return {**pair, "code": code, "language": "go", "func_name": name, "path": "mod.go"}
    code = (
        f"func {name}({arg} string, strict bool) (string, error) {{\n"
        f"\tresult := strings.{method.capitalize()}({arg})\n"
        f'\tif strict && result == "" {{\n'
        f'\t\treturn "", errors.New("empty")\n'
        f"\t}}\n"
        f"\treturn result, nil\n"
        f"}}\n"
    )
    return {**pair, "code": code, "language": "go", "func_name": name, "path": "mod.go"}


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """pairs/ (train 96, valid 24, test 40; a quarter of train in Go), our BPE tokenizer and a tiny random
    encoder."""
    from semcode.models.encoder import build_encoder
    from semcode.tokenizer import save_tokenizer, train_bpe

    root = tmp_path_factory.mktemp("train_decoder_data")
    rng = random.Random(0)
    pairs = [make_pair(rng, i) for i in range(160)]
    for i in range(120, 160):  # the test split: odd rows in Go, every fourth even row without a language
        if i % 2:
            pairs[i] = as_go(pairs[i])
        elif i % 8 == 0:
            pairs[i] = {**pairs[i], "language": ""}
    for i in range(1, 120, 4):  # a quarter of train and valid in Go: the decoder learns both languages
        pairs[i] = as_go(pairs[i], short=True)
    pairs[98] = {**pairs[98], "language": "rust"}  # a valid row in a language the train split lacks
    for split, rows in (("train", pairs[:96]), ("valid", pairs[96:120]), ("test", pairs[120:])):
        write_shards(rows, root / "pairs" / split)
    tokenizer = train_bpe([p["query"] for p in pairs] + [p["code"] for p in pairs], vocab_size=500)
    save_tokenizer(tokenizer, root / "tokenizer", model_max_length=64)
    torch.manual_seed(0)
    encoder = build_encoder("tiny", tokenizer.get_vocab_size(), 0, max_length=64)
    encoder.save(root / "encoder", root / "tokenizer")
    return root / "pairs", root / "tokenizer", root / "encoder"


def run_main(data_dirs: tuple[Path, Path, Path], out: Path, *extra: str) -> int:
    pairs_dir, tokenizer_dir, encoder_dir = data_dirs
    return train_decoder.main(
        [
            "--encoder",
            str(encoder_dir),
            "--pairs",
            str(pairs_dir),
            "--tokenizer",
            str(tokenizer_dir),
            "--out",
            str(out),
            *TRAIN_FLAGS,
            *extra,
        ]
    )


@pytest.fixture(scope="module")
def trained(data_dirs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train_decoder_run") / "run"
    assert run_main(data_dirs, out) == 0
    return out


def test_main_writes_the_decoder_metrics_and_history(trained: Path):
    for name in ("config.json", "deepspeed_config.json", "history.json", "metrics.json", "samples.jsonl"):
        assert (trained / name).is_file(), name
    for name in (
        "config.json",
        "model.safetensors",
        "prefix.safetensors",
        "semcode_decoder.json",
        "tokenizer.json",
    ):
        assert (trained / "decoder" / name).is_file(), name
    assert sorted(p.name for p in (trained / "checkpoints").glob("step-*")) == ["step-000006", "step-000012"]

    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["steps"] == metrics["total_steps"] == 12 and metrics["stopped_by"] == "steps"
    assert metrics["train_functions"] == 96 and metrics["train_from_docstring"] == 24  # query_share 0.25
    assert metrics["eval_functions"] == 24 and metrics["generated_samples"] == 4
    assert metrics["tokens_per_second"] > 0 and metrics["embed_seconds"] > 0
    for name in (
        "test_loss",
        "test_perplexity",
        "test_token_accuracy",
        "parse_rate",
        "bleu",
        "round_trip_recall@1",
        "round_trip_recall@10",
        "query_parse_rate",
        "query_round_trip_recall@10",
    ):
        assert isinstance(metrics[name], float), name
    assert metrics["test_perplexity"] == pytest.approx(np.exp(metrics["test_loss"]))
    assert (
        0 <= metrics["parse_rate"] <= 1 and metrics["round_trip_recall@1"] <= metrics["round_trip_recall@10"]
    )
    stops = metrics["stopped_by_eos"] + metrics["stopped_by_function_end"] + metrics["stopped_by_max_tokens"]
    assert stops == pytest.approx(1.0)

    history = json.loads((trained / "history.json").read_text())
    assert [e["step"] for e in history["steps"]] == list(range(1, 13))
    assert history["steps"][-1]["loss"] < history["steps"][0]["loss"]  # it learns something
    assert [e["step"] for e in history["evals"]] == [6, 12]
    assert {"loss", "perplexity", "token_accuracy"} <= set(history["evals"][0])
    samples = [json.loads(line) for line in (trained / "samples.jsonl").read_text().splitlines()]
    assert [(s["from"], s["decoding"]) for s in samples] == (
        [("code", "greedy")] * 4
        + [("code", "reranked")] * 4
        + [("query", "greedy")] * 4
        + [("query", "reranked")] * 4
    )
    # Best of 3: every reranked sample is one the decoder could write; a parseable greedy one is never
    # swapped for an unparseable sample.
    for greedy, reranked in zip(samples[:4], samples[4:8], strict=True):
        assert reranked["parses"] or not greedy["parses"]
    assert metrics["rerank_candidates"] == 3 and metrics["reranked_parse_rate"] >= metrics["parse_rate"]
    for name in ("reranked_round_trip_recall@10", "query_reranked_parse_rate", "reranked_bleu"):
        assert isinstance(metrics[name], float), name
    meta = json.loads((trained / "decoder" / "semcode_decoder.json").read_text())
    assert meta["prefix_tokens"] == 4 and meta["embedding_dim"] == 64 and meta["max_length"] == 64
    assert meta["generation"] == {
        "repetition_penalty": 1.2,
        "candidates": 3,
        "temperature": 0.5,
        "top_p": 0.95,
    }


def test_generation_is_measured_per_language(trained: Path):
    """Each test row is generated and checked in its own language; rows without one are Python."""
    from semcode.decoding import parses

    metrics = json.loads((trained / "metrics.json").read_text())
    samples = [json.loads(line) for line in (trained / "samples.jsonl").read_text().splitlines()]
    counts = metrics["generated_samples_by_language"]
    assert set(counts) == {"python", "go"} and sum(counts.values()) == metrics["generated_samples"]
    for prefix in ("", "query_", "reranked_", "query_reranked_"):
        for name in ("parse_rate_by_language", "bleu_by_language", "round_trip_recall@10_by_language"):
            values = metrics[f"{prefix}{name}"]
            assert set(values) == set(counts) and all(0 <= v <= 1 for v in values.values()), (prefix, name)
        by_language = metrics[f"{prefix}parse_rate_by_language"]
        overall = sum(by_language[name] * counts[name] for name in counts) / sum(counts.values())
        assert metrics[f"{prefix}parse_rate"] == pytest.approx(overall)
    # The samples' languages are their references' (Go code is in Go), and "parses" is that language's.
    for sample in samples:
        assert sample["language"] == ("go" if sample["reference"].startswith("func ") else "python")
        assert sample["parses"] == parses(sample["generated"], sample["language"])
    assert "parse by language" in train_decoder.summary_line(metrics)


def test_saved_decoder_reproduces_the_test_loss(trained: Path, data_dirs):
    """The decoder directory alone (and the encoder) gives back the stage's teacher-forced test loss."""
    from semcode.decoding import reconstruction_metrics
    from semcode.embed import load_embed_fn
    from semcode.models.decoder import code_token_ids, load_decoder, load_decoder_tokenizer
    from semcode.train.data import load_pairs

    pairs_dir, _, encoder_dir = data_dirs
    model, _ = load_decoder(trained)
    tokenizer = load_decoder_tokenizer(trained)
    test = load_pairs(pairs_dir, "test", 24, seed=3, unique_codes=True)
    embed, _ = load_embed_fn(str(encoder_dir), device="cpu")
    language_of = train_decoder.code_languages(pairs_dir, "test")
    language_ids = model.language_ids([language_of[code] for code in test.codes]).numpy()
    values = reconstruction_metrics(
        model, code_token_ids(tokenizer, test.codes, 64), embed(test.codes, "code"), language_ids=language_ids
    )
    metrics = json.loads((trained / "metrics.json").read_text())
    assert values["loss"] == pytest.approx(metrics["test_loss"], rel=1e-4)


def test_the_decoder_shipped_is_the_best_validation_loss(trained: Path, data_dirs, tmp_path: Path):
    """The best evaluation's weights are saved as they come (best/), and shipped instead of the last step's
    when they differ; the last step's test loss is recorded beside."""
    from semcode.models.decoder import load_decoder

    metrics = json.loads((trained / "metrics.json").read_text())
    evals = json.loads((trained / "history.json").read_text())["evals"]
    best = min(evals, key=lambda e: e["loss"])
    assert metrics["best_step"] == best["step"] and metrics["best_valid_loss"] == best["loss"]
    assert json.loads((trained / "best" / "best.json").read_text())["step"] == best["step"]
    shipped, _ = load_decoder(trained)
    best_weights = load_file(trained / "best" / "model.safetensors")
    for name, tensor in shipped.state_dict().items():
        assert torch.equal(best_weights[name], tensor), name

    # A run whose best is an earlier step than its last: pretend step 6 was the best and keep it.
    out = Path(shutil.copytree(trained, tmp_path / "run"))
    shutil.copyfile(
        out / "checkpoints" / "step-000006" / "model.safetensors", out / "best" / "model.safetensors"
    )
    model, _ = load_decoder(trained)
    pairs_dir, _, encoder_dir = data_dirs
    config = TrainDecoderConfig(size="tiny", max_length=64)
    test_set = train_decoder.Examples([[1, 40, 41, 2]], np.zeros((1, 64), np.float32), np.zeros(1, np.int64))
    kept = train_decoder._keep_best(config, model, out, {**metrics, "best_step": 6}, test_set)
    assert kept["final_model"] == "best" and kept["last_test_loss"] > 0
    step_6 = load_file(out / "checkpoints" / "step-000006" / "model.safetensors")
    assert all(torch.equal(step_6[name], tensor) for name, tensor in model.state_dict().items())
    off = dataclasses.replace(config, keep_best=False)
    assert train_decoder._keep_best(off, model, out, {**metrics, "best_step": 6}, test_set) == {
        "final_model": "last"
    }


def test_every_train_language_is_a_token_and_generate_writes_only_those(trained: Path, data_dirs, capsys):
    """Python and Go trained (a language token each); Rust, only in valid, left out; generate writes the
    language asked for, continues a code prompt, refuses C naming what it knows, and marks unparsed code."""
    from semcode.decoding import parses
    from semcode.serve import generate

    _, _, encoder_dir = data_dirs
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["languages"] == ["python", "go"]  # the most frequent first
    assert metrics["train_functions_by_language"] == {"python": 72, "go": 24}
    meta = json.loads((trained / "decoder" / "semcode_decoder.json").read_text())
    assert meta["languages"] == ["python", "go"]
    base = [str(trained), "--encoder", str(encoder_dir), "--greedy", "--max-tokens", "12"]

    assert generate.main([*base, "Upper-case a name.", "--language", "go", "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["language"] == "go" and answer["mode"] == "description"
    assert answer["samples"][0]["parses"] == parses(answer["samples"][0]["code"], "go")

    assert (
        generate.main(
            [*base, "--prefix", "func UpperName(name string) string {", "--language", "go", "--json"]
        )
        == 0
    )
    answer = json.loads(capsys.readouterr().out)
    assert answer["mode"] == "prefix" and answer["embedded_as"] == "code"
    assert answer["samples"][0]["code"].startswith("func UpperName(name string) string {")

    assert generate.main([*base, "--prefix", "def upper_name(name):"]) == 0  # default: Python, the most seen
    printed = capsys.readouterr().out
    code = printed.removeprefix("# semcode: this does not parse as a python function\n")
    assert code.startswith("def upper_name(name):")
    assert (code != printed) == (not parses(code, "python"))  # unparsed code is marked in the text output
    assert generate.main([*base, "--prefix", "func F(", "--language", "go", "--max-tokens", "1"]) == 0
    assert capsys.readouterr().out.startswith("// semcode: this does not parse as a go function\nfunc F(")

    assert generate.main([*base, "Upper-case a name.", "--language", "c"]) == 2
    assert "the decoder was not trained on c: it writes python, go" in capsys.readouterr().err


def test_resume_replays_the_run_exactly(trained: Path, data_dirs, tmp_path: Path):
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    # Pretend the run died after step 6: drop the last checkpoint, point `latest` back.
    shutil.rmtree(out / "checkpoints" / "step-000012")
    (out / "checkpoints" / "latest").write_text("step-000006\n")
    assert run_main(data_dirs, out, "--resume") == 0
    original = json.loads((trained / "history.json").read_text())
    resumed = json.loads((out / "history.json").read_text())
    assert [e["loss"] for e in resumed["steps"]] == [e["loss"] for e in original["steps"]]
    last = "checkpoints/step-000012/model.safetensors"
    original_weights, resumed_weights = load_file(trained / last), load_file(out / last)
    for name, tensor in original_weights.items():
        assert torch.equal(resumed_weights[name], tensor), name
    assert json.loads((out / "metrics.json").read_text())["steps_this_run"] == 6


def test_precision_is_recorded_and_resume_from_takes_a_chosen_checkpoint_of_the_same_shape(
    trained: Path, data_dirs, tmp_path: Path, capfd
):
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["precision"] == ("bf16" if torch.cuda.is_available() else "fp32")  # auto
    chosen = trained / "checkpoints" / "step-000006"
    assert run_main(data_dirs, tmp_path / "b", "--resume-from", str(chosen)) == 0
    resumed = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert resumed["steps"] == metrics["steps"] and resumed["steps_this_run"] == 6
    assert resumed["final_loss"] == metrics["final_loss"]  # the same run, continued from step 6
    assert run_main(data_dirs, tmp_path / "c", "--resume-from", str(chosen), "--size", "small") == 2
    assert "size: checkpoint 'tiny', this run 'small'" in capfd.readouterr().err
    if not torch.cuda.is_available():
        assert run_main(data_dirs, tmp_path / "d", "--precision", "fp16") == 2
        assert "precision fp16 needs a CUDA GPU" in capfd.readouterr().err
    assert not (tmp_path / "c").exists() and not (tmp_path / "d").exists()


@pytest.mark.gpu
def test_fp16_trains_the_decoder_with_loss_scaling(data_dirs, tmp_path: Path):
    assert run_main(data_dirs, tmp_path / "fp16", "--precision", "fp16") == 0
    metrics = json.loads((tmp_path / "fp16" / "metrics.json").read_text())
    assert metrics["precision"] == "fp16" and metrics["skipped_steps"] < metrics["steps"]
    assert json.loads((tmp_path / "fp16" / "deepspeed_config.json").read_text())["fp16"]["loss_scale"] == 0
    steps = json.loads((tmp_path / "fp16" / "history.json").read_text())["steps"]
    assert steps[-1]["loss"] < steps[0]["loss"]


def test_a_small_repositorys_pairs_train_in_smaller_batches_scored_on_valid(data_dirs, tmp_path: Path):
    """5 train functions and no test split (the user's files gave none): batches of 5, scored on valid."""
    pairs_dir, tokenizer_dir, encoder_dir = data_dirs
    small = tmp_path / "pairs"
    write_shards(pq.read_table(pairs_dir / "train").to_pylist()[:5], small / "train")
    shutil.copytree(pairs_dir / "valid", small / "valid")
    write_shards([], small / "test")
    out = tmp_path / "out"
    assert run_main((small, tokenizer_dir, encoder_dir), out, "--batch-size", "8") == 0
    assert json.loads((out / "config.json").read_text())["config"]["batch_size"] == 5
    valid_codes = {row["code"] for row in pq.read_table(pairs_dir / "valid").to_pylist()}
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert samples and all(sample["reference"] in valid_codes for sample in samples)


def test_bad_inputs_fail_before_training(data_dirs, trained: Path, tmp_path: Path):
    pairs_dir, tokenizer_dir, encoder_dir = data_dirs
    config = TrainDecoderConfig(size="tiny", batch_size=8)
    with pytest.raises(FileNotFoundError, match="no train/part-"):
        train_decoder.run(config, encoder_dir, tmp_path / "nowhere", tokenizer_dir, tmp_path / "out")
    train_only = tmp_path / "train_only"
    shutil.copytree(pairs_dir / "train", train_only / "train")
    with pytest.raises(FileNotFoundError, match="no test/part-"):
        train_decoder.run(config, encoder_dir, train_only, tokenizer_dir, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        train_decoder.run(config, encoder_dir, pairs_dir, tmp_path, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="encoder"):
        train_decoder.run(config, tmp_path / "no_encoder", pairs_dir, tokenizer_dir, tmp_path / "out")
    with pytest.raises(ValueError, match="earlier run's checkpoints; pass --resume"):
        train_decoder.run(config, encoder_dir, pairs_dir, tokenizer_dir, trained)
    with pytest.raises(ValueError, match="fewer than batch_size"):
        short = TrainDecoderConfig(size="tiny", max_length=8)  # no function fits in 8 tokens
        train_decoder.run(short, encoder_dir, pairs_dir, tokenizer_dir, tmp_path / "out")
    for bad in ({"rerank_candidates": 0}, {"rerank_temperature": 0.0}, {"rerank_top_p": 1.5}):
        with pytest.raises(ConfigError, match="rerank"):
            TrainDecoderConfig(**bad).validate()
    with pytest.raises(ConfigError, match="query_share"):
        TrainDecoderConfig(query_share=1.5).validate()
    assert not (tmp_path / "out").exists()
    assert (
        train_decoder.main(["--encoder", "x", "--pairs", str(tmp_path), "--tokenizer", "t", "--out", "o"])
        == 2
    )


@pytest.mark.slow
def test_two_ranks_with_zero2_resume_identically(data_dirs, tmp_path: Path):
    """Two CPU processes (torchrun, gloo), ZeRO 2: each rank its own data slice, optimizer shard, RNG."""

    pairs_dir, tokenizer_dir, encoder_dir = data_dirs
    flags = [
        "--size",
        "tiny",
        "--max-length",
        "64",
        "--batch-size",
        "8",
        "--max-steps",
        "6",
        "--checkpoint-every",
        "3",
        "--keep-checkpoints",
        "0",
        "--zero-stage",
        "2",
        "--max-valid-pairs",
        "0",
        "--max-eval-pairs",
        "16",
        "--generate-samples",
        "2",
        "--generate-max-tokens",
        "8",
    ]

    def launch(out: Path, *extra: str) -> None:
        run_two_ranks(
            "semcode.stages.train_decoder",
            "--encoder",
            str(encoder_dir),
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
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / "step-000006")
    (tmp_path / "resumed" / "checkpoints" / "latest").write_text("step-000003\n")
    launch(tmp_path / "resumed", "--resume")
    full = json.loads((tmp_path / "full" / "history.json").read_text())
    resumed = json.loads((tmp_path / "resumed" / "history.json").read_text())
    assert [e["loss"] for e in resumed["steps"]] == [e["loss"] for e in full["steps"]]
    metrics = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and "parse_rate" in metrics
    last = "checkpoints/step-000006/model.safetensors"
    full_weights, resumed_weights = (
        load_file(tmp_path / "full" / last),
        load_file(tmp_path / "resumed" / last),
    )
    assert all(torch.equal(resumed_weights[name], tensor) for name, tensor in full_weights.items())
