"""semcode serve: the HTTP API on the tiny real bundle, through FastAPI's TestClient and one real uvicorn.

Queries are functions' own code (the tiny encoder is untrained; see tests/serve/test_search.py), so each
request has one known right answer: its function, ranked first.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from bundle_fixture import TinyRun, assemble_tiny_bundle, cached_tiny_run, own_document
from fastapi import FastAPI
from fastapi.testclient import TestClient

from semcode.serve.app import MicroBatcher, ServeConfig, bundle_loader, create_app, main
from semcode.serve.searcher import Searcher

READY_TIMEOUT_S = 60.0


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    return cached_tiny_run(tmp_path_factory)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run: TinyRun, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return assemble_tiny_bundle(tiny_run, tmp_path_factory.mktemp("serve_bundle") / "bundle")


@pytest.fixture(scope="session")
def corpus(tiny_bundle: Path) -> list[dict]:
    return pq.read_table(tiny_bundle / "index_meta.parquet").to_pylist()


def query_for(row: dict) -> str:
    """A function's search document as a query, within the default 1000-character limit (the encoder reads
    only its first max_length = 64 tokens anyway)."""
    return own_document(row)[:1000]


def wait_ready(client: TestClient | httpx.Client, timeout: float = READY_TIMEOUT_S) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            answer = client.get("/readyz")
        except httpx.TransportError:  # the real server is not listening yet
            answer = None
        if answer is not None and answer.status_code == 200:
            return answer.json()
        if answer is not None and answer.json().get("status") == "failed":
            raise AssertionError(f"the bundle failed to load: {answer.json()}")
        time.sleep(0.05)
    raise AssertionError(f"not ready within {timeout}s")


@contextmanager
def serve(tiny_bundle: Path, **settings) -> Iterator[tuple[TestClient, FastAPI]]:
    config = ServeConfig(threads=1, **settings)
    app = create_app(bundle_loader(str(tiny_bundle), config), config)
    with TestClient(app) as client:
        wait_ready(client)
        yield client, app


@pytest.fixture(scope="module")
def client(tiny_bundle: Path) -> Iterator[TestClient]:
    with serve(tiny_bundle) as (client, _):
        yield client


# ---------------------------------------------------------------------------------------------
# Health, readiness, answers


def test_liveness_answers_while_loading_and_readiness_waits_for_the_bundle(tiny_bundle: Path):
    release = threading.Event()
    loader = bundle_loader(str(tiny_bundle), ServeConfig(threads=1))

    def slow_load() -> Searcher:
        release.wait(READY_TIMEOUT_S)
        return loader()

    with TestClient(create_app(slow_load, ServeConfig(threads=1))) as client:
        assert client.get("/healthz").status_code == 200
        not_ready = client.get("/readyz")
        assert not_ready.status_code == 503 and not_ready.json()["status"] == "loading"
        early = client.post("/search", json={"query": "read a file"})
        assert early.status_code == 503 and "not ready" in early.json()["detail"][0]["msg"]
        assert early.json()["detail"][0]["loc"] == ["service"] and early.headers["retry-after"] == "1"
        release.set()
        ready = wait_ready(client)
        assert ready["bundle"]["name"] == "semcode" and ready["bundle"]["encoder"] == "encoder.int8.onnx"
        assert client.get("/stats").json()["encode_calls"] == 1  # the warm-up query ran before ready


def test_a_bundle_that_fails_to_load_is_never_ready(tmp_path: Path):
    failures = []
    app = create_app(
        bundle_loader(str(tmp_path / "missing"), ServeConfig()), on_failure=lambda: failures.append(1)
    )
    with TestClient(app) as client:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while client.get("/readyz").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.02)
        answer = client.get("/readyz")
        assert answer.status_code == 503
        assert answer.json()["status"] == "failed" and "bundle directory not found" in answer.json()["error"]
        assert client.get("/healthz").status_code == 200
        assert client.post("/search", json={"query": "q"}).status_code == 503
    assert failures == [1]


def test_a_tampered_local_bundle_is_never_ready(tiny_bundle: Path, tmp_path: Path):
    copy = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, copy)
    with (copy / "tokenizer.json").open("a") as tokenizer:
        tokenizer.write(" ")  # a changed tokenizer would answer every query wrongly, without an error
    app = create_app(bundle_loader(str(copy), ServeConfig(threads=1)))
    with TestClient(app) as client:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while client.get("/readyz").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.02)
        answer = client.get("/readyz")
        assert answer.status_code == 503 and answer.json()["status"] == "failed"
        assert "integrity check" in answer.json()["error"] and "tokenizer.json" in answer.json()["error"]


def test_post_and_get_search(client: TestClient, corpus: list[dict]):
    gold = corpus[20]
    answer = client.post("/search", json={"query": query_for(gold), "k": 3})
    assert answer.status_code == 200
    body = answer.json()
    assert body["k"] == 3 and body["took_ms"] > 0
    results = body["results"]
    assert [r["rank"] for r in results] == [1, 2, 3]
    assert set(results[0]) >= {
        "rank",
        "score",
        "language",
        "repo",
        "path",
        "start_line",
        "location",
        "func_name",
        "url",
        "code",
        "signature",
        "doc",
    }
    top = results[0]
    assert (top["signature"], top["doc"]) == (gold["signature"], gold["doc"])
    assert top["signature"].startswith("def ")
    assert (top["language"], top["repo"], top["path"], top["start_line"], top["func_name"], top["url"]) == (
        gold["language"],
        gold["repo"],
        gold["path"],
        gold["start_line"],
        gold["func_name"],
        gold["url"],
    )
    assert body["language"] is None
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)

    by_get = client.get("/search", params={"q": query_for(gold), "k": "3"})
    assert by_get.status_code == 200
    assert [r["id"] for r in by_get.json()["results"]] == [r["id"] for r in results]
    assert len(client.post("/search", json={"query": "parse a date"}).json()["results"]) == 10  # default_k


@pytest.mark.parametrize(
    ("request_kwargs", "status", "field", "message"),
    [
        ({"json": {"query": ""}}, 400, "query", "query is empty"),
        ({"json": {"query": "   "}}, 400, "query", "query is empty"),
        ({"json": {"query": "x" * 1001}}, 400, "query", "at most 1000"),
        ({"json": {"query": "a", "k": 0}}, 400, "k", "between 1 and 100, got 0"),
        ({"json": {"query": "a", "k": 1000}}, 400, "k", "between 1 and 100, got 1000"),
        ({"json": {"query": "a", "k": "5"}}, 422, "k", "valid integer"),
        ({"json": {"query": "a", "k": 2.5}}, 422, "k", "valid integer"),
        ({"json": {"query": 42}}, 422, "query", "valid string"),
        ({"json": {"k": 3}}, 422, "query", "Field required"),
        ({"json": {"query": "a", "top_k": 3}}, 422, "top_k", "Extra inputs"),
        ({"json": ["read a file"]}, 422, None, "valid dictionary"),
        ({"params": {"q": ""}}, 400, "q", "q is empty"),
        ({"params": {"q": "a", "k": "101"}}, 400, "k", "between 1 and 100"),
        ({"params": {"q": "a", "k": "five"}}, 422, "k", "valid integer"),
        ({"params": {"k": "3"}}, 422, "q", "Field required"),
    ],
)
def test_bad_input_is_refused_with_the_field_named(
    client: TestClient, request_kwargs: dict, status: int, field: str | None, message: str
):
    method = client.get if "params" in request_kwargs else client.post
    answer = method("/search", **request_kwargs)
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    if field is not None:
        assert detail[0]["loc"][-1] == field
    assert message in detail[0]["msg"]


def test_a_huge_body_is_refused_unread_and_errors_never_echo_the_input(client: TestClient):
    huge = '{"query": "' + "x" * (20 << 20) + '"}'  # 20 MB
    answer = client.post("/search", content=huge, headers={"content-type": "application/json"})
    assert answer.status_code == 413
    assert answer.json() == {
        "detail": [
            {
                "loc": ["body"],
                "msg": "the request body is 20,971,533 bytes or more; at most 65,536 are accepted",
                "type": "value_error",
            }
        ]
    }
    # A chunked body declares no length: it is cut off once the chunks pass the limit.
    chunks = (b"x" * 8192 for _ in range(100))
    chunked = client.post("/search", content=chunks, headers={"content-type": "application/json"})
    assert chunked.status_code == 413 and "at most 65,536" in chunked.text
    # A 422 says where and what, and no longer sends the client's value back.
    typo = client.post("/search", json={"query": "a", "top_k": "y" * 10_000})
    assert typo.status_code == 422 and len(typo.content) < 500
    assert set(typo.json()["detail"][0]) == {"loc", "msg", "type"}


def ids_of(corpus: list[dict], *languages: str) -> list[int]:
    return [i for i, row in enumerate(corpus) if row["language"] in languages]


def test_search_by_language(client: TestClient, corpus: list[dict]):
    go = ids_of(corpus, "go")
    gold = corpus[go[0]]
    body = client.post("/search", json={"query": query_for(gold), "k": 5, "language": "go"}).json()
    assert body["language"] == ["go"] and len(body["results"]) == 3  # the bundle has 3 Go functions
    top = body["results"][0]
    assert (top["language"], top["path"], top["start_line"], top["func_name"], top["url"]) == (
        "go",
        gold["path"],
        gold["start_line"],
        gold["func_name"],
        gold["url"],
    )
    assert top["location"] == f"{gold['path']}:{gold['start_line']}"  # relative to its source root
    assert {r["language"] for r in body["results"]} == {"go"}

    rust = corpus[ids_of(corpus, "rust")[0]]
    for language in (["rust", "java"], "rust,java"):
        body = client.post("/search", json={"query": query_for(rust), "k": 3, "language": language}).json()
        assert body["language"] == ["rust", "java"] and body["results"][0]["func_name"] == rust["func_name"]
        assert {r["language"] for r in body["results"]} <= {"rust", "java"}
    by_get = client.get(
        "/search", params=[("q", query_for(rust)), ("k", "3"), ("language", "rust"), ("language", "java")]
    )
    assert [r["id"] for r in by_get.json()["results"]] == [r["id"] for r in body["results"]]
    python = client.post("/search", json={"query": query_for(gold), "k": 4, "language": "python"}).json()
    assert len(python["results"]) == 4 and {r["language"] for r in python["results"]} == {"python"}

    stats = client.get("/stats").json()
    assert stats["bundle"]["languages"] == {"python": len(corpus) - 6, "go": 3, "rust": 2, "java": 1}
    coverage = stats["coverage"]  # the tiny bundle indexes its whole corpus: stdlib files and three dirs
    assert (coverage["indexed"], coverage["sampled_by"]) == (len(corpus), "all")
    assert coverage["per_source"]["dir:<local>/demo-go"] == [3, 3]
    assert coverage["per_source"]["python:stdlib"][0] == len(corpus) - 6


@pytest.mark.parametrize(
    ("language", "status", "message"),
    [
        ("cobol", 400, "unknown language 'cobol'; this bundle has: python ("),
        (["go", "ruby"], 400, "this bundle has no ruby functions; it has: python ("),
        ("", 400, "language is empty"),
        ([], 400, "language is empty"),
        (42, 422, "valid string"),
        (["go", 7], 422, "valid string"),
    ],
)
def test_a_bad_language_is_refused_naming_it(client: TestClient, language: object, status: int, message: str):
    answer = client.post("/search", json={"query": "read a file", "language": language})
    assert answer.status_code == status, answer.text
    detail = answer.json()["detail"]
    assert detail[0]["loc"][:2] == ["body", "language"]
    assert any(message in d["msg"] for d in detail), detail
    if status == 400:
        assert "go (3), rust (2), java (1)" in detail[0]["msg"]
    get = client.get("/search", params={"q": "read a file", "language": "klingon"})
    assert get.status_code == 400 and get.json()["detail"][0]["loc"] == ["query", "language"]


def test_limits_are_configurable(tiny_bundle: Path):
    with serve(tiny_bundle, max_query_chars=10, max_k=3, default_k=2) as (client, _):
        assert client.post("/search", json={"query": "x" * 11}).status_code == 400
        assert (
            client.post("/search", json={"query": "x" * 10, "k": 4})
            .json()["detail"][0]["msg"]
            .endswith("got 4")
        )
        assert len(client.post("/search", json={"query": "x" * 10}).json()["results"]) == 2


# ---------------------------------------------------------------------------------------------
# Micro-batching


def test_concurrent_requests_share_encoder_calls_and_get_their_own_results(
    tiny_bundle: Path, corpus: list[dict]
):
    n = 16
    golds = list(range(30, 30 + n))
    ks = [1 + i % 5 for i in range(n)]
    with serve(tiny_bundle, batch_wait_ms=50.0) as (client, app):
        searcher = app.state.service.searcher
        calls_before, stats_before = searcher.encode_calls, client.get("/stats").json()

        def ask(i: int) -> dict:
            return client.post("/search", json={"query": query_for(corpus[golds[i]]), "k": ks[i]}).json()

        with ThreadPoolExecutor(n) as pool:
            answers = list(pool.map(ask, range(n)))
        encoder_calls = searcher.encode_calls - calls_before
        stats = client.get("/stats").json()

    for i, answer in enumerate(answers):
        assert "results" in answer, answer
        assert len(answer["results"]) == ks[i]
        assert answer["results"][0]["func_name"] == corpus[golds[i]]["func_name"], i
    assert 1 <= encoder_calls < n
    assert stats["requests"] - stats_before["requests"] == n
    assert stats["batches"] - stats_before["batches"] == encoder_calls
    assert stats["max_batch_size"] > 1


def test_batcher_answers_each_request_from_one_batch(tiny_bundle: Path, corpus: list[dict]):
    searcher = Searcher(tiny_bundle, threads=1)
    batcher = MicroBatcher(searcher, max_batch=64, wait_ms=200.0, max_queue=100)
    try:
        futures = [batcher.submit(query_for(corpus[i]), k=2) for i in range(20)]
        results = [future.result(timeout=30) for future in futures]
    finally:
        batcher.close()
    assert [hits[0].id for hits in results] == list(range(20))
    assert all(len(hits) == 2 for hits in results)
    assert searcher.encode_calls == batcher.batches == 1 and batcher.stats()["mean_batch_size"] == 20


def test_one_batch_answers_each_request_in_its_own_languages(tiny_bundle: Path, corpus: list[dict]):
    searcher = Searcher(tiny_bundle, threads=1)
    batcher = MicroBatcher(searcher, max_batch=64, wait_ms=200.0, max_queue=100)
    golds = [*ids_of(corpus, "go", "rust", "java"), 0, 1, 2]
    languages = [(corpus[i]["language"],) for i in golds[:6]] + [None, ("python",), ("go", "python")]
    try:
        futures = [
            batcher.submit(query_for(corpus[i]), 3, lang) for i, lang in zip(golds, languages, strict=True)
        ]
        results = [future.result(timeout=30) for future in futures]
    finally:
        batcher.close()
    assert searcher.encode_calls == batcher.batches == 1  # one encoder run; a FAISS search per filter
    for gold, language, hits in zip(golds, languages, results, strict=True):
        assert hits[0].id == gold
        assert language is None or {h.language for h in hits} <= set(language)


# ---------------------------------------------------------------------------------------------
# A real server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_real_uvicorn_server_answers_and_stops_on_sigterm(tiny_bundle: Path, corpus: list[dict]):
    port = free_port()
    script = (
        "import sys\nfrom semcode.serve.app import main\n"
        f"sys.exit(main([{str(tiny_bundle)!r}, '--port', '{port}', '--threads', '1', '--log-level', 'warning']))\n"
        "\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            assert wait_ready(http)["bundle"]["version"] == "v1"
            assert http.get("/healthz").json()["status"] == "alive"
            answer = http.post("/search", json={"query": query_for(corpus[40]), "k": 2})
            assert answer.status_code == 200
            assert answer.json()["results"][0]["func_name"] == corpus[40]["func_name"]
            assert (
                http.post(
                    "/search", content=b"{not json", headers={"content-type": "application/json"}
                ).status_code
                == 422
            )
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal it caught: the usual "killed by SIGTERM" status.
    assert process.returncode in (0, -signal.SIGTERM), output
    assert "Traceback" not in output, output
    assert "ready: semcode v1" in output


def test_serve_exits_with_an_error_when_the_bundle_cannot_load(tmp_path: Path, capsys):
    code = main([str(tmp_path / "missing"), "--port", str(free_port()), "--log-level", "warning"])
    assert code == 1
    assert "bundle directory not found" in capsys.readouterr().err


def test_serve_config_is_checked(capsys):
    assert main(["bundle", "--max-k", "0"]) == 2
    assert "max_k must be >= 1" in capsys.readouterr().err
    assert main(["bundle", "--precision", "int4"]) == 2
