"""The embedding cache: only texts it has not seen are embedded, vectors come back in order, chunks survive
a restart, a broken chunk is skipped, another encoder set-up never shares vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from semcode.embedding_cache import EmbeddingCache, cached_embed_fn, text_keys

DIM = 8


class CountingEmbed:
    """A deterministic embedding (the text's bytes, hashed) that records which texts it was asked for."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, texts: list[str], kind: str) -> np.ndarray:
        self.seen += texts
        rows = [np.random.default_rng(abs(hash((kind, text))) % 2**32).normal(size=DIM) for text in texts]
        return np.array(rows, dtype=np.float32).reshape(len(texts), DIM)


SETUP = {"encoder": "sha256:abc", "runtime": "onnx-int8", "max_length": 128}


def test_only_new_texts_are_embedded_and_vectors_keep_their_order(tmp_path: Path) -> None:
    inner = CountingEmbed()
    cache = EmbeddingCache(tmp_path, SETUP, DIM)
    embed = cached_embed_fn(inner, cache)
    first = embed(["a", "b", "c"], "code")
    np.testing.assert_array_equal(first, inner(["a", "b", "c"], "code"))
    inner.seen.clear()
    second = embed(["c", "d", "a"], "code")
    assert inner.seen == ["d"] and (cache.hits, cache.misses) == (2, 4)
    np.testing.assert_array_equal(second[[0, 2]], first[[2, 0]])
    inner.seen.clear()
    embed(["a"], "query")  # another kind: another key (a query prefix gives another vector)
    assert inner.seen == ["a"]
    # A second process: the chunks on disk are read back; another set-up shares nothing.
    again = EmbeddingCache(tmp_path, SETUP, DIM)
    assert len(again) == 5
    found, vectors = again.lookup(text_keys(["b", "zzz"], "code"))
    assert found.tolist() == [True, False]
    np.testing.assert_array_equal(vectors[0], first[1])
    other = EmbeddingCache(tmp_path, {**SETUP, "encoder": "sha256:def"}, DIM)
    assert len(other) == 0 and other.folder != cache.folder


def test_a_broken_or_foreign_chunk_is_skipped_never_trusted(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, SETUP, DIM)
    cached_embed_fn(CountingEmbed(), cache)(["a", "b"], "code")
    (cache.folder / "chunk-999999-1.npz").write_bytes(b"not a zip file")
    np.savez(cache.folder / "chunk-999998-1.npz", keys=text_keys(["c"], "code"), vectors=np.ones((1, 3)))
    reloaded = EmbeddingCache(tmp_path, SETUP, DIM)
    assert len(reloaded) == 2
    with pytest.raises(ValueError, match="dim 8"):
        reloaded.add(text_keys(["x"], "code"), np.ones((1, 3), dtype=np.float32))


def test_two_writers_on_one_folder_keep_both_chunks(tmp_path: Path) -> None:
    first, second = EmbeddingCache(tmp_path, SETUP, DIM), EmbeddingCache(tmp_path, SETUP, DIM)
    cached_embed_fn(CountingEmbed(), first)(["a"], "code")
    cached_embed_fn(CountingEmbed(), second)(["b"], "code")
    assert len(EmbeddingCache(tmp_path, SETUP, DIM)) == 2
    assert not list(first.folder.glob(".chunk-*"))  # no temporary file left behind
