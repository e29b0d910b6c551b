"""Result filters of ``semcode search`` and ``semcode serve``: path and repository globs, and a minimum score.

``--path 'src/*.py'`` and ``--repo 'org/*'`` (each repeatable: a hit matches one of them) keep the hits whose
``path`` / ``repo`` match the shell pattern (fnmatch, case-sensitive, ``*`` crosses ``/``); ``--min-score``
keeps the hits scored at least that much (the mode's own score: the cosine in dense mode, BM25 in lexical,
the fused score in hybrid). Hits come best first, so the score threshold only cuts the list short; the
globs can drop any hit, so ``filtered_search`` ranks more candidates in growing rounds (k x 4, x 16, ...)
until each query has k hits that match or the whole index was ranked: a rare path still fills the list.
The language filter stays the searcher's own (it runs inside FAISS).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from semcode.serve.searcher import Hit, Searcher

GROWTH = 4  # each round ranks this many times more candidates


@dataclass(frozen=True)
class Filters:
    paths: tuple[str, ...] = ()  # shell patterns, a hit's path matches one of them (none: any path)
    repos: tuple[str, ...] = ()  # shell patterns of the repository
    min_score: float | None = None  # keep hits scored >= this (None: any score)

    @property
    def globs(self) -> bool:
        return bool(self.paths or self.repos)

    def keeps(self, hit: Hit) -> bool:
        if self.min_score is not None and hit.score < self.min_score:
            return False
        if self.paths and not any(fnmatch.fnmatchcase(hit.path, pattern) for pattern in self.paths):
            return False
        return not self.repos or any(fnmatch.fnmatchcase(hit.repo, pattern) for pattern in self.repos)


NO_FILTERS = Filters()


def check_k(k: int, searcher: Searcher) -> None:
    """ValueError, in one line, for a ``k`` above the functions the index holds (``k`` >= 1 is the caller's)."""
    if k > searcher.size:
        raise ValueError(
            f"-k {k:,} is more than the {searcher.size:,} functions in the index; ask for at most that"
        )


def filtered_search(
    searcher: Searcher,
    queries: Sequence[str],
    vectors: np.ndarray | None,
    k: int,
    language: str | Sequence[str] | None,
    mode: str,
    filters: Filters,
) -> list[list[Hit]]:
    """The top ``k`` hits of each query that ``filters`` keeps (Searcher.search_encoded's arguments), ranks
    renumbered from 1. Without path or repository globs, one search; with them, growing rounds."""
    fetch = k
    while True:
        results = searcher.search_encoded(queries, vectors, fetch, language, mode)
        kept = [[hit for hit in hits if filters.keeps(hit)] for hits in results]
        ranked_all = fetch >= searcher.size or all(len(hits) < fetch for hits in results)
        if not filters.globs or ranked_all or all(len(hits) >= k for hits in kept):
            break
        fetch = min(searcher.size, fetch * GROWTH)
    return [[replace(hit, rank=rank) for rank, hit in enumerate(hits[:k], start=1)] for hits in kept]
