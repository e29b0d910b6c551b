"""The byte-level BPE tokenizer shared by the encoder and the decoder: train, save, load, measure.

Choices, and why:

- Byte-level BPE (GPT-2 style) with no normaliser: every byte string has an encoding, nothing is
  lower-cased or stripped, so ``decode(encode(code)) == code`` exactly (indentation, tabs, ``\\r\\n``,
  unicode). The decoder stage relies on this to turn token ids back into source text.
- ``ByteLevel(add_prefix_space=False)``: code is not prose; a leading space would change the text.
- The 256 byte symbols are always in the vocabulary (``initial_alphabet``), so ``<unk>`` never
  appears in practice; it exists because transformers and the model configs expect an unk id.
- Special tokens have fixed ids, in this order (``SPECIAL_TOKENS``)::

      0 <pad>   1 <s> (bos)   2 </s> (eos)   3 <mask>   4 <unk>

- The post-processor wraps every encoding as ``<s> ... </s>`` (pairs: ``<s> A </s> </s> B </s>``,
  as RoBERTa). That is what the encoder wants, and keeping it inside ``tokenizer.json`` means the
  exported bundle, ``semcode serve`` and transformers all encode queries the same way. Callers that
  want raw ids (the decoder stage builds its own ``<s> code </s>`` targets; fertility below) pass
  ``add_special_tokens=False``. ``decode`` skips special tokens by default, so round trips hold
  either way.
- No truncation or padding is stored in ``tokenizer.json``; ``model_max_length`` goes into
  ``tokenizer_config.json`` for transformers, and the training stages truncate explicitly.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

# role -> token; the position is the token id (0..4). Do not reorder: saved models depend on it.
SPECIAL_TOKENS: dict[str, str] = {
    "pad": "<pad>",
    "bos": "<s>",
    "eos": "</s>",
    "mask": "<mask>",
    "unk": "<unk>",
}
SPECIAL_IDS: dict[str, int] = {role: i for i, role in enumerate(SPECIAL_TOKENS)}

BYTE_ALPHABET_SIZE = 256
MIN_VOCAB_SIZE = BYTE_ALPHABET_SIZE + len(SPECIAL_TOKENS)
TOKENIZER_FILE = "tokenizer.json"


def train_bpe(
    texts: Iterable[str] | Iterable[list[str]],
    vocab_size: int = 32768,
    min_frequency: int = 2,
    *,
    length: int | None = None,
    show_progress: bool = False,
) -> Tokenizer:
    """Train a byte-level BPE tokenizer by streaming ``texts`` (strings, or lists of strings as batches).

    Memory is bounded by the number of distinct pre-tokenised words, not by the corpus size, so a
    generator over Parquet shards works for very large corpora. ``length`` is only a hint for the
    progress bar of ``tokenizers`` (shown when ``show_progress``). The vocabulary can come out smaller
    than ``vocab_size`` when the text is too small to support that many merges.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size={vocab_size} is smaller than the byte alphabet plus special tokens "
            f"({BYTE_ALPHABET_SIZE} + {len(SPECIAL_TOKENS)} = {MIN_VOCAB_SIZE})"
        )
    if min_frequency < 0:
        raise ValueError(f"min_frequency must be >= 0, got {min_frequency}")
    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk"]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS.values()),  # the trainer assigns ids 0..4 in this order
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=length)
    bos, eos = SPECIAL_TOKENS["bos"], SPECIAL_TOKENS["eos"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, SPECIAL_IDS["bos"]), (eos, SPECIAL_IDS["eos"])],
    )
    check_special_tokens(tokenizer)
    return tokenizer


def check_special_tokens(tokenizer: Tokenizer) -> None:
    """Raise ValueError unless every special token has its fixed id (a tokenizer from elsewhere may not)."""
    for role, token in SPECIAL_TOKENS.items():
        found = tokenizer.token_to_id(token)
        if found != SPECIAL_IDS[role]:
            raise ValueError(f"special token {token} ({role}) has id {found}, expected {SPECIAL_IDS[role]}")


def save_tokenizer(tokenizer: Tokenizer, out_dir: str | Path, model_max_length: int = 512) -> Path:
    """Write ``tokenizer.json`` plus the files transformers' ``AutoTokenizer.from_pretrained(out_dir)`` reads.

    ``tokenizer_class`` is ``PreTrainedTokenizerFast``, which both transformers 4.x and 5.x load.
    ``clean_up_tokenization_spaces`` is off: it would rewrite spaces around punctuation on decode.
    Returns the path of ``tokenizer.json``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / TOKENIZER_FILE
    tokenizer.save(str(path))
    special_tokens_map = {f"{role}_token": token for role, token in SPECIAL_TOKENS.items()}
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "padding_side": "right",
        **special_tokens_map,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2, sort_keys=True) + "\n")
    (out / "special_tokens_map.json").write_text(
        json.dumps(special_tokens_map, indent=2, sort_keys=True) + "\n"
    )
    return path


def load_tokenizer(dir_or_file: str | Path) -> Tokenizer:
    """Load a ``tokenizer.json`` (or a directory holding one) and check the special token ids."""
    path = Path(dir_or_file)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as error:  # the tokenizers library raises a bare Exception naming no file
        raise ValueError(
            f"{path} is not a usable tokenizer ({error}); re-run train-tokenizer or point at another"
        ) from None
    check_special_tokens(tokenizer)
    return tokenizer


def fertility(
    tokenizer: Tokenizer, texts: Iterable[str], max_length: int | None = None, batch_size: int = 256
) -> dict[str, float | int]:
    """How many tokens the text costs: tokens per character and per line, and per text (mean, p95).

    Counts exclude the ``<s>``/``</s>`` wrappers. Lines are ``str.splitlines()`` of each text, at least
    one per non-empty text. With ``max_length``, also the share of texts whose encoding (with the two
    wrappers) is longer, i.e. would be truncated by the encoder.
    """
    counts: list[int] = []
    chars = lines = 0
    batch: list[str] = []

    def flush() -> None:
        counts.extend(len(e.ids) for e in tokenizer.encode_batch(batch, add_special_tokens=False))
        batch.clear()

    for text in texts:
        if not text:
            continue
        chars += len(text)
        lines += max(1, len(text.splitlines()))
        batch.append(text)
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    tokens = sum(counts)
    result: dict[str, float | int] = {
        "texts": len(counts),
        "chars": chars,
        "lines": lines,
        "tokens": tokens,
        "tokens_per_char": tokens / chars if chars else 0.0,
        "tokens_per_line": tokens / lines if lines else 0.0,
        "tokens_per_text_mean": tokens / len(counts) if counts else 0.0,
        "tokens_per_text_p95": sorted(counts)[int(0.95 * (len(counts) - 1))] if counts else 0,
    }
    if max_length is not None:
        over = sum(1 for n in counts if n + 2 > max_length)
        result["share_over_max_length"] = over / len(counts) if counts else 0.0
    return result
