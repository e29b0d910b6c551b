"""The (query, code) pair schema and its Parquet shards, the same vocabulary everywhere.

Layout of a ``pairs/`` artifact::

    pairs/train/part-00000.parquet ...
    pairs/valid/part-00000.parquet ...
    pairs/test/part-00000.parquet ...

A ``corpus/`` artifact uses the same columns (``query`` may be empty) under ``corpus/part-*.parquet``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SPLITS = ("train", "valid", "test")

PAIR_SCHEMA = pa.schema(
    [
        ("query", pa.string()),  # natural language: the docstring's first paragraph, or a user query
        ("code", pa.string()),  # the function's source, docstring removed
        ("hard_negatives", pa.list_(pa.string())),  # code of hard negatives (empty until mined)
        ("language", pa.string()),
        ("repo", pa.string()),  # repository or package: the unit of splitting
        ("path", pa.string()),
        ("func_name", pa.string()),
        ("url", pa.string()),  # where it is: file:///usr/lib/python3.12/json/decoder.py#L42-L60
        ("split", pa.string()),
        ("source", pa.string()),  # the source spec the row came from
        # The function's header on one line (``def f(x):``); added later: shards written before it lack
        # the column, so readers that need it check (semcode.corpus.meta_table fills "").
        ("signature", pa.string()),
        # SPDX expression of the row's licence, "" when none was found (semcode.data.licenses); added later
        # like signature (semcode.corpus.meta_table fills "" for shards without it).
        ("license", pa.string()),
    ]
)
COLUMNS = tuple(PAIR_SCHEMA.names)


def normalise_row(row: dict) -> dict:
    """Fill missing columns with empty values so every row matches PAIR_SCHEMA."""
    out = {name: row.get(name) for name in COLUMNS}
    for name in COLUMNS:
        if out[name] is None:
            out[name] = [] if name == "hard_negatives" else ""
    return out


def write_shards(rows: Iterable[dict], out_dir: str | Path, rows_per_shard: int = 50_000) -> list[Path]:
    """Write rows as ``part-NNNNN.parquet`` shards under ``out_dir``; returns the shard paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    batch: list[dict] = []

    def flush() -> None:
        path = out / f"part-{len(paths):05d}.parquet"
        table = pa.Table.from_pylist([normalise_row(r) for r in batch], schema=PAIR_SCHEMA)
        pq.write_table(table, path, compression="zstd")
        paths.append(path)
        batch.clear()

    for row in rows:
        batch.append(row)
        if len(batch) >= rows_per_shard:
            flush()
    if batch or not paths:
        flush()  # an empty split still gets one (empty) shard so readers find the schema
    return paths


def shard_paths(dir_path: str | Path) -> list[Path]:
    paths = sorted(Path(dir_path).glob("part-*.parquet"))
    if not paths:
        raise FileNotFoundError(f"no part-*.parquet shards in {dir_path}")
    return paths


def read_table(dir_path: str | Path, columns: Iterable[str] | None = None) -> pa.Table:
    """Read every shard of one directory (a split of ``pairs/`` or a ``corpus/``) as one table."""
    cols = list(columns) if columns is not None else None
    tables = [pq.read_table(p, columns=cols) for p in shard_paths(dir_path)]
    return pa.concat_tables(tables)


def read_split(pairs_dir: str | Path, split: str, columns: Iterable[str] | None = None) -> pa.Table:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return read_table(Path(pairs_dir) / split, columns)


def iter_column(dir_path: str | Path, column: str, batch_size: int = 4096) -> Iterator[str]:
    """Stream one string column shard by shard, batch by batch: bounded memory for big corpora."""
    for path in shard_paths(dir_path):
        parquet = pq.ParquetFile(path)
        for batch in parquet.iter_batches(batch_size=batch_size, columns=[column]):
            yield from batch.column(0).to_pylist()
