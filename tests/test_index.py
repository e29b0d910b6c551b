"""semcode.index on clustered unit vectors: every index kind built, searched and measured against exact search."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import faiss
import numpy as np
import pytest

from semcode import index as faiss_index

N, DIM, N_QUERIES, K = 3000, 32, 200, 10

# (factory, search parameters, the least recall@10 it must reach on this data)
INDEX_KINDS = [
    ("Flat", {}, 1.0),
    ("HNSW16,Flat", {"ef_search": 64}, 0.95),
    ("IVF32,Flat", {"nprobe": 8}, 0.9),
    ("IVF32,PQ8x4,RFlat", {"nprobe": 8, "refine_k_factor": 8}, 0.9),
    # what choose_factory picks beyond exact_refine_max, scaled down
    ("OPQ8,IVF32_HNSW16,PQ8x4,Refine(SQ8)", {"nprobe": 8, "refine_k_factor": 8}, 0.85),
]
KNOB_NAMES = {"ef_search": "efSearch", "nprobe": "nprobe", "refine_k_factor": "k_factor_rf"}


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread() -> Iterator[None]:
    """One OpenMP thread: on this tiny data, waking FAISS' workers costs more than they save, ~10x more
    on a busy shared machine (k-means of the PQ training especially)."""
    with faiss_index.omp_threads(1):
        yield


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """Database [N, DIM] and held-out queries [N_QUERIES, DIM] drawn from the same clusters."""
    x = faiss_index.clustered_unit_vectors(N + N_QUERIES, DIM, n_clusters=30, seed=0)
    return x[:N].copy(), x[N:].copy()


@pytest.fixture(scope="module")
def exact(data: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    vectors, queries = data
    return faiss_index.exact_search(vectors, queries, K)


def thresholds(**overrides: object) -> SimpleNamespace:
    values = {
        "factory": "",
        "flat_max": 1000,
        "hnsw_max": 5000,
        "exact_refine_max": 20_000_000,
        "hnsw_m": 32,
        "ivf_nlist": 0,
        "pq_m": 0,
    }
    return SimpleNamespace(**{**values, **overrides})


def test_clustered_unit_vectors_are_unit_float32() -> None:
    x = faiss_index.clustered_unit_vectors(100, DIM, seed=1)
    assert x.shape == (100, DIM) and x.dtype == np.float32 and x.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


def test_exact_search_matches_numpy_in_blocks(data: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, queries = data
    scores, ids = faiss_index.exact_search(vectors, queries, K, block=700)  # several blocks, merged
    expected_ids = np.argsort(-(queries @ vectors.T), axis=1)[:, :K]
    assert scores.shape == ids.shape == (N_QUERIES, K) and ids.dtype == np.int64
    assert (ids == expected_ids).mean() > 0.999  # float ties may swap a pair
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ vectors.T, ids, axis=1), atol=1e-5)


@pytest.mark.parametrize(("factory", "params", "min_recall"), INDEX_KINDS)
def test_each_index_kind_builds_searches_and_recalls(
    data: tuple[np.ndarray, np.ndarray],
    exact: tuple[np.ndarray, np.ndarray],
    factory: str,
    params: dict,
    min_recall: float,
) -> None:
    vectors, queries = data
    index = faiss_index.build_index(vectors, factory, add_batch=1000, seed=0, ef_construction=40)
    assert index.ntotal == N and index.d == DIM and index.is_trained
    applied = faiss_index.set_search_params(index, **params)
    assert {KNOB_NAMES[name] for name in params} <= set(applied)  # each given knob applies to its kind
    if "_HNSW" in factory:  # the HNSW coarse quantizer searches with a beam of at least nprobe
        assert applied["quantizer_efSearch"] == params["nprobe"]
        assert (
            faiss.downcast_index(faiss.extract_index_ivf(index).quantizer).hnsw.efSearch == params["nprobe"]
        )

    scores, ids = faiss_index.search(index, queries, K)
    assert scores.shape == ids.shape == (N_QUERIES, K)
    assert (ids >= 0).all() and (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    # Scores are cosine similarities of the returned vectors (refine re-ranks with the exact ones).
    if "PQ" not in factory or "RFlat" in factory:
        expected = np.einsum("qd,qkd->qk", queries, vectors[ids])
        np.testing.assert_allclose(scores, expected, atol=1e-4)
    recall = faiss_index.recall_at_k(ids, exact[1], K)
    assert recall >= min_recall, f"{factory}: recall@{K} {recall}"

    threads = faiss.omp_get_max_threads()
    latency = faiss_index.measure_latency(index, queries[:20], K)
    assert faiss.omp_get_max_threads() == threads  # one thread for single queries, then restored
    assert set(latency) >= {"p50_ms", "p99_ms", "qps", "qps_batched"} and latency["single_query_threads"] == 1
    assert 0 < latency["p50_ms"] <= latency["p99_ms"] and latency["qps"] > 0


def test_describe_names_the_concrete_index(data: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, _ = data
    assert faiss_index.describe(faiss_index.new_index("HNSW8,Flat", DIM)) == "IndexHNSWFlat"
    refine = faiss_index.build_index(vectors, "IVF8,PQ4x4,RFlat")
    assert faiss_index.describe(refine) == "IndexRefineFlat(IndexIVFPQ)"


def test_ivf_build_is_reproducible_with_a_seed(data: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, queries = data
    runs = [faiss_index.build_index(vectors, "IVF16,Flat", train_sample=1000, seed=3) for _ in range(2)]
    results = [faiss_index.search(index, queries, K)[1] for index in runs]
    np.testing.assert_array_equal(results[0], results[1])


def test_choose_factory_by_thresholds() -> None:
    config = thresholds()
    assert faiss_index.choose_factory(1, 384, config) == "Flat"
    assert faiss_index.choose_factory(1000, 384, config) == "Flat"
    assert faiss_index.choose_factory(1001, 384, config) == "HNSW32,Flat"
    assert faiss_index.choose_factory(5000, 384, config) == "HNSW32,Flat"
    assert faiss_index.choose_factory(5001, 384, config) == "IVF64,PQ48x8,RFlat"  # <= N / 40 lists
    assert faiss_index.choose_factory(2_000_000, 384, config) == "IVF4096,PQ48x8,RFlat"
    assert faiss_index.choose_factory(20_000_000, 384, config) == "IVF16384,PQ48x8,RFlat"
    # beyond exact_refine_max: 8-bit re-ranking vectors, OPQ, an HNSW coarse quantizer; FAISS builds it
    big = faiss_index.choose_factory(100_000_000, 384, config)
    assert big == "OPQ48,IVF32768_HNSW32,PQ48x8,Refine(SQ8)"
    assert faiss_index.describe(faiss_index.new_index(big, 384)).startswith("IndexRefine")
    assert faiss_index.choose_factory(5001, 768, thresholds(ivf_nlist=100, pq_m=64)) == "IVF100,PQ64x8,RFlat"


def test_choose_factory_override_and_bad_values() -> None:
    assert faiss_index.choose_factory(10, 384, thresholds(factory="HNSW16,Flat")) == "HNSW16,Flat"
    with pytest.raises(ValueError, match="pq_m=7 must divide the embedding dimension 384"):
        faiss_index.choose_factory(10_000, 384, thresholds(pq_m=7))
    with pytest.raises(ValueError, match="n_vectors >= 1"):
        faiss_index.choose_factory(0, 384, thresholds())


def test_auto_sizes() -> None:
    assert faiss_index.auto_nlist(1_000_000) == 4096  # 4 * sqrt(1M) = 4000 -> a power of two
    assert faiss_index.auto_nlist(100_000) == 1024
    assert faiss_index.auto_nlist(100) == 2  # at least ~40 vectors per list
    assert (
        faiss_index.auto_pq_m(384) == 48
        and faiss_index.auto_pq_m(768) == 96
        and faiss_index.auto_pq_m(100) == 10
    )
    ivf = faiss_index.new_index("IVF1000,Flat", DIM)
    assert faiss_index.train_sample_size(10**7, ivf) == 40_000
    assert faiss_index.train_sample_size(5_000, ivf) == 5_000
    assert faiss_index.train_sample_size(10**8, faiss_index.new_index("IVF16384,Flat", DIM)) == 655_360
    # the memory cap never leaves fewer than 40 training vectors per list
    assert faiss_index.train_sample_size(10**8, faiss_index.new_index("IVF32768,Flat", DIM)) == 1_310_720
    assert faiss_index.train_sample_size(10**7, ivf, requested=123) == 123


@pytest.mark.parametrize(
    ("factory", "n", "message"),
    [
        ("NoSuchIndex", 1000, "FAISS rejects the index factory string 'NoSuchIndex'.*could not parse"),
        ("IVF8,PQ5", 1000, "FAISS rejects the index factory string 'IVF8,PQ5'.*multiple"),
        ("IVF64,Flat", 50, "64 inverted lists but the corpus has only 50 vectors"),
        ("IVF2,PQ4x8", 100, "256 centroids per PQ sub-quantizer but the corpus has only 100"),
    ],
)
def test_invalid_factory_is_named_in_the_error(factory: str, n: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        faiss_index.validate_factory(factory, DIM, n)


def test_build_rejects_a_bad_factory_before_work(data: tuple[np.ndarray, np.ndarray]) -> None:
    with pytest.raises(ValueError, match="'HNSW,,Flat'"):
        faiss_index.build_index(data[0], "HNSW,,Flat")


def test_shape_dtype_and_norm_checks(data: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, queries = data
    index = faiss_index.build_index(vectors[:100], "Flat")
    with pytest.raises(ValueError, match="dimension 16, expected 32"):
        faiss_index.search(index, queries[:, :16].copy(), K)
    with pytest.raises(ValueError, match="float32"):
        faiss_index.search(index, queries.astype(np.float64), K)
    with pytest.raises(ValueError, match="2-D"):
        faiss_index.search(index, queries[0], K)
    with pytest.raises(ValueError, match="k must be >= 1"):
        faiss_index.search(index, queries, 0)
    with pytest.raises(ValueError, match="not L2-normalised"):
        faiss_index.build_index(vectors * 2.0, "Flat")
    with pytest.raises(ValueError, match="dimension mismatch"):
        faiss_index.exact_search(vectors, queries[:, :16].copy(), K)
    with pytest.raises(ValueError, match="empty"):
        faiss_index.build_index(vectors[:0], "Flat")
    # L2 search takes vectors of any norm.
    assert faiss_index.build_index(vectors[:100] * 2.0, "Flat", metric="l2").ntotal == 100


def test_non_contiguous_input_is_accepted(data: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, queries = data
    index = faiss_index.build_index(vectors, "Flat")
    every_other = queries[::2]  # a strided view
    assert not every_other.flags.c_contiguous
    _, ids = faiss_index.search(index, every_other, K)
    np.testing.assert_array_equal(ids, faiss_index.search(index, np.ascontiguousarray(every_other), K)[1])


def test_recall_at_k_counts_the_overlap() -> None:
    exact_ids = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    approx_ids = np.array([[4, 3, 9, 1], [5, 6, 7, 8]])
    assert faiss_index.recall_at_k(approx_ids, exact_ids, 4) == pytest.approx((3 / 4 + 1) / 2)
    assert faiss_index.recall_at_k(approx_ids, exact_ids, 2) == pytest.approx((0 + 1) / 2)
    assert faiss_index.recall_at_k(np.array([[1, -1]]), np.array([[1, -1]]), 2) == 0.5  # -1 = no result
    with pytest.raises(ValueError, match="k=5"):
        faiss_index.recall_at_k(approx_ids, exact_ids, 5)


def test_save_load_round_trip_keeps_results_and_search_params(
    data: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    vectors, queries = data
    for factory, params in [("HNSW16,Flat", {"ef_search": 48}), ("IVF16,PQ8x4,RFlat", {"nprobe": 4})]:
        index = faiss_index.build_index(vectors, factory)
        faiss_index.set_search_params(index, **params, refine_k_factor=3)
        path = faiss_index.save_index(index, tmp_path / "sub" / "index.faiss")
        loaded = faiss_index.load_index(path)
        assert faiss_index.describe(loaded) == faiss_index.describe(index) and loaded.ntotal == N
        for got, want in zip(
            faiss_index.search(loaded, queries, K), faiss_index.search(index, queries, K), strict=True
        ):
            np.testing.assert_array_equal(got, want)
    assert faiss.extract_index_ivf(loaded).nprobe == 4 and loaded.k_factor == 3
    with pytest.raises(FileNotFoundError, match="does not exist"):
        faiss_index.load_index(tmp_path / "missing.faiss")


def test_set_search_params_skips_knobs_of_other_kinds() -> None:
    hnsw = faiss_index.new_index("HNSW8,Flat", DIM)
    assert faiss_index.set_search_params(hnsw, ef_search=99, nprobe=5, refine_k_factor=2) == {"efSearch": 99}
    assert faiss.downcast_index(hnsw).hnsw.efSearch == 99
    assert faiss_index.set_search_params(faiss_index.new_index("Flat", DIM), ef_search=10) == {}
    with pytest.raises(ValueError, match="must be > 0"):
        faiss_index.set_search_params(hnsw, ef_search=0)


@pytest.mark.skipif(faiss_index.gpu_available(), reason="this machine has a FAISS GPU")
def test_use_gpu_yes_without_a_gpu_is_an_error(data: tuple[np.ndarray, np.ndarray]) -> None:
    assert faiss_index.resolve_use_gpu("auto") is False
    with pytest.raises(ValueError, match="no GPU"):
        faiss_index.build_index(data[0], "Flat", use_gpu="yes")
    with pytest.raises(ValueError, match="use_gpu must be one of"):
        faiss_index.resolve_use_gpu("maybe")


@pytest.mark.gpu
@pytest.mark.parametrize("factory", ["IVF32,Flat", "IVF32,PQ8x8,RFlat", "HNSW16,Flat"])
def test_gpu_build_gives_a_cpu_index_with_the_same_recall(
    data: tuple[np.ndarray, np.ndarray], exact: tuple[np.ndarray, np.ndarray], factory: str, tmp_path: Path
) -> None:
    vectors, queries = data
    index = faiss_index.build_index(vectors, factory, use_gpu="yes")
    faiss_index.set_search_params(index, nprobe=8, ef_search=64, refine_k_factor=8)
    path = faiss_index.save_index(index, tmp_path / "index.faiss")  # only CPU indexes can be written
    _, ids = faiss_index.search(faiss_index.load_index(path), queries, K)
    assert faiss_index.recall_at_k(ids, exact[1], K) >= 0.9


# ---------------------------------------------------------------------------------------------
# Searching a subset of the ids (a selector inside FAISS)


@pytest.mark.parametrize(("factory", "params", "min_recall"), INDEX_KINDS)
@pytest.mark.parametrize("fraction", [0.5, 0.02])  # HNSW: the graph, then the exact scan of its storage
def test_restricted_search_returns_only_selected_ids_and_recalls(
    data: tuple[np.ndarray, np.ndarray], factory: str, params: dict, min_recall: float, fraction: float
) -> None:
    vectors, queries = data
    index = faiss_index.build_index(vectors, factory, add_batch=1000, seed=0, ef_construction=40)
    faiss_index.set_search_params(index, **params)
    subset = np.sort(np.random.default_rng(1).choice(N, int(N * fraction), replace=False)).astype(np.int64)
    selector = faiss_index.id_selector(subset)

    scores, ids = faiss_index.restricted_search(index, queries, K, selector, fraction)
    assert scores.shape == ids.shape == (N_QUERIES, K)
    assert (ids >= 0).all() and np.isin(ids, subset).all()  # k found, every one selected
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    _, exact_ids = faiss_index.exact_search(vectors[subset], queries, K)
    recall = faiss_index.recall_at_k(ids, subset[exact_ids], K)
    assert recall >= min_recall, f"{factory} over {fraction:.0%} of the ids: recall@{K} {recall}"
    # The index's own knobs are left as they were.
    applied = faiss_index.set_search_params(index, **params)
    assert {KNOB_NAMES[name]: value for name, value in params.items()}.items() <= applied.items()


def test_union_selector_and_index_types_without_selectors(data: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, queries = data
    index = faiss_index.build_index(vectors, "Flat")
    odd, low = np.arange(1, N, 2, dtype=np.int64), np.arange(0, 10, dtype=np.int64)
    union = faiss_index.union_selector([faiss_index.id_selector(odd), faiss_index.id_selector(low)])
    _, ids = faiss_index.restricted_search(index, queries, K, union, 0.5)
    assert ((ids % 2 == 1) | (ids < 10)).all()
    # A pre-transformed index (OPQ, L2norm) filters the index under its transform.
    wrapped = faiss_index.build_index(vectors, "L2norm,Flat")
    _, ids = faiss_index.restricted_search(wrapped, queries, K, union, 0.5)
    assert ((ids % 2 == 1) | (ids < 10)).all()
    # An index type that takes no selector: None, so the caller over-fetches.
    assert faiss_index.restricted_search_params(faiss.IndexLSH(DIM, 16), union, 0.5) is None
    with pytest.raises(ValueError, match="non-empty 1-D int64"):
        faiss_index.id_selector(np.array([1, 2], dtype=np.int32))
    with pytest.raises(ValueError, match="non-empty 1-D int64"):
        faiss_index.id_selector(np.array([], dtype=np.int64))
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
        faiss_index.restricted_search(index, queries, K, union, 0.0)
    with pytest.raises(ValueError, match="at least one selector"):
        faiss_index.union_selector([])


@pytest.mark.parametrize(("factory", "params", "least"), INDEX_KINDS, ids=[kind[0] for kind in INDEX_KINDS])
def test_an_index_built_from_shards_is_the_index_of_their_concatenation(
    data: tuple[np.ndarray, np.ndarray],
    exact: tuple[np.ndarray, np.ndarray],
    factory: str,
    params: dict,
    least: float,
) -> None:
    """Shards of uneven sizes (memmaps, as build_index reads embed-corpus outputs): ids run over them in
    order, the training sample is the same rows, so Flat and IVF give the very same results and HNSW
    (whose graph depends on insertion order and threads) the same recall within 0.01."""
    vectors, queries = data
    _, exact_ids = exact
    parts = [vectors[:1100], vectors[1100:1200], vectors[1200:]]
    whole = faiss_index.build_index(vectors, factory, use_gpu="no", seed=3)
    sharded = faiss_index.build_index(parts, factory, use_gpu="no", seed=3)
    recalls = []
    for index in (whole, sharded):
        faiss_index.set_search_params(index, **params)
        recalls.append(faiss_index.recall_at_k(faiss_index.search(index, queries, K)[1], exact_ids, K))
    assert abs(recalls[0] - recalls[1]) <= 0.01 and min(recalls) >= least, recalls
    if not factory.startswith("HNSW"):
        np.testing.assert_array_equal(
            faiss_index.search(whole, queries, K)[1], faiss_index.search(sharded, queries, K)[1]
        )
    np.testing.assert_array_equal(faiss_index.exact_search(parts, queries, K)[1], exact_ids)


def test_on_disk_ivf_merged_from_shards_maps_its_lists_and_matches_in_memory(
    data: tuple[np.ndarray, np.ndarray], exact: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    vectors, queries = data
    _, exact_ids = exact
    parts = [vectors[:1000], vectors[1000:2500], vectors[2500:]]
    factory = "IVF32,PQ8x4"
    in_memory = faiss_index.build_index(vectors, factory, use_gpu="no", seed=1)
    on_disk = faiss_index.build_ivf_on_disk(parts, factory, tmp_path / "index.faiss", use_gpu="no", seed=1)
    faiss_index.save_index(on_disk, tmp_path / "index.faiss")
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "index.faiss",
        "index.ivfdata",
    ]  # no shards left
    (tmp_path / "copied").mkdir()
    for name in ("index.faiss", "index.ivfdata"):
        (tmp_path / name).rename(tmp_path / "copied" / name)
    loaded = faiss_index.load_index(tmp_path / "copied" / "index.faiss")
    assert loaded.ntotal == N
    invlists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(loaded).invlists)
    assert isinstance(invlists, faiss.OnDiskInvertedLists)
    recalls = []
    for index in (in_memory, loaded):
        faiss_index.set_search_params(index, nprobe=8)
        recalls.append(faiss_index.recall_at_k(faiss_index.search(index, queries, K)[1], exact_ids, K))
    assert abs(recalls[0] - recalls[1]) <= 0.01, recalls
    with pytest.raises(ValueError, match="needs an IVF index without a refine stage"):
        faiss_index.build_ivf_on_disk(parts, "IVF32,PQ8x4,RFlat", tmp_path / "refined.faiss", use_gpu="no")


def test_shards_of_different_dimensions_are_refused(data: tuple[np.ndarray, np.ndarray]) -> None:
    vectors, _ = data
    other = faiss_index.clustered_unit_vectors(50, DIM // 2, seed=5)
    with pytest.raises(ValueError, match=r"different dimensions \[16, 32\]"):
        faiss_index.build_index([vectors[:100], other], "Flat", use_gpu="no")
    with pytest.raises(ValueError, match="empty list of shards"):
        faiss_index.build_index([], "Flat", use_gpu="no")
