"""Stage index: make any code searchable with an encoder that exists already (or the zero-shot start), no
training; and keep it fresh.

    semcode index --encoder minilm --source dir:./repo --out ./repo-index
    semcode index --encoder s3://models/semcode/latest --source dir:./repo --out ./repo-index
    semcode index --update ./repo-index

``run`` (``--out``):

1. every input is checked before any work: the sources (parsed, their paths there; ``humaneval:`` is
   evaluation only), the encoder (``minilm``, or a release bundle: its folder, a registry version folder
   or ``<registry>/<name>/latest``, local or s3://, as ``semcode search`` finds one), ``--out`` new or
   empty;
2. the encoder's files go into a temporary folder beside ``--out`` (semcode.index_bundle: a bundle's
   tokenizer, ONNX files and encoder/, each checked against its sha256; the zero-shot start exported to
   fp32 and int8 ONNX as export_onnx exports an encoder);
3. every source is read as ingest reads it (semcode.data.sources: the same extraction and file rules;
   ``.gitignore`` honoured in ``dir:`` sources, vendored, generated and minified files skipped, all
   counted), keeping every definition, documented or not: an index needs no doc comments, training does;
   nothing is deduplicated (two copies of a function are two places to find it);
4. every definition's search document (``document`` view, at most ``max_length`` tokens) is embedded
   with the bundle's default ONNX encoder (int8 unless its export found int8 too lossy), and the FAISS
   index, its metadata and the BM25 index are built and measured as build-index builds them
   (semcode.indexing);
5. the bundle is assembled and validated (semcode.index_bundle), then the folder is renamed onto ``--out``.

``update`` (``--update DIR``, a local folder): DIR's bundle.json ``source`` says which sources, encoder,
document view and length made it; the sources are read again (or the ``--source`` given instead): of a
local ``dir:`` only the files whose sha256 differs from the one recorded in DIR (``source_files.parquet``)
are parsed, the other files keep their rows (semcode.data.refresh), any other source is read whole. Every
definition whose search document is unchanged keeps the vector DIR holds for it, byte for byte
(semcode.index_bundle.reusable_vectors, keyed by the document's sha256), only new and changed ones are
embedded, deleted ones are gone; the index is rebuilt from the vectors (the same rows, in the same order,
as a rebuild of the code gives) and the new bundle replaces DIR in one rename (the old folder moved aside
first and removed after: a reader sees the old or the new one), one update at a time (a lock file
``.DIR.lock`` beside it).

``refresh`` (the index pipeline's task, src/semcode/pipeline/index_pipeline.py): a copy of the previous
index (a folder, a registry version or ``<registry>/<name>/latest``, local or s3://) updated as above when it
was made with the same encoder and settings, else a new index (also the first run, nothing published yet).

Writes the release bundle contract's files but decoder/ (``semcode generate`` refuses the bundle in one
line). bundle.json ``source``: ``kind`` "index", ``encoder`` (spec, name, version, sha256 of its weights
and of each ONNX file), ``sources`` (each spec with its root, its git commit when it is a checkout, files,
definitions, those with a doc comment, and what was skipped by reason; an update counts the files it
parsed and kept, and skips among the parsed ones), ``document``, ``document_max_length``,
``stage_configs`` (this config, the build-index config it ran) and ``update`` (what the last run
embedded, reused and dropped).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from semcode import __version__, locks, storage
from semcode import bundle as bundles
from semcode import config as cfg
from semcode.config import ConfigError, field
from semcode.contract import INDEX_FILE, META_FILE, METRICS_FILE, MINILM_ALIAS
from semcode.corpus import DOCUMENT_VIEWS, BuildIndexConfig, search_documents
from semcode.data.languages import check_languages
from semcode.data.pairs import write_shards
from semcode.data.refresh import code_files, file_digests, reread, rows_by_file
from semcode.data.sources import read_source
from semcode.data.sources.listing import git_head
from semcode.data.sources.rows import ExtractOptions, SourceStats
from semcode.data.sources.spec import SourceError, SourceSpec, check_exists, parse_spec
from semcode.embed import EmbedFn, bundle_embed_fn
from semcode.embedding_cache import EmbeddingCache, cached_embed_fn, text_keys
from semcode.index_bundle import (
    KIND,
    SOURCE_FILES,
    ZERO_SHOT_VERSION,
    assemble_index_bundle,
    bundled_spec,
    copy_encoder,
    encoder_record,
    export_zero_shot,
    matches_listing,
    reusable_vectors,
)
from semcode.indexing import index_corpus
from semcode.progress import log

TAG = "index"
UPDATE_SETTINGS = ("version", "threads", "workers")  # what --update may set anew: no vector depends on them
IDENTITY = ("repo", "path", "func_name")  # what names a definition across two reads of its sources
FILE_COLUMNS = ("source", "path", "sha256")  # SOURCE_FILES
# Ingest's reject reasons that are pair rules only: such a definition is indexed all the same (index_all).
PAIR_RULES = ("no_docstring", "short_docstring", "test_name", "dunder", "too_short", "too_long")


@dataclass(frozen=True)
class IndexConfig:
    name: str = field(
        "", "bundle name ('' = the first dir: source's folder name + '-index', else 'code-index')"
    )
    version: str = field("", "bundle version ('' = UTC time and a short hash of the index's metadata)")
    languages: tuple[str, ...] = field(
        (), "read only these languages from dir: and JSONL sources (empty = all); also comma-separated"
    )
    max_file_bytes: int = field(1_000_000, "skip source files bigger than this (generated code)")
    max_line_chars: int = field(10_000, "skip source files with a longer line (minified code, data)")
    max_code_chars: int = field(8000, "skip definitions longer than this many characters (0 = no limit)")
    workers: int = field(1, "processes that parse files (1 = in this process)")
    document: str = field(
        DOCUMENT_VIEWS[0], f"what each definition is embedded and BM25-indexed as: {DOCUMENT_VIEWS}"
    )
    max_length: int = field(0, "tokens per search document at most (0 = the encoder's max_length)")
    factory: str = field("", "FAISS index factory string ('' = chosen by the number of definitions)")
    recall_queries: int = field(100, "doc comments, sampled, that measure the index's recall@10 and latency")
    threads: int = field(0, "threads running the ONNX encoder (0 = every core)")
    seed: int = field(0, "seed of the recall sample and of any index training")

    def validate(self) -> None:
        if self.document not in DOCUMENT_VIEWS:
            raise ConfigError(f"document must be one of {list(DOCUMENT_VIEWS)}, got {self.document!r}")
        if self.version:
            bundles.check_version(self.version)
        if self.name and not bundles.VERSION_PATTERN.fullmatch(self.name):
            raise ConfigError(
                f"name {self.name!r}: 1-128 letters, digits, '.', '_' or '-' (it names folders)"
            )
        least = dict.fromkeys(("max_code_chars", "max_length", "threads", "seed"), 0)
        least.update(dict.fromkeys(("max_file_bytes", "max_line_chars", "workers", "recall_queries"), 1))
        for name, low in least.items():
            if getattr(self, name) < low:
                raise ConfigError(f"{name} must be >= {low}, got {getattr(self, name)}")
        try:
            check_languages(self.languages)
        except ValueError as error:
            raise ConfigError(f"languages: {error}") from None

    def extract_options(self) -> ExtractOptions:
        """Ingest's extraction, every definition kept (index_all): the rules for pairs do not apply here."""
        return ExtractOptions(
            max_code_chars=self.max_code_chars,
            index_all=True,
            max_file_bytes=self.max_file_bytes,
            max_line_chars=self.max_line_chars,
            languages=check_languages(self.languages),
            workers=self.workers,
        )

    def build_config(self, precision: str) -> BuildIndexConfig:
        """The build-index settings this index is built with (the index chosen by size, as there)."""
        return BuildIndexConfig(
            factory=self.factory,
            max_length=self.max_length,
            document=self.document,
            recall_queries=self.recall_queries,
            runtime=f"onnx-{precision}",
            device="cpu",
            seed=self.seed,
        )


# ---------------------------------------------------------------------------------------------
# Inputs, checked before any work


def check_sources(sources: Sequence[str]) -> list[SourceSpec]:
    """Every source parsed and there; a local dir: as its absolute path, so that ``--update`` finds it
    from anywhere. SourceError (a ValueError) names a bad one."""
    if not sources:
        raise SourceError("give at least one source to index, e.g. --source dir:./repo")
    specs = []
    for text in sources:
        spec = parse_spec(text)
        if spec.eval_only:
            raise SourceError(f"source {text!r} is an evaluation suite, not code to index")
        check_exists(spec)
        if spec.kind == "dir" and not storage.is_s3(spec.location):
            spec = parse_spec(f"dir:{os.path.abspath(spec.location)}")
        specs.append(spec)
    return specs


def encoder_folder(spec: str) -> str:
    """The bundle folder ``spec`` names (itself, or the version a ``latest`` pointer names); FileNotFoundError
    when it holds no bundle.json. ``minilm`` stays itself."""
    if spec == MINILM_ALIAS:
        return spec
    from semcode.serve.searcher import resolve_pointer

    folder = resolve_pointer(spec)
    if not storage.exists(storage.join(folder, bundles.BUNDLE_JSON)):
        raise FileNotFoundError(
            f"encoder {spec}: {folder} has no {bundles.BUNDLE_JSON}; give a release bundle (a run's bundle/, "
            f"a registry version or <registry>/<name>/latest, local or s3://) or {MINILM_ALIAS!r}"
        )
    return folder


def check_out(out_dir: str | Path) -> Path:
    """``out_dir`` when it is new or empty; FileExistsError (offering --update) otherwise."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(
            f"{out} exists and is not empty: pick a new folder, or refresh an index there with --update {out}"
        )
    return out


# ---------------------------------------------------------------------------------------------
# Reading, embedding, indexing


def source_record(spec: SourceSpec, stats: SourceStats, rows: list[dict]) -> dict:
    """bundle.json ``source.sources`` entry: the spec, where it is (a local dir's root and its git commit),
    its files, definitions, those with a doc comment, and what was skipped by reason (ingest's reject
    reasons but the pair rules, whose definitions are indexed)."""
    local_dir = spec.kind == "dir" and not storage.is_s3(spec.location)
    return {
        "spec": spec.text,
        "kind": spec.kind,
        "root": spec.location or spec.kind,
        "commit": git_head(spec.location) if local_dir else "",
        "files": stats.files_seen,
        "definitions": len(rows),
        "with_doc": sum(1 for row in rows if row["query"]),
        "skipped": {reason: n for reason, n in sorted(stats.rejects.items()) if reason not in PAIR_RULES},
    }


def read_one(
    spec: SourceSpec, options: ExtractOptions, previous: Previous | None
) -> tuple[list[dict], dict, dict[str, str] | None]:
    """(a source's definitions as corpus rows, its record, {path: sha256} of a local dir:'s files). A local
    dir: an update has read before (with this semcode) is read again file by file: only changed files are
    parsed (semcode.data.refresh); any other source is read whole."""
    local_dir = spec.kind == "dir" and not storage.is_s3(spec.location)
    if local_dir and previous is not None and previous.same_reader and spec.text in previous.digests:
        done = reread(spec, options, previous.digests[spec.text], previous.rows)
        stats = SourceStats(spec.text, spec.kind, files_seen=done.files_seen, rejects=done.rejects)
        record = {
            **source_record(spec, stats, done.rows),
            "files_parsed": done.files_read,
            "files_unchanged": done.files_kept,
        }
        return done.rows, record, done.digests
    digests = file_digests(code_files(spec, options)[0]) if local_dir else None  # before it is read
    result = read_source(spec, options, progress_tag=TAG)
    return result.corpus, source_record(spec, result.stats, result.corpus), digests


def read_sources(
    config: IndexConfig, specs: list[SourceSpec], previous: Previous | None = None
) -> tuple[list[dict], list[dict], dict[str, dict[str, str]]]:
    """(every definition of every source as a corpus row, a record per source, {spec: {path: sha256}} of
    the local dir: sources); ValueError when there is no definition at all."""
    options = config.extract_options()
    rows: list[dict] = []
    records, digests = [], {}
    for spec in specs:
        found, record, files = read_one(spec, options, previous)
        rows.extend(found)
        records.append(record)
        if files is not None:
            digests[spec.text] = files
        skipped = ", ".join(f"{reason}: {count}" for reason, count in record["skipped"].items()) or "nothing"
        log(
            TAG,
            f"{spec.text}: {record['files']} files, {record['definitions']} definitions ({record['with_doc']} "
            f"with a doc comment); skipped {skipped}",
        )
    if not rows:
        raise ValueError(f"sources {[spec.text for spec in specs]} hold no definitions to index")
    return rows, records, digests


def write_digests(digests: dict[str, dict[str, str]], path: Path) -> None:
    """SOURCE_FILES: one row (source, path, sha256) per file of the local dir: sources, for --update."""
    flat = [(source, name, digest) for source, files in digests.items() for name, digest in files.items()]
    columns = list(zip(*flat, strict=True)) if flat else [(), (), ()]
    table = pa.table(
        {name: pa.array(values, pa.string()) for name, values in zip(FILE_COLUMNS, columns, strict=True)}
    )
    pq.write_table(table, path, compression="zstd")


def read_digests(path: Path) -> dict[str, dict[str, str]]:
    """What write_digests wrote; {} for a bundle without the file."""
    if not path.is_file():
        return {}
    digests: dict[str, dict[str, str]] = {}
    for source, name, digest in zip(*(pq.read_table(path)[c].to_pylist() for c in FILE_COLUMNS), strict=True):
        digests.setdefault(source, {})[name] = digest
    return digests


def default_version(meta_path: Path) -> str:
    """``20250101T120000Z-1a2b3c4d``: UTC time and a short hash of the index's metadata (what it holds)."""
    now = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{now}-{bundles.sha256_file(meta_path)[:8]}"


def default_name(specs: list[SourceSpec]) -> str:
    """``<folder>-index`` of the first dir: source, else ``code-index``."""
    for spec in specs:
        if spec.kind == "dir":
            folder = re.sub(r"[^A-Za-z0-9._-]", "-", spec.location.rstrip("/").rsplit("/", 1)[-1]).strip(
                ".-_"
            )
            if folder:
                return f"{folder[:100]}-index"
    return "code-index"


@dataclass
class Previous:
    """What the bundle an update replaces holds: its vectors by document (None: not stored exactly), its
    index metadata rows by file (semcode.data.refresh.rows_by_file) and the definitions they name, the
    sha256 of each source file it read, whether it was read as this semcode reads, and its bundle.json."""

    known: tuple[np.ndarray, np.ndarray] | None
    rows: dict[str, list[dict]]
    identities: set[tuple[str, str, str]]
    digests: dict[str, dict[str, str]]
    same_reader: bool
    bundle: dict


def previous_of(folder: Path, bundle: dict, view: str) -> Previous:
    """The Previous of the index-only bundle in ``folder`` (its bundle.json: ``bundle``)."""
    meta = pq.read_table(folder / META_FILE).to_pylist()
    return Previous(
        known=reusable_vectors(folder, view),
        rows=rows_by_file(meta),
        identities={(row["repo"], row["path"], row["func_name"]) for row in meta},
        digests={
            bundled_spec(spec, folder): files for spec, files in read_digests(folder / SOURCE_FILES).items()
        },
        same_reader=bundle.get("semcode_version") == __version__,
        bundle=bundle,
    )


def embedding_fn(
    bundle_dir: Path, encoder: dict, config: IndexConfig, previous: Previous | None, cache_dir: Path
) -> EmbedFn:
    """The bundle's default ONNX encoder at the configured length; with ``previous``, the vectors it holds
    are taken for the documents they were made from (an embedding cache of them), the rest embedded."""
    max_length = config.max_length or int(encoder["max_length"])
    embed = bundle_embed_fn(bundle_dir, {**encoder, "max_length": max_length}, None, config.threads)
    if previous is None or previous.known is None:
        return embed
    keys, vectors = previous.known
    cache = EmbeddingCache(
        cache_dir, {"update": str(bundle_dir), "max_length": max_length}, int(encoder["dim"])
    )
    cache.add(keys, vectors)
    return cached_embed_fn(embed, cache)


def changes(meta_path: Path, view: str, previous: Previous | None) -> dict:
    """What an update did, from the new index's metadata: definitions ``unchanged`` (vector reused),
    ``changed`` (same repo, path and name, new document), ``added``, ``removed``; a first index: ``embedded``."""
    meta = pq.read_table(meta_path, columns=["code", "doc", *IDENTITY])
    if previous is None:
        return {"definitions": meta.num_rows, "embedded": meta.num_rows}
    keys = text_keys(search_documents(meta, view), "code")
    old_keys = set() if previous.known is None else {key.tobytes() for key in previous.known[0]}
    reused = np.array([key.tobytes() in old_keys for key in keys], dtype=bool)
    names = list(zip(*(meta[column].to_pylist() for column in IDENTITY), strict=True))
    fresh = [name for name, kept in zip(names, reused, strict=True) if not kept]
    changed = sum(1 for name in fresh if name in previous.identities)
    return {
        "definitions": meta.num_rows,
        "embedded": len(fresh),
        "unchanged": int(reused.sum()),
        "changed": changed,
        "added": len(fresh) - changed,
        "removed": len(previous.identities - set(names)),
        "from_version": previous.bundle.get("version"),
    }


def build(
    config: IndexConfig,
    specs: list[SourceSpec],
    encoder: dict,
    encoder_info: dict,
    out: Path,
    encoder_metrics: dict | None = None,
    previous: Previous | None = None,
) -> dict:
    """Steps 3-5 into ``out``, which holds the encoder's files: read, embed, index, assemble; bundle.json."""
    started = time.perf_counter()
    max_length = config.max_length or int(encoder["max_length"])
    if max_length > int(encoder["max_length"]):
        raise ConfigError(f"max_length {max_length} is over the encoder's {encoder['max_length']} tokens")
    rows, records, digests = read_sources(config, specs, previous)
    write_digests(digests, out / SOURCE_FILES)
    build_config = config.build_config(encoder["default_precision"])
    with tempfile.TemporaryDirectory(prefix=".semcode-index-", dir=out.parent) as tmp:
        work = Path(tmp)
        write_shards(rows, work / "corpus")
        del rows
        embed = embedding_fn(out, encoder, config, previous, work / "reused")
        index_corpus(
            build_config,
            embed,
            int(encoder["dim"]),
            work / "corpus",
            work / "index",
            encoder=encoder_info["spec"],
        )
        update = changes(work / "index" / META_FILE, config.document, previous)
        update["seconds"] = round(time.perf_counter() - started, 2)
        source = {
            "kind": KIND,
            "encoder": encoder_info,
            "sources": records,
            "document": config.document,
            "document_max_length": max_length,
            "stage_configs": {
                "IndexConfig": cfg.to_dict(config),
                "BuildIndexConfig": cfg.to_dict(build_config),
            },
            "update": update,
        }
        return assemble_index_bundle(
            out,
            encoder,
            work / "index",
            name=config.name or default_name(specs),
            version=config.version or default_version(work / "index" / META_FILE),
            source=source,
            encoder_metrics=encoder_metrics,
        )


# ---------------------------------------------------------------------------------------------
# The stage


def run(config: IndexConfig, encoder: str, sources: Sequence[str], out_dir: str | Path) -> dict:
    """Index ``sources`` with ``encoder`` (a bundle spec or ``minilm``) into the new bundle ``out_dir``;
    returns its bundle.json."""
    config.validate()
    specs = check_sources(sources)
    folder = encoder_folder(encoder)
    out = check_out(out_dir)
    with storage.atomic_output(out) as partial:
        partial.mkdir()
        if folder == MINILM_ALIAS:
            encoder_bundle, encoder_metrics = export_zero_shot(partial), {}
        else:
            encoder_bundle = copy_encoder(folder, partial)
            metrics_uri = storage.join(folder, METRICS_FILE)
            encoder_metrics = (
                bundles.read_json(metrics_uri, "encoder metrics") if storage.exists(metrics_uri) else {}
            )
        info = encoder_record(encoder, encoder_bundle, partial)
        bundle = build(config, specs, encoder_bundle, info, partial, encoder_metrics)
    log(TAG, f"{out}: {summary(bundle)}")
    return bundle


def update(
    bundle_dir: str | Path, sources: Sequence[str] | None = None, settings: dict | None = None
) -> dict:
    """Refresh the index-only bundle ``bundle_dir`` (a local folder) from its sources (or ``sources``): only
    new and changed definitions are embedded; the new bundle replaces it atomically, one update at a time
    (a lock file beside it). The recorded config is kept but for ``settings`` (UPDATE_SETTINGS; the version
    is always a new one, a default one unless given). Returns the new bundle.json."""
    if storage.is_s3(str(bundle_dir)):
        raise ValueError(f"--update {bundle_dir}: refresh a local copy of the bundle, then publish it")
    folder = Path(bundle_dir)
    with locks.exclusive_lock(folder.parent / f".{folder.name}.lock"):
        old = bundles.read_bundle_json(folder)
        recorded = old.get("source") if isinstance(old.get("source"), dict) else {}
        if recorded.get("kind") != KIND:
            raise ValueError(
                f"{folder} was not made by semcode index (bundle.json source.kind is {recorded.get('kind')!r}): "
                "--update refreshes an index-only bundle; index this code anew with --encoder and --out"
            )
        configs = recorded.get("stage_configs") or {}
        config = cfg.from_dict(IndexConfig, configs.get("IndexConfig") or {}, source=f"{folder}/bundle.json")
        unknown = sorted(set(settings or {}) - set(UPDATE_SETTINGS))
        if unknown:
            raise ConfigError(
                f"--update keeps the recorded settings but {list(UPDATE_SETTINGS)}; got {unknown}"
            )
        config = dataclasses.replace(config, **{"version": "", **(settings or {})})
        config.validate()
        recorded_specs = [bundled_spec(entry["spec"], folder) for entry in recorded.get("sources") or []]
        specs = check_sources(sources or recorded_specs)
        check_unchanged(folder, old, (INDEX_FILE, META_FILE, SOURCE_FILES))
        with storage.atomic_output(folder) as partial:
            partial.mkdir()
            encoder_bundle = copy_encoder(str(folder), partial)
            previous = previous_of(folder, old, config.document)
            old_metrics = bundles.read_json(folder / METRICS_FILE, "bundle metrics")
            bundle = build(
                config,
                specs,
                encoder_bundle,
                recorded["encoder"],
                partial,
                old_metrics.get("encoder"),
                previous,
            )
    log(TAG, f"{folder}: {summary(bundle)}")
    return bundle


def refresh(
    config: IndexConfig, encoder: str, sources: Sequence[str], out_dir: str | Path, previous: str = ""
) -> dict:
    """What the index pipeline runs: ``previous`` (an index-only bundle: a folder, a registry version or
    ``<registry>/<name>/latest``, local or s3://) copied into the new folder ``out_dir`` and updated from
    ``sources``, when it was made with ``encoder`` and with ``config``'s settings (UPDATE_SETTINGS aside);
    otherwise, and when ``previous`` is '' or a ``latest`` with nothing published yet (the first run), a new
    index as ``run`` makes one. Returns the new bundle.json."""
    config.validate()
    folder = previous_folder(previous)
    reason = "" if folder is None else why_not_update(config, encoder, folder)
    if folder is None or reason:
        if reason:
            log(TAG, f"{previous}: {reason}: indexing anew")
        return run(config, encoder, sources, out_dir)
    out = check_out(out_dir)
    check_sources(sources)
    storage.copy_tree(folder, out)  # update() swaps in a fresh folder: the registry's marker does not stay
    return update(out, sources, {name: getattr(config, name) for name in UPDATE_SETTINGS})


def previous_folder(previous: str) -> str | None:
    """The bundle folder ``previous`` names; None for '' and for a ``latest`` pointer not published yet."""
    if not previous:
        return None
    if previous.rstrip("/").endswith("/" + bundles.LATEST) and not storage.exists(previous.rstrip("/")):
        log(TAG, f"{previous}: nothing published yet: a new index")
        return None
    from semcode.serve.searcher import resolve_pointer

    folder = resolve_pointer(previous)
    if not storage.exists(storage.join(folder, bundles.BUNDLE_JSON)):
        raise FileNotFoundError(f"previous index {previous}: {folder} has no {bundles.BUNDLE_JSON}")
    return folder


def why_not_update(config: IndexConfig, encoder: str, folder: str) -> str:
    """'' when the index-only bundle in ``folder`` can be updated into what ``config`` and ``encoder`` make
    (the same encoder name and version, the same settings but UPDATE_SETTINGS), else why not; ValueError
    when it is no index-only bundle."""
    recorded = bundles.read_bundle_json(folder).get("source") or {}
    if not isinstance(recorded, dict) or recorded.get("kind") != KIND:
        raise ValueError(f"{folder} was not made by semcode index: give an index-only bundle to update")
    wanted = (MINILM_ALIAS, ZERO_SHOT_VERSION)
    if encoder != MINILM_ALIAS:
        made = bundles.read_bundle_json(encoder_folder(encoder))
        wanted = (made["name"], made["version"])
    used = recorded.get("encoder") or {}
    if (used.get("name"), used.get("version")) != wanted:
        return f"made with encoder {used.get('name')} {used.get('version')}, not {wanted[0]} {wanted[1]}"
    configs = recorded.get("stage_configs") or {}
    old = cfg.from_dict(IndexConfig, configs.get("IndexConfig") or {}, source=f"{folder}/bundle.json")
    differ = [
        f"{item.name} {getattr(old, item.name)!r} (now {getattr(config, item.name)!r})"
        for item in dataclasses.fields(IndexConfig)
        if item.name not in UPDATE_SETTINGS and getattr(old, item.name) != getattr(config, item.name)
    ]
    return f"made with other settings: {', '.join(differ)}" if differ else ""


def check_unchanged(folder: Path, bundle: dict, names: Sequence[str]) -> None:
    """BundleError unless each of ``names`` the bundle lists has the size and sha256 its bundle.json says:
    an update takes rows and vectors from them."""
    listed = bundle.get("files") or {}
    problems = [
        f"{name}: size or sha256 does not match bundle.json (changed after assembly)"
        for name in names
        if name in listed and not matches_listing(folder / name, listed[name])
    ]
    if problems:
        raise bundles.BundleError(f"{folder} cannot be updated", problems)


def summary(bundle: dict) -> str:
    """One line on what an index run made: definitions, embedded and (an update) reused, the version."""
    done = bundle["source"]["update"]
    line = f"{done['definitions']} definitions searchable, {done['embedded']} embedded"
    if "unchanged" in done:
        line += (
            f" ({done['changed']} changed, {done['added']} added; {done['unchanged']} unchanged kept their "
            f"vectors; {done['removed']} removed)"
        )
    return f"{line}; {bundle['name']} {bundle['version']}"


EXAMPLES = """examples:
  semcode index --encoder minilm --source dir:./repo --out ./repo-index
  semcode index --encoder s3://models/semcode/latest --source dir:./repo --out ./repo-index
  semcode index --encoder runs/<run-id>/bundle --source dir:./api --source dir:./web --out ./index
  semcode index --update ./repo-index          # after a commit: only what changed is embedded
  semcode search ./repo-index "parse the config file" -k 5
"""


def main(argv: list[str] | None = None) -> int:
    description = (
        "Make code searchable with an encoder you have (a release bundle) or the zero-shot start (minilm), "
        "without training: a bundle that semcode search and serve read. --update refreshes one, embedding "
        "only the definitions that changed."
    )
    parser = argparse.ArgumentParser(
        "semcode index",
        description=description,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", metavar="DIR", help="the new bundle's folder (new or empty)")
    target.add_argument(
        "--update", metavar="DIR", help="refresh this index-only bundle from its sources, in place"
    )
    parser.add_argument(
        "--encoder",
        metavar="SPEC",
        help="a release bundle (folder, registry version or <registry>/<name>/latest; local or s3://) or minilm",
    )
    parser.add_argument(
        "--source",
        action="append",
        default=None,
        metavar="SPEC",
        help="code to index, KIND:LOCATION (dir:PATH, python:stdlib, csn:PATH, ...), repeatable; with "
        "--update: instead of the recorded ones",
    )
    cfg.add_arguments(parser, IndexConfig)
    args = parser.parse_args(argv)
    if args.languages:
        args.languages = cfg.comma_list(args.languages)
    try:
        if args.update:
            if args.encoder:
                parser.error("--update keeps the bundle's own encoder: leave out --encoder")
            names = [f.name for f in dataclasses.fields(IndexConfig) if getattr(args, f.name) is not None]
            typed = cfg.from_dict(IndexConfig, {name: getattr(args, name) for name in names})  # flags' types
            bundle = update(args.update, args.source, {name: getattr(typed, name) for name in names})
            where = args.update
        else:
            if not args.encoder or not args.source:
                parser.error("--out needs --encoder (a bundle or minilm) and at least one --source")
            config = cfg.from_args(IndexConfig, args, section="index")
            bundle = run(config, args.encoder, args.source, args.out)
            where = args.out
    except (*cfg.BAD_INPUT_ERRORS, OSError) as error:  # OSError: a full disk, an unreachable S3 endpoint
        return cfg.bad_input("index", error)
    print(f'{where}: {summary(bundle)}\ntry: semcode search {where} "what you look for"')
    return 0


if __name__ == "__main__":
    sys.exit(main())
