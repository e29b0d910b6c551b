"""The index-only bundle (``semcode index``): an encoder someone already has, a new index of any code.

An index-only bundle follows the release bundle contract (semcode.bundle, DESIGN.md), so ``semcode
search``, ``serve`` and ``generate`` read it unchanged; what sets it apart:

- its encoder files (tokenizer.json, every ONNX file, encoder/) are those of the bundle it borrowed the
  encoder from (``copy_encoder``, each file checked against the sha256 that bundle lists), or of the
  zero-shot start, all-MiniLM-L6-v2, exported here as export_onnx exports an encoder
  (``export_zero_shot``: fp32 and int8 files, default int8);
- its index is new (semcode.indexing over the code it was given); it has no decoder (``decoder`` null:
  ``semcode generate`` says so) and no evaluation of its own: ``metrics.primary`` and the summary are the
  encoder bundle's (measured on that bundle's test split, not on this code), none for the zero-shot start;
- search modes: the encoder bundle's fusion and default mode (chosen by its evaluate); for the zero-shot
  start hybrid, convex 0.1 (what bench/fusion_choice.py chose for it on a mix of docstring and question
  suites, above dense on each);
- bundle.json ``source`` says what it is: ``{"kind": "index", "encoder": {spec, name, version, digest
  (sha256 of its weights), onnx (sha256 of each ONNX file)}, "sources": [{spec, kind, root, commit, repo,
  files, definitions, documented, rejects}], "document", "document_max_length", "stage_configs",
  "update"}``, which ``semcode index --update`` reads back. A local source is recorded relative to the
  bundle folder (``dir:../repo``: ``bundled_spec`` reads it back), every other local path symbolically
  (semcode.portable.portable): the bundle names no folder of the machine that made it.

``source_files.parquet`` (SOURCE_FILES; listed in bundle.json ``files`` as every file is): the sha256 of
every file of a local ``dir:`` source when it was read, so that an update parses only the files that
changed (semcode.data.refresh). ``reusable_vectors``: the stored vectors of an index-only bundle's rows, keyed by their search document
(semcode.embedding_cache.text_keys), when its index keeps them exactly (Flat, HNSW over Flat, a refine
stage over Flat); an update embeds only the documents it does not find there.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from semcode import __version__, storage
from semcode import bundle as bundles
from semcode import portable as portable_paths
from semcode.contract import (
    BUNDLE_JSON,
    ENCODER_DIR,
    INDEX_FILE,
    IVFDATA_FILE,
    LEXICAL_DIR,
    META_FILE,
    METRICS_FILE,
    MINILM_ALIAS,
    TOKENIZER_FILE,
)
from semcode.progress import log
from semcode.retrieval import DEFAULT_FUSION

TAG = "index"
KIND = "index"  # bundle.json source.kind of an index-only bundle
SOURCE_FILES = (
    "source_files.parquet"  # (source, path, sha256) of every file a local dir: source was read from
)
# What the query and code paths read of the encoder's bundle.json: copied into the index-only bundle.
ENCODER_KEYS = (
    "dim",
    "max_length",
    "query_prefix",
    "code_prefix",
    "towers",
    "encoders",
    "default_precision",
    "default_files",
    "default_encoder",
)
ZERO_SHOT_VERSION = "all-MiniLM-L6-v2"
# The zero-shot MiniLM int8's own choice on docstrings, CoSQA dev and the everyday suite (bench/fusion_choice.py;
# bench/RESULTS.md, "Fusion chosen on a mix"): convex 0.1, above dense on all three.
ZERO_SHOT_FUSION = {
    **DEFAULT_FUSION,
    "chosen_on": "bench/fusion_choice.py: zero-shot MiniLM int8, mix of suites",
}


# ---------------------------------------------------------------------------------------------
# The encoder: borrowed from a bundle, or the zero-shot start exported here


def encoder_file_names(bundle: dict) -> list[str]:
    """The files of a bundle that make its encoder: tokenizer.json, every ONNX file, encoder/..."""
    onnx = sorted({name for files in bundle["encoders"].values() for name in files.values()})
    weights = sorted(name for name in bundle.get("files") or {} if name.startswith(ENCODER_DIR + "/"))
    return [TOKENIZER_FILE, *onnx, *weights]


def matches_listing(path: Path, entry: dict) -> bool:
    """Whether ``path`` has the size and sha256 that a bundle.json ``files`` entry lists."""
    if entry.get("bytes") is not None and path.stat().st_size != entry["bytes"]:
        return False
    return bundles.sha256_file(path) == entry.get("sha256")


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link (bundle files are never changed in place: free and instant), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def copy_encoder(folder: str, dest: Path) -> dict:
    """Copy the encoder of the bundle at ``folder`` (local or s3://) into ``dest``: every file of
    ``encoder_file_names``, checked against the sha256 its bundle.json lists; returns that bundle.json.
    BundleError names every problem of a bundle that cannot lend its encoder."""
    bundle = bundles.read_bundle_json(folder)
    where = f"{folder} cannot lend its encoder"
    problems = bundles.check_keys(bundle, (*ENCODER_KEYS, "name", "version", "files"))
    problems += bundles.check_file_names(bundle)
    if problems:
        raise bundles.BundleError(where, problems)
    listed = bundle["files"]
    names = encoder_file_names(bundle)
    problems = [f"{name} is not listed in bundle.json files" for name in names if name not in listed]
    if not any(name.endswith(".safetensors") for name in names):
        problems.append(f"{ENCODER_DIR}/ has no *.safetensors weights listed in bundle.json files")
    if problems:
        raise bundles.BundleError(where, problems)
    for name in names:
        target = Path(storage.contained_join(dest, name, f"{folder}: bundle.json file"))
        target.parent.mkdir(parents=True, exist_ok=True)
        source = storage.join(folder, name)
        if storage.is_s3(source):
            storage.copy(source, target)
        else:
            _link_or_copy(Path(source), target)
        if not matches_listing(target, listed[name]):
            raise ValueError(
                f"{source}: size or sha256 does not match its bundle.json (changed after assembly)"
            )
    log(TAG, f"encoder {bundle['name']} {bundle['version']} ({len(names)} files) from {folder}")
    return bundle


def export_zero_shot(dest: Path) -> dict:
    """The zero-shot start (``minilm``: all-MiniLM-L6-v2, normalised mean pooling) in ``dest`` as a bundle
    holds an encoder: encoder/ (sentence-transformers), tokenizer.json, encoder.onnx and encoder.int8.onnx,
    exported and quantised with export_onnx's defaults; returns the bundle.json keys that describe it."""
    from semcode.export import export_tower, quantize_int8, tower_exports
    from semcode.models.encoder import load_hf_tokenizer, load_pretrained

    model = load_pretrained(MINILM_ALIAS).float().eval()
    hf_tokenizer = load_hf_tokenizer(MINILM_ALIAS)
    model.save(dest / ENCODER_DIR, hf_tokenizer)
    shutil.copyfile(dest / ENCODER_DIR / TOKENIZER_FILE, dest / TOKENIZER_FILE)
    files: dict[str, dict[str, str]] = {"fp32": {}, "int8": {}}
    for export in tower_exports(model.towers):
        metadata = {
            "semcode.kinds": ",".join(export.kinds),
            "semcode.max_length": str(model.max_length),
            "semcode.embedding_dim": str(model.embedding_dim),
            "semcode.query_prefix": model.query_prefix,
            "semcode.code_prefix": model.code_prefix,
        }
        export_tower(model.tower_for(export.kinds[0]), dest / export.fp32_name, metadata=metadata)
        quantize_int8(dest / export.fp32_name, dest / export.int8_name)
        for precision in files:
            files[precision].update(dict.fromkeys(export.kinds, export.file_name(precision)))
    log(TAG, f"zero-shot encoder {MINILM_ALIAS} exported to fp32 and int8 ONNX in {dest}")
    return {
        "name": MINILM_ALIAS,
        "version": ZERO_SHOT_VERSION,
        "dim": model.embedding_dim,
        "max_length": model.max_length,
        "query_prefix": model.query_prefix,
        "code_prefix": model.code_prefix,
        "towers": model.towers,
        "encoders": files,
        "default_precision": "int8",
        "default_files": files["int8"],
        "default_encoder": files["int8"]["query"],
        "metrics": {},
        "fusion": ZERO_SHOT_FUSION,
        "default_mode": "hybrid",
    }


def encoder_record(spec: str, encoder: dict, dest: Path) -> dict:
    """bundle.json ``source.encoder``: what encoder made the vectors, by its spec and its identity (the
    sha256 of its weights, semcode.embed.encoder_digest, and of each ONNX file) as copied into ``dest``."""
    from semcode.embed import encoder_digest

    onnx = sorted({name for files in encoder["encoders"].values() for name in files.values()})
    return {
        "spec": spec,
        "name": encoder["name"],
        "version": encoder["version"],
        "digest": f"sha256:{encoder_digest(dest / ENCODER_DIR)}",
        "onnx": {name: bundles.sha256_file(dest / name) for name in onnx},
        "precision": encoder["default_precision"],
    }


# ---------------------------------------------------------------------------------------------
# Portable sources: a local source is recorded relative to the bundle folder ("dir:../repo")


def source_roots(source: dict, out: Path) -> dict[str, str]:
    """{absolute folder of each local source: its path relative to the bundle folder ``out``}: the roots
    (semcode.portable.path_roots) that make ``source.sources`` portable and still readable by --update."""
    roots = {}
    for record in source.get("sources") or []:
        location = str(record.get("root") or "")
        if os.path.isabs(location) and not storage.is_s3(location):
            roots[location] = os.path.relpath(location, out)
    return roots


def bundled_spec(text: str, bundle_dir: str | os.PathLike[str]) -> str:
    """A source spec as bundle.json records it, with a relative local location taken from ``bundle_dir``
    (``dir:../repo`` -> ``dir:/abs/repo``); absolute, s3:// and location-free specs are returned as they are."""
    kind, sep, location = text.partition(":")
    location = location.strip()
    if not sep or not location or location.startswith("<") or storage.is_s3(location):
        return text
    if os.path.isabs(os.path.expanduser(location)) or "://" in location:
        return text
    return f"{kind}:{os.path.abspath(os.path.join(bundle_dir, location))}"


def portable_sources_file(path: Path, roots: list[tuple[str, str]]) -> None:
    """Rewrite SOURCE_FILES' ``source`` column with semcode.portable.portable (when it is there)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        return
    table = pq.read_table(path)
    if "source" in table.column_names:
        column = pa.array(portable_paths.portable(table["source"].to_pylist(), roots), pa.string())
        table = table.set_column(table.column_names.index("source"), "source", column)
        pq.write_table(table, path, compression="zstd")


# ---------------------------------------------------------------------------------------------
# Assembling


def assemble_index_bundle(
    out: Path,
    encoder: dict,
    index_dir: Path,
    *,
    name: str,
    version: str,
    source: dict,
    encoder_metrics: dict | None = None,
) -> dict:
    """Complete the index-only bundle in ``out``, which holds the encoder's files already: move the index
    (index.faiss, index.ivfdata when on disk, index_meta.parquet, bm25/) in from ``index_dir`` (a
    semcode.indexing output on the same file system), write metrics.json, model_card.md, report.html and
    bundle.json (``encoder``: the encoder's bundle.json keys; ``source``: the module docstring's), validate
    it; returns bundle.json's content."""
    bundles.check_version(version)
    index_metrics = bundles.read_json(index_dir / METRICS_FILE, "index (semcode.indexing output)")
    for file_name in (INDEX_FILE, IVFDATA_FILE, META_FILE):
        if (index_dir / file_name).is_file():
            os.replace(index_dir / file_name, out / file_name)
    lexical = bundles.lexical_info(index_dir, index_metrics)
    if lexical is not None:
        os.replace(index_dir / lexical["dir"], out / LEXICAL_DIR)
        lexical["dir"] = LEXICAL_DIR
    # Local sources relative to the bundle (--update reads them back), every other local path symbolic.
    roots = sorted(
        [*source_roots(source, out).items(), *portable_paths.path_roots({"<bundle>": out})],
        key=lambda root: -len(root[0]),
    )
    source = portable_paths.portable(source, roots)
    portable_sources_file(out / SOURCE_FILES, roots)
    summary = encoder.get("metrics") or {}
    primary = summary.get("primary") or {"name": None, "value": None}
    all_metrics = {
        "primary": primary,
        "build_index": index_metrics,
        "encoder": encoder_metrics or {},
        "index": {"sources": source.get("sources"), "update": source.get("update")},
    }
    all_metrics = portable_paths.portable(all_metrics, roots)
    (out / METRICS_FILE).write_text(json.dumps(all_metrics, indent=2) + "\n")
    fusion = encoder.get("fusion")  # none in a bundle made before hybrid search: dense
    modes = {"fusion": {**fusion, "default_mode": encoder.get("default_mode", "dense")}} if fusion else {}
    bundle = {
        "bundle_format": bundles.BUNDLE_FORMAT,
        "name": name,
        "version": version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "semcode_version": __version__,
        **{key: encoder[key] for key in ENCODER_KEYS},
        "index": bundles.index_entry(index_metrics, (out / IVFDATA_FILE).is_file()),
        "decoder": None,
        "metrics": {
            "primary": primary,
            "values": summary.get("values") or {},
            "int8_parity": summary.get("int8_parity") or {},
            "index_recall@10": index_metrics.get("recall@10"),
        },
        "source": source,
    }
    bundle.update(bundles.search_modes(modes, lexical))
    bundle = portable_paths.portable(bundle, roots)
    bundles.write_card_and_report(out, bundle, all_metrics, out, None, roots)
    bundle["files"] = bundles.file_checksums(out)
    (out / BUNDLE_JSON).write_text(json.dumps(bundle, indent=2) + "\n")
    bundles.validate_bundle(out)
    return bundle


# ---------------------------------------------------------------------------------------------
# Updating: the vectors an index-only bundle already holds


def stores_exact_vectors(index: Any) -> bool:
    """Whether ``index`` gives its vectors back exactly (reconstruct): Flat, HNSW over Flat, a refine
    stage over Flat (IVF-PQ up to exact_refine_max); not PQ codes, SQ8 or an on-disk IVF index."""
    import faiss

    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexFlat):
        return True
    if isinstance(index, faiss.IndexHNSW):
        return stores_exact_vectors(index.storage)
    if isinstance(index, faiss.IndexRefine):
        return stores_exact_vectors(index.refine_index)
    return False


def reusable_vectors(bundle_dir: Path, view: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(keys [N, 16] uint8, vectors [N, D] float32) of every row of the bundle's index, keyed as
    semcode.embedding_cache keys a code text (``text_keys(documents, "code")``, the documents in ``view``,
    rebuilt from index_meta.parquet); None when the index does not store its vectors exactly."""
    import pyarrow.parquet as pq

    from semcode.corpus import search_documents
    from semcode.embedding_cache import text_keys
    from semcode.index import load_index

    index = load_index(bundle_dir / INDEX_FILE)
    if not stores_exact_vectors(index):
        log(
            TAG,
            f"{bundle_dir / INDEX_FILE} keeps compressed vectors only: every definition is embedded again",
        )
        return None
    meta = pq.read_table(bundle_dir / META_FILE, columns=["code", "doc", "path", "func_name"])
    if meta.num_rows != index.ntotal:
        raise ValueError(f"{bundle_dir}: {META_FILE} has {meta.num_rows} rows for {index.ntotal} vectors")
    keys = text_keys(search_documents(meta, view), "code")
    vectors = (
        index.reconstruct_n(0, int(index.ntotal)) if index.ntotal else np.zeros((0, index.d), np.float32)
    )
    return keys, np.asarray(vectors, dtype=np.float32)
