"""ONNX export of the encoder: fp32 graphs with pooling and normalisation inside, int8 dynamic quantisation,
parity and latency measurement.

One ONNX file per tower (``tower_exports``): shared towers -> ``encoder.onnx``; separate towers ->
``query_encoder.onnx`` and ``code_encoder.onnx``; each with an ``.int8.onnx`` twin. Every file has::

    inputs   input_ids       int64 [batch, sequence]
             attention_mask  int64 [batch, sequence]
    output   embedding       float32 [batch, dim], mean-pooled over the mask, projected, L2-normalised

Choices, and why:

- ``torch.onnx.export(dynamo=True)`` (torch.export + onnxscript) with ``dynamic_shapes``: it keeps the
  batch and sequence axes symbolic; the legacy TorchScript exporter bakes shapes into parts of the graph.
  The whole ``EncoderTower.forward`` is exported, so pooling, projection and normalisation run in ONNX
  Runtime and every reader gets the same vector without re-implementing them.
- Self-contained files: weights are stored inside the ``.onnx`` file (no ``.data`` beside it) unless the
  model is over protobuf's 2 GB limit, where external data is the only way.
- The fp32 file holds standard ONNX ops only, so any ONNX runtime can run it. The int8 file is for ONNX
  Runtime: first onnxscript's ORT fusions turn attention into ``MultiHeadAttention`` (the Q, K, V
  projections stay separate MatMuls, so they are still quantised) and GELU into ``BiasGelu``
  (``fuse_for_ort``); the packed-QKV ``Attention`` fusion is left out on purpose: ``quantize_dynamic``
  either leaves its weights fp32 or turns it into a ``QAttention`` that drops the padding mask.
- int8: ``quant_pre_process`` (ONNX shape inference + ORT's basic graph optimisation; the symbolic shape
  pass is skipped, it fails on these graphs) then ``quantize_dynamic``: weights int8 ahead of time,
  activations quantised per batch at run time, so no calibration data is needed. Defaults chosen by
  measurement on all-MiniLM-L6-v2 (bench/bench_onnx.py prints the numbers): signed int8 weights with
  per-channel scales, on MatMul and the embedding Gather. Per-tensor scales run no faster but drift
  further from fp32 (cosine to fp32 ~0.95 vs ~0.993); quantising the Gather keeps the accuracy and
  makes the file 2.5x smaller (MiniLM: 23 MB instead of 59 MB); unsigned weights are slower (no u8u8
  VNNI path).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import re
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from semcode.config import available_cores
from semcode.contract import ACTIVATION_QUANTIZATION_KEY, INPUT_NAMES, OUTPUT_NAME, onnx_file_name, onnx_stems
from semcode.progress import log

if TYPE_CHECKING:  # torch is imported where it runs: the export-onnx stage's --help stays fast
    from semcode.models.encoder import EncoderTower

TAG = "export"
WEIGHT_TYPES = ("QInt8", "QUInt8")
# Protobuf cannot serialise a message over 2 GB; only then do weights go to an external data file.
PROTOBUF_LIMIT_BYTES = 2 * 1024**3
# The example batch the exporter traces with; neither axis may be 0 or 1, which torch.export specialises.
EXAMPLE_BATCH, EXAMPLE_SEQUENCE = 2, 16


Runner = Callable[[np.ndarray, np.ndarray], Any]  # (input_ids, attention_mask) int64 [B, T] -> anything


class ExportError(RuntimeError):
    """Exporting or quantising a model failed; the message says which file and why."""


@dataclass(frozen=True)
class TowerExport:
    """One ONNX file pair: ``{stem}.onnx`` (fp32) and ``{stem}.int8.onnx``, encoding ``kinds``."""

    stem: str  # "encoder", "query_encoder" or "code_encoder" (semcode.contract.onnx_stems)
    kinds: tuple[str, ...]  # which texts it encodes: ("query", "code") for a shared tower

    @property
    def fp32_name(self) -> str:
        return onnx_file_name(self.stem, "fp32")

    @property
    def int8_name(self) -> str:
        return onnx_file_name(self.stem, "int8")

    def file_name(self, precision: str) -> str:
        return onnx_file_name(self.stem, precision)


def tower_exports(towers: str) -> list[TowerExport]:
    """The files of the release bundle contract for shared or separate towers."""
    return [TowerExport(stem, kinds) for stem, kinds in onnx_stems(towers).items()]


def export_for_kind(towers: str, kind: str) -> TowerExport:
    """The file pair that encodes ``kind`` ("query" or "code")."""
    return next(export for export in tower_exports(towers) if kind in export.kinds)


# ---------------------------------------------------------------------------------------------
# Export and quantisation


def _rename_output(onnx_program: Any, name: str) -> None:
    """Name the graph output ``name``; an internal value of that name (the embedding Gather's) is renamed.

    Passing ``output_names`` to the exporter instead gives two values named "embedding", which ONNX
    Runtime rejects as a duplicate definition (torch 2.13).
    """
    graph = onnx_program.model.graph
    output = graph.outputs[0]
    for node in graph:
        for value in node.outputs:
            if value.name == name and value is not output:
                value.name = f"{name}_internal"
    output.name = name


def export_tower(
    tower: EncoderTower,
    path: str | os.PathLike[str],
    opset: int = 18,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write one tower as a self-contained ONNX file with dynamic batch and sequence axes; returns ``path``.

    ``metadata`` goes into the model's metadata_props (ONNX Runtime shows it as custom_metadata_map).
    The sequence axis is bounded by the tower's position table. A tower in another dtype is exported from
    a float32 copy; the tower's train/eval mode is restored afterwards. Raises ExportError when export fails.
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = tower.transformer.config
    positions = int(getattr(config, "max_position_embeddings", 512))
    vocab_size = int(config.vocab_size)
    if next(tower.parameters()).dtype != torch.float32:
        tower = copy.deepcopy(tower).float()
    was_training = tower.training
    tower.eval()
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab_size, (EXAMPLE_BATCH, EXAMPLE_SEQUENCE), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, EXAMPLE_SEQUENCE // 2 :] = 0  # a padded row, so the mask path is traced for real
    batch = torch.export.Dim("batch", min=1)
    sequence = torch.export.Dim("sequence", min=1, max=positions)
    dynamic_shapes = {name: {0: batch, 1: sequence} for name in INPUT_NAMES}
    # Known noise of the torch 2.13 exporter, not problems of this model: "torchvision is not installed"
    # (it registers torchvision ops when present), axis-name and treespec warnings.
    registration_logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    registration_level = registration_logger.level
    registration_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used.*")
            warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\).*")
            onnx_program = torch.onnx.export(
                tower,
                (input_ids, attention_mask),
                dynamo=True,
                opset_version=opset,
                dynamic_shapes=dynamic_shapes,
                optimize=True,
                verbose=False,
            )
    except Exception as error:
        raise ExportError(
            f"exporting the encoder tower to {path} failed: {type(error).__name__}: {error}"
        ) from error
    finally:
        tower.train(was_training)
        registration_logger.setLevel(registration_level)
    if onnx_program is None:
        raise ExportError(f"exporting the encoder tower to {path} produced no ONNX program")
    input_names = [value.name for value in onnx_program.model.graph.inputs]
    if input_names != list(INPUT_NAMES) or len(onnx_program.model.graph.outputs) != 1:
        raise ExportError(f"{path}: unexpected graph signature: inputs {input_names}")
    _rename_output(onnx_program, OUTPUT_NAME)
    onnx_program.model.metadata_props[ACTIVATION_QUANTIZATION_KEY] = "none"  # quantize_int8 sets "dynamic"
    for key, value in (metadata or {}).items():
        onnx_program.model.metadata_props[key] = str(value)
    weight_bytes = sum(p.numel() * p.element_size() for p in tower.parameters())
    onnx_program.save(str(path), external_data=weight_bytes >= PROTOBUF_LIMIT_BYTES)
    set_metadata(path)  # clears the exporter's stack traces (the build machine's paths) too
    return path


def model_bytes(path: str | os.PathLike[str]) -> int:
    """Size of an ONNX file plus its external data file (``<name>.data``) when it has one."""
    path = Path(path)
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.is_file() else 0)


def fuse_for_ort(src_path: str | os.PathLike[str], dst_path: str | os.PathLike[str]) -> dict[str, int]:
    """Rewrite a transformer graph with ONNX Runtime's fused CPU ops; returns how many of each were made.

    onnxscript's ORT fusions, in the order of its ``optimize_for_ort``, minus two: the packed-QKV
    ``Attention`` step (see the module docstring) and ``SkipLayerNormalization``, whose CPU kernel is
    slower than the Add + LayerNormalization it replaces (see ``semcode.embed.create_session``).
    What remains: erf GELU -> Gelu, attention -> MultiHeadAttention (with its Q/K/V biases), bias + Gelu
    -> BiasGelu. A pattern that does not match is left as it is, so the result computes the same function.
    """
    import onnx_ir as ir
    import onnx_ir.passes.common as common_passes
    from onnxscript.optimizer import optimize
    from onnxscript.rewriter import rewrite
    from onnxscript.rewriter.ort_fusions import ORT_PATTERN_REWRITE_RULES, shape_optimization
    from onnxscript.rewriter.ort_fusions.bias_gelu import fuse_bias_gelu
    from onnxscript.rewriter.ort_fusions.erfgelu import fuse_erfgelu
    from onnxscript.rewriter.ort_fusions.mha import fuse_mha2
    from onnxscript.rewriter.ort_fusions.mha_bias import fuse_mha_bias
    from onnxscript.rewriter.ort_fusions.sdpa import fuse_sdpa

    model = ir.load(str(src_path))
    common_passes.ShapeInferencePass()(model)  # the fusions check shapes
    optimize(model)
    shape_optimization.rules.apply_to_model(model)
    optimize(model)
    counts = {
        "erf_gelu": fuse_erfgelu(model),
        "sdpa": fuse_sdpa(model, apply_shape_inference=True),
        "multi_head_attention": fuse_mha2(model),
    }
    counts["multi_head_attention_bias"] = fuse_mha_bias(model) if counts["multi_head_attention"] else 0
    counts["bias_gelu"] = fuse_bias_gelu(model)
    optimize(model)
    rewrite(model, ORT_PATTERN_REWRITE_RULES)
    common_passes.ShapeInferencePass()(model)
    large = model_bytes(src_path) >= PROTOBUF_LIMIT_BYTES
    ir.save(model, str(dst_path), external_data=Path(dst_path).name + ".data" if large else None)
    return counts


def drop_initializer_value_info(path: str | os.PathLike[str]) -> None:
    """Remove the graph's value_info entries that describe initializers (rewrites ``path`` in place).

    The exporter records every initializer's shape in value_info. ``quantize_dynamic`` turns a Gemm with
    transB (the projection when embedding_dim != hidden size) into a MatMul by transposing the weight,
    but leaves that stale shape behind, and its shape inference then fails ("Inferred shape and existing
    shape differ"). Initializers carry their own shapes, so the entries are redundant.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)  # external data stays where it is
    initializers = {tensor.name for tensor in model.graph.initializer}
    kept = [info for info in model.graph.value_info if info.name not in initializers]
    if len(kept) < len(model.graph.value_info):
        del model.graph.value_info[:]
        model.graph.value_info.extend(kept)
        onnx.save(model, str(path))


# Node metadata the torch exporter records, as doc_string does: source paths of the machine that exported
DEBUG_METADATA_PREFIX = "pkg.torch."


def clear_debug_info(model: Any) -> int:
    """Clear the doc_string of the model, its graphs, functions and every node in them (subgraphs too), and
    the nodes' exporter metadata (``pkg.torch.*``: stack traces, FX node names), in an ``onnx.ModelProto``.
    Only descriptive fields: the computation is unchanged. Returns how many nodes had something cleared."""
    import onnx

    cleared = 0

    def nodes_of(graph: Any) -> None:
        nonlocal cleared
        graph.doc_string = ""
        for node in graph.node:
            debug = [prop for prop in node.metadata_props if prop.key.startswith(DEBUG_METADATA_PREFIX)]
            if node.doc_string or debug:
                cleared += 1
                node.doc_string = ""
                for prop in debug:
                    node.metadata_props.remove(prop)
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    nodes_of(attribute.g)
                for subgraph in attribute.graphs:
                    nodes_of(subgraph)

    model.doc_string = ""
    nodes_of(model.graph)
    for function in model.functions:
        function.doc_string = ""
        nodes_of(function)
    return cleared


def set_metadata(path: str | os.PathLike[str], key: str | None = None, value: str = "") -> None:
    """Set one metadata_props entry of the ONNX file at ``path`` (rewritten in place; none without ``key``),
    and clear its debug info (``clear_debug_info``): what an export ships names no build machine's paths."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)  # external data stays where it is
    if key is not None:
        onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, key: value})
    clear_debug_info(model)
    onnx.save(model, str(path))


# quantize_dynamic logs one INFO line per activation it quantises dynamically, on the root logger
# (125 lines per export in a kfp.local run, whose root logger shows INFO): expected, so dropped.
ORT_QUANTIZATION_NOISE = "Quantization parameters for tensor:"


@contextlib.contextmanager
def without_root_log_lines(prefix: str) -> Iterator[None]:
    """Drop root-logger records whose message starts with ``prefix`` inside the block; others pass."""

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(prefix)

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def quantize_int8(
    fp32_path: str | os.PathLike[str],
    int8_path: str | os.PathLike[str],
    weight_type: str = "QInt8",
    per_channel: bool = True,
    reduce_range: bool = True,
    op_types: Sequence[str] = ("MatMul", "Gather"),
    fuse: bool = True,
) -> dict[str, Any]:
    """Dynamic int8 quantisation of an fp32 export; ``op_types`` () = every type ORT quantises.

    With ``fuse``, ``fuse_for_ort`` first; then ``quant_pre_process`` into a temporary file (ORT
    recommends it before quantising), then ``quantize_dynamic``. Returns what was done (the fusion
    counts). Raises ExportError when a step fails.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if weight_type not in WEIGHT_TYPES:
        raise ValueError(f"weight_type must be one of {WEIGHT_TYPES}, got {weight_type!r}")
    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    large = model_bytes(fp32_path) >= PROTOBUF_LIMIT_BYTES
    fusions: dict[str, int] = {}
    # Beside the int8 file (the stage's partial output folder): a kill leaves nothing in /tmp.
    with tempfile.TemporaryDirectory(prefix=".semcode-quant-", dir=int8_path.parent) as tmp:
        source, prepared = fp32_path, Path(tmp) / "prepared.onnx"
        try:
            if fuse:
                source = Path(tmp) / "fused.onnx"
                fusions = fuse_for_ort(fp32_path, source)
            quant_pre_process(
                str(source), str(prepared), skip_symbolic_shape=True, save_as_external_data=large
            )
            drop_initializer_value_info(prepared)
            with without_root_log_lines(ORT_QUANTIZATION_NOISE):
                quantize_dynamic(
                    str(prepared),
                    str(int8_path),
                    weight_type=QuantType[weight_type],
                    per_channel=per_channel,
                    reduce_range=reduce_range,
                    op_types_to_quantize=list(op_types) or None,
                    use_external_data_format=large,
                )
            set_metadata(int8_path, ACTIVATION_QUANTIZATION_KEY, "dynamic")
        except Exception as error:
            raise ExportError(
                f"int8 quantisation of {fp32_path} failed: {type(error).__name__}: {error}"
            ) from error
    return {"fusions": fusions}


# ---------------------------------------------------------------------------------------------
# Parity


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} and {b.shape}")
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0


def cosine_stats(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Row-wise cosine similarity of two [N, D] arrays: mean, min, 1st percentile."""
    if a.shape != b.shape or a.ndim != 2 or len(a) == 0:
        raise ValueError(f"need two non-empty [N, D] arrays of one shape, got {a.shape} and {b.shape}")
    a, b = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = (a * b).sum(axis=1) / np.maximum(norms, 1e-12)
    return {"mean": float(cosine.mean()), "min": float(cosine.min()), "p01": float(np.percentile(cosine, 1))}


def synthetic_texts(n: int, kind: str, seed: int = 0) -> list[str]:
    """Deterministic made-up queries or code of varied length, for parity checks without a pairs split."""
    rng = np.random.default_rng(seed)
    words = (
        "read write parse sort merge split join count find replace load save open close list dict "
        "string number file path line value key item node tree graph user request response error"
    ).split()
    texts = []
    for i in range(n):
        picked = [str(w) for w in rng.choice(words, size=int(rng.integers(2, 12)))]
        if kind == "query":
            texts.append(" ".join(picked))
            continue
        body = "\n".join(f"    {w}_{j} = {w}(x, {j})" for j, w in enumerate(picked * int(rng.integers(1, 6))))
        texts.append(f"def {picked[0]}_{i}(x):\n{body}\n    return {picked[-1]}_0\n")
    return texts


def choose_default_encoder(
    mrr_fp32: float | None, mrr_int8: float | None, max_mrr_loss: float, int8: bool = True
) -> tuple[str, str]:
    """("int8" | "fp32", why): int8 unless it was not made or its MRR loss exceeds ``max_mrr_loss``."""
    if not int8:
        return "fp32", "int8 quantisation is off"
    if mrr_fp32 is None or mrr_int8 is None:
        return (
            "int8",
            "no test queries (no test split, or none in it): int8 chosen without an MRR check (cosine parity only)",
        )
    loss = mrr_fp32 - mrr_int8
    if loss > max_mrr_loss:
        return (
            "fp32",
            f"int8 loses {loss:.4f} MRR (fp32 {mrr_fp32:.4f}, int8 {mrr_int8:.4f}) > {max_mrr_loss}",
        )
    return "int8", f"int8 MRR loss {loss:.4f} <= {max_mrr_loss}"


def int8_rejected_banner(reason: str) -> str:
    """The loud stderr message when the bundle falls back to the fp32 encoder."""
    bar = "!" * 100
    return (
        f"{bar}\n!!! WARNING: the int8 ONNX encoder is NOT accurate enough; the default encoder is fp32.\n"
        f"!!! {reason}\n!!! Serving will use the fp32 file (slower). Raise max_mrr_loss to accept int8 anyway.\n"
        f"{bar}"
    )


# ---------------------------------------------------------------------------------------------
# Latency


def parse_shape(spec: str) -> tuple[int, int]:
    """ "16x128" -> (16, 128): batch x sequence."""
    match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", spec)
    if not match or int(match[1]) < 1 or int(match[2]) < 1:
        raise ValueError(
            f"a latency shape is BATCHxSEQUENCE with positive numbers, e.g. 16x128; got {spec!r}"
        )
    return int(match[1]), int(match[2])


def torch_runner(tower: EncoderTower) -> Runner:
    """The torch tower as a Runner, without autograd bookkeeping; puts the tower in eval mode."""
    import torch

    tower.eval()

    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> Any:
        with torch.inference_mode():
            return tower(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))

    return run


def onnx_runner(session: Any) -> Runner:
    def run(input_ids: np.ndarray, attention_mask: np.ndarray) -> Any:
        return session.run([OUTPUT_NAME], {"input_ids": input_ids, "attention_mask": attention_mask})

    return run


def measure_latency(
    runners: Mapping[str, Runner],
    shapes: Sequence[tuple[int, int]],
    vocab_size: int,
    repeats: int = 20,
    warmup: int = 3,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Median milliseconds per call of each runner at each (batch, sequence): ``{"16x128": {name: ms}}``.

    Inputs are random token ids with a full attention mask (no padding). The runners take turns within
    each repeat, so a load spike on a shared machine hits all of them alike and their ratios stay fair.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    rng = np.random.default_rng(seed)
    results: dict[str, dict[str, float]] = {}
    for batch, sequence in shapes:
        input_ids = rng.integers(min(5, vocab_size - 1), vocab_size, size=(batch, sequence), dtype=np.int64)
        attention_mask = np.ones_like(input_ids)
        for run in runners.values():
            for _ in range(warmup):
                run(input_ids, attention_mask)
        times: dict[str, list[float]] = {name: [] for name in runners}
        for _ in range(repeats):
            for name, run in runners.items():
                started = time.perf_counter()
                run(input_ids, attention_mask)
                times[name].append((time.perf_counter() - started) * 1000.0)
        results[f"{batch}x{sequence}"] = {name: round(statistics.median(t), 3) for name, t in times.items()}
        summary = ", ".join(f"{name} {ms:.1f} ms" for name, ms in results[f"{batch}x{sequence}"].items())
        log(TAG, f"latency {batch}x{sequence}: {summary}")
    return results


def speedups(latency: Mapping[str, Mapping[str, float]], baseline: str) -> dict[str, dict[str, float]]:
    """Per shape, ``baseline``'s time over each other runner's: > 1 means faster than the baseline."""
    return {
        shape: {
            name: round(times[baseline] / ms, 2) for name, ms in times.items() if name != baseline and ms > 0
        }
        for shape, times in latency.items()
    }


def latency_markdown(latency: Mapping[str, Mapping[str, float]], baseline: str | None = None) -> str:
    """A markdown table: one row per shape, one column per runner (median ms), and speedups over baseline."""
    names = list(next(iter(latency.values()))) if latency else []
    others = [n for n in names if n != baseline] if baseline in names else []
    header = ["batch x seq", *(f"{n} ms" for n in names), *(f"{n} speedup vs {baseline}" for n in others)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for shape, times in latency.items():
        cells = [shape, *(f"{times[n]:.1f}" for n in names)]
        cells += [f"{times[baseline] / times[n]:.2f}x" for n in others]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[int]:
    """torch's intra-op threads set to ``threads`` (0 = every available core) inside the block, then restored.

    Yields the number in use, to give ONNX Runtime sessions the same (``create_session(path, threads)``),
    so torch and ORT compete on equal terms.
    """
    import torch

    previous = torch.get_num_threads()
    resolved = threads or available_cores()
    torch.set_num_threads(resolved)
    try:
        yield resolved
    finally:
        torch.set_num_threads(previous)
