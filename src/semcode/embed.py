"""An encoder spec becomes an embedding function ``(texts, kind) -> float32 unit vectors [N, D]``: every runtime.

One home for "how an encoder runs", used by every stage that embeds (evaluate, build_index,
mine_hard_negatives, train_decoder, export_onnx's checks) and by the bundle's readers (search, serve,
generate):

- ``runtime`` (``torch``, ``onnx-int8``, ``onnx-fp32``: semcode.contract; ``check_runtime`` for the stage
  configs) and ``load_embed_fn``: a semcode encoder directory or a checkpoint alias (``minilm``) run by
  torch on a device, or exported as the release bundle's encoder is and run by ONNX Runtime
  (``onnx_embed_fns``);
- ``OnnxEncoder``: one exported tower run by ``tokenizers`` + ONNX Runtime, no torch; ``bundle_embed_fn``
  over a release bundle's files.

torch, transformers, ONNX Runtime and tokenizers are imported inside the functions that need them:
``semcode search`` and ``semcode serve`` must never import torch (a test checks ``sys.modules``), and the
stage configs import this module for ``check_runtime``, which must keep ``--help`` fast.

OnnxEncoder's tokenisation matches transformers' ``AutoTokenizer(..., padding=True, truncation=True,
max_length=...)`` on the same ``tokenizer.json``: the post-processor stored in the file adds the special
tokens (``<s> ... </s>`` for our BPE, ``[CLS] ... [SEP]`` for WordPiece), truncation counts them, and
padding goes to the right, up to the longest text of the batch. Whatever truncation or padding the file
itself stores (all-MiniLM-L6-v2's pads every text to 128) is replaced by those settings.

A dynamically quantised graph (the int8 export) runs one text per call: its activations' int8 scales
come from the whole input tensor, so in a batch a text's vector would depend on its neighbours and their
padding (bench/int8_batch_dependence.py measures it). One text per call gives every text the vector
``semcode search`` computes for a query on its own, at no speed cost this machine resolves (bench/RESULTS.md,
"int8 batching noise"). Single-text calls keep ONNX Runtime's intra-op threads mostly idle, so they run
concurrently instead: one session with one intra-op thread, ``threads`` Python threads calling it (ONNX
Runtime releases the GIL in ``run``); 1.5x the texts/s of one caller with two intra-op threads on 2 cores,
with bit-identical vectors (bench/RESULTS.md, "int8 single-text calls in parallel").
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from semcode import storage
from semcode.config import ConfigError, available_cores
from semcode.contract import (
    ACTIVATION_QUANTIZATION_KEY,
    ENCODER_CONFIG_FILE,
    INPUT_NAMES,
    KINDS,
    METRICS_FILE,
    MINILM_ALIAS,
    OUTPUT_NAME,
    PRECISIONS,
    RUNTIMES,
    TOKENIZER_FILE,
)

if TYPE_CHECKING:
    import onnxruntime as ort
    from tokenizers import Tokenizer

EmbedFn = Callable[[list[str], str], np.ndarray]  # (texts, "query" | "code") -> float32 [N, D]
PROGRESS_CHUNK = 1024  # texts per encode call when progress is shown (each call sorts its texts by length)
TOKENIZE_BLOCK = 256  # texts tokenised at once for one-text-per-call encoding (OnnxEncoder.encode_one_by_one)
# ONNX Runtime graph rewrites left off in every session. SkipLayerNormFusion turns residual Add +
# LayerNormalization into SkipLayerNormalization, whose CPU kernel (onnxruntime 1.31) took 3.9 ms where
# Add + LayerNormalization took 0.52 ms on [16, 128, 384]: ~15% of the int8 encoder's time.
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)
# Pad tokens of the tokenizers we meet, tried in order when tokenizer.json stores no padding settings.
KNOWN_PAD_TOKENS = ("<pad>", "[PAD]", "<|pad|>")
# Operators that quantise an activation with a scale computed from the tensor at run time.
DYNAMIC_QUANTIZATION_OPS = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeMatMul"})
# ACTIVATION_QUANTIZATION_KEY (contract): the export writes "dynamic" (quantize_dynamic's int8) or "none"
# into every file's metadata, read from the session at no cost; older files have their graph read instead.


def check_runtime(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {list(RUNTIMES)}, got {runtime!r}")


def create_session(
    model_path: str | os.PathLike[str], threads: int = 0, spinning: bool = True
) -> ort.InferenceSession:
    """A CPU ONNX Runtime session with all graph optimisations but ``DISABLED_OPTIMIZERS``; ``threads``
    intra-op threads (0 = ORT's choice).

    ``spinning=False`` stops idle worker threads from busy-waiting for the next call: a little slower per
    call, but they leave the cores to other work (a shared machine, or another model timed in turn).
    """
    import onnxruntime as ort

    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # one sequential graph: a second pool only competes for the cores
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(
        str(path), options, providers=["CPUExecutionProvider"], disabled_optimizers=list(DISABLED_OPTIMIZERS)
    )


def quantizes_dynamically(model_path: str | os.PathLike[str]) -> bool:
    """Whether the ONNX graph quantises activations with scales computed at run time from the tensor
    (``quantize_dynamic``'s output): then a text's vector depends on the rest of its batch."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return any(node.op_type in DYNAMIC_QUANTIZATION_OPS for node in graph.node)


def load_padded_tokenizer(
    tokenizer_path: str | os.PathLike[str], max_length: int, pad_token: str | None = None
) -> Tokenizer:
    """``tokenizer.json`` set up to truncate to ``max_length`` tokens and pad right to the batch's longest.

    ``pad_token``: None takes the one tokenizer.json's padding settings name, else the first of
    ``KNOWN_PAD_TOKENS`` in the vocabulary. The pad id does not change the embedding (the attention mask
    hides pad positions from attention and pooling), but matching transformers keeps ids comparable.
    """
    from tokenizers import Tokenizer

    path = Path(tokenizer_path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    tokenizer = Tokenizer.from_file(str(path))
    if pad_token is None:
        stored = tokenizer.padding
        candidates = ([stored["pad_token"]] if stored else []) + list(KNOWN_PAD_TOKENS)
        pad_token = next((t for t in candidates if tokenizer.token_to_id(t) is not None), None)
        if pad_token is None:
            raise ValueError(f"{path}: no pad token found (tried {candidates}); pass pad_token")
    pad_id = tokenizer.token_to_id(pad_token)
    if pad_id is None:
        raise ValueError(f"{path}: pad token {pad_token!r} is not in the vocabulary")
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(direction="right", pad_id=pad_id, pad_token=pad_token, length=None)
    return tokenizer


class OnnxEncoder:
    """One exported tower: texts -> float32 unit vectors [N, D], in the order given.

    ``prefix`` is prepended to every text before tokenisation (the encoder's ``query_prefix`` or
    ``code_prefix``; bundle.json records them). Texts are batched longest first so each batch pads little.
    ``one_text_per_call``: None (the default) decides from the graph, True for a dynamically quantised
    one (see the module docstring); False batches anyway (bench/int8_batch_dependence.py shows why not).
    Single-text calls run on ``callers`` threads at once (None: ``threads``, 0 = every core); the vectors
    do not depend on it.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        tokenizer_path: str | os.PathLike[str],
        max_length: int,
        prefix: str = "",
        *,
        threads: int = 0,
        batch_size: int = 64,
        pad_token: str | None = None,
        one_text_per_call: bool | None = None,
        callers: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model_path = Path(model_path)
        self.max_length = max_length
        self.prefix = prefix
        self.tokenizer = load_padded_tokenizer(tokenizer_path, max_length, pad_token)
        self.session = create_session(self.model_path, threads)
        if one_text_per_call is None:
            marked = self.session.get_modelmeta().custom_metadata_map.get(ACTIVATION_QUANTIZATION_KEY)
            one_text_per_call = marked == "dynamic" if marked else quantizes_dynamically(self.model_path)
        self.batch_size = 1 if one_text_per_call else batch_size
        # Concurrent single-text callers (module docstring): as many as the threads asked for, each call
        # on one intra-op thread. callers=1 keeps one caller on ``threads`` intra-op threads.
        self.callers = 1
        if one_text_per_call:
            self.callers = callers or threads or available_cores()
            if self.callers > 1:
                self.session = create_session(self.model_path, 1)
        inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        if sorted(inputs) != sorted(INPUT_NAMES) or outputs != [OUTPUT_NAME]:
            raise ValueError(
                f"{self.model_path}: expected inputs {list(INPUT_NAMES)} and output [{OUTPUT_NAME!r}], "
                f"got {inputs} and {outputs}; is it a semcode encoder export?"
            )
        dim = self.session.get_outputs()[0].shape[1]
        self.dim = dim if isinstance(dim, int) else int(self.run(*self.tokenize([""])).shape[1])

    def tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Prefixed, truncated, padded: int64 input_ids and attention_mask [len(texts), longest]."""
        encodings = self.tokenizer.encode_batch([self.prefix + text for text in texts])
        input_ids = np.array([e.ids for e in encodings], dtype=np.int64)
        attention_mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        return input_ids, attention_mask

    def run(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """The graph on token ids: [B, T] int64 each -> float32 [B, D]."""
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        return self.session.run([OUTPUT_NAME], feeds)[0]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """float32 [len(texts), D] unit rows; an empty list gives [0, D]."""
        texts = list(texts)
        if self.batch_size == 1:
            return self.encode_one_by_one(texts)
        embeddings = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            embeddings[batch] = self.run(*self.tokenize([texts[i] for i in batch]))
        return embeddings

    def encode_one_by_one(self, texts: list[str]) -> np.ndarray:
        """``encode`` with one text per call, on ``callers`` threads. Texts are tokenised
        ``TOKENIZE_BLOCK`` at a time (one call into the tokenizer's Rust threads rather than one Python
        call per text, which holds the GIL the callers share; on 2 cores within the noise, -6%..+6%,
        bench/int8_encoder_profile.py) and each is cut back to its own tokens: right padding makes those
        the ids it has when tokenised alone."""
        from concurrent.futures import ThreadPoolExecutor

        embeddings = np.zeros((len(texts), self.dim), dtype=np.float32)
        with ThreadPoolExecutor(self.callers) as pool:
            for start in range(0, len(texts), TOKENIZE_BLOCK):
                input_ids, attention_mask = self.tokenize(texts[start : start + TOKENIZE_BLOCK])
                alone = [
                    (input_ids[row : row + 1, :length], attention_mask[row : row + 1, :length])
                    for row, length in enumerate(attention_mask.sum(axis=1))
                ]
                for row, vector in enumerate(pool.map(lambda feeds: self.run(*feeds), alone)):
                    embeddings[start + row] = vector[0]
        return embeddings


# ---------------------------------------------------------------------------------------------
# Encoder specs as embedding functions


def check_encoder_spec(spec: str, what: str = "encoder") -> None:
    """``minilm`` or an encoder directory (local or s3://); raises FileNotFoundError before any model is
    loaded. On S3 only the config file is looked for (one request): the files are checked once downloaded."""
    if spec == MINILM_ALIAS:
        return
    if storage.is_s3(spec):
        try:
            found = any(
                storage.exists(storage.join(spec, name)) for name in (ENCODER_CONFIG_FILE, "config.json")
            )
        except OSError as error:  # an unreachable endpoint, a missing bucket, bad credentials
            raise FileNotFoundError(f"{what} {spec}: cannot check it: {error}") from None
        if not found:
            raise FileNotFoundError(f"{what} {spec}: neither {ENCODER_CONFIG_FILE} nor config.json there")
        return
    path = Path(spec)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} {spec}: not a directory nor the alias {MINILM_ALIAS!r}")
    if not any((path / name).is_file() for name in (ENCODER_CONFIG_FILE, "config.json")):
        inner = [p.parent for p in sorted(path.glob(f"*/{ENCODER_CONFIG_FILE}"))]
        hint = f"; did you mean {inner[0]}?" if inner else ""
        raise FileNotFoundError(
            f"{what} {spec}: neither {ENCODER_CONFIG_FILE} nor config.json inside; expected an encoder "
            f"directory (the train-encoder output's encoder/, or a transformers checkpoint){hint}"
        )
    if (path / ENCODER_CONFIG_FILE).is_file():
        check_encoder_files(path, what)


# What a semcode encoder directory holds, per tower (the top for shared towers, query/ and code/ else).
TOWER_FILES = ("config.json", "model.safetensors", "2_Dense/model.safetensors")


def check_encoder_files(path: Path, what: str = "encoder") -> None:
    """Raise FileNotFoundError / ValueError naming the file when a semcode encoder directory lacks one
    of its files or holds a truncated or corrupt one: the weights' headers are read (safetensors checks
    that the data covers them), not the weights, so this costs milliseconds before any model loads."""
    from safetensors import SafetensorError, safe_open

    config_path = path / ENCODER_CONFIG_FILE
    try:
        towers = json.loads(config_path.read_text()).get("towers", "shared")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
        raise ValueError(f"{what} {config_path}: not a JSON object ({error})") from None
    tower_dirs = [path] if towers == "shared" else [path / "query", path / "code"]
    needed = [path / TOKENIZER_FILE] + [tower / name for tower in tower_dirs for name in TOWER_FILES]
    missing = [str(p.relative_to(path)) for p in needed if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{what} {path} lacks {', '.join(missing)}: an incomplete copy of an encoder?"
        )
    for weights in (p for p in needed if p.suffix == ".safetensors"):
        try:
            with safe_open(str(weights), framework="numpy") as opened:
                opened.keys()
        except SafetensorError as error:
            raise ValueError(
                f"{what} {weights}: unreadable weights, truncated or corrupt ({error})"
            ) from None


def resolve_device(device: str) -> str:
    """``auto`` -> cuda when available, else cpu; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_embed_fn(
    spec: str,
    batch_size: int = 64,
    max_length: int | None = None,
    device: str = "auto",
    show_progress: bool = False,
    runtime: str = "torch",
    exported: str | os.PathLike[str] | None = None,
) -> tuple[EmbedFn, int]:
    """``(texts, kind) -> float32 unit vectors [N, D]`` over the encoder ``spec``, and D.

    A semcode encoder directory loads as saved (prefixes included); another checkpoint (``minilm``)
    loads as its normalised mean pooling, the sentence-transformers recipe. ``runtime``: ``torch`` on
    ``device``, or ``onnx-int8`` / ``onnx-fp32``: exported as the release bundle's encoder is and run by
    ONNX Runtime on the CPU (``onnx_embed_fns``). ``exported``: export_onnx's output for this encoder;
    with an onnx runtime its files are run as they are (``exported_embed_fn``) instead of exporting the
    encoder again, which costs about 20 s per stage on 2 cores and would measure a copy of the shipped
    file rather than the file itself.
    """
    fns, dim = load_embed_fns(spec, [max_length], batch_size, device, show_progress, runtime, exported)
    return fns[0], dim


def load_embed_fns(
    spec: str,
    max_lengths: Sequence[int | None],
    batch_size: int = 64,
    device: str = "auto",
    show_progress: bool = False,
    runtime: str = "torch",
    exported: str | os.PathLike[str] | None = None,
) -> tuple[list[EmbedFn], int]:
    """``load_embed_fn`` at several max lengths (None: the encoder's own), one EmbedFn per entry of
    ``max_lengths``, and D: the encoder is loaded, and exported for an onnx runtime, once for all of them
    (evaluate runs the start model at three lengths: one export instead of three, ~12 s each on 2 cores)."""
    from semcode.models.encoder import encode_texts, load_hf_tokenizer, load_pretrained

    check_runtime(runtime)  # a ValueError (ConfigError) naming the choices
    if runtime != "torch" and exported is not None:
        precision = runtime.removeprefix("onnx-")
        fns = [
            exported_embed_fn(exported, precision, batch_size, length, show_progress, encoder_dir=spec)
            for length in max_lengths
        ]
        return [fn for fn, _ in fns], fns[0][1]
    model = load_pretrained(spec).eval()
    tokenizer = load_hf_tokenizer(spec)
    if runtime != "torch":
        precision = runtime.removeprefix("onnx-")
        fns = onnx_embed_fns(model, tokenizer, precision, batch_size, max_lengths, show_progress)
        return fns, model.embedding_dim
    device = resolve_device(device)
    model.to(device)

    def embed_at(max_length: int | None) -> EmbedFn:
        def embed(texts: list[str], kind: str) -> np.ndarray:
            return encode_texts(
                model,
                tokenizer,
                texts,
                kind,
                batch_size=batch_size,
                max_length=max_length,
                device=device,
                show_progress=show_progress,
            )

        return embed

    return [embed_at(length) for length in max_lengths], model.embedding_dim


def onnx_embed_fns(
    model: Any,
    hf_tokenizer: Any,
    precision: str = "int8",
    batch_size: int = 64,
    max_lengths: Sequence[int | None] = (None,),
    show_progress: bool = False,
) -> list[EmbedFn]:
    """One ``(texts, kind) -> float32 unit vectors [N, D]`` per entry of ``max_lengths`` (None: the
    model's own) through ONNX Runtime, exported here once for all of them.

    Each tower is exported (and quantised for ``int8``) into a temporary directory with the settings of
    the export_onnx stage, so the vectors are those the release bundle's encoder gives; ONNX Runtime
    reads the files when the sessions open, so nothing is left on disk. On CPU the int8 encoder is faster
    than torch (bench/RESULTS.md), which is what the stages that embed many texts gain from it.
    """
    import tempfile

    import torch

    from semcode.export import TAG, export_tower, quantize_int8, tower_exports
    from semcode.progress import log

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    threads = torch.get_num_threads()
    encoders: list[dict[str, OnnxEncoder]] = [{} for _ in max_lengths]
    with tempfile.TemporaryDirectory(prefix="semcode-onnx-embed-") as tmp:
        hf_tokenizer.save_pretrained(tmp)  # tokenizer.json, as OnnxEncoder reads it
        for export in tower_exports(model.towers):
            fp32_path = export_tower(model.tower_for(export.kinds[0]), Path(tmp) / export.fp32_name)
            path = fp32_path
            if precision == "int8":
                path = Path(tmp) / export.int8_name
                quantize_int8(fp32_path, path)
            for kind in export.kinds:
                for at_length, max_length in zip(encoders, max_lengths, strict=True):
                    at_length[kind] = OnnxEncoder(
                        path,
                        Path(tmp) / TOKENIZER_FILE,
                        max_length or model.max_length,
                        model.prefix_for(kind),
                        threads=threads,
                        batch_size=batch_size,
                    )
    log(TAG, f"encoding with ONNX Runtime ({precision}, {threads} threads)")
    return [encoders_embed_fn(at_length, show_progress) for at_length in encoders]


def exported_embed_fn(
    export_dir: str | os.PathLike[str],
    precision: str = "int8",
    batch_size: int = 64,
    max_length: int | None = None,
    show_progress: bool = False,
    encoder_dir: str | os.PathLike[str] | None = None,
) -> tuple[EmbedFn, int]:
    """``(texts, kind) -> float32 unit vectors [N, D]`` through the files export_onnx wrote, and D.

    ``export_dir`` is export_onnx's output: its metrics.json names each precision's files, the prefixes,
    the dimension and the length the encoder was exported at (``max_length`` None keeps that one). With
    ``encoder_dir``, the export must be of that encoder (metrics.json ``encoder_digest``, the sha256 of
    its weights), else a ValueError names both.
    """
    import torch

    from semcode.export import TAG
    from semcode.progress import log

    export_dir = Path(export_dir)
    exported = check_exported(export_dir, precision, encoder_dir)
    files = exported["files"][precision]
    threads = torch.get_num_threads()
    encoders = {
        kind: OnnxEncoder(
            export_dir / files[kind],
            export_dir / TOKENIZER_FILE,
            max_length or int(exported["max_length"]),
            exported[f"{kind}_prefix"],
            threads=threads,
            batch_size=batch_size,
        )
        for kind in KINDS
    }
    log(TAG, f"encoding with ONNX Runtime ({precision}, {threads} threads) from {export_dir}")
    return encoders_embed_fn(encoders, show_progress), int(exported["embedding_dim"])


def encoder_digest(encoder_dir: str | os.PathLike[str]) -> str:
    """sha256 over an encoder directory's weights (every .safetensors file, by relative path): its identity."""
    digest = hashlib.sha256()
    for path in sorted(Path(encoder_dir).rglob("*.safetensors")):
        digest.update(path.relative_to(encoder_dir).as_posix().encode())
        with open(path, "rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").hexdigest().encode())
    return digest.hexdigest()


def check_exported(
    export_dir: str | os.PathLike[str], precision: str, encoder_dir: str | os.PathLike[str] | None = None
) -> dict:
    """export_onnx's metrics.json in ``export_dir``, once it holds ``precision``'s files and (with
    ``encoder_dir``) is an export of that encoder: the sha256 of its weights, ``encoder_digest``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    export_dir = Path(export_dir)
    metrics_path = export_dir / METRICS_FILE
    if not metrics_path.is_file():
        raise FileNotFoundError(f"{export_dir} is not an export-onnx output: {METRICS_FILE} is missing")
    exported = json.loads(metrics_path.read_text())
    files = exported.get("files", {}).get(precision) or {}
    missing = [name for name in files.values() if not (export_dir / name).is_file()]
    if not files or missing or not (export_dir / TOKENIZER_FILE).is_file():
        raise FileNotFoundError(
            f"{export_dir} lacks its {precision} encoder: files {files or 'none'}, missing "
            f"{missing + ([] if (export_dir / TOKENIZER_FILE).is_file() else [TOKENIZER_FILE])}"
        )
    if encoder_dir is not None and exported.get("encoder_digest") != encoder_digest(encoder_dir):
        raise ValueError(
            f"{export_dir} is an export of another encoder than {encoder_dir} (the sha256 of the weights "
            "differs, or the export predates encoder_digest): export this encoder, or leave the export out"
        )
    return exported


def encoders_embed_fn(encoders: dict[str, OnnxEncoder], show_progress: bool) -> EmbedFn:
    """One OnnxEncoder per kind as an EmbedFn; with ``show_progress``, a progress line per kind."""
    from semcode.progress import Progress

    def embed(texts: list[str], kind: str) -> np.ndarray:
        if not show_progress:
            return encoders[kind].encode(texts)
        vectors = []
        with Progress(f"encode-{kind}", total=len(texts), unit="texts") as progress:
            for start in range(0, len(texts), PROGRESS_CHUNK):
                vectors.append(encoders[kind].encode(texts[start : start + PROGRESS_CHUNK]))
                progress.update(len(vectors[-1]))
        return np.concatenate(vectors) if vectors else encoders[kind].encode([])

    return embed


def bundle_embed_fn(bundle_dir: Path, bundle: dict, precision: str | None, threads: int) -> EmbedFn:
    """``(texts, kind) -> [N, D]`` with a release bundle's ONNX encoder (the one search uses);
    ``bundle`` is its bundle.json, ``precision`` None its default files."""
    files = bundle["encoders"][precision] if precision else bundle["default_files"]
    prefixes = {"query": bundle["query_prefix"], "code": bundle["code_prefix"]}
    encoders: dict[str, OnnxEncoder] = {}

    def embed(texts: list[str], kind: str) -> np.ndarray:
        if kind not in encoders:
            encoders[kind] = OnnxEncoder(
                bundle_dir / files[kind],
                bundle_dir / TOKENIZER_FILE,
                int(bundle["max_length"]),
                prefixes[kind],
                threads=threads,
            )
        return encoders[kind].encode(texts)

    return embed
