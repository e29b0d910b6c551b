"""Issue 33's update benchmark: a slice of real code (this machine's site-packages) indexed with
``semcode index``, 1% of its files changed, then ``semcode index --update`` timed against the full index;
the updated bundle must hold what a rebuild of the changed code holds (rows, vectors, search results).

    .venv/bin/python bench/bench_index_update.py --functions 50000 --work /tmp/bench-index-update

1. The corpus: whole top-level packages of site-packages (in a seeded order), their ``.py`` files copied
   into ``<work>/corpus/``, until about ``--functions`` definitions (counted with a regex; the index's own
   count is reported).
2. The encoder: the zero-shot start (all-MiniLM-L6-v2, int8 ONNX), exported once by indexing a one-file
   folder; the timed runs borrow it from that bundle, so no run pays the export.
3. Full index of the corpus (timed), then ``--changed-share`` of its files with definitions changed (seeded):
   each one's first ``return`` gets a second space (that definition's document changes) and a new function
   is appended (one more definition); then ``--update`` (timed), then a rebuild of the changed corpus (timed).
4. Checks: the updated and the rebuilt index_meta.parquet are equal, their vectors byte-identical, and the
   top 10 of sampled doc-comment queries (the query tower, exact search) the same ids in both.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from semcode.contract import INDEX_FILE, META_FILE
from semcode.data.sources.code import site_packages_dirs
from semcode.index import exact_search, load_index
from semcode.stages import index as stage

DEFINITION = re.compile(rb"^\s*(?:async\s+)?def\s", re.MULTILINE)


def copy_slice(target: Path, functions: int, seed: int) -> tuple[list[str], int]:
    """Copy whole top-level packages of site-packages (seeded order) into ``target`` until about
    ``functions`` definitions; returns (the packages, the definitions counted)."""
    root = Path(site_packages_dirs()[0])
    packages = sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir()
        and not p.name.endswith((".dist-info", ".egg-info", ".data"))
        and p.name != "__pycache__"
    )
    random.Random(seed).shuffle(packages)
    chosen, counted = [], 0
    for package in packages:
        files = [f for f in (root / package).rglob("*.py") if "__pycache__" not in f.parts]
        found = sum(len(DEFINITION.findall(f.read_bytes())) for f in files)
        if not found or counted + found > functions * 1.2:
            continue
        for file in files:
            copy = target / file.relative_to(root)
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, copy)
        chosen.append(package)
        counted += found
        if counted >= functions:
            break
    return chosen, counted


def change_files(corpus: Path, share: float, seed: int) -> list[str]:
    """Change ``share`` of the files that hold a ``return`` (seeded): the first ``return`` gets a second
    space, and a new function is appended; returns their paths."""
    files = sorted(
        f
        for f in corpus.rglob("*.py")
        if b"\n" in f.read_bytes() and re.search(rb"\breturn ", f.read_bytes())
    )
    chosen = random.Random(seed).sample(files, max(1, math.ceil(share * len(files))))
    for number, file in enumerate(chosen):
        text = file.read_text(encoding="utf-8", errors="surrogateescape")
        text = re.sub(r"\breturn ", "return  ", text, count=1)
        text += f"\n\ndef bench_added_{number}(value):\n    return value + {number}\n"
        file.write_text(text, encoding="utf-8", errors="surrogateescape")
    return [str(f.relative_to(corpus)) for f in chosen]


def timed(function, *args) -> tuple[dict, float]:
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def same_results(a: Path, b: Path, queries: int, seed: int) -> dict:
    """Row, vector and top-10 comparison of two bundles over the same code."""
    from semcode.serve.searcher import Searcher

    meta_a, meta_b = pq.read_table(a / META_FILE), pq.read_table(b / META_FILE)
    index_a, index_b = load_index(a / INDEX_FILE), load_index(b / INDEX_FILE)
    vectors_a, vectors_b = index_a.reconstruct_n(0, index_a.ntotal), index_b.reconstruct_n(0, index_b.ntotal)
    docs = [doc for doc in meta_a["doc"].to_pylist() if doc]
    sample = random.Random(seed).sample(docs, min(queries, len(docs)))
    query_vectors = Searcher(a).encode(sample) if sample else np.zeros((0, index_a.d), np.float32)
    _, ids_a = exact_search([vectors_a], query_vectors, 10)
    _, ids_b = exact_search([vectors_b], query_vectors, 10)
    return {
        "meta_equal": meta_a.equals(meta_b),
        "vectors_byte_identical": vectors_a.shape == vectors_b.shape
        and vectors_a.tobytes() == vectors_b.tobytes(),
        "queries": len(sample),
        "top10_identical": bool(np.array_equal(ids_a, ids_b)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--functions", type=int, default=50_000, help="definitions in the slice (about)")
    parser.add_argument("--changed-share", type=float, default=0.01, help="share of the files changed")
    parser.add_argument("--work", default="/tmp/bench-index-update", help="scratch folder (emptied)")
    parser.add_argument("--queries", type=int, default=200, help="doc-comment queries compared")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    corpus = work / "corpus"
    packages, counted = copy_slice(corpus, args.functions, args.seed)
    files = len(list(corpus.rglob("*.py")))
    print(f"slice: {len(packages)} packages, {files} files, ~{counted} definitions", file=sys.stderr)

    seed_dir = work / "seed"  # the zero-shot encoder, exported once into a bundle the runs borrow it from
    (seed_dir / "one.py").parent.mkdir(parents=True)
    (seed_dir / "one.py").write_text("def one():\n    return 1\n")
    stage.run(stage.IndexConfig(), "minilm", [f"dir:{seed_dir}"], work / "encoder")
    config = stage.IndexConfig()

    full, full_seconds = timed(stage.run, config, str(work / "encoder"), [f"dir:{corpus}"], work / "index")
    changed = change_files(corpus, args.changed_share, args.seed)
    updated, update_seconds = timed(stage.update, work / "index")
    _, rebuild_seconds = timed(stage.run, config, str(work / "encoder"), [f"dir:{corpus}"], work / "rebuilt")
    comparison = same_results(work / "index", work / "rebuilt", args.queries, args.seed)

    results = {
        "packages": packages,
        "files": files,
        "definitions": full["index"]["ntotal"],
        "index": full["index"]["factory"],
        "files_changed": len(changed),
        "full_seconds": round(full_seconds, 1),
        "update_seconds": round(update_seconds, 1),
        "rebuild_seconds": round(rebuild_seconds, 1),
        "update_share_of_full": round(update_seconds / full_seconds, 4),
        "update": updated["source"]["update"],
        "update_sources": updated["source"]["sources"],
        "recall@10": {
            "full": full["metrics"]["index_recall@10"],
            "updated": updated["metrics"]["index_recall@10"],
        },
        **comparison,
    }
    (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    done = results["update"]
    print(
        "| definitions | files | files changed | full index s | update s | update / full | embedded | "
        "unchanged | rebuild == update |\n|---|---|---|---|---|---|---|---|---|\n"
        f"| {results['definitions']:,} | {files:,} | {len(changed)} | {results['full_seconds']} | "
        f"{results['update_seconds']} | {results['update_share_of_full']:.1%} | {done['embedded']} | "
        f"{done['unchanged']:,} | rows {comparison['meta_equal']}, vectors {comparison['vectors_byte_identical']}, "
        f"top-10 {comparison['top10_identical']} |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
