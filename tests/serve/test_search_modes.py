"""Search modes on the tiny real bundle (tests/bundle_fixture.py): dense, lexical (the bundle's bm25/) and
hybrid (both fused by bundle.json "fusion"), in the Searcher, `semcode search --mode` and `mode` in
POST/GET /search; and a bundle made before the lexical index (dense only, and it says so).

The tiny encoder is untrained, so a function's own code is the query with one known answer: the
function itself, which its own words (BM25) and its own vector (dense) both rank first.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from bundle_fixture import TinyRun, assemble_tiny_bundle, cached_tiny_run
from fastapi.testclient import TestClient

from semcode.retrieval import BM25Index, fuse
from semcode.serve.app import MicroBatcher, ServeConfig, bundle_loader, create_app
from semcode.serve.search import main
from semcode.serve.searcher import Searcher

HYBRID = {"rule": "convex", "weight": 0.3}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    return cached_tiny_run(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run: TinyRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return assemble_tiny_bundle(tiny_run, tmp_path_factory.mktemp("modes_bundle") / "bundle")


@pytest.fixture(scope="session")
def corpus(tiny_bundle: Path) -> list[dict]:
    return pq.read_table(tiny_bundle / "index_meta.parquet").to_pylist()


def copy_with(tiny_bundle: Path, out: Path, **changes) -> Path:
    """A copy of the bundle with bundle.json keys changed (None: removed); checksums are not re-made (the
    query path does not read them)."""
    shutil.copytree(tiny_bundle, out, ignore=shutil.ignore_patterns("encoder", "report.html"))
    bundle = json.loads((out / "bundle.json").read_text())
    for key, value in changes.items():
        if value is None:
            bundle.pop(key, None)
        else:
            bundle[key] = value
    (out / "bundle.json").write_text(json.dumps(bundle))
    return out


@pytest.fixture(scope="session")
def hybrid_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny bundle defaulting to hybrid with a weight that matters (its own valid split, one query,
    could not tell the weights apart)."""
    out = tmp_path_factory.mktemp("hybrid") / "bundle"
    return copy_with(tiny_bundle, out, fusion={**HYBRID, "chosen_on": "a test"}, default_mode="hybrid")


@pytest.fixture(scope="session")
def searcher(hybrid_bundle: Path) -> Searcher:
    return Searcher(hybrid_bundle, threads=1)


@pytest.fixture(scope="session")
def old_bundle(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle made before the lexical index: no bm25/, no lexical, fusion or default_mode keys."""
    out = copy_with(
        tiny_bundle, tmp_path_factory.mktemp("old") / "bundle", lexical=None, fusion=None, default_mode=None
    )
    shutil.rmtree(out / "bm25")
    return out


def test_the_searcher_offers_every_mode_and_defaults_to_the_bundles(searcher: Searcher, tiny_bundle: Path):
    assert searcher.modes == ("dense", "lexical", "hybrid") and searcher.default_mode == "hybrid"
    about = searcher.describe()
    assert about["modes"] == ["dense", "lexical", "hybrid"] and about["fusion"] == HYBRID
    plain = Searcher(tiny_bundle, threads=1)  # the fixture's own choice: dense (weight 0 tied)
    assert plain.default_mode == json.loads((tiny_bundle / "bundle.json").read_text())["default_mode"]
    with pytest.raises(ValueError, match=r"mode 'semantic' is not one of \['dense', 'lexical', 'hybrid'\]"):
        searcher.search("x", 3, mode="semantic")


def test_lexical_ranks_by_bm25_over_the_same_rows(searcher: Searcher, corpus: list[dict], tiny_bundle: Path):
    index = BM25Index.load(tiny_bundle / "bm25")
    for gold in (3, 7, len(corpus) - 1):  # the last: a Java function, after the Python ones
        hits = searcher.search(corpus[gold]["code"], 5, mode="lexical")
        assert hits[0].id == gold and hits[0].func_name == corpus[gold]["func_name"]
        expected = index.query_scores(corpus[gold]["code"])
        np.testing.assert_allclose([h.score for h in hits], expected[[h.id for h in hits]], rtol=1e-6)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # Only functions sharing a word with the query: none for words no function has.
    assert searcher.search("zzyzx qwxv", 5, mode="lexical") == []


def test_hybrid_is_the_fusion_rule_over_the_whole_corpus(
    searcher: Searcher, corpus: list[dict], tiny_bundle: Path, tmp_path: Path
):
    """The union of both top N, fused, gives what fusing every function's scores gives (evaluate's way)."""
    index = BM25Index.load(tiny_bundle / "bm25")
    vectors = searcher.index.reconstruct_n(0, searcher.size)  # [C, dim]
    queries = [corpus[i]["code"] for i in (2, 11, 40)] + ["read a file line by line", "parse json"]
    query_vectors = searcher.encode(queries)
    for query, hits in zip(queries, searcher.search_batch(queries, 5, mode="hybrid"), strict=True):
        row = queries.index(query)
        dense = (vectors @ query_vectors[row])[None]  # [1, C]
        full = fuse(dense, index.query_scores(query)[None], **HYBRID)[0]
        top = np.argsort(-full, kind="stable")[:5]
        assert [h.id for h in hits] == top.tolist(), query
        np.testing.assert_allclose([h.score for h in hits], full[top], rtol=1e-5, atol=1e-6)
    assert searcher.search(corpus[11]["code"], 3, mode="hybrid")[0].id == 11

    rrf = Searcher(
        copy_with(tiny_bundle, tmp_path / "rrf", fusion={"rule": "rrf"}, default_mode="hybrid"), threads=1
    )
    hits = rrf.search(corpus[11]["code"], 3, mode="hybrid")
    assert hits[0].id == 11 and hits[0].score == pytest.approx(2 / 61)  # first on both sides


def test_hybrid_gives_a_question_its_own_weight(
    searcher: Searcher, tiny_bundle: Path, tmp_path: Path, capsys
) -> None:
    """A per-form fusion spec (question_weight): a question-form query is fused at its weight, any other at
    ``weight``, over the whole corpus as evaluate fuses them (semcode.retrieval.fuse_queries)."""
    spec = {**HYBRID, "question_weight": 0.0, "chosen_on": ["valid", "cosqa"]}
    bundle = copy_with(tiny_bundle, tmp_path / "per_form", fusion=spec, default_mode="hybrid")
    per_form = Searcher(bundle, threads=1)
    assert per_form.describe()["fusion"] == {**HYBRID, "question_weight": 0.0}
    index = BM25Index.load(tiny_bundle / "bm25")
    vectors = per_form.index.reconstruct_n(0, per_form.size)  # [C, dim]
    queries = ["How do I read a file line by line?", "read a file line by line"]  # a question, keywords
    hits = per_form.search_batch(queries, 5, mode="hybrid")
    for row, (query, weight) in enumerate(zip(queries, (0.0, HYBRID["weight"]), strict=True)):
        dense = (vectors @ per_form.encode([query])[0])[None]  # [1, C]
        full = fuse(dense, index.query_scores(query)[None], "convex", weight)[0]
        top = np.argsort(-full, kind="stable")[:5]
        assert [h.id for h in hits[row]] == top.tolist(), query
    # The question at weight 0 ranks as dense does; an old spec (one weight) fuses it at 0.3 like the rest.
    question = queries[0]
    assert [h.id for h in hits[0]] == [h.id for h in per_form.search(question, 5, mode="dense")]
    dense = (vectors @ searcher.encode([question])[0])[None]
    old = np.argsort(-fuse(dense, index.query_scores(question)[None], **HYBRID)[0], kind="stable")[:5]
    assert [h.id for h in searcher.search(question, 5, mode="hybrid")] == old.tolist()
    assert main([str(bundle), question, "-k", "1"]) == 0
    assert "cos + 0.3 x BM25 / max BM25 (0 x for a question)" in capsys.readouterr().out


@pytest.mark.parametrize("mode", ["dense", "lexical", "hybrid"])
def test_the_language_filter_applies_to_every_mode(searcher: Searcher, corpus: list[dict], mode: str):
    go = [i for i, row in enumerate(corpus) if row["language"] == "go"]
    for gold in go:
        hits = searcher.search(corpus[gold]["code"], 10, "go", mode=mode)
        assert hits[0].id == gold and {h.language for h in hits} == {"go"}
    python = searcher.search("return the value", 5, "python", mode=mode)
    assert python and {h.language for h in python} == {"python"}


def test_an_old_bundle_offers_dense_only_and_says_so(old_bundle: Path, corpus: list[dict], capsys):
    searcher = Searcher(old_bundle, threads=1)
    assert searcher.modes == ("dense",) and searcher.default_mode == "dense" and searcher.lexical is None
    assert searcher.search(corpus[7]["code"], 3)[0].id == 7
    with pytest.raises(ValueError, match="no lexical index .* only dense"):
        searcher.search("x", 3, mode="hybrid")
    assert main([str(old_bundle), corpus[7]["code"], "-k", "1"]) == 0
    assert "dense only: the bundle has no lexical index" in capsys.readouterr().out
    assert main([str(old_bundle), "x", "--mode", "lexical"]) == 2
    assert "no lexical index" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# semcode search --mode


def test_cli_mode_in_text_and_json(hybrid_bundle: Path, corpus: list[dict], capsys):
    gold = corpus[7]
    assert main([str(hybrid_bundle), gold["code"], "-k", "2"]) == 0  # the bundle's default: hybrid
    last = capsys.readouterr().out.rstrip().splitlines()[-1]
    assert re.search(r"hybrid: encoder\.int8\.onnx \+ BM25, cos \+ 0\.3 x BM25 / max BM25\) in ", last), last

    assert main([str(hybrid_bundle), gold["code"], "-k", "2", "--mode", "lexical"]) == 0
    out = capsys.readouterr().out
    assert "lexical: BM25) in " in out.rstrip().splitlines()[-1]
    assert gold["code"].splitlines()[0] in out

    for mode in ("dense", "lexical", "hybrid"):
        assert main([str(hybrid_bundle), gold["code"], "-k", "3", "--mode", mode, "--json"]) == 0
        answer = json.loads(capsys.readouterr().out)
        assert answer["mode"] == mode and answer["results"][0]["id"] == 7
        assert answer["bundle"]["default_mode"] == "hybrid"
    with pytest.raises(SystemExit):
        main([str(hybrid_bundle), "x", "--mode", "semantic"])
    assert "invalid choice: 'semantic'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# mode in POST /search and GET /search


@pytest.fixture(scope="module")
def client(hybrid_bundle: Path):
    config = ServeConfig(threads=1)
    app = create_app(bundle_loader(str(hybrid_bundle), config), config)
    with TestClient(app) as client:
        for _ in range(600):
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.05)
        yield client


def test_post_and_get_search_take_a_mode(client: TestClient, corpus: list[dict]):
    gold = corpus[5]
    for mode in ("dense", "lexical", "hybrid"):
        answer = client.post("/search", json={"query": gold["code"], "k": 3, "mode": mode})
        assert answer.status_code == 200, answer.text
        assert answer.json()["mode"] == mode and answer.json()["results"][0]["id"] == 5
    default = client.post("/search", json={"query": gold["code"], "k": 3}).json()
    assert default["mode"] == "hybrid"  # the bundle's default_mode
    got = client.get(
        "/search", params={"q": gold["code"][:500], "k": 2, "mode": "lexical", "language": "python"}
    )
    assert got.status_code == 200 and got.json()["mode"] == "lexical"
    assert {r["language"] for r in got.json()["results"]} == {"python"}
    stats = client.get("/stats").json()
    assert stats["bundle"]["modes"] == ["dense", "lexical", "hybrid"]


def test_a_bad_mode_is_refused_naming_it(client: TestClient, old_bundle: Path):
    answer = client.post("/search", json={"query": "x", "mode": "semantic"})
    assert answer.status_code == 400
    detail = answer.json()["detail"][0]
    assert detail["loc"] == ["body", "mode"] and "'dense', 'lexical', 'hybrid'" in detail["msg"]
    answer = client.get("/search", params={"q": "x", "mode": "fuzzy"})
    assert answer.status_code == 400 and answer.json()["detail"][0]["loc"] == ["query", "mode"]
    assert client.post("/search", json={"query": "x", "mode": 3}).status_code == 422  # not a string


def test_one_batch_answers_each_request_in_its_own_mode(searcher: Searcher, corpus: list[dict]):
    batcher = MicroBatcher(searcher, max_batch=64, wait_ms=200.0, max_queue=100)
    modes = ["dense", "lexical", "hybrid"] * 3
    calls_before = searcher.encode_calls
    try:
        futures = [batcher.submit(corpus[i]["code"], 2, None, mode) for i, mode in enumerate(modes)]
        results = [future.result(timeout=30) for future in futures]
    finally:
        batcher.close()
    assert [hits[0].id for hits in results] == list(range(len(modes)))
    assert searcher.encode_calls - calls_before == 1  # one encoder run for the dense and hybrid requests
    lexical = [hits for hits, mode in zip(results, modes, strict=True) if mode == "lexical"]
    assert lexical[0] == searcher.search(corpus[1]["code"], 2, mode="lexical")
