"""semcode serve's search page, /metrics, /stats' figures, the access log and the local API docs, on the
tiny real bundle through FastAPI's TestClient (the page in a real browser: test_page_browser.py).

Queries are functions' own code (the tiny encoder is untrained), so each has one known right answer.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from bundle_fixture import TinyRun, assemble_tiny_bundle, cached_tiny_run, own_document
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from semcode.config import ConfigError
from semcode.serve import ops, page
from semcode.serve.app import ServeConfig, bundle_loader, create_app

LINK_BASE = "https://code.example/{repo}/blob/{commit}/{path}#L{line}"
EXTERNAL = re.compile(r"""(?:src|href|url)\s*[=(]\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run: TinyRun = cached_tiny_run(tmp_path_factory)
    return assemble_tiny_bundle(run, tmp_path_factory.mktemp("page_bundle") / "bundle")


@pytest.fixture(scope="session")
def corpus(tiny_bundle: Path) -> list[dict]:
    return pq.read_table(tiny_bundle / "index_meta.parquet").to_pylist()


@contextmanager
def ready_client(tiny_bundle: Path, **settings) -> Iterator[TestClient]:
    config = ServeConfig(threads=1, **settings)
    with TestClient(create_app(bundle_loader(str(tiny_bundle), config), config)) as client:
        for _ in range(1200):
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("not ready within 60 s")
        yield client


@pytest.fixture(scope="module")
def client(tiny_bundle: Path) -> Iterator[TestClient]:
    with ready_client(tiny_bundle, link_base=LINK_BASE) as client:
        yield client


def hits_of(text: str) -> list[dict]:
    """(location, language) of each result on a page, in order."""
    pattern = re.compile(
        r'<li class="hit".*?class="location"[^>]*>([^<]*)</(?:a|span)>.*?class="language">([^<]*)<', re.S
    )
    return [{"location": m[0], "language": m[1]} for m in pattern.findall(text)]


# ---------------------------------------------------------------------------------------------
# The page


def test_the_empty_page_has_the_form_and_nothing_from_elsewhere(client: TestClient, corpus: list[dict]):
    answer = client.get("/")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    text = answer.text
    assert '<input id="q" name="q" type="search" autofocus' in text
    assert '<option value="dense">' in text or '<option value="dense" selected>' in text
    go = sum(row["language"] == "go" for row in corpus)  # the tiny bundle holds a few polyglot functions
    assert f'<option value="go">go ({go})</option>' in text
    assert "semcode v1" in text and "<li" not in text
    assert not EXTERNAL.search(text), EXTERNAL.search(text)
    policy = answer.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    nonce = re.search(r"'nonce-([^']+)'", policy)[1]
    assert text.count(f'nonce="{nonce}"') == 2  # the one style and the one script, nothing else runs


def test_the_page_shows_highlighted_results_with_links(client: TestClient, corpus: list[dict]):
    gold = corpus[20]
    answer = client.get("/", params={"q": own_document(gold)[:1000]})
    assert answer.status_code == 200
    text = answer.text
    hits = hits_of(text)
    assert len(hits) == 10 and hits[0]["location"] == f"{gold['path']}:{gold['start_line']}"
    first = text[text.index('<li class="hit"') : text.index("</li>")]
    assert (
        f'href="https://code.example/{gold["repo"]}/blob/HEAD/{gold["path"]}#L{gold["start_line"]}"' in first
    )
    assert '<span class="k">def</span>' in first  # Pygments' classes: keywords highlighted
    assert '<p class="doc">' in first or not gold["doc"]
    assert 'class="signature hl"' in first
    assert not EXTERNAL.search(text.replace('href="https://code.example/', 'href="/'))


def test_the_language_filter_and_a_refusal_on_the_page(client: TestClient, corpus: list[dict]):
    filtered = client.get("/", params={"q": "read a file line by line", "language": "go", "mode": "dense"})
    assert filtered.status_code == 200
    go = sum(row["language"] == "go" for row in corpus)
    assert [hit["language"] for hit in hits_of(filtered.text)] == ["go"] * go
    assert '<option value="go" selected>' in filtered.text
    assert '<option value="dense" selected>' in filtered.text
    refused = client.get("/", params={"q": "read a file", "language": "cobol"})
    assert refused.status_code == 400
    assert 'role="alert"' in refused.text and "cobol" in refused.text and "<li" not in refused.text


def test_a_result_escapes_what_the_bundle_holds_and_links_only_http():
    hit = {
        "rank": 1,
        "score": 0.5,
        "language": "python",
        "path": "<img src=x onerror=alert(1)>.py",
        "location": "<img src=x onerror=alert(1)>.py:3",
        "signature": "def f(x='</p><script>')",
        "doc": "<script>alert(1)</script>",
        "code": "def f():\n    return '<b>'\n",
        "link": "javascript:alert(1)",
    }
    text = page.result(hit)
    assert "<script>" not in text and "<img" not in text and "<b>" not in text
    assert "javascript:" not in text and "<a " not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    more = page.result({**hit, "code": "\n".join(f"x = {i}" for i in range(30)), "link": "http://h/a"})
    assert '<a class="location" href="http://h/a">' in more and "... 10 more lines" in more


def test_the_search_api_gives_links_with_link_base(client: TestClient, corpus: list[dict]):
    gold = corpus[20]
    top = client.get("/search", params={"q": own_document(gold)[:1000], "k": 1}).json()["results"][0]
    assert (
        top["link"] == f"https://code.example/{gold['repo']}/blob/HEAD/{gold['path']}#L{gold['start_line']}"
    )


# ---------------------------------------------------------------------------------------------
# /metrics, /stats, the access log


def families(client: TestClient) -> dict:
    answer = client.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(answer.text)}


def value(family, **labels) -> float:
    found = [s.value for s in family.samples if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (labels, family.samples)
    return found[0]


def test_metrics_parse_and_count_requests_errors_and_latency_per_mode(tiny_bundle: Path, corpus: list[dict]):
    with ready_client(tiny_bundle) as client:
        query = own_document(corpus[3])[:1000]
        for mode in ("dense", "dense", "lexical"):
            assert client.get("/search", params={"q": query, "mode": mode}).status_code == 200
        assert client.post("/search", json={"query": ""}).status_code == 400
        assert client.post("/search", json={"query": "a", "top_k": 3}).status_code == 422
        assert client.get("/no-such-path").status_code == 404
        found = families(client)
        requests = found["semcode_http_requests"]
        assert requests.type == "counter"
        assert value(requests, path="/search", status="200") == 3
        assert value(requests, path="/search", status="400") == 1
        assert value(requests, path="other", status="404") == 1
        errors = found["semcode_http_errors"]
        assert {s.labels["type"]: s.value for s in errors.samples if s.name.endswith("_total")} == {
            "invalid_input": 1,
            "validation": 1,
            "not_found": 1,
        }
        latency = found["semcode_search_latency_seconds"]
        assert latency.type == "histogram"
        counts = {s.labels["mode"]: s.value for s in latency.samples if s.name.endswith("_count")}
        assert counts == {"dense": 2, "lexical": 1}
        assert value(found["semcode_queue_depth"]) == 0
        assert value(found["semcode_ready"]) == 1
        bundle = found["semcode_bundle_info"]
        assert value(bundle) == 1 and bundle.samples[0].labels["version"] == "v1"
        assert bundle.samples[0].labels["name"] == "semcode"
        assert value(found["semcode_batches"]) >= 3  # the warm-up ran outside the batcher

        stats = client.get("/stats").json()["http"]
        assert stats["requests_by_status"]["200"] >= 3 and stats["requests_by_status"]["404"] == 1
        assert stats["errors_by_type"] == {"invalid_input": 1, "not_found": 1, "validation": 1}
        dense = stats["search_latency"]["dense"]
        assert dense["count"] == 2 and 0 < dense["mean_ms"] and 0 < dense["p50_ms"] <= dense["p99_ms"]
        assert stats["search_latency"]["lexical"]["count"] == 1


def test_the_quantiles_follow_the_buckets():
    buckets = [(0.01, 0.0), (0.1, 10.0), (1.0, 20.0), (float("inf"), 20.0)]
    assert ops._quantile(0.5, buckets) == 100.0  # the 10th of 20 observations: the top of (0.01, 0.1]
    assert ops._quantile(0.75, buckets) == 550.0  # halfway into (0.1, 1]
    assert ops._quantile(0.5, [(0.1, 0.0), (float("inf"), 0.0)]) is None


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == ops.ACCESS_LOGGER]


def test_the_access_log_is_one_json_line_per_request_at_the_chosen_level(
    tiny_bundle: Path, caplog: pytest.LogCaptureFixture
):
    for level, threshold, expected in (("info", "INFO", 3), ("debug", "INFO", 0), ("off", "DEBUG", 0)):
        caplog.clear()
        with caplog.at_level(threshold, logger=ops.ACCESS_LOGGER):
            with ready_client(tiny_bundle, access_log_level=level) as client:
                caplog.clear()  # the readiness polls
                client.get("/search", params={"q": "secret token in a query"})
                client.post("/search", json={"query": "x" * 2000})
                client.get("/healthz")
        lines = access_lines(caplog)
        assert len(lines) == expected, (level, lines)
        if expected:
            assert [(line["method"], line["path"], line["status"]) for line in lines] == [
                ("GET", "/search", 200),
                ("POST", "/search", 400),
                ("GET", "/healthz", 200),
            ]
            assert set(lines[0]) == {"ts", "method", "path", "status", "ms", "bytes", "client"}
            assert lines[1]["error"] == "invalid_input" and lines[0]["bytes"] > 0 and lines[0]["ms"] > 0
            assert all(r.levelno == logging.INFO for r in caplog.records if r.name == ops.ACCESS_LOGGER)
            assert "secret" not in caplog.text  # the query is not logged


def test_serve_settings_are_checked():
    with pytest.raises(ConfigError, match="access_log_level must be one of debug, info, warning, off"):
        ServeConfig(access_log_level="loud").validate()
    with pytest.raises(ConfigError, match="fields: path, line"):
        ServeConfig(link_base="https://h/{file}").validate()


# ---------------------------------------------------------------------------------------------
# The API docs


def test_the_api_docs_page_loads_only_local_assets(client: TestClient):
    answer = client.get("/docs")
    assert answer.status_code == 200
    assert not re.search(r"https?://", answer.text), re.findall(r"https?://\S+", answer.text)
    assets = re.findall(r'(?:href|src)="([^"]+)"', answer.text)
    assert len(assets) == 3  # the style sheet, the icon, the script
    for asset in assets:
        assert asset.startswith(ops.DOCS_ASSETS + "/")
        assert client.get(asset).status_code == 200
    assert "url: '/openapi.json'" in answer.text and '"validatorUrl": null' in answer.text
    assert client.get("/redoc").status_code == 404  # ReDoc loads from a CDN only: off
    assert "/search" in client.get("/openapi.json").json()["paths"]
