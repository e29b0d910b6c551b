"""Step 1 of the pipeline through kfp.local: ingest_shards=3 (ParallelFor of ingest_shard, dsl.Collected into
ingest_merge) writes the same pairs and corpus artifacts as ingest_shards=1 (the one ingest task)."""

import json
from pathlib import Path
from typing import NamedTuple

import pytest
from kfp import dsl, local
from kfp.dsl import Dataset

from semcode.data.pairs import SPLITS, read_split, read_table
from semcode.pipeline import train_pipeline
from semcode.pipeline.kfp_local import allow_oneof_artifacts

DATA = Path(__file__).parents[1] / "data"


class IngestOutputs(NamedTuple):
    pairs: Dataset
    corpus: Dataset


@dsl.pipeline(name="ingest-step")
def ingest_only(sources: list, shards: int) -> IngestOutputs:
    """The training pipeline's step 1 alone, wired by the same function."""
    settings = dict(
        sources=sources,
        languages=[],
        max_files_per_source=0,
        corpus_near_dup=True,
        workers=1,
        allow_licenses=[],
        deny_licenses=[],
    )
    pairs, corpus = train_pipeline.ingest_step(settings, shards, "semcode-s3")
    return IngestOutputs(pairs=pairs, corpus=corpus)


def artifact_rows(outputs: dict) -> dict:
    pairs, corpus = Path(outputs["pairs"].path), Path(outputs["corpus"].path)
    return {
        **{split: read_split(pairs, split).to_pylist() for split in SPLITS},
        "corpus": read_table(corpus).to_pylist(),
        "manifest": json.loads((pairs / "manifest.json").read_text()),
    }


@pytest.mark.slow
def test_three_shards_through_kfp_local_give_the_pairs_of_one(tmp_path: Path):
    rows = "".join(
        json.dumps(
            {
                "query": f"compute the {n} value",
                "code": f"def f{n}(x):\n    y{n} = x * {n}\n    return y{n}\n",
                "repo": f"r{n % 5}",
            }
        )
        + "\n"
        for n in range(30)
    )
    pairs_dir = tmp_path / "pairs"
    pairs_dir.mkdir()
    for index in range(4):  # several files, so that the shards share them out
        (pairs_dir / f"part{index}.jsonl").write_text(
            rows if index == 3 else rows.replace("value", f"value {index}")
        )
    sources = [f"dir:{DATA / 'toypkg'}", f"csn:{DATA / 'csn'}", f"pairs:{pairs_dir}"]

    allow_oneof_artifacts()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))
    one = artifact_rows(ingest_only(sources=sources, shards=1).outputs)
    three = artifact_rows(ingest_only(sources=sources, shards=3).outputs)

    for name in (*SPLITS, "corpus"):
        assert three[name] == one[name], name
    assert three["manifest"]["totals"] == one["manifest"]["totals"]
    assert (
        three["manifest"]["dedup"]["pairs"]["exact_removed"]
        == one["manifest"]["dedup"]["pairs"]["exact_removed"]
        > 0
    )
    assert three["manifest"]["fan_out"]["shards"] == 3 and "fan_out" not in one["manifest"]
