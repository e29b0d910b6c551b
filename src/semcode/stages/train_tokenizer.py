"""Stage train_tokenizer: train the byte-level BPE tokenizer on the ingest corpus.

Reads ``corpus/part-*.parquet`` (the ingest stage's corpus artifact) shard by shard and streams the
text to the ``tokenizers`` trainer, so memory does not grow with the corpus size. Writes::

    out/tokenizer.json            the tokenizer (HF tokenizers); see semcode.tokenizer for its choices
    out/tokenizer_config.json     + special_tokens_map.json: AutoTokenizer.from_pretrained(out) loads it
    out/metrics.json              vocab size, seconds, MB/s, bytes/rows consumed, fertility (also per
                                  language of the test split)
    out/config.json               the resolved config

Both the ``code`` and the ``query`` column are trained on by default: queries are encoded with the
same tokenizer, and the corpus code has its docstrings removed, so natural language would otherwise be
under-represented. Fertility (tokens per line and per character) is measured on ``pairs/test`` when
``pairs_dir`` is given, else on rows held out of the corpus stream (every 50th row, not trained on).

Inputs are local paths: in the pipeline, KFP hands each stage local copies of its input artifacts.

Progress: on a terminal the ``tokenizers`` progress bar (it also covers the merge phase); in logs our
plain ``[train-tokenizer] rows ...`` lines every 10 s instead, because that bar writes terminal
escape codes and two bars on one terminal would overwrite each other.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from itertools import islice
from pathlib import Path

import pyarrow.parquet as pq

from semcode import config as cfg
from semcode import storage
from semcode.config import ConfigError, field
from semcode.data.pairs import PAIR_SCHEMA, iter_column
from semcode.progress import Progress, log
from semcode.tokenizer import (
    MIN_VOCAB_SIZE,
    SPECIAL_IDS,
    SPECIAL_TOKENS,
    fertility,
    save_tokenizer,
    train_bpe,
)

TAG = "train-tokenizer"
HOLDOUT_EVERY = 50  # without pairs/test, every 50th corpus row is held out to measure fertility
TEXT_COLUMNS = tuple(f.name for f in PAIR_SCHEMA if str(f.type) == "string")


@dataclass(frozen=True)
class TrainTokenizerConfig:
    vocab_size: int = field(32768, "vocabulary size, including the 256 byte symbols and 5 special tokens")
    min_frequency: int = field(2, "a pair of tokens must occur at least this often to be merged")
    columns: tuple[str, ...] = field(("code", "query"), "corpus columns whose text is trained on")
    max_files: int = field(0, "read at most this many corpus shards (0 = all)")
    max_bytes: int = field(0, "stop reading after this many bytes of UTF-8 text (0 = no limit)")
    model_max_length: int = field(
        512, "max sequence length recorded for transformers (tokenizer_config.json)"
    )
    batch_size: int = field(1024, "rows per Parquet read batch handed to the trainer")
    fertility_rows: int = field(2000, "at most this many rows (test pairs or held-out corpus) for fertility")

    def validate(self) -> None:
        if self.vocab_size < MIN_VOCAB_SIZE:
            raise ConfigError(
                f"vocab_size={self.vocab_size} is smaller than the byte alphabet plus special tokens "
                f"(256 + {len(SPECIAL_TOKENS)} = {MIN_VOCAB_SIZE})"
            )
        if not self.columns or any(c not in TEXT_COLUMNS for c in self.columns):
            raise ConfigError(f"columns={list(self.columns)}: each must be one of {list(TEXT_COLUMNS)}")
        for name in ("min_frequency", "max_files", "max_bytes"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "fertility_rows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.model_max_length < 8:
            raise ConfigError(f"model_max_length must be >= 8, got {self.model_max_length}")


@dataclass
class CorpusStream:
    """Iterates batches of corpus text for the trainer within ``max_bytes``, counting what it handed over.

    Rows are consumed whole (all ``columns`` of a row, or none), so ``bytes <= max_bytes``. Empty
    strings are skipped. With ``holdout_rows``, every HOLDOUT_EVERY-th row goes to ``held_out`` instead
    of the trainer, until that many rows are held out.
    """

    shards: list[Path]
    columns: tuple[str, ...]
    batch_size: int
    max_bytes: int = 0
    holdout_rows: int = 0
    progress: Progress | None = None
    files: int = 0
    rows: int = 0
    texts: int = 0
    bytes: int = 0
    stopped_by: str = "end of corpus"
    held_out: list[tuple[str, ...]] = dataclass_field(default_factory=list)

    def __iter__(self) -> Iterator[list[str]]:
        row_index = 0
        for path in self.shards:
            self.files += 1
            parquet = pq.ParquetFile(path)
            for batch in parquet.iter_batches(batch_size=self.batch_size, columns=list(self.columns)):
                texts: list[str] = []
                rows_seen_before = row_index
                for row in zip(*(batch.column(c).to_pylist() for c in self.columns), strict=True):
                    row = tuple(value or "" for value in row)
                    row_index += 1
                    if len(self.held_out) < self.holdout_rows and row_index % HOLDOUT_EVERY == 1:
                        self.held_out.append(row)
                        continue
                    row_bytes = sum(len(value.encode("utf-8")) for value in row)
                    if self.max_bytes and self.bytes + row_bytes > self.max_bytes:
                        self.stopped_by = "max_bytes"
                        break
                    texts.extend(value for value in row if value)
                    self.rows += 1
                    self.bytes += row_bytes
                self.texts += len(texts)
                if self.progress is not None:
                    self.progress.update(row_index - rows_seen_before, postfix=f"{self.bytes / 1e6:.1f} MB")
                if texts:
                    yield texts
                if self.stopped_by == "max_bytes":
                    self._finish()
                    return
        self._finish()

    def _finish(self) -> None:
        if self.progress is not None:
            self.progress.close()
        log(
            TAG,
            f"read {self.rows} rows, {self.bytes / 1e6:.1f} MB from {self.files} shard(s) "
            f"(stopped by {self.stopped_by}); computing merges",
        )


def corpus_shards(corpus_dir: str | Path, columns: tuple[str, ...]) -> list[Path]:
    """The corpus shards, checked: the directory exists, has part-*.parquet shards with these columns."""
    if str(corpus_dir).startswith("s3://"):
        raise ValueError(
            f"corpus {corpus_dir}: train-tokenizer reads a local directory (the pipeline hands stages "
            "local copies of their artifacts); copy it locally first"
        )
    path = Path(corpus_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"corpus directory {path} does not exist")
    shards = sorted(path.glob("part-*.parquet"))
    if not shards:
        hint = f"; did you mean {path / 'corpus'}?" if (path / "corpus").is_dir() else ""
        raise FileNotFoundError(
            f"corpus directory {path} has no part-*.parquet shards (expected the ingest corpus/){hint}"
        )
    names = pq.read_schema(shards[0]).names
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(f"corpus shard {shards[0]} has no column(s) {missing}; it has {names}")
    return shards


def check_pairs_test(pairs_dir: str | Path) -> Path:
    test_dir = Path(pairs_dir) / "test"
    if not sorted(test_dir.glob("part-*.parquet")):
        raise FileNotFoundError(f"pairs directory {pairs_dir} has no test/part-*.parquet shards")
    return test_dir


@storage.atomic_stage
def run(
    config: TrainTokenizerConfig,
    corpus_dir: str | Path,
    out_dir: str | Path,
    pairs_dir: str | Path | None = None,
) -> dict:
    """Train the tokenizer on ``corpus_dir``, write it with metrics.json and config.json to ``out_dir``.

    Returns the metrics (also in ``out_dir/metrics.json``).
    """
    config.validate()
    # 1. Every input checked before the (long) training.
    shards = corpus_shards(corpus_dir, config.columns)
    files_total = len(shards)
    if config.max_files:
        shards = shards[: config.max_files]
    test_dir = check_pairs_test(pairs_dir) if pairs_dir is not None else None
    rows_total = sum(pq.ParquetFile(p).metadata.num_rows for p in shards)
    if rows_total == 0:
        raise ValueError(f"corpus {corpus_dir} has no rows in {len(shards)} shard(s)")

    # 2. Train the BPE on the corpus stream.
    on_terminal = sys.stderr.isatty()  # one progress display only: see the module docstring
    progress = None if on_terminal else Progress(TAG, total=rows_total, unit="rows")
    stream = CorpusStream(
        shards=shards,
        columns=config.columns,
        batch_size=config.batch_size,
        max_bytes=config.max_bytes,
        holdout_rows=0 if test_dir is not None else config.fertility_rows,
        progress=progress,
    )
    log(TAG, f"training vocab {config.vocab_size} on {len(shards)}/{files_total} shard(s), {rows_total} rows")
    start = time.perf_counter()
    tokenizer = train_bpe(
        stream,
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
        length=None if config.max_bytes else rows_total * len(config.columns),  # texts, for their bar
        show_progress=on_terminal,
    )
    seconds = time.perf_counter() - start
    if stream.bytes == 0:
        raise ValueError(f"corpus {corpus_dir} has no text in column(s) {list(config.columns)}")

    # 3. Save it, then measure its fertility on the test split (or held-out corpus rows).
    out = Path(out_dir)
    save_tokenizer(tokenizer, out, model_max_length=config.model_max_length)

    languages: list[str] = []
    if test_dir is not None:
        source = f"{test_dir} (first {config.fertility_rows} rows)"
        texts = {c: list(islice(iter_column(test_dir, c), config.fertility_rows)) for c in ("code", "query")}
        languages = list(islice(iter_column(test_dir, "language"), config.fertility_rows))
    else:
        source = (
            f"corpus rows held out of training (every {HOLDOUT_EVERY}th row, at most {config.fertility_rows})"
        )
        texts = {c: [row[i] for row in stream.held_out] for i, c in enumerate(config.columns)}
    fertility_metrics: dict = {"source": source}
    for column, column_texts in texts.items():
        fertility_metrics[column] = fertility(tokenizer, column_texts, max_length=config.model_max_length)
    # Per language (the test split's rows carry it): a vocabulary trained mostly on one language splits
    # the others into more tokens, and this is where that shows.
    fertility_metrics["by_language"] = {
        language: {
            column: fertility(
                tokenizer,
                [
                    text
                    for text, row_language in zip(texts[column], languages, strict=True)
                    if row_language == language
                ],
                max_length=config.model_max_length,
            )
            for column in ("code", "query")
        }
        for language in sorted(set(languages))
    }

    # 4. metrics.json and the resolved config.
    metrics = {
        "vocab_size": tokenizer.get_vocab_size(),
        "vocab_size_requested": config.vocab_size,
        "special_token_ids": {SPECIAL_TOKENS[role]: i for role, i in SPECIAL_IDS.items()},
        "seconds": round(seconds, 3),
        "mb_per_s": round(stream.bytes / 1e6 / seconds, 3) if seconds > 0 else 0.0,  # MB = 10^6 bytes
        "bytes_consumed": stream.bytes,
        "rows_consumed": stream.rows,
        "texts_consumed": stream.texts,
        "files_read": stream.files,
        "files_total": files_total,
        "stopped_by": stream.stopped_by,
        "held_out_rows": len(stream.held_out),
        "fertility": fertility_metrics,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # whole process
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    cfg.save_resolved(config, out)
    log(TAG, f"vocab {metrics['vocab_size']} in {seconds:.1f}s ({metrics['mb_per_s']} MB/s) -> {out}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="semcode train-tokenizer",
        description="Train a byte-level BPE tokenizer (HF tokenizers, transformers-loadable) on a corpus.",
        epilog=(
            "example:\n"
            "  semcode train-tokenizer --corpus runs/ingest/corpus --pairs runs/ingest/pairs \\\n"
            "      --out runs/tokenizer --vocab-size 32768"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--corpus", required=True, metavar="DIR", help="corpus directory of part-*.parquet shards"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory for the tokenizer")
    parser.add_argument(
        "--pairs",
        default=None,
        metavar="DIR",
        help="ingest pairs/ directory: fertility is measured on its test split",
    )
    cfg.add_arguments(parser, TrainTokenizerConfig)
    args = parser.parse_args(argv)
    try:
        config = cfg.from_args(TrainTokenizerConfig, args, section="train_tokenizer")
        run(config, args.corpus, args.out, pairs_dir=args.pairs)
    except cfg.BAD_INPUT_ERRORS as error:
        return cfg.bad_input("train-tokenizer", error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
