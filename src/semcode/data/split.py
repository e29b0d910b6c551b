"""Assign rows to train/valid/test by repository, file or function, never by row; or as the data says.

A unit goes to a split by a stable hash: ``sha1(f"{seed}:{unit}")`` read as a fraction in [0, 1) and
compared with the cumulative ratios. The same unit always lands in the same split for the same seed and
ratios, whatever else is in the data, so adding repositories later never moves an old test repository
into train.

Units (``split_unit``):

- ``repo``: no repository is in two splits.
- ``file``: ``repo/path``; functions of one file stay together.
- ``function``: ``repo/path::func_name`` (rows without a name: a hash of their code); for a repository
  of a few files, where whole files cannot fill three splits.
- ``auto`` (the default): the coarsest unit that either fills every split by the hash or has enough units
  for each split to expect one (``ceil(1 / smallest ratio)``: 10 for 0.1): repositories, then files, then
  functions. The manifest's ``unit`` and a warning say which, and why.

Functions, and units of any kind when the hash leaves a split with a non-zero ratio empty, are split by
rank instead (when there are at least as many units as splits): in order of their hash fraction, the
first 80% (say) to train, the next 10% to valid, the rest to test, each split at least one (``by_rank``
in the manifest, and a warning with the counts). So a small repository never ends with an empty valid
or test split while it has enough pairs, and 32 functions give 26/3/3, not whatever the hash's luck
gives; the price is that adding a unit can move a neighbour across a boundary. Only with fewer units
than splits does a split stay empty (a warning); an empty train split raises ``ValueError`` naming how
many units there were.

Splits the data gives (``given``): a row whose ``split`` is already set (a ``split`` field in a pairs or
CodeSearchNet row, or a ``#valid`` on its source spec, see semcode.data.sources.spec) keeps it. The other
rows are split as above over train and the splits no row was given for, their ratios scaled to sum to 1:
``pairs:train.jsonl`` beside ``pairs:val.jsonl#valid`` puts train.jsonl's rows in train and test only.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from semcode.data.pairs import SPLITS

SPLIT_UNITS = ("auto", "repo", "file", "function")
# What a user's data may call a split (a row's split field, a source's #SPLIT), lower case -> our name.
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "valid": "valid",
    "validation": "valid",
    "val": "valid",
    "dev": "valid",
    "eval": "valid",
    "test": "test",
}


def split_name(value: str) -> str | None:
    """Our name (train, valid, test) for a split as data names it (``Validation``, ``dev``...), else None."""
    return SPLIT_NAMES.get(value.strip().lower())


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
    """The key of ``row``'s unit: its repository, ``repo/path``, or ``repo/path::func_name``."""
    repo = row.get("repo") or ""
    if unit == "repo":
        return repo
    file = f"{repo}/{row.get('path') or ''}"
    if unit == "file":
        return file
    name = row.get("func_name") or hashlib.sha1((row.get("code") or "").encode()).hexdigest()[:16]
    return f"{file}::{name}"


@dataclass
class SplitResult:
    unit: str  # the unit used: "repo", "file" or "function"
    sizes: dict[str, int]  # split -> rows
    repos: dict[str, list[str]]  # split -> sorted repository names
    units: dict[str, int]  # split -> number of units (of the rows the data gave no split)
    given: dict[str, int]  # split -> rows whose split the data gave
    by_rank: bool  # units were split by the rank of their hash (functions; or the hash left a split empty)
    warnings: list[str] = field(default_factory=list)


def free_ratios(ratios: Sequence[float], given: set[str]) -> tuple[float, ...]:
    """The ratios of the rows the data gave no split: train and the splits not given, scaled to sum to 1."""
    kept = [
        ratio if name == "train" or name not in given else 0.0
        for name, ratio in zip(SPLITS, ratios, strict=True)
    ]
    return tuple(ratio / sum(kept) for ratio in kept)


def _assignment(rows: Sequence[dict], unit: str, seed: int, ratios: Sequence[float]) -> dict[str, str]:
    return {key: assign_split(key, seed, ratios) for key in sorted({unit_of(r, unit) for r in rows})}


def _empty(assignment: dict[str, str], ratios: Sequence[float]) -> list[str]:
    present = set(assignment.values())
    return [name for name, ratio in zip(SPLITS, ratios, strict=True) if ratio > 0 and name not in present]


def choose_unit(
    rows: Sequence[dict], unit: str, seed: int, ratios: Sequence[float]
) -> tuple[str, dict[str, str], list[str]]:
    """(the unit, each unit key's split by the hash, a warning saying why when ``auto`` went past repo)."""
    if unit != "auto":
        return unit, _assignment(rows, unit, seed, ratios), []
    smallest = min(r for r in ratios if r > 0)
    needed = math.ceil(1 / smallest - 1e-9)
    counts = {}
    for level in ("repo", "file"):
        assignment = _assignment(rows, level, seed, ratios)
        counts[level] = len(assignment)
        if not _empty(assignment, ratios) or len(assignment) >= needed:
            break
    else:
        level, assignment = "function", _assignment(rows, "function", seed, ratios)
    if level == "repo":
        return level, assignment, []
    repos = f"{counts['repo']} repositor{'y' if counts['repo'] == 1 else 'ies'}"
    why = f"only {repos}, fewer than the {needed} units a split of {smallest:.3g} needs"
    if level == "file":
        return level, assignment, [f"{why}: rows were split by file ({len(assignment)} files)"]
    split_by = f"rows were split by function ({len(assignment)} functions)"
    warning = (
        f"{why}, and {counts['file']} files: {split_by}; functions of one file can be in different splits"
    )
    return level, assignment, [warning]


def quota_counts(units: int, ratios: Sequence[float]) -> dict[str, int]:
    """How many of ``units`` each split gets: its ratio's share, rounded by largest remainder, at least one
    for every split with a non-zero ratio (taken from the largest); with fewer units than such splits, one
    each in order, train first (a single function trains; it is never all valid)."""
    nonzero = [name for name, ratio in zip(SPLITS, ratios, strict=True) if ratio > 0]
    if units < len(nonzero):
        return {name: int(name in nonzero[:units]) for name in SPLITS}
    exact = {name: ratio * units for name, ratio in zip(SPLITS, ratios, strict=True)}
    counts = {name: max(1, math.floor(share)) if share > 0 else 0 for name, share in exact.items()}
    while sum(counts.values()) > units:
        counts[max(SPLITS, key=lambda name: counts[name])] -= 1
    while sum(counts.values()) < units:
        counts[max(SPLITS, key=lambda name: exact[name] - counts[name])] += 1
    return counts


def split_by_rank(assignment: dict[str, str], seed: int, ratios: Sequence[float]) -> dict[str, int]:
    """Reassign every unit by rank: units in order of their hash fraction, the first ``quota_counts`` of them
    to train, the next to valid, the rest to test (the hash's thresholds moved to its quantiles; with fewer
    units than splits, train first). Changes ``assignment``; returns the units per split ({} for none)."""
    if not assignment:
        return {}
    counts = quota_counts(len(assignment), ratios)
    ranked = sorted(assignment, key=lambda key: (unit_fraction(key, seed), key))
    start = 0
    for name in SPLITS:
        for key in ranked[start : start + counts[name]]:
            assignment[key] = name
        start += counts[name]
    return counts


def split_rows(
    rows: Sequence[dict], *, ratios: Sequence[float], seed: int, unit: str = "auto"
) -> SplitResult:
    """Set ``row["split"]`` on every row that has none (rows that have one keep it); returns sizes,
    repositories per split and warnings."""
    if unit not in SPLIT_UNITS:
        raise ValueError(f"split unit must be one of {SPLIT_UNITS}, got {unit!r}")
    if len(ratios) != len(SPLITS) or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise ValueError(f"split ratios must be three non-negative numbers summing to 1, got {tuple(ratios)}")
    if ratios[0] <= 0:
        raise ValueError(f"the train ratio must be above 0, got {tuple(ratios)}")
    for row in rows:
        if row.get("split") and row["split"] not in SPLITS:
            raise ValueError(f"a row's split is {row['split']!r}, not one of {SPLITS}")
    given = Counter(row["split"] for row in rows if row.get("split"))
    free = [row for row in rows if not row.get("split")]
    ratios = free_ratios(ratios, set(given))
    if free:
        used, assignment, warnings = choose_unit(free, unit, seed, ratios)
    else:  # every row's split was given: nothing to hash
        used, assignment, warnings = ("repo" if unit == "auto" else unit), {}, []
    ranked = {}
    if used == "function" or _empty(assignment, ratios):
        ranked = split_by_rank(assignment, seed, ratios)
    if ranked:
        counts = ", ".join(f"{name} {count}" for name, count in ranked.items())
        by_rank = f"the {len(assignment)} {used} units were split by the rank of their hash ({counts})"
        warnings.append(by_rank if used == "function" else f"the hash would leave a split empty: {by_rank}")

    for row in free:
        row["split"] = assignment[unit_of(row, used)]
    sizes = Counter(row["split"] for row in rows)
    repos = {name: sorted({row.get("repo") or "" for row in rows if row["split"] == name}) for name in SPLITS}
    units = Counter(assignment.values())
    result = SplitResult(
        unit=used,
        sizes={name: sizes.get(name, 0) for name in SPLITS},
        repos=repos,
        units={name: units.get(name, 0) for name in SPLITS},
        given={name: given.get(name, 0) for name in SPLITS},
        by_rank=bool(ranked),
        warnings=warnings,
    )
    if rows and result.sizes["train"] == 0 and not free:
        raise ValueError(
            "the train split is empty: the data gave every row its split, none train; give a source "
            "#train, or leave some rows without a split"
        )
    if rows and result.sizes["train"] == 0:
        raise ValueError(
            f"the train split is empty: {len(assignment)} {used} unit(s) all landed in "
            f"{', '.join(n for n in SPLITS if result.sizes[n])} (seed {seed}, ratios {tuple(ratios)}); "
            "add more repositories, give rows a 'repo' field, or change the seed"
        )
    for name, ratio in zip(SPLITS, ratios, strict=True):
        if ratio > 0 and rows and result.sizes[name] == 0:
            why = (
                f"{len(assignment)} {used} units for ratio {ratio:.3g}"
                if free
                else "the data gave every row its split"
            )
            warnings.append(f"the {name} split is empty ({why})")
    return result
