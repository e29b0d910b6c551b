"""Load a release bundle and search it: query text -> ONNX encoder -> FAISS -> ranked functions.

Only ONNX Runtime, tokenizers, FAISS and pyarrow run here: no torch, transformers or
sentence-transformers (``semcode search`` starts in a second and fits a small container; a test checks
``sys.modules``). The bundle layout is the release bundle contract (semcode.bundle, DESIGN.md).

Where a bundle can be (``resolve_bundle``)::

    runs/r1/gate/bundle                      a local bundle directory
    s3://bucket/runs/r1/gate/bundle          a bundle directory on S3
    registry/semcode/latest                  a registry's ``latest`` pointer (local or s3://): the
    s3://models/registry/semcode/latest      version it names, <registry>/<name>/<version>/

An S3 bundle is downloaded to ``<cache>/<name>/<version>/`` (default ``~/.cache/semcode/bundles``), only
the files a query needs (tokenizer, the query encoder, the index and its metadata), each checked
against the sha256 that bundle.json lists; a later start reuses the files whose checksum still matches.

Queries use the bundle's default encoder (int8 unless export_onnx found it too lossy, then fp32; the
query tower when the towers are separate), its ``query_prefix`` and ``max_length``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from semcode import bundle as bundles
from semcode import storage
from semcode.embed import OnnxEncoder
from semcode.index import load_index, omp_threads
from semcode.progress import log

TAG = "search"
CACHE_ENV = "SEMCODE_CACHE_DIR"  # overrides the default cache root (~/.cache/semcode)
RESULT_COLUMNS = ("repo", "path", "func_name", "url", "code")
# bundle.json keys the query path reads; validate_bundle checks the whole contract, this only what we use.
QUERY_KEYS = ("name", "version", "dim", "max_length", "query_prefix", "encoders", "default_files", "index")


@dataclass(frozen=True)
class Hit:
    """One search result; ``id`` is the FAISS id (= row of index_meta.parquet)."""

    rank: int
    score: float
    id: int
    repo: str
    path: str
    func_name: str
    url: str
    code: str

    def location(self) -> str:
        """``repo/path:func_name`` (``path:func_name`` without a repo)."""
        where = f"{self.repo}/{self.path}" if self.repo else self.path
        return f"{where}:{self.func_name}"

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------------------------
# Finding the bundle: local, s3://, or a registry's latest pointer


def default_cache_dir() -> Path:
    """``$SEMCODE_CACHE_DIR/bundles``, else ``$XDG_CACHE_HOME/semcode/bundles``, else ``~/.cache/semcode/bundles``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / "bundles"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "semcode" / "bundles"


def _split_last(uri: str) -> tuple[str, str]:
    """``a/b/c`` -> (``a/b``, ``c``) for a local path or an s3:// URI."""
    parent, _, last = uri.rstrip("/").rpartition("/")
    return parent, last


def resolve_pointer(spec: str) -> str:
    """The bundle folder ``spec`` names: itself, or for ``<registry>/<name>/latest`` the version it points at."""
    spec = os.fspath(spec)
    name_dir, last = _split_last(spec)
    if last != bundles.LATEST:
        return spec
    registry, name = _split_last(name_dir)
    if not name:
        raise ValueError(f"{spec}: a registry pointer looks like <registry>/<name>/latest")
    if storage.is_s3(spec) and not registry.startswith(storage.S3_PREFIX):
        raise ValueError(f"{spec}: a registry pointer looks like s3://bucket/[prefix/]<name>/latest")
    folder = bundles.resolve_latest(registry or ".", name)
    if folder is None:
        raise FileNotFoundError(
            f"no registry pointer {spec}: nothing named {name!r} is published in {registry}"
        )
    return folder


def query_encoder_file(bundle: dict, precision: str | None = None) -> str:
    """The ONNX file that encodes queries: the bundle's default, or the one of ``precision`` (fp32/int8)."""
    if precision is None:
        return bundle["default_files"]["query"]
    if precision not in bundles.PRECISIONS:
        raise ValueError(f"precision must be one of {list(bundles.PRECISIONS)}, got {precision!r}")
    return bundle["encoders"][precision]["query"]


def query_files(bundle: dict, precision: str | None = None) -> list[str]:
    """The bundle files a query reads (relative paths), bundle.json aside."""
    index = bundle["index"]
    return [
        bundles.TOKENIZER_FILE,
        query_encoder_file(bundle, precision),
        index.get("file", bundles.INDEX_FILE),
        index.get("meta", bundles.META_FILE),
    ]


def check_bundle_json(bundle: dict, where: str) -> dict:
    """Raise BundleError unless bundle.json has what the query path reads; returns it."""
    if not isinstance(bundle, dict):
        raise bundles.BundleError(
            f"{where} is not a usable release bundle", ["bundle.json is not a JSON object"]
        )
    problems = [f"bundle.json has no key {key!r}" for key in QUERY_KEYS if key not in bundle]
    fmt = bundle.get("bundle_format")
    if isinstance(fmt, int) and fmt > bundles.BUNDLE_FORMAT:
        problems.append(
            f"bundle_format {fmt} is newer than this semcode reads ({bundles.BUNDLE_FORMAT}): upgrade"
        )
    if problems:
        raise bundles.BundleError(f"{where} is not a usable release bundle", problems)
    return bundle


def _same_file(path: Path, entry: dict | None) -> bool:
    """True when ``path`` exists with the size and sha256 bundle.json lists for it."""
    if entry is None or not path.is_file():
        return False
    if entry.get("bytes") is not None and path.stat().st_size != entry["bytes"]:
        return False
    return bundles.sha256_file(path) == entry.get("sha256")


def download_bundle(uri: str, cache_dir: str | os.PathLike[str], precision: str | None = None) -> Path:
    """Download what a query needs from an S3 bundle to ``cache_dir/<name>/<version>/``; returns that folder.

    Files already there with the listed sha256 are kept; a downloaded file that does not match its
    listed sha256 raises ValueError. bundle.json is written last, so a folder with it is complete.
    """
    bundle_text = storage.read_text(storage.join(uri, bundles.BUNDLE_JSON))
    try:
        bundle = check_bundle_json(json.loads(bundle_text), uri)
    except json.JSONDecodeError as error:
        raise ValueError(f"bundle.json: {uri} holds no valid JSON ({error})") from None
    for key in ("name", "version"):
        if not bundles.VERSION_PATTERN.fullmatch(str(bundle[key])):
            raise ValueError(f"{uri}: bundle.json {key} {bundle[key]!r} cannot name a cache folder")
    target = Path(cache_dir) / bundle["name"] / bundle["version"]
    listed = bundle.get("files") or {}
    fetched = []
    for name in query_files(bundle, precision):
        local = target / name
        if _same_file(local, listed.get(name)):
            continue
        if name not in listed:
            raise bundles.BundleError(
                f"{uri} breaks the release bundle contract", [f"{name} is not listed in files"]
            )
        storage.copy(storage.join(uri, name), local)
        if not _same_file(local, listed[name]):
            local.unlink(missing_ok=True)
            raise ValueError(
                f"{storage.join(uri, name)}: downloaded file does not match bundle.json's sha256"
            )
        fetched.append(name)
    partial = target / f".{bundles.BUNDLE_JSON}.partial"
    partial.write_text(bundle_text)
    os.replace(partial, target / bundles.BUNDLE_JSON)
    if fetched:
        log(TAG, f"downloaded {', '.join(fetched)} of {uri} to {target}")
    return target


def resolve_bundle(
    spec: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    precision: str | None = None,
) -> Path:
    """A local bundle directory for ``spec`` (local dir, s3:// dir, or ``.../<name>/latest``); see the module doc."""
    folder = resolve_pointer(os.fspath(spec))
    if storage.is_s3(folder):
        return download_bundle(folder, cache_dir or default_cache_dir(), precision)
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"bundle directory not found: {path}")
    if not (path / bundles.BUNDLE_JSON).is_file():
        raise FileNotFoundError(
            f"{path} has no {bundles.BUNDLE_JSON}: expected a release bundle (the gate output's bundle/) "
            "or a registry pointer <registry>/<name>/latest"
        )
    return path


# ---------------------------------------------------------------------------------------------
# Searching


class Searcher:
    """A loaded bundle: ``search(query, k)`` and ``search_batch(queries, k)`` return ranked ``Hit`` lists.

    ``encode_calls`` counts encoder runs (the service batches concurrent requests into one).
    Not thread-safe by itself: call it from one thread at a time (the service's batcher does).
    """

    def __init__(
        self, bundle_dir: str | os.PathLike[str], precision: str | None = None, threads: int = 0
    ) -> None:
        started = time.perf_counter()
        self.bundle_dir = Path(bundle_dir)
        self.bundle = check_bundle_json(bundles.read_bundle_json(self.bundle_dir), str(self.bundle_dir))
        tokenizer, encoder_file, index_file, meta_file = query_files(self.bundle, precision)
        missing = [
            n for n in (tokenizer, encoder_file, index_file, meta_file) if not (self.bundle_dir / n).is_file()
        ]
        if missing:
            raise FileNotFoundError(f"bundle {self.bundle_dir} lacks {', '.join(missing)}")
        self.encoder_file = encoder_file
        self.encoder = OnnxEncoder(
            self.bundle_dir / encoder_file,
            self.bundle_dir / tokenizer,
            int(self.bundle["max_length"]),
            self.bundle["query_prefix"],
            threads=threads,
        )
        self.index = load_index(self.bundle_dir / index_file)
        meta = pq.ParquetFile(self.bundle_dir / meta_file)
        columns = [c for c in RESULT_COLUMNS if c in meta.schema_arrow.names]
        self.meta = meta.read(columns=columns)
        dims = {
            "bundle.json dim": self.bundle["dim"],
            encoder_file: self.encoder.dim,
            index_file: self.index.d,
        }
        if len(set(dims.values())) != 1:
            raise ValueError(f"bundle {self.bundle_dir}: embedding dimensions differ: {dims}")
        if self.meta.num_rows != self.index.ntotal:
            raise ValueError(
                f"bundle {self.bundle_dir}: {index_file} holds {self.index.ntotal} vectors but {meta_file} has "
                f"{self.meta.num_rows} rows (FAISS id i must be row i)"
            )
        self.encode_calls = 0
        self.load_seconds = time.perf_counter() - started

    @property
    def name(self) -> str:
        return str(self.bundle["name"])

    @property
    def version(self) -> str:
        return str(self.bundle["version"])

    @property
    def size(self) -> int:
        """Functions in the index."""
        return int(self.index.ntotal)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "path": str(self.bundle_dir),
            "encoder": self.encoder_file,
            "functions": self.size,
            "dim": int(self.index.d),
        }

    def encode(self, queries: Sequence[str]) -> np.ndarray:
        """float32 [len(queries), dim] unit vectors, in one encoder run (up to the encoder's batch size)."""
        self.encode_calls += 1
        return self.encoder.encode(list(queries))

    def search_vectors(self, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        """The top ``k`` functions for each query vector [Q, dim]; fewer when the index holds fewer."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        k = min(k, self.size)
        # One FAISS thread: HNSW/IVF answer a query in well under a millisecond, and waking OpenMP workers
        # costs more than it saves, on a busy machine a lot more (semcode.index; bench/bench_search.py:
        # a batch of 8 over 100k vectors took 1.8 ms with one thread, 7 ms with two, on 2 shared cores).
        with omp_threads(1):
            scores, ids = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)
        found = ids[ids >= 0]
        rows = self.meta.take(pa.array(found, type=pa.int64())).to_pylist() if len(found) else []
        by_id = dict(zip(found.tolist(), rows, strict=True))
        results = []
        for query_scores, query_ids in zip(scores, ids, strict=True):
            hits = []
            for score, faiss_id in zip(query_scores.tolist(), query_ids.tolist(), strict=True):
                if faiss_id < 0:
                    continue
                row = by_id[faiss_id]
                fields = {column: str(row.get(column) or "") for column in RESULT_COLUMNS}
                hits.append(Hit(rank=len(hits) + 1, score=float(score), id=int(faiss_id), **fields))
            results.append(hits)
        return results

    def search_batch(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        """One encoder run and one FAISS search for all ``queries``; the top ``k`` of each."""
        if not queries:
            return []
        return self.search_vectors(self.encode(queries), k)

    def search(self, query: str, k: int = 10) -> list[Hit]:
        return self.search_batch([query], k)[0]
