"""Read every kind of ingest source into pair rows, corpus rows and evaluation rows.

A source is a spec string ``KIND:LOCATION`` (``~`` in local paths is expanded), read by its module:

- ``spec``     parse_spec, check_exists: the kinds (SOURCE_KINDS) and SourceError
- ``code``     ``python:stdlib``, ``python:site-packages`` (the running interpreter's own code) and
               ``dir:PATH`` (a directory or git checkout of code in any supported language, local or
               ``s3://``): files through the extractor, file by file
- ``jsonl``    ``csn:PATH`` (CodeSearchNet/CodeXGLUE), ``pairs:PATH`` (query/code; JSONL or a JSON array,
               ``#SPLIT`` and field mappings: spec) and ``humaneval:`` or ``humaneval:PATH`` (HumanEval, an
               evaluation-only suite, never trained on), record by record
- ``text``     ``text:PATH``: raw text or code rows, JSONL or Parquet with a ``text`` or ``content``
               column (The Stack, code-rag-bench), streamed; check_layout checks every file first
- ``listing``  the files of a location, local or ``s3://``, streamed lines, a shard's files
- ``rows``     what they share: ExtractOptions, the row, SourceStats, SourceResult, Shard, the reject reasons

:func:`read_source` reads a spec of any kind (or a shard's share of its files).
"""

from __future__ import annotations

import time

from semcode.data.sources.code import read_code_files
from semcode.data.sources.jsonl import read_jsonl
from semcode.data.sources.rows import WHOLE, ExtractOptions, Shard, SourceResult
from semcode.data.sources.spec import SourceSpec
from semcode.data.sources.text import read_text


def read_source(
    spec: SourceSpec, options: ExtractOptions, progress_tag: str | None = None, shard: Shard = WHOLE
) -> SourceResult:
    """Read one source of any kind (or ``shard``'s share of its files); stats.seconds is filled in."""
    start = time.perf_counter()
    if spec.kind in ("python", "dir"):
        result = read_code_files(spec, options, progress_tag, shard)
    elif spec.kind == "text":
        result = read_text(spec, options, progress_tag, shard)
    else:
        result = read_jsonl(spec, options, progress_tag, shard)
    stats = result.stats
    stats.pairs, stats.corpus_rows, stats.eval_rows = (
        len(result.pairs),
        len(result.corpus),
        len(result.eval_rows),
    )
    stats.seconds = time.perf_counter() - start
    return result
