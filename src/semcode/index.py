"""FAISS indexes over unit vectors: choose, build, search, measure. Free functions over numpy arrays.

Every array is float32, C-contiguous, shape-checked: database ``vectors`` [N, D], ``queries`` [Q, D],
results ``scores`` / ``ids`` [Q, k]. Vectors are L2-normalised, so inner product = cosine similarity
and the default metric is inner product ("ip").

An index is described by a FAISS *factory string* (``faiss.index_factory``), chosen by corpus size::

    N <= flat_max              "Flat"                      exact search (IndexFlat with inner product)
    N <= hnsw_max              "HNSW{m},Flat"              graph search, efSearch sets recall/speed
    larger                     "IVF{nlist},PQ{m}x8,RFlat"  inverted lists + product quantisation,
                                                           re-ranked with the exact vectors (IndexRefineFlat)

or given explicitly. Recall is always measured against exact search (``exact_search``), which streams
the database in blocks (faiss.contrib.exhaustive_search.knn_ground_truth), so it works on a memmap.

Sharded corpora: ``build_index`` and ``exact_search`` also take a list of arrays (the shards' [N_i, D]
vectors, memmaps as np.load(mmap_mode="r") opens them), read as their concatenation: ids run over the
shards in order, the training sample is the same seeded sample of the concatenated rows, so the index is
the one a single array would give. ``build_ivf_on_disk`` builds an IVF index too large for memory with
faiss' own facilities: trained once, each shard added to a copy of the trained index and written out,
the copies' inverted lists merged into one OnDiskInvertedLists file (faiss.contrib.ondisk.merge_ondisk)
that ``load_index`` maps instead of reading.

GPU: with a GPU build of FAISS and a visible GPU (``use_gpu="auto"``), training and adding run there:
the whole index when ``index_cpu_to_gpu`` supports it (IVF-Flat, IVF-PQ), else only the IVF k-means
(HNSW graphs and refine wrappers are built on the CPU). The returned index is always a CPU index, ready
for ``save_index``. Flat indexes are copied on the CPU: adding to them is a memory copy, nothing to gain.
"""

from __future__ import annotations

import math
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import faiss
import numpy as np
from faiss.contrib.exhaustive_search import knn_ground_truth
from faiss.contrib.ondisk import merge_ondisk

from semcode.progress import Progress, log

TAG = "index"
METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
USE_GPU_CHOICES = ("auto", "yes", "no")
MIN_TRAIN_VECTORS = 10_000  # PQ with 8 bits learns 256 centroids per sub-quantizer: ~39 points each
MAX_TRAIN_VECTORS = 1_000_000  # cap of the automatic training sample (1.5 GB at dim 384)
TRAIN_POINTS_PER_LIST = 40  # faiss' own advice: at least ~39 training points per k-means centroid
UNIT_NORM_TOLERANCE = 1e-3
EXACT_SEARCH_BLOCK = 65_536  # database rows per block of exact search
BATCHED_REPEATS = 3
HNSW_FILTER_MIN_FRACTION = 0.1  # rarer subsets: an exact filtered scan beats the graph (restricted_search)
IVFDATA_SUFFIX = (
    ".ivfdata"  # build_ivf_on_disk: the inverted lists beside the index file, <index stem>.ivfdata
)
Vectors = np.ndarray | Sequence[np.ndarray]  # one [N, D] array, or shards read as their concatenation


class FactoryChoice(Protocol):
    """The config fields ``choose_factory`` reads (BuildIndexConfig has them)."""

    factory: str
    flat_max: int
    hnsw_max: int
    exact_refine_max: int
    hnsw_m: int
    ivf_nlist: int
    pq_m: int


# ---------------------------------------------------------------------------------------------
# Argument checks


def check_vectors(name: str, x: np.ndarray, dim: int | None = None) -> np.ndarray:
    """``x`` as a float32 C-contiguous [rows, dim] array (no copy when it already is one, e.g. a memmap)."""
    if not isinstance(x, np.ndarray) or x.ndim != 2:
        shape = getattr(x, "shape", None)
        raise ValueError(f"{name} must be a 2-D array [rows, dim], got {type(x).__name__} of shape {shape}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} has dimension {x.shape[1]}, expected {dim} (dimension mismatch)")
    if x.dtype != np.float32:
        raise ValueError(f"{name} must be float32, got {x.dtype}")
    return np.ascontiguousarray(x)


def check_parts(name: str, vectors: Vectors) -> list[np.ndarray]:
    """``vectors`` (one array or a list of shards) as a list of float32 [rows, dim] arrays of one dim."""
    parts = [vectors] if isinstance(vectors, np.ndarray) else list(vectors)
    if not parts:
        raise ValueError(f"{name} is an empty list of shards: nothing to index")
    parts = [check_vectors(f"{name}[{i}]" if len(parts) > 1 else name, part) for i, part in enumerate(parts)]
    dims = sorted({part.shape[1] for part in parts})
    if len(dims) > 1:
        raise ValueError(f"{name}: the shards have different dimensions {dims} (dimension mismatch)")
    return parts


def take_rows(parts: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """The rows ``rows`` (sorted numbers into the concatenation of ``parts``) as one contiguous array."""
    starts = np.cumsum([0] + [len(part) for part in parts])
    bounds = np.searchsorted(rows, starts)
    pieces = [
        part[rows[lo:hi] - start]
        for part, start, lo, hi in zip(parts, starts[:-1], bounds[:-1], bounds[1:], strict=True)
    ]
    return np.ascontiguousarray(np.concatenate(pieces))


def check_unit_norm(name: str, x: np.ndarray, sample: int = 1000) -> None:
    """Raise unless the first ``sample`` rows have L2 norm 1: inner product is only cosine for unit rows."""
    norms = np.linalg.norm(np.asarray(x[:sample], dtype=np.float64), axis=1)
    worst = float(np.max(np.abs(norms - 1.0))) if len(norms) else 0.0
    if worst > UNIT_NORM_TOLERANCE:
        raise ValueError(
            f"{name} are not L2-normalised (a row norm is off by {worst:.4f}); normalise them first "
            "(faiss.normalize_L2) so inner product equals cosine similarity"
        )


def metric_type(metric: str) -> int:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    return METRICS[metric]


# ---------------------------------------------------------------------------------------------
# Choosing and validating the factory string


def auto_nlist(n_vectors: int) -> int:
    """About 4 * sqrt(N) inverted lists, a power of two, with at least ~39 vectors per list."""
    target = max(1.0, 4.0 * math.sqrt(n_vectors))
    nlist = 2 ** round(math.log2(target))
    most = max(1, n_vectors // TRAIN_POINTS_PER_LIST)
    while nlist > most:
        nlist //= 2
    return max(1, nlist)


def auto_pq_m(dim: int) -> int:
    """Sub-quantizers for PQ: the largest divisor of ``dim`` up to dim / 8 (48 for 384, 96 for 768)."""
    return max(m for m in range(1, max(1, dim // 8) + 1) if dim % m == 0)


def choose_factory(n_vectors: int, dim: int, config: FactoryChoice) -> str:
    """The factory string for ``n_vectors`` of dimension ``dim``: ``config.factory`` when set, else by size."""
    if n_vectors < 1 or dim < 1:
        raise ValueError(f"need n_vectors >= 1 and dim >= 1, got {n_vectors} and {dim}")
    if config.factory:
        return config.factory
    if n_vectors <= config.flat_max:
        return "Flat"
    if n_vectors <= config.hnsw_max:
        return f"HNSW{config.hnsw_m},Flat"
    nlist = config.ivf_nlist or auto_nlist(n_vectors)
    pq_m = config.pq_m or auto_pq_m(dim)
    if dim % pq_m:
        raise ValueError(f"pq_m={pq_m} must divide the embedding dimension {dim}")
    if n_vectors <= config.exact_refine_max:
        return f"IVF{nlist},PQ{pq_m}x8,RFlat"
    # Beyond: the exact vectors (4 * dim bytes each) would not fit one pod, so the candidates are
    # re-ranked with 8-bit scalar-quantized ones (dim bytes); OPQ rotates the space so PQ loses less
    # (1M synthetic: recall@10 0.970 -> 0.980 with Refine(SQ8)), and an HNSW coarse quantizer finds the
    # nprobe nearest of tens of thousands of lists without scanning them all (bench/RESULTS.md).
    return f"OPQ{pq_m},IVF{nlist}_HNSW32,PQ{pq_m}x8,Refine(SQ8)"


def faiss_reason(error: RuntimeError) -> str:
    """The message of a FAISS error without its C++ location prefix ("Error in <function> at <file>:<line>: ")."""
    text = str(error).strip().splitlines()[-1] if str(error).strip() else repr(error)
    return re.sub(r"^Error in .*? at \S+:\d+: ", "", text)


def new_index(factory: str, dim: int, metric: str = "ip") -> faiss.Index:
    """An empty index from a factory string; a string FAISS rejects raises ValueError naming it."""
    try:
        return faiss.index_factory(dim, factory, metric_type(metric))
    except RuntimeError as error:  # FAISS reports parse errors and bad parameters as RuntimeError
        raise ValueError(
            f"FAISS rejects the index factory string {factory!r} for dim {dim}: {faiss_reason(error)}"
        ) from None


def ivf_part(index: faiss.Index) -> faiss.IndexIVF | None:
    """The IndexIVF inside ``index`` (also under a refine or pre-transform wrapper), or None."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def validate_factory(factory: str, dim: int, n_vectors: int, metric: str = "ip") -> None:
    """Cheap checks before any embedding: FAISS parses ``factory`` and an IVF has no more lists than vectors."""
    index = new_index(factory, dim, metric)
    ivf = ivf_part(index)
    if ivf is not None and ivf.nlist > n_vectors:
        raise ValueError(
            f"index factory {factory!r} has {ivf.nlist} inverted lists but the corpus has only "
            f"{n_vectors} vectors; use fewer lists or a Flat/HNSW index"
        )
    pq = getattr(faiss.downcast_index(ivf), "pq", None) if ivf is not None else None
    if pq is not None and pq.ksub > n_vectors:
        raise ValueError(
            f"index factory {factory!r} learns {pq.ksub} centroids per PQ sub-quantizer but the corpus has "
            f"only {n_vectors} vectors; use fewer bits (e.g. PQ{pq.M}x4) or a Flat/HNSW index"
        )


def describe(index: faiss.Index) -> str:
    """The concrete class name, e.g. IndexHNSWFlat or IndexRefineFlat(IndexIVFPQ)."""
    index = faiss.downcast_index(index)
    name = type(index).__name__
    if isinstance(index, faiss.IndexRefine):
        name += f"({type(faiss.downcast_index(index.base_index)).__name__})"
    return name


# ---------------------------------------------------------------------------------------------
# GPU


def gpu_available() -> bool:
    """True with a GPU build of FAISS (faiss-gpu) and at least one visible GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def resolve_use_gpu(use_gpu: str) -> bool:
    if use_gpu not in USE_GPU_CHOICES:
        raise ValueError(f"use_gpu must be one of {list(USE_GPU_CHOICES)}, got {use_gpu!r}")
    if use_gpu == "no":
        return False
    available = gpu_available()
    if use_gpu == "yes" and not available:
        raise ValueError(
            "use_gpu='yes' but FAISS sees no GPU (faiss.get_num_gpus() == 0 or a CPU-only faiss build)"
        )
    return available


# ---------------------------------------------------------------------------------------------
# Building


def train_sample_size(n_vectors: int, index: faiss.Index, requested: int = 0) -> int:
    """Vectors to train on: ``requested`` if > 0, else max(40 * nlist, 10k) capped at 1M, never above N."""
    if requested > 0:
        return min(n_vectors, requested)
    ivf = ivf_part(index)
    lists = ivf.nlist if ivf is not None else 0
    # MAX_TRAIN_VECTORS bounds memory, but never below TRAIN_POINTS_PER_LIST per list: FAISS' k-means
    # warns and clusters badly with fewer (at 100M vectors nlist is 32,768: 1.3M training vectors).
    cap = max(MAX_TRAIN_VECTORS, TRAIN_POINTS_PER_LIST * lists)
    return min(n_vectors, max(TRAIN_POINTS_PER_LIST * lists, MIN_TRAIN_VECTORS), cap)


def build_index(
    vectors: Vectors,
    factory: str,
    metric: str = "ip",
    train_sample: int = 0,
    add_batch: int = 65_536,
    use_gpu: str = "auto",
    seed: int = 0,
    ef_construction: int | None = None,
) -> faiss.Index:
    """A CPU index over ``vectors`` [N, D] (ids 0..N-1 in row order), trained on a seeded sample, added in batches.

    ``vectors``: one array, or a list of shards (ids run over them in order; the same index as their
    concatenation). ``train_sample``: vectors to train on (0 = automatic, see train_sample_size); only
    indexes that need training (IVF, PQ) use it. ``add_batch`` rows are added at a time, so a memmap is
    read in pieces. ``ef_construction`` sets HNSW's build-time beam (FAISS' default 40 when None).
    """
    parts = check_parts("vectors", vectors)
    index, work, gpu_keepalive = _trained_index(
        parts, factory, metric, train_sample, add_batch, use_gpu, seed, ef_construction
    )
    n = sum(len(part) for part in parts)
    with Progress(f"{TAG}-add", total=n, unit="vectors") as progress:
        for part in parts:
            for start in range(0, len(part), add_batch):
                batch = np.ascontiguousarray(part[start : start + add_batch])
                work.add(batch)
                progress.update(len(batch))
    return _back_on_cpu(index, work, gpu_keepalive)


def _trained_index(
    parts: list[np.ndarray],
    factory: str,
    metric: str,
    train_sample: int,
    add_batch: int,
    use_gpu: str,
    seed: int,
    ef_construction: int | None,
) -> tuple[faiss.Index, faiss.Index, list]:
    """(the new CPU index, the index to add to: itself or its GPU copy, GPU objects to keep alive), trained
    on a seeded sample of the rows of ``parts`` when the index type needs training."""
    n, dim = sum(len(part) for part in parts), parts[0].shape[1]
    if n == 0:
        raise ValueError("vectors is empty: nothing to index")
    if add_batch < 1:
        raise ValueError(f"add_batch must be >= 1, got {add_batch}")
    if metric == "ip":
        for i, part in enumerate(parts):
            check_unit_norm("vectors" if len(parts) == 1 else f"vectors[{i}]", part)
    validate_factory(factory, dim, n, metric)
    on_gpu = resolve_use_gpu(use_gpu)
    index = new_index(factory, dim, metric)
    hnsw = _hnsw_part(index)
    if hnsw is not None and ef_construction is not None:
        hnsw.hnsw.efConstruction = ef_construction
    ivf = ivf_part(index)
    if ivf is not None:
        ivf.cp.seed = seed  # k-means initialisation

    work, gpu_keepalive = _to_gpu_for_build(index) if on_gpu else (index, [])
    if not index.is_trained:
        size = train_sample_size(n, index, train_sample)
        rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
        sample = take_rows(parts, rows)
        log(TAG, f"training {factory!r} on {size} of {n} vectors{' (GPU)' if on_gpu else ''}")
        start = time.perf_counter()
        try:
            work.train(sample)
        except RuntimeError as error:
            raise ValueError(
                f"training index {factory!r} on {size} vectors failed: {faiss_reason(error)}"
            ) from None
        log(TAG, f"trained in {time.perf_counter() - start:.1f}s")
        del sample
    return index, work, gpu_keepalive


def _back_on_cpu(index: faiss.Index, work: faiss.Index, gpu_keepalive: list) -> faiss.Index:
    """The CPU index once ``work`` (``index`` or its GPU copy) holds the vectors."""
    ivf = ivf_part(index)
    on_gpu = bool(gpu_keepalive)
    if work is not index:
        index = faiss.index_gpu_to_cpu(work)
    if ivf is not None and on_gpu:
        ivf_part(index).clustering_index = None  # the GPU k-means index is not part of the saved index
    del gpu_keepalive
    return index


def on_disk_capable(factory: str, dim: int, metric: str = "ip") -> bool:
    """Whether build_ivf_on_disk can keep ``factory``'s inverted lists on disk: an IVF index (a
    pre-transform such as OPQ is fine) without a refine stage, which would keep every vector in memory."""
    index = new_index(factory, dim, metric)  # held: a downcast of a temporary would outlive its index
    return ivf_part(index) is not None and not isinstance(faiss.downcast_index(index), faiss.IndexRefine)


def build_ivf_on_disk(
    vectors: Vectors,
    factory: str,
    index_path: str | Path,
    metric: str = "ip",
    train_sample: int = 0,
    add_batch: int = 65_536,
    use_gpu: str = "auto",
    seed: int = 0,
) -> faiss.Index:
    """An IVF index over ``vectors`` (one array or shards, ids 0..N-1 over them in order) whose inverted
    lists live in ``<index_path stem>.ivfdata`` beside ``index_path``, not in memory.

    faiss' recipe (faiss.contrib.ondisk, the "indexing 1G vectors" wiki page): the index is trained once
    on a seeded sample (as build_index trains it, on the GPU when there is one); every shard is added,
    in batches, to a copy of the trained index, written to a temporary file beside ``index_path`` and
    let go; ``merge_ondisk`` then merges the copies' inverted lists (memory-mapped) into one
    OnDiskInvertedLists file. The returned index refers to that file; ``save_index`` it to
    ``index_path``. Only an IVF index without a refine stage (",RFlat" keeps every vector in memory);
    a pre-transform (OPQ) is fine.
    """
    parts = check_parts("vectors", vectors)
    index_path = Path(index_path)
    if not on_disk_capable(factory, parts[0].shape[1], metric):
        raise ValueError(
            f"an on-disk index needs an IVF index without a refine stage, got {factory!r} "
            "(e.g. 'IVF4096,PQ48x8' or 'OPQ48,IVF4096,PQ48x8'; ',RFlat' keeps every vector in memory)"
        )
    index, work, gpu_keepalive = _trained_index(
        parts, factory, metric, train_sample, add_batch, use_gpu, seed, None
    )
    trained = _back_on_cpu(index, work, gpu_keepalive)
    n = sum(len(part) for part in parts)
    index_path.parent.mkdir(parents=True, exist_ok=True)
    ivfdata = index_path.with_suffix(IVFDATA_SUFFIX)
    ivfdata.unlink(missing_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix=".ivf-shards-", dir=index_path.parent) as tmp,
        Progress(f"{TAG}-add", total=n, unit="vectors") as progress,
    ):
        shard_files, offset = [], 0
        for number, part in enumerate(parts):
            shard_index = faiss.clone_index(trained)
            for start in range(0, len(part), add_batch):
                batch = np.ascontiguousarray(part[start : start + add_batch])
                ids = np.arange(offset + start, offset + start + len(batch), dtype=np.int64)
                shard_index.add_with_ids(batch, ids)
                progress.update(len(batch))
            offset += len(part)
            shard_files.append(str(Path(tmp) / f"shard-{number:05d}.index"))
            faiss.write_index(shard_index, shard_files[-1])
            del shard_index
        merge_ondisk(trained, shard_files, str(ivfdata))
    log(TAG, f"{len(parts)} shard(s) merged into the on-disk inverted lists {ivfdata}")
    return trained


def _hnsw_part(index: faiss.Index) -> faiss.IndexHNSW | None:
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexRefine):
        index = faiss.downcast_index(index.base_index)
    return index if isinstance(index, faiss.IndexHNSW) else None


def _to_gpu_for_build(index: faiss.Index) -> tuple[faiss.Index, list]:
    """(index to train and add on, objects to keep alive meanwhile) for a GPU build; see the module doc."""
    if isinstance(faiss.downcast_index(index), faiss.IndexFlat):
        return index, []
    resources = faiss.StandardGpuResources()
    try:
        return faiss.index_cpu_to_gpu(resources, 0, index), [resources]
    except RuntimeError:  # not implemented on the GPU (HNSW, refine wrappers): k-means there, rest on CPU
        ivf = ivf_part(index)
        if ivf is None:
            log(TAG, "this index type builds on the CPU only; FAISS GPU not used")
            return index, []
        clustering = faiss.index_cpu_to_gpu(resources, 0, faiss.IndexFlatL2(ivf.d))
        ivf.clustering_index = clustering
        log(TAG, "training the IVF k-means on the GPU; the rest of this index builds on the CPU")
        return index, [resources, clustering]


# ---------------------------------------------------------------------------------------------
# Searching


def set_search_params(
    index: faiss.Index,
    ef_search: int | None = None,
    nprobe: int | None = None,
    refine_k_factor: float | None = None,
) -> dict[str, float]:
    """Set the search-time knobs that apply to this index; returns those applied (saved with the index).

    ``ef_search``: HNSW beam width; ``nprobe``: IVF lists visited; ``refine_k_factor``: a refine index
    re-ranks k * refine_k_factor candidates of its base index with the exact vectors. An IVF index with
    an HNSW coarse quantizer (``IVF{n}_HNSW32``) searches its quantizer with a beam of at least
    ``nprobe`` (``quantizer_efSearch``), else it could not return the nprobe lists asked for.
    """
    quantizer_beam = max(ef_search or 0, nprobe or 0) or None
    wanted = {
        "efSearch": ef_search,
        "nprobe": nprobe,
        "k_factor_rf": refine_k_factor,
        "quantizer_efSearch": quantizer_beam,
    }
    applied: dict[str, float] = {}
    space = faiss.ParameterSpace()
    for name, value in wanted.items():
        if value is None:
            continue
        if value <= 0:
            raise ValueError(f"search parameter {name} must be > 0, got {value}")
        try:
            space.set_index_parameter(index, name, value)
        except RuntimeError:  # the parameter does not apply to this index type (e.g. nprobe on HNSW)
            continue
        applied[name] = value
    return applied


def search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top ``k``: (scores [Q, k] float32, ids [Q, k] int64); id -1 pads when the index has < k vectors."""
    queries = check_vectors("queries", queries, index.d)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    scores, ids = index.search(queries, k)
    return scores, ids


# ---------------------------------------------------------------------------------------------
# Searching a subset of the ids (a language, say), filtered inside FAISS by an IDSelector


def id_selector(ids: np.ndarray) -> faiss.IDSelector:
    """A FAISS selector that accepts exactly the ids ``ids`` (int64 [M], M >= 1); it copies them."""
    if not isinstance(ids, np.ndarray) or ids.ndim != 1 or ids.dtype != np.int64 or len(ids) == 0:
        shape, dtype = getattr(ids, "shape", None), getattr(ids, "dtype", None)
        raise ValueError(f"ids must be a non-empty 1-D int64 array, got shape {shape} and dtype {dtype}")
    return faiss.IDSelectorBatch(np.ascontiguousarray(ids))


def union_selector(selectors: list[faiss.IDSelector]) -> faiss.IDSelector:
    """A selector that accepts what any of ``selectors`` accepts (FAISS keeps the parts alive)."""
    if not selectors:
        raise ValueError("union_selector needs at least one selector")
    union = selectors[0]
    for selector in selectors[1:]:
        union = faiss.IDSelectorOr(union, selector)
    return union


def restricted_search_params(
    index: faiss.Index, selector: faiss.IDSelector, fraction: float
) -> tuple[faiss.Index, faiss.SearchParameters] | None:
    """(index to search, its SearchParameters) so that ``search`` sees only the ids ``selector`` accepts.

    ``fraction``: the share of the index's vectors the selector accepts, in (0, 1]. The index's own
    search knobs are kept (parameters passed to a search replace them), and raised where a filter
    would starve them: an IVF index visits ``nprobe / fraction`` lists (at most all), so about as many
    accepted candidates are scored as without a filter. HNSW filters while it walks its graph, which
    needs ``efSearch / fraction`` candidates; for a rare subset (``fraction`` < HNSW_FILTER_MIN_FRACTION)
    the exact scan of its stored vectors is about as fast, or far faster, and exact (measured on 200k
    clustered x 384, HNSW32, one thread, per query: the scan 1.7 / 3.8 / 12 / 17 ms at 0.1 / 1 / 5 / 10 %
    of the ids; the graph with efSearch 64 / fraction 2.6 s / 58 ms / 9.5 ms / 6 ms, recall@10 0.93-1).
    None when the index type takes no selector (the caller must over-fetch instead).
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexRefine):  # filter the base index; the refine step re-ranks its hits
        base = restricted_search_params(index.base_index, selector, fraction)
        if base is None:
            return None
        target, base_params = base
        if target.this != index.base_index.this:  # an HNSW base scans its exact vectors: nothing to refine
            return base
        return index, faiss.IndexRefineSearchParameters(
            k_factor=index.k_factor, base_index_params=base_params
        )
    if isinstance(index, faiss.IndexPreTransform):  # OPQ: the vectors are rotated, the ids are the same
        inner = restricted_search_params(index.index, selector, fraction)
        if inner is None or inner[0].this != index.index.this:
            return None
        return index, faiss.SearchParametersPreTransform(index_params=inner[1])
    if isinstance(index, faiss.IndexIVF):
        nprobe = min(index.nlist, math.ceil(index.nprobe / fraction))
        params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe, max_codes=index.max_codes)
        quantizer = faiss.downcast_index(index.quantizer)
        if isinstance(quantizer, faiss.IndexHNSW):  # its beam must reach the nprobe lists asked for
            params.quantizer_params = faiss.SearchParametersHNSW(
                efSearch=max(nprobe, quantizer.hnsw.efSearch)
            )
        return index, params
    if isinstance(index, faiss.IndexHNSW):
        storage = faiss.downcast_index(index.storage)
        if fraction < HNSW_FILTER_MIN_FRACTION and isinstance(storage, faiss.IndexFlat):
            return storage, faiss.SearchParameters(sel=selector)
        ef_search = min(index.ntotal, math.ceil(index.hnsw.efSearch / fraction))
        return index, faiss.SearchParametersHNSW(sel=selector, efSearch=max(ef_search, index.hnsw.efSearch))
    if isinstance(index, faiss.IndexFlat):
        return index, faiss.SearchParameters(sel=selector)
    return None


def restricted_search(
    index: faiss.Index, queries: np.ndarray, k: int, selector: faiss.IDSelector, fraction: float
) -> tuple[np.ndarray, np.ndarray] | None:
    """``search`` among the ids ``selector`` accepts (``fraction`` of the index; see
    restricted_search_params): (scores [Q, k], ids [Q, k], -1 padded), or None when the index type takes
    no selector."""
    queries = check_vectors("queries", queries, index.d)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    restricted = restricted_search_params(index, selector, fraction)
    if restricted is None:
        return None
    target, params = restricted
    scores, ids = target.search(queries, k, params=params)
    assert scores.shape == ids.shape == (len(queries), k)
    return scores, ids


def _blocks(parts: list[np.ndarray], block: int) -> Iterator[np.ndarray]:
    for vectors in parts:
        for start in range(0, len(vectors), block):
            yield np.ascontiguousarray(vectors[start : start + block])


def exact_search(
    vectors: Vectors, queries: np.ndarray, k: int, metric: str = "ip", block: int = EXACT_SEARCH_BLOCK
) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top ``k`` of ``queries`` [Q, D] over ``vectors`` [N, D] (or shards: their concatenation),
    streamed in blocks of rows."""
    parts = check_parts("vectors", vectors)
    queries = check_vectors("queries", queries, parts[0].shape[1])
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    scores, ids = knn_ground_truth(queries, _blocks(parts, block), k, metric_type(metric))
    return scores.astype(np.float32), ids.astype(np.int64)


def recall_at_k(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """Mean over queries of |approx top k ∩ exact top k| / k (ids, [Q, >=k] each)."""
    if approx_ids.ndim != 2 or exact_ids.ndim != 2 or len(approx_ids) != len(exact_ids):
        raise ValueError(f"need two [Q, k] id arrays, got shapes {approx_ids.shape} and {exact_ids.shape}")
    if k < 1 or approx_ids.shape[1] < k or exact_ids.shape[1] < k:
        raise ValueError(f"k={k} must be >= 1 and <= both widths {approx_ids.shape[1]}, {exact_ids.shape[1]}")
    if len(approx_ids) == 0:
        raise ValueError("no queries: recall is undefined")
    hits = [
        len(np.intersect1d(a[:k][a[:k] >= 0], e[:k][e[:k] >= 0]))
        for a, e in zip(approx_ids, exact_ids, strict=True)
    ]
    return float(np.mean(hits) / k)


@contextmanager
def omp_threads(threads: int | None) -> Iterator[None]:
    """FAISS' OpenMP thread count set to ``threads`` inside the block (None: unchanged), then restored."""
    before = faiss.omp_get_max_threads()
    if threads is not None:
        faiss.omp_set_num_threads(threads)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def measure_latency(
    index: faiss.Index,
    queries: np.ndarray,
    k: int = 10,
    warmup: int = 10,
    single_query_threads: int | None = 1,
) -> dict[str, float]:
    """FAISS search speed: one query per call (p50/p99 ms, qps) and all queries in one call (qps_batched).

    The one-query calls run with ``single_query_threads`` OpenMP threads (None = FAISS' current
    setting). One thread is how a search service should answer single queries (concurrent requests
    use the other cores): on one query, waking OpenMP workers costs more than it saves, and on a busy
    machine it costs whole scheduler slices (measured here: Flat over 100k vectors, p50 6.5 ms with 1
    thread, 40 ms with 2). The batched call uses all of FAISS' threads.
    """
    queries = check_vectors("queries", queries, index.d)
    if len(queries) == 0:
        raise ValueError("measure_latency needs at least one query")
    times = np.empty(len(queries))
    with omp_threads(single_query_threads):
        for row in range(min(warmup, len(queries))):
            index.search(queries[row : row + 1], k)
        for row in range(len(queries)):
            start = time.perf_counter()
            index.search(queries[row : row + 1], k)
            times[row] = time.perf_counter() - start
    batched = float("inf")
    for _ in range(BATCHED_REPEATS):  # the best of a few: one short call is at the mercy of the scheduler
        start = time.perf_counter()
        index.search(queries, k)
        batched = min(batched, time.perf_counter() - start)
    return {
        "p50_ms": float(np.percentile(times, 50) * 1000),
        "p99_ms": float(np.percentile(times, 99) * 1000),
        "mean_ms": float(times.mean() * 1000),
        "qps": float(len(queries) / times.sum()),
        "qps_batched": float(len(queries) / max(batched, 1e-9)),
        "n_queries": len(queries),
        "k": k,
        "single_query_threads": single_query_threads or faiss.omp_get_max_threads(),
        "batched_threads": faiss.omp_get_max_threads(),
    }


# ---------------------------------------------------------------------------------------------
# Synthetic data for tests and benchmarks


def clustered_unit_vectors(
    n: int, dim: int, n_clusters: int = 100, latent_dim: int = 16, noise: float = 0.05, seed: int = 0
) -> np.ndarray:
    """[n, dim] float32 unit vectors shaped like text embeddings: clusters on a low-dimensional subspace.

    Cluster centres and spreads live in a ``latent_dim`` space, mapped to ``dim`` by a random linear map,
    plus a little isotropic ``noise``. Uniform random vectors would be a poor stand-in: in high
    dimensions all their distances are nearly equal, and no ANN index does well on them.
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_clusters, latent_dim))
    latent = centres[rng.integers(0, n_clusters, size=n)] + 0.5 * rng.standard_normal((n, latent_dim))
    projection = rng.standard_normal((latent_dim, dim)) / math.sqrt(latent_dim)
    x = (latent @ projection + noise * rng.standard_normal((n, dim))).astype(np.float32)
    faiss.normalize_L2(x)
    return x


# ---------------------------------------------------------------------------------------------
# Files


def save_index(index: faiss.Index, path: str | Path) -> Path:
    """Write a CPU index with faiss.write_index (search parameters such as efSearch/nprobe included)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(path))
    return path


def load_index(path: str | Path, mmap: bool = True) -> faiss.Index:
    """faiss.read_index, memory-mapped by default (IO_FLAG_MMAP_IFC: the vectors, codes and inverted
    lists stay in the page cache, shared by every process serving the file, instead of being copied into
    each; a 1M-vector IVF-PQ,RFlat index is 1.6 GB of which 1.5 GB are its exact vectors). An on-disk IVF
    index (build_ivf_on_disk) maps its ``.ivfdata`` file from the index file's own directory
    (IO_FLAG_ONDISK_SAME_DIR), wherever the pair was copied to. A mapped file must not change while it is
    in use: bundle files never do (they are checked against bundle.json when loaded)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FAISS index file {path} does not exist")
    flags = faiss.IO_FLAG_ONDISK_SAME_DIR | (faiss.IO_FLAG_MMAP_IFC if mmap else 0)
    try:
        return faiss.read_index(str(path), flags)
    except RuntimeError:
        if not mmap:
            raise
        return faiss.read_index(str(path), faiss.IO_FLAG_ONDISK_SAME_DIR)  # a type FAISS cannot map
