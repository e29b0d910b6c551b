"""Encode text with an exported ONNX encoder: ``tokenizers`` + ONNX Runtime, no torch.

``semcode search`` and ``semcode serve`` answer queries from a release bundle through this module, so it
must never import torch (a test checks ``sys.modules``). The ONNX graph (semcode.export) takes int64
``input_ids`` and ``attention_mask`` [batch, seq] and returns float32 ``embedding`` [batch, dim], pooled
and L2-normalised inside the graph; this module only tokenises, batches and runs it.

Tokenisation matches transformers' ``AutoTokenizer(..., padding=True, truncation=True, max_length=...)``
on the same ``tokenizer.json``: the post-processor stored in the file adds the special tokens
(``<s> ... </s>`` for our BPE, ``[CLS] ... [SEP]`` for WordPiece), truncation counts them, and padding
goes to the right, up to the longest text of the batch. Whatever truncation or padding the file itself
stores (all-MiniLM-L6-v2's pads every text to 128) is replaced by those settings.

A dynamically quantised graph (the int8 export) runs one text per call: its activations' int8 scales
come from the whole input tensor, so in a batch a text's vector would depend on its neighbours and their
padding (bench/int8_batch_dependence.py: MiniLM's CoSQA dev MRR moved by 0.013 with the batching alone).
One text per call gives every text the vector ``semcode search`` computes for a query on its own, and
costs no speed this machine can resolve (no padding left to compute; short texts pay the per-call
overhead): see bench/RESULTS.md, "int8 batching noise".
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from tokenizers import Tokenizer

INPUT_NAMES = ("input_ids", "attention_mask")
OUTPUT_NAME = "embedding"
# ONNX Runtime graph rewrites left off in every session. SkipLayerNormFusion turns residual Add +
# LayerNormalization into SkipLayerNormalization, whose CPU kernel (onnxruntime 1.31) took 3.9 ms where
# Add + LayerNormalization took 0.52 ms on [16, 128, 384]: ~15% of the int8 encoder's time.
DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)
# Pad tokens of the tokenizers we meet, tried in order when tokenizer.json stores no padding settings.
KNOWN_PAD_TOKENS = ("<pad>", "[PAD]", "<|pad|>")
# Operators that quantise an activation with a scale computed from the tensor at run time.
DYNAMIC_QUANTIZATION_OPS = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeMatMul"})
# Metadata semcode's export writes into every file: "dynamic" (quantize_dynamic's int8) or "none". Read
# from the session at no cost; files exported before it existed have their graph read instead.
ACTIVATION_QUANTIZATION_KEY = "semcode.activation_quantization"


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def create_session(
    model_path: str | os.PathLike[str], threads: int = 0, spinning: bool = True
) -> ort.InferenceSession:
    """A CPU ONNX Runtime session with all graph optimisations but ``DISABLED_OPTIMIZERS``; ``threads``
    intra-op threads (0 = ORT's choice).

    ``spinning=False`` stops idle worker threads from busy-waiting for the next call: a little slower per
    call, but they leave the cores to other work (a shared machine, or another model timed in turn).
    """
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
    path = Path(tokenizer_path)
    if path.is_dir():
        path = path / "tokenizer.json"
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
        embeddings = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            embeddings[batch] = self.run(*self.tokenize([texts[i] for i in batch]))
        return embeddings
