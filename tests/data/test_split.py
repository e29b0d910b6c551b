"""Splitting rows: the unit auto picks, splits by rank for small data, splits the data gives."""

from __future__ import annotations

import pytest

from semcode.data.split import assign_split, free_ratios, quota_counts, split_name, split_rows

RATIOS = (0.8, 0.1, 0.1)


def functions(files: int, per_file: int, repo: str = "acme/app") -> list[dict]:
    return [
        {"repo": repo, "path": f"src/file{f}.go", "func_name": f"Func{f}x{k}", "code": f"func F{f}{k}() {{}}"}
        for f in range(files)
        for k in range(per_file)
    ]


def test_quota_counts_give_every_split_one_at_least():
    assert quota_counts(3, RATIOS) == {"train": 1, "valid": 1, "test": 1}
    assert quota_counts(32, RATIOS) == {"train": 26, "valid": 3, "test": 3}
    assert quota_counts(12, (0.7, 0.3, 0.0)) == {"train": 8, "valid": 4, "test": 0}
    assert quota_counts(100, RATIOS) == {"train": 80, "valid": 10, "test": 10}
    # Fewer units than splits: train first, then valid (one function is a training pair, never all valid).
    assert quota_counts(1, RATIOS) == {"train": 1, "valid": 0, "test": 0}
    assert quota_counts(2, RATIOS) == {"train": 1, "valid": 1, "test": 0}
    assert quota_counts(1, (0.5, 0.0, 0.5)) == {"train": 1, "valid": 0, "test": 0}


def test_a_single_function_goes_to_train_whatever_its_hash():
    for seed in range(20):
        rows = [{"repo": "r", "path": "a.py", "func_name": "f", "code": "def f(): ..."}]
        result = split_rows(rows, ratios=RATIOS, seed=seed)
        assert rows[0]["split"] == "train" and result.sizes == {"train": 1, "valid": 0, "test": 0}


def test_few_files_split_by_function_by_rank_whatever_the_seed():
    for seed in range(5):
        rows = functions(files=4, per_file=8)
        result = split_rows(rows, ratios=RATIOS, seed=seed)
        assert result.unit == "function" and result.by_rank
        assert result.sizes == {"train": 26, "valid": 3, "test": 3}
        assert "rows were split by function (32 functions)" in result.warnings[0]


def test_enough_files_split_by_file_and_never_empty():
    for seed in range(10):
        rows = functions(files=12, per_file=3)
        result = split_rows(rows, ratios=RATIOS, seed=seed)
        assert result.unit == "file" and all(result.sizes.values())
        split_of: dict[str, str] = {}
        for row in rows:  # one file's functions stay together
            assert split_of.setdefault(row["path"], row["split"]) == row["split"]


def test_many_repositories_split_by_the_hash_alone():
    rows = [row for r in range(60) for row in functions(1, 2, repo=f"org/repo{r}")]
    result = split_rows(rows, ratios=RATIOS, seed=0)
    assert result.unit == "repo" and not result.by_rank and result.warnings == []
    assert all(row["split"] == assign_split(row["repo"], 0, RATIOS) for row in rows)


def test_too_few_units_leave_a_split_empty_with_a_warning():
    rows = functions(files=1, per_file=2)
    result = split_rows(rows, ratios=RATIOS, seed=0, unit="function")
    assert result.sizes == {"train": 1, "valid": 1, "test": 0}  # train first, then valid
    assert any("split is empty" in warning for warning in result.warnings)


def test_given_splits_are_kept_and_the_rest_fill_the_others():
    given = [dict(row, split="valid") for row in functions(2, 5, repo="val")]
    free = functions(20, 2, repo="train")
    result = split_rows(given + free, ratios=RATIOS, seed=0)
    assert all(row["split"] == "valid" for row in given)
    assert {row["split"] for row in free} == {"train", "test"}  # valid is given: no hashed row goes there
    assert result.given == {"train": 0, "valid": 10, "test": 0}
    assert free_ratios(RATIOS, {"valid"}) == pytest.approx((0.8 / 0.9, 0.0, 0.1 / 0.9))
    assert free_ratios(RATIOS, {"train", "valid", "test"}) == (1.0, 0.0, 0.0)


def test_split_names_users_write():
    assert [split_name(name) for name in ("Train", "validation", "dev", "eval", " TEST ")] == [
        "train",
        "valid",
        "valid",
        "valid",
        "test",
    ]
    assert split_name("holdout") is None
    with pytest.raises(ValueError, match="not one of"):
        split_rows([{"repo": "a", "split": "holdout"}], ratios=RATIOS, seed=0)


def test_every_split_given_hashes_nothing():
    rows = [{"repo": "a", "split": "train"}, {"repo": "b", "split": "valid"}]
    result = split_rows(rows, ratios=RATIOS, seed=0)
    assert [row["split"] for row in rows] == ["train", "valid"]
    assert result.warnings == ["the test split is empty (the data gave every row its split)"]
    with pytest.raises(ValueError, match="none train; give a source #train"):
        split_rows([{"repo": "a", "split": "valid"}], ratios=RATIOS, seed=0)
