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
A local bundle is checked the same way when a Searcher loads it (``verify_files``): a file changed after
assembly is refused, named, before anything is served.

Results carry the function's language, its signature and doc line, and a location to open
(``path:start_line``; for a ``file://`` url, the local file). ``search(query, k, language="go")`` (or a list, or "go,rust") ranks only that
language's functions: the filter runs inside FAISS (semcode.index.restricted_search, an IDSelector per
language built at load time), and over-fetching in growing rounds stands in only for an index type that
takes no selector. Bundles older than the language/repo/start_line/signature/doc columns load too
(language "python", the only one they had; start_line unknown; signature and doc "").

Queries use the bundle's default encoder (int8 unless export_onnx found it too lossy, then fp32; the
query tower when the towers are separate), its ``query_prefix`` and ``max_length``.

Modes (``mode=``, bundle.SEARCH_MODES; default: bundle.json ``default_mode``, "dense" for a bundle
without one):

- ``dense``: the query vector against FAISS, as above; the score is the cosine.
- ``lexical``: BM25 over the bundle's ``bm25/`` index (bm25s, identifiers split as evaluate splits them):
  the top k of the functions that share a word with the query (none: no results); the score is BM25.
- ``hybrid``: the dense top N and the lexical top N, N = max(HYBRID_MIN_CANDIDATES, HYBRID_PER_K * k);
  for each function of their union the score it lacks is computed (BM25 is read off the query's BM25
  scores of every function; the cosine of a function only BM25 found is its stored vector, FAISS
  reconstruct, times the query vector), then the union is ranked by bundle.json ``fusion``
  (semcode.retrieval.fuse_queries: the spec evaluate chose on its mix of suites; a question-form query
  gets the spec's ``question_weight`` when it has one, as in evaluate; an internal definition, by its
  func_name, is ranked lower by the spec's ``internal_penalty`` when it has one); the score is the fused one.

The language filter applies to every mode. A bundle without a lexical index (made before it) offers
dense only, and says so (``modes``, and the error for another mode).
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from semcode import bundle as bundles
from semcode import storage
from semcode.contract import META_COLUMNS
from semcode.embed import OnnxEncoder
from semcode.index import id_selector, load_index, omp_threads, restricted_search, union_selector
from semcode.progress import log
from semcode.registry import resolve_latest
from semcode.retrieval import DEFAULT_FUSION, BM25Index, fuse_queries, fusion_spec, internal_definitions

TAG = "search"
CACHE_ENV = "SEMCODE_CACHE_DIR"  # overrides the default cache root (~/.cache/semcode)
# What older bundles lack (semcode.contract.META_COLUMNS_ADDED) is filled in: they indexed Python only.
OLD_BUNDLE_DEFAULTS = {
    "language": ("python", pa.string()),
    "repo": ("", pa.string()),
    "start_line": (None, pa.int32()),
    "signature": ("", pa.string()),
    "doc": ("", pa.string()),
    "license": ("", pa.string()),
}
OVERFETCH_GROWTH = 4  # the fallback for an index that takes no selector: k * 4, * 16, ... candidates
# bundle.json keys the query path reads; validate_bundle checks the whole contract, this only what we use.
QUERY_KEYS = ("name", "version", "dim", "max_length", "query_prefix", "encoders", "default_files", "index")
SEARCH_MODES = bundles.SEARCH_MODES  # dense, lexical, hybrid
HYBRID_MIN_CANDIDATES = 100  # hybrid fuses the union of each side's top max(100, 10 * k)
HYBRID_PER_K = 10
NO_LEXICAL = (
    "this bundle has no lexical index (bundle.json names none: made before hybrid search), so only dense"
)


@dataclass(frozen=True)
class Hit:
    """One search result; ``id`` is the FAISS id (= row of index_meta.parquet)."""

    rank: int
    score: float
    id: int
    language: str | None
    repo: str
    path: str
    start_line: int | None  # 1-based; None when the url had no #L<start>
    func_name: str
    url: str
    code: str
    signature: str = ""  # the header on one line ("def f(x):"); "" in bundles made before it
    doc: str = ""  # the doc comment's first paragraph; "" without one (or in bundles made before it)
    license: str = ""  # SPDX expression of the code's licence; "" when none was found (or older bundles)

    def location(self) -> str:
        """Where to open it, relative to its source root: ``path:start_line`` (``json/decoder.py:42``); no
        ``:line`` when the line is unknown. Never the machine that built the bundle's own paths."""
        return f"{self.path}:{self.start_line}" if self.start_line else self.path

    def commit(self) -> str:
        """The commit of the git checkout it came from (``dir://repo@<commit>/...`` urls), else ""."""
        match = re.match(r"dir://[^/@]*@([0-9a-f]{40})/", self.url)
        return match.group(1) if match else ""

    def link(self, template: str) -> str:
        """``template`` with {path}, {line}, {repo}, {commit} and {func_name} filled in, e.g.
        ``https://host/org/repo/blob/{commit}/{path}#L{line}``; ValueError naming an unknown field."""
        fields = {
            "path": self.path,
            "line": self.start_line or 1,
            "repo": self.repo,
            "commit": self.commit() or "HEAD",
            "func_name": self.func_name,
        }
        try:
            return template.format(**fields)
        except (KeyError, IndexError, ValueError) as error:
            raise ValueError(f"--link-base {template!r}: {error!r}; fields: {', '.join(fields)}") from None

    def to_dict(self) -> dict:
        return {**asdict(self), "location": self.location()}


def check_link_template(template: str) -> None:
    """ValueError (Hit.link's, naming the field) for a ``--link-base`` template Hit.link cannot fill."""
    Hit(0, 0.0, 0, None, "", "", None, "", "", "").link(template)


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
    folder = resolve_latest(registry or ".", name)
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
    """The bundle files a query reads (relative paths), bundle.json aside: the tokenizer, the query
    encoder, the index and its metadata, then the lexical index's files when the bundle has one and an
    on-disk IVF index's inverted lists (``index.ivfdata``) when it has them."""
    index = bundle["index"]
    ivfdata = [index["ivfdata"]] if index.get("ivfdata") else []  # an on-disk IVF index's inverted lists
    return (
        [
            bundles.TOKENIZER_FILE,
            query_encoder_file(bundle, precision),
            index.get("file", bundles.INDEX_FILE),
            index.get("meta", bundles.META_FILE),
        ]
        + lexical_files(bundle)
        + ivfdata
    )


def lexical_files(bundle: dict) -> list[str]:
    """The files of the bundle's lexical index (``lexical.dir``/..., as bundle.json ``files`` lists them)."""
    lexical = bundle.get("lexical")
    if not isinstance(lexical, dict) or not isinstance(lexical.get("dir"), str):
        return []
    prefix = lexical["dir"].rstrip("/") + "/"
    listed = {name for name in (bundle.get("files") or {}) if name.startswith(prefix)}
    # The files every bm25s folder holds are named even when bundle.json does not list them, so that
    # dropping one from ``files`` cannot skip its check.
    return sorted(listed | {prefix + name for name in bundles.LEXICAL_FILES})


def check_bundle_json(bundle: dict, where: str) -> dict:
    """Raise BundleError unless bundle.json has what the query path reads; returns it."""
    if not isinstance(bundle, dict):
        raise bundles.BundleError(
            f"{where} is not a usable release bundle", ["bundle.json is not a JSON object"]
        )
    problems = bundles.check_keys(bundle, QUERY_KEYS)
    if isinstance(bundle.get("max_length"), int) and not isinstance(bundle["max_length"], bool):
        if bundle["max_length"] < 1:
            problems.append(
                f"bundle.json 'max_length' is {bundle['max_length']}, expected a positive integer"
            )
    problems += bundles.check_file_names(bundle)  # nothing it names may lie outside the bundle
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


def verify_files(bundle_dir: Path, bundle: dict, names: Sequence[str]) -> None:
    """Raise BundleError unless every file in ``names`` has the size and sha256 bundle.json lists for it.

    Run once per Searcher (a process start: ``semcode search``, a ``serve`` replica): a local bundle whose
    files changed after assembly is refused, with each file named, as a downloaded S3 file is. Hashing
    reads every byte once (about 0.1 s per 100 MB here), so a 100k-function bundle adds a fraction of a
    second to a start that already reads those bytes.
    """
    listed = bundle.get("files") or {}
    problems = []
    for name in names:
        path = bundle_dir / name
        if name not in listed:
            problems.append(f"{name} is not listed in bundle.json files, so it cannot be verified")
        elif not _same_file(path, listed[name]):
            problems.append(f"{name}: size or sha256 does not match bundle.json (changed after assembly)")
    if problems:
        raise bundles.BundleError(f"{bundle_dir} failed its integrity check; refusing to serve it", problems)


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
        local = Path(storage.contained_join(target, name, f"{uri}: bundle.json file"))
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
    with storage.unique_partial(target / bundles.BUNDLE_JSON) as partial:  # other processes share the cache
        partial.write_text(bundle_text)
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


def check_text(text: str, what: str) -> str:
    """``text`` when it can be written as UTF-8; else ValueError naming ``what`` and where. A JSON body's
    ``"\\ud800"`` (a lone surrogate) and a command-line argument's invalid UTF-8 bytes (which Python keeps as
    surrogates) reach here as such strings; no tokenizer can encode them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(
            f"{what} is not valid UTF-8 text ({error.reason}: {text[error.start : error.end]!r} at character "
            f"{error.start})"
        ) from None
    return text


class IndexChanged(RuntimeError):
    """A served index file changed on disk after it was loaded (size, mtime or inode)."""


def file_stamp(path: Path) -> tuple[int, int, int, int]:
    """(size, mtime in ns, inode, device) of ``path``: what changes when a file is rewritten or replaced."""
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_dev


class Searcher:
    """A loaded bundle: ``search(query, k, language)`` and ``search_batch(queries, k, language)`` return
    ranked ``Hit`` lists.

    ``encode_calls`` counts encoder runs (the service batches concurrent requests into one).
    Not thread-safe by itself: call it from one thread at a time (the service's batcher does).
    """

    def __init__(
        self,
        bundle_dir: str | os.PathLike[str],
        precision: str | None = None,
        threads: int = 0,
        mmap_index: bool = True,
    ) -> None:
        started = time.perf_counter()
        self.bundle_dir = Path(bundle_dir)
        self.bundle = check_bundle_json(bundles.read_bundle_json(self.bundle_dir), str(self.bundle_dir))
        tokenizer, encoder_file, index_file, meta_file = query_files(self.bundle, precision)[:4]
        missing = [
            n for n in (tokenizer, encoder_file, index_file, meta_file) if not (self.bundle_dir / n).is_file()
        ]
        if missing:
            raise FileNotFoundError(f"bundle {self.bundle_dir} lacks {', '.join(missing)}")
        verify_files(self.bundle_dir, self.bundle, query_files(self.bundle, precision))
        self.encoder_file = encoder_file
        try:
            self.encoder = OnnxEncoder(
                self.bundle_dir / encoder_file,
                self.bundle_dir / tokenizer,
                int(self.bundle["max_length"]),
                self.bundle["query_prefix"],
                threads=threads,
            )
        except Exception as error:  # ONNX Runtime's own types (e.g. external data it refuses to open)
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
            raise bundles.BundleError(
                f"{self.bundle_dir} is not a usable release bundle",
                [f"{encoder_file} or {tokenizer} cannot be loaded ({type(error).__name__}: {reason})"],
            ) from None
        # The index files as loaded: a file rewritten in place under a mapped index gives wrong answers (same
        # size) or SIGBUS (shorter), so check_unchanged() refuses to search once one differs; mmap_index=False
        # reads the index into memory (an on-disk IVF index's .ivfdata stays mapped).
        ivfdata = self.bundle["index"].get("ivfdata")
        index_files = [index_file] + ([ivfdata] if ivfdata else [])
        self.index_stamps = {name: file_stamp(self.bundle_dir / name) for name in index_files}
        self.index = load_index(self.bundle_dir / index_file, mmap=mmap_index)
        self.meta = read_meta(self.bundle_dir / meta_file)
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
        # One selector per language, built once: a filtered query then costs no more set-up than a plain one.
        self.language_ids = language_ids(self.meta["language"])
        self.selectors = {name: id_selector(ids) for name, ids in self.language_ids.items()}
        self.lexical = load_lexical(self.bundle_dir, self.bundle, self.size)
        self.fusion = fusion_spec(
            self.bundle.get("fusion") or DEFAULT_FUSION
        )  # rule, weight[, question_weight][, internal_penalty]
        self.internal = (  # [C] bool, the rows hybrid ranks lower by the spec's internal_penalty
            internal_definitions(self.meta["func_name"].to_pylist())
            if "internal_penalty" in self.fusion
            else None
        )
        self.modes = SEARCH_MODES if self.lexical is not None else ("dense",)
        self.default_mode = self.bundle.get("default_mode", "dense") if self.lexical is not None else "dense"
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
            "languages": self.language_counts(),
            "modes": list(self.modes),
            "default_mode": self.default_mode,
            "fusion": self.fusion,
        }

    def language_counts(self) -> dict[str, int]:
        """{language: functions in the index}, most first."""
        return {name: len(ids) for name, ids in self.language_ids.items()}

    def check_language(self, language: str | Sequence[str] | None) -> tuple[str, ...] | None:
        """``language`` ("go", "go,rust", or a list of those) as the bundle's language names, lower-cased,
        each once; None: no filter. ValueError names a language the bundle lacks and lists those it has."""
        if language is None:
            return None
        parts = [language] if isinstance(language, str) else list(language)
        names: list[str] = []
        for part in parts:
            if not isinstance(part, str):
                raise ValueError(f"language must be a string or a list of strings, got {part!r}")
            for name in part.split(","):
                key = name.strip().lower()
                if key and key not in names:
                    names.append(key)
        present = ", ".join(f"{name} ({count})" for name, count in self.language_counts().items()) or "none"
        if not names:
            raise ValueError(f"language is empty; this bundle has: {present}")
        for name in names:
            if name in self.language_ids:
                continue
            from semcode.data.languages import LANGUAGES  # only to word the error (it loads tree-sitter)

            if name in LANGUAGES:
                raise ValueError(f"language {name!r}: this bundle has no {name} functions; it has: {present}")
            raise ValueError(
                f"unknown language {name!r}; this bundle has: {present} (semcode supports: {', '.join(LANGUAGES)})"
            )
        return tuple(names)

    def encode(self, queries: Sequence[str]) -> np.ndarray:
        """float32 [len(queries), dim] unit vectors, in one encoder run (up to the encoder's batch size).
        ValueError when the tokenizer cannot encode a query (a string that is not UTF-8, a pre-tokenizer
        regex that gives up: HF tokenizers panics, a BaseException, which is turned into the ValueError)."""
        self.encode_calls += 1
        try:
            return self.encoder.encode([check_text(query, "the query") for query in queries])
        except BaseException as error:
            if type(error).__name__ != "PanicException":  # pyo3's: a Rust panic inside tokenizers
                raise
            reason = (str(error).strip().splitlines() or ["?"])[0]
            raise ValueError(f"the bundle's tokenizer failed on the query ({reason})") from None

    def check_unchanged(self) -> None:
        """IndexChanged unless every index file still has the size, mtime and inode it had when loaded."""
        for name, stamp in self.index_stamps.items():
            try:
                now = file_stamp(self.bundle_dir / name)
            except OSError as error:
                raise IndexChanged(
                    f"{self.bundle_dir / name} is gone since it was loaded ({error})"
                ) from None
            if now != stamp:
                raise IndexChanged(
                    f"{self.bundle_dir / name} changed on disk since it was loaded (size {stamp[0]:,} -> "
                    f"{now[0]:,} bytes, mtime or inode changed): refusing to search it; restart to load the "
                    "bundle again"
                )

    def check_mode(self, mode: str | None) -> str:
        """``mode`` (None: the bundle's default_mode) if this bundle offers it; ValueError names a bad one
        and lists the modes (a bundle without a lexical index offers dense only)."""
        if mode is None:
            return self.default_mode
        if mode not in SEARCH_MODES:
            raise ValueError(f"mode {mode!r} is not one of {list(SEARCH_MODES)}")
        if mode not in self.modes:
            raise ValueError(f"mode {mode!r}: {NO_LEXICAL} (modes: {list(self.modes)})")
        return mode

    def search_vectors(
        self, vectors: np.ndarray, k: int, language: str | Sequence[str] | None = None
    ) -> list[list[Hit]]:
        """Dense: the top ``k`` functions for each query vector [Q, dim], only of ``language`` when given
        (see check_language); fewer when the index (or that language) holds fewer."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        scores, ids = self._dense_top(vectors, k, self.check_language(language))
        return self._hits(scores, ids)

    def lexical_search(
        self, queries: Sequence[str], k: int, language: str | Sequence[str] | None = None
    ) -> list[list[Hit]]:
        """Lexical: the top ``k`` BM25 hits of each query, of ``language`` when given; only functions that
        share a word with the query (fewer than k, or none)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.check_mode("lexical")
        wanted = self._wanted(self.check_language(language))
        tops = [top_positive(self.lexical.query_scores(query), k, wanted) for query in queries]
        return self._hits([scores for scores, _ in tops], [ids for _, ids in tops])

    def hybrid_search(
        self,
        queries: Sequence[str],
        vectors: np.ndarray,
        k: int,
        language: str | Sequence[str] | None = None,
    ) -> list[list[Hit]]:
        """Hybrid: for each query (text and vector [Q, dim]) the top ``k`` of the union of its dense and
        lexical top N, ranked by the bundle's fusion rule (module docstring), of ``language`` when given."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.check_mode("hybrid")
        languages = self.check_language(language)
        n = max(HYBRID_MIN_CANDIDATES, HYBRID_PER_K * k)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        dense_scores, dense_ids = self._dense_top(vectors, n, languages)  # [Q, n'] each
        wanted = self._wanted(languages)
        top_scores, top_ids = [], []
        for row, query in enumerate(queries):
            bm25 = self.lexical.query_scores(query)  # [C]
            _, lexical_ids = top_positive(bm25, n, wanted)  # [n''] ids
            found = dense_ids[row] >= 0
            ids = np.union1d(dense_ids[row][found], lexical_ids)  # [U] ascending
            cosines = self._cosines(vectors[row], ids, dense_ids[row][found], dense_scores[row][found])
            internal = None if self.internal is None else self.internal[ids]
            fused = fuse_queries(cosines[None], bm25[ids][None], [query], self.fusion, internal)[0]
            order = np.argsort(-fused, kind="stable")[:k]  # ties: the smaller id first
            top_scores.append(fused[order])
            top_ids.append(ids[order])
        return self._hits(top_scores, top_ids)

    def search_encoded(
        self,
        queries: Sequence[str],
        vectors: np.ndarray | None,
        k: int,
        language: str | Sequence[str] | None = None,
        mode: str | None = None,
    ) -> list[list[Hit]]:
        """The top ``k`` of each query in ``mode`` (None: the bundle's default), given the query vectors
        [Q, dim] already encoded (unused, and may be None, in lexical mode). IndexChanged when an index
        file changed on disk since it was loaded (check_unchanged)."""
        self.check_unchanged()
        mode = self.check_mode(mode)
        if mode == "lexical":
            return self.lexical_search(queries, k, language)
        if vectors is None:
            raise ValueError(f"mode {mode} needs the query vectors")
        if mode == "hybrid":
            return self.hybrid_search(queries, vectors, k, language)
        return self.search_vectors(vectors, k, language)

    def _dense_top(
        self, vectors: np.ndarray, k: int, languages: tuple[str, ...] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(cosines, ids) [Q, k'] of the dense top k, -1 padded; among ``languages``' functions when given."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        # One FAISS thread: HNSW/IVF answer a query in well under a millisecond, and waking OpenMP workers
        # costs more than it saves, on a busy machine a lot more (semcode.index; bench/bench_search.py:
        # a batch of 8 over 100k vectors took 1.8 ms with one thread, 7 ms with two, on 2 shared cores).
        with omp_threads(1):
            if languages is None:
                return self.index.search(vectors, min(k, self.size))
            return self._search_languages(vectors, k, languages)

    def _wanted(self, languages: tuple[str, ...] | None) -> np.ndarray | None:
        """bool [C]: the functions of ``languages`` (None: no filter)."""
        if languages is None:
            return None
        wanted = np.zeros(self.size, dtype=bool)
        for name in languages:
            wanted[self.language_ids[name]] = True
        return wanted

    def _cosines(
        self, vector: np.ndarray, ids: np.ndarray, dense_ids: np.ndarray, dense_scores: np.ndarray
    ) -> np.ndarray:
        """float32 [U] cosines of ``vector`` [dim] with the functions ``ids`` [U] (ascending): the dense
        top's own scores where it found them, else the stored vectors' (FAISS reconstruct). An index
        that cannot reconstruct gives those the lowest cosine of the dense top instead, which bounds
        theirs from above."""
        cosines = np.empty(len(ids), dtype=np.float32)
        missing = np.ones(len(ids), dtype=bool)
        positions = np.searchsorted(ids, dense_ids)  # every dense id is in ids
        cosines[positions] = dense_scores
        missing[positions] = False
        if missing.any():
            try:
                stored = self.index.reconstruct_batch(ids[missing].astype(np.int64))  # [m, dim]
                cosines[missing] = stored @ vector
            except RuntimeError:  # an index type without reconstruct (none that build_index makes)
                cosines[missing] = dense_scores.min() if len(dense_scores) else 0.0
        return cosines

    def _hits(self, scores: Sequence[np.ndarray], ids: Sequence[np.ndarray]) -> list[list[Hit]]:
        """Hit lists from each query's scores and ids (1-D each, best first; ids -1 are padding)."""
        ids = [np.asarray(query_ids) for query_ids in ids]
        found = np.concatenate([query_ids[query_ids >= 0] for query_ids in ids]) if ids else np.zeros(0)
        found = np.unique(found.astype(np.int64))
        rows = self.meta.take(pa.array(found, type=pa.int64())).to_pylist() if len(found) else []
        by_id = dict(zip(found.tolist(), rows, strict=True))
        results = []
        for query_scores, query_ids in zip(scores, ids, strict=True):
            hits = []
            for score, faiss_id in zip(np.asarray(query_scores).tolist(), query_ids.tolist(), strict=True):
                if faiss_id < 0:
                    continue
                hits.append(_hit(len(hits) + 1, float(score), int(faiss_id), by_id[faiss_id]))
            results.append(hits)
        return results

    def _search_languages(
        self, vectors: np.ndarray, k: int, languages: tuple[str, ...]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) [Q, k'] among the functions of ``languages``, k' = min(k, how many they have)."""
        selected = sum(len(self.language_ids[name]) for name in languages)
        k = min(k, selected)
        if selected == self.size:  # every function is of these languages: nothing to filter
            return self.index.search(vectors, k)
        selector = union_selector([self.selectors[name] for name in languages])
        found = restricted_search(self.index, vectors, k, selector, selected / self.size)
        if found is not None:
            return found
        # This index type takes no selector (e.g. a pre-transformed one): rank more and more candidates
        # (k * 4, * 16, ...) and keep those of the languages, until each query has k or all were ranked.
        wanted = np.zeros(self.size, dtype=bool)
        for name in languages:
            wanted[self.language_ids[name]] = True
        fetch = k
        while True:
            fetch = min(self.size, fetch * OVERFETCH_GROWTH)
            scores, ids = self.index.search(vectors, fetch)
            keep = (ids >= 0) & wanted[np.maximum(ids, 0)]
            if fetch == self.size or bool((keep.sum(axis=1) >= k).all()):
                break
        top_scores = np.full((len(vectors), k), -np.inf, dtype=np.float32)
        top_ids = np.full((len(vectors), k), -1, dtype=np.int64)
        for row in range(len(vectors)):
            columns = np.flatnonzero(keep[row])[:k]
            top_scores[row, : len(columns)] = scores[row, columns]
            top_ids[row, : len(columns)] = ids[row, columns]
        return top_scores, top_ids

    def search_batch(
        self,
        queries: Sequence[str],
        k: int,
        language: str | Sequence[str] | None = None,
        mode: str | None = None,
    ) -> list[list[Hit]]:
        """The top ``k`` of each of ``queries`` (of ``language``) in ``mode`` (None: the bundle's default):
        one encoder run and one FAISS search for all of them (none in lexical mode)."""
        if not queries:
            return []
        self.check_language(language)  # before the encoder runs
        mode = self.check_mode(mode)
        vectors = None if mode == "lexical" else self.encode(queries)
        return self.search_encoded(queries, vectors, k, language, mode)

    def search(
        self,
        query: str,
        k: int = 10,
        language: str | Sequence[str] | None = None,
        mode: str | None = None,
    ) -> list[Hit]:
        return self.search_batch([query], k, language, mode)[0]


def load_lexical(bundle_dir: Path, bundle: dict, ntotal: int) -> BM25Index | None:
    """The bundle's lexical index (bundle.json ``lexical``), or None for a bundle without one."""
    lexical = bundle.get("lexical")
    if lexical is None:
        return None
    folder = bundle_dir / str(lexical.get("dir", bundles.LEXICAL_DIR))
    if not folder.is_dir():
        raise FileNotFoundError(
            f"bundle {bundle_dir}: bundle.json names the lexical index {folder.name}/, which is missing"
        )
    index = BM25Index.load(folder, stopwords=bool(lexical.get("stopwords", False)))
    if index.n_codes != ntotal:
        raise ValueError(
            f"bundle {bundle_dir}: the lexical index holds {index.n_codes} functions but the FAISS index "
            f"{ntotal} (BM25 row i must be FAISS id i)"
        )
    return index


def top_positive(
    scores: np.ndarray, n: int, wanted: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(scores [n'], ids [n']) of the ``n`` best of ``scores`` [C] that are > 0 (and ``wanted`` [C] bool),
    best first, ties by id; n' <= n."""
    eligible = scores > 0
    if wanted is not None:
        eligible &= wanted
    candidates = np.flatnonzero(eligible)  # [c]
    if len(candidates) > n:
        candidates = candidates[np.argpartition(-scores[candidates], n - 1)[:n]]
    ids = candidates[np.lexsort((candidates, -scores[candidates]))]
    return scores[ids], ids


def read_meta(path: Path) -> pa.Table:
    """index_meta.parquet as META_COLUMNS; the columns an older bundle lacks filled in (OLD_BUNDLE_DEFAULTS)."""
    meta = pq.ParquetFile(path)
    names = meta.schema_arrow.names
    missing = [c for c in META_COLUMNS if c not in names and c not in OLD_BUNDLE_DEFAULTS]
    if missing:
        raise ValueError(f"{path}: no column(s) {missing}; it has {names}")
    table = meta.read(columns=[c for c in META_COLUMNS if c in names])
    for name, (value, arrow_type) in OLD_BUNDLE_DEFAULTS.items():
        if name not in table.column_names:
            table = table.append_column(name, pa.array([value] * table.num_rows, type=arrow_type))
    return table.select(list(META_COLUMNS))


def language_ids(languages: pa.ChunkedArray) -> dict[str, np.ndarray]:
    """{language: the FAISS ids (= rows) of its functions, int64 ascending}, most functions first (then by
    name); rows without a language are in none."""
    encoded = pc.dictionary_encode(pc.fill_null(languages, "").combine_chunks())
    codes = encoded.indices.to_numpy()
    groups = {
        name: np.flatnonzero(codes == code).astype(np.int64)
        for code, name in enumerate(encoded.dictionary.to_pylist())
        if name
    }
    return dict(sorted(groups.items(), key=lambda item: (-len(item[1]), item[0])))


def _hit(rank: int, score: float, faiss_id: int, row: dict) -> Hit:
    return Hit(
        rank=rank,
        score=score,
        id=faiss_id,
        language=row["language"] or None,
        repo=row["repo"] or "",
        path=row["path"] or "",
        start_line=row["start_line"],
        func_name=row["func_name"] or "",
        url=row["url"] or "",
        code=row["code"] or "",
        signature=row["signature"] or "",
        doc=row["doc"] or "",
        license=row["license"] or "",
    )
