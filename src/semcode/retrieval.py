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

A fusion spec (bundle.json ``fusion``, ``fusion_spec``) is ``{"rule", "weight"}`` and, for ``convex``,
optionally ``"question_weight"``: the weight of a query in question form (``query_form``: "How do I ...",
"... ?"), ``weight`` that of any other (keyword or docstring form). Questions are phrased unlike code and
its docstrings; the words they share with a function are rarely the ones that identify it, so they can
take less lexical help than identifier-like and docstring-like queries (issue 30). Per query: hybrid
``[Q, C] = cos + weights[Q, None] * bm25 / max_bm25`` (``query_weights``, ``fuse_queries``). A spec
without ``question_weight`` (every bundle made before it) gives every query ``weight``, as it always did.

A convex spec may also hold ``"internal_penalty"``: subtracted from the hybrid score of every candidate
that is an internal definition (``internal_definitions``: a name part with a leading underscore,
``_TemporaryFileCloser.__init__``, ``_splithost``; dunders are not internal). People search for what they
can call; the private helper behind ``shutil.rmtree`` or ``tempfile.NamedTemporaryFile`` often shares more
words with the query than the public function does, and outranks it (issue 30: an everyday query's
accepted answer sat below such helpers in 58 of 191 queries' top 3 misses' first places). The penalty is
a ranking prior, chosen like the weight (0 among the candidates), and applies to hybrid only: dense and
lexical rank as they always did.

evaluate chooses the spec on a mix of docstring-style and question-style suites (the valid split, CoSQA
dev, the everyday suite; semcode.evaluation.choose_fusion), never on test or a held-out suite.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
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
DEFAULT_FUSION = {"rule": "convex", "weight": 0.1}  # without a suite to choose on: the probe
DENSE_FUSION = {"rule": "convex", "weight": 0.0}  # the dense ranking itself
# the internal penalties choose_fusion tries beside 0 (cosine units: a cosine is 0.3-0.8)
INTERNAL_PENALTIES = (0.02, 0.05, 0.1)


def check_fusion(rule: str, weight: float | np.ndarray) -> None:
    """ValueError naming a bad rule (listing the valid ones) or a negative or non-finite weight (one number,
    or one per query)."""
    if rule not in FUSION_RULES:
        raise ValueError(f"fusion rule {rule!r} is not one of {list(FUSION_RULES)}")
    weights = np.asarray(weight, dtype=np.float64)
    if not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(f"fusion weight must be a finite number >= 0, got {weight}")


def check_penalty(penalty: float) -> None:
    """ValueError unless ``penalty`` is a finite number >= 0 (a bool is no number here)."""
    number = not isinstance(penalty, bool) and isinstance(penalty, (int, float))
    if not number or not np.isfinite(penalty) or penalty < 0:
        raise ValueError(f"fusion internal_penalty must be a finite number >= 0, got {penalty!r}")


def _number(spec: Mapping, key: str) -> float:
    value = spec.get(key, 0.0)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"fusion {key} must be a number, got {value!r}")
    return float(value)


def fusion_spec(spec: Mapping) -> dict:
    """A fusion spec checked and reduced to what fusing needs: ``{"rule", "weight"}`` and, for ``convex``,
    ``"question_weight"`` when the spec has one (not None). ValueError names what is wrong.

    An older bundle.json ``fusion`` (rule and weight only) comes back as it was; the keys evaluate records
    beside them (``chosen_on``, ``candidates``, ...) are left out.
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"a fusion spec is a mapping with 'rule' and 'weight', got {spec!r:.80}")
    rule, weight = spec.get("rule"), _number(spec, "weight")
    check_fusion(rule, weight)
    out = {"rule": rule, "weight": weight}
    if spec.get("question_weight") is not None:
        if rule != "convex":
            raise ValueError(f"question_weight applies to the convex rule only, not {rule!r}")
        question_weight = _number(spec, "question_weight")
        check_fusion(rule, question_weight)
        out["question_weight"] = question_weight
    if spec.get("internal_penalty"):
        if rule != "convex":
            raise ValueError(f"internal_penalty applies to the convex rule only, not {rule!r}")
        penalty = _number(spec, "internal_penalty")
        check_penalty(penalty)
        out["internal_penalty"] = penalty
    return out


def is_dense(spec: Mapping) -> bool:
    """Whether a fusion spec ranks as dense alone: convex with every weight 0 and no internal penalty."""
    spec = fusion_spec(spec)
    weights_zero = spec["weight"] == 0 and spec.get("question_weight", 0.0) == 0
    return spec["rule"] == "convex" and weights_zero and not spec.get("internal_penalty")


# ---------------------------------------------------------------- internal definitions

# The name a code text defines first, when a keyword introduces it (def, class, func, function, fn, sub):
# Python, Go, JavaScript/TypeScript, Rust, Ruby, Perl; a Go method's receiver is skipped. Java, C and C++
# definitions have no such keyword and give "": never internal by name.
_DEFINED_NAME = re.compile(
    r"^[ \t]*(?:@[^\n]*\n[ \t]*)*(?:(?:async|export|default|pub|static)\s+)*"
    r"(?:function|func|def|class|fn|sub)\b\s*(?:\([^)]*\)\s*)?\*?\s*([A-Za-z_$][\w$]*)",
    re.M,
)


def defined_name(code: str) -> str:
    """The name a code text defines first (``def _helper(x):`` -> ``_helper``), "" when none is found."""
    match = _DEFINED_NAME.search(code)
    return match.group(1) if match else ""


def is_internal_name(name: str) -> bool:
    """A dotted definition name with a part that starts with an underscore and is not a dunder:
    ``_splithost``, ``_TemporaryFileCloser.__init__``, ``Path._parse``; not ``Path.__init__`` or ``mkdtemp``."""
    return any(
        part.startswith("_") and not (len(part) > 4 and part.startswith("__") and part.endswith("__"))
        for part in name.split(".")
    )


def internal_definitions(names: Iterable[str]) -> np.ndarray:
    """[C] bool: which candidates, by their definition names (func_name, or defined_name of the code), are
    internal (is_internal_name)."""
    return np.fromiter((is_internal_name(name or "") for name in names), dtype=bool)


# ---------------------------------------------------------------- the form of a query

QUERY_FORMS = ("question", "keyword", "docstring")
# A query opening with one of these words is a question ("how to ...", "is there ...", "what's ...").
QUESTION_WORDS = frozenset(
    "how what whats which why where when who whom whose "
    "can could is are was were am do does did should would will shall may might must has have".split()
)
# Docstrings open with a verb, imperative or third person: "Return the ...", "Returns the ...".
DOCSTRING_VERBS = frozenset(
    "return get set create make compute calculate convert check test build find load read write parse "
    "add remove delete update generate open close run start stop send receive initialize initialise apply "
    "extract split join sort copy save fetch process handle register call determine raise construct "
    "decode encode format print validate yield wrap search match replace render resolve reset append "
    "insert clear evaluate emit list count".split()
)


def query_form(query: str) -> str:
    """How a query is phrased, read off its surface (no model): ``"question"``, ``"docstring"`` or ``"keyword"``.

    - question: it ends with "?", or its first word is an interrogative or an auxiliary that opens a
      question (QUESTION_WORDS: how, what, which, why, where, when, who, can, is, does, do, should, ...):
      "How do I check if a file exists?", "how to copy a file in python";
    - docstring: it starts with a capital letter and ends with "." or opens with a docstring verb, bare
      or third person (DOCSTRING_VERBS: "Return ...", "Returns ...", "Gets ...", "Matches ..."): "Parse a
      date string in ISO format.", "Returns the mean of the numbers";
    - keyword: anything else: "create temp directory", "python check if a variable is iterable".
    """
    text = query.strip()
    words = [word.lower() for word in _WORD.findall(text)]
    if text.endswith("?") or (words and words[0] in QUESTION_WORDS):
        return "question"
    if text[:1].isupper() and words:
        first = words[0]
        verb = first in DOCSTRING_VERBS or any(
            first.endswith(end) and first[: -len(end)] in DOCSTRING_VERBS for end in ("s", "es")
        )
        if verb or text.endswith("."):
            return "docstring"
    return "keyword"


def query_weights(queries: Sequence[str], spec: Mapping) -> np.ndarray:
    """The convex weight of each query [Q] float32: ``question_weight`` for a query in question form
    (query_form), ``weight`` for any other; ``weight`` for all without a ``question_weight``."""
    spec = fusion_spec(spec)
    weights = np.full(len(queries), spec["weight"], dtype=np.float32)  # [Q]
    if "question_weight" in spec:
        questions = np.array([query_form(query) == "question" for query in queries], dtype=bool)
        weights[questions] = spec["question_weight"]
    return weights


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


def convex_fusion(dense: np.ndarray, lexical: np.ndarray, weight: float | np.ndarray) -> np.ndarray:
    """dense [Q, C] + weight * lexical [Q, C] / its row max -> hybrid [Q, C] float32; ``weight`` one number
    or one per query [Q] (query_weights)."""
    check_fusion("convex", weight)
    dense, lexical = _check_pair(dense, lexical)
    weights = np.asarray(weight, dtype=np.float32)
    if weights.ndim == 1 and weights.shape != (dense.shape[0],):
        raise ValueError(f"per-query weights must be [queries] = [{dense.shape[0]}], got {weights.shape}")
    if weights.ndim > 1:
        raise ValueError(f"the weight must be one number or one per query [Q], got shape {weights.shape}")
    if dense.shape[1] == 0:
        return dense.copy()
    best = lexical.max(axis=1, keepdims=True)  # [Q, 1]
    normalised = np.divide(lexical, best, out=np.zeros_like(lexical), where=best > 0)  # [Q, C] in [0, 1]
    return dense + (weights[:, None] if weights.ndim else weights) * normalised  # [Q, 1] or [] * [Q, C]


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


def fuse(dense: np.ndarray, lexical: np.ndarray, rule: str, weight: float | np.ndarray = 0.0) -> np.ndarray:
    """Hybrid scores [Q, C] of dense and lexical [Q, C] by ``rule`` (FUSION_RULES; see the module doc);
    ``weight`` one number or one per query [Q] (convex only; rrf takes none)."""
    check_fusion(rule, weight)
    if rule == "convex":
        return convex_fusion(dense, lexical, weight)
    return rrf_fusion(dense, lexical)


def fuse_queries(
    dense: np.ndarray,
    lexical: np.ndarray,
    queries: Sequence[str],
    spec: Mapping,
    internal: np.ndarray | None = None,
) -> np.ndarray:
    """Hybrid scores [Q, C] of ``queries`` (their dense and lexical scores [Q, C]) by a fusion spec
    (fusion_spec): each query its own weight (query_weights), less ``internal_penalty`` for the candidates
    ``internal`` [C] marks (internal_definitions; needed when the spec has a penalty). What evaluate
    measures and search applies."""
    spec = fusion_spec(spec)
    if len(queries) != np.shape(dense)[0]:
        raise ValueError(f"{len(queries)} queries for {np.shape(dense)[0]} rows of scores: one row per query")
    if spec["rule"] == "rrf":
        return rrf_fusion(dense, lexical)
    fused = convex_fusion(dense, lexical, query_weights(queries, spec))
    return penalise_internal(fused, internal, spec.get("internal_penalty", 0.0))


def penalise_internal(scores: np.ndarray, internal: np.ndarray | None, penalty: float) -> np.ndarray:
    """scores [Q, C] less ``penalty`` where ``internal`` [C] bool is set; scores as they are at penalty 0."""
    if not penalty:
        return scores
    if internal is None or np.shape(internal) != (scores.shape[1],):
        raise ValueError(
            f"an internal_penalty needs the internal flag of each of the {scores.shape[1]} candidates, got "
            f"{None if internal is None else np.shape(internal)}"
        )
    return scores - np.float32(penalty) * np.asarray(internal, dtype=np.float32)[None, :]


def fusion_name(
    rule: str, weight: float, question_weight: float | None = None, internal_penalty: float = 0.0
) -> str:
    """How a fusion candidate is named in metrics: ``convex@0.1``, ``convex@0.3,question@0`` (questions at
    their own weight), ``convex@0.1,internal@0.05`` (internal definitions less 0.05), ``rrf``."""
    if rule == "rrf":
        return "rrf"
    name = f"convex@{weight:g}"
    name += "" if question_weight is None else f",question@{question_weight:g}"
    return name + (f",internal@{internal_penalty:g}" if internal_penalty else "")
