"""JSONL sources on small real inputs: CSN/CodeXGLUE, generic pairs, HumanEval."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from semcode.data.sources import listing, read_source
from semcode.data.sources.jsonl import check_fields
from semcode.data.sources.rows import ExtractOptions
from semcode.data.sources.spec import SourceError, parse_spec

DATA = Path(__file__).parent


def test_csn_and_codexglue_jsonl():
    result = read_source(parse_spec(f"csn:{DATA / 'csn'}"), ExtractOptions(languages=("python",)))
    stats = result.stats
    assert stats.files_seen == 2 and stats.records_seen == 9
    assert stats.rejects == {
        "malformed_json": 1,
        "short_docstring": 1,
        "test_name": 1,
        "other_language": 1,
    }
    by_name = {row["func_name"]: row for row in result.pairs}
    assert set(by_name) == {
        "get_debug_flag",
        "byte_bounds",
        "dict_to_sequence",
        "Session.close",
        "print_report",
    }
    close = by_name["Session.close"]
    assert close["query"] == "Closes all adapters and as such the session."
    assert (
        close["code"] == "def close(self):\n        for v in self.adapters.values():\n            v.close()\n"
    )
    assert close["repo"] == "psf/requests" and close["path"] == "requests/sessions.py"
    assert close["url"].startswith("https://github.com/psf/requests/")
    # Python 2 code: the docstring is removed by the tokenizer fallback
    assert (
        by_name["print_report"]["code"]
        == "def print_report(rows):\n    for row in rows:\n        print row\n    print 'done'\n"
    )
    # CodeXGLUE: the docstring comes from the code when the field is empty
    assert by_name["get_debug_flag"]["query"] == "Get whether debug mode should be enabled for the app."
    assert '"""' not in by_name["get_debug_flag"]["code"]
    # Hugging Face code_search_net column names
    assert by_name["byte_bounds"]["repo"] == "numpy/numpy"
    assert by_name["byte_bounds"]["path"] == "numpy/lib/utils.py"
    # a short docstring still gives a corpus row, with its query
    assert {row["func_name"] for row in result.corpus} == set(by_name) | {"noop_twice"}


def test_csn_gzipped_file_and_languages(tmp_path: Path):
    gz = tmp_path / "python_train_0.jsonl.gz"
    gz.write_bytes(gzip.compress((DATA / "csn" / "python_train_0.jsonl").read_bytes()))
    result = read_source(parse_spec(f"csn:{gz}"), ExtractOptions(languages=("python",)))
    assert result.stats.pairs == 3 and result.stats.records_seen == 7
    both = read_source(parse_spec(f"csn:{gz}"), ExtractOptions(languages=("python", "java")))
    assert "Main.add" in {row["func_name"] for row in both.pairs}
    every = read_source(parse_spec(f"csn:{gz}"), ExtractOptions())  # no languages given: all of them
    assert every.stats.pairs == 4 and every.stats.to_dict()["languages"]["java"]["pairs"] == 1


def test_truncated_gzip_is_unreadable_but_keeps_earlier_lines(tmp_path: Path):
    data = gzip.compress((DATA / "csn" / "python_train_0.jsonl").read_bytes() * 50)
    gz = tmp_path / "cut.jsonl.gz"
    gz.write_bytes(data[: len(data) // 2])
    result = read_source(parse_spec(f"csn:{gz}"), ExtractOptions())
    assert result.stats.rejects["unreadable"] == 1
    assert result.stats.records_seen > 0


def test_fields_of_the_wrong_type_are_counted_as_such(tmp_path: Path):
    path = tmp_path / "typed.jsonl"
    good = {"query": "add two numbers", "code": "def add(a, b):\n    s = a + b\n    return s\n"}
    rows = [good, {**good, "code": 42}, {**good, "query": ["a", "list"]}, {"query": "no code here"}]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    stats = read_source(parse_spec(f"pairs:{path}"), ExtractOptions()).stats
    assert stats.rejects == {"wrong_type": 2, "missing_field": 1}
    csn = tmp_path / "csn.jsonl"
    csn.write_text(json.dumps({"code": {"not": "text"}, "docstring": "x y z", "language": "go"}) + "\n")
    assert read_source(parse_spec(f"csn:{csn}"), ExtractOptions()).stats.rejects == {"wrong_type": 1}


def test_pairs_jsonl():
    path = DATA / "pairs" / "pairs_example.jsonl"
    result = read_source(parse_spec(f"pairs:{path}"), ExtractOptions())
    stats = result.stats
    assert stats.records_seen == 7
    assert stats.rejects == {"malformed_json": 2, "missing_field": 1}
    assert stats.error_share == pytest.approx(3 / 7)
    rows = {row["query"]: row for row in result.pairs}
    assert set(rows) == {
        "read a json file into a dict",
        "reverse a string",
        "sum of squares of a list",
        "sort a list",  # user queries are taken as given, short ones too
    }
    assert rows["read a json file into a dict"]["repo"] == "acme/tools"
    assert rows["reverse a string"]["repo"] == "pairs_example"  # no repo: the file name
    assert rows["reverse a string"]["hard_negatives"] == ["def upper(s):\n    return s.upper()\n"]
    assert len(rows["sum of squares of a list"]["hard_negatives"]) == 2
    assert rows["reverse a string"]["url"] == path.resolve().as_uri() + "#L2"
    assert all(row["hard_negatives"] == [] for row in result.corpus)
    assert len(result.corpus) == 4


def test_humaneval_is_evaluation_only():
    result = read_source(parse_spec("humaneval:"), ExtractOptions())
    assert result.pairs == [] and result.corpus == []
    assert len(result.eval_rows) == 164 and result.stats.eval_rows == 164
    first = result.eval_rows[0]
    assert first["path"] == "HumanEval/0" and first["func_name"] == "has_close_elements"
    assert first["query"] == (
        "Check if in given list of numbers, are any two numbers closer to each other than given threshold."
    )
    assert first["code"].startswith(
        "def has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
    )
    assert "for idx, elem in enumerate(numbers):" in first["code"] and ">>>" not in first["code"]
    assert first["split"] == "test" and first["repo"] == "humaneval"
    assert all(row["query"] and row["code"] for row in result.eval_rows)


CSN_SIX = [
    {
        "repo": "pallets/click",
        "path": "src/click/utils.py",
        "func_name": "make_str",
        "original_string": 'def make_str(value):\n    """Converts a value into a valid string."""\n'
        "    if isinstance(value, bytes):\n        return value.decode('utf-8', 'replace')\n"
        "    return str(value)",
        "language": "python",
        "code": "",
        "code_tokens": ["def", "make_str", "(", "value", ")", ":"],
        "docstring": "Converts a value into a valid string.",
        "docstring_tokens": ["Converts", "a", "value", "into", "a", "valid", "string", "."],
        "url": "https://github.com/pallets/click/blob/0/src/click/utils.py#L40-L45",
        "partition": "train",
    },
    {
        "repo": "google/guava",
        "path": "guava/src/com/google/common/base/Strings.java",
        "func_name": "Strings.nullToEmpty",
        "original_string": "public static String nullToEmpty(@Nullable String string) {\n"
        '    return (string == null) ? "" : string;\n  }',
        "language": "java",
        "code": "",
        "code_tokens": ["public", "static", "String", "nullToEmpty"],
        "docstring": "Returns the given string if it is non-null; the empty string otherwise.\n\n"
        "@param string the string to test and possibly return\n@return {@code string} itself if it is non-null",
        "docstring_tokens": ["Returns", "the", "given", "string", "if", "it", "is", "non", "-", "null"],
        "url": "https://github.com/google/guava/blob/0/guava/src/com/google/common/base/Strings.java#L40-L42",
        "partition": "train",
    },
    {
        "repo": "expressjs/express",
        "path": "lib/utils.js",
        "func_name": "acceptParams",
        "original_string": "function acceptParams(str) {\n  var parts = str.split(/ *; */);\n"
        "  var ret = { value: parts[0], quality: 1, params: {} };\n  return ret;\n}",
        "language": "javascript",
        "code": "",
        "code_tokens": ["function", "acceptParams", "(", "str", ")"],
        "docstring": "Parse accept params `str` returning an\nobject with `.value`, `.quality` and `.params`.\n\n"
        "@param {String} str\n@return {Object}\n@api private",
        "docstring_tokens": ["Parse", "accept", "params", "str", "returning", "an", "object"],
        "url": "https://github.com/expressjs/express/blob/0/lib/utils.js#L90-L95",
        "partition": "valid",
    },
    {
        "repo": "spf13/cobra",
        "path": "command.go",
        "func_name": "Command.HasParent",
        "original_string": "func (c *Command) HasParent() bool {\n\tparent := c.parent\n\treturn parent != nil\n}",
        "language": "go",
        "code": "",
        "code_tokens": ["func", "(", "c", "*", "Command", ")", "HasParent"],
        "docstring": "HasParent determines if the command is a child command.",
        "docstring_tokens": [
            "HasParent",
            "determines",
            "if",
            "the",
            "command",
            "is",
            "a",
            "child",
            "command",
        ],
        "url": "https://github.com/spf13/cobra/blob/0/command.go#L1300-L1303",
        "partition": "test",
    },
    {
        "repo": "guzzle/guzzle",
        "path": "src/Utils.php",
        "func_name": "Utils.jsonDecode",
        "original_string": "public static function jsonDecode(string $json, bool $assoc = false)\n{\n"
        "    $data = \\json_decode($json, $assoc);\n    return $data;\n}",
        "language": "php",
        "code": "",
        "code_tokens": ["public", "static", "function", "jsonDecode"],
        "docstring": "Wrapper for json_decode that throws when an error occurs.\n\n@param string $json JSON data to parse",
        "docstring_tokens": [
            "Wrapper",
            "for",
            "json_decode",
            "that",
            "throws",
            "when",
            "an",
            "error",
            "occurs",
        ],
        "url": "https://github.com/guzzle/guzzle/blob/0/src/Utils.php#L300-L305",
        "partition": "train",
    },
    {
        "repo": "sinatra/sinatra",
        "path": "lib/sinatra/base.rb",
        "func_name": "Base.settings",
        "original_string": "def settings\n      self.class.settings\n      self\n    end",
        "language": "ruby",
        "code": "",
        "code_tokens": ["def", "settings"],
        "docstring": "Access settings defined with Base.set.",
        "docstring_tokens": ["Access", "settings", "defined", "with", "Base", ".", "set", "."],
        "url": "https://github.com/sinatra/sinatra/blob/0/lib/sinatra/base.rb#L950-L953",
        "partition": "train",
    },
]


def test_csn_rows_of_the_six_languages(tmp_path: Path):
    import json

    path = tmp_path / "six.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in CSN_SIX))
    result = read_source(parse_spec(f"csn:{path}"), ExtractOptions())
    rows = {row["language"]: row for row in result.pairs}
    assert set(rows) == {"python", "java", "javascript", "go", "php", "ruby"}
    assert rows["java"]["query"] == "Returns the given string if it is non-null; the empty string otherwise."
    assert rows["javascript"]["query"] == (
        "Parse accept params `str` returning an object with `.value`, `.quality` and `.params`."
    )
    assert rows["php"]["query"] == "Wrapper for json_decode that throws when an error occurs."
    assert rows["go"]["func_name"] == "Command.HasParent" and rows["go"]["repo"] == "spf13/cobra"
    assert '"""' not in rows["python"]["code"] and rows["python"]["code"].startswith("def make_str(value):\n")
    assert rows["python"]["signature"] == "def make_str(value):"
    assert set(result.stats.to_dict()["languages"]) == set(rows)
    only_go = read_source(parse_spec(f"csn:{path}"), ExtractOptions(languages=("go",)))
    assert [row["language"] for row in only_go.pairs] == ["go"]
    assert only_go.stats.rejects == {"other_language": 5}


def _peak_bytes(read) -> tuple[object, int]:
    """What ``read()`` returns and the peak of the Python memory it allocated (tracemalloc)."""
    import tracemalloc

    tracemalloc.start()
    try:
        result = read()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("gzipped", [False, True])
def test_a_huge_jsonl_line_is_skipped_unread_with_bounded_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gzipped: bool
):
    """A 20 MB line (over listing.MAX_LINE_BYTES) is a long_line reject, never held whole nor parsed: the
    memory a read takes is bounded by the read buffer and the line limit, not by the line."""
    from semcode.data.sources import listing

    good = {
        "query": "add two numbers together",
        "code": "def add(a, b):\n    total = a + b\n    return total\n",
    }
    huge = json.dumps({"query": "a huge row", "code": "x = 1\n" * (20_000_000 // 6)}).encode()
    assert len(huge) > 2 * listing.MAX_LINE_BYTES
    data = (
        b"\n".join([json.dumps(good).encode(), huge, json.dumps(dict(good, repo="other")).encode()]) + b"\n"
    )
    path = tmp_path / ("pairs.jsonl.gz" if gzipped else "pairs.jsonl")
    path.write_bytes(gzip.compress(data, compresslevel=1) if gzipped else data)
    del huge, data

    def read():
        return read_source(parse_spec(f"pairs:{path}"), ExtractOptions())

    result, peak = _peak_bytes(read)  # the defaults: an 8 MiB read buffer, 8 MiB lines at most
    assert result.stats.records_seen == 3 and result.stats.rejects == {"long_line": 1}
    assert [row["url"].rsplit("#", 1)[1] for row in result.pairs] == ["L1", "L3"]  # line numbers kept
    assert peak < 2 * listing.STREAM_BYTES + listing.MAX_LINE_BYTES + (4 << 20), peak
    monkeypatch.setattr(listing, "STREAM_BYTES", 1 << 20)
    monkeypatch.setattr(listing, "MAX_LINE_BYTES", 1 << 20)
    small, peak = _peak_bytes(read)
    assert small.stats.rejects == {"long_line": 1} and len(small.pairs) == 2
    assert peak < 6 << 20, peak  # a few MiB for a 20 MB line


def test_a_long_code_in_a_pairs_row_is_too_long():
    """pairs: code over max_code_chars is rejected as too_long, as functions of code files are."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pairs.jsonl"
        rows = [
            {"query": "sum a list", "code": "def total(xs):\n    return sum(xs)\n"},
            {"query": "a big table", "code": "TABLE = [\n" + "    1,\n" * 2000 + "]\n"},
        ]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        result = read_source(parse_spec(f"pairs:{path}"), ExtractOptions(max_code_chars=8000))
        assert [row["query"] for row in result.pairs] == ["sum a list"]
        assert result.stats.rejects == {"too_long": 1}
        whole = read_source(parse_spec(f"pairs:{path}"), ExtractOptions(max_code_chars=0))  # 0: no limit
        assert len(whole.pairs) == 2


def test_a_pairs_file_given_as_csn_and_a_csn_file_given_as_pairs_say_why():
    """A source of the other kind's layout is a SourceError naming the fields found and the right kind."""
    import tempfile

    from semcode.data.sources.spec import SourceError

    with tempfile.TemporaryDirectory() as tmp:
        pairs = Path(tmp) / "pairs.jsonl"
        row = {"query": "sum a list of numbers", "code": "def total(xs):\n    n = 0\n    return sum(xs)\n"}
        pairs.write_text(json.dumps(row) + "\n")
        with pytest.raises(SourceError, match=r"fields code, query.*use pairs:"):
            read_source(parse_spec(f"csn:{pairs}"), ExtractOptions())
        anchors = Path(tmp) / "anchors.jsonl"
        anchors.write_text(json.dumps({"anchor": row["query"], "positive": row["code"]}) + "\n")
        with pytest.raises(SourceError, match=r"fields anchor, positive.*use pairs:"):
            read_source(parse_spec(f"csn:{anchors}"), ExtractOptions())
        csn = DATA / "csn" / "python_train_0.jsonl"
        with pytest.raises(SourceError, match=r"not a query \(or anchor\).*docstring.*use csn:"):
            read_source(parse_spec(f"pairs:{csn}"), ExtractOptions())
        other = Path(tmp) / "other.jsonl"
        other.write_text(json.dumps({"title": "x", "body": "y"}) + "\n")
        with pytest.raises(SourceError, match=r"fields body, title, not a query") as error:
            read_source(parse_spec(f"pairs:{other}"), ExtractOptions())
        assert "csn:" not in str(error.value)
        # a CodeSearchNet file whose rows all lack a usable docstring stays a plain "no pairs" (no error)
        bare = Path(tmp) / "bare.jsonl"
        bare.write_text(json.dumps({"code": row["code"], "docstring": ""}) + "\n")
        assert read_source(parse_spec(f"csn:{bare}"), ExtractOptions()).pairs == []


PAPERS = [
    {
        "title": f"Paper {index}: graph attention for link prediction",
        "abstract": f"We predict links with method {index}." if index % 2 else None,
        "repo": {"name": f"lab/model{index % 2}"},
        "code": f"def predict_links_{index}(graph):\n    scores = graph.edges\n    return scores * {index}\n",
    }
    for index in range(6)
]


def test_a_json_array_with_mapped_fields_streams_in_pieces(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(listing, "PIECE_BYTES", 16)  # items span many refills of the buffer
    path = tmp_path / "paper_code_pairs.json"
    path.write_text(json.dumps(PAPERS, indent=2))
    spec = parse_spec(f"pairs:{path}#query=title+abstract,repo=repo.name")
    result = read_source(spec, ExtractOptions())
    assert [row["query"] for row in result.pairs[:2]] == [
        "Paper 0: graph attention for link prediction",
        "Paper 1: graph attention for link prediction We predict links with method 1.",
    ]
    assert [row["repo"] for row in result.pairs[:2]] == ["lab/model0", "lab/model1"]
    assert [row["url"].rsplit("#", 1)[1] for row in result.pairs] == [f"/{i}" for i in range(6)]
    assert result.stats.records_seen == 6 and not result.stats.rejects

    gzipped = tmp_path / "papers.json.gz"
    gzipped.write_bytes(gzip.compress(json.dumps(PAPERS).encode()))
    assert len(read_source(parse_spec(f"pairs:{gzipped}#query=title,test"), ExtractOptions()).pairs) == 6


def test_a_broken_json_array_keeps_the_items_before_the_break(tmp_path: Path):
    path = tmp_path / "cut.json"
    path.write_text(json.dumps(PAPERS)[:-60])
    result = read_source(parse_spec(f"pairs:{path}#query=title"), ExtractOptions())
    assert len(result.pairs) == 5 and result.stats.rejects == {"malformed_json": 1}


def test_split_fields_and_split_options(tmp_path: Path):
    rows = [{"query": f"query number {i}", "code": f"def f{i}():\n    return {i}\n"} for i in range(4)]
    path = tmp_path / "rows.jsonl"
    names = ["train", "dev", "Test", ""]
    path.write_text(
        "".join(json.dumps(dict(row, part=name)) + "\n" for row, name in zip(rows, names, strict=True))
    )
    mapped = read_source(parse_spec(f"pairs:{path}#split=part"), ExtractOptions())
    assert [row["split"] for row in mapped.pairs] == ["train", "valid", "test", ""]
    assert [row["split"] for row in mapped.corpus] == ["train", "valid", "test", ""]
    assert {row["split"] for row in read_source(parse_spec(f"pairs:{path}"), ExtractOptions()).pairs} == {""}
    everything = read_source(parse_spec(f"pairs:{path}#split=part,eval"), ExtractOptions())
    assert {row["split"] for row in everything.pairs} == {"valid"}  # the source's split wins


def test_check_fields_names_the_file_and_the_field(tmp_path: Path):
    path = tmp_path / "papers.json"
    path.write_text(json.dumps(PAPERS))
    check_fields(parse_spec(f"pairs:{path}#query=title+abstract,repo=repo.name"))  # abstract: in some records
    with pytest.raises(SourceError, match=r"papers.json has no field 'summary' \(mapped to query\)"):
        check_fields(parse_spec(f"pairs:{path}#query=title+summary"))
    with pytest.raises(
        SourceError, match=r"has no field 'repo.url' \(mapped to url\).*abstract, code, repo, title"
    ):
        check_fields(parse_spec(f"pairs:{path}#url=repo.url"))
