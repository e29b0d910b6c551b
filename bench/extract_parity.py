"""Parity of Python extraction: the old ast extractor against the tree-sitter one, on python:stdlib.

    .venv/bin/python bench/extract_parity.py            # counts side by side + 5 differing rows
    .venv/bin/python bench/extract_parity.py --rows 20  # more sampled differences

The old extractor is the ast-based ``src/semcode/data/extract.py`` of the commit before the
polyglot change, read with ``git show <rev>:src/semcode/data/extract.py`` (``--rev``, default HEAD)
and loaded as a module of its own. Both run over the same files: every non-test ``.py`` file that
the ``python:stdlib`` source reads (decoded the same way), with the default rules
(min_code_lines 3, max_code_chars 8000, min_docstring_tokens 3).

A row is (path, func_name, start_line, end_line, query, code). "pairs" are rows whose query has
at least 3 word tokens, as the ingest stage counts them.

Measured on CPython 3.11's standard library (733 non-test files): functions 9046 / 9046, pairs
4427 / 4427, rejects equal reason by reason (dunder 2791, too_short 3603, test_name 108,
empty_body 82, too_long 10, no syntax_error on either side); 1 row of 9046 differs, in its query
only. So Python goes through tree-sitter like every other language; ast is still used for single
functions given as text (CodeSearchNet rows, HumanEval: ``extract.strip_docstring``), which
tree-sitter would not improve.

Remaining differences (every one is explained here):

- ``query`` differs where a docstring's first paragraph runs straight into a field list
  (``:param x:``, ``:returns:``, ``@param``) with no blank line between: the new query stops at the
  first tag line, the old one kept the tags in the query. Intended (CodeSearchNet's rule: tags are
  not the summary); code, names and line numbers of these rows are the same. On the stdlib this is
  one row: ``gzip._create_simple_gzip_header``.
- A file that ast rejects but tree-sitter parses with errors only inside some functions would now
  yield its other functions; on the standard library outside tests there is none (the
  ``syntax_error`` counts are equal), so this does not show here.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time
import types
import warnings
from collections import Counter
from pathlib import Path

from semcode.data import extract
from semcode.data.sources import code as sources

REPO_ROOT = Path(__file__).resolve().parents[1]
MIN_DOCSTRING_TOKENS = 3
RULES = {"min_code_lines": 3, "max_code_chars": 8000}


def load_old_extractor(rev: str) -> types.ModuleType:
    """The ast extractor as it was at ``rev``, as a module named ``old_extract``."""
    text = subprocess.run(
        ["git", "show", f"{rev}:src/semcode/data/extract.py"],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    module = types.ModuleType("old_extract")
    sys.modules["old_extract"] = module  # dataclasses look their module up while the class is built
    exec(compile(text, f"{rev}:extract.py", "exec"), module.__dict__)
    return module


def run_one(extract_functions, text: str, path: str, **kwargs) -> tuple[list[tuple], Counter[str]]:
    """Rows and rejects of one file through one extractor (syntax errors counted as a reject)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            functions, rejects = extract_functions(text, **kwargs, **RULES)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return [], Counter({"syntax_error": 1})
    rows = [(path, f.func_name, f.start_line, f.end_line, f.query, f.code) for f in functions]
    return rows, Counter(rejects)


def is_pair(row: tuple) -> bool:
    return extract.count_tokens(row[4]) >= MIN_DOCSTRING_TOKENS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="HEAD", help="git revision of the old extractor")
    parser.add_argument("--rows", type=int, default=5, help="differing rows to print")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    old = load_old_extractor(args.rev)
    tasks = [t for t in sources._stdlib_tasks(lambda error: None) if not extract.is_test_path(t.path)]
    totals = {"old": Counter(), "new": Counter()}
    seconds = {"old": 0.0, "new": 0.0}
    only_old: list[tuple] = []
    only_new: list[tuple] = []
    for task in tasks:
        text, reason = sources.decode_source(Path(task.location).read_bytes())
        if text is None:
            totals["old"][reason] += 1
            totals["new"][reason] += 1
            continue
        start = time.perf_counter()
        old_rows, old_rejects = run_one(old.extract_functions, text, task.path)
        seconds["old"] += time.perf_counter() - start
        start = time.perf_counter()
        new_rows, new_rejects = run_one(extract.extract_functions, text, task.path, language="python")
        seconds["new"] += time.perf_counter() - start
        for name, rows, rejects in (("old", old_rows, old_rejects), ("new", new_rows, new_rejects)):
            totals[name]["functions"] += len(rows)
            totals[name]["pairs"] += sum(map(is_pair, rows))
            totals[name].update(rejects)
        old_set, new_set = set(old_rows), set(new_rows)
        only_old += [row for row in old_rows if row not in new_set]
        only_new += [row for row in new_rows if row not in old_set]

    reasons = (set(totals["old"]) | set(totals["new"])) - {"functions", "pairs"}
    keys = ["functions", "pairs", *sorted(reasons)]
    print(f"python:stdlib, {len(tasks)} non-test files\n")
    print("| count | old (ast) | new (tree-sitter) |")
    print("|---|---:|---:|")
    for key in keys:
        print(f"| {key} | {totals['old'][key]} | {totals['new'][key]} |")
    print(f"| seconds | {seconds['old']:.1f} | {seconds['new']:.1f} |")
    print(f"\nrows only in old: {len(only_old)}, only in new: {len(only_new)}")
    new_by_key = {row[:4]: row for row in only_new}
    changed = [(row, new_by_key.get(row[:4])) for row in only_old]
    what = Counter(
        "gone" if new is None else "query" if new[5] == row[5] else "code" if new[4] == row[4] else "both"
        for row, new in changed
    )
    print(f"differing rows by what differs: {dict(what)}")
    for row, new in random.Random(args.seed).sample(changed, min(args.rows, len(changed))):
        print(f"\n--- {row[0]} {row[1]} L{row[2]}-L{row[3]}")
        print(f"old query: {row[4]!r}")
        print(f"new query: {new[4]!r}" if new else "new: (not extracted)")
        if new and new[5] != row[5]:
            print(f"old code:\n{row[5]}new code:\n{new[5]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
