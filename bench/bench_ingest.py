"""Ingest throughput (files/s, pairs/s) on this interpreter's site-packages (and stdlib).

Command (recorded in bench/RESULTS.md):

    .venv/bin/python bench/bench_ingest.py --source python:site-packages --workers 2

Runs the real ingest stage into a temporary directory and prints one JSON object: files, pairs,
corpus rows, wall and CPU seconds, files/s and pairs/s (wall), and the stage's own phase timings.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time

from semcode.stages.ingest import IngestConfig, run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--source", action="append", default=None, help="source spec (default: site-packages)"
    )
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    sources = tuple(args.source or ["python:site-packages"])
    config = IngestConfig(sources=sources, workers=args.workers)
    with tempfile.TemporaryDirectory(prefix="semcode-bench-ingest-") as out:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        manifest = run(config, out)
        wall = time.perf_counter() - wall0
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = time.process_time() - cpu0 + children.ru_utime + children.ru_stime
    files = sum(s.get("files_seen", 0) for s in manifest["sources"].values())
    pairs = sum(manifest["split"]["sizes"].values())
    result = {
        "sources": list(sources),
        "workers": args.workers,
        "files": files,
        "pairs": pairs,
        "corpus_rows": manifest["totals"].get("corpus_rows"),
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "files_per_second": round(files / wall, 1),
        "pairs_per_second": round(pairs / wall, 1),
        "stage_throughput": manifest.get("throughput"),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
