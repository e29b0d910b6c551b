"""Throughput of the train_tokenizer stage on a realistic corpus: seconds, MB/s, peak RSS.

    .venv/bin/python bench/bench_tokenizer.py                                # a stdlib corpus, vocab 32768
    .venv/bin/python bench/bench_tokenizer.py --corpus runs/ingest/corpus    # an ingest corpus
    .venv/bin/python bench/bench_tokenizer.py --stdlib ~/.pyenv/versions/3.12.1/lib/python3.12 \\
        --stdlib ~/.pyenv/versions/3.13.0/lib/python3.13 --vocab-size 32768   # a bigger stdlib corpus

Without ``--corpus`` it first writes every function of the given standard libraries (default: this
Python's) as a Parquet corpus with ``write_shards``, in a child process so that building the corpus
does not count in the peak RSS. It then runs the stage in this process and prints one JSON object.
``peak_rss_mb`` is the peak of this process (imports included; ``baseline_rss_mb`` is the peak before
training). ``cpu_seconds_whole_stage`` counts all threads. tokenizers uses all cores unless ``RAYON_NUM_THREADS`` is set.
"""

from __future__ import annotations

import argparse
import ast
import json
import multiprocessing
import os
import resource
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

from semcode.data.pairs import write_shards
from semcode.stages import train_tokenizer as stage


def stdlib_function_rows(stdlib_dirs: list[Path]) -> Iterator[dict]:
    """Every function of every parseable .py file under the given standard library folders."""
    for stdlib in stdlib_dirs:
        for path in sorted(stdlib.rglob("*.py")):
            relative = path.relative_to(stdlib)
            if "site-packages" in relative.parts:
                continue
            try:
                source = path.read_text(encoding="utf-8")
                tree = ast.parse(source)
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue  # the stdlib ships deliberately broken test files
            lines = source.splitlines(keepends=True)  # ast.get_source_segment re-splits per call: slow
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    # whole lines, so the first keeps its indentation (the function's own lines)
                    code = "".join(lines[node.lineno - 1 : node.end_lineno])
                    if code.strip():
                        yield {
                            "query": (ast.get_docstring(node) or "").split("\n\n")[0],
                            "code": code,
                            "language": "python",
                            "repo": f"{stdlib.name}/{relative.parts[0]}",
                            "path": str(relative),
                            "func_name": node.name,
                        }


def build_stdlib_corpus(stdlib_dirs: list[Path], out_dir: Path) -> None:
    write_shards(stdlib_function_rows(stdlib_dirs), out_dir, rows_per_shard=20_000)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", type=Path, default=None, help="an ingest corpus/ directory")
    parser.add_argument(
        "--stdlib",
        type=Path,
        action="append",
        default=None,
        help="standard library folder(s) for the built corpus (default: this Python's)",
    )
    parser.add_argument("--work-dir", type=Path, default=None, help="where to write the corpus and tokenizer")
    parser.add_argument("--vocab-size", type=int, default=32768)
    parser.add_argument("--max-bytes", type=int, default=0)
    args = parser.parse_args()

    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench_tokenizer_"))
    corpus = args.corpus
    if corpus is None:
        corpus = work / "corpus"
        stdlib_dirs = args.stdlib or [Path(sysconfig.get_paths()["stdlib"])]
        child = multiprocessing.get_context("spawn").Process(
            target=build_stdlib_corpus, args=(stdlib_dirs, corpus)
        )
        child.start()
        child.join()
        if child.exitcode != 0:
            raise SystemExit(f"building the stdlib corpus failed (exit code {child.exitcode})")

    shards = sorted(Path(corpus).glob("part-*.parquet"))
    baseline_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    config = stage.TrainTokenizerConfig(vocab_size=args.vocab_size, max_bytes=args.max_bytes)
    # CPU time of all threads of this process: load from other work on the machine distorts it less
    cpu_start = time.process_time()
    metrics = stage.run(config, corpus, work / "tokenizer")
    cpu_seconds = time.process_time() - cpu_start
    result = {
        "corpus": str(corpus),
        "corpus_shards": len(shards),
        "corpus_rows": sum(pq.ParquetFile(p).metadata.num_rows for p in shards),
        "corpus_file_mb": round(sum(p.stat().st_size for p in shards) / 1e6, 1),
        "vocab_size": metrics["vocab_size"],
        "bytes_consumed": metrics["bytes_consumed"],
        "rows_consumed": metrics["rows_consumed"],
        "seconds": metrics["seconds"],
        "mb_per_s": metrics["mb_per_s"],
        "cpu_seconds_whole_stage": round(cpu_seconds, 1),  # training, saving and fertility
        "baseline_rss_mb": round(baseline_rss_mb, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "cpu_count": os.cpu_count(),
        "rayon_num_threads": os.environ.get("RAYON_NUM_THREADS"),
        "code_tokens_per_char": round(metrics["fertility"]["code"]["tokens_per_char"], 4),
        "code_tokens_per_line": round(metrics["fertility"]["code"]["tokens_per_line"], 3),
        "query_tokens_per_char": round(metrics["fertility"]["query"]["tokens_per_char"], 4),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
