"""The everyday-queries suite: its data (every answer defined in the stdlib source), loading, path
matching and scoring on hand-made rankings."""

from __future__ import annotations

import ast
import json
import sys
import sysconfig
import tomllib
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from semcode import everyday
from semcode.everyday import EverydayQuery, answer_key, coverage, load_everyday, score_everyday

STDLIB = Path(sysconfig.get_paths()["stdlib"])
ROOT = Path(__file__).resolve().parents[1]


def defined_names(tree: ast.Module) -> set[str]:
    """Functions and classes at module level and methods of module-level classes ("Type.name"), those
    inside a module- or class-level if/try/with included."""
    names: set[str] = set()

    def visit(body: list[ast.stmt], owner: str) -> None:
        for node in body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                names.add(f"{owner}.{node.name}" if owner else node.name)
            elif isinstance(node, ast.ClassDef) and not owner:
                names.add(node.name)
                visit(node.body, node.name)
            elif isinstance(node, ast.If | ast.With | ast.Try):
                for block in ("body", "orelse", "finalbody"):
                    visit(getattr(node, block, []), owner)
                for handler in getattr(node, "handlers", []):
                    visit(handler.body, owner)

    visit(tree.body, "")
    return names


@cache
def stdlib_names(path: str) -> frozenset[str]:
    return frozenset(defined_names(ast.parse((STDLIB / path).read_text(encoding="utf-8"))))


@pytest.fixture(scope="module")
def suite() -> list[EverydayQuery]:
    return load_everyday()


# ---------------------------------------------------------------- the data


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the answers are CPython 3.11's stdlib layout")
def test_every_answer_is_defined_in_the_stdlib_source(suite: list[EverydayQuery]) -> None:
    missing = []
    for query in suite:
        for path, name in query.answers:
            if not (STDLIB / path).is_file():
                missing.append(f"{query.id}: no file {path} under {STDLIB}")
            elif name not in stdlib_names(path):
                missing.append(f"{query.id}: {path} defines no {name}")
    assert not missing, "\n".join(missing)


def test_the_suite_is_big_enough_and_mixes_forms_and_topics(suite: list[EverydayQuery]) -> None:
    assert len(suite) >= 80
    ids = [q.id for q in suite]
    assert len(ids) == len(set(ids))
    forms = Counter(q.form for q in suite)
    assert set(forms) == set(everyday.FORMS)
    assert min(forms.values()) >= 0.4 * len(suite)  # about half each
    for query in suite:
        assert query.id.endswith("-kw" if query.form == "keyword" else "-q"), query.id
        assert query.answers and all(path.endswith(".py") and name for path, name in query.answers)
        assert len(set(query.answers)) == len(query.answers), query.id
    assert len({q.topic for q in suite}) >= 10
    assert len({q.query.lower() for q in suite}) == len(suite)


def test_the_suite_ships_as_package_data_with_its_provenance() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "suite_data/*.jsonl" in pyproject["tool"]["setuptools"]["package-data"]["semcode"]
    assert everyday.suite_path().is_file()
    readme = (everyday.suite_path().parent / "README.md").read_text()
    assert "Written by hand" in readme and "Never train on it" in readme


def test_load_refuses_bad_records(tmp_path: Path) -> None:
    good = {
        "id": "a-kw",
        "query": "x",
        "form": "keyword",
        "topic": "t",
        "answers": [{"path": "os.py", "name": "walk"}],
    }
    file = tmp_path / "s.jsonl"
    file.write_text(json.dumps(good) + "\n\n")
    assert load_everyday(file) == [EverydayQuery("a-kw", "x", "keyword", "t", (("os.py", "walk"),))]
    for bad, message in [
        ([good, good], "repeats"),
        ([{**good, "form": "phrase"}], "form"),
        ([{**good, "answers": []}], "no accepted answer"),
        ([{k: v for k, v in good.items() if k != "topic"}], "lacks"),
    ]:
        file.write_text("".join(json.dumps(r) + "\n" for r in bad))
        with pytest.raises(ValueError, match=message):
            load_everyday(file)


# ---------------------------------------------------------------- locations


@pytest.mark.parametrize(
    ("location", "key"),
    [
        ("json/__init__.py", "json/__init__.py"),  # what ingest writes for python:stdlib
        ("/usr/lib/python3.11/tempfile.py", "tempfile.py"),
        ("/root/.pyenv/versions/3.11.7/lib/python3.11/http/client.py", "http/client.py"),
        ("file:///usr/lib/python3.11/os.py#L770-L780", "os.py"),
        ("file:///opt/my%20py/lib/python3.11/json/__init__.py", "json/__init__.py"),
        ("/usr/lib/python3.11/os.py#L770", "os.py"),
        ("python://stdlib/json/decoder.py#L42", "json/decoder.py"),  # ingest's url
        ("python://site-packages/requests/api.py", None),
        ("/opt/py/lib/python3.13t/os.py", "os.py"),
        ("C:\\Python311\\Lib\\ntpath.py", "ntpath.py"),
        ("cpython/Lib/shutil.py", "shutil.py"),  # a CPython checkout
        ("./glob.py", "glob.py"),
        ("/home/u/python3.11/lib/python3.11/csv.py", "csv.py"),  # cut after the last one
        ("/usr/lib/python3.11/site-packages/glob.py", None),
        ("/usr/lib/python3/dist-packages/six.py", None),
        ("", None),
    ],
)
def test_answer_key_cuts_at_the_stdlib_root(location: str, key: str | None) -> None:
    assert answer_key(location, "f") == (None if key is None else (key, "f"))


def test_paths_match_as_whole_components() -> None:
    query = EverydayQuery("q", "x", "keyword", "t", (("os.py", "walk"), ("json/__init__.py", "dumps")))
    misses = [
        ("/usr/lib/python3.11/ntpath.py", "walk"),  # os.py is not a suffix of ntpath.py
        ("setuptools/glob.py", "walk"),
        ("/usr/lib/python3.11/os.py", "fwalk"),  # same file, another function
        ("/usr/lib/python3.11/os.py", "Walker.walk"),
        ("simplejson/__init__.py", "dumps"),
        ("/usr/lib/python3.11/site-packages/os.py", "walk"),
        None,  # a row that is no stdlib definition
    ]
    assert everyday.first_hit_ranks([misses], [query]).tolist() == [0]
    hits = misses + [("/usr/lib/python3.11/json/__init__.py", "dumps")]
    assert everyday.first_hit_ranks([hits], [query]).tolist() == [8]


# ---------------------------------------------------------------- scoring


def hand_made() -> tuple[list[EverydayQuery], list[list[tuple[str, str]]]]:
    """Four queries: first accepted answer at ranks 1, 3, 0 (at 11, outside the top 10), 10."""
    queries = [
        EverydayQuery("a-kw", "a", "keyword", "files", (("tempfile.py", "mkdtemp"),)),
        EverydayQuery("b-q", "b", "question", "files", (("shutil.py", "copy"), ("shutil.py", "copy2"))),
        EverydayQuery("c-kw", "c", "keyword", "text", (("textwrap.py", "dedent"),)),
        EverydayQuery("d-q", "d", "question", "text", (("re/__init__.py", "sub"),)),
    ]
    other = [(f"/usr/lib/python3.11/m{i}.py", "f") for i in range(12)]
    ranked = [
        [("/usr/lib/python3.11/tempfile.py", "mkdtemp"), *other[:9]],
        [other[0], other[1], ("shutil.py", "copy2"), ("shutil.py", "copy")],  # the first of two counts
        [*other[:10], ("textwrap.py", "dedent")],
        [*other[:9], ("re/__init__.py", "sub")],
    ]
    return queries, ranked


def test_score_everyday_on_hand_made_rankings() -> None:
    queries, ranked = hand_made()
    scores = score_everyday(ranked, queries)
    assert scores["ranks"].tolist() == [1, 3, 0, 10]
    assert scores["ids"] == ["a-kw", "b-q", "c-kw", "d-q"]
    assert scores["success@1"] == 0.25
    assert scores["success@3"] == 0.5
    assert scores["success@10"] == 0.75
    assert scores["mrr@10"] == pytest.approx((1 + 1 / 3 + 0 + 1 / 10) / 4)
    assert scores["n_queries"] == 4
    assert scores["by_form"]["keyword"] == {
        "success@1": 0.5,
        "success@3": 0.5,
        "success@10": 0.5,
        "mrr@10": 0.5,
        "n_queries": 2,
    }
    assert scores["by_form"]["question"]["success@1"] == 0.0
    assert scores["by_form"]["question"]["success@3"] == 0.5
    assert scores["by_form"]["question"]["mrr@10"] == pytest.approx((1 / 3 + 1 / 10) / 2)
    assert scores["by_topic"]["text"]["success@10"] == 0.5
    assert "coverage" not in scores


def test_coverage_names_the_queries_no_ranking_can_find() -> None:
    queries, ranked = hand_made()
    indexed = [row for rows in ranked for row in rows if row[1] != "sub"]  # re.sub is not indexed
    result = coverage(indexed, queries)
    assert result == {"covered": 3, "n_queries": 4, "fraction": 0.75, "uncovered": ["d-q"]}
    assert score_everyday(ranked, queries, indexed=indexed)["coverage"] == result


def test_scoring_refuses_a_ranking_count_that_does_not_match() -> None:
    queries, ranked = hand_made()
    with pytest.raises(ValueError, match="one ranking per query"):
        score_everyday(ranked[:3], queries)
    with pytest.raises(ValueError, match="no queries"):
        score_everyday([], [])


def test_paired_difference_counts_a_miss_as_zero() -> None:
    same = everyday.paired_difference(np.array([1, 0, 2]), np.array([1, 0, 2]))
    assert same == {"mrr_difference": 0.0, "ci95_low": 0.0, "ci95_high": 0.0}
    better = everyday.paired_difference(np.array([1, 1, 1, 1]), np.array([0, 0, 0, 0]))
    assert better["mrr_difference"] == 1.0 and better["ci95_low"] == 1.0
    mixed = everyday.paired_difference(np.array([1, 2]), np.array([0, 1]))
    assert mixed["mrr_difference"] == pytest.approx(((1 - 0) + (0.5 - 1)) / 2)
    assert mixed["ci95_low"] <= mixed["mrr_difference"] <= mixed["ci95_high"]


def test_paired_difference_draws_as_the_evaluation_bootstrap_does() -> None:
    """everyday repeats semcode.evaluation.paired_mrr_difference (an import back would close a circle):
    the same figures, a miss (rank 0) as a reciprocal rank of 0."""
    from semcode.evaluation import paired_mrr_difference

    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 11, size=300), rng.integers(0, 11, size=300)
    as_evaluation = paired_mrr_difference(np.where(a > 0, a, np.inf), np.where(b > 0, b, np.inf), 500, 7)
    assert everyday.paired_difference(a, b, 500, 7) == pytest.approx(as_evaluation)


# ---------------------------------------------------------------- ranking candidates (evaluate)


def test_top_keys_ranks_by_score_and_ties_count_against_the_system() -> None:
    queries, _ = hand_made()
    a, b = queries[0], queries[1]  # a: tempfile.py mkdtemp; b: shutil.py copy or copy2
    keys = [("m0.py", "f"), ("tempfile.py", "mkdtemp"), ("m1.py", "f"), ("shutil.py", "copy2"), None]
    scores = np.array(
        [
            [0.5, 0.9, 0.1, 0.2, 0.0],  # mkdtemp first
            [0.7, 0.7, 0.7, 0.7, 0.7],  # all tied: the accepted copy2 comes after every other candidate
        ]
    )
    ranked = everyday.top_keys(scores, keys, [a, b])
    assert ranked[0] == [keys[1], keys[0], keys[3], keys[2], None]
    assert ranked[1][-1] == ("shutil.py", "copy2")
    assert everyday.first_hit_ranks(ranked, [a, b]).tolist() == [1, 5]
    many = [(f"m{i}.py", "f") for i in range(12)] + [("tempfile.py", "mkdtemp")]
    assert everyday.top_keys(np.ones((1, 13)), many, [a]) == [many[:10]]  # a tie past the top 10: a miss
    with pytest.raises(ValueError, match="scores of shape"):
        everyday.top_keys(scores, keys[:4], [a, b])


def test_evaluate_everyday_with_the_model_alone() -> None:
    queries, _ = hand_made()
    rows = [("/usr/lib/python3.11/tempfile.py", "mkdtemp"), ("/usr/lib/python3.11/re/__init__.py", "sub")]
    documents = ["tempfile.mkdtemp\nMake a temporary folder.", "re.sub\nReplace matches."]

    def embed(
        texts: list[str], kind: str
    ) -> np.ndarray:  # query "a" and mkdtemp on one axis, the rest on the other
        return np.array([[1.0, 0.0] if text in ("a", documents[0]) else [0.0, 1.0] for text in texts])

    result = everyday.evaluate_everyday(queries, rows, documents, {"model": embed}, bm25=False)
    assert result["per_query"]["ranks"] == {"model": [1, 0, 0, 1]}  # b and c are not among the rows
    assert result["stdlib"]["model"]["success@1"] == 0.5 and "hybrid" not in result["stdlib"]
    assert result["model_vs"] == {} and result["hybrid_vs"] == {} and "fusion" not in result
    assert result["coverage"]["uncovered"] == ["b-q", "c-kw"] and result["n_candidates"] == 2
    question = result["by_form"]["question"]
    assert question["n_queries"] == 2 and question["stdlib"]["model"]["success@1"] == 0.5  # b-q 0, d-q 1
