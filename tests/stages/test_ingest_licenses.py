"""Licences through ingest, the index metadata and the model card, on small real inputs: the ``license``
column of pairs and corpus, allow/deny_licenses counted as rejects, the manifest's counts, a misspelt id
refused before any work, and index_meta's ``license`` column (filled in for older corpora)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from licence_fixture import BSD3, MIT, licensed_tree

from semcode import corpus as corpora
from semcode.config import ConfigError, from_dict
from semcode.data.pairs import read_table
from semcode.report import licence_rows, model_card
from semcode.serve.search import format_hit
from semcode.serve.searcher import Hit
from semcode.stages import ingest
from semcode.stages.ingest import IngestConfig

DATA = Path(__file__).parents[1] / "data"
FAST = {"num_perm": 64}


def two_licences(root: Path) -> tuple[Path, Path]:
    """A BSD-3-Clause checkout (with an MIT/Apache-2.0 folder) and an MIT-licensed copy of the Go/TS repo."""
    repo = licensed_tree(root)
    other = root / "smallrepo"
    shutil.copytree(DATA / "smallrepo", other)
    (other / "LICENSE").write_text(MIT)
    return repo, other


def test_rows_carry_licences_and_the_manifest_counts_them(tmp_path: Path) -> None:
    repo, other = two_licences(tmp_path)
    config = IngestConfig(sources=(f"dir:{repo}", f"dir:{other}"), **FAST)
    manifest = ingest.run(config, tmp_path / "out")
    corpus = read_table(tmp_path / "out" / "corpus").to_pylist()
    by_repo = {(row["repo"], row["license"]) for row in corpus}
    assert ("smallrepo", "MIT") in by_repo and ("licensed", "BSD-3-Clause") in by_repo
    assert ("licensed", "Apache-2.0 OR MIT") in by_repo
    counted = manifest["licenses"]
    assert sum(counted["corpus"].values()) == len(corpus)
    assert counted["corpus"]["MIT"] == sum(1 for row in corpus if row["license"] == "MIT")
    train = read_table(tmp_path / "out" / "pairs" / "train").to_pylist()
    assert sum(counted["train_pairs"].values()) == len(train) > 0
    assert all(row["license"] for row in train)

    card = model_card({"name": "t", "version": "v1", "dim": 8}, {"ingest": manifest})
    assert "| licence (SPDX) | training pairs | corpus rows |" in card
    assert f"| MIT | {counted['train_pairs'].get('MIT', 0)} | {counted['corpus']['MIT']} |" in card
    assert [row[0] for row in licence_rows({"ingest": manifest})][0] == max(
        counted["train_pairs"], key=counted["train_pairs"].get
    )

    # index_meta.parquet's license column comes from the corpus; an older corpus without one gets ""
    table = pq.read_table(tmp_path / "out" / "corpus")
    assert corpora.meta_table(table)["license"].to_pylist() == table["license"].to_pylist()
    older = corpora.meta_table(table.drop_columns(["license"]))
    assert set(older["license"].to_pylist()) == {""} and older.schema == corpora.META_SCHEMA


def test_deny_and_allow_lists_reject_rows_in_the_manifest(tmp_path: Path) -> None:
    repo, other = two_licences(tmp_path)
    sources = (f"dir:{repo}", f"dir:{other}")
    denied = ingest.run(
        IngestConfig(sources=sources, deny_licenses=("bsd-3-clause",), min_pairs=0, **FAST), tmp_path / "deny"
    )
    licensed = denied["sources"][f"dir:{repo}"]
    assert (
        licensed["rejects"]["license"] > 0 and "license" not in denied["sources"][f"dir:{other}"]["rejects"]
    )
    assert "BSD-3-Clause" not in denied["licenses"]["corpus"]
    assert denied["licenses"]["deny"] == ["bsd-3-clause"]

    # a source whose every file is refused is a warning (the filter did its job), not a failed ingest
    allowed = ingest.run(IngestConfig(sources=sources, allow_licenses=("MIT",), **FAST), tmp_path / "allow")
    assert set(allowed["licenses"]["corpus"]) == {"MIT", "Apache-2.0 OR MIT"}  # smallrepo, licensed/dual
    only_bsd = ingest.run(
        IngestConfig(sources=(f"dir:{other}", f"dir:{repo}"), allow_licenses=("BSD-3-Clause",), **FAST),
        tmp_path / "bsd",
    )
    assert any(f"dir:{other}" in warning and "licence" in warning for warning in only_bsd["warnings"])


def test_a_misspelt_licence_id_is_refused_before_any_work(tmp_path: Path, capsys) -> None:
    with pytest.raises(ConfigError, match="allow_licenses: 'MITT' is not an SPDX licence id"):
        from_dict(IngestConfig, {"sources": ["python:stdlib"], "allow_licenses": ["MITT"]})
    out = tmp_path / "out"
    code = ingest.main(["--source", "python:stdlib", "--deny-licenses", "MIT,GPL3", "--out", str(out)])
    assert code == 2 and not out.exists()
    assert "deny_licenses: 'GPL3' is not an SPDX licence id" in capsys.readouterr().err


def test_pairs_licence_field_reaches_the_split_files(tmp_path: Path) -> None:
    rows = [
        {
            "query": f"compute the value number {n}",
            "code": f"def value_{n}(x):\n    y = x * {n}\n    return y + {n * n}\n",
            "repo": f"org/r{n}",
            "license": "apache-2.0" if n % 2 else BSD3,  # a whole licence text is no id: kept as written
        }
        for n in range(12)
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    manifest = ingest.run(
        IngestConfig(sources=(f"pairs:{path}",), allow_licenses=("Apache-2.0",), **FAST), tmp_path / "out"
    )
    assert manifest["sources"][f"pairs:{path}"]["rejects"] == {"license": 6}
    kept = pa.concat_tables(
        read_table(tmp_path / "out" / "pairs" / split) for split in ("train", "valid", "test")
    )
    assert set(kept["license"].to_pylist()) == {"Apache-2.0"} and kept.num_rows == 6


def test_search_text_shows_the_licence() -> None:
    hit = Hit(1, 0.5, 0, "python", "r", "a.py", 3, "f", "dir://r/a.py#L3-L5", "def f():\n    pass\n")
    assert format_hit(hit, 5, color=False).splitlines()[0].endswith("0.5000")
    licensed = Hit(1, 0.5, 0, "python", "r", "a.py", 3, "f", "", "def f():\n    pass\n", license="MIT")
    assert format_hit(licensed, 5, color=False).splitlines()[0].endswith("0.5000  MIT")
    assert licensed.to_dict()["license"] == "MIT"
