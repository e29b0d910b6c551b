"""Search-time scoring beside the embeddings: the BM25 index over code and the rules that fuse dense and
BM25 scores into one hybrid ranking; numpy in, numpy out.

One home for what build_index writes (the lexical index, ``BM25Index``), what evaluate measures and chooses
(the BM25 baseline; the fusion rule and weight, semcode.evaluation.choose_fusion) and what `semcode search
--mode hybrid` applies (semcode.serve.searcher), so search gets evaluate's numbers.

BM25 (``bm25s``): queries and codes split by ``split_identifiers`` (camelCase and underscores split,
lowercased), saved in bm25s' own format (bundle.json ``lexical``).

Hybrid (the system ``hybrid``): the model's cosine and BM25 of the same candidates, ``dense [Q, C]`` and
``lexical [Q, C]``, fused by one of two rules (``fuse``):

- ``convex``: ``hybrid = cos + weight * bm25 / max_bm25``, ``max_bm25`` the query's highest BM25 score
  over the candidates given: the whole candidate set in evaluate (before either protocol picks its
  candidates); in search the union of the dense and the lexical top N, which holds the lexical top 1,
  so the same number. A query whose best BM25 score is 0 keeps its cosine. ``weight`` 0 is the dense
  ranking; the BM25 term lies in [0, 1], so ``weight`` is what a best lexical match adds to a cosine.
- ``rrf``: reciprocal-rank fusion, ``hybrid = 1 / (60 + rank_cos) + 1 / (60 + rank_bm25)``, ranks
  1-based among the candidates given, equal scores sharing the best rank of their group (every
  candidate with BM25 0 gets the same lexical rank); no weight. In search, over the union of both top N
  lists, a candidate outside one list is ranked within the union on that side: rank > N there as in the
  whole corpus, so only contributions below 1 / (61 + N) differ.

evaluate chooses the rule and weight on the valid split (semcode.evaluation.choose_fusion: the convex
weights of ``FUSION_WEIGHTS`` and ``rrf``, by full-corpus MRR), never on test or an external suite.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------- BM25

# Words are runs of letters and digits (underscores and punctuation separate them); an ASCII word
# splits further into camelCase parts: an acronym (HTTP in HTTPResponse), a word, a number.
_WORD = re.compile(r"[^\W_]+")
_CAMEL_PART = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")


def split_identifiers(text: str) -> list[str]:
    """Lowercased word parts, identifiers split on camelCase and underscores: getHTTP_url2 -> get http url 2."""
    parts: list[str] = []
    for word in _WORD.findall(text):
        parts.extend(_CAMEL_PART.findall(word) if word.isascii() else [word])
    return [part.lower() for part in parts]


class BM25Index:
    """BM25 (bm25s, its defaults: Lucene variant, k1=1.5, b=0.75) over codes; queries and codes share the splitter.

    ``BM25Index(codes)`` indexes an iterable of code texts (read once: a generator over Parquet batches
    keeps one batch of text in memory; each code is held as token ids, not strings). ``save(dir)``
    writes bm25s' own format (``bm25s.BM25.load(dir)`` reads it back) and ``BM25Index.load(dir)`` reads
    it with the splitter; ``stopwords`` must be what the index was built with (bundle.json ``lexical``).
    """

    TOKENIZER = "split_identifiers"  # how bundle.json "lexical" names the splitter

    def __init__(self, codes: Iterable[str], stopwords: bool = False) -> None:
        import bm25s

        self.stopwords = self._stopwords(stopwords)
        vocab: dict[str, int] = {}
        token_ids = [[vocab.setdefault(token, len(vocab)) for token in self.tokens(code)] for code in codes]
        self.n_codes = len(token_ids)
        self.retriever = bm25s.BM25()
        if self.n_codes:
            self.retriever.index((token_ids, vocab), show_progress=False)

    @staticmethod
    def _stopwords(stopwords: bool) -> frozenset[str]:
        from bm25s.stopwords import STOPWORDS_EN

        return frozenset(STOPWORDS_EN) if stopwords else frozenset()

    @classmethod
    def load(cls, path: str | Path, stopwords: bool = False) -> BM25Index:
        """An index saved by ``save`` (bm25s' format in folder ``path``)."""
        import bm25s

        if not (Path(path) / "params.index.json").is_file():
            raise FileNotFoundError(f"{path} holds no bm25s index (no params.index.json)")
        index = cls.__new__(cls)
        index.stopwords = cls._stopwords(stopwords)
        index.retriever = bm25s.BM25.load(str(path))
        index.n_codes = int(index.retriever.scores["num_docs"])
        return index

    def save(self, path: str | Path) -> Path:
        """Write the index in bm25s' own format into folder ``path``; returns it."""
        if self.n_codes == 0:
            raise ValueError("an empty BM25 index (no codes) cannot be saved")
        self.retriever.save(str(path), show_progress=False)
        return Path(path)

    def tokens(self, text: str) -> list[str]:
        return [t for t in split_identifiers(text) if t not in self.stopwords]

    def query_scores(self, query: str) -> np.ndarray:
        """BM25 scores [C] float32 of one query against every code; 0 everywhere without a known token."""
        ids = self.retriever.get_tokens_ids(self.tokens(query)) if self.n_codes else []
        if not ids:
            return np.zeros(self.n_codes, dtype=np.float32)
        return np.asarray(self.retriever.get_scores_from_ids(ids), dtype=np.float32)

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """BM25 scores [len(queries), C]; a query with no known token scores 0 everywhere."""
        out = np.zeros((len(queries), self.n_codes), dtype=np.float32)
        for row, query in enumerate(queries):
            out[row] = self.query_scores(query)
        return out


def bm25_scores(queries: Sequence[str], codes: Sequence[str], stopwords: bool = False) -> np.ndarray:
    """BM25 scores [Q, C] of every query against every code."""
    return BM25Index(codes, stopwords=stopwords).scores(queries)


# ---------------------------------------------------------------- hybrid: fusing dense and BM25 scores

# dense [Q, C] and lexical [Q, C] -> hybrid [Q, C]: the rules, and why search gets evaluate's numbers,
# are in the module docstring. bundle.json "fusion" carries evaluate's choice to search.

FUSION_RULES = ("convex", "rrf")
RRF_K = 60
FUSION_WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
DEFAULT_FUSION = {"rule": "convex", "weight": 0.1}  # without a valid split to choose on: the probe


def check_fusion(rule: str, weight: float) -> None:
    """ValueError naming a bad rule (listing the valid ones) or a negative or non-finite weight."""
    if rule not in FUSION_RULES:
        raise ValueError(f"fusion rule {rule!r} is not one of {list(FUSION_RULES)}")
    if not np.isfinite(weight) or weight < 0:
        raise ValueError(f"fusion weight must be a finite number >= 0, got {weight}")


def _check_pair(dense: np.ndarray, lexical: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dense, lexical = np.asarray(dense, dtype=np.float32), np.asarray(lexical, dtype=np.float32)
    if dense.ndim != 2 or dense.shape != lexical.shape:
        raise ValueError(
            f"dense and lexical scores must be [queries, candidates] of one shape, got {dense.shape} and "
            f"{lexical.shape}"
        )
    if np.isnan(dense).any() or np.isnan(lexical).any():
        raise ValueError("scores contain NaN: fusion needs a number for every candidate")
    return dense, lexical


def convex_fusion(dense: np.ndarray, lexical: np.ndarray, weight: float) -> np.ndarray:
    """dense [Q, C] + weight * lexical [Q, C] / its row max -> hybrid [Q, C] float32."""
    check_fusion("convex", weight)
    dense, lexical = _check_pair(dense, lexical)
    if dense.shape[1] == 0:
        return dense.copy()
    best = lexical.max(axis=1, keepdims=True)  # [Q, 1]
    normalised = np.divide(lexical, best, out=np.zeros_like(lexical), where=best > 0)  # [Q, C] in [0, 1]
    return dense + np.float32(weight) * normalised


def competition_ranks(scores: np.ndarray) -> np.ndarray:
    """1-based ranks [Q, C] int64 of each row's scores, highest first; equal scores share the best rank
    of their group (scores 3, 1, 3, 0 -> ranks 1, 3, 1, 4)."""
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [queries, candidates], got shape {scores.shape}")
    n_queries, n_codes = scores.shape
    order = np.argsort(-scores, axis=1, kind="stable")  # [Q, C] candidate at each sorted position
    ordered = np.take_along_axis(scores, order, axis=1)  # [Q, C] descending
    starts_group = np.ones((n_queries, n_codes), dtype=bool)
    starts_group[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    positions = np.broadcast_to(np.arange(n_codes), (n_queries, n_codes))
    group_start = np.maximum.accumulate(np.where(starts_group, positions, 0), axis=1)  # [Q, C]
    ranks = np.empty((n_queries, n_codes), dtype=np.int64)
    np.put_along_axis(ranks, order, group_start + 1, axis=1)
    return ranks


def rrf_fusion(dense: np.ndarray, lexical: np.ndarray, k: int = RRF_K) -> np.ndarray:
    """1 / (k + rank of dense [Q, C]) + 1 / (k + rank of lexical [Q, C]) -> hybrid [Q, C] float32."""
    if k < 1:
        raise ValueError(f"the RRF constant k must be >= 1, got {k}")
    dense, lexical = _check_pair(dense, lexical)
    fused = 1.0 / (k + competition_ranks(dense)) + 1.0 / (k + competition_ranks(lexical))
    return fused.astype(np.float32)


def fuse(dense: np.ndarray, lexical: np.ndarray, rule: str, weight: float = 0.0) -> np.ndarray:
    """Hybrid scores [Q, C] of dense and lexical [Q, C] by ``rule`` (FUSION_RULES; see the module doc)."""
    check_fusion(rule, weight)
    if rule == "convex":
        return convex_fusion(dense, lexical, weight)
    return rrf_fusion(dense, lexical)


def fusion_name(rule: str, weight: float) -> str:
    """How a fusion candidate is named in metrics: ``convex@0.1``, ``rrf``."""
    return "rrf" if rule == "rrf" else f"convex@{weight:g}"
