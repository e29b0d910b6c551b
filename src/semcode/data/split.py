"""Assign rows to train/valid/test by repository (or by file), never by row.

A unit (a repository/package, or ``repo/path`` for the file unit) goes to a split by a stable hash:
``sha1(f"{seed}:{unit}")`` read as a fraction in [0, 1) and compared with the cumulative ratios.
The same unit always lands in the same split for the same seed and ratios, whatever else is in the
data, so adding repositories later never moves an old test repository into train.

Units (``split_unit``):

- ``repo``: the default unit; no repository is in two splits.
- ``file``: ``repo/path``; for data from one or two repositories, where whole-repository splits
  cannot give three non-empty splits. Functions of one file stay together.
- ``auto``: ``repo``, unless that leaves a split with a non-zero ratio empty; then ``file`` if it
  fills more splits (the manifest says which unit was used and warns).

An empty valid or test split is a warning, not an error (later stages can still train); an empty
train split raises ``ValueError`` naming how many units there were.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from semcode.data.pairs import SPLITS

SPLIT_UNITS = ("auto", "repo", "file")


def unit_fraction(unit: str, seed: int) -> float:
    """A stable number in [0, 1) for a unit: the first 8 bytes of sha1(seed:unit)."""
    digest = hashlib.sha1(f"{seed}:{unit}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def assign_split(unit: str, seed: int, ratios: Sequence[float]) -> str:
    """The split of one unit for (train, valid, test) ratios that sum to 1."""
    fraction = unit_fraction(unit, seed)
    cumulative = 0.0
    for name, ratio in zip(SPLITS, ratios, strict=True):
        cumulative += ratio
        if fraction < cumulative:
            return name
    return next(name for name, ratio in reversed(list(zip(SPLITS, ratios, strict=True))) if ratio > 0)


def unit_of(row: dict, unit: str) -> str:
    repo = row.get("repo") or ""
    return f"{repo}/{row.get('path') or ''}" if unit == "file" else repo


@dataclass
class SplitResult:
    unit: str  # the unit used: "repo" or "file"
    sizes: dict[str, int]  # split -> rows
    repos: dict[str, list[str]]  # split -> sorted repository names
    units: dict[str, int]  # split -> number of units
    warnings: list[str] = field(default_factory=list)


def _assignment(rows: Sequence[dict], unit: str, seed: int, ratios: Sequence[float]) -> dict[str, str]:
    return {key: assign_split(key, seed, ratios) for key in sorted({unit_of(r, unit) for r in rows})}


def _filled(assignment: dict[str, str], ratios: Sequence[float]) -> int:
    present = set(assignment.values())
    return sum(1 for name, ratio in zip(SPLITS, ratios, strict=True) if ratio > 0 and name in present)


def split_rows(
    rows: Sequence[dict], *, ratios: Sequence[float], seed: int, unit: str = "auto"
) -> SplitResult:
    """Set ``row["split"]`` on every row; returns sizes, repositories per split and warnings."""
    if unit not in SPLIT_UNITS:
        raise ValueError(f"split unit must be one of {SPLIT_UNITS}, got {unit!r}")
    if len(ratios) != len(SPLITS) or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(f"split ratios must be three non-negative numbers summing to 1, got {tuple(ratios)}")
    warnings: list[str] = []
    used = "repo" if unit in ("auto", "repo") else "file"
    assignment = _assignment(rows, used, seed, ratios)
    wanted = sum(1 for r in ratios if r > 0)
    if unit == "auto" and _filled(assignment, ratios) < wanted:
        by_file = _assignment(rows, "file", seed, ratios)
        if _filled(by_file, ratios) > _filled(assignment, ratios):
            warnings.append(
                f"only {len(assignment)} repositories: a split by repository would leave a split empty, "
                f"so rows were split by file ({len(by_file)} files); use more repositories for a "
                "repository-level split"
            )
            used, assignment = "file", by_file

    for row in rows:
        row["split"] = assignment[unit_of(row, used)]
    sizes = Counter(row["split"] for row in rows)
    repos = {name: sorted({row.get("repo") or "" for row in rows if row["split"] == name}) for name in SPLITS}
    units = Counter(assignment.values())
    result = SplitResult(
        unit=used,
        sizes={name: sizes.get(name, 0) for name in SPLITS},
        repos=repos,
        units={name: units.get(name, 0) for name in SPLITS},
        warnings=warnings,
    )
    if rows and result.sizes["train"] == 0:
        raise ValueError(
            f"the train split is empty: {len(assignment)} {used} unit(s) all landed in "
            f"{', '.join(n for n in SPLITS if result.sizes[n])} (seed {seed}, ratios {tuple(ratios)}); "
            "add more repositories, give rows a 'repo' field, or change the seed"
        )
    for name, ratio in zip(SPLITS, ratios, strict=True):
        if ratio > 0 and rows and result.sizes[name] == 0:
            warnings.append(f"the {name} split is empty ({len(assignment)} {used} units for ratio {ratio})")
    return result
