"""Remove exact and near-duplicate code, so no function is trained on twice or leaks across splits.

- Exact duplicates: the same code once whitespace is normalised (hash of the code's tokens joined
  by single spaces), so re-indented or re-wrapped copies count as the same.
- Near duplicates: MinHash LSH over the set of word tokens (``\\w+``: identifiers, keywords,
  numbers) of the code; a candidate from the LSH buckets is a duplicate when its estimated Jaccard
  similarity (the share of equal MinHash values) is at least ``threshold`` (default 0.8, as in
  Allamanis 2019, "The adverse effects of code duplication in machine learning models of code").
  datasketch's scheme, permutations and banding, computed in numpy (:class:`Sketcher`,
  :func:`near_duplicate_of`): the same sketches as ``MinHash.update_batch`` and the same decisions as a
  greedy loop over datasketch's ``MinHashLSH``, several times faster.
- Greedy and order-stable: the first occurrence is kept, later copies are removed. Callers put
  rows in a deterministic order (sources in the order given, files sorted), so the result is too.
- ``reference`` codes (evaluation suites such as HumanEval) are never removed; a row that
  duplicates one is removed with the reason ``eval_overlap`` instead of ``exact``/``near``, so
  the evaluation stays clean and the manifest says how much of the data overlapped it. A row that
  near-duplicates a reference and an earlier row counts as ``eval_overlap``.

Speed (measured on this shared 2-core machine, num_perm=128, the 262,576 functions of python:stdlib
+ python:site-packages; bench/RESULTS.md): the sketches take 9 s (15 s through datasketch's MinHash
objects); given them, :func:`deduplicate` takes 2.3 s (20 s with a per-row ``MinHashLSH`` loop): band
keys are grouped with ``np.unique`` for all rows at once, only rows that share a band with an earlier
row are looked at one by one, and only rows whose first MinHash values equal another's are hashed
for the exact pass (the same normalised code has the same sketch).

Sharded ingest: the sketches (the costly part) can be computed apart, shard by shard
(:func:`signatures`: one row of ``num_perm`` uint32 MinHash values per code), and handed to
:func:`deduplicate` as ``signatures=``; a given sketch is the one :func:`deduplicate` computes itself,
so the result is the same as one pass over the same codes in the same order. Only the LSH pass
(greedy in order) needs all codes in one place.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from datasketch import MinHashLSH


_TOKEN = re.compile(r"\w+")
_LAYOUT_TOKEN = re.compile(r"\w+|[^\w\s]")
# the same tokens on ASCII text (most code), a third faster: no Unicode lookups for \w
_ASCII_LAYOUT_TOKEN = re.compile(r"[A-Za-z0-9_]+|[^A-Za-z0-9_\s]")


def normalise_code(code: str) -> str:
    """The code's tokens (words and single punctuation marks) joined by one space: layout does not
    make a copy new (``f(a, b)`` and ``f( a,b )`` are the same code)."""
    return " ".join((_ASCII_LAYOUT_TOKEN if code.isascii() else _LAYOUT_TOKEN).findall(code))


def code_hash(code: str) -> bytes:
    return hashlib.blake2b(normalise_code(code).encode("utf-8"), digest_size=16).digest()


class Sketcher:
    """MinHash sketches of code: datasketch's default scheme (``affine32``) with its permutations for
    ``(num_perm, seed)``, computed here in numpy, the same values as ``MinHash.update_batch`` over the
    code's word tokens (tests/test_clean.py checks): each token's 32-bit SHA-1 hash, premixed by
    MurmurHash3's finaliser (computed once per token: code reuses the same identifiers), goes through
    ``num_perm`` affine maps ``a * h + b mod 2**32``; a value is the minimum over the tokens. One array
    expression per code instead of a MinHash object: 1.8x faster than ``MinHash.update_batch``."""

    def __init__(self, num_perm: int, seed: int = 1) -> None:
        from datasketch import MinHash  # imported here: it pulls scipy in (0.6 s of every --help)
        from datasketch.hashfunc import sha1_hash32

        template = MinHash(num_perm=num_perm, seed=seed)
        if template.scheme != "affine32":
            raise RuntimeError(
                f"datasketch's default MinHash scheme is {template.scheme}, Sketcher computes affine32"
            )
        self.num_perm = num_perm
        self.a, self.b = template.permutations  # [num_perm] uint32 each
        self.empty = template.hashvalues  # a code without a word token: every value the largest uint32
        self.hash32 = sha1_hash32
        self.premixed: dict[str, int] = {}  # token -> premixed hash

    def premix(self, token: str) -> int:
        """The token's SHA-1 hash (32 bits) through MurmurHash3's fmix32, as datasketch's affine32 does."""
        value = self.hash32(token.encode("utf-8"))
        value = ((value ^ (value >> 16)) * 0x85EBCA6B) & 0xFFFFFFFF
        value = ((value ^ (value >> 13)) * 0xC2B2AE35) & 0xFFFFFFFF
        return value ^ (value >> 16)

    def values(self, code: str) -> np.ndarray:
        """The ``num_perm`` MinHash values of the code's word tokens (``\\w+``), uint32."""
        tokens = set(_TOKEN.findall(code))
        if not tokens:
            return self.empty.copy()
        if len(self.premixed) > 1 << 20:  # bounded memory on a huge vocabulary
            self.premixed.clear()
        cache = self.premixed
        hashes = [
            cache[token] if token in cache else cache.setdefault(token, self.premix(token))
            for token in tokens
        ]
        premixed = np.array(hashes, dtype=np.uint32)
        return (premixed[:, None] * self.a + self.b).min(axis=0)  # uint32 arithmetic wraps: mod 2**32

    def matrix(self, codes: Sequence[str]) -> np.ndarray:
        """``[len(codes), num_perm]`` uint32: each code's values (computed once per distinct code)."""
        out = np.empty((len(codes), self.num_perm), dtype=np.uint32)
        seen: dict[str, int] = {}
        for index, code in enumerate(codes):
            first = seen.setdefault(code, index)
            out[index] = out[first] if first != index else self.values(code)
        return out


def signatures(codes: Sequence[str], num_perm: int = 128, seed: int = 1) -> np.ndarray:
    """``[len(codes), num_perm]`` uint32: each code's MinHash values, what :func:`deduplicate` takes as
    ``signatures``."""
    return Sketcher(num_perm, seed).matrix(codes)


def make_lsh(threshold: float, num_perm: int) -> MinHashLSH:
    """The LSH index, or a ValueError that says which setting to change."""
    from datasketch import MinHashLSH

    try:
        return MinHashLSH(threshold=threshold, num_perm=num_perm)
    except ValueError as error:  # e.g. too few LSH bands for a threshold close to 1
        raise ValueError(
            f"near-duplicate threshold {threshold} with num_perm {num_perm} is not usable ({error}); "
            "lower the threshold or raise num_perm"
        ) from None


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band): the banding datasketch's MinHashLSH picks for these settings."""
    lsh = make_lsh(threshold, num_perm)
    return lsh.b, lsh.r


def near_duplicate_of(values: np.ndarray, fixed: int, threshold: float) -> np.ndarray:
    """``[n]`` int64: for each row of ``values`` (``[n, num_perm]`` MinHash values, in priority order)
    the earliest kept row it near-duplicates, or -1 when it is kept. The first ``fixed`` rows
    (references) are always kept.

    The decisions of a greedy MinHashLSH pass (insert kept rows, query each row, a candidate counts when
    its estimated Jaccard, the share of equal values, is at least ``threshold``), with numpy instead: the
    band keys of all rows are grouped at once (one ``np.unique`` per band), and only rows that share a band
    with an earlier row are looked at one by one, each against the kept rows of its bands.
    """
    n, num_perm = values.shape
    bands, band_rows = lsh_bands(threshold, num_perm)
    # the fewest equal values that LeanMinHash.jaccard (count / num_perm, float) puts at the threshold
    min_equal = next(count for count in range(num_perm + 1) if count / num_perm >= threshold)
    match = np.full(n, -1, dtype=np.int64)
    groups = np.empty((n, bands), dtype=np.int64)  # each row's bucket in each band, -1 = alone there
    for band in range(bands):
        band_values = np.ascontiguousarray(values[:, band * band_rows : (band + 1) * band_rows])
        keys = band_values.view(np.dtype((np.void, band_values.itemsize * band_rows))).ravel()  # row -> bytes
        _, bucket = np.unique(keys, return_inverse=True)
        bucket = bucket.ravel()
        shared = np.bincount(bucket)[bucket] > 1
        groups[:, band] = np.where(shared, bucket + band * n, -1)
    kept_in: dict[int, list[int]] = {}  # bucket -> kept rows in it, in order
    in_shared = np.flatnonzero((groups >= 0).any(axis=1))
    for row, row_groups in zip(in_shared.tolist(), groups[in_shared].tolist(), strict=True):
        row_groups = [group for group in row_groups if group >= 0]
        candidates = {kept for group in row_groups for kept in kept_in.get(group, ())}
        if row >= fixed and candidates:
            candidates = np.fromiter(candidates, dtype=np.int64, count=len(candidates))
            equal = np.count_nonzero(values[candidates] == values[row], axis=1)
            duplicated = candidates[equal >= min_equal]
            if len(duplicated):
                match[row] = duplicated.min()
                continue
        for group in row_groups:
            kept_in.setdefault(group, []).append(row)
    return match


def _may_be_copies(values: np.ndarray, reference_values: np.ndarray) -> list[int]:
    """The rows (indexes into ``values``) that may be exact copies of another row or a reference: those
    whose first 16 MinHash values (num_perm is at least 16) have the fingerprint of another's (a
    collision only costs a hash). The same code once layout is normalised has the same word tokens, so
    the same MinHash values; a row alone with its values is no copy and needs no hash (most rows:
    hashing is the exact pass's cost)."""
    prefix = np.concatenate([reference_values[:, :16], values[:, :16]]).astype(np.uint64)
    multipliers = np.random.default_rng(0).integers(1, 2**63, size=16, dtype=np.uint64)
    _, bucket, sizes = np.unique(prefix @ multipliers, return_inverse=True, return_counts=True)
    return (np.flatnonzero(sizes[bucket.ravel()][len(reference_values) :] > 1)).tolist()


@dataclass
class DedupResult:
    """Which rows to keep, and why the others were removed."""

    keep: list[bool]
    removed: Counter[str] = field(default_factory=Counter)  # reason -> rows
    reference_hits: int = 0  # reference rows that at least one removed row duplicated
    seconds: float = 0.0

    @property
    def kept(self) -> int:
        return sum(self.keep)

    def summary(self) -> dict:
        return {
            "before": len(self.keep),
            "after": self.kept,
            "exact_removed": self.removed["exact"],
            "near_removed": self.removed["near"],
            "eval_overlap_removed": self.removed["eval_overlap"],
            "eval_rows_overlapped": self.reference_hits,
            "seconds": round(self.seconds, 2),
        }


def deduplicate(
    codes: Sequence[str],
    *,
    near: bool = True,
    threshold: float = 0.8,
    num_perm: int = 128,
    reference: Sequence[str] = (),
    seed: int = 1,
    signatures: np.ndarray | None = None,
    reference_signatures: np.ndarray | None = None,
) -> DedupResult:
    """Mark exact and (when ``near``) near-duplicate codes for removal, keeping first occurrences.

    ``reference`` codes are compared against but never removed; see the module docstring.
    ``signatures`` / ``reference_signatures`` (``[n, num_perm]``, from :func:`signatures` with the same
    ``num_perm`` and ``seed``) are the codes' sketches computed beforehand; without them they are
    computed here.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if num_perm < 16:
        raise ValueError(f"num_perm must be at least 16, got {num_perm}")
    for name, given, rows in (
        ("signatures", signatures, codes),
        ("reference_signatures", reference_signatures, reference),
    ):
        if given is not None and (given.ndim != 2 or given.shape != (len(rows), num_perm)):
            raise ValueError(f"{name} has shape {given.shape}, expected ({len(rows)}, {num_perm})")
    if near:
        make_lsh(threshold, num_perm)  # a clear error for unusable settings, before the work
    start = time.perf_counter()
    result = DedupResult(keep=[True] * len(codes))
    values = reference_values = None
    if near:  # every row's MinHash values: the near pass compares them, the exact pass skips rows with them
        sketcher = Sketcher(num_perm, seed)
        values = signatures if signatures is not None else sketcher.matrix(codes)
        reference_values = (
            reference_signatures if reference_signatures is not None else sketcher.matrix(reference)
        )

    # 1. exact copies (and exact copies of references)
    reference_hashes = {code_hash(code): index for index, code in enumerate(reference)}
    seen_hashes: set[bytes] = set()
    hit_references: set[int] = set()
    digests: dict[str, bytes] = {}  # a code seen before, character for character, is not hashed again
    for index in range(len(codes)) if values is None else _may_be_copies(values, reference_values):
        code = codes[index]
        digest = digests.get(code)
        if digest is None:
            digest = digests[code] = code_hash(code)
        if digest in reference_hashes:
            result.keep[index] = False
            result.removed["eval_overlap"] += 1
            hit_references.add(reference_hashes[digest])
        elif digest in seen_hashes:
            result.keep[index] = False
            result.removed["exact"] += 1
        else:
            seen_hashes.add(digest)

    # 2. near copies among the rest
    if near:
        rest = np.flatnonzero(result.keep)
        match = near_duplicate_of(np.concatenate([reference_values, values[rest]]), len(reference), threshold)
        for index, matched in zip(rest.tolist(), match[len(reference) :].tolist(), strict=True):
            if matched < 0:
                continue
            result.keep[index] = False
            if matched < len(reference):
                result.removed["eval_overlap"] += 1
                hit_references.add(matched)
            else:
                result.removed["near"] += 1
    result.reference_hits = len(hit_references)
    result.seconds = time.perf_counter() - start
    return result
