"""The evaluate stage end to end: real encoders (all-MiniLM-L6-v2 and a tiny semcode encoder) on tiny pairs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_suites import GO_FILES, RUBY_FILES, write_archive  # the tiny polyglot archives (tests/)

from semcode.config import ConfigError
from semcode.data.pairs import write_shards
from semcode.evaluation import MixSuite
from semcode.models.encoder import build_encoder
from semcode.retrieval import fusion_spec
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
        assert set(test["hybrid_vs"][protocol]) == {"model", "zero_shot"}  # hybrid - each, paired intervals
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
    # cosqa is not evaluated here and no everyday suite is given: the mix is the valid split alone.
    assert fusion["chosen_on"] == ["valid"] and set(fusion["skipped"]) == {"cosqa", "everyday"}
    valid = fusion["suites"]["valid"]
    assert valid["source"] == str(pairs / "valid") and valid["style"] == "docstring"
    assert valid["n_queries"] == 5 and valid["n_candidates"] == 5 and valid["forms"] == {"docstring": 5}
    convex = {f"convex@{w:g}" for w in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)}
    assert convex | {"rrf"} <= set(fusion["candidates"])
    assert "convex@0.5,question@0" in fusion["candidates"]  # the per-form variants
    mrr = {name: row["mrr"]["valid"] for name, row in fusion["candidates"].items()}
    assert mrr[fusion["name"]] == max(mrr.values())  # docstrings only: the best valid MRR wins
    # The untrained encoder ranks at random; BM25 finds these docstrings' words: hybrid beats dense.
    assert valid["bm25_mrr"] > valid["dense_mrr"] == mrr["convex@0"]
    assert fusion["default_mode"] == ("hybrid" if mrr[fusion["name"]] > valid["dense_mrr"] else "dense")
    spec = fusion_spec(fusion)
    for suite in metrics["suites"].values():  # the one chosen spec, on every suite and protocol
        assert suite["fusion"] == spec
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
    assert again["fusion"]["candidates"] == fusion["candidates"]


def test_the_fusion_mix_holds_cosqa_when_evaluated_and_the_suites_given(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs"
    write_shards([{"query": q, "code": c} for q, c in VALID_PAIRS], pairs / "valid")
    everyday = MixSuite(
        "everyday",
        "question",
        ["how do I join paths?"],
        ["def join(*parts): ..."],
        np.array([[0, 0]]),
        np.zeros((0, 2), np.int64),
    )
    config = stage.EvaluateConfig(suites=("test",), benchmarks_dir=str(tmp_path / "none"))
    mix, skipped = stage.fusion_mix(config, pairs, [everyday])
    assert [s.name for s in mix] == ["valid", "everyday"] and [s.style for s in mix] == [
        "docstring",
        "question",
    ]
    assert skipped == {"cosqa": "not among the evaluated suites"}
    config = stage.EvaluateConfig(
        suites=("cosqa",), benchmarks_dir=str(tmp_path / "none"), fusion_suites=("cosqa",)
    )
    mix, skipped = stage.fusion_mix(config, None, [everyday])
    assert mix == [] and skipped["cosqa"].startswith("not present")
    config = stage.EvaluateConfig(suites=("test",), fusion_suites=("valid", "everyday"))
    mix, skipped = stage.fusion_mix(config, None)
    assert mix == [] and set(skipped) == {"valid", "everyday"}


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
        {"fusion_suites": ("test",)},
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


# ---------------------------------------------------------------- the everyday suite over the corpus' stdlib rows

EVERYDAY_SUITE = [
    {
        "id": "tempdir-kw",
        "query": "create temp directory",
        "form": "keyword",
        "topic": "files",
        "answers": [{"path": "tempfile.py", "name": "mkdtemp"}],
    },
    {
        "id": "file-exists-q",
        "query": "How do I check if a file exists?",
        "form": "question",
        "topic": "files",
        "answers": [{"path": "genericpath.py", "name": "exists"}],
    },
]
# (source, path, func_name, doc, code) of the tiny ingest corpus. BM25 finds "directory" in rmtree and
# makedirs but nothing of "create temp directory" in mkdtemp; "exists" only in genericpath.exists.
EVERYDAY_CORPUS = [
    ("python:stdlib", "tempfile.py", "mkdtemp", "Make a unique temporary folder.", "def mkdtemp():\n    ..."),
    (
        "python:stdlib",
        "genericpath.py",
        "exists",
        "Test whether a path exists.",
        "def exists(path):\n    ...",
    ),
    ("python:stdlib", "shutil.py", "rmtree", "Recursively delete a directory tree.", "def rmtree(path): ..."),
    ("python:stdlib", "os.py", "makedirs", "Super-mkdir; make a leaf directory.", "def makedirs(name): ..."),
    ("python:stdlib", "os.py", "getcwd", "", ""),  # no code: never a candidate, as never indexed
    # an accepted answer's location, but not the standard library: not a candidate
    ("python:site-packages", "tempfile.py", "mkdtemp", "Create a temp directory.", "def mkdtemp(): ..."),
]


def keyword_embed(query_axes: dict[str, int], code_axes: dict[str, int]):
    """A deterministic encoder: axis i is 1 when a text holds the word mapped to it (queries and code by
    their own maps), and a small constant axis keeps every vector non-zero; unit vectors."""

    def embed(texts: list[str], kind: str) -> np.ndarray:
        out = np.zeros((len(texts), 3), dtype=np.float32)
        out[:, 2] = 0.1
        for row, text in enumerate(texts):
            for word, axis in (query_axes if kind == "query" else code_axes).items():
                out[row, axis] = 1.0 if word in text.lower() else out[row, axis]
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    return embed


AXES = {"temp": 0, "exist": 1}
SWAPPED = {"temp": 1, "exist": 0}


@pytest.fixture
def everyday_inputs(tmp_path: Path, monkeypatch) -> dict:
    """A suite file, an ingest output folder holding corpus/, two encoder folders and load_embed_fn
    replaced: "model" matches words to the same words (each answer's cosine 1), "start" matches a query's
    words to the other word's code (each answer last, rank 4 of 4). ``calls``: (encoder, max_length, the
    code texts it embedded)."""
    suite = tmp_path / "everyday.jsonl"
    suite.write_text("".join(json.dumps(record) + "\n" for record in EVERYDAY_SUITE))
    rows = [
        {"query": doc, "code": code, "path": path, "func_name": name, "source": source, "language": "python"}
        for source, path, name, doc, code in EVERYDAY_CORPUS
    ]
    write_shards(rows, tmp_path / "ingest" / "corpus")
    encoders = {}
    for name in ("model", "start"):
        encoders[name] = tmp_path / name
        encoders[name].mkdir()
        (encoders[name] / "config.json").write_text("{}")  # a checkpoint folder, as far as the checks go
    calls: list[tuple[str, int | None, list[str]]] = []

    def load_embed_fn(spec: str, max_length: int | None = None, **_) -> tuple:
        name = Path(spec).name
        inner = keyword_embed(AXES, AXES) if name == "model" else keyword_embed(SWAPPED, AXES)
        call: tuple[str, int | None, list[str]] = (name, max_length, [])
        calls.append(call)

        def embed(texts: list[str], kind: str) -> np.ndarray:
            call[2].extend(texts if kind == "code" else [])
            return inner(texts, kind)

        return embed, 3

    def load_embed_fns(spec: str, max_lengths: list[int | None], **_) -> tuple:
        return [load_embed_fn(spec, length)[0] for length in max_lengths], 3

    monkeypatch.setattr("semcode.embed.load_embed_fn", load_embed_fn)
    monkeypatch.setattr("semcode.embed.load_embed_fns", load_embed_fns)
    return {"suite": suite, "corpus": tmp_path / "ingest", "calls": calls, **encoders}


def test_the_everyday_suite_ranks_the_corpus_stdlib_rows(
    pairs_dir: Path, everyday_inputs: dict, tmp_path: Path
) -> None:
    from semcode.stages import gate

    config = stage.EvaluateConfig(
        suites=("test",), protocols=("full",), everyday_suite=str(everyday_inputs["suite"]), device="cpu"
    )
    out = tmp_path / "eval"
    metrics = stage.run(
        config,
        everyday_inputs["model"],
        pairs_dir,
        out,
        baseline_encoder=everyday_inputs["start"],
        corpus_dir=everyday_inputs["corpus"],  # the ingest output folder: its corpus/ is read
    )
    suite = read_metrics(out)["suites"]["everyday"]
    assert suite["n_queries"] == 2 and suite["n_candidates"] == 4  # stdlib rows with code only
    assert suite["source"] == f"{everyday_inputs['corpus'] / 'corpus'} (python:stdlib rows)"
    assert suite["coverage"] == {"covered": 2, "n_queries": 2, "fraction": 1.0, "uncovered": []}
    assert suite["document"] == "name+doc+code"
    assert suite["naive"] == {"document": "doc+code", "max_length": 256}
    ranks = suite["per_query"]["ranks"]
    assert suite["per_query"]["ids"] == ["tempdir-kw", "file-exists-q"]
    # model and hybrid find both at 1; zero-shot and naive rank both last (4 of 4); BM25 finds the
    # question at 1 and the keyword query at 4: mkdtemp ties with exists at 0, and ties count against.
    assert ranks == {
        "model": [1, 1],
        "zero_shot": [4, 4],
        "bm25": [4, 1],
        "hybrid": [1, 1],
        "naive": [4, 4],
    }
    scores = suite["stdlib"]
    assert scores["model"] == {
        "success@1": 1.0,
        "success@3": 1.0,
        "success@10": 1.0,
        "mrr@10": 1.0,
        "n_queries": 2,
    }
    assert (
        scores["zero_shot"]
        == scores["naive"]
        == {
            "success@1": 0.0,
            "success@3": 0.0,
            "success@10": 1.0,
            "mrr@10": 0.25,
            "n_queries": 2,
        }
    )
    assert scores["bm25"] == {
        "success@1": 0.5,
        "success@3": 0.5,
        "success@10": 1.0,
        "mrr@10": 0.625,
        "n_queries": 2,
    }
    assert suite["by_form"]["keyword"]["n_queries"] == 1
    assert suite["by_form"]["keyword"]["stdlib"]["bm25"]["mrr@10"] == 0.25
    assert suite["by_form"]["question"]["stdlib"]["bm25"]["success@1"] == 1.0
    assert suite["by_topic"]["files"]["stdlib"]["model"]["success@3"] == 1.0
    same = {"mrr_difference": 0.75, "ci95_low": 0.75, "ci95_high": 0.75}
    assert suite["model_vs"] == {"stdlib": {"zero_shot": same, "naive": same}}
    assert suite["hybrid_vs"] == {
        "stdlib": {
            "model": {"mrr_difference": 0.0, "ci95_low": 0.0, "ci95_high": 0.0},
            "zero_shot": same,
            "naive": same,
        }
    }
    assert suite["fusion"] == fusion_spec(metrics["fusion"]) and "everyday" in metrics["fusion"]["chosen_on"]
    # The model and the zero-shot start embed the search documents, the naive baseline the whole sources
    # at 256 tokens.
    calls = everyday_inputs["calls"]
    assert [(name, length) for name, length, _ in calls] == [("model", None), ("start", None), ("start", 256)]
    assert "tempfile.mkdtemp\nMake a unique temporary folder.\ndef mkdtemp():\n    ..." in calls[0][2]
    assert calls[2][2][0] == "Make a unique temporary folder.\ndef mkdtemp():\n    ..."
    assert metrics["kfp_metrics"]["everyday.stdlib.bm25.success@1"] == 0.5
    assert metrics["kfp_metrics"]["everyday.keyword.stdlib.naive.mrr@10"] == 0.25
    table = stage.summary_table(metrics["suites"])
    assert re.search(
        r"^all \(2\) +\| mrr@10 +\| 1\.0000 +\| 0\.6250 +\| 1\.0000 +\| 0\.2500 +\| 0\.2500", table, re.M
    )
    assert "model - zero-shot +0.7500 (+0.7500..+0.7500)" in table

    # The gate guards it like every suite: model - zero-shot, paired.
    guarded = [c for c in gate.zero_shot_comparisons(gate.GateConfig(), metrics) if c["suite"] == "everyday"]
    assert [(c["protocol"], c["regressed"]) for c in guarded] == [("stdlib", False)]
    # A model below its start on the suite (the two encoders swapped) is not promoted.
    swapped = stage.run(
        config,
        everyday_inputs["start"],
        pairs_dir,
        tmp_path / "swapped",
        baseline_encoder=everyday_inputs["model"],
        corpus_dir=everyday_inputs["corpus"] / "corpus",  # the corpus folder itself
    )
    assert swapped["suites"]["everyday"]["model_vs"]["stdlib"]["zero_shot"]["ci95_high"] == -0.75
    comparisons = gate.zero_shot_comparisons(gate.GateConfig(guarded_suites=("everyday",)), swapped)
    passed, reasons = gate.zero_shot_reason(gate.GateConfig(), comparisons)
    assert not passed
    assert reasons == [
        "everyday/stdlib: model - zero-shot MRR -0.7500 (95% -0.7500 .. -0.7500): below zero-shot"
    ]


def test_the_everyday_suite_is_skipped_without_stdlib_rows(
    pairs_dir: Path, everyday_inputs: dict, tmp_path: Path
) -> None:
    config = stage.EvaluateConfig(suites=("test",), protocols=("full",), device="cpu")
    metrics = stage.run(config, everyday_inputs["model"], pairs_dir, tmp_path / "none")  # no corpus
    assert "everyday" not in metrics["suites"] and metrics["skipped"] == {}
    corpus = tmp_path / "site-packages-only"
    write_shards([{"query": "", "code": "def f(): ...", "source": "python:site-packages"}], corpus)
    metrics = stage.run(config, everyday_inputs["model"], pairs_dir, tmp_path / "other", corpus_dir=corpus)
    assert "everyday" not in metrics["suites"]
    assert metrics["skipped"] == {"everyday": f"no python:stdlib rows with code in the corpus {corpus}"}
    off = stage.EvaluateConfig(suites=("test",), protocols=("full",), everyday=False, device="cpu")
    metrics = stage.run(off, everyday_inputs["model"], pairs_dir, tmp_path / "off", corpus_dir=corpus)
    assert "everyday" not in metrics["suites"] and metrics["skipped"] == {}
    with pytest.raises(FileNotFoundError, match="no part-"):  # not a corpus: bad input, before any model
        stage.run(config, everyday_inputs["model"], pairs_dir, tmp_path / "bad", corpus_dir=tmp_path)
    assert len(everyday_inputs["calls"]) == 3


def test_the_everyday_model_pass_takes_the_vectors_the_index_holds(
    pairs_dir: Path, everyday_inputs: dict, tmp_path: Path
) -> None:
    from semcode.corpus import BuildIndexConfig, encoder_identity
    from semcode.indexing import index_corpus

    for name, weights in (("model", b"model weights"), ("start", b"start weights")):
        (everyday_inputs[name] / "model.safetensors").write_bytes(weights)  # two identities
    corpus = everyday_inputs["corpus"] / "corpus"

    def index_made_by(encoder: str) -> Path:
        out = tmp_path / f"index-of-{encoder}"
        embed = keyword_embed(AXES, AXES)
        identity = encoder_identity(everyday_inputs[encoder])
        index_corpus(BuildIndexConfig(), embed, 3, corpus, out, encoder=encoder, encoder_id=identity)
        return out

    config = stage.EvaluateConfig(
        suites=("test",), protocols=("full",), everyday_suite=str(everyday_inputs["suite"]), device="cpu"
    )
    calls = everyday_inputs["calls"]
    stdlib = {"tempfile.mkdtemp", "genericpath.exists", "shutil.rmtree", "os.makedirs"}

    def stdlib_documents_the_model_embedded() -> int:
        return sum(text.split("\n")[0] in stdlib for text in calls[0][2])

    embedded = stage.run(config, everyday_inputs["model"], pairs_dir, tmp_path / "a", corpus_dir=corpus)
    assert stdlib_documents_the_model_embedded() == 4  # remembered after the fusion mix's pass
    calls.clear()
    reused = stage.run(
        config,
        everyday_inputs["model"],
        pairs_dir,
        tmp_path / "b",
        corpus_dir=corpus,
        index_dir=index_made_by("model"),
    )
    assert stdlib_documents_the_model_embedded() == 0  # every one came from the index
    assert reused["suites"]["everyday"]["stdlib"] == embedded["suites"]["everyday"]["stdlib"]
    # An index another encoder made (or another document view, length or runtime) is not trusted.
    calls.clear()
    stage.run(
        config,
        everyday_inputs["model"],
        pairs_dir,
        tmp_path / "c",
        corpus_dir=corpus,
        index_dir=index_made_by("start"),
    )
    assert stdlib_documents_the_model_embedded() == 4


def test_a_suite_of_too_few_queries_is_reported_not_ranked(tmp_path: Path) -> None:
    rows = [{"query": q, "code": c, "language": "python", "repo": "hand"} for q, c in PAIRS[:2]]
    write_shards(rows, tmp_path / "pairs" / "test")
    config = stage.EvaluateConfig(suites=("test",), min_queries=3)
    suites, skipped = stage.load_suites(config, tmp_path / "pairs")
    assert suites == [] and skipped["test"].startswith("too few queries to evaluate: 2 queries in ")
    assert skipped["test"].endswith("min_queries 3")
    assert [
        s.name for s in stage.load_suites(stage.EvaluateConfig(suites=("test",)), tmp_path / "pairs")[0]
    ] == ["test"]
    write_shards([], tmp_path / "pairs" / "test")  # an empty test split: too few at the default
    assert (
        "0 queries"
        in stage.load_suites(stage.EvaluateConfig(suites=("test",)), tmp_path / "pairs")[1]["test"]
    )
    with pytest.raises(ConfigError, match="min_queries must be >= 1"):
        stage.EvaluateConfig(min_queries=0).validate()
