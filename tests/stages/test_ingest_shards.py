"""Sharded ingest: shards read apart (each its share of every source's files, with MinHash signatures),
one merge deduplicating across them = one unsharded ingest of the same sources, row for row."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from semcode.config import from_dict
from semcode.data.pairs import SPLITS, read_split, read_table
from semcode.data.sources import read_source
from semcode.data.sources.rows import ExtractOptions, Shard
from semcode.data.sources.spec import parse_spec
from semcode.stages import ingest
from semcode.stages.ingest import IngestConfig, IngestError

DATA = Path(__file__).parents[1] / "data"
SHARDS = 3
TIMING = ("seconds", "files_per_s", "pairs_per_s")


def function(name: str, words: int = 10, renamed: int = -1) -> str:
    """A function distinct from every other name's; ``renamed`` swaps one identifier (a near duplicate)."""
    body = "".join(f"    {'other' if k == renamed else name}_v{k} = value + {k}\n" for k in range(words))
    return f"def {name}(value):\n{body}    return value\n"


def file_in_shard(root: Path, stem: str, shard: int, suffix: str = ".jsonl") -> Path:
    """A file name under ``root`` whose stable hash puts it in ``shard`` of SHARDS."""
    for attempt in range(1000):
        path = root / f"{stem}{attempt}{suffix}"
        if Shard(shard, SHARDS).owns(str(path)):
            return path
    raise AssertionError("no name found")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Every source kind, with exact, near and evaluation-overlap duplicates in files of other shards."""
    root = tmp_path_factory.mktemp("sources")
    pairs_dir, text_dir = root / "pairs", root / "text"
    pairs_dir.mkdir()
    text_dir.mkdir()
    problem = read_source(parse_spec("humaneval:"), ExtractOptions()).eval_rows[0]["code"]
    originals = [
        {"query": f"compute the {n} value of a thing", "code": function(f"fn_{n}"), "repo": f"org/r{n % 7}"}
        for n in range(40)
    ]
    write_jsonl(file_in_shard(pairs_dir, "original", 0), originals)
    write_jsonl(  # an exact copy (reformatted) and a near copy of an original, read by other shards
        file_in_shard(pairs_dir, "copies", 1),
        [
            {
                "query": "the same code again",
                "code": function("fn_3").replace(" = ", "="),
                "repo": "org/copy",
            },
            {
                "query": "almost the same code",
                "code": function("fn_5", renamed=2),
                "repo": "org/near",
            },
            {"query": "an evaluation problem", "code": problem, "repo": "org/leak"},
        ],
    )
    write_jsonl(
        file_in_shard(pairs_dir, "more", 2),
        [
            {"query": f"another {n} thing to do", "code": function(f"more_{n}"), "repo": f"org/m{n}"}
            for n in range(20)
        ],
    )
    stack = [
        {
            "content": function(f"stack_{n}"),
            "lang": "Python",
            "max_stars_repo_name": f"org/s{n}",
            "max_stars_repo_path": f"s{n}.py",
        }
        for n in range(6)
    ] + [{"content": "# Notes\n\nline one\nline two\nline three\n", "lang": "Markdown"}]
    pq.write_table(pa.Table.from_pylist(stack), file_in_shard(text_dir, "stack", 1, ".parquet"))
    write_jsonl(file_in_shard(text_dir, "stack", 2), stack[:3])  # exact corpus copies in another shard
    return [
        f"dir:{DATA / 'toypkg'}",
        f"csn:{DATA / 'csn'}",
        f"pairs:{pairs_dir}",
        f"text:{text_dir}",
        "humaneval:",
    ]


def settings(sources: list[str], **values) -> IngestConfig:
    return from_dict(IngestConfig, {"sources": sources, "num_perm": 64, **values})


def outputs(out: Path) -> dict:
    return {
        **{split: read_split(out / "pairs", split).to_pylist() for split in SPLITS},
        "corpus": read_table(out / "corpus").to_pylist(),
        "humaneval": read_table(out / "eval" / "humaneval").to_pylist(),
    }


def comparable(manifest: dict) -> dict:
    """The manifest without timings."""
    sources = {
        spec: {k: v for k, v in s.items() if k not in TIMING} for spec, s in manifest["sources"].items()
    }
    dedup = {name: {k: v for k, v in d.items() if k != "seconds"} for name, d in manifest["dedup"].items()}
    keys = ("totals", "languages", "split", "eval", "shards", "warnings")
    return {"sources": sources, "dedup": dedup, **{key: manifest[key] for key in keys}}


@pytest.fixture(scope="module")
def single(sources: list[str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("single") / "out"
    return out, ingest.run(settings(sources), out)


def test_three_shards_and_a_merge_write_what_one_ingest_writes(sources, single, tmp_path: Path):
    one_out, one = single
    shard_dirs = [tmp_path / f"shard-{i}" for i in range(SHARDS)]
    config = settings(sources, shards=SHARDS)
    shard_manifests = [ingest.run_shard(config, i, d) for i, d in enumerate(shard_dirs)]
    merged = ingest.merge(config, list(reversed(shard_dirs)), tmp_path / "merged")  # any order

    assert outputs(tmp_path / "merged") == outputs(one_out)
    assert comparable(merged) == comparable(one)
    # duplicates across shards were found: the deduplication is global
    pairs = one["dedup"]["pairs"]
    assert pairs["exact_removed"] >= 1 and pairs["near_removed"] >= 1 and pairs["eval_overlap_removed"] == 1
    assert one["dedup"]["corpus"]["exact_removed"] >= 3
    # each shard read a share of the files: the per-source counts add up to the unsharded ones
    for spec, stats in one["sources"].items():
        assert sum(m["sources"][spec]["files_seen"] for m in shard_manifests) == stats["files_seen"]
    assert sum(1 for m in shard_manifests if m["rows"]["pairs"]) == SHARDS
    assert merged["fan_out"]["shards"] == SHARDS and len(merged["fan_out"]["shard_seconds"]) == SHARDS
    # the shards hold MinHash signatures for the pairs, one row of num_perm values each
    table = pq.read_table(shard_dirs[0] / "pairs.parquet")
    assert (
        table.schema.field("minhash").type == pa.list_(pa.uint32(), 64)
        and table.column("minhash").null_count == 0
    )


def test_run_with_shards_in_one_process_is_the_same(sources, single, tmp_path: Path):
    one_out, one = single
    manifest = ingest.run(settings(sources, shards=SHARDS, workers=2, corpus_near_dup=True), tmp_path / "out")
    assert outputs(tmp_path / "out") == outputs(one_out)
    assert comparable(manifest) == comparable(one)


def test_command_line_shards_and_merge(sources, single, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    one_out, _ = single
    argv = [arg for spec in sources for arg in ("--source", spec)] + [
        "--num-perm",
        "64",
        "--shards",
        str(SHARDS),
    ]
    for index in range(SHARDS):
        assert ingest.main([*argv, "--shard", str(index), "--out", str(tmp_path / f"s{index}")]) == 0
    assert f"shard 2 of {SHARDS}:" in capsys.readouterr().out
    dirs = [str(tmp_path / f"s{index}") for index in range(SHARDS)]
    assert ingest.main([*argv, "--merge", *dirs, "--out", str(tmp_path / "merged")]) == 0
    assert outputs(tmp_path / "merged") == outputs(one_out)

    # a missing shard, or a shard made with other settings, is refused naming what differs
    assert ingest.main([*argv, "--merge", *dirs[:2], "--out", str(tmp_path / "bad")]) == 2
    assert "merge needs shards 0..2 of 3" in capsys.readouterr().err
    other = tmp_path / "other"
    ingest.run_shard(settings(sources, shards=SHARDS, min_code_lines=5), 2, other)
    with pytest.raises(IngestError, match=r"another config: \['min_code_lines'\] differ"):
        ingest.merge(
            settings(sources, shards=SHARDS), [Path(dirs[0]), Path(dirs[1]), other], tmp_path / "bad"
        )
    with pytest.raises(IngestError, match="shard must be 0 <= index < count"):
        ingest.run_shard(settings(sources, shards=SHARDS), 3, tmp_path / "nope")


def test_a_source_is_checked_over_all_shards(tmp_path: Path):
    """A source can be empty in one shard; only the merged counts decide whether it yielded nothing."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"query": "q", "code": ""}) + "\n")
    config = settings([f"pairs:{DATA / 'pairs'}", f"pairs:{empty}"], shards=2)
    dirs = [tmp_path / f"s{i}" for i in range(2)]
    for index, directory in enumerate(dirs):
        ingest.run_shard(config, index, directory)  # neither shard fails alone
    with pytest.raises(IngestError, match=f"source 'pairs:{empty}' yielded no pairs"):
        ingest.merge(config, dirs, tmp_path / "out")
    shutil.rmtree(dirs[0])
    with pytest.raises(IngestError, match="is not an ingest shard"):
        ingest.merge(config, dirs, tmp_path / "out")
