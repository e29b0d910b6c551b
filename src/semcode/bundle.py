"""The release bundle: assemble it from the stage outputs, validate it against the contract, find it in a registry.

The contract (DESIGN.md; external tools read it, so it only grows, and ``bundle_format`` changes when
it cannot)::

    bundle/
      bundle.json          what the bundle is (keys below) and the sha256 of every other file
      tokenizer.json       the tokenizer the ONNX files were exported with (HF tokenizers)
      encoder.onnx         fp32: int64 input_ids, attention_mask [batch, seq] -> float32 embedding
                           [batch, dim], pooled and L2-normalised in the graph
      encoder.int8.onnx    the same inputs and output, int8 weights
                           (separate towers: query_encoder[.int8].onnx and code_encoder[.int8].onnx)
      encoder/             safetensors weights + config: transformers and sentence-transformers load it;
                           README.md, the model card with a model hub's front matter (semcode.hub_card)
      decoder/             safetensors weights + config (only when a decoder was trained)
      index.faiss          FAISS index over the corpus; FAISS id i = row i of index_meta.parquet
      index_meta.parquet   code, repo, path, func_name, url of every indexed function
      bm25/                BM25 over the same rows (row i = FAISS id i) in bm25s' own format, codes split by
                           semcode.retrieval.split_identifiers (only when build_index wrote one)
      metrics.json         every stage's metrics: {"primary", "evaluate", "export_onnx", "build_index", ...}
      model_card.md, report.html

bundle.json keys: ``bundle_format`` (1), ``name``, ``version``, ``created_at`` (ISO 8601 UTC),
``semcode_version``, ``dim``, ``max_length``, ``query_prefix``, ``code_prefix``, ``towers`` ("shared" or
"separate"), ``encoders`` ({"fp32": {"query": file, "code": file}, "int8": {...}}), ``default_precision``
("int8" unless export_onnx found int8 too lossy), ``default_files`` ({"query": file, "code": file} of
that precision), ``default_encoder`` (the default file that encodes queries: the one file with shared
towers), ``index`` (file, meta, ntotal, dim, factory, metric, coverage: {"indexed", "corpus_rows",
"sampled_by", "per_source": {source: [indexed, total]}} or null, document and document_max_length: the
view semcode.corpus.search_document embedded each row in and its max length), ``decoder`` ("decoder" or null),
``metrics`` (summary: primary, every suite/protocol/system metric as "suite/protocol/system/metric",
int8 parity), ``source`` (stage configs and whatever the caller adds), ``files`` ({relative path:
{"sha256", "bytes"}} for every file but bundle.json).

Hybrid search (optional keys: bundles made before them lack them and still load, dense only):
``lexical`` ({"dir": "bm25", "tokenizer": "split_identifiers", "stopwords": false, "ntotal"}; only when
the bundle has the lexical index), ``fusion`` ({"rule": "convex" or "rrf", "weight", "question_weight"
and "internal_penalty" (optional, convex only), "chosen_on", ...}: evaluate's choice on its mix of docstring- and question-style
suites, semcode.retrieval.fusion_spec and fuse_queries) and ``default_mode`` (one of SEARCH_MODES:
"hybrid" when the lexical index is there and the chosen fusion is not dense itself, else "dense").

A registry (local folder or ``s3://`` prefix) holds published bundles as ``<registry>/<name>/<version>/``
with a ``_COMPLETE.json`` marker written last, and ``<registry>/<name>/latest``, a small JSON pointer
``{"version", "path", "published_at", "primary_metric"}`` that only ever names complete versions (``path``:
"<name>/<version>", relative to the registry). No file of a bundle and no pointer holds an absolute path of
the machine that built it: ``portable`` rewrites them to "<run>/...", "<venv>/...", "~/..." and the like.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from semcode import __version__, bundle_checks, storage
from semcode.contract import (  # the bundle's names live in semcode.contract; imported here for its readers
    BUNDLE_JSON,
    DECODER_DIR,
    ENCODER_CONFIG_FILE,
    ENCODER_DIR,
    HISTORY_FILE,
    HUB_CARD_FILE,
    INDEX_FILE,
    IVFDATA_FILE,
    KINDS,
    LEXICAL_DIR,
    META_FILE,
    METRICS_FILE,
    MODEL_CARD_FILE,
    PRECISIONS,
    REPORT_FILE,
    SAMPLES_FILE,
    TOKENIZER_FILE,
    TOWERS,
    onnx_files,
)
from semcode.embed import encoder_digest
from semcode.portable import path_roots, portable, portable_json_files, run_folder
from semcode.retrieval import DEFAULT_FUSION, fusion_spec

BUNDLE_FORMAT = 1

# Registry layout
LATEST = "latest"
COMPLETE_MARKER = "_COMPLETE.json"
VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

# bundle.json: key -> the JSON type(s) it must have
BUNDLE_KEYS: dict[str, type | tuple[type, ...]] = {
    "bundle_format": int,
    "name": str,
    "version": str,
    "created_at": str,
    "semcode_version": str,
    "dim": int,
    "max_length": int,
    "query_prefix": str,
    "code_prefix": str,
    "towers": str,
    "encoders": dict,
    "default_precision": str,
    "default_files": dict,
    "default_encoder": str,
    "index": dict,
    "decoder": (str, type(None)),
    "metrics": dict,
    "source": dict,
    "files": dict,
}
SUMMARY_METRICS = ("mrr", "recall@1", "recall@5", "recall@10", "ndcg@10")
SEARCH_MODES = ("dense", "lexical", "hybrid")  # bundle.json default_mode; semcode search --mode
LEXICAL_FILES = ("params.index.json", "vocab.index.json")  # what a bm25s index folder always holds


class BundleError(ValueError):
    """A bundle (or the inputs to one) breaks the contract; ``problems`` lists every problem found."""

    def __init__(self, where: str, problems: list[str]) -> None:
        self.problems = list(problems)
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        super().__init__(f"{where} ({count}):\n" + "\n".join(f"  - {p}" for p in problems))


# ---------------------------------------------------------------------------------------------
# Small helpers


def encoder_files(towers: str) -> dict[str, dict[str, str]]:
    """The ONNX file of each precision and kind: {"fp32": {"query": ..., "code": ...}, "int8": {...}}."""
    return {precision: onnx_files(towers, precision) for precision in PRECISIONS}


def sha256_file(path: str | os.PathLike[str], chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def read_json(path: str | os.PathLike[str], what: str) -> dict:
    """A JSON object from a local file or an S3 object; errors name ``what`` and the path."""
    try:
        data = json.loads(storage.read_text(path))
    except FileNotFoundError:
        raise FileNotFoundError(f"{what}: {path} does not exist") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{what}: {path} is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what}: {path} holds a JSON {type(data).__name__}, expected an object")
    return data


def read_bundle_json(bundle_dir: str | os.PathLike[str]) -> dict:
    """bundle.json of a bundle directory (local or s3://), parsed; no other check."""
    return read_json(storage.join(bundle_dir, BUNDLE_JSON), "bundle.json")


def check_version(version: str) -> str:
    """A version is one path segment: letters, digits, '.', '_', '-' (not 'latest'); returns it."""
    if not VERSION_PATTERN.fullmatch(version) or version == LATEST:
        raise ValueError(
            f"bundle version {version!r} must be 1-128 letters, digits, '.', '_' or '-', start with a letter "
            f"or digit, and not be {LATEST!r} (it names a folder in the registry)"
        )
    return version


def default_version(encoder_dir: str | os.PathLike[str], now: datetime | None = None) -> str:
    """``20250101T120000Z-1a2b3c4d``: UTC time and a short hash of the encoder's weights."""
    now = now or datetime.now(UTC)
    return f"{now.strftime('%Y%m%dT%H%M%SZ')}-{encoder_digest(encoder_dir)[:8]}"


def flat_metrics(suites: dict) -> dict[str, float]:
    """``{"test/full/model/mrr": 0.61, ...}`` from evaluate's ``suites`` (only the SUMMARY_METRICS)."""
    flat: dict[str, float] = {}
    for suite_name, suite in suites.items():
        if not isinstance(suite, dict):
            continue
        for protocol, systems in suite.items():
            if protocol not in ("csn", "full") or not isinstance(systems, dict):
                continue
            for system, values in systems.items():
                for metric in SUMMARY_METRICS:
                    if isinstance(values, dict) and isinstance(values.get(metric), int | float):
                        flat[f"{suite_name}/{protocol}/{system}/{metric}"] = float(values[metric])
    return flat


def metric_value(metrics: dict, name: str) -> float | None:
    """The value of ``name`` ("suite/protocol/system/metric") in evaluate's metrics.json, a bundle's
    metrics.json, or bundle.json's ``metrics`` summary; None when it is not there."""
    primary = metrics.get("primary") or {}
    if primary.get("name") == name and isinstance(primary.get("value"), int | float):
        return float(primary["value"])
    values = metrics.get("values") or {}
    if isinstance(values.get(name), int | float):
        return float(values[name])
    suites = metrics.get("suites") or (metrics.get("evaluate") or {}).get("suites") or {}
    return flat_metrics(suites).get(name)


def int8_parity(export_metrics: dict) -> dict:
    """Did the int8 encoder keep its accuracy? From export_onnx's metrics.json.

    ``held`` is False when export_onnx fell back to the fp32 default (int8 lost more than
    ``max_mrr_loss`` MRR) or says so explicitly (``int8_parity_failed``); True otherwise.
    """
    quantization = export_metrics.get("quantization") or {}
    retrieval = export_metrics.get("retrieval") or {}
    default = export_metrics.get("default_encoder", "int8")
    held = default == "int8"
    if "int8_parity_failed" in export_metrics:  # an explicit flag, when export_onnx writes one
        held = not export_metrics["int8_parity_failed"]
    return {
        "held": bool(held),
        "int8_enabled": bool(quantization.get("enabled", True)),
        "default_precision": default,
        "mrr_fp32": (retrieval.get("mrr") or {}).get("fp32"),
        "mrr_int8": (retrieval.get("mrr") or {}).get("int8"),
        "mrr_loss": retrieval.get("mrr_loss"),
        "max_mrr_loss": export_metrics.get("max_mrr_loss"),
        "cosine_min": (export_metrics.get("parity") or {}).get("int8_vs_fp32_cosine_min"),
        "reason": export_metrics.get("default_encoder_reason", ""),
    }


def model_dir(path: str | os.PathLike[str], inner: str, marker: str | None) -> Path:
    """A model directory given itself or the stage output that holds it as ``inner``/."""
    path = Path(path)
    nested = path / inner
    if nested.is_dir() and (marker is None or (nested / marker).is_file()):
        return nested
    return path


def stage_config(stage_dir: Path) -> dict | None:
    """A stage output's resolved config.json ({"config_class", "config"}), when there is one."""
    path = stage_dir / "config.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) and "config_class" in data else None


def check_bundle_inputs(
    encoder_dir: str | os.PathLike[str],
    onnx_dir: str | os.PathLike[str],
    index_dir: str | os.PathLike[str],
    metrics: dict,
    decoder_dir: str | os.PathLike[str] | None = None,
) -> tuple[dict, dict, dict]:
    """Check the inputs of assemble_bundle (cheap: JSON files and file presence); BundleError lists every
    problem. Returns the encoder's semcode_encoder.json, export_onnx's and build_index's metrics."""
    encoder_dir = model_dir(encoder_dir, ENCODER_DIR, ENCODER_CONFIG_FILE)
    onnx_dir, index_dir = Path(onnx_dir), Path(index_dir)
    decoder_dir = None if decoder_dir is None else model_dir(decoder_dir, DECODER_DIR, "config.json")
    problems: list[str] = []

    def load(path: Path, what: str) -> dict:
        try:
            return read_json(path, what)
        except (FileNotFoundError, ValueError) as error:
            problems.append(str(error))
            return {}

    encoder_config = load(encoder_dir / ENCODER_CONFIG_FILE, "encoder (train-encoder output)")
    export_metrics = load(onnx_dir / METRICS_FILE, "ONNX export (export-onnx output)")
    index_metrics = load(index_dir / METRICS_FILE, "index (build-index output)")
    if not (onnx_dir / TOKENIZER_FILE).is_file():
        problems.append(f"ONNX export: {onnx_dir / TOKENIZER_FILE} does not exist")
    towers = export_metrics.get("towers", encoder_config.get("towers", "shared"))
    if towers not in TOWERS:
        problems.append(f"ONNX export: towers {towers!r} is not one of {list(TOWERS)}")
    else:
        for name in sorted({f for files in encoder_files(towers).values() for f in files.values()}):
            if not (onnx_dir / name).is_file():
                problems.append(
                    f"ONNX export: {onnx_dir / name} does not exist (the bundle needs fp32 and int8 files; "
                    "export with int8 on)"
                )
    for name in (INDEX_FILE, META_FILE):
        if not (index_dir / name).is_file():
            problems.append(f"index: {index_dir / name} does not exist")
    primary = metrics.get("primary") or {}
    if not isinstance(primary.get("name"), str) or not isinstance(primary.get("value"), int | float):
        problems.append("evaluation metrics: no primary {name, value} (expected evaluate's metrics.json)")
    dims = {
        "encoder": encoder_config.get("embedding_dim"),
        "ONNX export": export_metrics.get("embedding_dim"),
        "index": index_metrics.get("dim"),
    }
    if len({d for d in dims.values() if d is not None}) > 1:
        problems.append(f"embedding dimensions differ: {dims}; were these made from the same encoder?")
    if decoder_dir is not None:
        if not decoder_dir.is_dir():
            problems.append(f"decoder: {decoder_dir} is not a directory")
        elif not list(decoder_dir.glob("*.safetensors")) or not (decoder_dir / "config.json").is_file():
            problems.append(f"decoder: {decoder_dir} has no *.safetensors and config.json")
    if problems:
        raise BundleError("cannot assemble a release bundle from these inputs", problems)
    return encoder_config, export_metrics, index_metrics


def lexical_info(index_dir: Path, index_metrics: dict) -> dict | None:
    """bundle.json ``lexical`` for build_index's output ``index_dir`` when it holds a lexical index (its
    metrics.json ``lexical`` and the folder it names), else None (an index built before it)."""
    lexical = index_metrics.get("lexical")
    if not isinstance(lexical, dict) or not (index_dir / str(lexical.get("dir", ""))).is_dir():
        return None
    keys = ("dir", "tokenizer", "stopwords", "ntotal")
    return {key: lexical[key] for key in keys if key in lexical}


def _copy_dir(src: Path, dst: Path, skip: Iterable[str] = ()) -> None:
    """Copy a folder; the copies get the usual file mode (0644 under umask 022), not the source's: safetensors
    writes its files 0600, which a bundle published for others to read must not keep."""
    skipped = set(skip)
    shutil.copytree(
        src,
        dst,
        ignore=lambda folder, names: [n for n in names if n in skipped],
        copy_function=shutil.copyfile,
    )


def assemble_bundle(
    out_dir: str | os.PathLike[str],
    *,
    name: str,
    version: str,
    encoder_dir: str | os.PathLike[str],
    onnx_dir: str | os.PathLike[str],
    index_dir: str | os.PathLike[str],
    metrics: dict,
    decoder_dir: str | os.PathLike[str] | None = None,
    extra: dict | None = None,
    stage_metrics: dict[str, dict] | None = None,
) -> dict:
    """Copy the stage outputs into the contract layout in ``out_dir`` (new or empty), write bundle.json,
    metrics.json, model_card.md and report.html, validate the result; returns bundle.json's content.

    ``encoder_dir``: the encoder directory (or the train-encoder output holding ``encoder/``);
    ``onnx_dir``, ``index_dir``: export-onnx and build-index outputs; ``metrics``: evaluate's
    metrics.json; ``decoder_dir``: the decoder (or the train-decoder output holding ``decoder/``);
    ``extra``: recorded in bundle.json ``source`` (run id, gate decision, ...); ``stage_metrics``: more
    stages' metrics for metrics.json and the model card, e.g. {"ingest": manifest, "train_encoder": ...}.
    Raises BundleError naming every bad input before anything is copied.
    """
    check_version(version)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"bundle output {out} already exists and is not empty; pick a new directory")
    encoder_path = model_dir(encoder_dir, ENCODER_DIR, ENCODER_CONFIG_FILE)
    onnx_path, index_path = Path(onnx_dir), Path(index_dir)
    decoder_path = None if decoder_dir is None else model_dir(decoder_dir, DECODER_DIR, "config.json")
    encoder_config, export_metrics, index_metrics = check_bundle_inputs(
        encoder_dir, onnx_dir, index_dir, metrics, decoder_dir
    )
    # The train-decoder output may hold decoder/ with its metrics.json beside it, or be the decoder itself.
    decoder_stage = None if decoder_dir is None else Path(decoder_dir)
    decoder_metrics = None
    if decoder_stage is not None and (decoder_stage / METRICS_FILE).is_file():
        decoder_metrics = read_json(decoder_stage / METRICS_FILE, "decoder metrics")

    towers = export_metrics.get("towers", encoder_config.get("towers", "shared"))
    files = encoder_files(towers)
    parity = int8_parity(export_metrics)
    precision = "int8" if parity["default_precision"] == "int8" else "fp32"

    # 1. Copy the files into the contract layout; the model folders' settings name no local folder.
    ivfdata, lexical = copy_bundle_files(
        out, encoder_path, onnx_path, index_path, decoder_path, files, index_metrics
    )
    stage_dirs = [encoder_path.parent, encoder_path, onnx_path, index_path, decoder_stage]
    roots = path_roots({"<bundle>": out, "<run>": run_folder(stage_dirs)})
    for folder in (ENCODER_DIR, DECODER_DIR):
        portable_json_files(out / folder, roots)

    # 2. metrics.json: every stage's metrics under its name.
    all_metrics = collect_metrics(metrics, export_metrics, index_metrics, decoder_metrics, stage_metrics)
    all_metrics = portable(all_metrics, roots)
    (out / METRICS_FILE).write_text(json.dumps(all_metrics, indent=2) + "\n")

    # 3. bundle.json (checksums last), the model card and the report.
    bundle = {
        "bundle_format": BUNDLE_FORMAT,
        "name": name,
        "version": version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "semcode_version": __version__,
        "dim": int(export_metrics.get("embedding_dim", encoder_config.get("embedding_dim", 0))),
        "max_length": int(export_metrics.get("max_length", encoder_config.get("max_length", 0))),
        "query_prefix": export_metrics.get("query_prefix", encoder_config.get("query_prefix", "")),
        "code_prefix": export_metrics.get("code_prefix", encoder_config.get("code_prefix", "")),
        "towers": towers,
        "encoders": files,
        "default_precision": precision,
        "default_files": files[precision],
        "default_encoder": files[precision]["query"],
        "index": index_entry(index_metrics, ivfdata),
        "decoder": DECODER_DIR if decoder_path is not None else None,
        "metrics": {
            "primary": metrics["primary"],
            "values": flat_metrics(metrics.get("suites") or {}),
            "int8_parity": parity,
            "index_recall@10": index_metrics.get("recall@10"),
        },
        "source": bundle_source(encoder_path, encoder_config, stage_dirs, extra),
    }
    bundle.update(search_modes(metrics, lexical))
    bundle = portable(bundle, roots)
    write_card_and_report(out, bundle, all_metrics, Path(encoder_dir), decoder_stage, roots)
    bundle["files"] = file_checksums(out)
    (out / BUNDLE_JSON).write_text(json.dumps(bundle, indent=2) + "\n")
    validate_bundle(out)
    return bundle


def copy_bundle_files(
    out: Path,
    encoder_path: Path,
    onnx_path: Path,
    index_path: Path,
    decoder_path: Path | None,
    files: dict[str, dict[str, str]],
    index_metrics: dict,
) -> tuple[bool, dict | None]:
    """Copy the tokenizer, the ONNX ``files``, the encoder, the index (with its inverted lists when on
    disk), its metadata and lexical index, and the decoder into ``out``; returns (whether the index has
    index.ivfdata, bundle.json ``lexical`` or None)."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path / TOKENIZER_FILE, out / TOKENIZER_FILE)
    for name_ in sorted({f for per_kind in files.values() for f in per_kind.values()}):
        shutil.copyfile(onnx_path / name_, out / name_)
    _copy_dir(encoder_path, out / ENCODER_DIR)
    shutil.copyfile(index_path / INDEX_FILE, out / INDEX_FILE)
    ivfdata = (index_path / IVFDATA_FILE).is_file()  # an on-disk IVF index: its inverted lists beside it
    if ivfdata:
        shutil.copyfile(index_path / IVFDATA_FILE, out / IVFDATA_FILE)
    shutil.copyfile(index_path / META_FILE, out / META_FILE)
    lexical = lexical_info(index_path, index_metrics)
    if lexical is not None:
        _copy_dir(index_path / lexical["dir"], out / LEXICAL_DIR)
        lexical["dir"] = LEXICAL_DIR
    if decoder_path is not None:
        _copy_dir(decoder_path, out / DECODER_DIR, skip=(METRICS_FILE,))  # its metrics go to metrics.json
    return ivfdata, lexical


def collect_metrics(
    metrics: dict,
    export_metrics: dict,
    index_metrics: dict,
    decoder_metrics: dict | None,
    stage_metrics: dict[str, dict] | None,
) -> dict[str, Any]:
    """metrics.json: evaluate's primary metric, then every stage's metrics under its name (``stage_metrics``
    add stages, never replace these)."""
    all_metrics: dict[str, Any] = {
        "primary": metrics["primary"],
        "evaluate": metrics,
        "export_onnx": export_metrics,
        "build_index": index_metrics,
    }
    if decoder_metrics is not None:
        all_metrics["train_decoder"] = decoder_metrics
    for stage, values in (stage_metrics or {}).items():
        all_metrics.setdefault(stage, values)
    return all_metrics


def bundle_source(
    encoder_path: Path, encoder_config: dict, stage_dirs: Iterable[Path | None], extra: dict | None
) -> dict:
    """bundle.json ``source``: the encoder, its config, ``stage_configs`` ({config class: resolved config}
    of the stage outputs that have a config.json; a later one of the same class wins) and ``extra``."""
    configs = {}
    for stage_dir in stage_dirs:
        config = stage_config(stage_dir) if stage_dir is not None else None
        if config is not None:
            configs[config["config_class"]] = config["config"]
    source = {"encoder": str(encoder_path), "encoder_config": encoder_config, "stage_configs": configs}
    source.update(extra or {})
    return source


def index_entry(index_metrics: dict, ivfdata: bool) -> dict:
    """bundle.json ``index``: its files and what build_index's metrics say of it."""
    return {
        "file": INDEX_FILE,
        # an on-disk IVF index's inverted lists, mapped from beside "file" (semcode.index.load_index)
        "ivfdata": IVFDATA_FILE if ivfdata else None,
        "meta": META_FILE,
        "ntotal": index_metrics.get("ntotal"),
        "dim": index_metrics.get("dim"),
        "factory": index_metrics.get("factory"),
        "index_type": index_metrics.get("index_type"),
        "metric": index_metrics.get("metric", "inner_product"),
        # {"indexed", "corpus_rows", "sampled_by", "per_source": {source: [indexed, total]}}; None for
        # an index built before build_index recorded it
        "coverage": index_metrics.get("coverage"),
        # the text each vector is of: semcode.corpus.search_document's view of the row and its max length
        # (0: the bundle's max_length); None for an index built before search documents (code alone)
        "document": index_metrics.get("document"),
        "document_max_length": index_metrics.get("document_max_length"),
    }


def search_modes(metrics: dict, lexical: dict | None) -> dict:
    """bundle.json ``lexical`` (when the index has one), ``fusion`` (evaluate's choice, or DEFAULT_FUSION)
    and ``default_mode`` (dense without a lexical index)."""
    fusion = metrics.get("fusion") or {**DEFAULT_FUSION, "chosen_on": None}
    modes: dict[str, Any] = {} if lexical is None else {"lexical": lexical}
    modes["fusion"] = {key: value for key, value in fusion.items() if key != "default_mode"}
    modes["default_mode"] = fusion.get("default_mode", "dense") if lexical is not None else "dense"
    return modes


def write_card_and_report(
    out: Path,
    bundle: dict,
    all_metrics: dict,
    encoder_stage: Path,
    decoder_stage: Path | None,
    roots: list[tuple[str, str]] | None = None,
) -> None:
    """model_card.md and report.html in ``out``, with the training histories and the decoder's samples
    found in the encoder's and decoder's stage outputs (made ``portable`` with ``roots``, as ``bundle`` and
    ``all_metrics`` already are)."""
    from semcode import hub_card, report

    # Written as new files (atomic_output renames them into place), never through an existing one: an index
    # bundle's encoder/ files are hard links to the bundle it borrowed them from (semcode.index_bundle).
    with storage.atomic_output(out / MODEL_CARD_FILE) as card:
        card.write_text(report.model_card(bundle, all_metrics))
    with storage.atomic_output(out / ENCODER_DIR / HUB_CARD_FILE) as hub:
        hub.write_text(hub_card.hub_readme(bundle, all_metrics))
    histories = {
        stage: read_json(stage_dir / HISTORY_FILE, f"{stage} history")
        for stage, stage_dir in (("encoder", encoder_stage), ("decoder", decoder_stage))
        if stage_dir is not None and (stage_dir / HISTORY_FILE).is_file()
    }
    samples_file = None if decoder_stage is None else decoder_stage / SAMPLES_FILE
    samples = []
    if samples_file is not None and samples_file.is_file():
        samples = [json.loads(line) for line in samples_file.read_text().splitlines() if line.strip()]
    roots = path_roots({"<bundle>": out}) if roots is None else roots
    histories, samples = portable(histories, roots), portable(samples, roots)
    with storage.atomic_output(out / REPORT_FILE) as page:
        page.write_text(report.report_html(bundle, all_metrics, histories, samples))


def file_checksums(bundle_dir: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {"sha256", "bytes"}} of every file in the bundle except bundle.json."""
    checksums = {}
    for path in sorted(p for p in bundle_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(bundle_dir).as_posix()
        if relative != BUNDLE_JSON:
            checksums[relative] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return checksums


# ---------------------------------------------------------------------------------------------
# Validating


def _check_model_dir(bundle_dir: Path, folder: str, needs: tuple[str, ...]) -> list[str]:
    path = bundle_dir / folder
    if not path.is_dir():
        return [f"{folder}/ is missing"]
    problems = [f"{folder}/{name} is missing" for name in needs if not (path / name).is_file()]
    if not list(path.glob("*.safetensors")):
        problems.append(f"{folder}/ has no *.safetensors weights")
    return problems


def _check_encoder_dir(bundle_dir: Path, bundle: dict) -> list[str]:
    towers = bundle.get("towers")
    tower_dirs = [ENCODER_DIR] if towers == "shared" else [f"{ENCODER_DIR}/{kind}" for kind in KINDS]
    problems = []
    for folder in tower_dirs:
        problems += _check_model_dir(bundle_dir, folder, ("config.json", "modules.json", TOKENIZER_FILE))
    config_path = bundle_dir / ENCODER_DIR / ENCODER_CONFIG_FILE
    if not config_path.is_file():
        return problems + [f"{ENCODER_DIR}/{ENCODER_CONFIG_FILE} is missing"]
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        return problems + [f"{ENCODER_DIR}/{ENCODER_CONFIG_FILE} is not valid JSON ({error})"]
    if config.get("embedding_dim") != bundle.get("dim"):
        problems.append(
            f"{ENCODER_DIR}/{ENCODER_CONFIG_FILE} says embedding_dim {config.get('embedding_dim')}, "
            f"bundle.json says dim {bundle.get('dim')}"
        )
    if config.get("towers") != towers:
        problems.append(
            f"{ENCODER_DIR}/{ENCODER_CONFIG_FILE} says towers {config.get('towers')!r}, bundle.json {towers!r}"
        )
    return problems


def _check_hybrid(bundle_dir: Path, bundle: dict, ntotal: int | None) -> list[str]:
    """The optional hybrid keys: ``lexical`` names a bm25s folder over as many rows as the FAISS index,
    ``fusion`` a known rule and a weight >= 0, ``default_mode`` a search mode the bundle can serve."""
    problems = []
    lexical = bundle.get("lexical")
    if lexical is not None:
        if not isinstance(lexical, dict) or not isinstance(lexical.get("dir"), str):
            return [f"bundle.json lexical is {lexical!r:.60}, expected {{'dir': folder, ...}}"]
        folder = bundle_dir / lexical["dir"]
        missing = [name for name in LEXICAL_FILES if not (folder / name).is_file()]
        if not folder.is_dir() or missing:
            problems.append(
                f"{lexical['dir']}/ (bundle.json lexical) is not a bm25s index: missing "
                f"{', '.join(missing) if folder.is_dir() else 'the folder'}"
            )
        else:
            try:
                n_docs = json.loads((folder / "params.index.json").read_text()).get("num_docs")
            except json.JSONDecodeError as error:
                n_docs = None
                problems.append(f"{lexical['dir']}/params.index.json is not valid JSON ({error})")
            if n_docs is not None and ntotal is not None and n_docs != ntotal:
                problems.append(
                    f"{lexical['dir']}/ indexes {n_docs} functions but the FAISS index holds {ntotal}: "
                    "BM25 row i must be FAISS id i"
                )
        if lexical.get("tokenizer", "split_identifiers") != "split_identifiers":
            problems.append(
                f"bundle.json lexical tokenizer is {lexical.get('tokenizer')!r}; this semcode splits with "
                "'split_identifiers'"
            )
    fusion = bundle.get("fusion")
    if fusion is not None:
        if not isinstance(fusion, dict):
            problems.append(f"bundle.json fusion is {fusion!r:.60}, expected {{'rule', 'weight'}}")
        else:
            try:
                fusion_spec(fusion)
            except (TypeError, ValueError) as error:
                problems.append(f"bundle.json fusion: {error}")
    mode = bundle.get("default_mode", "dense")
    if mode not in SEARCH_MODES:
        problems.append(f"bundle.json default_mode is {mode!r}, expected one of {list(SEARCH_MODES)}")
    elif mode != "dense" and lexical is None:
        problems.append(f"bundle.json default_mode is {mode!r} but the bundle has no lexical index")
    return problems


def check_keys(bundle: dict, keys: Iterable[str]) -> list[str]:
    """One problem per key of ``keys`` that bundle.json lacks or holds with another type than BUNDLE_KEYS
    says (``max_length: "128"`` is a string, not a length)."""
    problems = []
    for key in keys:
        if key not in bundle:
            problems.append(f"bundle.json has no key {key!r}")
            continue
        expected, value = BUNDLE_KEYS[key], bundle[key]
        types = expected if isinstance(expected, tuple) else (expected,)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            wanted = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            problems.append(f"bundle.json {key!r} is {type(value).__name__} {value!r:.60}, expected {wanted}")
    return problems


def _check_keys(bundle: dict) -> list[str]:
    problems = check_keys(bundle, BUNDLE_KEYS)
    if isinstance(bundle.get("bundle_format"), int) and bundle["bundle_format"] != BUNDLE_FORMAT:
        problems.append(
            f"bundle.json bundle_format is {bundle['bundle_format']}; this semcode reads format {BUNDLE_FORMAT}"
        )
    if bundle.get("towers") not in TOWERS:
        problems.append(f"bundle.json towers is {bundle.get('towers')!r}, expected one of {list(TOWERS)}")
    if isinstance(bundle.get("dim"), int) and bundle["dim"] < 1:
        problems.append(f"bundle.json dim is {bundle['dim']}, expected a positive integer")
    if isinstance(bundle.get("version"), str):
        try:
            check_version(bundle["version"])
        except ValueError as error:
            problems.append(str(error))
    return problems


def _check_encoders(bundle: dict) -> list[str]:
    """The encoders/default_* keys name the contract's files for the bundle's towers."""
    if bundle.get("towers") not in TOWERS:
        return []
    expected = encoder_files(bundle["towers"])
    problems = []
    if bundle.get("encoders") != expected:
        problems.append(f"bundle.json encoders is {bundle.get('encoders')}, expected {expected}")
    precision = bundle.get("default_precision")
    if precision not in PRECISIONS:
        problems.append(f"bundle.json default_precision is {precision!r}, expected one of {list(PRECISIONS)}")
        return problems
    if bundle.get("default_files") != expected[precision]:
        problems.append(
            f"bundle.json default_files is {bundle.get('default_files')}, expected {expected[precision]}"
        )
    if bundle.get("default_encoder") != expected[precision]["query"]:
        problems.append(
            f"bundle.json default_encoder is {bundle.get('default_encoder')!r}, expected "
            f"{expected[precision]['query']!r} (default_precision {precision})"
        )
    return problems


def _check_checksums(bundle_dir: Path, listed: dict) -> list[str]:
    problems = []
    present = {p.relative_to(bundle_dir).as_posix() for p in bundle_dir.rglob("*") if p.is_file()} - {
        BUNDLE_JSON,
        COMPLETE_MARKER,
    }
    for name in sorted(present - set(listed)):
        problems.append(f"{name} is in the bundle but not listed in bundle.json files")
    for name, entry in sorted(listed.items()):
        path = bundle_dir / name
        if name not in present:
            continue  # reported by the required-file checks, or below
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str):
            problems.append(f"bundle.json files[{name!r}] has no sha256")
            continue
        size = path.stat().st_size
        if entry.get("bytes") not in (None, size):
            problems.append(f"{name}: {size} bytes, bundle.json says {entry['bytes']} (changed or truncated)")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{name}: sha256 does not match bundle.json (the file changed after assembly)")
    for name in sorted(set(listed) - present):
        problems.append(f"{name} is listed in bundle.json files but missing from the bundle")
    return problems


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def bundle_file_names(bundle: dict) -> list[tuple[str, Any]]:
    """(where in bundle.json, name) of every file or folder name bundle.json points at."""
    index = _mapping(bundle.get("index"))
    names: list[tuple[str, Any]] = [(f"index.{key}", index[key]) for key in ("file", "meta") if key in index]
    if index.get("ivfdata") is not None:
        names.append(("index.ivfdata", index["ivfdata"]))
    names += [(key, bundle[key]) for key in ("decoder", "default_encoder") if bundle.get(key) is not None]
    if "dir" in _mapping(bundle.get("lexical")):
        names.append(("lexical.dir", bundle["lexical"]["dir"]))
    for precision, files in _mapping(bundle.get("encoders")).items():
        names += [(f"encoders.{precision}.{kind}", name) for kind, name in _mapping(files).items()]
    names += [(f"default_files.{kind}", name) for kind, name in _mapping(bundle.get("default_files")).items()]
    names += [("files", name) for name in _mapping(bundle.get("files"))]
    return names


def check_file_names(bundle: dict) -> list[str]:
    """One problem per name in bundle.json that is not a relative name inside the bundle (the contract allows
    no other): an absolute path or a ``..`` would make readers open, or downloads write, files elsewhere."""
    problems = []
    for where, name in bundle_file_names(bundle):
        if not isinstance(name, str):
            problems.append(f"bundle.json {where} is {type(name).__name__}, not a file name")
            continue
        try:
            storage.check_relative_name(name, f"bundle.json {where}")
        except ValueError as error:
            problems.append(str(error))
    return problems


def validate_bundle(bundle_dir: str | os.PathLike[str]) -> dict:
    """Check a bundle (local, or s3:// downloaded first) against the contract; raise BundleError listing
    every problem, else return a summary: name, version, dim, towers, files, bytes, index ntotal."""
    bundle_dir = os.fspath(bundle_dir)
    if storage.is_s3(bundle_dir):
        with storage.local_dir(bundle_dir) as local:
            return validate_bundle(local)
    root = Path(bundle_dir)
    where = f"bundle {root} breaks the release bundle contract"
    if not root.is_dir():
        raise BundleError(where, [f"{root} is not a directory"])
    try:
        bundle = read_bundle_json(root)
    except (FileNotFoundError, ValueError) as error:
        raise BundleError(where, [str(error)]) from None

    name_problems = check_file_names(bundle)
    if name_problems:  # nothing below may open a path that leads out of the bundle
        raise BundleError(where, name_problems)
    problems = _check_keys(bundle) + _check_encoders(bundle)
    dim = bundle.get("dim") if isinstance(bundle.get("dim"), int) else None
    index_info = bundle.get("index") if isinstance(bundle.get("index"), dict) else {}
    index_file, meta_file = index_info.get("file", INDEX_FILE), index_info.get("meta", META_FILE)
    required = [TOKENIZER_FILE, METRICS_FILE, MODEL_CARD_FILE, REPORT_FILE, index_file, meta_file]
    onnx_names = []
    if bundle.get("towers") in TOWERS:
        onnx_names = sorted({f for files in encoder_files(bundle["towers"]).values() for f in files.values()})
    required += onnx_names
    problems += [f"{name} is missing" for name in required if not (root / name).is_file()]

    if (root / TOKENIZER_FILE).is_file():
        from tokenizers import Tokenizer

        try:
            Tokenizer.from_file(str(root / TOKENIZER_FILE))
        except Exception as error:  # tokenizers raises a plain Exception for a bad file
            problems.append(f"{TOKENIZER_FILE}: tokenizers cannot load it ({error})")
        else:  # a bounded test run: a regex that backtracks without end is found here, not by a query
            problems += bundle_checks.probe_tokenizer(
                root / TOKENIZER_FILE, str(bundle.get("query_prefix") or "")
            )
    for name in onnx_names:
        if (root / name).is_file():
            problems += bundle_checks.onnx_problems(root / name, dim)
    index_problems, index_found = bundle_checks.index_problems(root, index_file, meta_file, dim)
    problems += index_problems
    problems += _check_encoder_dir(root, bundle)
    if bundle.get("decoder") is not None:
        problems += _check_model_dir(root, str(bundle["decoder"]), ("config.json",))
    problems += _check_hybrid(root, bundle, index_found.get("ntotal"))
    if isinstance(bundle.get("files"), dict):
        problems += _check_checksums(root, bundle["files"])
    if not problems:  # the vectors are read only from files whose sizes and sha256 held (a short one: SIGBUS)
        problems += bundle_checks.vector_problems(root / index_file, index_file)
    if problems:
        raise BundleError(where, problems)
    listed = bundle["files"]
    return {
        "path": str(root),
        "name": bundle["name"],
        "version": bundle["version"],
        "dim": bundle["dim"],
        "towers": bundle["towers"],
        "default_encoder": bundle["default_encoder"],
        "files": len(listed),
        "bytes": sum(int(entry.get("bytes") or 0) for entry in listed.values()),
        "index_ntotal": index_found.get("ntotal"),
        "decoder": bundle["decoder"] is not None,
        "lexical": bundle.get("lexical") is not None,
        "default_mode": bundle.get("default_mode", "dense"),
    }
