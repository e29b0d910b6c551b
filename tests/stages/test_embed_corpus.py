"""embed_corpus + build_index over shards: N embedded shards are, row for row, the single-pod selection, and
the index assembled from them gives the single-pod index's results; bad shard sets are refused by name.

A hashing embedder (character trigrams hashed into 32 buckets, L2-normalised) stands in for a model: a
real, deterministic embedding function, so the vectors of two runs can be compared exactly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from semcode import index as faiss_index
from semcode.config import ConfigError
from semcode.corpus import DOCUMENT_VIEWS, search_documents
from semcode.data.pairs import write_shards
from semcode.stages import build_index as index_stage
from semcode.stages import embed_corpus as stage

DIM = 32
SOURCES = {"python:stdlib": 23, "dir:/src/app": 17, "csn:/data/go.jsonl": 12}


def hash_embed(texts: list[str], kind: str) -> np.ndarray:
    out = np.zeros((len(texts), DIM), dtype=np.float32)
    for row, text in enumerate(texts):
        padded = f"  {text.lower()} "
        for i in range(len(padded) - 2):
            digest = hashlib.blake2b(padded[i : i + 3].encode(), digest_size=4).digest()
            out[row, int.from_bytes(digest, "little") % DIM] += 1.0
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out


def other_embed(texts: list[str], kind: str) -> np.ndarray:
    """Another dimension: a shard embedded by another encoder."""
    out = np.ascontiguousarray(hash_embed(texts, kind)[:, :16]) + np.float32(1e-3)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread() -> Iterator[None]:
    with faiss_index.omp_threads(1):
        yield


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """52 rows of three sources over six files, some with empty code (skipped) or no query."""
    rows = []
    for source, size in SOURCES.items():
        for i in range(size):
            name = f"{source.split(':')[0]}_{i}"
            code = "" if i == 5 else f"def {name}(values):\n    return sorted(values)[{i}] * {len(source)}"
            query = "" if i % 4 == 0 else f"pick item {i} of the sorted values ({source})"
            rows.append({"code": code, "query": query, "func_name": name, "source": source})
    root = tmp_path_factory.mktemp("corpus")
    write_shards(rows, root, rows_per_shard=9)
    return root


def embed_all(corpus: Path, root: Path, shards: int, config: index_stage.BuildIndexConfig) -> list[Path]:
    dirs = [root / f"shard-{k}" for k in range(shards)]
    for k, out in enumerate(dirs):
        stage.embed_shard(config, hash_embed, DIM, corpus, out, k, shards, encoder="hash", encoder_id="hash")
    return dirs


CONFIGS = {
    "all rows": {},
    "a capped sample": {"max_corpus": 30, "whole_sources": ("csn:/data/go.jsonl",)},
}


@pytest.mark.parametrize("name", CONFIGS)
def test_shards_are_the_single_pod_selection_and_index(corpus: Path, tmp_path: Path, name: str) -> None:
    config = index_stage.BuildIndexConfig(**CONFIGS[name], recall_queries=20)
    single = index_stage.index_corpus(config, hash_embed, DIM, corpus, tmp_path / "single")
    single_meta = pq.read_table(tmp_path / "single" / "index_meta.parquet")
    single_index = faiss_index.load_index(tmp_path / "single" / "index.faiss")
    queries = hash_embed(["sorted values item", "pick the first", "dir app values"], "query")
    for shards in (1, 3, 4):
        dirs = embed_all(corpus, tmp_path / f"emb-{shards}", shards, config)
        manifests = [json.loads((d / "manifest.json").read_text()) for d in dirs]
        assert [m["shard"] for m in manifests] == list(range(shards))
        assert sum(m["rows_selected"] for m in manifests) == (config.max_corpus or 52)
        # the shards one after another: the same rows and vectors as the single pod's
        vectors = np.concatenate([np.load(d / "embeddings.npy") for d in dirs])
        meta = pa.concat_tables([pq.read_table(d / "index_meta.parquet") for d in dirs])
        assert meta.combine_chunks().equals(single_meta.combine_chunks())
        np.testing.assert_array_equal(
            vectors, hash_embed(search_documents(single_meta, DOCUMENT_VIEWS[0]), "code")
        )
        # assembled: the same index, metadata, coverage and recall query sample
        out = tmp_path / f"assembled-{shards}"
        metrics = index_stage.index_shards(
            config, hash_embed, DIM, dirs, out, encoder="hash", encoder_id="hash"
        )
        assert pq.read_table(out / "index_meta.parquet").equals(single_meta)
        assert metrics["ntotal"] == single["ntotal"] == len(single_meta)
        assert metrics["coverage"] == single["coverage"]
        assert metrics["recall_query_source"] == single["recall_query_source"]
        assert metrics["embedded_in_shards"] == shards and single["embedded_in_shards"] is None
        assert metrics["rows_skipped_empty_code"] == single["rows_skipped_empty_code"]
        assembled = faiss_index.load_index(out / "index.faiss")
        for a, b in zip(
            faiss_index.search(assembled, queries, 10),
            faiss_index.search(single_index, queries, 10),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b)
        assert (out / "bm25").is_dir()


def test_assembled_ivf_on_disk_is_mapped_and_matches_the_in_memory_index(
    corpus: Path, tmp_path: Path
) -> None:
    config = index_stage.BuildIndexConfig(factory="IVF4,Flat", nprobe=2, train_sample=40)
    dirs = embed_all(corpus, tmp_path / "emb", 3, config)
    in_memory = index_stage.index_shards(config, hash_embed, DIM, dirs, tmp_path / "memory")
    on_disk_config = index_stage.BuildIndexConfig(
        factory="IVF4,Flat", nprobe=2, train_sample=40, ivf_on_disk=True
    )
    on_disk = index_stage.index_shards(on_disk_config, hash_embed, DIM, dirs, tmp_path / "disk")
    assert on_disk["ivf_on_disk"] and on_disk["ivfdata_file_bytes"] > 0
    assert abs(on_disk["recall@10"] - in_memory["recall@10"]) <= 0.01
    # copied elsewhere (as into a bundle), it still loads: the inverted lists mapped from beside it
    moved = tmp_path / "moved"
    (tmp_path / "disk").rename(moved)
    index = faiss_index.load_index(moved / "index.faiss")
    ivf = faiss.extract_index_ivf(index)
    assert isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists)
    queries = hash_embed(["sorted values item", "dir app"], "query")
    memory_index = faiss_index.load_index(tmp_path / "memory" / "index.faiss")
    np.testing.assert_array_equal(
        faiss_index.search(index, queries, 5)[1], faiss_index.search(memory_index, queries, 5)[1]
    )


def test_on_disk_needs_an_ivf_index_without_refine(corpus: Path, tmp_path: Path) -> None:
    dirs = embed_all(corpus, tmp_path / "emb", 1, index_stage.BuildIndexConfig())
    for factory in ("Flat", "IVF4,PQ4x4,RFlat"):
        config = index_stage.BuildIndexConfig(factory=factory, ivf_on_disk=True)
        with pytest.raises(ConfigError, match="ivf_on_disk needs an IVF index without a refine stage"):
            index_stage.index_shards(config, hash_embed, DIM, dirs, tmp_path / "out")


def test_plan_sizes_the_fan_out_by_the_selected_rows(corpus: Path) -> None:
    def plan(**config: object) -> list[int]:
        items = stage.plan(index_stage.BuildIndexConfig(**config), corpus)
        assert all(item["shards"] == len(items) for item in items)
        return [item["shard"] for item in items]

    assert plan() == [0]  # 52 rows, one shard per million
    assert plan(shard_rows=20) == [0, 1, 2]
    assert plan(shard_rows=20, max_corpus=30) == [0, 1]
    assert plan(shards=5) == [0, 1, 2, 3, 4]
    assert plan(shards=500) == list(range(52))  # one row each at most


def test_bad_shard_sets_are_refused_naming_the_input(corpus: Path, tmp_path: Path) -> None:
    config = index_stage.BuildIndexConfig()
    dirs = embed_all(corpus, tmp_path / "emb", 3, config)

    def refused(shard_dirs: list[Path], match: str, error: type = ValueError, **kwargs: object) -> None:
        with pytest.raises(error, match=match):
            index_stage.index_shards(
                kwargs.pop("config", config), hash_embed, DIM, shard_dirs, tmp_path / "out", **kwargs
            )

    refused([dirs[0], dirs[2]], r"shard\(s\) \[1\] missing; given .*shard-0 \(shard 0\)")
    refused([dirs[0], dirs[1], dirs[1], dirs[2]], r"shard\(s\) \[1\] given more than once")
    refused([*dirs, tmp_path / "nowhere"], "embedded shard .*nowhere does not exist", FileNotFoundError)
    refused([], "no embedded shards given")
    # a shard embedded by another encoder, of another dimension
    other = tmp_path / "other-1"
    stage.embed_shard(config, other_embed, 16, corpus, other, 1, 3, encoder="other", encoder_id="other")
    refused([dirs[0], other, dirs[2]], r"different embedding dimension \(dim\): .*other-1: 16")
    # the same dimension, another encoder
    same_dim = tmp_path / "same-dim-1"
    stage.embed_shard(config, hash_embed, DIM, corpus, same_dim, 1, 3, encoder="x", encoder_id="sha256:x")
    refused([dirs[0], same_dim, dirs[2]], r"different encoder .*same-dim-1: \"sha256:x\"")
    # shards of this encoder, queried with another one
    refused(dirs, "were embedded by encoder hash .*queries by sha256:y", encoder_id="sha256:y")
    # a shard of another shard count, or of another selection
    refused([*dirs[:2], embed_all(corpus, tmp_path / "two", 2, config)[1]], r"different shard count")
    capped = index_stage.BuildIndexConfig(max_corpus=30)
    refused(dirs, "embedded with max_corpus=0, this build-index config has max_corpus=30", config=capped)
    onnx = index_stage.BuildIndexConfig(runtime="onnx-int8")  # queries embedded otherwise than the code
    refused(
        dirs, "embedded with runtime='torch', this build-index config has runtime='onnx-int8'", config=onnx
    )
    # a shard whose files do not agree with its manifest
    broken = tmp_path / "broken"
    stage.embed_shard(config, hash_embed, DIM, corpus, broken, 2, 3, encoder="hash", encoder_id="hash")
    np.save(broken / "embeddings.npy", np.zeros((3, DIM), dtype=np.float32))
    refused([*dirs[:2], broken], r"broken: embeddings.npy is float32 \(3, 32\), its manifest says")
    (broken / "manifest.json").unlink()
    refused([*dirs[:2], broken], "broken lacks manifest.json", FileNotFoundError)


def test_clis_embed_and_index_shards_and_refuse_bad_input(corpus: Path, tmp_path: Path, capsys) -> None:
    assert (
        stage.main(
            [
                "--encoder",
                "minilm",
                "--corpus",
                str(corpus),
                "--out",
                str(tmp_path),
                "--shard",
                "3",
                "--shards",
                "3",
            ]
        )
        == 2
    )
    assert "shard must be in 0..shards-1" in capsys.readouterr().err
    assert (
        stage.main(["--encoder", "minilm", "--corpus", str(corpus), "--out", str(tmp_path), "--shard", "0"])
        == 2
    )
    assert "--shards (the shard count) must be >= 1" in capsys.readouterr().err
    argv = ["--encoder", "minilm", "--out", str(tmp_path / "index"), "--embedded", str(tmp_path / "none")]
    assert index_stage.main(argv) == 2
    assert "embedded shard" in capsys.readouterr().err and not (tmp_path / "index").exists()
