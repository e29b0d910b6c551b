"""An embedding cache: the vectors of texts one encoder already embedded, so the next index of the same
corpus (a second `semcode run`, `semcode index --update`) embeds only the texts that changed.

Keyed by what decides a vector: the encoder's identity (the sha256 of its weights, or its alias), how it
ran (runtime, max length, the kind "query"/"code" and so its prefix) and the text itself (the first 16
bytes of sha256(kind + NUL + text)). One folder per encoder set-up, ``<root>/<setup digest>/``, holding
``chunk-<n>.npz`` files (``keys`` [N, 16] uint8, ``vectors`` [N, D] float32), each written once through a
unique temporary name and renamed into place, so readers never see half a chunk and two writers never
collide; a chunk that cannot be read (a disk error, another dimension) is skipped with a log line, never
trusted. ``cached_embed_fn`` wraps any semcode.embed.EmbedFn: it looks every text up, embeds the misses
in one call (in their original order), adds them as one new chunk, and returns all vectors in order, so
the vectors are those the wrapped function gives (a text embedded alone and in a batch alike: the int8
graph runs one text per call, semcode.embed).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from semcode.embed import EmbedFn
from semcode.progress import log

TAG = "embedding-cache"
KEY_BYTES = 16


def text_keys(texts: Sequence[str], kind: str) -> np.ndarray:
    """[N, 16] uint8: the first 16 bytes of sha256(kind, NUL, text) of each text."""
    keys = np.empty((len(texts), KEY_BYTES), dtype=np.uint8)
    for i, text in enumerate(texts):
        digest = hashlib.sha256(f"{kind}\0{text}".encode("utf-8", errors="surrogatepass")).digest()
        keys[i] = np.frombuffer(digest[:KEY_BYTES], dtype=np.uint8)
    return keys


class EmbeddingCache:
    """The cached vectors of one encoder set-up (``setup``: encoder identity, runtime, max length) under
    ``root``; ``dim`` is checked against every chunk read and every vector added."""

    def __init__(self, root: str | os.PathLike[str] | None, setup: dict, dim: int) -> None:
        self.dim = dim
        self.hits = 0
        self.misses = 0
        self._rows: dict[bytes, tuple[int, int]] = {}  # key -> (chunk number, row)
        self._chunks: list[np.ndarray] = []
        self.folder: Path | None = None
        if root is None:  # in memory (known_vectors): nothing read or written
            return
        digest = hashlib.sha256(json.dumps(setup, sort_keys=True).encode()).hexdigest()[:24]
        self.folder = Path(root) / digest
        self.folder.mkdir(parents=True, exist_ok=True)
        setup_file = self.folder / "setup.json"
        if not setup_file.exists():
            _write_atomically(setup_file, json.dumps(setup, indent=1, sort_keys=True).encode())
        for path in sorted(self.folder.glob("chunk-*.npz")):
            self._load_chunk(path)

    def __len__(self) -> int:
        return len(self._rows)

    @classmethod
    def known_vectors(cls, keys: np.ndarray, vectors: np.ndarray) -> EmbeddingCache:
        """An in-memory cache of vectors [N, D] already made under keys [N, 16] (e.g. those an index holds,
        semcode.index_bundle.reusable_vectors); what it embeds besides stays in memory."""
        cache = cls(None, {}, vectors.shape[1])
        cache.add(keys, vectors)
        return cache

    def _load_chunk(self, path: Path) -> None:
        try:
            with np.load(path) as chunk:
                keys, vectors = chunk["keys"], chunk["vectors"]
        except (OSError, ValueError, KeyError) as error:
            log(TAG, f"skipping {path}: unreadable ({error})")
            return
        if keys.shape != (len(vectors), KEY_BYTES) or vectors.ndim != 2 or vectors.shape[1] != self.dim:
            log(
                TAG,
                f"skipping {path}: keys {keys.shape} and vectors {vectors.shape} do not fit dim {self.dim}",
            )
            return
        self._keep(keys, vectors)

    def _keep(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        number = len(self._chunks)
        self._chunks.append(vectors.astype(np.float32, copy=False))
        for row, key in enumerate(keys):
            self._rows[key.tobytes()] = (number, row)

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found [N] bool, vectors [found.sum(), D] float32) for keys [N, 16]."""
        places = [self._rows.get(key.tobytes()) for key in keys]
        found = np.array([place is not None for place in places], dtype=bool)
        vectors = np.zeros((int(found.sum()), self.dim), dtype=np.float32)
        for i, (chunk, row) in enumerate(place for place in places if place is not None):
            vectors[i] = self._chunks[chunk][row]
        return found, vectors

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        """Store vectors [N, D] under keys [N, 16] as one new chunk (a unique name: no writer overwrites
        another's)."""
        if len(keys) != len(vectors) or vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"keys {keys.shape} and vectors {vectors.shape} do not fit dim {self.dim}")
        if not len(keys):
            return
        if self.folder is None:
            self._keep(keys, vectors)
            return
        handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=".chunk-", suffix=".npz")
        with os.fdopen(handle, "wb") as out:
            np.savez(out, keys=keys, vectors=vectors.astype(np.float32, copy=False))
        final = self.folder / f"chunk-{len(list(self.folder.glob('chunk-*.npz'))):06d}-{os.getpid()}.npz"
        while final.exists():
            final = final.with_name(final.stem + "x.npz")
        os.replace(temporary, final)
        self._load_chunk(final)


def _write_atomically(path: Path, data: bytes) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "wb") as out:
        out.write(data)
    os.replace(temporary, path)


def cached_embed_fn(embed: EmbedFn, cache: EmbeddingCache) -> EmbedFn:
    """``embed`` that takes what ``cache`` has and embeds (then caches) only the rest."""

    def embed_with_cache(texts: list[str], kind: str) -> np.ndarray:
        keys = text_keys(texts, kind)
        found, known = cache.lookup(keys)
        vectors = np.zeros((len(texts), cache.dim), dtype=np.float32)
        vectors[found] = known
        missing = np.flatnonzero(~found)
        if len(missing):
            fresh = np.asarray(embed([texts[i] for i in missing], kind), dtype=np.float32)
            cache.add(keys[missing], fresh)
            vectors[missing] = fresh
        cache.hits += int(found.sum())
        cache.misses += len(missing)
        return vectors

    return embed_with_cache
