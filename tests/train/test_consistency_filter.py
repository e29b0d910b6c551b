"""The teacher's consistency filter (semcode.train.data.consistency_filter): pairs the starting model already
ranks near the top are kept, the others dropped, with a report."""

from __future__ import annotations

import numpy as np
import pytest

from semcode.train.data import PairSet, consistency_filter

# Each text's vector: pair i's query and code point the same way, except q3, whose best match is c0 (0.5)
# before its own code c3 (0.45): a docstring that describes another function better than its own.
VECTORS = {
    "q0": [1, 0, 0, 0], "q1": [0, 1, 0, 0], "q2": [0, 0, 1, 0], "q3": [0.5, 0, 0, 0.1],
    "c0": [1, 0, 0, 0], "c1": [0, 1, 0, 0], "c2": [0, 0, 1, 0], "c3": [0.9, 0, 0, 0],
}  # fmt: skip
SETTINGS = dict(pool_size=4, seed=0, batch_size=4, max_length=16, min_kept=2)


@pytest.fixture
def pairs(monkeypatch) -> PairSet:
    def encode_texts(model, tokenizer, texts, kind, **_):
        return np.array([VECTORS[text] for text in texts], dtype=np.float32)

    monkeypatch.setattr("semcode.models.encoder.encode_texts", encode_texts)
    return PairSet(["q0", "q1", "q2", "q3"], ["c0", "c1", "c2", "c3"], [["n0"], ["n1"], ["n2"], ["n3"]])


def test_keeps_the_pairs_the_teacher_ranks_in_its_top_k(pairs: PairSet) -> None:
    kept, report = consistency_filter(None, None, pairs, top_k=1, **SETTINGS)
    assert (kept.queries, kept.codes, kept.hard_negatives) == (
        ["q0", "q1", "q2"],
        ["c0", "c1", "c2"],
        [["n0"], ["n1"], ["n2"]],
    )
    assert report == {**report, "pool": 4, "kept": 3, "top_k": 1, "teacher_mrr_on_pool": 0.875}
    kept, _ = consistency_filter(None, None, pairs, top_k=2, **SETTINGS)
    assert kept.queries == ["q0", "q1", "q2", "q3"]
    with pytest.raises(ValueError, match="kept 3 of 4 pairs, fewer than batch_size 4"):
        consistency_filter(None, None, pairs, top_k=1, **{**SETTINGS, "min_kept": 4})
