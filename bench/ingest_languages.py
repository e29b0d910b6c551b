"""Ingest throughput per language: files/s and functions/s of ``dir:`` extraction on real repositories.

    mkdir -p /tmp/polyglot && for f in /work/shared/benchmarks/polyglot/*.tar.gz; do tar xzf $f -C /tmp/polyglot; done
    .venv/bin/python bench/ingest_languages.py /tmp/polyglot            # every repository in the folder
    .venv/bin/python bench/ingest_languages.py /tmp/polyglot --samples 3  # also print 3 pairs per repo

Each sub-folder is read as one ``dir:`` source with the default rules (the ingest stage's
``read_source``, one process: ``--workers`` to compare), and ``python:stdlib`` is measured beside
them. The polyglot snapshots are for speed and sanity checks only, never for training. Prints a
markdown table: language, repo, files, functions, pairs, files/s, functions/s (wall time of the
read, best of ``--repeat`` runs) and the rejects per repository.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from semcode.data.sources import read_source
from semcode.data.sources.rows import ExtractOptions
from semcode.data.sources.spec import parse_spec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="folder with one sub-folder per repository (e.g. /tmp/polyglot)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=2, help="runs per repository; the fastest counts")
    parser.add_argument("--samples", type=int, default=0, help="pairs to print per repository")
    parser.add_argument("--no-stdlib", action="store_true", help="leave python:stdlib out")
    args = parser.parse_args(argv)

    specs = [f"dir:{path}" for path in sorted(Path(args.root).iterdir()) if path.is_dir()]
    if not args.no_stdlib:
        specs.append("python:stdlib")
    options = ExtractOptions(workers=args.workers)
    rows, rejects, samples = [], [], []
    for text in specs:
        spec = parse_spec(text)
        results = [read_source(spec, options) for _ in range(max(args.repeat, 1))]
        result = min(results, key=lambda r: r.stats.seconds)
        stats = result.stats
        repo = Path(spec.location).name if spec.kind == "dir" else text
        for language, counts in sorted(stats.languages.items(), key=lambda item: -item[1].files):
            rows.append(
                f"| {language} | {repo} | {counts.files} | {counts.functions} | {counts.pairs} | "
                f"{counts.files / stats.seconds:.0f} | {counts.functions / stats.seconds:.0f} |"
            )
        rejects.append(f"- {repo}: {stats.rejects_text()} ({stats.seconds:.2f}s)")
        for row in random.Random(0).sample(result.pairs, min(args.samples, len(result.pairs))):
            samples.append(
                f"--- {repo} {row['path']} {row['func_name']}\nquery: {row['query']}\n{row['code']}"
            )

    print("| language | repo | files | functions | pairs | files/s | functions/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print("\nrejects:\n" + "\n".join(rejects))
    if samples:
        print("\n" + "\n".join(samples))
    return 0


if __name__ == "__main__":
    sys.exit(main())
