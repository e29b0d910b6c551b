"""The corpus embedding fan-out through kfp.local: the tiny preset with 3 embedding shards (a dsl.ParallelFor
of embed-corpus, collected by build-index) gives the vectors, metadata and index results of 1 shard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from semcode import index as faiss_index
from semcode.pipeline import local as local_run


def embedded_shards(run_dir: Path) -> list[tuple[dict, np.ndarray, pa.Table]]:
    """(manifest, vectors, metadata) of every embed-corpus iteration of a run, in shard order."""
    found = []
    for manifest_path in run_dir.glob(
        "artifacts/*/for-loop-*-iteration-*/embed-corpus/embeddings/manifest.json"
    ):
        shard = manifest_path.parent
        found.append(
            (
                json.loads(manifest_path.read_text()),
                np.load(shard / "embeddings.npy"),
                pq.read_table(shard / "index_meta.parquet"),
            )
        )
    return sorted(found, key=lambda item: item[0]["shard"])


def built_index(run_dir: Path) -> Path:
    (index_dir,) = run_dir.glob("artifacts/*/build-index/index")
    return index_dir


@pytest.mark.slow
def test_three_shards_through_kfp_local_are_one_shard(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    for run_id, shards in (("one", 1), ("three", 3)):  # the second reuses the training (--cache)
        argv = ["--preset", "tiny", "--runs-dir", str(runs), "--run-id", run_id, "--cache"]
        argv += ["--registry", str(runs / f"registry-{run_id}"), "--param", f"build_index_shards={shards}"]
        assert local_run.main(argv) == 0, run_id

    one, three = embedded_shards(runs / "one"), embedded_shards(runs / "three")
    assert [manifest["shard"] for manifest, _, _ in one] == [0]
    assert [(manifest["shard"], manifest["shards"]) for manifest, _, _ in three] == [(0, 3), (1, 3), (2, 3)]
    assert len({manifest["encoder_id"] for manifest, _, _ in one + three}) == 1  # the same (cached) encoder
    # the shards one after another: the rows and vectors of the single shard
    one_vectors, one_meta = one[0][1], one[0][2]
    three_vectors = np.concatenate([vectors for _, vectors, _ in three])
    three_meta = pa.concat_tables([meta for _, _, meta in three])
    assert three_meta.combine_chunks().equals(one_meta.combine_chunks())
    assert all(len(vectors) > 0 for _, vectors, _ in three)
    # batches are cut differently (so padded differently): equal up to float rounding
    np.testing.assert_allclose(three_vectors, one_vectors, rtol=0, atol=1e-5)

    # the assembled indexes: same metadata, same size, the same results
    one_index_dir, three_index_dir = built_index(runs / "one"), built_index(runs / "three")
    assert pq.read_table(three_index_dir / "index_meta.parquet").equals(
        pq.read_table(one_index_dir / "index_meta.parquet")
    )
    one_metrics = json.loads((one_index_dir / "metrics.json").read_text())
    three_metrics = json.loads((three_index_dir / "metrics.json").read_text())
    assert (one_metrics["embedded_in_shards"], three_metrics["embedded_in_shards"]) == (1, 3)
    assert three_metrics["ntotal"] == one_metrics["ntotal"] == len(one_meta)
    assert three_metrics["coverage"] == one_metrics["coverage"]
    assert abs(three_metrics["recall@10"] - one_metrics["recall@10"]) <= 0.01
    queries = np.ascontiguousarray(one_vectors[::7])
    one_ids = faiss_index.search(faiss_index.load_index(one_index_dir / "index.faiss"), queries, 10)[1]
    three_ids = faiss_index.search(faiss_index.load_index(three_index_dir / "index.faiss"), queries, 10)[1]
    np.testing.assert_array_equal(three_ids[:, 0], one_ids[:, 0])
    assert faiss_index.recall_at_k(three_ids, one_ids, 10) >= 0.99
    # the run's summary times the fan-out's tasks like any other
    # (every shard and every task after the loop: kfp.local's threads used to lose lines of each other)
    summary = json.loads((runs / "three" / "summary.json").read_text())
    tasks = [stage["task"] for stage in summary["stages"]]
    assert tasks.count("embed-corpus") == 3
    assert {"build-index", "gate", "publish"} <= set(tasks)  # the tasks after the loop (never cached)
