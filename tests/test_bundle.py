"""The release bundle contract, checked the way an external tool reads a bundle, and validate_bundle's errors.

The bundle is real: the tiny stages (tests/bundle_fixture.py) run once per session and
semcode.bundle.assemble_bundle puts their outputs together.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from bundle_fixture import (
    TinyRun,
    assemble_tiny_bundle,
    cached_tiny_run,
    files_naming,
    machine_paths,
    own_document,
)

from semcode import bundle as bundles
from semcode import bundle_checks, report
from semcode import portable as portable_paths
from semcode.bundle import BundleError


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    return cached_tiny_run(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run: TinyRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return assemble_tiny_bundle(tiny_run, tmp_path_factory.mktemp("bundle") / "bundle")


@pytest.fixture
def bundle_copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A copy of the bundle that a test may break."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


# ---------------------------------------------------------------------------------------------
# The contract, from outside: only json, tokenizers, onnxruntime, faiss, pyarrow, sentence-transformers


def test_an_external_tool_can_search_with_the_bundle(tiny_bundle: Path):
    import faiss
    import onnxruntime as ort
    import pyarrow.parquet as pq
    from tokenizers import Tokenizer

    meta = json.loads((tiny_bundle / "bundle.json").read_text())
    assert meta["bundle_format"] == 1 and meta["name"] == "semcode" and meta["version"] == "v1"
    assert meta["towers"] == "shared" and meta["dim"] == 64 and meta["max_length"] == 64
    assert meta["default_encoder"] == "encoder.int8.onnx"  # export kept int8 (parity held)
    assert meta["metrics"]["primary"]["name"] == "test/full/model/mrr"
    for name in ("encoder.onnx", "encoder.int8.onnx", "tokenizer.json", "index.faiss", "index_meta.parquet"):
        assert (tiny_bundle / name).is_file(), name

    # Integrity: every file's sha256 is in bundle.json.
    for name, entry in meta["files"].items():
        assert hashlib.sha256((tiny_bundle / name).read_bytes()).hexdigest() == entry["sha256"], name

    # Tokenize as a tool would: truncate to max_length, pad the batch.
    tokenizer = Tokenizer.from_file(str(tiny_bundle / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=meta["max_length"])
    tokenizer.enable_padding(pad_id=tokenizer.token_to_id("<pad>"), pad_token="<pad>")

    def embed(session: ort.InferenceSession, texts: list[str]) -> np.ndarray:
        encodings = tokenizer.encode_batch(texts)
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        }
        return session.run(["embedding"], feeds)[0]

    rows = pq.read_table(tiny_bundle / meta["index"]["meta"]).to_pylist()
    assert {"code", "path", "func_name", "url"} <= set(rows[0])
    assert meta["index"]["document"] == "name+doc+code"  # how each row became the text it is embedded as
    codes = [meta["code_prefix"] + own_document(rows[i]) for i in (0, 5, 9)]
    index = faiss.read_index(str(tiny_bundle / meta["index"]["file"]))
    assert index.ntotal == len(rows) == meta["index"]["ntotal"] and index.d == meta["dim"]

    for name in (meta["encoders"]["fp32"]["code"], meta["default_files"]["query"]):
        session = ort.InferenceSession(str(tiny_bundle / name), providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
        assert all(i.type == "tensor(int64)" for i in session.get_inputs())
        vectors = embed(session, codes)  # a padded batch: dynamic batch and sequence axes
        assert vectors.shape == (3, meta["dim"]) and vectors.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
        query = embed(session, [meta["query_prefix"] + "read a configuration file"])
        assert query.shape == (1, meta["dim"])

    # The index holds the fp32 vectors of the search documents: each function's own finds it first.
    session = ort.InferenceSession(str(tiny_bundle / "encoder.onnx"), providers=["CPUExecutionProvider"])
    scores, ids = index.search(embed(session, codes), 3)
    for position, row in enumerate((0, 5, 9)):
        assert rows[ids[position][0]]["code"] == rows[row]["code"] and scores[position][0] > 0.999


def test_the_encoder_folder_loads_with_sentence_transformers(tiny_bundle: Path):
    import onnxruntime as ort
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    meta = json.loads((tiny_bundle / "bundle.json").read_text())
    model = SentenceTransformer(str(tiny_bundle / "encoder"), device="cpu")
    text = "def add(a, b):\n    return a + b\n"
    st_vector = model.encode([meta["code_prefix"] + text], normalize_embeddings=False)

    tokenizer = Tokenizer.from_file(str(tiny_bundle / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=meta["max_length"])
    encoding = tokenizer.encode(meta["code_prefix"] + text)
    session = ort.InferenceSession(str(tiny_bundle / "encoder.onnx"), providers=["CPUExecutionProvider"])
    feeds = {
        "input_ids": np.array([encoding.ids], dtype=np.int64),
        "attention_mask": np.array([encoding.attention_mask], dtype=np.int64),
    }
    onnx_vector = session.run(["embedding"], feeds)[0]
    assert st_vector.shape == (1, meta["dim"])
    np.testing.assert_allclose(st_vector, onnx_vector, atol=1e-4)


def test_model_card_and_report_are_self_contained(tiny_bundle: Path):
    card = (tiny_bundle / "model_card.md").read_text()
    for heading in (
        "# semcode v1",
        "## Evaluation",
        "## Training data",
        "## int8 encoder",
        "## Index",
        "## Limitations",
    ):
        assert heading in card
    assert "| test | full |" in card and "python:stdlib" in card
    page = (tiny_bundle / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<svg" in page and "<table>" in page
    for external in ("<script", "<link", 'src="http', "url(http"):
        assert external not in page


def test_the_encoder_folder_has_a_model_hub_card_and_readable_files(tiny_bundle: Path):
    import stat

    import yaml

    text = (tiny_bundle / "encoder" / "README.md").read_text()
    assert text.startswith("---\n")
    header, prose = text.removeprefix("---\n").split("\n---\n", 1)
    meta = yaml.safe_load(header)
    assert meta["library_name"] == "sentence-transformers" and meta["pipeline_tag"] == "sentence-similarity"
    assert meta["license"] == "apache-2.0" and meta["language"] == ["en", "code"]
    assert {"sentence-transformers", "code-search", "python"} <= set(meta["tags"])
    assert "base_model" not in meta  # trained from scratch: no hub model to name
    (entry,) = meta["model-index"]
    assert entry["name"] == "semcode-v1"
    test_full = [r for r in entry["results"] if r["dataset"]["name"] == "test (full)"]
    (result,) = test_full
    assert result["task"]["type"] == "text-retrieval" and result["dataset"]["type"] == "semcode/test"
    card_metrics = json.loads((tiny_bundle / "metrics.json").read_text())
    mrr = card_metrics["evaluate"]["suites"]["test"]["full"]["model"]["mrr"]
    assert {"type": "mrr", "value": round(mrr, 4), "name": "mrr (full)"} in result["metrics"]
    assert prose.strip() == (tiny_bundle / "model_card.md").read_text().strip()  # one card, two layouts
    for path in (tiny_bundle / "encoder").rglob("*"):
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) & 0o044 == 0o044, path  # group and others can read it


def test_the_hub_card_names_a_hub_base_model_and_the_per_language_table():
    from semcode import hub_card

    part = {"n_queries": 5, "full": {"model": {"mrr": 0.5}, "bm25": {"mrr": 0.25}}}
    metrics = {
        "ingest": {"languages": {"go": {"pairs": 40}, "python": {"pairs": 60}}},
        "evaluate": {
            "suites": {
                "test": {**part, "n_queries": 10, "by_language": {"python": part, "go": part}},
                "polyglot-rust": {"n_queries": 7, "csn": {"model": {"mrr": 0.75}}},
            }
        },
    }
    bundle = {
        "name": "semcode",
        "version": "v9",
        "source": {"stage_configs": {"TrainEncoderConfig": {"init_from": "minilm"}}},
    }
    meta = hub_card.front_matter(bundle, metrics)
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    # After a hard-negative round the training started from the previous round's folder: the encoder's
    # own lineage still names the hub model.
    continued = {
        **bundle,
        "source": {
            "encoder_config": {"base": "minilm", "source": "/runs/x/train-encoder/encoder"},
            "stage_configs": {"TrainEncoderConfig": {"init_from": "/runs/x/train-encoder/encoder"}},
        },
    }
    assert hub_card.front_matter(continued, metrics)["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    scratch = {
        **bundle,
        "source": {"encoder_config": {"base": None, "source": "scratch"}, "stage_configs": {}},
    }
    assert "base_model" not in hub_card.front_matter(scratch, metrics)
    assert meta["tags"][-2:] == ["go", "python"]
    assert [row[:4] for row in report.language_rows(metrics)] == [
        ["go", "40", "test", "5"],
        ["python", "60", "test", "5"],
        ["rust", "-", "polyglot-rust", "7"],
    ]
    card = report.model_card(bundle, metrics)
    assert "### Per language" in card and "| python | 60 | test | 5 | 0.5000 | 0.2500 | - | - |" in card
    page = report.report_html({**bundle, "default_mode": "hybrid"}, metrics)
    assert "<h2>Evaluation: per language</h2>" in page and "Default search mode: <b>hybrid</b>" in page


def test_bundle_json_and_the_model_card_say_what_the_index_covers(tiny_bundle: Path, tiny_run: TinyRun):
    coverage = json.loads((tiny_run.index / "metrics.json").read_text())["coverage"]
    meta = json.loads((tiny_bundle / "bundle.json").read_text())
    assert coverage["indexed"] == meta["index"]["ntotal"] and coverage["sampled_by"] == "all"
    assert set(coverage["per_source"]) == {
        "python:stdlib",
        "dir:/srv/demo-go",
        "dir:/srv/demo-rs",
        "dir:/srv/demo-java",
    }
    # the bundle names no folder of the build machine: /srv/demo-go (under no known root) keeps its name
    assert set(meta["index"]["coverage"]["per_source"]) == {
        "python:stdlib",
        "dir:<local>/demo-go",
        "dir:<local>/demo-rs",
        "dir:<local>/demo-java",
    }
    card = (tiny_bundle / "model_card.md").read_text()
    assert f"{coverage['indexed']:,} of {coverage['corpus_rows']:,} functions (all)" in card
    assert "dir:<local>/demo-go 3 of 3" in card

    sampled = {
        "indexed": 25_000,
        "corpus_rows": 97_802,
        "sampled_by": "seeded sample (seed 0), even share per source",
        "per_source": {"python:stdlib": [8_586, 8_586], "python:site-packages": [16_414, 89_216]},
    }
    card = report.model_card({"name": "semcode", "version": "v2"}, {"build_index": {"coverage": sampled}})
    assert "25,000 of 97,802 functions, sampled by seeded sample (seed 0), even share per source" in card
    assert "python:stdlib 8,586 of 8,586; python:site-packages 16,414 of 89,216" in card
    assert "functions indexed" not in report.model_card({"name": "semcode", "version": "v2"}, {})


def test_model_card_shows_the_decoder_metrics():
    bundle = {"name": "semcode", "version": "v2", "decoder": "decoder"}
    decoder = {
        "steps": 1500,
        "tokens_per_second": 5909.3,
        "test_perplexity": 67.6,
        "test_token_accuracy": 0.322,
        "parse_rate": 0.47,
        "round_trip_recall@1": 0.03,
        "round_trip_recall@10": 0.14,
        "query_parse_rate": 0.44,
        "query_round_trip_recall@1": 0.02,
        "query_round_trip_recall@10": 0.09,
        "rerank_candidates": 8,
        "reranked_parse_rate": 0.9,
        "reranked_round_trip_recall@1": 0.06,
        "reranked_round_trip_recall@10": 0.13,
    }
    card = report.model_card(bundle, {"train_decoder": decoder})
    assert "## Decoder" in card
    assert "greedy from code: parse rate / round-trip R@1 / R@10 | 0.4700 / 0.0300 / 0.1400" in card
    assert "greedy from docstring: parse rate / round-trip R@1 / R@10 | 0.4400 / 0.0200 / 0.0900" in card
    assert "best of 8 from code: parse rate / round-trip R@1 / R@10 | 0.9000 / 0.0600 / 0.1300" in card
    assert "best of 8 from docstring" not in card  # not measured: no row
    assert "## Decoder" not in report.model_card(bundle, {})
    assert "best of 8 from code" in report.report_html(bundle, {"train_decoder": decoder})


def test_report_escapes_every_text():
    bundle = {
        "name": "<script>alert(1)</script>",
        "version": "v&1",
        "metrics": {"primary": {"name": "test/full/model/mrr", "value": 0.5}},
    }
    metrics = {
        "evaluate": {
            "suites": {
                "<b>suite</b>": {
                    "n_queries": 3,
                    "candidates_per_query": {"full": {"min": 3, "max": 3}},
                    "full": {"model": {"mrr": 0.5, "recall@10": 1.0}, "bm25": {"mrr": 0.25}},
                }
            }
        },
        "ingest": {"sources": {"dir:<evil>": {"pairs": 1, "corpus_rows": 2}}},
    }
    page = report.report_html(bundle, metrics)
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<b>suite</b>" not in page and "&lt;b&gt;suite&lt;/b&gt;" in page and "dir:&lt;evil&gt;" in page
    assert page.count("<rect") == 2 + 2  # one bar per system with an MRR, one legend square per system
    card = report.model_card(bundle, metrics)
    assert "| <b>suite</b> | full | 3 | 3 | 0.5000 | 0.2500 | - |" in card
    assert "paired bootstrap" not in card  # metrics from before model_vs: no table


def test_model_card_shows_the_model_against_each_baseline_with_its_interval():
    bundle = {"name": "semcode", "version": "v3"}
    gap = {"mrr_difference": -0.0032, "ci95_low": -0.0211, "ci95_high": 0.0147}
    suite = {
        "n_queries": 500,
        "candidates_per_query": {"full": {"min": 6267, "max": 6267}},
        "full": {"model": {"mrr": 0.5395}, "zero_shot": {"mrr": 0.5427}},
        "model_vs": {"full": {"zero_shot": gap}},
    }
    metrics = {"evaluate": {"suites": {"cosqa": suite}}}
    assert "| cosqa | full | model - zero-shot | -0.0032 | -0.0211 .. +0.0147 |" in report.model_card(
        bundle, metrics
    )
    assert "<td>model - zero-shot</td><td>-0.0032</td><td>-0.0211 .. +0.0147</td>" in report.report_html(
        bundle, metrics
    )


# ---------------------------------------------------------------------------------------------
# validate_bundle: every problem, each one a clear message


def test_validate_accepts_the_bundle(tiny_bundle: Path):
    summary = bundles.validate_bundle(tiny_bundle)
    assert summary["version"] == "v1" and summary["dim"] == 64 and summary["index_ntotal"] > 0
    assert summary["default_encoder"] == "encoder.int8.onnx" and summary["decoder"] is False


def rehash(bundle_dir: Path) -> None:
    """Recompute bundle.json's checksums, so a test sees only the problem it made."""
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    meta["files"] = bundles.file_checksums(bundle_dir)
    (bundle_dir / "bundle.json").write_text(json.dumps(meta))


def problems_of(bundle_dir: Path) -> list[str]:
    with pytest.raises(BundleError) as caught:
        bundles.validate_bundle(bundle_dir)
    assert "breaks the release bundle contract" in str(caught.value)
    return caught.value.problems


def test_validate_reports_a_missing_file(bundle_copy: Path):
    (bundle_copy / "encoder.int8.onnx").unlink()
    assert problems_of(bundle_copy) == [
        "encoder.int8.onnx is missing",
        "encoder.int8.onnx is listed in bundle.json files but missing from the bundle",
    ]


def test_validate_reports_a_wrong_onnx_input_name(bundle_copy: Path):
    import onnx

    path = bundle_copy / "encoder.onnx"
    model = onnx.load(str(path))
    for node in model.graph.node:
        node.input[:] = ["token_ids" if name == "input_ids" else name for name in node.input]
    next(value for value in model.graph.input if value.name == "input_ids").name = "token_ids"
    onnx.save(model, str(path))
    rehash(bundle_copy)
    assert problems_of(bundle_copy) == [
        "encoder.onnx: inputs are ['token_ids', 'attention_mask'], the contract says ['input_ids', 'attention_mask']"
    ]


def test_validate_reports_a_checksum_mismatch(bundle_copy: Path):
    card = bundle_copy / "model_card.md"
    text = card.read_text()
    card.write_text(text.replace("semcode", "SEMCODE", 1))  # same size, other bytes
    assert problems_of(bundle_copy) == [
        "model_card.md: sha256 does not match bundle.json (the file changed after assembly)"
    ]


def test_validate_reports_an_index_meta_mismatch(bundle_copy: Path):
    import pyarrow.parquet as pq

    table = pq.read_table(bundle_copy / "index_meta.parquet")
    pq.write_table(table.slice(0, table.num_rows - 1), bundle_copy / "index_meta.parquet")
    rehash(bundle_copy)
    assert problems_of(bundle_copy) == [
        f"index.faiss holds {table.num_rows} vectors but index_meta.parquet has {table.num_rows - 1} rows: "
        "FAISS id i must be row i"
    ]


def test_validate_lists_every_problem_of_bundle_json(bundle_copy: Path):
    meta = json.loads((bundle_copy / "bundle.json").read_text())
    meta["dim"] = "64"
    meta["bundle_format"] = 2
    del meta["created_at"]
    (bundle_copy / "bundle.json").write_text(json.dumps(meta))
    (bundle_copy / "stray.txt").write_text("not part of the bundle")
    problems = problems_of(bundle_copy)
    assert "bundle.json has no key 'created_at'" in problems
    assert "bundle.json 'dim' is str '64', expected int" in problems
    assert "bundle.json bundle_format is 2; this semcode reads format 1" in problems
    assert "stray.txt is in the bundle but not listed in bundle.json files" in problems


def test_validate_reports_a_missing_bundle_json(bundle_copy: Path):
    (bundle_copy / "bundle.json").unlink()
    assert problems_of(bundle_copy) == [f"bundle.json: {bundle_copy / 'bundle.json'} does not exist"]


# ---------------------------------------------------------------------------------------------
# assemble_bundle checks its inputs before copying anything


def test_assemble_lists_bad_inputs_before_copying(tiny_run: TinyRun, tmp_path: Path):
    onnx_dir = Path(shutil.copytree(tiny_run.onnx, tmp_path / "onnx"))
    (onnx_dir / "encoder.int8.onnx").unlink()
    index_dir = Path(shutil.copytree(tiny_run.index, tmp_path / "index"))
    index_metrics = json.loads((index_dir / "metrics.json").read_text())
    (index_dir / "metrics.json").write_text(json.dumps({**index_metrics, "dim": 32}))
    out = tmp_path / "bundle"
    with pytest.raises(BundleError) as caught:
        bundles.assemble_bundle(
            out,
            name="semcode",
            version="v2",
            encoder_dir=tiny_run.encoder,
            onnx_dir=onnx_dir,
            index_dir=index_dir,
            metrics={"suites": {}},
        )
    problems = "\n".join(caught.value.problems)
    assert "encoder.int8.onnx does not exist" in problems
    assert "no primary" in problems
    assert "embedding dimensions differ: {'encoder': 64, 'ONNX export': 64, 'index': 32}" in problems
    assert not out.exists()


def test_assemble_refuses_a_non_empty_output_and_a_bad_version(tiny_run: TinyRun, tmp_path: Path):
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "old.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        assemble_tiny_bundle(tiny_run, tmp_path / "bundle")
    with pytest.raises(ValueError, match="not be 'latest'"):
        assemble_tiny_bundle(tiny_run, tmp_path / "other", version="latest")


def test_metric_lookup_reads_every_metrics_shape(tiny_bundle: Path, tiny_run: TinyRun):
    evaluation = tiny_run.eval_metrics()
    expected = evaluation["suites"]["humaneval"]["full"]["bm25"]["mrr"]
    bundle_metrics = json.loads((tiny_bundle / "metrics.json").read_text())
    summary = bundles.read_bundle_json(tiny_bundle)["metrics"]
    for metrics in (evaluation, bundle_metrics, summary):
        assert bundles.metric_value(metrics, "humaneval/full/bm25/mrr") == pytest.approx(expected)
        assert bundles.metric_value(metrics, "test/full/model/mrr") == evaluation["primary"]["value"]
        assert bundles.metric_value(metrics, "nosuite/full/model/mrr") is None


def test_encoder_file_names_follow_the_towers():
    assert bundles.encoder_files("separate")["int8"] == {
        "query": "query_encoder.int8.onnx",
        "code": "code_encoder.int8.onnx",
    }
    assert bundles.encoder_files("shared")["fp32"] == {"query": "encoder.onnx", "code": "encoder.onnx"}
    with pytest.raises(ValueError, match="towers"):
        bundles.encoder_files("three")


@pytest.mark.parametrize(
    ("key", "value"),
    [("index.meta", "/etc/hostname"), ("index.file", "../index.faiss"), ("decoder", "/tmp/decoder")],
)
def test_a_bundle_that_names_files_outside_itself_is_refused(bundle_copy: Path, key: str, value: str):
    meta = json.loads((bundle_copy / "bundle.json").read_text())
    section, _, field_name = key.partition(".")
    if field_name:
        meta[section][field_name] = value
    else:
        meta[section] = value
    (bundle_copy / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(bundles.BundleError, match=rf"bundle.json {re.escape(key)} .*not a relative name"):
        bundles.validate_bundle(bundle_copy)


# ---------------------------------------------------------------------------------------------
# The lexical index and the fusion (hybrid search)


def test_the_bundle_carries_the_lexical_index_and_the_fusion(tiny_bundle: Path, tiny_run: TinyRun):
    import bm25s
    import pyarrow.parquet as pq

    from semcode.retrieval import BM25Index

    meta = json.loads((tiny_bundle / "bundle.json").read_text())
    assert meta["lexical"] == {
        "dir": "bm25",
        "tokenizer": "split_identifiers",
        "stopwords": False,
        "ntotal": meta["index"]["ntotal"],
    }
    bm25_files = [name for name in meta["files"] if name.startswith("bm25/")]
    assert "bm25/params.index.json" in bm25_files and "bm25/vocab.index.json" in bm25_files  # checksummed
    # bm25s' own format: bm25s reads it; the same rows as FAISS, so a function's own code finds it first.
    retriever = bm25s.BM25.load(str(tiny_bundle / "bm25"))
    assert retriever.scores["num_docs"] == meta["index"]["ntotal"]
    index = BM25Index.load(tiny_bundle / "bm25")
    codes = pq.read_table(tiny_bundle / "index_meta.parquet").column("code").to_pylist()
    assert int(index.query_scores(codes[7]).argmax()) == 7
    # The fusion evaluate chose (the tiny run's pairs have a valid split) and the default mode.
    chosen = tiny_run.eval_metrics()["fusion"]
    assert meta["fusion"]["rule"] == chosen["rule"] and meta["fusion"]["weight"] == chosen["weight"]
    assert meta["fusion"]["chosen_on"] == chosen["chosen_on"] and chosen["chosen_on"][0] == "valid"
    assert meta["default_mode"] == chosen["default_mode"]
    summary = bundles.validate_bundle(tiny_bundle)
    assert summary["lexical"] is True and summary["default_mode"] == meta["default_mode"]


def write_bundle_json(bundle_dir: Path, **changes) -> None:
    meta = json.loads((bundle_dir / "bundle.json").read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    (bundle_dir / "bundle.json").write_text(json.dumps(meta))


def test_validate_checks_the_lexical_index_and_the_fusion(bundle_copy: Path):
    (bundle_copy / "bm25" / "params.index.json").unlink()
    meta = json.loads((bundle_copy / "bundle.json").read_text())
    write_bundle_json(
        bundle_copy,
        fusion={"rule": "mean", "weight": 0.1},
        default_mode="semantic",
        lexical={**meta["lexical"], "tokenizer": "whitespace"},
    )
    with pytest.raises(BundleError) as error:
        bundles.validate_bundle(bundle_copy)
    problems = "\n".join(error.value.problems)
    assert "bm25/ (bundle.json lexical) is not a bm25s index: missing params.index.json" in problems
    assert "tokenizer is 'whitespace'" in problems
    assert "fusion: fusion rule 'mean' is not one of ['convex', 'rrf']" in problems
    assert "default_mode is 'semantic', expected one of ['dense', 'lexical', 'hybrid']" in problems


def test_an_older_bundle_without_the_lexical_index_still_validates(bundle_copy: Path):
    shutil.rmtree(bundle_copy / "bm25")
    meta = json.loads((bundle_copy / "bundle.json").read_text())
    files = {name: entry for name, entry in meta["files"].items() if not name.startswith("bm25/")}
    write_bundle_json(bundle_copy, lexical=None, fusion=None, default_mode=None, files=files)
    summary = bundles.validate_bundle(bundle_copy)
    assert summary["lexical"] is False and summary["default_mode"] == "dense"
    # ... but a bundle may not default to a mode it cannot serve.
    write_bundle_json(bundle_copy, default_mode="hybrid")
    with pytest.raises(BundleError, match="default_mode is 'hybrid' but the bundle has no lexical index"):
        bundles.validate_bundle(bundle_copy)


def test_an_index_without_a_lexical_index_makes_a_dense_bundle(tiny_run: TinyRun, tmp_path: Path):
    index_dir = Path(shutil.copytree(tiny_run.index, tmp_path / "index"))
    shutil.rmtree(index_dir / "bm25")
    bundle = bundles.assemble_bundle(
        tmp_path / "bundle",
        name="semcode",
        version="v1",
        encoder_dir=tiny_run.encoder,
        onnx_dir=tiny_run.onnx,
        index_dir=index_dir,
        metrics=tiny_run.eval_metrics(),
    )
    assert "lexical" not in bundle and bundle["default_mode"] == "dense"
    assert not (tmp_path / "bundle" / "bm25").exists()


# ---------------------------------------------------------------------------------------------
# Untrusted files checked where they are opened (issue 31): the tokenizer's regexes, ONNX external data,
# NaN vectors


def with_split_regex(bundle_dir: Path, regex: str) -> None:
    tokenizer = json.loads((bundle_dir / "tokenizer.json").read_text())
    split = {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}
    tokenizer["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [split, tokenizer["pre_tokenizer"]]}
    (bundle_dir / "tokenizer.json").write_text(json.dumps(tokenizer))
    rehash(bundle_dir)


def test_validate_refuses_a_tokenizer_regex_that_backtracks_without_bound(bundle_copy: Path):
    with_split_regex(bundle_copy, r"(\w+\s?)+$")
    [problem] = problems_of(bundle_copy)
    assert problem.startswith("tokenizer.json: tokenizing a test text") and "PanicException" in problem


def test_the_tokenizer_worker_bounds_each_text_and_survives_a_hang(bundle_copy: Path):
    with_split_regex(bundle_copy, "(q+q+)+Z")
    worker = bundle_checks.TokenizerWorker(bundle_copy / "tokenizer.json", seconds=0.5)
    try:
        started = time.monotonic()
        answers = worker.check(
            ["read a file", ("q" * 23 + " ") * 40, "parse a date", "q" * 40 + "!", "\ud800"]
        )
        assert time.monotonic() - started < 10
        assert answers[0] is None and answers[2] is None
        assert answers[1] == "the tokenizer did not finish within 0.5 s (stopped)"
        assert answers[3].startswith("PanicException") and answers[4].startswith("TypeError")
        assert worker.restarts == 1 and worker.check(["and again"]) == [None]
    finally:
        worker.close()


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/hostname", "linked.bin"])
def test_validate_refuses_onnx_external_data_outside_the_bundle(bundle_copy: Path, location: str):
    import onnx
    from onnx.external_data_helper import convert_model_to_external_data

    path = bundle_copy / "encoder.onnx"
    model = onnx.load(str(path))
    convert_model_to_external_data(
        model, all_tensors_to_one_file=True, location="weights.bin", size_threshold=0
    )
    onnx.save(model, str(path))  # writes weights.bin beside it: inside the bundle, accepted
    rehash(bundle_copy)
    bundles.validate_bundle(bundle_copy)
    (bundle_copy.parent / "outside.bin").write_bytes((bundle_copy / "weights.bin").read_bytes())
    (bundle_copy / "linked.bin").symlink_to(bundle_copy.parent / "outside.bin")
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save(model, str(path))
    rehash(bundle_copy)
    problems = problems_of(bundle_copy)
    assert problems and all(location in problem for problem in problems if "external data" in problem)
    assert any("external data" in problem for problem in problems)


def test_validate_refuses_nan_vectors_in_the_index(bundle_copy: Path):
    import faiss

    index = faiss.read_index(str(bundle_copy / "index.faiss"))
    vectors = index.reconstruct_n(0, index.ntotal)
    vectors[[3, 7]] = np.nan
    index.reset()
    index.add(vectors)
    faiss.write_index(index, str(bundle_copy / "index.faiss"))
    rehash(bundle_copy)
    assert problems_of(bundle_copy) == [
        "index.faiss: 2 vector(s) hold NaN or infinity (the first: id 3); rebuild the index"
    ]


# ---------------------------------------------------------------------------------------------
# No build machine path in a bundle or a registry pointer


def test_portable_rewrites_local_paths_and_keeps_urls_and_relative_names(tmp_path: Path):
    run = tmp_path / "run"
    roots = portable_paths.path_roots({"<run>": run})
    kept = ["python://stdlib/json/__init__.py", "s3://models/registry/semcode/v1", "encoder/config.json"]
    value = {
        f"dir:{run}/src": [f"{run}/train_encoder/encoder", 3, None],
        "text": f"1 rows of {run}/ingest/pairs and /srv/data/corpus.jsonl; see https://example.org/a/b",
        "kept": kept,
    }
    assert portable_paths.portable(value, roots) == {
        "dir:<run>/src": ["<run>/train_encoder/encoder", 3, None],
        "text": "1 rows of <run>/ingest/pairs and <local>/corpus.jsonl; see https://example.org/a/b",
        "kept": kept,
    }
    sibling = portable_paths.portable_text(f"{run}x/other", roots)  # a folder beside the run is not in it
    assert not sibling.startswith("<run>") and str(tmp_path) not in sibling


def test_a_published_bundle_names_no_folder_of_the_build_machine(tiny_run: TinyRun, tmp_path: Path):
    from bundle_fixture import make_tiny_decoder

    from semcode import config as cfg
    from semcode.serve.searcher import resolve_pointer
    from semcode.stages import publish

    decoder = make_tiny_decoder(tiny_run, tmp_path / "train_decoder")
    bundle = assemble_tiny_bundle(tiny_run, tmp_path / "bundle", decoder_dir=decoder)
    registry = tmp_path / "registry"
    publish.run(
        cfg.from_dict(publish.PublishConfig, {"registry": str(registry), "name": "semcode"}),
        bundle,
        tmp_path / "publish",
    )
    forbidden = machine_paths(tmp_path.parent.parent) + machine_paths(tiny_run.root)
    assert (bundle / "decoder" / "semcode_decoder.json").is_file()
    assert files_naming(bundle, forbidden) == []
    assert files_naming(registry, forbidden) == []  # the published copy and the latest pointer
    pointer = json.loads((registry / "semcode" / "latest").read_text())
    assert pointer["path"] == "semcode/v1"
    assert resolve_pointer(str(registry / "semcode" / "latest")) == str(registry / "semcode" / "v1")
    source = json.loads((bundle / "bundle.json").read_text())["source"]
    # where it came from, symbolically: <run> is the folder that holds every stage output
    assert source["encoder"].startswith("<run>/") and source["encoder"].endswith("/train_encoder/encoder")
