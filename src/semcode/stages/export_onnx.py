"""Stage export_onnx: the encoder as fp32 and int8 ONNX files, with parity and latency measured.

Reads an encoder directory (train-encoder output) and, optionally, the ingest ``pairs/`` directory.
Writes (semcode.export has the file contract and the why of each choice)::

    out/encoder.onnx, out/encoder.int8.onnx         shared towers; with separate towers instead
    out/query_encoder[.int8].onnx, out/code_encoder[.int8].onnx
    out/tokenizer.json                              the encoder's tokenizer, as semcode.embed reads it
    out/metrics.json                                files, parity, MRR, latency, default_encoder
    out/config.json                                 the resolved config

The fp32 files hold standard ONNX ops; the int8 files are made for ONNX Runtime (attention and GELU
fused into its contrib ops, then dynamic quantisation); semcode.embed runs both.

Checks, in this order:

1. Parity on ``parity_texts`` validation rows (each kind through its file, with its prefix): fp32 ONNX
   vs torch (max abs difference of the embeddings), int8 vs fp32 ONNX (cosine: mean, min). Without
   ``--pairs`` (or without a query in its valid and test splits) the texts are synthetic, and
   metrics.json says so.
2. MRR on the test split under the full-corpus protocol (semcode.evaluation), fp32 ONNX vs int8 ONNX.
   When int8 loses more than ``max_mrr_loss``, a warning banner goes to stderr and
   ``default_encoder`` is "fp32" (the bundle then serves the fp32 file); else "int8". A test split
   without a query (a small repository's) skips this check with a line: int8 stands on its parity.
3. Latency of the query path: torch fp32 vs ONNX Runtime fp32 vs int8 at each of ``latency_shapes``,
   the same threads for torch and ONNX Runtime, runners interleaved, median ms; printed as a markdown
   table on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from semcode import config as cfg
from semcode import storage
from semcode.config import ConfigError, field
from semcode.contract import ENCODER_CONFIG_FILE, KINDS, TOKENIZER_FILE
from semcode.export import (
    WEIGHT_TYPES,
    ExportError,
    choose_default_encoder,
    cosine_stats,
    export_tower,
    int8_rejected_banner,
    latency_markdown,
    max_abs_diff,
    measure_latency,
    onnx_runner,
    parse_shape,
    quantize_int8,
    speedups,
    synthetic_texts,
    torch_runner,
    torch_threads,
    tower_exports,
)
from semcode.progress import log

TAG = "export-onnx"
TORCH, ONNX_FP32, ONNX_INT8 = "torch_fp32", "onnx_fp32", "onnx_int8"


@dataclass(frozen=True)
class ExportOnnxConfig:
    opset: int = field(18, "ONNX opset of the exported graphs")
    int8: bool = field(True, "also write int8 (dynamic quantisation) files")
    weight_type: str = field("QInt8", f"int8 weight type, one of {list(WEIGHT_TYPES)}")
    per_channel: bool = field(True, "one quantisation scale per output channel instead of per tensor")
    reduce_range: bool = field(
        True,
        "7-bit weights: AVX2 CPUs without VNNI saturate 8-bit products (ORT's advice); off for VNNI-only fleets",
    )
    op_types: tuple[str, ...] = field(
        ("MatMul", "Gather"), "op types to quantise (Gather: the embedding table; empty = every type ORT can)"
    )
    fuse: bool = field(True, "fuse attention and GELU into ONNX Runtime ops in the int8 file (faster)")
    max_mrr_loss: float = field(0.005, "largest test MRR drop of int8 vs fp32 for int8 to be the default")
    parity_texts: int = field(512, "validation rows whose query and code are encoded for parity")
    max_test_queries: int = field(
        0,
        "MRR on at most this many test pairs, a seeded sample, against their own codes (0 = the whole split)",
    )
    latency_shapes: tuple[str, ...] = field(("1x128", "16x128"), "BATCHxSEQUENCE shapes to time")
    latency_repeats: int = field(20, "timed calls per runner and shape (after latency_warmup)")
    latency_warmup: int = field(3, "untimed calls per runner and shape first")
    threads: int = field(0, "intra-op threads for torch and ONNX Runtime alike (0 = all cores)")
    max_length: int = field(0, "tokens per text at most (0 = the encoder's own max_length)")
    batch_size: int = field(64, "texts per forward pass in parity and MRR encoding")

    def validate(self) -> None:
        if not 18 <= self.opset <= 23:  # the torch.onnx dynamo exporter's own range
            raise ConfigError(f"opset must be in [18, 23], got {self.opset}")
        if any(not op_type.strip() for op_type in self.op_types):
            raise ConfigError(
                f"op_types={list(self.op_types)}: empty name (for every type, give an empty list)"
            )
        if self.weight_type not in WEIGHT_TYPES:
            raise ConfigError(f"weight_type must be one of {list(WEIGHT_TYPES)}, got {self.weight_type!r}")
        if self.max_mrr_loss < 0:
            raise ConfigError(f"max_mrr_loss must be >= 0, got {self.max_mrr_loss}")
        for name in ("parity_texts", "latency_repeats", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_test_queries", "latency_warmup", "threads", "max_length"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for shape in self.latency_shapes:
            try:
                parse_shape(shape)
            except ValueError as error:
                raise ConfigError(f"latency_shapes: {error}") from None


def check_inputs(encoder_dir: Path, pairs_dir: Path | None) -> None:
    """Raise FileNotFoundError / ValueError naming the input, before anything is loaded."""
    if not encoder_dir.is_dir():
        raise FileNotFoundError(f"encoder directory not found: {encoder_dir}")
    if not (encoder_dir / ENCODER_CONFIG_FILE).is_file():
        inner = encoder_dir / "encoder"
        hint = f"; did you mean {inner}?" if (inner / ENCODER_CONFIG_FILE).is_file() else ""
        raise ValueError(
            f"{encoder_dir} is not a semcode encoder: {ENCODER_CONFIG_FILE} is missing "
            f"(expected the encoder/ directory of a train-encoder output){hint}"
        )
    if not (encoder_dir / TOKENIZER_FILE).is_file():
        raise ValueError(
            f"{encoder_dir} has no {TOKENIZER_FILE}: the encoder was saved without its tokenizer"
        )
    from semcode.embed import check_encoder_files

    check_encoder_files(encoder_dir)  # missing or truncated weights, named
    if pairs_dir is not None:
        for split in ("valid", "test"):
            if not sorted((pairs_dir / split).glob("part-*.parquet")):
                raise FileNotFoundError(f"pairs directory {pairs_dir} has no {split}/part-*.parquet shards")


def parity_texts(pairs_dir: Path | None, n: int) -> tuple[dict[str, list[str]], str, bool]:
    """Up to ``n`` queries and codes per kind from the valid split (rows with a query; else the test
    split's), or synthetic ones; with where they came from and whether they are synthetic."""
    from semcode.data.pairs import read_split

    for split in ("valid", "test") if pairs_dir is not None else ():
        table = read_split(pairs_dir, split, columns=["query", "code"])
        rows = [
            (q, c) for q, c in zip(table["query"].to_pylist(), table["code"].to_pylist(), strict=True) if q
        ]
        if rows:
            rows = rows[:n]
            texts = {"query": [q for q, _ in rows], "code": [c for _, c in rows]}
            return texts, f"{len(rows)} rows of the {split} split of {pairs_dir}", False
    texts = {kind: synthetic_texts(n, kind, seed=i) for i, kind in enumerate(KINDS)}
    why = (
        "no --pairs given" if pairs_dir is None else f"the valid and test splits of {pairs_dir} have no query"
    )
    return texts, f"synthetic texts ({n} per kind): {why}", True


@storage.atomic_stage
def run(
    config: ExportOnnxConfig,
    encoder_dir: str | Path,
    out_dir: str | Path,
    pairs_dir: str | Path | None = None,
) -> dict:
    """Export ``encoder_dir`` (or a train-encoder checkpoint) to ONNX in ``out_dir``, measure parity, MRR
    (with pairs) and latency."""
    from semcode.embed import OnnxEncoder, encoder_digest
    from semcode.models.encoder import load_encoder, load_hf_tokenizer
    from semcode.train.checkpoints import encoder_from_checkpoint

    config.validate()
    started = time.perf_counter()
    encoder_spec = str(encoder_dir)  # as given: recorded as the encoder
    encoder_dir = Path(encoder_from_checkpoint(encoder_spec))
    pairs_dir = None if pairs_dir is None else Path(pairs_dir)
    check_inputs(encoder_dir, pairs_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    model = load_encoder(encoder_dir).float().eval()
    positions = int(model.tower.transformer.config.max_position_embeddings)
    max_length = config.max_length or model.max_length
    if max_length > positions:
        raise ValueError(f"max_length {max_length} exceeds the encoder's {positions} positions")
    hf_tokenizer = load_hf_tokenizer(encoder_dir)
    shutil.copyfile(encoder_dir / TOKENIZER_FILE, out / TOKENIZER_FILE)
    precisions = ("fp32", "int8") if config.int8 else ("fp32",)

    with torch_threads(config.threads) as threads:  # ORT sessions get the same number
        # 1. Export (and quantise) each tower.
        files, sizes_mb, fusions = export_files(model, config, out, max_length, precisions)
        encoders = {
            (kind, precision): OnnxEncoder(
                out / files[precision][kind],
                out / TOKENIZER_FILE,
                max_length,
                model.prefix_for(kind),
                threads=threads,
                batch_size=config.batch_size,
            )
            for kind in KINDS
            for precision in precisions
        }
        # 2. Parity on validation (or synthetic) texts, each kind through its own file and prefix.
        parity = measure_parity(model, hf_tokenizer, encoders, config, pairs_dir, max_length)
        # 3. MRR on the test split, full-corpus protocol, fp32 vs int8 ONNX; the default encoder.
        retrieval = None
        if pairs_dir is not None:
            retrieval = measure_test_mrr(encoders, precisions, pairs_dir, config.max_test_queries)
        mrr = retrieval["mrr"] if retrieval else {}
        default_encoder, reason = choose_default_encoder(
            mrr.get("fp32"), mrr.get("int8"), config.max_mrr_loss, config.int8
        )
        if config.int8 and default_encoder == "fp32":
            print(int8_rejected_banner(reason), file=sys.stderr, flush=True)
        # 4. Latency of the query path: torch vs ONNX Runtime, same threads, interleaved. The sessions
        # above are closed first so that their thread pools do not share the cores with the timed runs.
        encoders.clear()
        latency = measure_query_latency(model, config, out, files, threads, max_length)

    metrics = {
        "towers": model.towers,
        "embedding_dim": model.embedding_dim,
        "max_length": max_length,
        "query_prefix": model.query_prefix,
        "code_prefix": model.code_prefix,
        "opset": config.opset,
        "files": files,
        "default_encoder": default_encoder,
        "default_encoder_reason": reason,
        "default_files": files[default_encoder],
        "sizes_mb": sizes_mb,
        "quantization": {
            "enabled": config.int8,
            "method": "onnxscript ORT fusions (fuse), quant_pre_process, onnxruntime quantize_dynamic",
            "weight_type": config.weight_type,
            "per_channel": config.per_channel,
            "reduce_range": config.reduce_range,
            "op_types": list(config.op_types) or "all",
            "ort_fusions": fusions,
        },
        "parity": parity,
        "retrieval": retrieval,
        "max_mrr_loss": config.max_mrr_loss,
        "latency": latency,
        "encoder": encoder_spec,
        "encoder_digest": encoder_digest(encoder_dir),  # the stages that run these files check it
        "seconds": round(time.perf_counter() - started, 3),
    }
    metrics["kfp_metrics"] = kfp_metrics(metrics)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    cfg.save_resolved(config, out)
    print(latency["markdown"], file=sys.stderr, flush=True)
    log(TAG, f"default encoder {default_encoder} ({reason}); {metrics['seconds']:.1f}s -> {out}")
    return metrics


def export_files(
    model: Any, config: ExportOnnxConfig, out: Path, max_length: int, precisions: tuple[str, ...]
) -> tuple[dict[str, dict[str, str]], dict[str, float], dict[str, dict[str, int]]]:
    """Write each tower's fp32 (and int8) file: ({precision: {kind: file}}, {file: MB}, {int8 file: fusions})."""
    files: dict[str, dict[str, str]] = {p: {} for p in precisions}
    sizes_mb: dict[str, float] = {}
    fusions: dict[str, dict[str, int]] = {}
    for export in tower_exports(model.towers):
        metadata = {
            "semcode.kinds": ",".join(export.kinds),
            "semcode.max_length": str(max_length),
            "semcode.embedding_dim": str(model.embedding_dim),
            "semcode.query_prefix": model.query_prefix,
            "semcode.code_prefix": model.code_prefix,
        }
        step = time.perf_counter()
        export_tower(model.tower_for(export.kinds[0]), out / export.fp32_name, config.opset, metadata)
        log(TAG, f"exported {export.fp32_name} in {time.perf_counter() - step:.1f}s")
        if config.int8:
            step = time.perf_counter()
            done = quantize_int8(
                out / export.fp32_name,
                out / export.int8_name,
                config.weight_type,
                config.per_channel,
                config.reduce_range,
                config.op_types,
                config.fuse,
            )
            fusions[export.int8_name] = done["fusions"]
            seconds = time.perf_counter() - step
            log(TAG, f"quantised {export.int8_name} in {seconds:.1f}s; fused {done['fusions']}")
        for precision in precisions:
            name = export.file_name(precision)
            sizes_mb[name] = round((out / name).stat().st_size / 1e6, 3)
            for kind in export.kinds:
                files[precision][kind] = name
    return files, sizes_mb, fusions


def measure_parity(
    model: Any,
    hf_tokenizer: Any,
    encoders: dict,
    config: ExportOnnxConfig,
    pairs_dir: Path | None,
    max_length: int,
) -> dict:
    """fp32 ONNX vs torch (max abs difference) and int8 vs fp32 ONNX (cosine) per kind, and overall."""
    from semcode.models.encoder import encode_texts

    texts, source, synthetic = parity_texts(pairs_dir, config.parity_texts)
    parity: dict = {"source": source, "synthetic": synthetic, "per_kind": {}}
    for kind in KINDS:
        reference = encode_texts(model, hf_tokenizer, texts[kind], kind, config.batch_size, max_length)
        fp32 = encoders[kind, "fp32"].encode(texts[kind])
        entry = {"n_texts": len(texts[kind]), "fp32_vs_torch_max_abs_diff": max_abs_diff(fp32, reference)}
        if config.int8:
            entry["int8_vs_fp32_cosine"] = cosine_stats(encoders[kind, "int8"].encode(texts[kind]), fp32)
        parity["per_kind"][kind] = entry
    per_kind = parity["per_kind"].values()
    parity["fp32_vs_torch_max_abs_diff"] = max(e["fp32_vs_torch_max_abs_diff"] for e in per_kind)
    if config.int8:
        cosines = [e["int8_vs_fp32_cosine"] for e in per_kind]
        parity["int8_vs_fp32_cosine_mean"] = float(np.mean([c["mean"] for c in cosines]))
        parity["int8_vs_fp32_cosine_min"] = min(c["min"] for c in cosines)
    log(TAG, f"parity ({source}): " + json.dumps({k: v for k, v in parity.items() if k != "per_kind"}))
    return parity


def measure_query_latency(
    model: Any,
    config: ExportOnnxConfig,
    out: Path,
    files: dict[str, dict[str, str]],
    threads: int,
    max_length: int,
) -> dict:
    """Median ms of torch fp32 vs each ONNX precision on the query tower, at each latency shape."""
    from semcode.embed import create_session

    runners = {TORCH: torch_runner(model.tower_for("query"))}
    for precision, by_kind in files.items():
        session = create_session(out / by_kind["query"], threads, spinning=False)
        runners[ONNX_FP32 if precision == "fp32" else ONNX_INT8] = onnx_runner(session)
    # A shape longer than max_length is timed at max_length: the encoder never sees longer inputs.
    shapes = [
        (batch, min(sequence, max_length)) for batch, sequence in map(parse_shape, config.latency_shapes)
    ]
    vocab_size = int(model.tower.transformer.config.vocab_size)
    latency_ms = measure_latency(runners, shapes, vocab_size, config.latency_repeats, config.latency_warmup)
    return {
        "what": f"query path ({files['fp32']['query']}), random token ids, full attention mask; runners "
        "take turns, ONNX Runtime threads do not spin between calls",
        "unit": "ms, median per call",
        "threads": threads,
        "torch_threads": threads,
        "ort_intra_op_threads": threads,
        "repeats": config.latency_repeats,
        "warmup": config.latency_warmup,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        # Spinning OpenMP threads (the default) slowed 2-thread torch up to 20x when timed in turn with
        # ONNX Runtime on a busy 2-core machine; PASSIVE (set before torch starts) avoids that.
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "ms": latency_ms,
        "speedup_vs_torch": speedups(latency_ms, TORCH),
        "markdown": latency_markdown(latency_ms, baseline=TORCH),
    }


def measure_test_mrr(
    encoders: dict, precisions: tuple[str, ...], pairs_dir: Path, max_queries: int
) -> dict | None:
    """Full-corpus MRR (and Recall, NDCG) of each precision's ONNX files on the test split; None, and a
    line saying so, when the test split has no query (a small repository's, or one the user's files left
    empty): int8 is then judged on cosine parity alone.

    With ``max_queries`` the corpus is the sampled pairs' codes: embedding the candidates is most of the
    cost, and the fp32 vs int8 comparison only needs both on the same queries and candidates.
    """
    from semcode.evaluation import evaluate_suite
    from semcode.suites import test_split_suite

    suite = test_split_suite(pairs_dir).subset(max_queries, golds_only=True)
    if not suite.queries:
        log(
            TAG,
            f"no int8 MRR check: the test split of {pairs_dir} has no query; int8 is judged by cosine parity",
        )
        return None

    def embed_fn(precision: str):
        return lambda texts, kind: encoders[kind, precision].encode(texts)

    systems = {f"onnx_{p}": embed_fn(p) for p in precisions}
    result = evaluate_suite(suite, systems, bm25=False, protocols=("full",))
    mrr = {p: result["full"][f"onnx_{p}"]["mrr"] for p in precisions}
    return {
        "suite": "test",
        "protocol": "full",
        "n_queries": result["n_queries"],
        "n_candidates": result["n_candidates"],
        "metrics": result["full"],
        "mrr": mrr,
        "mrr_loss": mrr["fp32"] - mrr["int8"] if "int8" in mrr else None,
    }


def kfp_metrics(metrics: dict) -> dict[str, float]:
    """A few scalars for the KFP UI."""
    flat = {"parity.fp32_vs_torch_max_abs_diff": metrics["parity"]["fp32_vs_torch_max_abs_diff"]}
    if "int8_vs_fp32_cosine_min" in metrics["parity"]:
        flat["parity.int8_vs_fp32_cosine_min"] = metrics["parity"]["int8_vs_fp32_cosine_min"]
        flat["parity.int8_vs_fp32_cosine_mean"] = metrics["parity"]["int8_vs_fp32_cosine_mean"]
    if metrics["retrieval"]:
        for precision, value in metrics["retrieval"]["mrr"].items():
            flat[f"test.full.mrr.{precision}"] = value
        if metrics["retrieval"]["mrr_loss"] is not None:
            flat["test.full.mrr_loss_int8"] = metrics["retrieval"]["mrr_loss"]
    for shape, times in metrics["latency"]["ms"].items():
        for runner, ms in times.items():
            flat[f"latency_ms.{shape}.{runner}"] = ms
    return flat


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="semcode export-onnx",
        description="Export an encoder to ONNX (fp32 and int8, pooling and L2 normalisation in the graph, "
        "dynamic batch and sequence axes), with parity, test MRR and latency against torch.",
        epilog=(
            "examples:\n"
            "  semcode export-onnx --encoder runs/train/encoder --pairs runs/ingest/pairs --out runs/onnx\n"
            "  semcode export-onnx --encoder runs/train/encoder --out runs/onnx --no-per-channel --threads 4\n"
            "  semcode export-onnx --encoder runs/train/checkpoints/step-010000 --out runs/onnx-10k"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--encoder",
        required=True,
        metavar="DIR",
        help="encoder directory (encoder/ of a train-encoder output), or one of its checkpoints "
        "(checkpoints/step-NNNNNN)",
    )
    parser.add_argument(
        "--pairs",
        default=None,
        metavar="DIR",
        help="ingest pairs/ directory: valid rows for parity, the test split for MRR (without: synthetic "
        "parity texts, no MRR)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory for the ONNX files")
    cfg.add_arguments(parser, ExportOnnxConfig)
    args = parser.parse_args(argv)
    try:
        config = cfg.from_args(ExportOnnxConfig, args, section="export_onnx")
        run(config, args.encoder, args.out, pairs_dir=args.pairs)
    except (*cfg.BAD_INPUT_ERRORS, ExportError) as error:
        return cfg.bad_input("export-onnx", error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
