"""(query, code) pair batches for contrastive training: loading a split, a seeded order, tokenised batches.

The data order is a pure function of ``(seed, epoch)``: epoch ``e`` visits the pairs in
``np.random.default_rng([seed, e]).permutation(n)``, cut into global batches of ``batch_size`` per rank
(the last, incomplete one is dropped: in-batch negatives want full batches, and every rank must pass
the same size); rank r takes the r-th slice of each. So a training position is one integer, the global micro-batch index, and resuming at micro-batch
``m`` replays exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from semcode.data.pairs import read_split
from semcode.losses import text_keys


@dataclass
class PairSet:
    """Aligned lists: query i belongs with code i; ``hard_negatives[i]`` are codes that do not."""

    queries: list[str]
    codes: list[str]
    hard_negatives: list[list[str]]

    def __len__(self) -> int:
        return len(self.queries)

    def subset(self, indices: np.ndarray | list[int]) -> PairSet:
        return PairSet(
            [self.queries[i] for i in indices],
            [self.codes[i] for i in indices],
            [self.hard_negatives[i] for i in indices],
        )


def load_pairs(
    pairs_dir: str | Path,
    split: str,
    max_pairs: int = 0,
    seed: int = 0,
    unique_codes: bool = False,
) -> PairSet:
    """Read one split of a ``pairs/`` artifact; rows with an empty query or code are skipped.

    ``max_pairs`` > 0 keeps a seeded random sample of that many (in file order), so a small run still
    sees every repository. ``unique_codes`` keeps the first row of each distinct code (for validation:
    a duplicate code would be a second right answer counted against the gold).
    """
    table = read_split(pairs_dir, split, columns=["query", "code", "hard_negatives"])
    queries = table.column("query").to_pylist()
    codes = table.column("code").to_pylist()
    negatives = table.column("hard_negatives").to_pylist()
    keep = [i for i, (q, c) in enumerate(zip(queries, codes, strict=True)) if q and c]
    if unique_codes:
        seen: set[str] = set()
        unique = []
        for i in keep:
            if codes[i] not in seen:
                seen.add(codes[i])
                unique.append(i)
        keep = unique
    if 0 < max_pairs < len(keep):
        chosen = np.random.default_rng(seed).choice(len(keep), size=max_pairs, replace=False)
        keep = [keep[i] for i in sorted(chosen)]
    return PairSet(
        [queries[i] for i in keep],
        [codes[i] for i in keep],
        [[n for n in (negatives[i] or []) if n] for i in keep],
    )


def batches_per_epoch(num_pairs: int, batch_size: int, world_size: int = 1) -> int:
    return num_pairs // (batch_size * world_size)


def epoch_batches(
    num_pairs: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world_size: int = 1
) -> list[np.ndarray]:
    """This rank's micro-batches (arrays of pair indices) of one epoch, in order; epoch is 0-based.

    With several ranks each global batch of ``batch_size * world_size`` pairs is cut into one slice
    per rank, so the ranks see different pairs and together exactly what one process would.
    """
    order = np.random.default_rng([seed, epoch]).permutation(num_pairs)
    count = batches_per_epoch(num_pairs, batch_size, world_size)
    global_batch = batch_size * world_size
    start = rank * batch_size
    return [order[i * global_batch + start : i * global_batch + start + batch_size] for i in range(count)]


class PairBatches(Dataset):
    """Item k = micro-batch k of a list, tokenised: what the training loop feeds the model.

    Keys of an item (B pairs, H = max_hard_negatives, N hard negatives present in the batch)::

        query_input_ids, query_attention_mask    [B, Tq]
        code_input_ids, code_attention_mask      [B, Tc]
        query_keys, code_keys                    [B] int64 text hashes (false-negative masking)
        hard_negative_input_ids, _attention_mask [N, Th]   only when N > 0
        hard_negative_index                      [B, H] int64: row of each hard negative, -1 = none

    Texts get the model's query/code prefixes here, as ``encode_texts`` does at evaluation time.
    """

    def __init__(
        self,
        pairs: PairSet,
        batches: list[np.ndarray],
        tokenizer: Any,
        max_length: int,
        query_prefix: str = "",
        code_prefix: str = "",
        max_hard_negatives: int = 0,
    ) -> None:
        self.pairs, self.batches, self.tokenizer = pairs, batches, tokenizer
        self.max_length = max_length
        self.query_prefix, self.code_prefix = query_prefix, code_prefix
        self.max_hard_negatives = max_hard_negatives

    def __len__(self) -> int:
        return len(self.batches)

    def _tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        encoded = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return encoded["input_ids"], encoded["attention_mask"]

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        rows = self.batches[k]
        queries = [self.query_prefix + self.pairs.queries[i] for i in rows]
        codes = [self.code_prefix + self.pairs.codes[i] for i in rows]
        batch: dict[str, torch.Tensor] = {}
        batch["query_input_ids"], batch["query_attention_mask"] = self._tokenize(queries)
        batch["code_input_ids"], batch["code_attention_mask"] = self._tokenize(codes)
        batch["query_keys"], batch["code_keys"] = text_keys(queries), text_keys(codes)
        if self.max_hard_negatives > 0:
            index = torch.full((len(rows), self.max_hard_negatives), -1, dtype=torch.int64)
            texts: list[str] = []
            for r, i in enumerate(rows):
                for h, negative in enumerate(self.pairs.hard_negatives[i][: self.max_hard_negatives]):
                    index[r, h] = len(texts)
                    texts.append(self.code_prefix + negative)
            batch["hard_negative_index"] = index
            if texts:
                batch["hard_negative_input_ids"], batch["hard_negative_attention_mask"] = self._tokenize(
                    texts
                )
        return batch


def batch_loader(dataset: PairBatches, num_workers: int = 0, seed: int = 0) -> DataLoader:
    """Iterate tokenised micro-batches in order, tokenising ahead in ``num_workers`` processes.

    The loader gets its own generator: a DataLoader otherwise draws its base seed from torch's global
    RNG, which would shift dropout masks and break identical resumption. Workers ignore Ctrl-C: a terminal
    sends it to the whole process group, and the training process, not they, decides when to stop.
    """
    return DataLoader(
        dataset,
        batch_size=None,  # items are already batches
        shuffle=False,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=False,
        worker_init_fn=_ignore_ctrl_c if num_workers else None,
    )


def _ignore_ctrl_c(worker_id: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def consistency_filter(
    model: Any,
    tokenizer: Any,
    pairs: PairSet,
    pool_size: int,
    top_k: int,
    seed: int,
    batch_size: int,
    max_length: int,
    min_kept: int,
) -> tuple[PairSet, dict]:
    """The pairs whose code the starting model already ranks in its top ``top_k`` for their query, among a
    seeded pool of ``pool_size`` pairs (CodeSage v2 / CoRNStack's consistency filtering): a docstring that
    does not describe its function, or a code no query could find, teaches the encoder to forget what it
    knew. Returns the kept pairs and what the filter did; ValueError when fewer than ``min_kept`` (a
    batch) are kept."""
    import random
    import time

    from semcode.embed import resolve_device
    from semcode.models.encoder import encode_texts

    started = time.perf_counter()
    pool = sorted(random.Random(seed).sample(range(len(pairs)), min(pool_size, len(pairs))))
    queries = [pairs.queries[i] for i in pool]
    codes = [pairs.codes[i] for i in pool]
    settings = dict(batch_size=batch_size, device=resolve_device("auto"), max_length=max_length)
    query_emb = encode_texts(model, tokenizer, queries, "query", **settings)  # [P, D]
    code_emb = encode_texts(model, tokenizer, codes, "code", **settings)  # [P, D]
    scores = query_emb @ code_emb.T  # [P, P]
    gold = np.diag(scores)  # [P]
    ranks = 1 + (scores > gold[:, None]).sum(axis=1)  # [P], 1 = the code is the query's best match
    kept = [index for index, rank in zip(pool, ranks, strict=True) if rank <= top_k]
    if len(kept) < min_kept:
        raise ValueError(
            f"teacher_filter_top_k {top_k} kept {len(kept)} of {len(pool)} pairs, fewer than batch_size "
            f"{min_kept}: raise teacher_filter_top_k or teacher_filter_pool"
        )
    filtered = PairSet(
        [pairs.queries[i] for i in kept],
        [pairs.codes[i] for i in kept],
        [pairs.hard_negatives[i] for i in kept],
    )
    report = {
        "pool": len(pool),
        "kept": len(kept),
        "top_k": top_k,
        "teacher_mrr_on_pool": round(float(np.mean(1.0 / ranks)), 4),
        "seconds": round(time.perf_counter() - started, 1),
    }
    return filtered, report
