"""Exact and near-duplicate removal (MinHash LSH) on hand-made copies of real-looking functions."""

from __future__ import annotations

import pytest

from semcode.data import clean

ORIGINAL = """def parse_header(line, separator=":"):
    name, _, value = line.partition(separator)
    name = name.strip().lower()
    value = value.strip()
    if not name:
        raise ValueError("header line without a name: " + repr(line))
    params = {}
    for part in value.split(";")[1:]:
        key, _, param = part.partition("=")
        params[key.strip()] = param.strip().strip('"')
    return name, value, params
"""
# The same tokens laid out differently: an exact duplicate once whitespace is normalised.
REFORMATTED = ORIGINAL.replace("    ", "        ").replace(", _, ", ",_,")
# One identifier renamed: Jaccard of the token sets is 27/29, well above 0.8.
RENAMED = ORIGINAL.replace("params", "parameters")
DIFFERENT = """def moving_average(values, window):
    if window <= 0:
        raise ValueError("window must be positive")
    total = sum(values[:window])
    averages = [total / window]
    for index in range(window, len(values)):
        total += values[index] - values[index - window]
        averages.append(total / window)
    return averages
"""


def test_exact_duplicates_ignore_whitespace():
    result = clean.deduplicate([ORIGINAL, REFORMATTED, DIFFERENT], near=False)
    assert result.keep == [True, False, True]
    assert result.removed == {"exact": 1}


def test_near_duplicates_are_removed_and_first_occurrence_kept():
    result = clean.deduplicate([DIFFERENT, ORIGINAL, RENAMED, REFORMATTED], threshold=0.8)
    assert result.keep == [True, True, False, False]
    assert result.removed == {"near": 1, "exact": 1}
    assert result.summary()["after"] == 2
    # without near-dup detection the renamed copy stays
    assert clean.deduplicate([ORIGINAL, RENAMED], near=False).keep == [True, True]


def test_threshold_is_respected():
    # a threshold above the pair's similarity (27/29 = 0.93) keeps both
    assert clean.deduplicate([ORIGINAL, RENAMED], threshold=0.95).keep == [True, True]


def test_reference_rows_are_never_removed_and_overlaps_are_counted():
    result = clean.deduplicate([DIFFERENT, RENAMED, REFORMATTED], reference=[ORIGINAL])
    assert result.keep == [True, False, False]
    assert result.removed == {"eval_overlap": 2}
    assert result.reference_hits == 1
    summary = result.summary()
    assert summary["eval_overlap_removed"] == 2 and summary["eval_rows_overlapped"] == 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="threshold"):
        clean.deduplicate([ORIGINAL], threshold=0.0)
    with pytest.raises(ValueError, match="num_perm"):
        clean.deduplicate([ORIGINAL], num_perm=4)


def test_many_small_functions_stay_distinct():
    # functions that differ in several identifiers are not near duplicates
    codes = [f"def get_{i}(self):\n    value = self._field_{i}\n    return value + {i}\n" for i in range(200)]
    result = clean.deduplicate(codes, num_perm=64)
    assert result.kept == 200


def test_unusable_threshold_is_a_clear_error():
    with pytest.raises(ValueError, match="lower the threshold or raise num_perm"):
        clean.deduplicate([ORIGINAL], threshold=0.99, num_perm=128)
