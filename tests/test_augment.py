"""Training-pair augmentations (semcode.train.augment) on real docstrings and functions."""

from __future__ import annotations

import ast

import numpy as np
import pytest

from semcode.config import ConfigError
from semcode.stages.train_encoder import TrainEncoderConfig
from semcode.train.augment import (
    MAX_WEB_QUERY_WORDS,
    augment_pairs,
    code_with_docstring,
    imperative,
    web_style_query,
)

DOCSTRINGS = [
    "Returns the number of microseconds since midnight.",
    "Gets host URL based on the index and variables :param index: array index of the host settings",
    "Validate the CONTEXTO rules from :rfc:`5892` Appendix A.",
    "Deletes a run in an experiment given by run ID and experiment ID. # noqa: E501",
    "Applies ``func`` to every row of the frame, in order, and collects the results into one new list "
    "that keeps the original index",
]
CODE = "def since_midnight(moment):\n    start = moment.replace(hour=0)\n    return moment - start\n"


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("returns", "return"),
        ("applies", "apply"),
        ("fetches", "fetch"),
        ("gets", "get"),
        ("is", "is"),
        ("process", "process"),
        ("does", "does"),
        ("status", "status"),
        ("compute", "compute"),
    ],
)
def test_imperative(word: str, expected: str):
    assert imperative(word) == expected


def test_web_style_queries_are_short_lower_case_first_sentences():
    rng = np.random.default_rng(0)
    queries = [web_style_query(text, rng) for text in DOCSTRINGS for _ in range(20)]
    for query in queries:
        words = query.split()
        assert query == query.lower() and not query.endswith(".")
        assert len([w for w in words if w != "python"]) <= MAX_WEB_QUERY_WORDS
        assert ":param" not in query and "noqa" not in query and "`" not in query
    first = [web_style_query(DOCSTRINGS[0], np.random.default_rng(seed)) for seed in range(40)]
    # The sentence, its verb as people type it, with "python" before, after or not at all.
    assert {q.replace("python", "").split()[0] for q in first} == {"return", "get"}
    assert any(q.startswith("python ") for q in first) and any(q.endswith(" python") for q in first)
    assert any("python" not in q for q in first) and all("microseconds since midnight" in q for q in first)
    assert "5892" in web_style_query(DOCSTRINGS[2], rng)  # the role's text stays, its markup goes
    assert web_style_query("...", rng) == "..."  # nothing left: the docstring as it was


def test_code_with_docstring_puts_it_back_as_the_first_body_line():
    code = code_with_docstring(CODE, 'Time since "midnight" \\ today.')
    assert code is not None
    function = ast.parse(code).body[0]
    assert ast.get_docstring(function) == 'Time since "midnight" \\ today.'
    assert code.splitlines()[1] == '    """Time since "midnight" \\\\ today."""'
    assert code_with_docstring("def f(): return 1\n", "One.") is None  # one line: nowhere to put it
    assert code_with_docstring("x = 1\n", "Not a function.") is None
    assert code_with_docstring("def broken(:\n", "Broken.") is None


def test_augment_pairs_shares_are_seeded_and_independent():
    queries, codes = DOCSTRINGS * 40, [CODE] * (len(DOCSTRINGS) * 40)
    new_queries, new_codes, counts = augment_pairs(queries, codes, 0.5, 0.25, seed=1)
    assert (new_queries, new_codes, counts) == augment_pairs(queries, codes, 0.5, 0.25, seed=1)
    changed_queries = sum(a != b for a, b in zip(queries, new_queries, strict=True))
    changed_codes = sum(a != b for a, b in zip(codes, new_codes, strict=True))
    assert counts == {"web_style_queries": changed_queries, "codes_with_docstring": changed_codes}
    assert 0.4 < changed_queries / len(queries) < 0.6 and 0.15 < changed_codes / len(codes) < 0.35
    for query, code in zip(queries, new_codes, strict=True):  # the original docstring, never the rewrite
        assert code == CODE or f'"""{query}"""' in code
    assert augment_pairs(queries, codes, 0.0, 0.0, seed=1) == (
        queries,
        codes,
        {"web_style_queries": 0, "codes_with_docstring": 0},
    )
    assert augment_pairs(queries, codes, 1.0, 0.0, seed=2)[2]["web_style_queries"] == len(queries)
    with pytest.raises(ValueError, match="web_query_share"):
        augment_pairs(queries, codes, 1.5, 0.0, seed=0)
    with pytest.raises(ValueError, match="differ in length"):
        augment_pairs(queries, codes[:-1], 0.5, 0.0, seed=0)


def test_train_encoder_config_checks_the_shares():
    for name in ("web_query_share", "docstring_share"):
        with pytest.raises(ConfigError, match=name):
            TrainEncoderConfig(**{name: -0.1}).validate()
        TrainEncoderConfig(**{name: 1.0}).validate()
