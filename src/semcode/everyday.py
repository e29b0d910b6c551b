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
(``json/__init__.py``, what ingest writes for python:stdlib), as an absolute path or as a file:// url
(``/usr/lib/python3.11/json/__init__.py``). A location is cut after its last ``pythonX.Y`` (or CPython's
``Lib``) folder, and compared with an answer's path as a whole: ``os.py`` never matches ``ntpath.py``,
nor ``setuptools/glob.py`` ``glob.py``. A location inside ``site-packages`` or ``dist-packages`` is not
the standard library and matches nothing.

Paired intervals: ``paired_difference`` is the paired bootstrap of semcode.evaluation over two systems'
ranks of the same queries (MRR@10 difference, a rank of 0 counting 0).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

SUITE_NAME = "everyday"
SUITE_FILE = "everyday.jsonl"  # in the package folder semcode/suite_data
FORMS = ("keyword", "question")
SUCCESS_AT = (1, 3, 10)
MRR_AT = 10

Key = tuple[str, str]  # (stdlib-relative path, func_name)

# The folder a stdlib-relative path starts after: lib/python3.11, lib/python3.13t, CPython's Lib/.
_STDLIB_ROOT_PART = re.compile(r"python\d+(\.\d+)*t?|Lib")
_NOT_STDLIB_PARTS = frozenset({"site-packages", "dist-packages"})
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
    """The suite's queries in file order (default: the packaged everyday.jsonl); ValueError on a bad record."""
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

    ``path``: relative to the stdlib root, absolute, or a file:// url (a ``#L12-L30`` fragment is
    dropped); ``\\`` separators count as ``/``. None for a location in site-packages/dist-packages.
    """
    location = _LINE_FRAGMENT.sub("", str(path).removeprefix("file://")).replace("\\", "/")
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
    """ranks [Q] int64: the 1-based position of each query's first accepted answer in its top MRR_AT, 0 if none.

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
    """success@1/@3/@10, MRR@10 and n_queries of first-hit ranks [Q] (0 = no accepted answer in the top 10)."""
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
    -> {"mrr_difference", "ci95_low", "ci95_high"} (semcode.evaluation.paired_mrr_difference).
    """
    from semcode.evaluation import paired_mrr_difference

    def reciprocal_ready(r: np.ndarray) -> np.ndarray:  # 1 / inf = 0: a miss adds nothing to MRR@10
        r = np.asarray(r, dtype=np.float64)
        return np.where(r > 0, r, np.inf)

    return paired_mrr_difference(reciprocal_ready(ranks), reciprocal_ready(baseline_ranks), resamples, seed)
