"""``semcode search``: ask a release bundle for the functions that match a natural-language query.

Prints the ranked hits (score, language, a location to open (path:start_line), func_name, url, the first
lines of the code, syntax-highlighted on a terminal) or, with ``--json``, one JSON object (each result with
language, path, start_line, location, url, ...). ``--language go`` (repeated, or ``go,rust``) searches
only those languages' functions. Imports no torch: ONNX Runtime, tokenizers and FAISS
answer the query (semcode.serve.searcher).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from semcode.bundle import BundleError
from semcode.serve.searcher import Hit, Searcher, default_cache_dir, resolve_bundle
from semcode.storage import StorageError

EPILOG = """examples:
  semcode search runs/latest/gate/bundle "read a file line by line" -k 5
  semcode search s3://models/registry/semcode/latest "parse a date string" --json
  semcode search ./registry/semcode/latest "open a zip archive" --max-lines 40 --no-color
  semcode search runs/latest/gate/bundle "parse a date string" --language go --language rust

BUNDLE is a bundle directory (local or s3://) or a registry pointer <registry>/<name>/latest.
S3 bundles are downloaded once to --cache-dir/<name>/<version>/; the AWS_* variables configure S3.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semcode search",
        description="Search a release bundle's code with a natural-language query.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "bundle", metavar="BUNDLE", help="bundle directory, s3:// URI or <registry>/<name>/latest"
    )
    parser.add_argument(
        "query", nargs="+", metavar="QUERY", help="what the code should do (words are joined)"
    )
    parser.add_argument("-k", type=int, default=5, help="number of results (default: 5)")
    parser.add_argument(
        "--language",
        action="append",
        default=None,
        metavar="LANG",
        help="only functions in LANG (repeat it, or go,rust; default: every language in the bundle)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument("--no-color", action="store_true", help="no syntax highlighting (also: NO_COLOR set)")
    parser.add_argument(
        "--max-lines",
        type=int,
        default=15,
        metavar="N",
        help="code lines shown per hit, 0 = all (default: 15)",
    )
    parser.add_argument(
        "--precision",
        choices=("int8", "fp32"),
        default=None,
        help="query encoder (default: the bundle's default)",
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="ONNX Runtime threads (default: 0 = all cores)"
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help=f"where S3 bundles are downloaded (default: {default_cache_dir()})",
    )
    return parser


def shown_lines(code: str, max_lines: int) -> tuple[str, int]:
    """The first ``max_lines`` lines of ``code`` (all when 0) and how many lines were left out."""
    lines = code.rstrip("\n").splitlines()
    if max_lines <= 0 or len(lines) <= max_lines:
        return "\n".join(lines), 0
    return "\n".join(lines[:max_lines]), len(lines) - max_lines


def highlight(code: str, path: str) -> str:
    """``code`` with terminal colour codes, lexed by its file name (Python when pygments cannot tell)."""
    from pygments import highlight as pygments_highlight
    from pygments.formatters import TerminalFormatter
    from pygments.lexers import PythonLexer, get_lexer_for_filename
    from pygments.util import ClassNotFound

    try:
        lexer = get_lexer_for_filename(path or "code.py", stripnl=False)
    except ClassNotFound:
        lexer = PythonLexer(stripnl=False)
    return pygments_highlight(code, lexer, TerminalFormatter()).rstrip("\n")


def format_hit(hit: Hit, max_lines: int, color: bool) -> str:
    code, hidden = shown_lines(hit.code, max_lines)
    header = f"{hit.rank:>2}. {hit.score:.4f}  {hit.language or '?'}  {hit.location()}  {hit.func_name}"
    if color:
        code = highlight(code, hit.path)
        header = f"\x1b[1m{header}\x1b[0m"
    lines = [header]
    if hit.url:
        lines.append(f"    {hit.url}")
    lines += [f"    {line}" for line in code.splitlines()]
    if hidden:
        lines.append(f"    ... ({hidden} more line{'s' if hidden != 1 else ''})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    query = " ".join(args.query).strip()
    if not query:
        parser.error("QUERY is empty")
    if args.k < 1:
        parser.error(f"-k must be >= 1, got {args.k}")
    if args.max_lines < 0:
        parser.error(f"--max-lines must be >= 0, got {args.max_lines}")
    try:
        started = time.perf_counter()
        searcher = Searcher(
            resolve_bundle(args.bundle, args.cache_dir, args.precision), args.precision, args.threads
        )
        load_ms = (time.perf_counter() - started) * 1000
        languages = searcher.check_language(args.language)  # None: every language
        started = time.perf_counter()
        hits = searcher.search(query, args.k, languages)
        took_ms = (time.perf_counter() - started) * 1000
    except (BundleError, FileNotFoundError, ValueError, StorageError) as error:
        print(f"semcode search: error: {error}", file=sys.stderr)
        return 2

    if args.json:
        answer = {
            "query": query,
            "k": args.k,
            "language": None if languages is None else list(languages),
            "bundle": searcher.describe(),
            "results": [hit.to_dict() for hit in hits],
            "took_ms": round(took_ms, 3),
            "load_ms": round(load_ms, 1),
        }
        print(json.dumps(answer, indent=2))
        return 0
    color = sys.stdout.isatty() and not args.no_color and not os.environ.get("NO_COLOR")
    for hit in hits:
        print(format_hit(hit, args.max_lines, color))
        print()
    counts = searcher.language_counts()
    among = (
        "" if languages is None else f", {sum(counts[name] for name in languages)} in {','.join(languages)}"
    )
    print(
        f"{len(hits)} result{'s' if len(hits) != 1 else ''} from {searcher.name} {searcher.version} "
        f"({searcher.size} functions{among}, {searcher.encoder_file}) in {took_ms:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
