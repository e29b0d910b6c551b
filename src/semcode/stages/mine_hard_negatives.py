"""Stage mine_hard_negatives: fill the train split's ``hard_negatives`` with codes the encoder confuses.

Reads an encoder (train_encoder's ``encoder/``) and a ``pairs/`` artifact. Encodes the train queries
with the query side and the candidate codes with the code side (each with its prefix), retrieves the
top candidates of every query by exact inner product (FAISS IndexFlatIP via semcode.index.exact_search;
the train split is small enough), and keeps ``count`` hard negatives per query after the filters of
semcode.mining: the gold and its exact duplicates are never negatives, ranks outside
[range_min, range_max) are skipped, candidates too close to the positive are dropped (relative margin,
NV-Retriever's 95% rule, and an optional absolute margin). Writes::

    out/pairs/train/part-*.parquet   the mined train rows, ``hard_negatives`` = the negatives' code
                                     (only the mined sample when max_train_pairs > 0, so a training on
                                     these pairs sees rows that have negatives)
    out/pairs/valid/, out/pairs/test/ copied unchanged
    out/report.json                  score distributions (positives, kept negatives, removed-too-close),
                                     candidates removed per filter, rows short of ``count``, seconds,
                                     a few examples, the resolved config
    out/metrics.json                 the report's scalars
    out/config.json                  the resolved config

Rows with an empty query or code are not mined (train_encoder skips them too). Encoding dominates the
time: on 2 CPU cores MiniLM embeds about 24 texts/s at 128 tokens, so mining 3000 pairs (3000 queries +
3000 codes) takes a few minutes there, seconds on a GPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from semcode import config as cfg
from semcode import mining, storage
from semcode.config import ConfigError, field
from semcode.contract import RUNTIME_HELP
from semcode.data.pairs import SPLITS, read_split, shard_paths, write_shards
from semcode.embed import check_runtime
from semcode.progress import log

TAG = "mine-hard-negatives"
CANDIDATE_POOLS = ("sample", "train")
EXAMPLES = 3
EXAMPLE_CHARS = 400


@dataclass(frozen=True)
class MineHardNegativesConfig:
    count: int = field(4, "hard negatives kept per pair (train_encoder uses up to its max_hard_negatives)")
    range_min: int = field(
        0, "skip the best-ranked candidates up to this rank (0 = none); ranks count from 0 without the gold"
    )
    range_max: int = field(50, "consider candidates ranked below this only")
    relative_margin: float = field(
        0.95,
        "drop candidates scoring >= this fraction of the positive's score (NV-Retriever TopK-PercPos; "
        "sentence-transformers calls 0.95 relative_margin=0.05; 0 = off)",
    )
    absolute_margin: float = field(
        0.0, "drop candidates scoring >= the positive's score minus this (0 = off)"
    )
    sampling: str = field(
        "top", "which survivors to keep: top (the best ranked) or random (a seeded sample of them)"
    )
    candidates: str = field(
        "sample",
        "the pool negatives come from: sample = the codes of the train rows being mined (all of the train "
        "split when max_train_pairs is 0), train = every code of the train split (harder negatives, more "
        "to encode)",
    )
    max_train_pairs: int = field(
        0, "mine a seeded sample of this many train pairs, and write only those (0 = all)"
    )
    batch_size: int = field(64, "texts per encoder forward pass")
    max_length: int = field(0, "tokens per text at most (0 = the encoder's own max_length)")
    seed: int = field(0, "seed for the train sample and random sampling")
    device: str = field("auto", "torch device for the encoder: auto (cuda when available), cpu, cuda")
    runtime: str = field("torch", RUNTIME_HELP)

    def validate(self) -> None:
        check_runtime(self.runtime)
        if self.count < 1:
            raise ConfigError(f"count must be >= 1, got {self.count}")
        if not 0 <= self.range_min < self.range_max:
            raise ConfigError(
                f"need 0 <= range_min < range_max, got range_min={self.range_min}, range_max={self.range_max}"
            )
        if self.relative_margin < 0 or self.absolute_margin < 0:
            raise ConfigError(
                f"relative_margin and absolute_margin must be >= 0 (0 = off), got {self.relative_margin} "
                f"and {self.absolute_margin}"
            )
        if self.sampling not in mining.SAMPLING_STRATEGIES:
            raise ConfigError(f"sampling must be one of {mining.SAMPLING_STRATEGIES}, got {self.sampling!r}")
        if self.candidates not in CANDIDATE_POOLS:
            raise ConfigError(f"candidates must be one of {CANDIDATE_POOLS}, got {self.candidates!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        for name in ("max_train_pairs", "max_length"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")


def check_inputs(encoder_dir: str | Path, pairs_dir: Path) -> None:
    """Fail fast, before loading the model: an encoder directory and a pairs directory with train shards."""
    from semcode.embed import check_encoder_spec

    check_encoder_spec(str(encoder_dir))
    encoder, inner = Path(encoder_dir), Path(encoder_dir) / "encoder"
    if not (encoder / "semcode_encoder.json").is_file() and (inner / "semcode_encoder.json").is_file():
        # train-encoder's output holds a config.json (its resolved config) that passes for a checkpoint
        raise FileNotFoundError(
            f"encoder {encoder_dir} is a train-encoder output directory, not an encoder; did you mean {inner}?"
        )
    train_dir = pairs_dir / "train"
    if not train_dir.is_dir() or not sorted(train_dir.glob("part-*.parquet")):
        hint = f"; did you mean {pairs_dir / 'pairs'}?" if (pairs_dir / "pairs" / "train").is_dir() else ""
        raise FileNotFoundError(f"pairs directory {pairs_dir} has no train/part-*.parquet shards{hint}")


def choose_rows(queries: list[str], codes: list[str], max_pairs: int, seed: int) -> np.ndarray:
    """Rows to mine, in file order: those with a query and code, a seeded sample of ``max_pairs`` if > 0."""
    usable = np.array(
        [i for i, (q, c) in enumerate(zip(queries, codes, strict=True)) if q and c], dtype=np.int64
    )
    if 0 < max_pairs < len(usable):
        usable = np.sort(np.random.default_rng(seed).choice(usable, size=max_pairs, replace=False))
    return usable


def write_pairs(pairs_dir: Path, out_pairs: Path, train_rows: list[dict]) -> dict[str, int]:
    """Write ``train_rows`` as the train split and copy the other splits' shards unchanged; rows per split."""
    shutil.rmtree(out_pairs, ignore_errors=True)  # never mix with an earlier run's shards
    write_shards(train_rows, out_pairs / "train")
    sizes = {"train": len(train_rows)}
    for split in SPLITS:
        if split == "train":
            continue
        if not sorted((pairs_dir / split).glob("part-*.parquet")):
            log(TAG, f"note: {pairs_dir} has no {split} split; the mined pairs have none either")
            continue
        (out_pairs / split).mkdir(parents=True)
        for shard in shard_paths(pairs_dir / split):
            shutil.copyfile(shard, out_pairs / split / shard.name)
        sizes[split] = read_split(out_pairs, split, columns=["query"]).num_rows
    return sizes


def _examples(
    queries: list[str],
    codes: list[str],
    pool_codes: list[str],
    gold_ids: np.ndarray,
    positive: np.ndarray,
    mined: mining.MinedNegatives,
) -> list[dict[str, Any]]:
    """A few (query, gold, hardest negative) triples with their scores, to judge the negatives by eye."""
    rows = np.flatnonzero(mined.ids[:, 0] >= 0)
    chosen = rows[np.linspace(0, len(rows) - 1, min(EXAMPLES, len(rows))).astype(int)] if len(rows) else []
    return [
        {
            "query": queries[i],
            "gold": codes[i][:EXAMPLE_CHARS],
            "positive_score": round(float(positive[i]), 4),
            "negative": pool_codes[mined.ids[i, 0]][:EXAMPLE_CHARS],
            "negative_score": round(float(mined.scores[i, 0]), 4),
        }
        for i in chosen
    ]


def embed_pairs(
    config: MineHardNegativesConfig,
    encoder_dir: str | Path,
    queries: list[str],
    codes: list[str],
    seconds: dict[str, float],
) -> tuple[np.ndarray, np.ndarray, int]:
    """Step 1: ``queries`` [n] with the query side and ``codes`` [N] with the code side of ``encoder_dir``,
    each with the encoder's prefix; returns (query vectors [n, D], code vectors [N, D], D) and records
    the seconds of each in ``seconds``."""
    from semcode.embed import load_embed_fn

    embed, dim = load_embed_fn(
        str(encoder_dir),
        config.batch_size,
        config.max_length or None,
        config.device,
        show_progress=True,
        runtime=config.runtime,
    )
    start = time.perf_counter()
    query_vectors = embed(queries, "query")  # [n, D]
    seconds["encode_queries"] = time.perf_counter() - start
    start = time.perf_counter()
    code_vectors = embed(codes, "code")  # [N, D]
    seconds["encode_codes"] = time.perf_counter() - start
    return query_vectors, code_vectors, dim


def mine_negatives(
    config: MineHardNegativesConfig,
    query_vectors: np.ndarray,
    code_vectors: np.ndarray,
    pool_codes: list[str],
    gold_ids: np.ndarray,
    seconds: dict[str, float],
) -> tuple[mining.MinedNegatives, np.ndarray, int]:
    """Steps 2 and 3: each query's exact top candidates in the pool, then semcode.mining's filters; returns
    (the negatives, the positives' scores [n], the search depth) and records the seconds of each step."""
    from semcode import index as faiss_index

    # 2. Exact top-k by inner product, deep enough that the gold and its copies leave range_max candidates.
    start = time.perf_counter()
    keys = mining.duplicate_keys(pool_codes)  # [N]
    depth = mining.search_depth(config.range_max, keys)
    top_scores, top_ids = faiss_index.exact_search(code_vectors, query_vectors, depth)  # [n, depth] each
    positive = mining.positive_scores(query_vectors, code_vectors, gold_ids)  # [n]
    seconds["search"] = time.perf_counter() - start

    # 3. The filters.
    start = time.perf_counter()
    mined = mining.select_hard_negatives(
        top_ids,
        top_scores,
        positive,
        gold_ids,
        keys,
        config.count,
        range_min=config.range_min,
        range_max=config.range_max,
        relative_margin=config.relative_margin,
        absolute_margin=config.absolute_margin,
        sampling=config.sampling,
        seed=config.seed,
    )
    seconds["filter"] = time.perf_counter() - start
    return mined, positive, depth


def write_mined_pairs(
    config: MineHardNegativesConfig,
    table: pa.Table,
    pairs_dir: Path,
    out: Path,
    mined_rows: np.ndarray,
    pool_codes: list[str],
    mined: mining.MinedNegatives,
) -> dict[str, int]:
    """Step 4: the pairs into ``out/pairs``: the mined rows of the train ``table`` get their negatives' code;
    without a sample every train row is written; the other splits are copied. Returns rows per split."""
    negatives_of = {
        int(row): [pool_codes[j] for j in ids if j >= 0]
        for row, ids in zip(mined_rows, mined.ids, strict=True)
    }
    written_rows = mined_rows if config.max_train_pairs else np.arange(table.num_rows)
    train_rows = table.take(pa.array(written_rows)).to_pylist()
    for row, record in zip(written_rows, train_rows, strict=True):
        if int(row) in negatives_of:
            record["hard_negatives"] = negatives_of[int(row)]
    out.mkdir(parents=True, exist_ok=True)
    return write_pairs(pairs_dir, out / "pairs", train_rows)


def summarise(
    config: MineHardNegativesConfig,
    mined: mining.MinedNegatives,
    positive: np.ndarray,
    pool_size: int,
    seconds: dict[str, float],
) -> tuple[dict[str, float | int], dict[str, dict], dict[str, float]]:
    """metrics.json (the report's scalars), the score summaries and the seconds, rounded, of mining
    ``len(positive)`` rows against a pool of ``pool_size`` codes."""
    per_row = mined.per_row()  # [n]
    n_encoded = len(positive) + pool_size
    encode_seconds = seconds["encode_queries"] + seconds["encode_codes"]
    rounded = {name: round(value, 3) for name, value in seconds.items()}
    scores = {
        "positive": mining.score_summary(positive),
        "kept_negative": mining.score_summary(mined.scores),
        "removed_too_close": mining.score_summary(mined.too_close_scores),
    }
    metrics: dict[str, float | int] = {
        "rows_mined": len(positive),
        "pool_size": pool_size,
        "negatives_written": int(per_row.sum()),
        "rows_short": int((per_row < config.count).sum()),
        "rows_without_negatives": int((per_row == 0).sum()),
        **{f"removed_{reason}": value for reason, value in mined.removed.items()},
        **{f"{name}_score_p50": summary["p50"] for name, summary in scores.items() if summary["count"]},
        "encode_per_s": round(n_encoded / encode_seconds, 1) if encode_seconds > 0 else 0.0,
        "seconds": rounded["total"],
    }
    return metrics, scores, rounded


@storage.atomic_stage
def run(
    config: MineHardNegativesConfig, encoder_dir: str | Path, pairs_dir: str | Path, out_dir: str | Path
) -> dict:
    """Mine hard negatives for the train split of ``pairs_dir`` with ``encoder_dir`` (or a train-encoder
    checkpoint); returns the report."""
    from semcode.train.checkpoints import encoder_from_checkpoint

    config.validate()
    started = time.perf_counter()
    encoder_spec = str(encoder_dir)  # as given: recorded as the encoder
    encoder_dir = encoder_from_checkpoint(encoder_spec)
    pairs_dir, out = Path(pairs_dir), Path(out_dir)
    check_inputs(encoder_dir, pairs_dir)
    table = read_split(pairs_dir, "train")
    queries = [q or "" for q in table.column("query").to_pylist()]
    codes = [c or "" for c in table.column("code").to_pylist()]
    mined_rows = choose_rows(queries, codes, config.max_train_pairs, config.seed)  # [n] train rows
    if len(mined_rows) < 2:
        raise ValueError(
            f"{pairs_dir}/train has {len(mined_rows)} pair(s) with a query and code; mining needs at least 2"
        )
    pool_rows = mined_rows if config.candidates == "sample" else choose_rows(queries, codes, 0, config.seed)
    pool_codes = [codes[i] for i in pool_rows]  # [N]
    gold_ids = np.searchsorted(pool_rows, mined_rows)  # [n]: both sorted, and every mined row is in the pool
    log(
        TAG,
        f"mining {len(mined_rows)} of {len(queries)} train pairs against a pool of {len(pool_codes)} codes",
    )
    seconds: dict[str, float] = {}

    # 1. Embed the queries (query side) and the pool (code side), each with the encoder's prefix.
    mined_queries = [queries[i] for i in mined_rows]
    query_vectors, code_vectors, dim = embed_pairs(config, encoder_dir, mined_queries, pool_codes, seconds)
    # 2-3. Exact top-k by inner product and the filters.
    mined, positive, depth = mine_negatives(
        config, query_vectors, code_vectors, pool_codes, gold_ids, seconds
    )
    # 4. The pairs: mined rows get their negatives' code; without a sample every train row is written.
    start = time.perf_counter()
    split_sizes = write_mined_pairs(config, table, pairs_dir, out, mined_rows, pool_codes, mined)
    seconds["write"] = time.perf_counter() - start
    seconds["total"] = time.perf_counter() - started

    # 5. The report, its scalars (metrics.json) and the resolved config.
    metrics, scores, seconds = summarise(config, mined, positive, len(pool_codes), seconds)
    per_row = mined.per_row()  # [n]
    report = {
        "encoder": encoder_spec,
        "pairs": str(pairs_dir),
        "dim": dim,
        "train_rows": len(queries),
        "rows_mined": len(mined_rows),
        "candidates": config.candidates,
        "pool_size": len(pool_codes),
        "search_depth": depth,
        "removed": mined.removed,
        "negatives_per_row": {str(c): int((per_row == c).sum()) for c in range(config.count + 1)},
        "scores": scores,
        "split_sizes": split_sizes,
        "seconds": seconds,
        "metrics": metrics,
        "examples": _examples(
            mined_queries, [codes[i] for i in mined_rows], pool_codes, gold_ids, positive, mined
        ),
        "config": cfg.to_dict(config),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    cfg.save_resolved(config, out)
    log(
        TAG,
        f"{metrics['negatives_written']} hard negatives for {len(mined_rows)} pairs "
        f"({metrics['rows_short']} short of {config.count}) | removed {mined.removed} | "
        f"{seconds['total']:.0f}s -> {out / 'pairs'}",
    )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="semcode mine-hard-negatives",
        description="Mine hard negatives for the train pairs with an encoder and FAISS: write the pairs "
        "with their hard_negatives filled, and a report of what each filter removed.",
        epilog=(
            "examples:\n"
            "  semcode mine-hard-negatives --encoder runs/encoder/encoder --pairs runs/ingest/pairs \\\n"
            "      --out runs/mined --max-train-pairs 3000\n"
            "  semcode train-encoder --pairs runs/mined/pairs --init-from runs/encoder/encoder \\\n"
            "      --hard-negative-weight 1.0 --lr 2e-5 --out runs/encoder-round1"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--encoder",
        required=True,
        metavar="DIR",
        help="encoder directory (train-encoder's encoder/), one of its checkpoints (checkpoints/step-NNNNNN) "
        "or minilm",
    )
    parser.add_argument("--pairs", required=True, metavar="DIR", help="pairs/ directory with a train split")
    parser.add_argument(
        "--out", required=True, metavar="DIR", help="output directory (pairs/ and the report)"
    )
    cfg.add_arguments(parser, MineHardNegativesConfig)
    args = parser.parse_args(argv)
    try:
        config = cfg.from_args(MineHardNegativesConfig, args, section="mine_hard_negatives")
        run(config, args.encoder, args.pairs, args.out)
    except cfg.BAD_INPUT_ERRORS as error:
        return cfg.bad_input("mine-hard-negatives", error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
