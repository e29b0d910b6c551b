"""``semcode serve``: a release bundle behind an HTTP JSON API (FastAPI + uvicorn).

Endpoints::

    POST /search   {"query": "read a file line by line", "k": 5, "language": "go", "mode": "hybrid"}
                   (language optional: a name, "go,rust", or a list; only those languages' functions are
                   ranked; mode optional: dense, lexical or hybrid, default the bundle's default_mode)
    GET  /search?q=read+a+file+line+by+line&k=5&language=go&mode=lexical   (language repeatable)
                   -> 200 {"query", "k", "language", "mode", "results": [{"rank", "score", "id", "language",
                           "repo", "path", "start_line", "func_name", "url", "code", "signature", "doc",
                           "location"}], "took_ms"}
    GET  /healthz  200 while the process is alive (liveness)
    GET  /readyz   200 once the bundle is loaded and a warm-up query ran, 503 before (readiness)
    GET  /stats    requests, batches, mean batch size, encoder calls, the bundle's languages with counts, and
                   its coverage: {"indexed", "corpus_rows", "sampled_by", "per_source"} (null: an older bundle)

Bad input is refused before any work, with the field named: a missing field, a wrong type or an unknown
key -> 422 (FastAPI's validation); an empty query, a query over ``max_query_chars`` characters or k
outside 1..``max_k``, a language the bundle has no functions in -> 400 (naming the languages it has), a
mode other than dense/lexical/hybrid or one the bundle cannot serve (it has no lexical index) -> 400; a
body over ``max_body_bytes`` -> 413, refused before it is read. All answer
``{"detail": [{"loc": [where, field], "msg", "type"}]}`` (the 422s without FastAPI's echo of the input).
Before the bundle is ready, or when the queue is full, /search answers 503 in the same shape
(``loc`` ["service"], ``type`` "unavailable") with Retry-After.

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
from collections.abc import Callable
from concurrent.futures import Future
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from semcode import config as cfg
from semcode.config import ConfigError, field
from semcode.progress import log
from semcode.serve.searcher import Hit, Searcher, resolve_bundle

TAG = "serve"
LANGUAGE_QUERY = Query(None, description="only these languages' functions (repeatable, or go,rust)")
MODE_QUERY = Query(None, description="dense, lexical or hybrid (default: the bundle's default_mode)")
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

    def validate(self) -> None:
        for name in ("max_query_chars", "max_k", "max_body_bytes", "default_k", "max_batch", "max_queue"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
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


# ---------------------------------------------------------------------------------------------
# Micro-batching


@dataclass(frozen=True)
class Pending:
    query: str
    k: int
    future: Future
    language: tuple[str, ...] | None = None  # checked (Searcher.check_language); None: every language
    mode: str = "dense"  # checked (Searcher.check_mode)


class Overloaded(RuntimeError):
    """The request queue is full."""


class MicroBatcher:
    """A worker thread that answers queued queries in batches: one encoder call and one FAISS search each."""

    def __init__(self, searcher: Searcher, max_batch: int, wait_ms: float, max_queue: int) -> None:
        self.searcher = searcher
        self.max_batch = max_batch
        self.wait_seconds = wait_ms / 1000
        self.queue: queue.Queue[Pending | None] = queue.Queue(maxsize=max_queue)
        self.requests = 0
        self.batches = 0
        self.batched = 0  # requests answered in batches (cancelled ones excluded)
        self.max_batch_seen = 0
        self.thread = threading.Thread(target=self._loop, name="semcode-batcher", daemon=True)
        self.thread.start()

    def submit(
        self, query: str, k: int, language: tuple[str, ...] | None = None, mode: str = "dense"
    ) -> Future:
        """Queue one query; the future resolves to its list of Hit (or the search's exception)."""
        pending = Pending(query, k, Future(), language, mode)
        try:
            self.queue.put_nowait(pending)
        except queue.Full:
            raise Overloaded(f"{self.queue.maxsize} requests are already waiting") from None
        self.requests += 1
        return pending.future

    def close(self, timeout: float = 10.0) -> None:
        """Answer what is queued, then stop the worker."""
        self.queue.put(None)
        self.thread.join(timeout)

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
        while True:
            first = self.queue.get()
            if first is None:
                return
            batch, stop = self._collect(first)
            self._answer(batch)
            if stop:
                return

    def _answer(self, batch: list[Pending]) -> None:
        live = [p for p in batch if p.future.set_running_or_notify_cancel()]  # skip requests gone meanwhile
        if not live:
            return
        needs_vector = [p for p in live if p.mode != "lexical"]  # lexical ranks by BM25 alone
        vectors = None
        if needs_vector:
            try:  # one encoder run for the whole batch
                vectors = self.searcher.encode([p.query for p in needs_vector])
            except Exception as error:  # every waiting request must hear about it, whatever it is
                for pending in needs_vector:
                    pending.future.set_exception(error)
                live = [p for p in live if p.mode == "lexical"]
                needs_vector = []
        vector_row = {id(p): row for row, p in enumerate(needs_vector)}  # request -> its row of vectors
        groups: dict[tuple[tuple[str, ...] | None, str], list[Pending]] = {}
        for pending in live:
            groups.setdefault((pending.language, pending.mode), []).append(pending)
        for (language, mode), group in groups.items():  # then one search per language filter and mode
            group_vectors = None if mode == "lexical" else vectors[[vector_row[id(p)] for p in group]]
            try:
                results = self.searcher.search_encoded(
                    [p.query for p in group], group_vectors, max(p.k for p in group), language, mode
                )
            except Exception as error:
                for pending in group:
                    pending.future.set_exception(error)
                continue
            for pending, hits in zip(group, results, strict=True):
                pending.future.set_result(hits[: pending.k])
        self.batches += 1
        self.batched += len(live)
        self.max_batch_seen = max(self.max_batch_seen, len(live))

    def stats(self) -> dict:
        return {
            "requests": self.requests,
            "batches": self.batches,
            "mean_batch_size": round(self.batched / self.batches, 3) if self.batches else 0.0,
            "max_batch_size": self.max_batch_seen,
            "queued": self.queue.qsize(),
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
        self.started_at = time.time()

    def start(self) -> None:
        threading.Thread(target=self._load, name="semcode-loader", daemon=True).start()

    def _load(self) -> None:
        try:
            searcher = self.load()
            started = time.perf_counter()
            searcher.search(WARM_UP_QUERY, 1)  # the first ONNX Runtime run allocates; keep it off a request
            warm_up_ms = (time.perf_counter() - started) * 1000
            self.batcher = MicroBatcher(
                searcher, self.config.max_batch, self.config.batch_wait_ms, self.config.max_queue
            )
            self.searcher = searcher
            self.state = "ready"
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
            if self.on_failure is not None:
                self.on_failure()

    def stop(self) -> None:
        if self.batcher is not None:
            self.batcher.close()

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
    )
    app.state.service = service
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)

    async def answer(
        location: str,
        query_field: str,
        query: str,
        k: int | None,
        language: str | list[str] | None,
        mode: str | None,
    ) -> JSONResponse | dict:
        k = config.default_k if k is None else k
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
        if service.state != "ready" or service.batcher is None or service.searcher is None:
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
            future = service.batcher.submit(query, k, languages, mode)
        except Overloaded as error:
            return unavailable(f"overloaded: {error}; retry shortly")
        hits: list[Hit] = await asyncio.wrap_future(future)
        return {
            "query": query,
            "k": k,
            "language": None if languages is None else list(languages),
            "mode": mode,
            "results": [hit.to_dict() for hit in hits],
            "took_ms": round((time.perf_counter() - started) * 1000, 3),
        }

    @app.post("/search")
    async def search_post(request: SearchRequest):
        return await answer("body", "query", request.query, request.k, request.language, request.mode)

    @app.get("/search")
    async def search_get(
        q: str = Query(..., description="the query"),
        k: int | None = Query(None, description="results"),
        language: list[str] | None = LANGUAGE_QUERY,
        mode: str | None = MODE_QUERY,
    ):
        return await answer("query", "q", q, k, language, mode)

    @app.get("/healthz")
    async def healthz():
        return {"status": "alive", "state": service.state}

    @app.get("/readyz")
    async def readyz():
        if service.state == "ready" and service.searcher is not None:
            return {"status": "ready", "bundle": service.searcher.describe()}
        content = {"status": service.state}
        if service.error:
            content["error"] = service.error
        return JSONResponse(status_code=503, content=content)

    @app.get("/stats")
    async def stats():
        return service.stats()

    return app


def bundle_loader(bundle: str, config: ServeConfig) -> Callable[[], Searcher]:
    """Load ``bundle`` (local, s3:// or <registry>/<name>/latest; downloaded first if on S3) into a Searcher."""
    precision = config.precision or None

    def load() -> Searcher:
        local = resolve_bundle(bundle, config.cache_dir or None, precision)
        return Searcher(local, precision, config.threads)

    return load


EPILOG = """examples:
  semcode serve runs/latest/gate/bundle --port 8080
  semcode serve s3://models/registry/semcode/latest --host 0.0.0.0 --port 8080 --max-batch 64
  curl -s localhost:8080/search -d '{"query": "read a file line by line", "k": 5}' -H 'content-type: application/json'
  curl -s 'localhost:8080/search?q=parse+a+date&k=3&language=go'
  curl -s 'localhost:8080/search?q=merge+two+dicts&mode=lexical'

BUNDLE is a bundle directory (local or s3://) or a registry pointer <registry>/<name>/latest.
"""


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(
        prog="semcode serve",
        description="Serve a release bundle's code search as an HTTP JSON API "
        "(POST /search, GET /search?q=, /healthz, /readyz, /stats).",
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
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level))
    log(TAG, f"loading {args.bundle} in the background; /readyz answers 200 once it is ready")
    server.run()
    service: Service = app.state.service
    if service.state == "failed":
        print(f"semcode serve: error: could not load {args.bundle}: {service.error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
