"""The everyday-queries suite: searches people type, scored against accepted standard-library answers.

The data is package data, ``semcode/suite_data/everyday.jsonl``; its README gives the provenance and the
fields. Each query holds one or more accepted answers, each a (stdlib-relative path, func_name) pair:
``("tempfile.py", "mkdtemp")``, ``("json/__init__.py", "dumps")``, ``("subprocess.py", "Popen.communicate")``.

Scoring (``score_everyday``), over the ranked rows of an index (each row's location and func_name):

- a query's rank is the 1-based position of its first accepted answer within the top ``MRR_AT`` (10);
  0 when none of the top 10 is accepted;
- success@k = share of queries with rank in 1..k (k = 1, 3, 10); MRR@10 = mean of 1/rank (0 for 0);
- the same per form (keyword, question) and per topic;
- ``coverage`` (given the index's rows): the queries with at least one accepted answer among the rows at
  all; the others cannot be found by any ranking, and are named.

Locations (``answer_key``): index rows hold the stdlib file as a path relative to its source root
(``json/__init__.py``, what ingest writes for python:stdlib; its url ``python://stdlib/json/__init__.py``),
or as an absolute path or file:// url (``/usr/lib/python3.11/json/__init__.py``). A location is cut after
its last ``pythonX.Y`` (or CPython's ``Lib``) folder, and compared with an answer's path as a whole:
``os.py`` never matches ``ntpath.py``, nor ``setuptools/glob.py`` ``glob.py``. A location inside
``site-packages`` or ``dist-packages`` (``python://site-packages/...``) is not the standard library and
matches nothing.

Paired intervals: ``paired_difference`` is semcode.evaluation's paired bootstrap over two systems' ranks
of the same queries (MRR@10 difference, a rank of 0 counting 0).

In evaluate (``evaluate_everyday``; semcode.stages.evaluate reads the candidates): the candidates are the
ingest corpus' ``python:stdlib`` rows with code (as the index selects them), each as its search document
(semcode.corpus.search_document, in build_index's view), in one protocol, ``PROTOCOL`` ("stdlib"): every
system ranks every candidate for every query (``top_keys``, ties against the system) and the top 10
count. Systems: the model, the zero-shot start, BM25 and hybrid over the search documents, and "naive",
the start model over each row's whole source (``NAIVE_DOCUMENT``) at ``NAIVE_MAX_LENGTH`` tokens, cosine
only: the afternoon baseline.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

import numpy as np

from semcode.retrieval import internal_definitions

if TYPE_CHECKING:
    from semcode.embed import EmbedFn
    from semcode.evaluation import MixSuite

SUITE_NAME = "everyday"
SUITE_FILE = "everyday.jsonl"  # in the package folder semcode/suite_data
FORMS = ("keyword", "question")
SUCCESS_AT = (1, 3, 10)
MRR_AT = 10
PROTOCOL = "stdlib"  # evaluate's one protocol for the suite: every python:stdlib row a candidate
STDLIB_SOURCE = "python:stdlib"  # the corpus' source column of those rows (ingest's source spec)
NAIVE_DOCUMENT = "doc+code"  # the naive baseline's text of a row: its whole source (semcode.corpus view)
NAIVE_MAX_LENGTH = 256  # ...embedded at this many tokens, as the afternoon baseline of issue 30 was
BOOTSTRAP_BLOCK = 128  # resamples drawn at once by paired_difference (as semcode.evaluation's)

Key = tuple[str, str]  # (stdlib-relative path, func_name)

# The folder a stdlib-relative path starts after: lib/python3.11, lib/python3.13t, CPython's Lib/.
_STDLIB_ROOT_PART = re.compile(r"python\d+(\.\d+)*t?|Lib")
_NOT_STDLIB_PARTS = frozenset({"site-packages", "dist-packages"})
PYTHON_URL = "python://"  # ingest's urls: python://stdlib/<path>, python://site-packages/<path>
_LINE_FRAGMENT = re.compile(r"#L\d+(-L?\d+)?$")


@dataclass(frozen=True)
class EverydayQuery:
    """One query of the suite and its accepted answers."""

    id: str
    query: str
    form: str  # "keyword" or "question"
    topic: str
    answers: tuple[Key, ...]  # (stdlib-relative path, func_name), any one accepted


def suite_path() -> Path:
    """The packaged suite file."""
    return Path(str(resources.files("semcode") / "suite_data" / SUITE_FILE))


def load_everyday(path: str | Path | None = None) -> list[EverydayQuery]:
    """The suite's queries in file order (default: the packaged everyday.jsonl); ValueError on a bad one."""
    path = Path(path) if path is not None else suite_path()
    queries: list[EverydayQuery] = []
    seen: set[str] = set()
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        record = json.loads(line)
        missing = [f for f in ("id", "query", "form", "topic", "answers") if f not in record]
        if missing:
            raise ValueError(f"{where}: record lacks {missing}")
        if record["form"] not in FORMS:
            raise ValueError(f"{where}: form {record['form']!r} is not one of {FORMS}")
        if record["id"] in seen:
            raise ValueError(f"{where}: id {record['id']!r} repeats")
        if not record["query"].strip() or not record["answers"]:
            raise ValueError(f"{where}: an empty query or no accepted answer")
        seen.add(record["id"])
        answers = tuple((str(a["path"]), str(a["name"])) for a in record["answers"])
        queries.append(EverydayQuery(record["id"], record["query"], record["form"], record["topic"], answers))
    return queries


def answer_key(path: str, func_name: str) -> Key | None:
    """An index row's (location, func_name) as the suite names answers: (stdlib-relative path, func_name).

    ``path``: relative to the stdlib root, absolute, ingest's ``python://stdlib/<path>`` url, or a file://
    url (percent-escapes decoded); a ``#L12-L30`` fragment is dropped and ``\\`` counts as ``/``. None for
    a location in site-packages or dist-packages (``python://site-packages/...`` too).
    """
    location = str(path)
    if location.startswith(PYTHON_URL):  # ingest's url: python://stdlib/json/decoder.py#L42
        where, _, location = location.removeprefix(PYTHON_URL).partition("/")
        if where != "stdlib":  # python://site-packages/...
            return None
    elif location.startswith("file://"):
        location = unquote(urlsplit(location).path)  # the fragment (#L12-L30) goes with the rest
    location = _LINE_FRAGMENT.sub("", location).replace("\\", "/")
    parts = [part for part in location.split("/") if part and part != "."]
    if _NOT_STDLIB_PARTS.intersection(parts):
        return None
    roots = [i for i, part in enumerate(parts) if _STDLIB_ROOT_PART.fullmatch(part)]
    if roots:
        parts = parts[roots[-1] + 1 :]
    if not parts:
        return None
    return "/".join(parts), str(func_name).strip()


def _keys(rows: Iterable[Sequence[str] | None]) -> list[Key | None]:
    return [None if row is None else answer_key(row[0], row[1]) for row in rows]


def first_hit_ranks(
    ranked: Sequence[Sequence[Sequence[str] | None]], queries: Sequence[EverydayQuery]
) -> np.ndarray:
    """ranks [Q] int64: the 1-based position of each query's first accepted answer in its top MRR_AT, or 0.

    ``ranked[i]``: query i's rows best first, each (path, func_name) (raw or already an ``answer_key``) or
    None (a row that is no stdlib definition).
    """
    if len(ranked) != len(queries):
        raise ValueError(
            f"{len(ranked)} rankings for {len(queries)} queries: one ranking per query, in order"
        )
    ranks = np.zeros(len(queries), dtype=np.int64)
    for i, (rows, query) in enumerate(zip(ranked, queries, strict=True)):
        accepted = set(query.answers)
        for position, key in enumerate(_keys(list(rows)[:MRR_AT]), start=1):
            if key in accepted:
                ranks[i] = position
                break
    return ranks


def success_metrics(ranks: np.ndarray) -> dict[str, float]:
    """success@1/@3/@10, MRR@10 and n_queries of first-hit ranks [Q] (0: no accepted answer in the top 10)."""
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or ranks.size == 0 or ranks.min() < 0 or ranks.max() > MRR_AT:
        raise ValueError(f"ranks must be a non-empty 1-D array of 0..{MRR_AT}, got {ranks!r}")
    found = ranks > 0
    metrics = {f"success@{k}": float(np.mean(found & (ranks <= k))) for k in SUCCESS_AT}
    metrics[f"mrr@{MRR_AT}"] = float(np.mean(np.where(found, 1.0 / np.maximum(ranks, 1), 0.0)))
    metrics["n_queries"] = int(ranks.size)
    return metrics


def coverage(indexed: Iterable[Sequence[str] | None], queries: Sequence[EverydayQuery]) -> dict:
    """How many queries have an accepted answer among an index's rows ((path, func_name) each, as in ranked).

    -> {"covered", "n_queries", "fraction", "uncovered": [query ids]}.
    """
    present = set(_keys(indexed))
    uncovered = [q.id for q in queries if not present.intersection(q.answers)]
    covered = len(queries) - len(uncovered)
    return {
        "covered": covered,
        "n_queries": len(queries),
        "fraction": covered / len(queries) if queries else 0.0,
        "uncovered": uncovered,
    }


def score_everyday(
    ranked_keys: Sequence[Sequence[Sequence[str] | None]],
    queries: Sequence[EverydayQuery],
    indexed: Iterable[Sequence[str] | None] | None = None,
) -> dict:
    """The suite's scores for one system's rankings (see the module docstring).

    ``ranked_keys[i]``: query i's rows best first, (path, func_name) each (only the top MRR_AT count);
    ``indexed``: every row of the index searched (for ``coverage``; left out without it).

    -> {"success@1", "success@3", "success@10", "mrr@10", "n_queries", "by_form": {form: same},
    "by_topic": {topic: same}, "ids": [Q query ids], "ranks": [Q] int64 (0 = not in the top 10),
    "coverage": {...}}.
    """
    if not queries:
        raise ValueError("no queries to score")
    ranks = first_hit_ranks(ranked_keys, queries)
    scores: dict = success_metrics(ranks)

    def grouped(attribute: str) -> dict[str, dict[str, float]]:
        values = np.array([getattr(q, attribute) for q in queries])
        return {value: success_metrics(ranks[values == value]) for value in dict.fromkeys(values.tolist())}

    scores["by_form"] = grouped("form")
    scores["by_topic"] = grouped("topic")
    scores["ids"] = [q.id for q in queries]
    scores["ranks"] = ranks
    if indexed is not None:
        scores["coverage"] = coverage(indexed, queries)
    return scores


def paired_difference(
    ranks: np.ndarray, baseline_ranks: np.ndarray, resamples: int = 2000, seed: int = 0
) -> dict[str, float]:
    """MRR@10(ranks) - MRR@10(baseline_ranks) on the same queries, with its 95% paired bootstrap interval.

    Both first-hit ranks [Q] as ``score_everyday`` gives them (0 = not in the top 10, counted 0).
    -> {"mrr_difference", "ci95_low", "ci95_high"}: semcode.evaluation.paired_bootstrap's.
    """
    from semcode.evaluation import paired_bootstrap, paired_ranks

    ranks, baseline_ranks = paired_ranks(ranks, baseline_ranks, resamples)

    def reciprocal(r: np.ndarray) -> np.ndarray:  # a miss (0) adds nothing to MRR@10
        return np.where(r > 0, 1.0 / np.maximum(r, 1), 0.0)

    return paired_bootstrap(reciprocal(ranks) - reciprocal(baseline_ranks), resamples, seed)


def everyday_mix_suite(
    queries: Sequence[EverydayQuery],
    rows: Sequence[tuple[str, str]],
    documents: Sequence[str],
    name: str = "everyday",
    source: str = "",
    embed: EmbedFn | None = None,
) -> MixSuite:
    """The everyday suite (semcode.everyday) over index rows as a question-style suite of the mix.

    ``rows[j]``: row j's (location, func_name); ``documents[j]``: what it is embedded and BM25-indexed as
    (semcode.corpus.search_document). A row is relevant to a query when it is one of the query's accepted
    answers (everyday.answer_key); a query with no accepted answer among the rows is left out (no ranking
    can find it). Ranked by full-corpus MRR like every suite of the mix (not the suite's MRR@10).
    """
    from semcode.evaluation import MixSuite

    if len(rows) != len(documents):
        raise ValueError(f"{len(rows)} rows but {len(documents)} documents: one document per row")
    row_of: dict[tuple[str, str], list[int]] = {}
    for j, (location, func_name) in enumerate(rows):
        key = answer_key(location, func_name)
        if key is not None:
            row_of.setdefault(key, []).append(j)
    kept, pairs = [], []
    for query in queries:
        found = sorted({j for answer in query.answers for j in row_of.get(answer, [])})
        if found:
            pairs += [(len(kept), j) for j in found]
            kept.append(query.query)
    if not kept:
        raise ValueError(
            f"suite {name}: none of its {len(queries)} queries has an accepted answer in the rows"
        )
    relevant = np.array(pairs, dtype=np.int64)
    exclude = np.zeros((0, 2), np.int64)
    internal = internal_definitions(func_name for _, func_name in rows)  # by name: Class._helper too
    return MixSuite(name, "question", kept, list(documents), relevant, exclude, source, embed, internal)


# ---------------------------------------------------------------- ranking a corpus' candidates (evaluate)


def top_keys(
    scores: np.ndarray, keys: Sequence[Key | None], queries: Sequence[EverydayQuery]
) -> list[list[Key | None]]:
    """Each query's MRR_AT best candidates, as their keys: ``scores [Q, C]`` (query q against candidate c,
    whose ``answer_key`` is ``keys[c]``, None for a row that is no stdlib definition), highest first.

    Ties count against the system, as in semcode.evaluation: among equal scores an accepted answer comes
    after the others, so a system that scores every candidate the same finds nothing.
    """
    scores = np.asarray(scores)
    if scores.shape != (len(queries), len(keys)):
        raise ValueError(
            f"scores of shape {scores.shape} for {len(queries)} queries and {len(keys)} candidates"
        )
    where: dict[Key, list[int]] = {}
    for candidate, key in enumerate(keys):
        if key is not None:
            where.setdefault(key, []).append(candidate)
    k = min(MRR_AT, len(keys))
    ranked: list[list[Key | None]] = []
    for row, query in zip(scores, queries, strict=True):
        if k == 0:
            ranked.append([])
            continue
        kth = np.partition(row, len(row) - k)[len(row) - k]  # the k-th highest score
        near = np.flatnonzero(row >= kth)  # the top k and every candidate tied with its last
        accepted = np.isin(near, [c for answer in query.answers for c in where.get(answer, ())])
        order = near[np.lexsort((accepted, -row[near]))][:k]
        ranked.append([keys[candidate] for candidate in order])
    return ranked


def evaluate_everyday(
    queries: Sequence[EverydayQuery],
    rows: Sequence[Sequence[str]],
    documents: Sequence[str],
    systems: Mapping[str, EmbedFn],
    naive: EmbedFn | None = None,
    whole_sources: Sequence[str] | None = None,
    bm25: bool = True,
    bm25_stopwords: bool = False,
    fusion: Mapping | None = None,
    seed: int = 0,
) -> dict:
    """Every system's scores on the suite, each ranking all the candidates (``rows [C]``, each (location,
    func_name); their search ``documents [C]``) for every query, the top MRR_AT counted (``top_keys``).

    Systems: each of ``systems`` (embedding callables, cosine over the documents: "model", "zero_shot");
    "bm25" (semcode.retrieval.BM25Index over the documents) with ``bm25``; "hybrid", the "model" fused
    with BM25 by ``fusion`` (a fusion spec, semcode.retrieval.fuse_queries); "naive", ``naive`` over
    ``whole_sources [C]`` (each row's whole source), cosine only.

    -> ``{PROTOCOL: {system: success_metrics}, "by_form" and "by_topic": {value: {"n_queries", PROTOCOL:
    {system: ...}}}, "model_vs": {PROTOCOL: {"zero_shot" / "naive": paired_difference}}, "hybrid_vs":
    {PROTOCOL: {"model" / "zero_shot" / "naive": hybrid - that system}}, "coverage", "n_queries", "n_candidates",
    "candidates_per_query", "per_query": {"ids", "ranks": {system: [Q]}}, "seconds", "fusion"}``.
    """
    from semcode.progress import log
    from semcode.retrieval import BM25Index, fuse_queries, fusion_spec

    if len(rows) != len(documents) or (whole_sources is not None and len(whole_sources) != len(rows)):
        raise ValueError("rows, documents and whole_sources must hold one entry per candidate")
    keys = _keys(rows)
    texts = [query.query for query in queries]
    scores: dict[str, np.ndarray] = {}  # system -> [Q, C]
    seconds: dict[str, float] = {}

    def timed(system: str, score: Callable[[], np.ndarray]) -> None:
        started = time.perf_counter()
        scores[system] = np.asarray(score(), dtype=np.float32)
        seconds[system] = round(time.perf_counter() - started, 3)

    def cosine(embed: EmbedFn, candidates: Sequence[str]) -> Callable[[], np.ndarray]:
        return lambda: embed(texts, "query") @ embed(list(candidates), "code").T

    for system, embed in systems.items():
        timed(system, cosine(embed, documents))
    if bm25:
        timed("bm25", lambda: BM25Index(documents, stopwords=bm25_stopwords).scores(texts))
    result: dict = {}
    if fusion is not None and "model" in scores and "bm25" in scores:
        spec = fusion_spec(fusion)
        internal = internal_definitions(func_name for _, func_name in rows)
        timed("hybrid", lambda: fuse_queries(scores["model"], scores["bm25"], texts, spec, internal))
        result["fusion"] = spec
    if naive is not None and whole_sources is not None:
        timed("naive", cosine(naive, whole_sources))

    scored = {system: score_everyday(top_keys(s, keys, queries), queries) for system, s in scores.items()}
    ranks = {system: s["ranks"] for system, s in scored.items()}

    def part(group: str) -> dict[str, dict]:
        values = next(iter(scored.values()))[group] if scored else {}
        return {
            value: {
                "n_queries": values[value]["n_queries"],
                PROTOCOL: {system: s[group][value] for system, s in scored.items()},
            }
            for value in values
        }

    def gaps(system: str, baselines: Iterable[str]) -> dict[str, dict]:
        present = [b for b in baselines if b in ranks] if system in ranks else []
        compared = {b: paired_difference(ranks[system], ranks[b], seed=seed) for b in present}
        return {PROTOCOL: compared} if compared else {}

    result.update(
        {
            PROTOCOL: {system: success_metrics(r) for system, r in ranks.items()},
            "by_form": part("by_form"),
            "by_topic": part("by_topic"),
            "model_vs": gaps("model", ("zero_shot", "naive")),
            "hybrid_vs": gaps("hybrid", ("model", "zero_shot", "naive")),
            "coverage": coverage(keys, queries),
            "n_queries": len(queries),
            "n_candidates": len(keys),
            "candidates_per_query": {
                PROTOCOL: {"min": len(keys), "max": len(keys), "mean": float(len(keys))}
            },
            "per_query": {
                "ids": [query.id for query in queries],
                "ranks": {system: r.tolist() for system, r in ranks.items()},
            },
            "seconds": seconds,
        }
    )
    for system, metrics in result[PROTOCOL].items():
        log(
            "evaluate",
            f"{SUITE_NAME}: {system}: success@1/@3/@10 {metrics['success@1']:.3f} / {metrics['success@3']:.3f}"
            f" / {metrics['success@10']:.3f}, MRR@10 {metrics[f'mrr@{MRR_AT}']:.4f} ({seconds[system]:.1f}s)",
        )
    return result
