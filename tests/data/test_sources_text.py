"""The text: source: raw rows with a text/content column (The Stack, code-rag-bench), JSONL or Parquet,
local and S3."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from semcode import storage
from semcode.data.sources import read_source
from semcode.data.sources.rows import ExtractOptions
from semcode.data.sources.spec import SourceError, parse_spec
from semcode.data.sources.text import check_layout

DATA = Path(__file__).parent

STACK_PY = (
    "import re\n\n\n"
    "def slugify(title):\n"
    '    """Turn a title into a URL slug for links."""\n'
    "    words = re.findall(r'\\w+', title.lower())\n"
    '    return "-".join(words)\n\n\n'
    "def helper(x):\n    y = x + 1\n    z = y * 2\n    return z\n"
)
STACK_GO = (
    "package api\n\n// Serve starts the HTTP server on the given address.\n"
    "func Serve(addr string) error {\n\tsrv := &http.Server{Addr: addr}\n\treturn srv.ListenAndServe()\n}\n"
)
DOC_PAGE = "# Reading files\n\nUse open() with a context manager:\nthe file is closed when the block ends.\n"
# The Stack's columns: content, lang, max_stars_repo_name, max_stars_repo_path (v1 names)
STACK_RECORDS = [
    {
        "content": STACK_PY,
        "lang": "Python",
        "max_stars_repo_name": "org/slugs",
        "max_stars_repo_path": "slugs/text.py",
    },
    {
        "content": STACK_GO,
        "lang": None,
        "max_stars_repo_name": "org/api",
        "max_stars_repo_path": "api/server.go",
    },
    {
        "content": DOC_PAGE,
        "lang": "Markdown",
        "max_stars_repo_name": "org/docs",
        "max_stars_repo_path": "docs/files.md",
    },
    {
        "content": STACK_PY,
        "lang": "Python",
        "max_stars_repo_name": "org/slugs",
        "max_stars_repo_path": "tests/test_text.py",
    },
    {
        "content": None,
        "lang": "Python",
        "max_stars_repo_name": "org/empty",
        "max_stars_repo_path": "empty.py",
    },
]


def write_parquet(path: Path, records: list[dict], row_group_size: int = 2) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(records), path, row_group_size=row_group_size)
    return path


def without_location(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in ("url", "source")} for row in rows]


def test_text_jsonl_rows_become_functions_or_whole_texts(tmp_path: Path):
    lines = [json.dumps(r) for r in STACK_RECORDS] + ['{"content": 42, "lang": "Python"}', "{not json"]
    file = tmp_path / "stack.jsonl"
    file.write_text("\n".join(lines) + "\n")
    spec = parse_spec(f"text:{file}")
    check_layout(spec)
    result = read_source(spec, ExtractOptions())
    stats = result.stats

    # code in a known language -> its functions (language from `lang`, else the path's extension)
    assert [(r["func_name"], r["language"], r["repo"], r["path"]) for r in result.pairs] == [
        ("slugify", "python", "org/slugs", "slugs/text.py"),
        ("Serve", "go", "org/api", "api/server.go"),
    ]
    assert result.pairs[0]["query"] == "Turn a title into a URL slug for links."
    assert '"""' not in result.pairs[0]["code"] and result.pairs[0]["signature"] == "def slugify(title):"
    # every function is a corpus row; other text is one corpus row as it is
    assert [(r["func_name"], r["language"]) for r in result.corpus] == [
        ("slugify", "python"),
        ("helper", "python"),
        ("Serve", "go"),
        ("", "markdown"),
    ]
    page = result.corpus[-1]
    assert page["code"] == DOC_PAGE and page["query"] == "" and page["repo"] == "org/docs"
    uri = file.resolve().as_uri()
    assert page["url"] == f"{uri}#row=3"
    assert result.pairs[0]["url"] == f"{uri}#row=1&L4-L7"
    assert stats.records_seen == 7 and stats.files_seen == stats.files_parsed == 1
    assert stats.rejects == {
        "test_path": 1,
        "missing_field": 1,
        "wrong_type": 1,
        "malformed_json": 1,
        "no_docstring": 1,
    }
    assert stats.functions_found == 4 and stats.languages["markdown"].functions == 1
    assert stats.error_share == pytest.approx(3 / 7)  # missing_field, wrong_type, malformed_json

    only_go = read_source(spec, ExtractOptions(languages=("go",)))
    assert [r["func_name"] for r in only_go.corpus] == ["Serve"]
    assert only_go.stats.rejects["other_language"] == 3  # python, python (test path is not read), markdown


def test_text_code_rows_are_bounded_by_max_code_chars_as_pairs_code_is(tmp_path: Path):
    """Issue 31: a function over max_code_chars in a text: row of a known language (45 KB here, 105 MB in the
    battery with max_file_bytes raised) is no pair and no corpus row either: max_code_chars bounds every row
    of the source, as it bounds pairs:' code and this source's prose rows. A short function beside it stays;
    max_file_bytes still bounds the row as a file."""
    body = "".join(f"    x{i} = value + {i}\n" for i in range(2_000))
    huge = 'def grow(value):\n    """Add many numbers to the value."""\n' + body + "    return value\n"
    file = tmp_path / "huge.jsonl"
    file.write_text(
        json.dumps({"content": STACK_PY + "\n\n" + huge, "lang": "Python", "path": "big.py"}) + "\n"
    )
    spec = parse_spec(f"text:{file}")
    result = read_source(spec, ExtractOptions())
    assert [r["func_name"] for r in result.corpus] == ["slugify", "helper"]
    assert [r["func_name"] for r in result.pairs] == ["slugify"]
    assert result.stats.rejects["too_long"] == 1 and result.stats.functions_found == 2
    unbounded = read_source(spec, ExtractOptions(max_code_chars=0))  # 0: no limit
    assert [(r["func_name"], len(r["code"]) > 40_000) for r in unbounded.corpus][-1] == ("grow", True)
    assert read_source(spec, ExtractOptions(max_file_bytes=40_000)).stats.rejects == {"too_large": 1}


def test_text_parquet_is_read_like_jsonl_and_code_rag_bench_text_column(tmp_path: Path):
    valid = STACK_RECORDS
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in valid))
    parquet = write_parquet(tmp_path / "a.parquet", valid)
    from_jsonl = read_source(parse_spec(f"text:{jsonl}"), ExtractOptions())
    from_parquet = read_source(parse_spec(f"text:{parquet}"), ExtractOptions(workers=2))
    assert without_location(from_parquet.corpus) == without_location(from_jsonl.corpus)
    assert without_location(from_parquet.pairs) == without_location(from_jsonl.pairs)
    assert from_parquet.stats.records_seen == 5 and from_parquet.stats.rejects == from_jsonl.stats.rejects
    assert from_parquet.corpus[-1]["url"] == f"{parquet.resolve().as_uri()}#row=3"

    # code-rag-bench's layout: a `text` column and no language: one corpus row, repo = the file's name
    docs = write_parquet(tmp_path / "library-docs.parquet", [{"doc_id": "io", "text": DOC_PAGE}])
    rows = read_source(parse_spec(f"text:{docs}"), ExtractOptions()).corpus
    assert [(r["code"], r["language"], r["repo"]) for r in rows] == [(DOC_PAGE, "text", "library-docs")]


def test_text_layout_errors_name_the_file_before_any_work(tmp_path: Path):
    from semcode.stages import ingest

    cases = {
        "no-column.parquet": r"no-column\.parquet has no 'text' or 'content' column; its columns: code, lang",
        "int-content.parquet": r"column 'content' of .*int-content\.parquet is int64, not string",
        "no-field.jsonl": r"no-field\.jsonl line 2 has no 'text' or 'content' field; its fields: body",
        "number.jsonl": r"number\.jsonl line 1: 'text' is a JSON int, not a string",
    }
    write_parquet(tmp_path / "no-column.parquet", [{"code": "x = 1", "lang": "Python"}])
    write_parquet(tmp_path / "int-content.parquet", [{"content": 7}])
    (tmp_path / "no-field.jsonl").write_text('\n{"body": "x"}\n')
    (tmp_path / "number.jsonl").write_text('{"text": 5}\n')
    for name, message in cases.items():
        spec = parse_spec(f"text:{tmp_path / name}")
        with pytest.raises(SourceError, match=message):
            check_layout(spec)
        out = tmp_path / f"out-{name}"
        with pytest.raises(ingest.IngestError, match=message):
            ingest.run(ingest.IngestConfig(sources=(f"pairs:{DATA / 'pairs'}", spec.text)), out)
        assert not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(SourceError, match=r"no \.jsonl, \.jsonl\.gz, \.parquet files in"):
        check_layout(parse_spec(f"text:{empty}"))


def test_text_from_s3_is_streamed_like_local(s3_env: str, tmp_path: Path):
    local = tmp_path / "local"
    local.mkdir()
    (local / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in STACK_RECORDS[:3]))
    write_parquet(local / "b.parquet", STACK_RECORDS[2:])
    storage.write_bytes(f"{s3_env}/raw/a.jsonl.gz", gzip.compress((local / "a.jsonl").read_bytes()))
    storage.write_bytes(f"{s3_env}/raw/b.parquet", (local / "b.parquet").read_bytes())
    spec = parse_spec(f"text:{s3_env}/raw")
    check_layout(spec)
    remote = read_source(spec, ExtractOptions())
    here = read_source(parse_spec(f"text:{local}"), ExtractOptions())
    assert remote.stats.files_seen == 2 and remote.stats.records_seen == 6
    assert without_location(remote.corpus) == without_location(here.corpus)
    assert remote.corpus[0]["url"] == f"{s3_env}/raw/a.jsonl.gz#row=1&L4-L7"
    write_parquet(tmp_path / "bad.parquet", [{"code": "x"}])
    storage.write_bytes(f"{s3_env}/bad/c.parquet", (tmp_path / "bad.parquet").read_bytes())
    with pytest.raises(SourceError, match=f"{s3_env}/bad/c.parquet has no 'text' or 'content' column"):
        check_layout(parse_spec(f"text:{s3_env}/bad/"))
