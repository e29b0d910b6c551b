"""Exact and near-duplicate removal (MinHash LSH) on hand-made copies, and on real standard-library code
with planted copies against datasketch's own MinHash and MinHashLSH."""

from __future__ import annotations

import re
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from semcode.data import clean, extract

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


@pytest.fixture(scope="module")
def stdlib_codes() -> list[str]:
    """About 3,000 real functions: this interpreter's standard library, through semcode's own extractor."""
    root = Path(sysconfig.get_paths()["stdlib"])
    codes: list[str] = []
    for path in sorted(root.glob("*.py")):
        try:
            functions, _ = extract.extract_functions(path.read_text(encoding="utf-8"), index_all=True)
        except (SyntaxError, UnicodeDecodeError):
            continue
        codes += [function.code for function in functions]
        if len(codes) >= 3000:
            return codes
    pytest.skip(f"the standard library under {root} has fewer than 3,000 functions")


@pytest.mark.parametrize(("num_perm", "seed"), [(128, 1), (16, 7)])
def test_sketches_are_the_datasketch_minhash_values(stdlib_codes, num_perm, seed):
    from datasketch import MinHash

    codes = [*stdlib_codes[:500], "", "+ - *", "é = größe(变量)"]
    expected = []
    for code in codes:
        sketch = MinHash(num_perm=num_perm, seed=seed)
        sketch.update_batch({token.encode("utf-8") for token in re.findall(r"\w+", code)})
        expected.append(sketch.hashvalues)
    assert np.array_equal(clean.signatures(codes, num_perm=num_perm, seed=seed), np.array(expected))


def datasketch_greedy(values: np.ndarray, fixed: int, threshold: float) -> list[int]:
    """The pass near_duplicate_of replaced: a greedy loop over datasketch's MinHashLSH (insert kept rows,
    query each row, check the estimated Jaccard); the earliest kept row each row duplicates, or -1."""
    from datasketch import LeanMinHash, MinHashLSH

    num_perm = values.shape[1]
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    sketches = [LeanMinHash(seed=1, hashvalues=row, scheme="affine32") for row in values]
    match = []
    for index, sketch in enumerate(sketches):
        hits = (
            []
            if index < fixed
            else [key for key in lsh.query(sketch) if sketches[key].jaccard(sketch) >= threshold]
        )
        match.append(min(hits, default=-1))
        if not hits:
            lsh.insert(index, sketch, check_duplication=False)
    return match


def planted(codes: list[str]) -> tuple[list[str], list[str]]:
    """Real codes with planted copies, shuffled: re-indented (exact), renamed (near, when the name is a
    small share of the tokens), and references: renamed copies of some rows and some rows as they are."""
    rng = np.random.default_rng(0)
    copies = [codes[i].replace("    ", "  ") for i in rng.choice(len(codes), 300)]
    copies += [codes[i].replace("self", "this") for i in rng.choice(len(codes), 600)]
    rows = [*codes, *copies]
    rows = [rows[i] for i in rng.permutation(len(rows))]
    reference = [codes[i].replace("return", "yield") for i in rng.choice(len(codes), 200)]
    reference += [codes[i] for i in rng.choice(len(codes), 50)]
    return rows, reference


@pytest.mark.parametrize(("threshold", "num_perm"), [(0.8, 128), (0.5, 64), (0.9, 256)])
def test_near_pass_decides_as_the_datasketch_loop_on_real_code(stdlib_codes, threshold, num_perm):
    rows, reference = planted(stdlib_codes)
    values = clean.signatures([*reference, *rows], num_perm=num_perm)
    match = clean.near_duplicate_of(values, len(reference), threshold)
    assert match.tolist() == datasketch_greedy(values, len(reference), threshold)
    assert (match[len(reference) :] >= 0).sum() > 100  # the planted copies are found
    assert (match[: len(reference)] == -1).all()  # references are never removed


def test_deduplicate_on_real_code_with_planted_copies(stdlib_codes):
    rows, reference = planted(stdlib_codes)
    result = clean.deduplicate(rows, reference=reference)
    # exact copies are the same found with the near pass (which hashes only rows with equal MinHash values)
    exact_only = clean.deduplicate(rows, reference=reference, near=False)
    assert exact_only.removed["exact"] == result.removed["exact"] >= 300
    assert all(exact_keep or not keep for keep, exact_keep in zip(result.keep, exact_only.keep, strict=True))
    assert result.removed["near"] > 100 and result.removed["eval_overlap"] > 100
    # the signatures computed beforehand give the same result
    given = clean.deduplicate(
        rows,
        reference=reference,
        signatures=clean.signatures(rows),
        reference_signatures=clean.signatures(reference),
    )
    assert (given.keep, given.removed, given.reference_hits) == (
        result.keep,
        result.removed,
        result.reference_hits,
    )


def test_edge_cases():
    assert clean.deduplicate([]).keep == []
    assert clean.deduplicate([], reference=[ORIGINAL]).keep == []
    assert clean.deduplicate([ORIGINAL]).keep == [True]
    assert clean.deduplicate([ORIGINAL], signatures=clean.signatures([ORIGINAL])).keep == [True]
    everything_a_copy = clean.deduplicate([ORIGINAL] * 5 + [RENAMED] * 3)
    assert everything_a_copy.keep == [True] + [False] * 7
    assert everything_a_copy.removed == {"exact": 6, "near": 1}
    only_references = clean.deduplicate([ORIGINAL, REFORMATTED, RENAMED], reference=[ORIGINAL, DIFFERENT])
    assert only_references.keep == [False, False, False]
    assert only_references.removed == {"eval_overlap": 3} and only_references.reference_hits == 1


def test_a_row_near_a_reference_and_an_earlier_row_is_an_eval_overlap():
    # token sets of 50 names sliding by 5: first~middle and middle~reference (Jaccard 0.82), first and
    # reference further apart (0.67): the first row stays, the middle one duplicates both
    names = [f"name_{i}" for i in range(60)]
    first, middle, reference = (" ".join(names[start : start + 50]) for start in (0, 5, 10))
    values = clean.signatures([first, middle, reference])
    estimated = {pair: (values[pair[0]] == values[pair[1]]).mean() for pair in ((0, 1), (1, 2), (0, 2))}
    assert estimated[(0, 1)] >= 0.74 and estimated[(1, 2)] >= 0.74 and estimated[(0, 2)] < 0.74, estimated
    result = clean.deduplicate([first, middle], reference=[reference], threshold=0.74)
    assert result.keep == [True, False]
    assert result.removed == {"eval_overlap": 1} and result.reference_hits == 1


def test_ascii_normalisation_is_the_unicode_one():
    # ASCII code takes a faster pattern: every ASCII character must split the same as with \w and \s
    for char in map(chr, range(128)):
        text = f"a{char}b {char}{char}c"
        assert clean.normalise_code(text + " é") == clean.normalise_code(text) + " é", repr(char)
