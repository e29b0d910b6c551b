"""semcode search's --path / --repo globs, --min-score and the -k bound (semcode.serve.filters), on the tiny
real bundle (tests/bundle_fixture.py): Python functions of the standard library plus a few Go, Rust and
Java ones from dir: sources."""

from __future__ import annotations

import fnmatch
import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from bundle_fixture import TinyRun, assemble_tiny_bundle, cached_tiny_run

from semcode.serve.filters import Filters, filtered_search
from semcode.serve.search import main
from semcode.serve.searcher import Searcher


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    return cached_tiny_run(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run: TinyRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return assemble_tiny_bundle(tiny_run, tmp_path_factory.mktemp("filter_bundle") / "bundle")


@pytest.fixture(scope="session")
def corpus(tiny_bundle: Path) -> list[dict]:
    return pq.read_table(tiny_bundle / "index_meta.parquet").to_pylist()


def search_json(argv: list[str], capsys: pytest.CaptureFixture) -> dict:
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_path_glob_fills_k_with_matching_functions_only(tiny_bundle: Path, corpus: list[dict], capsys):
    """A rare path: the few functions under it are found even when the query ranks them last."""
    rare = corpus[-1]["path"]
    pattern = rare.rsplit("/", 1)[0] + "/*" if "/" in rare else rare
    matching = [row for row in corpus if fnmatch.fnmatchcase(row["path"], pattern)]
    assert 0 < len(matching) < len(corpus) / 4
    answer = search_json(
        [str(tiny_bundle), "read a file line by line", "-k", "50", "--path", pattern], capsys
    )
    paths = [hit["path"] for hit in answer["results"]]
    assert len(paths) == min(50, len(matching)) and all(fnmatch.fnmatchcase(p, pattern) for p in paths)
    assert [hit["rank"] for hit in answer["results"]] == list(range(1, len(paths) + 1))
    assert answer["path"] == [pattern]


def test_repo_globs_are_alternatives_and_an_unmatched_glob_gives_no_hits(
    tiny_bundle: Path, corpus: list[dict], capsys
):
    repos = sorted({row["repo"] for row in corpus if row["repo"]})
    assert len(repos) >= 2
    first, second = repos[0], repos[-1]
    answer = search_json([str(tiny_bundle), "parse", "-k", "5", "--repo", first, "--repo", second], capsys)
    assert answer["results"] and {hit["repo"] for hit in answer["results"]} <= {first, second}
    answer = search_json([str(tiny_bundle), "parse", "-k", "5", "--repo", "no-such-repo-*"], capsys)
    assert answer["results"] == []


def test_min_score_cuts_the_list_at_the_score(tiny_bundle: Path, corpus: list[dict], capsys):
    everything = search_json([str(tiny_bundle), corpus[3]["code"], "-k", "10"], capsys)["results"]
    threshold = everything[4]["score"]
    kept = search_json(
        [str(tiny_bundle), corpus[3]["code"], "-k", "10", "--min-score", str(threshold)], capsys
    )["results"]
    assert [hit["id"] for hit in kept] == [hit["id"] for hit in everything if hit["score"] >= threshold]
    assert len(kept) < len(everything) and all(hit["score"] >= threshold for hit in kept)


def test_filters_without_globs_are_one_search(tiny_bundle: Path):
    searcher = Searcher(tiny_bundle, threads=1)
    calls = []
    search_encoded = searcher.search_encoded
    searcher.search_encoded = lambda *a: calls.append(a[2]) or search_encoded(*a)  # type: ignore[method-assign]
    vectors = searcher.encode(["sort a list"])
    filtered_search(searcher, ["sort a list"], vectors, 3, None, "dense", Filters(min_score=-1.0))
    assert calls == [3]


def test_k_above_the_index_size_is_a_clear_error(tiny_bundle: Path, corpus: list[dict], capsys):
    assert main([str(tiny_bundle), "parse a date", "-k", "100000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"semcode search: error: -k 100,000 is more than the {len(corpus):,} functions in the index; "
        "ask for at most that"
    )
    assert main([str(tiny_bundle), "parse a date", "-k", str(len(corpus)), "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["results"]) == len(corpus)


def test_serve_takes_the_same_filters_in_post_and_get(tiny_bundle: Path, corpus: list[dict]):
    from fastapi.testclient import TestClient

    from semcode.serve.app import ServeConfig, bundle_loader, create_app

    rare = corpus[-1]["path"]
    pattern = rare.rsplit("/", 1)[0] + "/*" if "/" in rare else rare
    matching = sum(fnmatch.fnmatchcase(row["path"], pattern) for row in corpus)
    config = ServeConfig(threads=1)
    with TestClient(create_app(bundle_loader(str(tiny_bundle), config), config)) as client:
        for _ in range(600):  # the bundle loads in the background
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.1)
        body = {"query": "read a file line by line", "k": 20, "path": pattern, "min_score": -1.0}
        posted = client.post("/search", json=body).json()
        assert posted["path"] == [pattern] and posted["min_score"] == -1.0
        assert len(posted["results"]) == min(20, matching)
        assert all(fnmatch.fnmatchcase(hit["path"], pattern) for hit in posted["results"])
        got = client.get("/search", params={"q": "read a file line by line", "k": 20, "path": pattern}).json()
        assert [hit["id"] for hit in got["results"]] == [hit["id"] for hit in posted["results"]]
        top = client.get("/search", params={"q": "sort", "k": 5}).json()["results"]
        cut = client.get("/search", params={"q": "sort", "k": 5, "min_score": top[2]["score"]}).json()
        assert [hit["id"] for hit in cut["results"]] == [
            hit["id"] for hit in top if hit["score"] >= top[2]["score"]
        ]
        refused = client.post("/search", json={"query": "sort", "min_score": "high"})
        assert refused.status_code == 422
