"""The raw-text source: ``text:PATH``, JSONL or Parquet rows with a ``text``/``content`` column.

``text:PATH``: raw text or code rows, The Stack's and code-rag-bench's layout: JSONL (``.jsonl``,
``.jsonl.gz``) or Parquet (``.parquet``) with a ``text`` or ``content`` column, a file or a directory
of them, local or ``s3://``; streamed (Parquet by pyarrow's ``iter_batches``, JSONL line by line; on
S3 by ranged reads), never a whole file in memory.

text: rows (column names in any case; the first present of each list wins): the text is ``text`` or
``content``; the language ``language`` or ``lang`` (lower-cased, ``C++`` -> ``cpp``), else from the
extension of the row's path; repo ``repo``/``repo_name``/``max_stars_repo_name`` (else the file's name,
as for JSONL pairs), path ``path``/``max_stars_repo_path``/``file_path``, url ``url`` (else the file's URI
with ``#row=N``, N counting from 1: the JSONL line or the Parquet row), licence ``license``/``licenses``/
``max_stars_repo_licenses`` (semcode.data.licenses; a refused one is the reject ``license``). A row in one of the extractor's
languages is treated as the file it is (a Stack row is a file of a repository): the path rules, the
size, header and line-length rules and the extractor apply as for ``dir:``, so it gives its functions as
corpus rows and, with a doc comment, pairs (urls ``...#row=N&L<start>-L<end>``), except that a function
over ``max_code_chars`` is no corpus row either (``dir:`` indexes it; here every row is bounded as ``pairs:``
bounds its code: a 105 MB row in a known language could otherwise be one corpus row). Any other row (prose,
documentation, a language without an extractor) is one corpus row, the text as it is (``func_name`` and
``query`` empty, ``language`` its own name or ``text``), under the code rules (``min_code_lines``,
``max_code_chars``: raise it, or 0, to keep long documents whole; a JSONL line over
``listing.MAX_LINE_BYTES`` is skipped unread as ``long_line``); with ``languages`` set such rows are
``other_language``. Before any row is read, every file's layout is checked (a Parquet schema, a JSONL
file's first record): no text column, or one that is not strings, is a SourceError naming the file
(and line); later rows without text count as ``missing_field``/``wrong_type`` toward ``max_reject_share``.
"""

from __future__ import annotations

import contextlib
import json
import zlib
from collections import Counter
from collections.abc import Iterator

from semcode import storage
from semcode.data import extract, languages, licenses
from semcode.data.sources import listing, rows
from semcode.data.sources.code import FileOutcome, FileTask, crashed_outcome, extract_text, path_reject
from semcode.data.sources.rows import WHOLE, ExtractOptions, Shard, SourceResult, SourceStats
from semcode.data.sources.spec import SOURCE_KINDS, SourceError, SourceSpec
from semcode.data.sources.workers import Workers

# text: columns (any case); the first present wins
TEXT_FIELDS = ("text", "content")
LANGUAGE_FIELDS = ("language", "lang")
REPO_FIELDS = ("repo", "repo_name", "max_stars_repo_name", "repository_name")
PATH_FIELDS = ("path", "max_stars_repo_path", "file_path", "filepath")
URL_FIELDS = ("url",)
LANGUAGE_ALIASES = {
    "c++": "cpp",
    "js": "javascript",
    "ts": "typescript",
    "py": "python",
    "golang": "go",
    "rs": "rust",
    "rb": "ruby",
}
TEXT_LANGUAGE = "text"  # the language of a text: row that names none and whose path says none
TEXT_BATCH_ROWS = 256  # text: records read (and handed to the workers) at a time...
TEXT_BATCH_BYTES = 32 << 20  # ...or fewer when they are big: a batch holds at most about this much text


def _is_parquet(file: str) -> bool:
    return file.endswith(listing.PARQUET_SUFFIXES)


def _is_text_type(data_type: object) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(data_type):
        data_type = data_type.value_type
    return (
        pa.types.is_string(data_type)
        or pa.types.is_large_string(data_type)
        or pa.types.is_string_view(data_type)
    )


def check_layout(spec: SourceSpec, shard: Shard = WHOLE) -> None:
    """Raise SourceError, naming the file (and line), when a text: file has no ``text``/``content`` column
    or it holds something else than strings: a Parquet file's schema (its footer: one ranged read on S3)
    and a JSONL file's first record, for every file ``shard`` reads, before any row is processed.
    Other kinds have no layout to check. Unreadable files are left to the read, which counts them."""
    if spec.kind != "text":
        return
    files = listing.text_files(spec.location)
    if not files:
        raise SourceError(
            f"source '{spec.text}': no {', '.join(listing.TEXT_SUFFIXES)} files in {spec.location}: "
            f"{SOURCE_KINDS['text']}"
        )
    for file in files:
        if shard.owns(file):
            try:
                _check_text_file(spec, file)
            except (OSError, EOFError, zlib.error):
                continue


def _check_text_file(spec: SourceSpec, file: str) -> None:
    wanted = " or ".join(repr(name) for name in TEXT_FIELDS)
    if _is_parquet(file):
        import pyarrow.parquet as pq

        with storage.open_input_file(file) as handle:
            schema = pq.read_schema(handle)
        by_name = {name.lower(): name for name in schema.names}
        column = next((by_name[name] for name in TEXT_FIELDS if name in by_name), None)
        if column is None:
            raise SourceError(
                f"source '{spec.text}': {file} has no {wanted} column; its columns: {', '.join(schema.names)}"
            )
        if not _is_text_type(schema.field(column).type):
            raise SourceError(
                f"source '{spec.text}': column {column!r} of {file} is {schema.field(column).type}, "
                "not string: the text: source reads text (UTF-8 strings)"
            )
        return
    for line_number, line in enumerate(listing.read_lines(file), start=1):
        if line is None or not line.strip():  # a line over MAX_LINE_BYTES: the reading counts it
            continue
        where = f"source '{spec.text}': {file} line {line_number}"
        try:
            record = json.loads(line)
        except (UnicodeDecodeError, ValueError):
            raise SourceError(f"{where} is not JSON") from None
        if not isinstance(record, dict):
            raise SourceError(
                f"{where} is a JSON {type(record).__name__}, not an object with a {wanted} field"
            )
        row = {str(key).lower(): value for key, value in record.items()}
        present = [name for name in TEXT_FIELDS if name in row]
        if not present:
            raise SourceError(f"{where} has no {wanted} field; its fields: {', '.join(map(str, record))}")
        value = rows.pick(row, *present)
        if value is not None and not isinstance(value, str):
            raise SourceError(f"{where}: {present[0]!r} is a JSON {type(value).__name__}, not a string")
        return


def text_language(value: object, path: str = "") -> str:
    """A row's language: its ``language``/``lang`` value lower-cased (``C++`` -> ``cpp``, ``JavaScript`` ->
    ``javascript``), else by its path's extension, else ``""``."""
    name = value.strip().lower() if isinstance(value, str) else ""
    name = LANGUAGE_ALIASES.get(name, name)
    if not name and path:
        name = languages.language_of_path(path) or ""
    return name


def text_row(
    record: dict, spec_text: str, options: ExtractOptions, repo_default: str, url_default: str
) -> FileOutcome:
    """One text: record -> its corpus (and pair) rows, see the module docstring: the functions of code in a
    language the extractor knows, else the text itself as one corpus row."""
    row = {str(key).lower(): value for key, value in record.items()}
    path = rows.as_text(rows.pick(row, *PATH_FIELDS))
    language = text_language(rows.pick(row, *LANGUAGE_FIELDS), path)
    outcome = FileOutcome([], [], Counter(), parsed=False, functions=0, language=language or TEXT_LANGUAGE)
    texts, reason = rows.required_texts(row, TEXT_FIELDS)
    if reason:
        outcome.rejects[reason] += 1
        return outcome
    (text,) = texts
    licence = licenses.record_license(row)
    if not options.licenses.permits(licence):
        outcome.rejects["license"] += 1
        return outcome
    repo = rows.as_text(rows.pick(row, *REPO_FIELDS)) or repo_default
    url = rows.as_text(rows.pick(row, *URL_FIELDS)) or url_default
    if language in languages.RULES:
        task = FileTask(url, repo, path, url, language, license=licence)
        reason = "other_language" if not options.wants(language) else path_reject(task) if path else None
        if not reason and len(text.encode("utf-8", "surrogatepass")) > options.max_file_bytes:
            reason = "too_large"
        if reason:
            outcome.rejects[reason] += 1
            return outcome
        return _without_long_code(
            extract_text(text, task, spec_text, options, outcome), options.max_code_chars
        )
    if options.languages:  # only some languages asked for: text in another (or none) is not one of them
        outcome.rejects["other_language"] += 1
        return outcome
    reason = extract.check_code(
        text, min_code_lines=options.min_code_lines, max_code_chars=options.max_code_chars
    )
    if reason:
        outcome.rejects[reason] += 1
        return outcome
    outcome.parsed, outcome.functions = True, 1
    outcome.corpus.append(
        rows.new_row(
            spec_text,
            code=text,
            language=language or TEXT_LANGUAGE,
            repo=repo,
            path=path,
            url=url,
            license=licence,
        )
    )
    return outcome


def _without_long_code(outcome: FileOutcome, max_code_chars: int) -> FileOutcome:
    """``outcome`` without the corpus rows whose code is over ``max_code_chars`` (0: no limit): the long
    definitions ``index_all`` keeps as index rows of a file. A text: row's code is bounded as pairs: bounds
    its ``code`` and as this source bounds prose rows (a 105 MB row of one function is no search document);
    extract_functions counted them ``too_long`` already, and no pair is ever that long."""
    if max_code_chars:
        kept = [row for row in outcome.corpus if len(row["code"]) <= max_code_chars]
        outcome.functions -= len(outcome.corpus) - len(kept)
        outcome.corpus = kept
    return outcome


def _crashed_row(job: tuple[dict, str, ExtractOptions, str, str], how: str) -> FileOutcome:
    """A row (``text_row``'s arguments) whose worker died parsing it: named by its url."""
    return crashed_outcome(job[4], TEXT_LANGUAGE, how, job[2])


def _text_batches(file: str) -> Iterator[list[tuple[int, dict | str]]]:
    """The records of a text: file in batches of (row number from 1, record, or the reject reason of a line
    that is none: ``malformed_json``, ``long_line``), streamed: Parquet by pyarrow's iter_batches over the
    columns text_row reads, JSONL line by line (a line over listing.MAX_LINE_BYTES skipped unread)."""
    if _is_parquet(file):
        import pyarrow.parquet as pq

        with storage.open_input_file(file) as handle:
            parquet = pq.ParquetFile(handle)
            wanted = set(
                TEXT_FIELDS + LANGUAGE_FIELDS + REPO_FIELDS + PATH_FIELDS + URL_FIELDS + licenses.ROW_FIELDS
            )
            columns = [name for name in parquet.schema_arrow.names if name.lower() in wanted]
            number = 0
            for batch in parquet.iter_batches(batch_size=TEXT_BATCH_ROWS, columns=columns):
                records = batch.to_pylist()
                yield [(number + offset + 1, row) for offset, row in enumerate(records)]
                number += len(records)
        return
    batch: list[tuple[int, dict | str]] = []
    size = 0
    for line_number, line in enumerate(listing.read_lines(file), start=1):
        if line is None:
            batch.append((line_number, "long_line"))
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (UnicodeDecodeError, ValueError):
            record = None
        batch.append((line_number, record if isinstance(record, dict) else "malformed_json"))
        size += len(line)
        if len(batch) >= TEXT_BATCH_ROWS or size >= TEXT_BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def read_text(
    spec: SourceSpec, options: ExtractOptions, progress_tag: str | None = None, shard: Shard = WHOLE
) -> SourceResult:
    """Read a text: source (or ``shard``'s share of its files) record by record, streamed; bad records and
    files are counted, not fatal. Records are extracted in ``options.workers`` worker processes (see
    :mod:`semcode.data.sources.workers`: a row that crashes its worker is a ``parse_crash`` reject)."""
    stats = SourceStats(spec.text, spec.kind)
    result = SourceResult([], [], [], stats)
    files = listing.owned_files(listing.text_files(spec.location), options, shard, stats)
    with contextlib.ExitStack() as stack:
        pool = (
            stack.enter_context(Workers(options.workers, text_row, options.parse_memory_mb))
            if files
            else None
        )
        progress = stack.enter_context(rows.progress_bar(progress_tag, spec, len(files)))
        for file_index, file in files:
            _read_text_file(file, file_index, spec, options, result, pool)
            if progress is not None:
                progress.update(1, postfix=f"{len(result.corpus)} corpus rows")
    return result


def _read_text_file(
    file: str,
    file_index: int,
    spec: SourceSpec,
    options: ExtractOptions,
    result: SourceResult,
    pool: Workers,
) -> None:
    stats = result.stats
    repo_default, url_base = listing.file_label(file)
    try:
        for batch in _text_batches(file):
            stats.records_seen += len(batch)
            jobs = []
            for number, record in batch:
                if isinstance(record, str):  # a line that is no record: its reject reason
                    stats.rejects[record] += 1
                else:
                    jobs.append((record, spec.text, options, repo_default, f"{url_base}#row={number}"))
            for outcome in pool.map(jobs, _crashed_row):
                language = stats.language(outcome.language)
                language.files += 1
                stats.functions_found += outcome.functions
                language.functions += outcome.functions
                language.pairs += len(outcome.pairs)
                stats.rejects.update(outcome.rejects)
                language.rejects.update(outcome.rejects)
                stats.rejected_files.extend(outcome.rejected_files)
                result.add(file_index, outcome.pairs, outcome.corpus)
        stats.files_parsed += 1
    except (OSError, EOFError, zlib.error):
        stats.rejects["unreadable"] += 1
