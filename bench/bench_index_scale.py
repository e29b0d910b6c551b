"""FAISS at corpus scale: build time, memory, disk, recall@10 and latency of the candidate indexes at 1M vectors.

    .venv/bin/python bench/bench_index_scale.py                       # 1M x 384, the default candidates
    .venv/bin/python bench/bench_index_scale.py --quick               # smoke run: 20k vectors, 200 queries
    .venv/bin/python bench/bench_index_scale.py --n 250000 --factory HNSW32,Flat
    .venv/bin/python bench/bench_index_scale.py --hnsw-n 250000       # HNSW on the first 250k vectors only

The corpus is synthetic (semcode.index.clustered_unit_vectors, seeded: 1,000 clusters on a 32-dimensional
subspace, as bench/bench_index.py), the queries held-out draws from the same distribution (near the data,
never in it), the ground truth exact search over the same vectors (semcode.index.exact_search). The
default candidates are what ``choose_factory`` (build_index's defaults) picks at N, "HNSW32,Flat", the
large branch of choose_factory ("IVF{nlist},PQ{m}x8,RFlat": IVF-PQ re-ranked with the exact vectors),
the same with an OPQ rotation first, the same re-ranked with 8-bit scalar-quantised vectors
("Refine(SQ8)": a quarter of the refine memory) and "Flat" as the exact baseline. Every index is built
with semcode.index.build_index (seeded training sample, added in batches), written to disk, freed, and
read back, so the searched index is the one a service would load.

Per factory: build seconds (train + add, and the training part alone), the process' peak RSS over the
build and its RSS afterwards above what it held before (Linux: /proc/self/status, VmHWM reset through
/proc/self/clear_refs), the on-disk size (bytes per vector and GB per million vectors), the seconds to
read it back, and for every search setting recall@10 vs exact and semcode.index.measure_latency: p50/p99
ms of one query per call on ONE thread, and queries/s of all queries in one call on ``--threads``.

The development machine is shared: before the data, the ground truth and every factory the script waits
while ``--quiet-file`` exists (another job's wall-time measurement), and it records the load average per row.
Prints markdown tables on stderr and one JSON object on stdout (``--out`` also writes it to a file).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import TextIO

import faiss
import numpy as np

from semcode import index as faiss_index

K = 10
GB = 1e9


def log(message: str) -> None:
    print(f"[bench-index-scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def wait_quiet(path: str) -> None:
    """Wait while ``path`` exists (another job measuring wall times on this machine)."""
    if not path or not os.path.exists(path):
        return
    log(f"{path} exists: waiting")
    started = time.monotonic()
    while os.path.exists(path):
        time.sleep(30)
    log(f"{path} gone after {time.monotonic() - started:.0f} s: going on")


def proc_status(field: str) -> int:
    """A VmRSS/VmHWM-style field of /proc/self/status in bytes (0 where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: '5' into clear_refs); False where that is refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class Tee(io.TextIOBase):
    """A text stream that writes through to ``stream`` and keeps a copy (build_index's log lines)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self.parts = stream, []

    def write(self, text: str) -> int:
        self.parts.append(text)
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()

    def text(self) -> str:
        return "".join(self.parts)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_simd() -> str:
    try:
        flags = next(
            line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
        ).split()
    except (OSError, StopIteration):
        return ""
    return " ".join(flag for flag in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16") if flag in flags)


# ---------------------------------------------------------------------------------------------
# The candidates


def default_config() -> object:
    """build_index's config with its defaults (the fields choose_factory reads, and the search knobs)."""
    try:
        from semcode.corpus import BuildIndexConfig

        return BuildIndexConfig()
    except Exception as error:  # noqa: BLE001 - the library is being edited elsewhere: say so, use its last defaults
        log(f"semcode.corpus not importable ({error!r}); using its defaults as of 2026-12-03")
        return SimpleNamespace(
            factory="",
            flat_max=50_000,
            hnsw_max=1_000_000,
            hnsw_m=32,
            ivf_nlist=0,
            pq_m=0,
            ef_construction=80,
            ef_search=64,
            nprobe=32,
            refine_k_factor=8.0,
        )


def candidates(n: int, dim: int, config: object) -> list[tuple[str, str]]:
    """(label, factory) of the default candidates at ``n`` vectors, duplicates dropped."""
    chosen = faiss_index.choose_factory(n, dim, config)
    large = faiss_index.choose_factory(
        n, dim, SimpleNamespace(**{**vars_of(config), "factory": "", "flat_max": 0, "hnsw_max": 0})
    )
    ivf_pq = large.removesuffix(",RFlat")  # "IVF{nlist},PQ{m}x8"
    pq_m = int(ivf_pq.split(",PQ")[1].split("x")[0])
    rows = [
        ("chosen", chosen),
        ("hnsw", f"HNSW{config.hnsw_m},Flat"),
        ("ivfpq-rflat", large),
        ("ivfpq-rsq8", f"{ivf_pq},Refine(SQ8)"),
        ("flat", "Flat"),
        ("opq-ivfpq-rflat", f"OPQ{pq_m},{large}"),
    ]
    seen: set[str] = set()
    unique = []
    for label, factory in rows:
        if factory not in seen:
            seen.add(factory)
            unique.append((label, factory))
    return unique


def vars_of(config: object) -> dict:
    names = ("factory", "flat_max", "hnsw_max", "hnsw_m", "ivf_nlist", "pq_m")
    return {name: getattr(config, name) for name in names}


def search_settings(factory: str, args: argparse.Namespace) -> list[dict]:
    """The search knobs to sweep for ``factory``; the first is build_index's default."""
    if factory.startswith("HNSW"):
        return [{"ef_search": ef} for ef in args.ef_search]
    if "IVF" in factory:
        refined = "RFlat" in factory or "Refine(" in factory
        factors = args.refine_k_factor if refined else [None]
        settings = [{"nprobe": args.nprobe[0], "refine_k_factor": factors[0]}]
        settings += [{"nprobe": p, "refine_k_factor": factors[0]} for p in args.nprobe[1:]]
        settings += [{"nprobe": args.nprobe[0], "refine_k_factor": f} for f in factors[1:]]
        return [{name: value for name, value in s.items() if value is not None} for s in settings]
    return [{}]


# ---------------------------------------------------------------------------------------------
# One factory


def bench_factory(
    label: str,
    factory: str,
    vectors: np.ndarray,
    queries: np.ndarray,
    exact_ids: np.ndarray,
    args: argparse.Namespace,
    work: Path,
) -> dict:
    n = len(vectors)
    rss_before = proc_status("VmRSS")
    peak_tracked = reset_peak_rss()
    load_before = load_average()
    log(f"{label}: building {factory!r} over {n:,} vectors (load average {load_before})")
    started = time.perf_counter()
    captured = Tee(sys.stderr)
    with contextlib.redirect_stderr(captured):
        index = faiss_index.build_index(
            vectors,
            factory,
            seed=args.seed,
            ef_construction=args.ef_construction,
            use_gpu="no",
            train_sample=args.train_sample,
        )
    build_seconds = time.perf_counter() - started
    trained = re.search(r"trained in ([0-9.]+)s", captured.text())  # build_index's own log line
    train_seconds = float(trained.group(1)) if trained else None
    peak_rss = proc_status("VmHWM") if peak_tracked else 0
    rss_after = proc_status("VmRSS")
    path = work / f"{label}.faiss"
    faiss_index.save_index(index, path)
    disk_bytes = path.stat().st_size
    kind = faiss_index.describe(index)
    del index
    started = time.perf_counter()
    index = faiss_index.load_index(path)
    load_seconds = time.perf_counter() - started
    log(
        f"{label}: built in {build_seconds:.1f} s, {disk_bytes / n:.0f} bytes/vector on disk, "
        f"RSS +{(rss_after - rss_before) / GB:.2f} GB (peak +{(peak_rss - rss_before) / GB:.2f} GB)"
    )

    rows = []
    latency_queries = queries[: args.flat_queries] if factory == "Flat" else queries
    for params in search_settings(factory, args):
        faiss_index.set_search_params(index, **params)
        _, ids = faiss_index.search(index, queries, K)
        latency = faiss_index.measure_latency(index, latency_queries, K, single_query_threads=1)
        row = {
            "label": label,
            "factory": factory,
            "index_type": kind,
            "params": params,
            "recall@10": round(faiss_index.recall_at_k(ids, exact_ids, K), 4),
            "p50_ms": round(latency["p50_ms"], 3),
            "p99_ms": round(latency["p99_ms"], 3),
            "qps_single": round(latency["qps"], 1),
            "qps_batched": round(latency["qps_batched"], 1),
            "latency_queries": latency["n_queries"],
            "batched_threads": latency["batched_threads"],
            "load_average": load_average(),
        }
        log(json.dumps(row))
        rows.append(row)
    del index
    path.unlink()
    return {
        "label": label,
        "factory": factory,
        "index_type": kind,
        "n": n,
        "build_seconds": round(build_seconds, 1),
        "train_seconds": None if train_seconds is None else round(train_seconds, 1),
        "disk_bytes": disk_bytes,
        "bytes_per_vector": round(disk_bytes / n, 1),
        "disk_gb_per_million": round(disk_bytes / n * 1e6 / GB, 3),
        "rss_added_gb": round((rss_after - rss_before) / GB, 3),
        "peak_rss_added_gb": round((peak_rss - rss_before) / GB, 3) if peak_tracked else None,
        "peak_rss_gb": round(peak_rss / GB, 3) if peak_tracked else None,
        "load_seconds": round(load_seconds, 2),
        "load_average_build": load_before,
        "searches": rows,
    }


# ---------------------------------------------------------------------------------------------
# Output


def fmt_params(params: dict) -> str:
    names = {"ef_search": "efSearch", "nprobe": "nprobe", "refine_k_factor": "k_factor"}
    return ", ".join(f"{names[name]}={value:g}" for name, value in params.items()) or "-"


def markdown_tables(result: dict) -> str:
    header = (
        "| index | N | search | recall@10 | p50 ms (1 thr) | p99 ms (1 thr) | q/s batched | build s "
        "(train s) | bytes/vector (disk) | GB per 1M | RSS added GB (peak) |"
    )
    lines = [header, "|---" * (header.count("|") - 1) + "|"]
    sweep = [
        "| index | search | recall@10 | p50 ms | p99 ms | q/s (1/call) | q/s batched |",
        "|---" * 7 + "|",
    ]
    for f in result["factories"]:
        first = f["searches"][0]
        train = f" ({f['train_seconds']:.0f})" if f["train_seconds"] is not None else ""
        peak = f" ({f['peak_rss_added_gb']:.2f})" if f["peak_rss_added_gb"] is not None else ""
        lines.append(
            f"| {f['factory']} | {f['n']:,} | {fmt_params(first['params'])} | {first['recall@10']:.3f} "
            f"| {first['p50_ms']:.3f} | {first['p99_ms']:.3f} | {first['qps_batched']:,.0f} "
            f"| {f['build_seconds']:.0f}{train} | {f['bytes_per_vector']:,.0f} | {f['disk_gb_per_million']:.2f} "
            f"| {f['rss_added_gb']:.2f}{peak} |"
        )
        for row in f["searches"]:
            sweep.append(
                f"| {f['factory']} | {fmt_params(row['params'])} | {row['recall@10']:.3f} | {row['p50_ms']:.3f} "
                f"| {row['p99_ms']:.3f} | {row['qps_single']:,.0f} | {row['qps_batched']:,.0f} |"
            )
    return "\n".join(lines) + "\n\n" + "\n".join(sweep)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1_000_000, help="corpus vectors")
    parser.add_argument("--dim", type=int, default=384, help="vector dimension (all-MiniLM-L6-v2: 384)")
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries")
    parser.add_argument("--clusters", type=int, default=1000, help="clusters of the synthetic corpus")
    parser.add_argument("--latent-dim", type=int, default=32, help="dimension of the clusters' subspace")
    parser.add_argument(
        "--factory",
        action="append",
        default=None,
        help="FAISS factory string, repeatable (default: the candidates named in the module doc)",
    )
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        help="leave out a default candidate (repeatable): chosen, hnsw, ivfpq-rflat, ivfpq-rsq8, flat, opq-ivfpq-rflat",
    )
    parser.add_argument(
        "--hnsw-n",
        type=int,
        default=0,
        help="build HNSW factories over the first this many vectors only (0 = all N)",
    )
    parser.add_argument("--threads", type=int, default=2, help="FAISS OpenMP threads (build, batched search)")
    parser.add_argument(
        "--ef-construction", type=int, default=0, help="HNSW efConstruction (0 = build_index's)"
    )
    parser.add_argument("--ef-search", type=int, action="append", default=None, help="default: 64, 128, 256")
    parser.add_argument("--nprobe", type=int, action="append", default=None, help="default: 32, 16, 64, 128")
    parser.add_argument(
        "--refine-k-factor", type=float, action="append", default=None, help="default: 8, 1, 4, 16"
    )
    parser.add_argument(
        "--train-sample", type=int, default=0, help="IVF/PQ training vectors (0 = build_index's)"
    )
    parser.add_argument("--flat-queries", type=int, default=200, help="one-by-one queries timed on Flat")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 20k vectors, 200 queries")
    parser.add_argument("--quiet-file", default="/tmp/semcode-quiet", help="wait while this file exists")
    parser.add_argument("--work", default="", help="folder for the index files (default: a temporary one)")
    parser.add_argument("--out", default=None, help="also write the JSON result to this file")
    args = parser.parse_args(argv)
    wait_quiet(args.quiet_file)
    config = default_config()
    if args.quick:
        args.n, args.queries, args.flat_queries = min(args.n, 20_000), min(args.queries, 200), 50
    args.ef_construction = args.ef_construction or config.ef_construction
    args.ef_search = args.ef_search or [config.ef_search] + sorted({128, 256} - {config.ef_search})
    args.nprobe = args.nprobe or [config.nprobe, 16, 64, 128]
    args.refine_k_factor = args.refine_k_factor or [config.refine_k_factor, 1.0, 4.0, 16.0]
    faiss.omp_set_num_threads(args.threads)

    wait_quiet(args.quiet_file)
    load_before = load_average()
    started_all = time.perf_counter()
    log(f"generating {args.n:,} + {args.queries:,} vectors of dim {args.dim}")
    data = faiss_index.clustered_unit_vectors(
        args.n + args.queries, args.dim, n_clusters=args.clusters, latent_dim=args.latent_dim, seed=args.seed
    )
    vectors, queries = data[: args.n], np.ascontiguousarray(data[args.n :])
    plan = [(f"factory{i}", f) for i, f in enumerate(args.factory)] if args.factory else None
    plan = plan or [(label, f) for label, f in candidates(args.n, args.dim, config) if label not in args.skip]
    log(f"candidates: {plan}")

    ground_truth: dict[int, tuple[np.ndarray, float]] = {}

    def exact_ids_for(n: int) -> np.ndarray:
        if n not in ground_truth:
            wait_quiet(args.quiet_file)
            started = time.perf_counter()
            _, ids = faiss_index.exact_search(vectors[:n], queries, K)
            ground_truth[n] = (ids, time.perf_counter() - started)
            log(f"exact top-{K} over {n:,} vectors: {ground_truth[n][1]:.1f} s")
        return ground_truth[n][0]

    with tempfile.TemporaryDirectory(dir=args.work or None, prefix="bench-index-scale-") as tmp:
        results = []
        for label, factory in plan:
            n = args.hnsw_n if factory.startswith("HNSW") and 0 < args.hnsw_n < args.n else args.n
            exact_ids = exact_ids_for(n)
            wait_quiet(args.quiet_file)
            results.append(bench_factory(label, factory, vectors[:n], queries, exact_ids, args, Path(tmp)))
            if args.out:  # what is done so far, should a later factory not finish
                Path(args.out).write_text(
                    json.dumps({"partial": True, "factories": results}, indent=2) + "\n"
                )

    result = {
        "n": args.n,
        "dim": args.dim,
        "queries": args.queries,
        "k": K,
        "data": (
            f"clustered_unit_vectors(clusters={args.clusters}, latent_dim={args.latent_dim}, seed={args.seed}); "
            "queries: the next draws of the same distribution"
        ),
        "chosen_by_choose_factory": faiss_index.choose_factory(args.n, args.dim, config),
        "exact_search_seconds": {str(n): round(s, 1) for n, (_, s) in ground_truth.items()},
        "faiss_version": faiss.__version__,
        "faiss_simd": faiss.get_compile_options(),
        "faiss_threads": args.threads,
        "single_query_threads": 1,
        "machine": {
            "cpu": cpu_model(),
            "simd": cpu_simd(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "seconds": round(time.perf_counter() - started_all, 1),
        "factories": results,
    }
    print(markdown_tables(result), file=sys.stderr)
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
