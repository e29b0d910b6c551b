"""``semcode search``: ask a release bundle for the functions that match a natural-language query.

Prints how much of the corpus the index covers (``searching N of M functions (how they were chosen)``),
then the ranked hits (a location to open (path:start_line; a ``file://`` url's local file), language, score,
the code's SPDX licence when known; the signature and the doc line; the first lines of the code, syntax-highlighted on a terminal) or, with
``--json``, one JSON object (``coverage``, and each result with language, path, start_line, location,
signature, doc, license, url, code, ...). ``--language go`` (repeated, or ``go,rust``) searches
only those languages' functions; ``--path``/``--repo`` globs and ``--min-score`` filter the hits
(semcode.serve.filters); a ``-k`` above the index's size is refused, naming the size. ``--mode dense|lexical|hybrid`` picks how (semcode.serve.searcher:
the query vector, BM25, or both fused by the bundle's rule; default: the bundle's ``default_mode``); a
bundle without a lexical index offers dense only and says so. Imports no torch: ONNX Runtime,
tokenizers, bm25s and FAISS answer the query (semcode.serve.searcher).

The text output is made of indexed code, file names and doc comments, which anyone can write: terminal
control sequences in them (an escape that retitles the window, clears the screen or sets the clipboard) are
removed before printing (``printable``); ``--json`` keeps every character, escaped. A QUERY that is not valid
UTF-8 (undecodable bytes on the command line) is refused with one line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from typing import Any

from semcode.bundle import BundleError
from semcode.serve.filters import Filters, check_k, filtered_search
from semcode.serve.searcher import (
    SEARCH_MODES,
    Hit,
    Searcher,
    check_link_template,
    check_text,
    default_cache_dir,
    resolve_bundle,
)
from semcode.storage import StorageError

# Terminal control: ESC sequences (CSI "ESC [ ... final", OSC "ESC ] ... BEL or ESC \\", DCS/APC/PM/SOS strings,
# two-character escapes), their 8-bit C1 forms, and every other C0/C1 control but tab and newline.
CONTROL_SEQUENCES = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"  # CSI
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # OSC, DCS, SOS, PM, APC
    r"|\x1b[ -/]*[0-~]?"  # other escapes (and a lone ESC)
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]"  # other control characters (tab and newline stay)
)

EPILOG = """examples:
  semcode search runs/registry/semcode/latest "read a file line by line" -k 5   # what semcode run published
  semcode search runs/<run-id>/bundle "parse a date string" --json              # one run's bundle
  semcode search s3://models/registry/semcode/latest "open a zip archive" --max-lines 40 --no-color
  semcode search runs/<run-id>/bundle "parse a date string" --language go --language rust
  semcode search runs/<run-id>/bundle "merge two dicts" --mode lexical --min-score 5
  semcode search runs/<run-id>/bundle "retry a request" --path 'src/*' --repo 'org/*'

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
    parser.add_argument(
        "--mode",
        choices=SEARCH_MODES,
        default=None,
        help="dense: the encoder; lexical: BM25; hybrid: both fused by the bundle's rule "
        "(default: the bundle's default_mode)",
    )
    parser.add_argument(
        "--path",
        action="append",
        default=None,
        metavar="GLOB",
        help="only functions whose path matches the shell pattern, e.g. 'src/*' (repeat it: any of them)",
    )
    parser.add_argument(
        "--repo",
        action="append",
        default=None,
        metavar="GLOB",
        help="only functions whose repository matches the shell pattern, e.g. 'org/*' (repeat it: any of them)",
    )
    parser.add_argument(
        "--min-score",
        type=float,
        default=None,
        metavar="S",
        help="only hits scored at least S (the mode's score: cosine, BM25 or the fused one)",
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
        "--link-base",
        default=None,
        metavar="TEMPLATE",
        help="show a link per hit: {path}, {line}, {repo}, {commit}, {func_name} filled in, e.g. "
        "'https://github.com/org/repo/blob/{commit}/{path}#L{line}'",
    )
    parser.add_argument(
        "--cache-dir",
        default=None,
        metavar="DIR",
        help=f"where S3 bundles are downloaded (default: {default_cache_dir()})",
    )
    return parser


def printable(text: str) -> str:
    """``text`` without terminal control sequences or control characters (tab and newline kept): what an
    indexed file may hold must not move the cursor, retitle the terminal or write the clipboard."""
    return CONTROL_SEQUENCES.sub("", text)


def shown_lines(code: str, max_lines: int) -> tuple[str, int]:
    """The first ``max_lines`` lines of ``code`` (all when 0) and how many lines were left out."""
    lines = code.rstrip("\n").splitlines()
    if max_lines <= 0 or len(lines) <= max_lines:
        return "\n".join(lines), 0
    return "\n".join(lines[:max_lines]), len(lines) - max_lines


def highlight(code: str, path: str, formatter: Any = None) -> str:
    """``code`` lexed by its file name (Python when pygments cannot tell) and formatted by ``formatter``
    (default: terminal colour codes; the search page passes an HTML formatter)."""
    from pygments import highlight as pygments_highlight
    from pygments.formatters import TerminalFormatter
    from pygments.lexers import PythonLexer, get_lexer_for_filename
    from pygments.util import ClassNotFound

    try:
        lexer = get_lexer_for_filename(path or "code.py", stripnl=False)
    except ClassNotFound:
        lexer = PythonLexer(stripnl=False)
    return pygments_highlight(code, lexer, formatter or TerminalFormatter()).rstrip("\n")


def coverage_line(searcher: Searcher) -> str:
    """``searching N of M functions (how they were chosen)``, from bundle.json ``index.coverage``; a bundle
    made before it says only how many functions it holds."""
    coverage = (searcher.bundle.get("index") or {}).get("coverage")
    if not isinstance(coverage, dict):
        return f"searching {searcher.size:,} functions (the bundle does not say of how many)"
    total = coverage.get("corpus_rows")
    of = f" of {total:,}" if isinstance(total, int) else ""
    sampled_by = coverage.get("sampled_by", "?")
    how = "all" if sampled_by == "all" else f"sampled by {sampled_by}"
    return f"searching {searcher.size:,}{of} functions ({how})"


def format_hit(hit: Hit, max_lines: int, color: bool, link_base: str | None = None) -> str:
    """``rank. path:line  language  score  licence``, the signature, the doc line, then the first lines of the
    code (and the link ``link_base`` makes, or the url when it is remote: s3://, http)."""
    code, hidden = shown_lines(printable(hit.code), max_lines)
    licence = f"  {hit.license}" if hit.license else ""
    header = printable(f"{hit.rank:>2}. {hit.location()}  {hit.language or '?'}  {hit.score:.4f}{licence}")
    signature, doc = printable(hit.signature), printable(hit.doc)
    if color:
        code = highlight(code, hit.path)
        signature = highlight(signature, hit.path) if signature else ""
        doc = f"\x1b[2m{doc}\x1b[0m" if doc else ""
        header = f"\x1b[1m{header}\x1b[0m"
    lines = [header]
    lines += [f"    {text}" for text in (signature, doc) if text]
    if link_base:
        lines.append(f"    {printable(hit.link(link_base))}")
    elif hit.url and not hit.url.startswith(("file://", "python://", "dir://")):
        lines.append(f"    {printable(hit.url)}")
    lines.append("")
    lines += [f"    {line}" for line in code.splitlines()]
    if hidden:
        lines.append(f"    ... ({hidden} more line{'s' if hidden != 1 else ''})")
    return "\n".join(lines)


def mode_words(searcher: Searcher, mode: str) -> str:
    """How the hits were ranked: ``dense: encoder.int8.onnx``, ``lexical: BM25``, ``hybrid: ... + BM25,
    cos + 0.1 x BM25 / max``; and ``dense only`` for a bundle without a lexical index."""
    if mode == "lexical":
        return "lexical: BM25"
    if mode == "hybrid":
        fusion = searcher.fusion
        rule = "rrf" if fusion["rule"] == "rrf" else f"cos + {fusion['weight']:g} x BM25 / max BM25"
        if "question_weight" in fusion:
            rule += f" ({fusion['question_weight']:g} x for a question)"
        if fusion.get("internal_penalty"):
            rule += f", internal definitions -{fusion['internal_penalty']:g}"
        return f"hybrid: {searcher.encoder_file} + BM25, {rule}"
    only = "" if len(searcher.modes) > 1 else "; dense only: the bundle has no lexical index"
    return f"dense: {searcher.encoder_file}{only}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    query = " ".join(args.query).strip()
    if not query:
        parser.error("QUERY is empty")
    try:
        check_text(query, "QUERY")
    except ValueError as error:  # undecodable bytes in argv: Python keeps them as surrogates
        print(f"semcode search: error: {error}", file=sys.stderr)
        return 2
    if args.k < 1:
        parser.error(f"-k must be >= 1, got {args.k}")
    if args.max_lines < 0:
        parser.error(f"--max-lines must be >= 0, got {args.max_lines}")
    if args.link_base:
        try:
            check_link_template(args.link_base)
        except ValueError as error:
            parser.error(str(error))
    try:
        started = time.perf_counter()
        searcher = Searcher(
            resolve_bundle(args.bundle, args.cache_dir, args.precision), args.precision, args.threads
        )
        load_ms = (time.perf_counter() - started) * 1000
        check_k(args.k, searcher)
        languages = searcher.check_language(args.language)  # None: every language
        mode = searcher.check_mode(args.mode)
        filters = Filters(tuple(args.path or ()), tuple(args.repo or ()), args.min_score)
        started = time.perf_counter()
        vectors = None if mode == "lexical" else searcher.encode([query])
        hits = filtered_search(searcher, [query], vectors, args.k, languages, mode, filters)[0]
        took_ms = (time.perf_counter() - started) * 1000
    except (BundleError, FileNotFoundError, ValueError, StorageError) as error:
        print(f"semcode search: error: {error}", file=sys.stderr)
        return 2

    if args.json:
        answer = {
            "query": query,
            "k": args.k,
            "language": None if languages is None else list(languages),
            "mode": mode,
            "path": args.path,
            "repo": args.repo,
            "min_score": args.min_score,
            "bundle": searcher.describe(),
            "coverage": (searcher.bundle.get("index") or {}).get("coverage"),
            "results": [
                {**hit.to_dict(), **({"link": hit.link(args.link_base)} if args.link_base else {})}
                for hit in hits
            ],
            "took_ms": round(took_ms, 3),
            "load_ms": round(load_ms, 1),
        }
        print(json.dumps(answer, indent=2))
        return 0
    color = sys.stdout.isatty() and not args.no_color and not os.environ.get("NO_COLOR")
    print(coverage_line(searcher))
    print()
    for hit in hits:
        print(format_hit(hit, args.max_lines, color, args.link_base))
        print()
    counts = searcher.language_counts()
    among = (
        "" if languages is None else f", {sum(counts[name] for name in languages)} in {','.join(languages)}"
    )
    print(
        f"{len(hits)} result{'s' if len(hits) != 1 else ''} from {searcher.name} {searcher.version} "
        f"({searcher.size} functions{among}, {mode_words(searcher, mode)}) in {took_ms:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
