"""``semcode serve``: a release bundle behind an HTTP JSON API (FastAPI + uvicorn).

Endpoints::

    POST /search   {"query": "read a file line by line", "k": 5, "language": "go", "mode": "hybrid"}
                   (language optional: a name, "go,rust", or a list; only those languages' functions are
                   ranked; mode optional: dense, lexical or hybrid, default the bundle's default_mode;
                   "path", "repo" optional shell patterns (a string or a list) and "min_score" filter the
                   hits, as semcode search's --path, --repo and --min-score: semcode.serve.filters)
    GET  /search?q=read+a+file+line+by+line&k=5&language=go&mode=lexical   (language, path, repo repeatable;
                   &path=src/*&repo=org/*&min_score=0.3)
                   -> 200 {"query", "k", "language", "mode", "results": [{"rank", "score", "id", "language",
                           "repo", "path", "start_line", "func_name", "url", "code", "signature", "doc", "license",
                           "location"}], "took_ms"}
    GET  /healthz  200 while the process is alive (liveness)
    GET  /readyz   200 once the bundle is loaded and a warm-up query ran, 503 before (readiness)
    GET  /stats    requests, batches, mean batch size, encoder calls, the bundle's languages with counts, and
                   its coverage: {"indexed", "corpus_rows", "sampled_by", "per_source"} (null: an older bundle);
                   "http": requests by status, errors by type, search latency per mode (/metrics' figures)
    GET  /         the search page (semcode.serve.page): a form, highlighted results, no external assets
    GET  /metrics  Prometheus text format (semcode.serve.ops): requests, errors by type, search latency
                   histogram per mode, queue depth, readiness, the bundle's name and version
    GET  /docs     the API's Swagger UI, from local files (semcode.serve.ops.add_local_docs)

With ``link_base`` (``--link-base``, as in ``semcode search``) every result also has a ``link``. Each request
writes one JSON line to the access log (``access_log_level``; semcode.serve.ops.Observe).

Bad input is refused before any work, with the field named: a missing field, a wrong type or an unknown
key -> 422 (FastAPI's validation); an empty query, a query over ``max_query_chars`` characters or k
outside 1..``max_k``, a language the bundle has no functions in -> 400 (naming the languages it has), a
mode other than dense/lexical/hybrid or one the bundle cannot serve (it has no lexical index) -> 400; a
body over ``max_body_bytes`` -> 413, refused before it is read. All answer
``{"detail": [{"loc": [where, field], "msg", "type"}]}`` (the 422s without FastAPI's echo of the input).
Before the bundle is ready, or when the queue is full, /search answers 503 in the same shape
(``loc`` ["service"], ``type`` "unavailable") with Retry-After.

One request fails alone, never its batch: a query that is not UTF-8 text (JSON's lone surrogate
``"\\ud800"``) is refused with 400 before it is queued; in the batcher every query is first tokenized in a
child process of its own (semcode.bundle_checks.TokenizerWorker) within ``query_timeout_s``, so a query that makes
the bundle's tokenizer fail, panic or backtrack without end gets its own 400 (the child is killed and
restarted) and the rest of the batch is answered; a batch the encoder refuses is encoded again one query at
a time. The tokenizer also gets a bounded test run on adversarial texts before the bundle is ready
(semcode.bundle_checks.probe_tokenizer: a catastrophic regex fails the load). If the batcher thread dies all the
same, or the index file changes on disk under the server (``index.faiss`` rewritten or replaced: it is read
into memory at load unless ``mmap_index``, and its size, mtime and inode are checked before every batch),
every waiting request gets 503, /readyz turns 503 with the reason, the reason is logged in one line and
``semcode serve`` exits with status 1, so that Kubernetes restarts it.

Connections (uvicorn, configured here): a request must arrive whole, head and body, within
``request_timeout_s`` of the connection's opening or its first byte (a client that connects and sends
nothing, or half a request, is disconnected: such connections cannot pile up and exhaust the descriptors);
an idle keep-alive connection is closed after ``keep_alive_s``; beyond ``max_connections`` open connections
uvicorn answers 503; SIGTERM (or SIGINT) stops the server within ``shutdown_timeout_s`` (requests still
running then are cancelled; queued ones get 503).

The bundle loads in a background thread after the server starts listening, so liveness answers at once
and readiness says when queries can be served (a big S3 bundle takes a while to download). When loading
fails, ``semcode serve`` exits with status 1.

Concurrent requests are micro-batched: a worker thread takes the first waiting request, collects more
for up to ``batch_wait_ms`` (or until ``max_batch``), then runs one encoder call and one FAISS search
for all of them and hands each request its own results. Under load, requests that arrive while a batch
runs form the next batch (``batch_wait_ms`` 0: only those, no waiting at all).

Two measured caveats (bench/bench_search.py, 2 shared cores): batching pays where one query cannot use
the hardware (many cores, a GPU); on a small CPU a batch costs about as much per query as single queries
(padding to the longest query, per-batch int8 activation scales), and ``threads`` 1 beat all cores.
And the int8 encoder quantises activations per batch at run time (one scale over the padded batch), so a
query's vector moves a little with its batch mates (cosine ~0.99 to its vector alone, the size of int8's
own error against fp32): under concurrent load an answer can differ slightly from ``semcode search``'s.
``max_batch`` 1 makes every answer that of a lone query.
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from semcode import bundle as bundles
from semcode import bundle_checks
from semcode import config as cfg
from semcode.config import ConfigError, field
from semcode.progress import log
from semcode.serve import ops, page
from semcode.serve.filters import NO_FILTERS, Filters, filtered_search
from semcode.serve.searcher import Hit, Searcher, check_link_template, check_text, resolve_bundle

TAG = "serve"
LANGUAGE_QUERY = Query(None, description="only these languages' functions (repeatable, or go,rust)")
MODE_QUERY = Query(None, description="dense, lexical or hybrid (default: the bundle's default_mode)")
PATH_QUERY = Query(None, description="only functions whose path matches this shell pattern (repeatable)")
REPO_QUERY = Query(
    None, description="only functions whose repository matches this shell pattern (repeatable)"
)
MIN_SCORE_QUERY = Query(None, description="only hits scored at least this (the mode's score)")
WARM_UP_QUERY = "read a file line by line"


@dataclass(frozen=True)
class ServeConfig:
    max_query_chars: int = field(1000, "longest query accepted, in characters (longer: 400)")
    max_k: int = field(100, "largest k accepted (larger: 400)")
    max_body_bytes: int = field(
        65536, "largest request body accepted, in bytes (larger: 413, refused before it is read)"
    )
    default_k: int = field(10, "k when a request gives none")
    batch_wait_ms: float = field(2.0, "how long the batcher waits for more requests after the first (ms)")
    max_batch: int = field(32, "most queries encoded and searched together")
    max_queue: int = field(1024, "requests waiting at most; beyond, /search answers 503")
    threads: int = field(
        0, "ONNX Runtime intra-op threads (0 = all cores; 1 can be faster on a small busy machine)"
    )
    precision: str = field("", "query encoder precision: int8 or fp32 ('' = the bundle's default)")
    cache_dir: str = field("", "where S3 bundles are downloaded ('' = ~/.cache/semcode/bundles)")
    query_timeout_s: float = field(
        2.0,
        "longest the bundle's tokenizer may take on one query (in a child process, killed beyond: that "
        "query alone gets 400)",
    )
    request_timeout_s: float = field(
        10.0,
        "a request must arrive whole (head and body) within this many seconds of the connection's opening "
        "or its first byte, else the connection is closed",
    )
    keep_alive_s: float = field(5.0, "an idle keep-alive connection is closed after this many seconds")
    max_connections: int = field(
        1000, "open connections and requests at most; beyond, uvicorn answers 503 at once"
    )
    shutdown_timeout_s: float = field(
        10.0, "SIGTERM waits at most this long for running requests before it stops the server"
    )
    mmap_index: bool = field(
        False,
        "map index.faiss instead of reading it into memory (replicas on one machine then share it; a file "
        "changed in place is still refused before each batch, but one shortened during a search can SIGBUS)",
    )
    link_base: str = field(
        "",
        "a link per result: {path}, {line}, {repo}, {commit}, {func_name} filled in, e.g. "
        "'https://github.com/org/repo/blob/{commit}/{path}#L{line}' ('' = none)",
    )
    access_log_level: str = field(
        "info", "level of the access log's one JSON line per request: debug, info, warning or off"
    )

    def validate(self) -> None:
        counts = ("max_query_chars", "max_k", "max_body_bytes", "default_k", "max_batch", "max_queue")
        for name in (*counts, "max_connections"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("query_timeout_s", "request_timeout_s", "keep_alive_s", "shutdown_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 1 <= self.default_k <= self.max_k:
            raise ConfigError(f"default_k must be in 1..max_k ({self.max_k}), got {self.default_k}")
        if self.batch_wait_ms < 0:
            raise ConfigError(f"batch_wait_ms must be >= 0, got {self.batch_wait_ms}")
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0, got {self.threads}")
        if self.precision not in ("", "int8", "fp32"):
            raise ConfigError(
                f"precision must be int8, fp32 or '' (the bundle's default), got {self.precision!r}"
            )
        if self.access_log_level not in ops.ACCESS_LEVELS:
            raise ConfigError(
                f"access_log_level must be one of {', '.join(ops.ACCESS_LEVELS)}, got {self.access_log_level!r}"
            )
        if self.link_base:
            try:
                check_link_template(self.link_base)
            except ValueError as error:
                raise ConfigError(str(error)) from None


# ---------------------------------------------------------------------------------------------
# Micro-batching


@dataclass(frozen=True)
class Pending:
    query: str
    k: int
    future: Future
    language: tuple[str, ...] | None = None  # checked (Searcher.check_language); None: every language
    mode: str = "dense"  # checked (Searcher.check_mode)
    filters: Filters = NO_FILTERS  # path / repo globs, minimum score (semcode.serve.filters)


class Unavailable(RuntimeError):
    """The batcher cannot take or answer requests now (it stopped, or died): a 503."""


class Overloaded(Unavailable):
    """The request queue is full."""


class QueryError(ValueError):
    """This one query cannot be answered (the tokenizer fails on it, or not within the time limit): a 400 for
    its request alone."""


def _settle(future: Future, error: BaseException) -> None:
    """Fail ``future`` with ``error`` unless it is already answered or cancelled."""
    try:
        future.set_exception(error)
    except InvalidStateError:
        pass


class MicroBatcher:
    """A worker thread that answers queued queries in batches: one encoder call and one FAISS search each.

    ``screen`` (texts -> for each None or why it cannot be tokenized; serve's is a TokenizerWorker's
    ``check``) runs first, so a bad query fails alone. ``on_death`` is called with the reason if the thread
    dies (an index file changed on disk, or a bug): every waiting request has had its 503 by then."""

    def __init__(
        self,
        searcher: Searcher,
        max_batch: int,
        wait_ms: float,
        max_queue: int,
        screen: Callable[[Sequence[str]], list[str | None]] | None = None,
        on_death: Callable[[str], None] | None = None,
    ) -> None:
        self.searcher = searcher
        self.max_batch = max_batch
        self.wait_seconds = wait_ms / 1000
        self.screen = screen
        self.on_death = on_death
        self.queue: queue.Queue[Pending | None] = queue.Queue(maxsize=max_queue)
        self.requests = 0
        self.batches = 0
        self.batched = 0  # requests answered in batches (cancelled ones excluded)
        self.max_batch_seen = 0
        self.refused = 0  # queries refused alone (their tokenization failed)
        self.error = ""  # why the thread died
        self.closing = False
        self.in_flight: list[Pending] = []
        self.thread = threading.Thread(target=self._loop, name="semcode-batcher", daemon=True)
        self.thread.start()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive() and not self.error

    def submit(
        self,
        query: str,
        k: int,
        language: tuple[str, ...] | None = None,
        mode: str = "dense",
        filters: Filters = NO_FILTERS,
    ) -> Future:
        """Queue one query; the future resolves to its list of Hit (or the search's exception)."""
        if self.closing or not self.alive:
            raise Unavailable(self.error or "the server is shutting down")
        pending = Pending(query, k, Future(), language, mode, filters)
        try:
            self.queue.put_nowait(pending)
        except queue.Full:
            raise Overloaded(f"{self.queue.maxsize} requests are already waiting") from None
        self.requests += 1
        return pending.future

    def close(self, timeout: float = 5.0) -> None:
        """Answer what is queued, then stop the worker (what it has not answered within ``timeout`` gets 503)."""
        self.closing = True
        try:
            self.queue.put(None, timeout=timeout)
        except queue.Full:
            pass
        self.thread.join(timeout)
        self._fail_waiting(Unavailable("the server is shutting down"))

    def _fail_waiting(self, error: Unavailable) -> None:
        """503 for the batch in flight and everything still queued."""
        for pending in self.in_flight:
            _settle(pending.future, error)
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                _settle(item.future, error)

    def _collect(self, first: Pending) -> tuple[list[Pending], bool]:
        """``first`` and whatever arrives within the wait, up to max_batch; and whether to stop after."""
        batch = [first]
        deadline = time.monotonic() + self.wait_seconds
        while len(batch) < self.max_batch:
            try:  # what is already queued is taken at once; then wait out the rest of the window
                item = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
        return batch, False

    def _loop(self) -> None:
        try:
            while True:
                first = self.queue.get()
                if first is None:
                    return
                batch, stop = self._collect(first)
                self.in_flight = batch
                self._answer(batch)
                self.in_flight = []
                if stop:
                    return
        except BaseException as error:  # whatever it is, the waiting requests must hear of it
            self.error = f"the batcher stopped: {type(error).__name__}: {error}"
            self._fail_waiting(Unavailable(self.error))
            if self.on_death is not None:
                self.on_death(self.error)

    def _answer(self, batch: list[Pending]) -> None:
        live = [p for p in batch if p.future.set_running_or_notify_cancel()]  # skip requests gone meanwhile
        if not live:
            return
        self.searcher.check_unchanged()  # IndexChanged ends the thread: the process must reload the bundle
        needs_vector = [p for p in live if p.mode != "lexical"]  # lexical ranks by BM25 alone
        if self.screen is not None and needs_vector:  # each text through the tokenizer alone, time-limited
            for pending, problem in zip(
                needs_vector, self.screen([p.query for p in needs_vector]), strict=True
            ):
                if problem is not None:
                    self.refused += 1
                    _settle(pending.future, QueryError(f"the bundle's tokenizer cannot encode it: {problem}"))
            needs_vector = [p for p in needs_vector if not p.future.done()]
        vectors, needs_vector = self._encode(needs_vector)
        live = [p for p in live if not p.future.done()]
        vector_row = {id(p): row for row, p in enumerate(needs_vector)}  # request -> its row of vectors
        groups: dict[tuple[tuple[str, ...] | None, str, Filters], list[Pending]] = {}
        for pending in live:
            groups.setdefault((pending.language, pending.mode, pending.filters), []).append(pending)
        for (language, mode, filters), group in groups.items():  # one search per language, mode and filters
            self._search(group, language, mode, vectors, vector_row, filters)
        self.batches += 1
        self.batched += len(live)
        self.max_batch_seen = max(self.max_batch_seen, len(live))

    def _encode(self, pending: list[Pending]) -> tuple[np.ndarray | None, list[Pending]]:
        """(vectors, the requests they belong to): one encoder run for the batch; if the encoder refuses
        it, one run per query, and only the queries it refuses fail (400 for a ValueError, else 500)."""
        if not pending:
            return None, []
        try:
            return self.searcher.encode([p.query for p in pending]), pending
        except Exception:  # which query is at fault is found below
            pass
        rows, kept = [], []
        for item in pending:
            try:
                rows.append(self.searcher.encode([item.query])[0])
                kept.append(item)
            except ValueError as error:
                _settle(item.future, QueryError(str(error)))
            except Exception as error:
                _settle(item.future, error)
        return (np.stack(rows) if rows else None), kept

    def _search(
        self,
        group: list[Pending],
        language: tuple[str, ...] | None,
        mode: str,
        vectors: np.ndarray | None,
        vector_row: dict[int, int],
        filters: Filters = NO_FILTERS,
    ) -> None:
        """One search for ``group`` (same language filter, mode and filters); if it fails, one per request, so
        that only a request at fault hears of it (400 for a ValueError, else the error: 500)."""

        def run(part: list[Pending]) -> None:
            part_vectors = None if mode == "lexical" else vectors[[vector_row[id(p)] for p in part]]
            queries, k = [p.query for p in part], max(p.k for p in part)
            results = filtered_search(self.searcher, queries, part_vectors, k, language, mode, filters)
            for pending, hits in zip(part, results, strict=True):
                pending.future.set_result(hits[: pending.k])

        if len(group) > 1:
            try:
                run(group)
                return
            except Exception:  # which request is at fault is found below
                pass
        for pending in group:
            try:
                run([pending])
            except Exception as error:
                _settle(pending.future, QueryError(str(error)) if isinstance(error, ValueError) else error)

    def stats(self) -> dict:
        return {
            "requests": self.requests,
            "batches": self.batches,
            "mean_batch_size": round(self.batched / self.batches, 3) if self.batches else 0.0,
            "max_batch_size": self.max_batch_seen,
            "queued": self.queue.qsize(),
            "refused_queries": self.refused,
        }


# ---------------------------------------------------------------------------------------------
# The service: loads the bundle in the background, then answers through the batcher


class Service:
    """The state behind the endpoints: ``loading`` -> ``ready`` (or ``failed``)."""

    def __init__(
        self, load: Callable[[], Searcher], config: ServeConfig, on_failure: Callable[[], None] | None = None
    ) -> None:
        self.load = load
        self.config = config
        self.on_failure = on_failure
        self.state = "loading"
        self.error = ""
        self.searcher: Searcher | None = None
        self.batcher: MicroBatcher | None = None
        self.tokenizer: bundle_checks.TokenizerWorker | None = None
        self.was_ready = False  # the bundle loaded (a failure after that is the batcher's, not the load's)
        self.started_at = time.time()

    def start(self) -> None:
        threading.Thread(target=self._load, name="semcode-loader", daemon=True).start()

    def _load(self) -> None:
        try:
            searcher = self.load()
            # A bounded test run of the tokenizer (a catastrophic regex fails the load), then the child process
            # that tokenizes each query within query_timeout_s before the batch is encoded.
            tokenizer = searcher.bundle_dir / bundles.TOKENIZER_FILE
            prefix = str(searcher.bundle["query_prefix"])
            problems = bundle_checks.probe_tokenizer(tokenizer, prefix, self.config.query_timeout_s)
            if problems:
                raise bundles.BundleError(
                    f"{searcher.bundle_dir}: its tokenizer is not safe to serve", problems
                )
            self.tokenizer = bundle_checks.TokenizerWorker(tokenizer, prefix, self.config.query_timeout_s)
            started = time.perf_counter()
            searcher.search(WARM_UP_QUERY, 1)  # the first ONNX Runtime run allocates; keep it off a request
            warm_up_ms = (time.perf_counter() - started) * 1000
            self.batcher = MicroBatcher(
                searcher,
                self.config.max_batch,
                self.config.batch_wait_ms,
                self.config.max_queue,
                screen=self.tokenizer.check,
                on_death=self._failed,
            )
            self.searcher = searcher
            self.state = "ready"
            self.was_ready = True
            about = searcher.describe()
            log(
                TAG,
                f"ready: {about['name']} {about['version']}, {about['functions']} functions, {about['encoder']} "
                f"(loaded in {searcher.load_seconds:.1f}s, warm-up query {warm_up_ms:.0f} ms)",
            )
        except Exception as error:  # any failure to load leaves the service unready; say why
            self.error = f"{type(error).__name__}: {error}"
            self.state = "failed"
            log(TAG, f"loading the bundle failed: {self.error}")
            if self.tokenizer is not None:
                self.tokenizer.close()
            if self.on_failure is not None:
                self.on_failure()

    def _failed(self, reason: str) -> None:
        """The batcher died (its waiting requests got 503): unready from now on, and the server stops."""
        self.error = reason
        self.state = "failed"
        log(TAG, f"not ready any more, stopping: {reason}")
        if self.on_failure is not None:
            self.on_failure()

    @property
    def ready(self) -> bool:
        return self.state == "ready" and self.batcher is not None and self.batcher.alive

    def stop(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        if self.tokenizer is not None:
            self.tokenizer.close()

    def live(self) -> dict:
        """What /metrics reads at scrape time (ops.Metrics)."""
        ready = self.ready and self.searcher is not None and self.batcher is not None
        return {
            "ready": ready,
            "queue_depth": self.batcher.queue.qsize() if self.batcher is not None else 0,
            "batcher": self.batcher.stats() if self.batcher is not None else {},
            "bundle": self.searcher.describe() if ready else None,
        }

    def stats(self) -> dict:
        stats = {"state": self.state, "uptime_s": round(time.time() - self.started_at, 1)}
        if self.searcher is not None and self.batcher is not None:
            stats.update(
                self.batcher.stats(),
                encode_calls=self.searcher.encode_calls,
                bundle=self.searcher.describe(),
                coverage=(self.searcher.bundle.get("index") or {}).get("coverage"),  # None: an older bundle
            )
        if self.error:
            stats["error"] = self.error
        return stats


class SearchRequest(BaseModel):
    """POST /search body. Strict: "5" is not an int, and unknown keys (a typo like "top_k") are refused."""

    model_config = ConfigDict(strict=True, extra="forbid")
    query: str
    k: int | None = None
    language: str | list[str] | None = None
    mode: str | None = None
    path: str | list[str] | None = None  # shell patterns of the path (semcode.serve.filters)
    repo: str | list[str] | None = None  # shell patterns of the repository
    min_score: float | None = None


def input_error(location: str, name: str, message: str) -> JSONResponse:
    """A 400 answer shaped like FastAPI's 422 validation errors, so clients read one format."""
    detail = [{"loc": [location, name], "msg": message, "type": "value_error"}]
    return JSONResponse(status_code=400, content={"detail": detail})


def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 without its ``input`` and ``ctx`` echo (a client's 20 MB body must not come back)."""
    detail = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in error.errors()]
    return JSONResponse(status_code=422, content={"detail": detail})


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` gets 413 (the 400 shape) without being read: by
    its Content-Length when it declares one, else as soon as the chunks received pass the limit (raised as
    an HTTPException from the body read, which FastAPI answers as it is)."""

    def __init__(self, app: Callable, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def too_large(self, size: int) -> HTTPException:
        message = f"the request body is {size:,} bytes or more; at most {self.max_bytes:,} are accepted"
        return HTTPException(413, detail=[{"loc": ["body"], "msg": message, "type": "value_error"}])

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            refusal = self.too_large(int(declared))
            answer = JSONResponse(status_code=refusal.status_code, content={"detail": refusal.detail})
            await answer(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self.too_large(received)
            return message

        await self.app(scope, limited_receive, send)


def unavailable(message: str) -> JSONResponse:
    """503 in the one error shape every refusal has (the service, not a field, is the ``loc``)."""
    detail = [{"loc": ["service"], "msg": message, "type": "unavailable"}]
    return JSONResponse(status_code=503, content={"detail": detail}, headers={"Retry-After": "1"})


def create_app(
    load: Callable[[], Searcher],
    config: ServeConfig | None = None,
    on_failure: Callable[[], None] | None = None,
) -> FastAPI:
    """The FastAPI app; ``app.state.service`` is its Service. ``load`` returns a Searcher (``bundle_loader``);
    it runs in a background thread once the app starts (its lifespan), so /healthz answers while the
    bundle loads. ``on_failure`` is called when loading fails (``semcode serve`` stops the server)."""
    config = config or ServeConfig()
    config.validate()
    service = Service(load, config, on_failure)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        service.start()
        yield
        service.stop()

    app = FastAPI(
        title="semcode search",
        description="Natural-language code search over a semcode release bundle.",
        lifespan=lifespan,
        docs_url=None,  # ops.add_local_docs: Swagger UI from local files, not a CDN
        redoc_url=None,
    )
    app.state.service = service
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    metrics = ops.Metrics(service.live)
    app.add_middleware(ops.Observe, metrics=metrics, level=config.access_log_level)  # outermost: sees 413s
    ops.add_local_docs(app)

    async def search(
        location: str,
        query_field: str,
        query: str,
        k: int | None,
        language: str | list[str] | None,
        mode: str | None,
        path: str | list[str] | None = None,
        repo: str | list[str] | None = None,
        min_score: float | None = None,
    ) -> JSONResponse | dict:
        k = config.default_k if k is None else k
        paths, repos = (
            [path] if isinstance(path, str) else path or [],
            [repo] if isinstance(repo, str) else repo or [],
        )
        filters = Filters(tuple(paths), tuple(repos), min_score)
        try:
            check_text(query, query_field)
        except ValueError as error:  # checked first: no later message may echo a string JSON cannot encode
            return input_error(location, query_field, str(error))
        if not query.strip():
            return input_error(location, query_field, f"{query_field} is empty: say what the code should do")
        if len(query) > config.max_query_chars:
            return input_error(
                location,
                query_field,
                f"{query_field} is {len(query)} characters long; at most {config.max_query_chars} are accepted",
            )
        if not 1 <= k <= config.max_k:
            return input_error(location, "k", f"k must be between 1 and {config.max_k}, got {k}")
        if not service.ready or service.batcher is None or service.searcher is None:
            return unavailable(
                f"not ready: the bundle is {service.state}" + (f" ({service.error})" if service.error else "")
            )
        try:
            languages = service.searcher.check_language(language)
        except ValueError as error:
            return input_error(location, "language", str(error))
        try:
            mode = service.searcher.check_mode(mode)
        except ValueError as error:
            return input_error(location, "mode", str(error))
        started = time.perf_counter()
        try:
            future = service.batcher.submit(query, k, languages, mode, filters)
        except Overloaded as error:
            return unavailable(f"overloaded: {error}; retry shortly")
        except Unavailable as error:
            return unavailable(f"not ready: {error}")
        try:
            hits: list[Hit] = await asyncio.wrap_future(future)
        except QueryError as error:  # this query alone: the rest of its batch was answered
            return input_error(location, query_field, str(error))
        except Unavailable as error:
            return unavailable(f"not ready: {error}")
        except Exception as error:  # a bug, not the client's doing: one line in the log, the shape kept
            log(TAG, f"a search failed: {type(error).__name__}: {error}")
            detail = [
                {"loc": ["service"], "msg": f"the search failed: {type(error).__name__}", "type": "error"}
            ]
            return JSONResponse(status_code=500, content={"detail": detail})
        seconds = time.perf_counter() - started
        metrics.latency.labels(mode=mode).observe(seconds)
        results = [hit.to_dict() for hit in hits]
        if config.link_base:
            for row, hit in zip(results, hits, strict=True):
                row["link"] = hit.link(config.link_base)
        return {
            "query": query,
            "k": k,
            "language": None if languages is None else list(languages),
            "mode": mode,
            "path": paths or None,
            "repo": repos or None,
            "min_score": min_score,
            "results": results,
            "took_ms": round(seconds * 1000, 3),
        }

    @app.post("/search")
    async def search_post(request: SearchRequest):
        return await search("body", "query", **request.model_dump())  # its fields are search's arguments

    @app.get("/search")
    async def search_get(
        q: str = Query(..., description="the query"),
        k: int | None = Query(None, description="results"),
        language: list[str] | None = LANGUAGE_QUERY,
        mode: str | None = MODE_QUERY,
        path: list[str] | None = PATH_QUERY,
        repo: list[str] | None = REPO_QUERY,
        min_score: float | None = MIN_SCORE_QUERY,
    ):
        return await search("query", "q", q, k, language, mode, path, repo, min_score)

    @app.get("/healthz")
    async def healthz():
        return {"status": "alive", "state": service.state}

    @app.get("/readyz")
    async def readyz():
        if service.ready and service.searcher is not None:
            return {"status": "ready", "bundle": service.searcher.describe()}
        content = {"status": "failed" if service.state == "ready" else service.state}
        if service.error:
            content["error"] = service.error
        return JSONResponse(status_code=503, content=content)

    @app.get("/stats")
    async def stats():
        return {**service.stats(), "http": metrics.summary()}

    ops.add_metrics(app, metrics)
    page.add_page(app, search, lambda: (service.live()["bundle"], service.state))

    return app


def bundle_loader(bundle: str, config: ServeConfig) -> Callable[[], Searcher]:
    """Load ``bundle`` (local, s3:// or <registry>/<name>/latest; downloaded first if on S3) into a Searcher."""
    precision = config.precision or None

    def load() -> Searcher:
        local = resolve_bundle(bundle, config.cache_dir or None, precision)
        return Searcher(local, precision, config.threads, mmap_index=config.mmap_index)

    return load


EPILOG = """examples:
  semcode serve runs/registry/semcode/latest --port 8080      # what semcode run published (or runs/<run-id>/bundle)
  semcode serve s3://models/registry/semcode/latest --host 0.0.0.0 --port 8080 --max-batch 64
  curl -s localhost:8080/search -d '{"query": "read a file line by line", "k": 5}' -H 'content-type: application/json'
  curl -s 'localhost:8080/search?q=parse+a+date&k=3&language=go'
  curl -s 'localhost:8080/search?q=merge+two+dicts&mode=lexical'
  curl -s 'localhost:8080/search?q=retry+a+request&path=src/*&repo=org/*&min_score=0.3'
  curl -s localhost:8080/metrics       # Prometheus; the search page is http://localhost:8080/, API docs /docs

BUNDLE is a bundle directory (local or s3://) or a registry pointer <registry>/<name>/latest.

Connections (uvicorn): a request must arrive whole within --request-timeout-s of the connection's opening or
first byte (else it is closed); an idle keep-alive connection is closed after --keep-alive-s; beyond
--max-connections uvicorn answers 503; SIGTERM stops the server within --shutdown-timeout-s. A query the
bundle's tokenizer fails on, or takes over --query-timeout-s for, gets 400 alone; if the server cannot go
on (its index file changed on disk), /readyz answers 503 and it exits with status 1.
"""


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(
        prog="semcode serve",
        description="Serve a release bundle's code search: a search page at /, an HTTP JSON API "
        "(POST /search, GET /search?q=, /healthz, /readyz, /stats, /metrics) and its docs at /docs.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "bundle", metavar="BUNDLE", help="bundle directory, s3:// URI or <registry>/<name>/latest"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default: 8080)")
    parser.add_argument(
        "--log-level", default="info", choices=("critical", "error", "warning", "info", "debug")
    )
    cfg.add_arguments(parser, ServeConfig)
    args = parser.parse_args(argv)
    try:
        config = cfg.from_args(ServeConfig, args, section="serve")
    except ConfigError as error:
        print(f"semcode serve: error: {error}", file=sys.stderr)
        return 2

    server: uvicorn.Server | None = None

    def stop_server() -> None:
        if server is not None:
            server.should_exit = True

    app = create_app(bundle_loader(args.bundle, config), config, on_failure=stop_server)
    ops.configure_access_log(args.log_level)
    server = uvicorn.Server(uvicorn_config(app, config, args.host, args.port, args.log_level))
    log(TAG, f"loading {args.bundle} in the background; /readyz answers 200 once it is ready")
    server.run()
    service: Service = app.state.service
    if service.state == "failed" and not service.was_ready:
        print(f"semcode serve: error: could not load {args.bundle}: {service.error}", file=sys.stderr)
        return 1
    if service.state == "failed":
        print(f"semcode serve: error: stopped serving {args.bundle}: {service.error}", file=sys.stderr)
        return 1
    return 0


def uvicorn_config(app: FastAPI, config: ServeConfig, host: str, port: int, log_level: str) -> Any:
    """uvicorn's settings for ``app``: its HTTP/1.1 protocol with a per-request deadline
    (``request_timeout_s``), the keep-alive timeout, the connection limit and the shutdown bound."""
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        http=deadline_protocol(config.request_timeout_s),
        timeout_keep_alive=config.keep_alive_s,
        limit_concurrency=config.max_connections,
        timeout_graceful_shutdown=config.shutdown_timeout_s,
        access_log=False,  # ops.Observe writes the access log: one JSON line per request
    )


def deadline_protocol(seconds: float) -> type:
    """uvicorn's h11 protocol, plus: a request must arrive whole (head and body) within ``seconds`` of the
    connection's opening or of its first byte, else the connection is closed. uvicorn itself times out only
    idle keep-alive connections, so a client that connects and sends nothing, or half a request, would hold
    its connection (and a file descriptor) for ever."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    waiting = (h11.IDLE, h11.SEND_BODY)  # the client's side of h11: no request yet, or its body under way

    class DeadlineH11Protocol(H11Protocol):
        deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state in waiting:
                self._arm()  # a request is partly here: its deadline runs from its first byte
            else:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self.deadline is None:
                self.deadline = self.loop.call_later(seconds, self._expire)

        def _disarm(self) -> None:
            if self.deadline is not None:
                self.deadline.cancel()
                self.deadline = None

        def _expire(self) -> None:
            self.deadline = None
            if self.conn.their_state in waiting and not self.transport.is_closing():
                self.transport.close()

    return DeadlineH11Protocol


if __name__ == "__main__":
    sys.exit(main())
