"""What an operator of ``semcode serve`` watches: Prometheus metrics, the access log and the API docs page.

- ``Metrics``: one prometheus_client registry per app (tests build many apps in one process, so never the
  global one): requests by path and status, search latency per mode (a histogram), errors by type, and,
  read at scrape time from the service, the queue depth, the batcher's counts, readiness and the bundle's
  name and version. ``GET /metrics`` is its text exposition; ``GET /stats`` carries the same figures as
  JSON (``Metrics.summary``), read back from the same registry, so the two cannot disagree.
- ``Observe``: ASGI middleware, outermost, that counts every request (a 413 refused before the app, an
  unknown path) and writes the access log: one JSON object per request on the ``semcode.access`` logger,
  at the level the operator chooses (``--access-log-level``; ``off`` writes none). Queries are not logged
  (they can hold what people paste: secrets, names), only their path.
- ``add_local_docs``: FastAPI's /docs page loads Swagger UI from a CDN, blank offline or behind a firewall;
  here it loads the copy the swagger-ui-bundle-v2 package ships, served by semcode, and ReDoc (CDN only) is
  off.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

ACCESS_LOGGER = "semcode.access"
ACCESS_LEVELS = ("debug", "info", "warning", "off")
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The paths the app answers; anything else is counted as "other" (a scanner's random paths must not make
# one time series each).
PATHS = ("/", "/search", "/healthz", "/readyz", "/stats", "/metrics", "/docs", "/openapi.json")
DOCS_ASSETS = "/docs/assets"
ERROR_TYPES = {
    400: "invalid_input",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    422: "validation",
    500: "internal",
    503: "unavailable",
}


def path_label(path: str) -> str:
    if path in PATHS:
        return path
    return DOCS_ASSETS if path.startswith(DOCS_ASSETS + "/") else "other"


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, f"http_{status}")


class Metrics:
    """The app's prometheus_client registry. ``live`` returns what is read at scrape time: {"ready": bool,
    "queue_depth": int, "batcher": MicroBatcher.stats() or {}, "bundle": Searcher.describe() or None}."""

    def __init__(self, live: Callable[[], dict]) -> None:
        self.live = live
        disable_created_metrics()  # no *_created series: the process start time says as much
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "semcode_http_requests",
            "HTTP requests answered, by path and status",
            ["path", "status"],
            registry=self.registry,
        )
        self.errors = Counter(
            "semcode_http_errors",
            "HTTP answers of 400 and above, by type (invalid_input, validation, body_too_large, unavailable, ...)",
            ["type"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "semcode_search_latency_seconds",
            "time from queueing a search to its answer, by mode (searches answered 200)",
            ["mode"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.registry.register(self)  # collect() below: the figures read from the service

    def collect(self) -> Iterator[Any]:
        live = self.live()
        batcher = live.get("batcher") or {}
        yield GaugeMetricFamily(
            "semcode_ready", "1 once the bundle is loaded and serving", value=int(live["ready"])
        )
        yield GaugeMetricFamily(
            "semcode_queue_depth", "search requests waiting for the batcher", value=live["queue_depth"]
        )
        for name, about in (
            ("batches", "batches the batcher ran"),
            ("refused_queries", "queries the bundle's tokenizer refused (400, alone)"),
        ):
            yield CounterMetricFamily(f"semcode_{name}", about, value=batcher.get(name, 0))
        yield GaugeMetricFamily(
            "semcode_mean_batch_size", "mean requests per batch", value=batcher.get("mean_batch_size", 0.0)
        )
        bundle = live.get("bundle")
        if bundle:
            info = {key: str(bundle[key]) for key in ("name", "version", "encoder", "default_mode")}
            yield InfoMetricFamily("semcode_bundle", "the bundle being served", value=info)
            yield GaugeMetricFamily(
                "semcode_bundle_functions", "functions in the bundle's index", value=bundle["functions"]
            )

    def describe(self) -> list:
        return []  # collect() reads the service: nothing to check at registration

    def exposition(self) -> tuple[bytes, str]:
        """(the text format a Prometheus server scrapes, its content type)."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def summary(self) -> dict:
        """The counters and histograms as JSON for /stats: requests by status, errors by type, and per mode
        the searches, their mean latency and p50/p95/p99 estimated from the histogram's buckets (as
        Prometheus's histogram_quantile does: linear within a bucket)."""
        by_status: dict[str, float] = {}
        for sample in _samples(self.requests, "_total"):
            status = sample.labels["status"]
            by_status[status] = by_status.get(status, 0) + sample.value
        errors = {sample.labels["type"]: int(sample.value) for sample in _samples(self.errors, "_total")}
        modes: dict[str, dict] = {}
        buckets: dict[str, list[tuple[float, float]]] = {}
        for sample in _samples(self.latency, ""):
            mode = sample.labels["mode"]
            if sample.name.endswith("_bucket"):
                buckets.setdefault(mode, []).append((float(sample.labels["le"]), sample.value))
            elif sample.name.endswith("_count"):
                modes.setdefault(mode, {})["count"] = int(sample.value)
            elif sample.name.endswith("_sum"):
                modes.setdefault(mode, {})["sum_s"] = sample.value
        latency = {}
        for mode, figures in sorted(modes.items()):
            count = figures.get("count", 0)
            latency[mode] = {
                "count": count,
                "mean_ms": round(figures.get("sum_s", 0.0) / count * 1000, 3) if count else None,
                **{f"p{q}_ms": _quantile(q / 100, sorted(buckets.get(mode, []))) for q in (50, 95, 99)},
            }
        return {
            "requests_by_status": {status: int(n) for status, n in sorted(by_status.items())},
            "errors_by_type": dict(sorted(errors.items())),
            "search_latency": latency,
        }


def _samples(metric: Counter | Histogram, suffix: str) -> Iterator[Any]:
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith(suffix):
                yield sample


def _quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The ``q`` quantile in ms from cumulative (upper bound s, count) buckets; None without observations."""
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):  # beyond the last finite bucket: its bound is the best estimate
                return round(lower * 1000, 3)
            share = (rank - below) / (count - below) if count > below else 1.0
            return round((lower + (upper - lower) * share) * 1000, 3)
        lower, below = upper, count
    return round(lower * 1000, 3)


class Observe:
    """ASGI middleware: times and counts each HTTP request and writes its access-log line (after the answer
    is sent): ``{"ts", "method", "path", "status", "ms", "bytes", "client"}`` and ``"error"`` (its type)
    from 400 on (but for /readyz, whose 503 says "not ready yet", not that something failed). ``level`` is a name of ACCESS_LEVELS."""

    def __init__(self, app: Callable, metrics: Metrics, level: str) -> None:
        self.app = app
        self.metrics = metrics
        self.level = None if level == "off" else logging.getLevelNamesMapping()[level.upper()]
        self.logger = logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        answer = {"status": 500, "bytes": 0}

        async def observed_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
            elif message["type"] == "http.response.body":
                answer["bytes"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            self.record(scope, answer["status"], answer["bytes"], time.perf_counter() - started)

    def record(self, scope: dict, status: int, size: int, seconds: float) -> None:
        path = path_label(scope["path"])
        self.metrics.requests.labels(path=path, status=str(status)).inc()
        line: dict[str, Any] = {
            "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "method": scope["method"],
            "path": scope["path"] if path != "other" else scope["path"][:200],
            "status": status,
            "ms": round(seconds * 1000, 3),
            "bytes": size,
            "client": (scope.get("client") or ("", 0))[0],
        }
        if status >= 400 and path != "/readyz":  # /readyz's 503 while loading is its answer, not an error
            line["error"] = error_type(status)
            self.metrics.errors.labels(type=line["error"]).inc()
        if self.level is not None and self.logger.isEnabledFor(self.level):
            self.logger.log(self.level, json.dumps(line, ensure_ascii=True))


def add_metrics(app: FastAPI, metrics: Metrics) -> None:
    """GET /metrics: the registry in Prometheus's text format."""

    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)


def configure_access_log(threshold: str) -> None:
    """Access lines to stderr, as they are (one JSON object each), when at or above ``threshold`` (the
    server's --log-level)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.handlers = [handler]
    logger.setLevel(threshold.upper())
    logger.propagate = False


def add_local_docs(app: FastAPI) -> None:
    """/docs: Swagger UI from the swagger-ui-bundle-v2 package's files under /docs/assets (create the app
    with ``docs_url=None, redoc_url=None``). No URL on the page leaves the server; the validator badge (which
    would call out) is off."""
    import swagger_ui_bundle

    app.mount(DOCS_ASSETS, StaticFiles(directory=str(swagger_ui_bundle.swagger_ui_path)), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title}: API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},
        )
