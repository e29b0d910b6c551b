"""The code decoder: a small Llama-style causal transformer that writes code from an embedding.

The embedding of a function (or of its docstring) by the frozen search encoder becomes ``k`` virtual
tokens that precede the code, and the decoder learns to write the code after them (teacher forcing)::

    embedding [B, D]
      -> prefix MLP: Linear(D, 4H) -> GELU -> Linear(4H, k*H)        [B, k, H]  ("virtual tokens")
    code ids [B, T] = <s> c1 ... cn </s> <pad>...
      -> the transformer's token embeddings                          [B, T, H]
    [prefix ; tokens] as inputs_embeds -> LlamaModel                 [B, k+T, H]
      -> the hidden state at <s>, c1, ... predicts c1, c2, ..., </s>   (the prefix and <pad> predict nothing)
    optional token bias: Linear(D, V)(embedding)                     [B, V]   added to every position's logits

The language token (``languages=("python", "go", ...)``, the languages of the training pairs): one
learned vector per language, placed after the prefix, so one decoder writes every language it was trained
on and is told which to write (``[prefix ; language ; tokens]``, ``conditioning``). A language it has no
vector for is refused by name (``language_ids``). A decoder saved before languages had no such token: it
knows Python alone (``known_languages``).

The token bias (``token_bias=True``) is a bag-of-tokens prior: one linear map from the embedding to the
vocabulary, added to the logits at every step, so which identifiers and words the function uses comes
straight from the embedding instead of through k virtual tokens and every layer. It starts at zero (a
plain prefix decoder) and learns from the same loss. Generation adds it through a logits processor.

Why Llama-style (transformers' LlamaForCausalLM) rather than GPT-2: rotary position embeddings encode
relative positions, so the k prefix positions need no learned position table sized ahead of time;
RMSNorm, SwiGLU and bias-free layers are the current standard recipe (nanochat, Llama, Qwen), and its
attention is the best-kept path in transformers (SDPA on CPU, flash attention on GPUs).

Tokens are those of our byte-level BPE (semcode.tokenizer: ``<pad> <s> </s> <mask> <unk>`` at ids
0..4, whitespace and case kept), not the encoder's tokenizer: MiniLM's WordPiece lowercases and drops
indentation, which code generation cannot lose.

Saved layout (``CodeDecoder.save``): the root is a plain transformers checkpoint
(``AutoModelForCausalLM.from_pretrained(dir)`` loads the language model alone)::

    config.json, generation_config.json, model.safetensors    the LlamaForCausalLM
    prefix.safetensors                                         the prefix MLP (the token bias, the language tokens)
    semcode_decoder.json                                       prefix_tokens, embedding_dim, size, languages, ...
    tokenizer.json, tokenizer_config.json, special_tokens_map.json   our BPE: the directory is self-contained
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import LlamaConfig, LlamaForCausalLM

from semcode.tokenizer import SPECIAL_IDS, load_tokenizer

# Sizes of the decoder. Field names follow transformers' LlamaConfig.
DECODER_SIZES: dict[str, dict[str, int]] = {
    "tiny": {  # tests, CI and CPUs
        "hidden_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 384,
    },
    "small": {
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "intermediate_size": 768,
    },
    "base": {  # GPUs
        "hidden_size": 512,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "intermediate_size": 1536,
    },
}
SEMCODE_CONFIG_FILE = "semcode_decoder.json"
PREFIX_WEIGHTS_FILE = "prefix.safetensors"
SEMCODE_FORMAT_VERSION = 1
MAX_POSITIONS = 2048  # RoPE has no position table; this only bounds prefix + code tokens
PAD_ID, BOS_ID, EOS_ID = SPECIAL_IDS["pad"], SPECIAL_IDS["bos"], SPECIAL_IDS["eos"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@dataclass
class DecoderOutput:
    """Teacher-forced loss over the code tokens of a batch, and what token accuracy needs."""

    loss: Tensor  # mean cross-entropy per predicted token (a scalar with grad)
    tokens: int  # predicted tokens in the batch (c1 ... </s> of every row)
    correct: int  # of which the argmax was right


class CodeDecoder(nn.Module):
    """A causal LM (``lm``) whose input starts with ``prefix_tokens`` virtual tokens from an embedding."""

    def __init__(
        self,
        lm: LlamaForCausalLM,
        embedding_dim: int,
        prefix_tokens: int,
        *,
        size: str = "custom",
        token_bias: bool = False,
        languages: tuple[str, ...] = (),
    ) -> None:
        super().__init__()
        if embedding_dim < 1 or prefix_tokens < 1:
            raise ValueError(
                f"embedding_dim and prefix_tokens must be >= 1, got {embedding_dim} and {prefix_tokens}"
            )
        self.lm = lm
        self.embedding_dim = embedding_dim
        self.prefix_tokens = prefix_tokens
        self.size = size
        hidden = self.hidden_size
        self.prefix = nn.Sequential(
            nn.Linear(embedding_dim, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, prefix_tokens * hidden)
        )
        self.languages = tuple(languages)  # the language tokens' order; () = no language token
        self.language_tokens: nn.Embedding | None = None
        if self.languages:
            if len(set(self.languages)) != len(self.languages):
                raise ValueError(f"languages must be distinct, got {list(self.languages)}")
            self.language_tokens = nn.Embedding(len(self.languages), hidden)
            nn.init.normal_(self.language_tokens.weight, std=0.02)
        self.token_bias: nn.Linear | None = None
        if token_bias:
            self.token_bias = nn.Linear(embedding_dim, self.vocab_size)
            nn.init.zeros_(self.token_bias.weight)  # starts as a plain prefix decoder
            nn.init.zeros_(self.token_bias.bias)

    @property
    def hidden_size(self) -> int:
        return int(self.lm.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        return int(self.lm.config.vocab_size)

    def prefix_embeds(self, embeddings: Tensor) -> Tensor:
        """[B, D] encoder embeddings -> [B, k, H] virtual tokens, in the model's dtype."""
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_dim:
            raise ValueError(
                f"embeddings must be [batch, {self.embedding_dim}], got {list(embeddings.shape)}"
            )
        weight = self.prefix[0].weight
        prefix = self.prefix(embeddings.to(device=weight.device, dtype=weight.dtype))  # [B, k*H]
        return prefix.view(len(embeddings), self.prefix_tokens, self.hidden_size)

    @property
    def known_languages(self) -> tuple[str, ...]:
        """The languages this decoder can be asked for: its language tokens', or Python alone for a decoder
        without them (saved before languages were tokens, trained on the Python presets)."""
        return self.languages or ("python",)

    @property
    def conditioning_tokens(self) -> int:
        """Positions ahead of ``<s>``: the prefix's virtual tokens and the language token when there is one."""
        return self.prefix_tokens + (1 if self.language_tokens is not None else 0)

    def language_ids(self, names: list[str]) -> Tensor | None:
        """[B] indices of the language tokens of ``names`` (None without language tokens); ValueError names
        a language the decoder never saw and the ones it knows."""
        unknown = sorted(set(names) - set(self.known_languages))
        if unknown:
            raise ValueError(
                f"the decoder was not trained on {', '.join(unknown)}: it writes "
                f"{', '.join(self.known_languages)}"
            )
        if self.language_tokens is None:
            return None
        return torch.tensor([self.languages.index(name) for name in names], dtype=torch.long)

    def conditioning(self, embeddings: Tensor, language_ids: Tensor | None = None) -> Tensor:
        """[B, D] embeddings (and [B] language ids) -> [B, conditioning_tokens, H]: the virtual tokens, then
        the language token when the decoder has them."""
        prefix = self.prefix_embeds(embeddings)  # [B, k, H]
        if self.language_tokens is None:
            return prefix
        if language_ids is None or language_ids.shape != (len(embeddings),):
            raise ValueError(
                f"this decoder writes {', '.join(self.languages)}: it needs one language id per embedding"
            )
        weight = self.language_tokens.weight
        language = self.language_tokens(language_ids.to(weight.device))  # [B, H]
        return torch.cat([prefix, language.to(prefix.dtype)[:, None]], dim=1)

    def logit_bias(self, embeddings: Tensor) -> Tensor | None:
        """[B, D] embeddings -> [B, V] float32 logit bias of the token-bias head (None without one)."""
        if self.token_bias is None:
            return None
        weight = self.token_bias.weight
        return self.token_bias(embeddings.to(device=weight.device, dtype=weight.dtype)).float()

    def forward(
        self,
        embeddings: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor,
        language_ids: Tensor | None = None,
    ) -> DecoderOutput:
        """Teacher forcing: embeddings [B, D], input_ids/attention_mask [B, T] of ``<s> code </s> <pad>...``;
        language_ids [B] when the decoder has language tokens.

        The loss covers the code tokens only: the prediction of c1 from <s> up to </s> from cn. The LM head
        runs on those positions alone (not on the prefix or padding), which with a 32k vocabulary is most
        of the compute saved on short functions.
        """
        k = self.conditioning_tokens
        tokens = self.lm.get_input_embeddings()(input_ids)  # [B, T, H]
        conditioning = self.conditioning(embeddings, language_ids).to(tokens.dtype)  # [B, k, H]
        inputs = torch.cat([conditioning, tokens], dim=1)  # [B, k+T, H]
        mask = torch.cat([attention_mask.new_ones(len(input_ids), k), attention_mask], dim=1)  # [B, k+T]
        hidden = self.lm.model(inputs_embeds=inputs, attention_mask=mask).last_hidden_state  # [B, k+T, H]
        # Position k+j (token j of the code) predicts token j+1; a pad target predicts nothing.
        predicting = hidden[:, k : k + input_ids.shape[1] - 1]  # [B, T-1, H]
        targets = input_ids[:, 1:]  # [B, T-1]
        valid = attention_mask[:, 1:].bool()  # [B, T-1]
        logits = self.lm.lm_head(predicting[valid]).float()  # [N, V], N = predicted tokens of the batch
        bias = self.logit_bias(embeddings)  # [B, V] or None
        if bias is not None:
            rows = valid.nonzero()[:, 0]  # [N]: the batch row of each predicted token
            logits = logits + bias[rows]
        loss = F.cross_entropy(logits, targets[valid])
        correct = int((logits.argmax(dim=-1) == targets[valid]).sum())
        return DecoderOutput(loss=loss, tokens=int(valid.sum()), correct=correct)

    def metadata(self) -> dict[str, Any]:
        """What ``semcode_decoder.json`` holds."""
        return {
            "format_version": SEMCODE_FORMAT_VERSION,
            "size": self.size,
            "embedding_dim": self.embedding_dim,
            "prefix_tokens": self.prefix_tokens,
            "prefix_hidden": self.prefix[0].out_features,
            "token_bias": self.token_bias is not None,
            "languages": list(self.languages),
            "hidden_size": self.hidden_size,
            "vocab_size": self.vocab_size,
            "special_ids": {"pad": PAD_ID, "bos": BOS_ID, "eos": EOS_ID},
        }

    def save(
        self, out_dir: str | os.PathLike[str], tokenizer_dir: str | os.PathLike[str], **extra: Any
    ) -> Path:
        """Write the decoder directory (module docstring): float32 weights, config, our tokenizer copied in.

        ``extra`` goes into semcode_decoder.json too (e.g. the encoder it was trained against, max_length).
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        module = self if next(self.parameters()).dtype == torch.float32 else copy.deepcopy(self).float()
        module.lm.save_pretrained(str(out), safe_serialization=True)
        heads = {f"prefix.{name}": t for name, t in module.prefix.state_dict().items()}
        if module.token_bias is not None:
            heads.update({f"token_bias.{name}": t for name, t in module.token_bias.state_dict().items()})
        if module.language_tokens is not None:
            heads.update({f"language_tokens.{n}": t for n, t in module.language_tokens.state_dict().items()})
        prefix = {name: t.detach().float().cpu().contiguous() for name, t in heads.items()}
        safetensors.torch.save_file(prefix, str(out / PREFIX_WEIGHTS_FILE))
        source = Path(tokenizer_dir)
        found = [name for name in TOKENIZER_FILES if (source / name).is_file()]
        if "tokenizer.json" not in found:
            raise FileNotFoundError(f"tokenizer directory {source} has no tokenizer.json")
        for name in found:
            if (source / name).resolve() != (out / name).resolve():
                shutil.copyfile(source / name, out / name)
        (out / SEMCODE_CONFIG_FILE).write_text(json.dumps({**self.metadata(), **extra}, indent=2) + "\n")
        return out


def build_decoder(
    size: str,
    vocab_size: int,
    embedding_dim: int,
    prefix_tokens: int,
    token_bias: bool = False,
    languages: tuple[str, ...] = (),
) -> CodeDecoder:
    """A randomly initialised decoder of a named size (``DECODER_SIZES``); seed torch beforehand.
    ``languages``: one language token each (the training pairs' languages)."""
    if size not in DECODER_SIZES:
        raise ValueError(f"unknown decoder size {size!r}; choose one of {sorted(DECODER_SIZES)}")
    if vocab_size <= max(PAD_ID, BOS_ID, EOS_ID):
        raise ValueError(f"vocab_size must hold the special tokens, got {vocab_size}")
    spec = DECODER_SIZES[size]
    config = LlamaConfig(
        vocab_size=vocab_size,
        num_key_value_heads=spec["num_attention_heads"],  # plain multi-head attention
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,  # one embedding matrix in and out: the vocabulary dominates small sizes
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        **spec,
    )
    return CodeDecoder(
        LlamaForCausalLM(config),
        embedding_dim,
        prefix_tokens,
        size=size,
        token_bias=token_bias,
        languages=tuple(languages),
    )


def is_decoder_dir(path: str | os.PathLike[str]) -> bool:
    return (Path(path) / SEMCODE_CONFIG_FILE).is_file()


def decoder_dir(path: str | os.PathLike[str]) -> Path:
    """The decoder directory given itself or a train-decoder output holding ``decoder/``."""
    path = Path(path)
    if is_decoder_dir(path):
        return path
    if is_decoder_dir(path / "decoder"):
        return path / "decoder"
    raise FileNotFoundError(
        f"{path} is not a semcode decoder: no {SEMCODE_CONFIG_FILE} in it or in {path / 'decoder'}"
    )


def load_decoder(path: str | os.PathLike[str]) -> tuple[CodeDecoder, dict[str, Any]]:
    """Load a decoder directory (or a train-decoder output): the model (float32, eval) and its metadata."""
    local = decoder_dir(path)
    meta = json.loads((local / SEMCODE_CONFIG_FILE).read_text())
    lm = LlamaForCausalLM.from_pretrained(str(local), dtype=torch.float32)
    model = CodeDecoder(
        lm,
        int(meta["embedding_dim"]),
        int(meta["prefix_tokens"]),
        size=meta.get("size", "custom"),
        token_bias=bool(meta.get("token_bias", False)),
        languages=tuple(meta.get("languages") or ()),
    )
    heads = safetensors.torch.load_file(str(local / PREFIX_WEIGHTS_FILE))
    model.prefix.load_state_dict(_heads(heads, "prefix"))
    if model.token_bias is not None:
        model.token_bias.load_state_dict(_heads(heads, "token_bias"))
    if model.language_tokens is not None:
        model.language_tokens.load_state_dict(_heads(heads, "language_tokens"))
    return model.eval(), meta


def _heads(weights: dict[str, Tensor], module: str) -> dict[str, Tensor]:
    """One module's tensors from prefix.safetensors (names ``<module>.<param>``; older files: bare prefix)."""
    if not any(name.startswith(f"{module}.") for name in weights) and module == "prefix":
        return weights  # written before the token bias: the prefix MLP's names alone
    return {name[len(module) + 1 :]: t for name, t in weights.items() if name.startswith(f"{module}.")}


def load_decoder_tokenizer(path: str | os.PathLike[str]) -> Any:
    """The decoder's own tokenizer (``tokenizers.Tokenizer``, special ids checked)."""
    return load_tokenizer(decoder_dir(path))


# ---------------------------------------------------------------------------------------------
# Batches


def code_token_ids(tokenizer: Any, codes: list[str], max_length: int) -> list[list[int]]:
    """``<s> code </s>`` ids per code; a code longer than ``max_length`` keeps its first ``max_length``
    tokens (``<s>`` included) and loses ``</s>``: the decoder then learns nothing about where it ends."""
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3 (<s>, a token, </s>), got {max_length}")
    encodings = tokenizer.encode_batch(codes, add_special_tokens=False)
    return [([BOS_ID] + e.ids + [EOS_ID])[:max_length] for e in encodings]


def make_batch(
    token_ids: list[list[int]],
    embeddings: np.ndarray,
    rows: np.ndarray | list[int],
    language_ids: np.ndarray | None = None,
) -> dict[str, Tensor]:
    """The model's inputs for ``rows``: embeddings [B, D] float32, input_ids and attention_mask [B, T]
    (right-padded with <pad> to the longest row), and language_ids [B] when ``language_ids`` (one
    language-token index per example) is given."""
    longest = max(len(token_ids[i]) for i in rows)
    input_ids = torch.full((len(rows), longest), PAD_ID, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), longest), dtype=torch.long)
    for r, i in enumerate(rows):
        ids = token_ids[i]
        input_ids[r, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[r, : len(ids)] = 1
    batch = {
        "embeddings": torch.from_numpy(np.ascontiguousarray(embeddings[np.asarray(rows)], dtype=np.float32)),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
    }
    if language_ids is not None:
        batch["language_ids"] = torch.as_tensor(np.asarray(language_ids)[np.asarray(rows)], dtype=torch.long)
    return batch
