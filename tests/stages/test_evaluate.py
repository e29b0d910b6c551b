"""The evaluate stage end to end: real encoders (all-MiniLM-L6-v2 and a tiny semcode encoder) on tiny pairs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from test_suites import GO_FILES, RUBY_FILES, write_archive  # the tiny polyglot archives (tests/)

from semcode.config import ConfigError
from semcode.data.pairs import write_shards
from semcode.models.encoder import build_encoder
from semcode.stages import evaluate as stage
from semcode.tokenizer import SPECIAL_IDS, train_bpe

# Docstring -> function pairs that a general-purpose sentence encoder should mostly match.
PAIRS = [
    (
        "Read a JSON file and return the parsed object.",
        "def read_json(path):\n    with open(path) as f:\n        return json.load(f)",
    ),
    (
        "Sort a list of words by their length.",
        "def sort_by_length(words):\n    return sorted(words, key=len)",
    ),
    ("Download a web page over HTTP.", "def fetch_page(url):\n    return urllib.request.urlopen(url).read()"),
    ("Compute the factorial of n.", "def factorial(n):\n    return 1 if n <= 1 else n * factorial(n - 1)"),
    ("Reverse a string.", "def reverse(text):\n    return text[::-1]"),
    (
        "Count the lines of a text file.",
        "def count_lines(path):\n    with open(path) as f:\n        return sum(1 for _ in f)",
    ),
    ("Return the largest value in a list.", "def maximum(values):\n    return max(values)"),
    (
        "Check whether a number is prime.",
        "def is_prime(n):\n    return n > 1 and all(n % d for d in range(2, n))",
    ),
    (
        "Remove duplicate items while keeping order.",
        "def unique(items):\n    return list(dict.fromkeys(items))",
    ),
    (
        "Convert degrees Celsius to Fahrenheit.",
        "def to_fahrenheit(celsius):\n    return celsius * 9 / 5 + 32",
    ),
    # The same docstring on another function: each is a right answer to it, so it is excluded, not a distractor.
    ("Reverse a string.", "def backwards(s):\n    return ''.join(reversed(s))"),
]
GO_PAIRS = [
    ("Add two integers and return the sum.", "func Add(a, b int) int {\n\treturn a + b\n}"),
    ("Split a line into words.", "func Words(line string) []string {\n\treturn strings.Fields(line)\n}"),
    ("Open a file for reading.", "func Open(path string) (*os.File, error) {\n\treturn os.Open(path)\n}"),
]
KFP_METRIC_NAME = re.compile(r"^[A-Za-z0-9_@-]+(\.[A-Za-z0-9_@-]+)+$")
METRIC_NAMES = {"mrr", "recall@1", "recall@5", "recall@10", "ndcg@10", "median_rank", "n_queries"}


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pairs")
    rows = [{"query": q, "code": c, "language": "python", "repo": "hand", "split": "test"} for q, c in PAIRS]
    write_shards(rows, root / "test")
    return root


@pytest.fixture(scope="module")
def tiny_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised 2-layer semcode encoder with a BPE tokenizer trained in-process."""
    texts = [text for pair in PAIRS for text in pair] * 20
    tokenizer = train_bpe(texts, vocab_size=400, min_frequency=1)
    torch.manual_seed(0)
    model = build_encoder("tiny", vocab_size=tokenizer.get_vocab_size(), pad_token_id=SPECIAL_IDS["pad"])
    return model.save(tmp_path_factory.mktemp("tiny_encoder"), tokenizer)


def read_metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def test_minilm_with_our_encoder_as_baseline_on_the_test_split(
    pairs_dir: Path, tiny_encoder_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    argv = ["--encoder", "minilm", "--pairs", str(pairs_dir), "--out", str(out), "--suites", "test"]
    argv += ["--baseline-encoder", str(tiny_encoder_dir), "--n-distractors", "4", "--device", "cpu"]
    assert stage.main(argv) == 0

    metrics = read_metrics(out)
    test = metrics["suites"]["test"]
    assert test["n_queries"] == 11 and test["n_candidates"] == 11 and test["n_excluded_pairs"] == 2
    assert test["candidates_per_query"]["csn"] == {"min": 5, "max": 5, "mean": 5.0}
    assert test["candidates_per_query"]["full"]["min"] == 10  # the two "Reverse a string." queries
    for protocol in ("csn", "full"):
        assert set(test[protocol]) == {"model", "bm25", "hybrid", "zero_shot"}
        for system_metrics in test[protocol].values():
            assert set(system_metrics) == METRIC_NAMES
        assert set(test["hybrid_vs"][protocol]) == {"model"}  # hybrid - model, a paired interval
    assert test["full"]["model"]["mrr"] > 0.8  # MiniLM on plain docstrings
    assert test["full"]["model"]["mrr"] > test["full"]["zero_shot"]["mrr"]  # beats a random tiny encoder

    assert metrics["primary"] == {"name": "test/full/model/mrr", "value": test["full"]["model"]["mrr"]}
    assert metrics["kfp_metrics"]["test.full.model.mrr"] == test["full"]["model"]["mrr"]
    assert metrics["kfp_metrics"]["test.csn.zero_shot.recall@5"] == test["csn"]["zero_shot"]["recall@5"]
    assert all(isinstance(v, float) for v in metrics["kfp_metrics"].values())
    assert metrics["skipped"] == {} and metrics["seconds"] > 0
    # No valid split in these pairs: hybrid uses the default fusion and says it was not chosen.
    assert metrics["fusion"]["chosen_on"] is None and "valid" in metrics["fusion"]["reason"]
    assert metrics["fusion"]["default_mode"] == "dense"
    assert test["fusion"] == {"rule": metrics["fusion"]["rule"], "weight": metrics["fusion"]["weight"]}
    saved = json.loads((out / "config.json").read_text())
    assert saved["config_class"] == "EvaluateConfig" and saved["config"]["n_distractors"] == 4


def test_our_encoder_on_humaneval_and_cosqa_skipped_when_absent(
    tiny_encoder_dir: Path, tmp_path: Path
) -> None:
    config = stage.EvaluateConfig(
        suites=("humaneval", "cosqa"),
        max_queries=10,
        benchmarks_dir=str(tmp_path / "no-benchmarks"),
        device="cpu",
    )
    metrics = stage.run(config, tiny_encoder_dir, None, tmp_path / "eval")
    humaneval = metrics["suites"]["humaneval"]
    assert humaneval["n_queries"] == 10 and humaneval["n_candidates"] == 164
    assert humaneval["candidates_per_query"]["csn"]["max"] == 164  # fewer than 1000: all of them
    assert set(humaneval["full"]) == {"model", "bm25", "hybrid"}
    assert "cosqa" in metrics["skipped"] and "cosqa" not in metrics["suites"]
    assert metrics["primary"]["name"] == "humaneval/full/model/mrr"


def test_onnx_int8_runtime_ranks_like_torch(pairs_dir: Path, tmp_path: Path) -> None:
    """The int8 ONNX runtime (the bundle's encoder) gives the same ranking quality as torch here."""
    config = dict(suites=("test",), protocols=("full",), bm25=False, device="cpu")
    by_runtime = {
        runtime: stage.run(
            stage.EvaluateConfig(runtime=runtime, **config), "minilm", pairs_dir, tmp_path / runtime
        )
        for runtime in ("torch", "onnx-int8")
    }
    mrr = {runtime: m["suites"]["test"]["full"]["model"]["mrr"] for runtime, m in by_runtime.items()}
    assert mrr["onnx-int8"] > 0.8 and abs(mrr["onnx-int8"] - mrr["torch"]) < 0.1, mrr
    saved = json.loads((tmp_path / "onnx-int8" / "config.json").read_text())
    assert saved["config"]["runtime"] == "onnx-int8"


def test_the_test_split_is_also_broken_down_per_language(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    rows = [{"query": q, "code": c, "language": "python", "repo": "hand"} for q, c in PAIRS[:5]]
    rows += [{"query": q, "code": c, "language": "go", "repo": "gohand"} for q, c in GO_PAIRS]
    rows.append({"query": "", "code": "func helper() {\n\treturn\n}", "language": "go", "repo": "gohand"})
    write_shards(rows, tmp_path / "pairs" / "test")
    config = stage.EvaluateConfig(suites=("test",), n_distractors=4, device="cpu")
    metrics = stage.run(
        config, tiny_encoder_dir, tmp_path / "pairs", tmp_path / "eval", baseline_encoder=tiny_encoder_dir
    )

    test = metrics["suites"]["test"]
    assert test["n_queries"] == 8 and test["n_candidates"] == 9
    by_language = test["by_language"]
    assert list(by_language) == ["go", "python"]
    assert by_language["go"]["n_queries"] == 3 and by_language["python"]["n_queries"] == 5
    # Each language's queries are ranked among the whole test corpus, both languages' code.
    assert by_language["go"]["candidates_per_query"]["full"] == {"min": 9, "max": 9, "mean": 9.0}
    for protocol in ("csn", "full"):
        for system in ("model", "bm25", "hybrid", "zero_shot"):
            assert set(by_language["go"][protocol][system]) == METRIC_NAMES
            weighted = sum(part["n_queries"] * part[protocol][system]["mrr"] for part in by_language.values())
            assert weighted / 8 == pytest.approx(test[protocol][system]["mrr"])
    gap = by_language["go"]["model_vs"]["full"]["zero_shot"]  # the same encoder twice: no gap
    assert gap == {"mrr_difference": 0.0, "ci95_low": 0.0, "ci95_high": 0.0}

    kfp = metrics["kfp_metrics"]
    assert kfp["test.go.full.model.mrr"] == by_language["go"]["full"]["model"]["mrr"]
    assert kfp["test.python.csn.bm25.ndcg@10"] == by_language["python"]["csn"]["bm25"]["ndcg@10"]
    assert all(KFP_METRIC_NAME.match(name) for name in kfp), sorted(kfp)
    assert metrics["primary"]["name"] == "test/full/model/mrr"
    table = stage.summary_table(metrics["suites"])
    assert [line.split(" | ")[:3] for line in table.splitlines() if line.startswith("test:go")] == [
        ["test:go    ", "csn     ", "3      "],
        ["test:go    ", "full    ", "3      "],
    ]
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["suites"]["test"]["by_language"]["go"]["n_queries"] == 3


def test_polyglot_suites_from_the_benchmarks_folder(
    tiny_encoder_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    benchmarks = tmp_path / "benchmarks"
    write_archive(benchmarks / "polyglot" / "mathx.tar.gz", GO_FILES)
    write_archive(benchmarks / "polyglot" / "greeter.tar.gz", RUBY_FILES)
    monkeypatch.setenv("SEMCODE_BENCHMARKS_DIR", str(benchmarks))
    out = tmp_path / "eval"
    argv = ["--encoder", str(tiny_encoder_dir), "--out", str(out), "--suites", "polyglot", "--device", "cpu"]
    assert stage.main(argv) == 0

    metrics = read_metrics(out)
    assert list(metrics["suites"]) == ["polyglot-ruby", "polyglot-go"] and metrics["skipped"] == {}
    go = metrics["suites"]["polyglot-go"]
    assert go["n_queries"] == 2 and go["n_candidates"] == 3  # the undocumented function is a candidate
    assert go["source"] == str(benchmarks / "polyglot" / "mathx.tar.gz")
    assert set(go["full"]) == {"model", "bm25", "hybrid"} and "by_language" not in go  # one language
    assert metrics["kfp_metrics"]["polyglot-go.full.bm25.mrr"] == go["full"]["bm25"]["mrr"]
    assert all(KFP_METRIC_NAME.match(name) for name in metrics["kfp_metrics"])
    assert metrics["primary"]["name"] == "polyglot-ruby/full/model/mrr"
    assert re.search(r"^polyglot-go +\| full +\| 2 ", stage.summary_table(metrics["suites"]), re.MULTILINE)

    # The config's folder wins over the environment; a folder without polyglot/ skips the suites.
    config = stage.EvaluateConfig(suites=("polyglot",), benchmarks_dir=str(tmp_path / "nothing"))
    suites, skipped = stage.load_suites(config, None)
    assert suites == [] and "not present" in skipped["polyglot"]
    with pytest.raises(ValueError, match="every suite was skipped"):
        stage.run(config, tiny_encoder_dir, None, tmp_path / "eval-none")


# The valid split the fusion is chosen on: other functions than the test split's, words that BM25 matches.
VALID_PAIRS = [
    ("Parse a date string in ISO format.", "def parse_iso_date(text):\n    return date.fromisoformat(text)"),
    ("Join a list of paths.", "def join_paths(parts):\n    return os.path.join(*parts)"),
    ("Return the mean of the numbers.", "def mean(numbers):\n    return sum(numbers) / len(numbers)"),
    ("Capitalise every word of a title.", "def title_case(title):\n    return title.title()"),
    ("Flatten a nested list.", "def flatten(nested):\n    return [x for row in nested for x in row]"),
]


def test_hybrid_is_chosen_on_the_valid_split_and_used_on_every_suite(
    tiny_encoder_dir: Path, tmp_path: Path
) -> None:
    pairs = tmp_path / "pairs"
    write_shards(
        [{"query": q, "code": c, "language": "python", "repo": "hand"} for q, c in PAIRS], pairs / "test"
    )
    write_shards(
        [{"query": q, "code": c, "language": "python", "repo": "v"} for q, c in VALID_PAIRS], pairs / "valid"
    )
    config = stage.EvaluateConfig(suites=("test", "humaneval"), max_queries=8, n_distractors=4, device="cpu")
    metrics = stage.run(config, tiny_encoder_dir, pairs, tmp_path / "eval")

    fusion = metrics["fusion"]
    assert fusion["chosen_on"].startswith(f"valid ({pairs / 'valid'})")
    assert set(fusion["valid_mrr"]) == {
        "convex@0",
        "convex@0.05",
        "convex@0.1",
        "convex@0.2",
        "convex@0.3",
        "convex@0.5",
        "rrf",
    }
    assert fusion["n_queries"] == 5 and fusion["n_candidates"] == 5
    best = max(fusion["valid_mrr"].values())
    name = "rrf" if fusion["rule"] == "rrf" else f"convex@{fusion['weight']:g}"
    assert fusion["valid_mrr"][name] == best
    # The untrained encoder ranks at random; BM25 finds these docstrings' words: hybrid beats dense.
    assert fusion["valid_bm25_mrr"] > fusion["valid_dense_mrr"]
    assert fusion["beats_dense"] == (best > fusion["valid_dense_mrr"])
    assert fusion["default_mode"] == ("hybrid" if fusion["beats_dense"] else "dense")
    for suite in metrics["suites"].values():  # the one chosen rule, on every suite and protocol
        assert suite["fusion"] == {"rule": fusion["rule"], "weight": fusion["weight"]}
        for protocol in ("csn", "full"):
            assert "hybrid" in suite[protocol] and "model" in suite["hybrid_vs"][protocol]
    assert "test.full.hybrid.mrr" in metrics["kfp_metrics"]
    table = stage.summary_table(metrics["suites"])
    assert "hybrid - model (95%)" in table.splitlines()[1]

    # The choice never looks at the test split: another test split, the same valid split, the same choice.
    write_shards(
        [{"query": q, "code": c, "language": "python", "repo": "hand"} for q, c in PAIRS[:4]],
        tmp_path / "pairs2" / "test",
    )
    write_shards(
        [{"query": q, "code": c, "language": "python", "repo": "v"} for q, c in VALID_PAIRS],
        tmp_path / "pairs2" / "valid",
    )
    again = stage.run(
        stage.EvaluateConfig(suites=("test",), device="cpu"),
        tiny_encoder_dir,
        tmp_path / "pairs2",
        tmp_path / "eval2",
    )
    assert again["fusion"]["valid_mrr"] == fusion["valid_mrr"]


def test_hybrid_with_weight_zero_is_the_model(tiny_encoder_dir: Path, tmp_path: Path) -> None:
    pairs = tmp_path / "pairs"
    write_shards([{"query": q, "code": c} for q, c in PAIRS], pairs / "test")
    write_shards([{"query": q, "code": c} for q, c in VALID_PAIRS], pairs / "valid")
    config = stage.EvaluateConfig(
        suites=("test",), n_distractors=4, device="cpu", fusion_weights=(0.0,), fusion_rrf=False
    )
    metrics = stage.run(config, tiny_encoder_dir, pairs, tmp_path / "eval")
    test = metrics["suites"]["test"]
    assert metrics["fusion"]["rule"] == "convex" and metrics["fusion"]["weight"] == 0.0
    assert metrics["fusion"]["default_mode"] == "dense"  # weight 0 cannot beat dense
    for protocol in ("csn", "full"):
        assert test[protocol]["hybrid"] == test[protocol]["model"]
        assert test["hybrid_vs"][protocol]["model"]["mrr_difference"] == 0.0
    # hybrid off: no hybrid system, no fusion
    off = stage.run(
        stage.EvaluateConfig(suites=("test",), device="cpu", hybrid=False),
        tiny_encoder_dir,
        pairs,
        tmp_path / "off",
    )
    assert "hybrid" not in off["suites"]["test"]["full"] and off["fusion"] is None


def test_bad_inputs_fail_before_any_model_loads(pairs_dir: Path, tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "eval")
    assert stage.main(["--encoder", str(tmp_path / "nope"), "--pairs", str(pairs_dir), "--out", out]) == 2
    assert "encoder" in capsys.readouterr().err
    (tmp_path / "train_out" / "encoder").mkdir(parents=True)
    (tmp_path / "train_out" / "encoder" / "semcode_encoder.json").write_text("{}")
    assert (
        stage.main(["--encoder", str(tmp_path / "train_out"), "--pairs", str(pairs_dir), "--out", out]) == 2
    )
    assert f"did you mean {tmp_path / 'train_out' / 'encoder'}" in capsys.readouterr().err
    assert stage.main(["--encoder", "minilm", "--pairs", str(tmp_path), "--out", out]) == 2
    assert "test/part-" in capsys.readouterr().err
    assert stage.main(["--encoder", "minilm", "--out", out]) == 2  # the test suite needs --pairs
    assert "--pairs" in capsys.readouterr().err
    assert (
        stage.main(["--encoder", "minilm", "--pairs", str(pairs_dir), "--out", out, "--suites", "mbpp"]) == 2
    )
    error = capsys.readouterr().err
    assert "mbpp" in error and "'polyglot'" in error  # the bad name and the valid ones
    assert not Path(out).exists()


@pytest.mark.parametrize(
    "bad",
    [
        {"suites": ()},
        {"protocols": ("top1",)},
        {"n_distractors": 0},
        {"batch_size": 0},
        {"max_queries": -1},
        {"runtime": "tensorrt"},
        {"fusion_weights": (0.1, -0.2)},
        {"fusion_weights": (), "fusion_rrf": False},
        {"fusion_valid_queries": -1},
    ],
)
def test_config_validation(bad: dict) -> None:
    with pytest.raises(ConfigError):
        stage.EvaluateConfig(**bad).validate()


def test_summary_table_and_flat_metrics() -> None:
    suites = {
        "test": {
            "full": {"model": {"mrr": 0.5, "n_queries": 2}, "bm25": {"mrr": 0.25, "n_queries": 2}},
            "n_queries": 2,
            "candidates_per_query": {"full": {"min": 9, "max": 10, "mean": 9.5}},
        }
    }
    table = stage.summary_table(suites)
    assert "test  | full" in table and "9-10" in table and "0.5000" in table and "0.2500" in table
    assert table.splitlines()[-1].rstrip().endswith("| -")  # no zero-shot baseline: no gap
    assert stage.flatten_metrics(suites) == {"test.full.model.mrr": 0.5, "test.full.bm25.mrr": 0.25}
    suites["test"]["full"]["zero_shot"] = {"mrr": 0.4, "n_queries": 2}
    suites["test"]["model_vs"] = {
        "full": {"zero_shot": {"mrr_difference": 0.1, "ci95_low": -0.05, "ci95_high": 0.25}}
    }
    assert "| +0.1000 (-0.0500..+0.2500)" in stage.summary_table(suites)

    # A per-language breakdown: rows labelled suite:language, KFP names suite.language.protocol...
    suites["test"]["by_language"] = {
        "c++": {
            "full": {"model": {"mrr": 0.75, "n_queries": 1}},
            "n_queries": 1,
            "candidates_per_query": {"full": {"min": 10, "max": 10, "mean": 10.0}},
        }
    }
    last = stage.summary_table(suites).splitlines()[-1]
    assert last.startswith("test:c++ | full     | 1       | 10") and "0.7500" in last
    assert stage.flatten_metrics(suites)["test.c__.full.model.mrr"] == 0.75  # unsafe characters become _
