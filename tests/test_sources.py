"""Every source kind on small real inputs: a toy package, CSN/CodeXGLUE/pairs JSONL, HumanEval, S3."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import sysconfig
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from semcode import storage
from semcode.data import sources
from semcode.data.sources import ExtractOptions, SourceError, parse_spec, read_source

DATA = Path(__file__).parent / "data"
TOY_PAIRS = {
    "version_string",
    "distance",
    "midpoint",
    "latest_point",
    "Polygon.perimeter",
    "Polygon.bounding_box",
    "Polygon.fetch_vertices",
    "outer",
    "slugify",
    "word_count",
    "shout",
    "square_area",
}
TOY_CORPUS_ONLY = {"area_of_circle", "Polygon.is_valid"}
LATIN1_WITH_COOKIE = (
    b"# -*- coding: latin-1 -*-\n"
    b"def greet(name):\n"
    b'    """Return a greeting in German: Gr\xfc\xdfe."""\n'
    b'    text = "Gr\xfc\xdfe, " + name\n'
    b"    return text\n"
)


def make_bad_files(root: Path) -> None:
    """The bad inputs a real checkout can hold, written as bytes (they cannot live in the repo)."""
    (root / "broken_syntax.py").write_text('def broken(:\n    """Never parses."""\n    return 1\n')
    (root / "blob.py").write_bytes(b"\x00\x01\x02 binary data \x00 with NUL bytes\n")
    (root / "latin1_no_cookie.py").write_bytes(b'def f():\n    """Gr\xfc\xdfe."""\n    return 1\n')
    (root / "latin1_cookie.py").write_bytes(LATIN1_WITH_COOKIE)
    (root / "dangling.py").symlink_to(root / "does_not_exist.py")


@pytest.fixture
def toy_repo(tmp_path: Path) -> Path:
    """The toy package copied into a checkout-like directory, with bad files and a .git dir added."""
    repo = tmp_path / "toyrepo"
    shutil.copytree(DATA / "toypkg", repo / "toypkg")
    (repo / ".git").mkdir()
    (repo / ".git" / "hook.py").write_text(
        'def hidden():\n    """Hidden dirs are skipped."""\n    return 1\n'
    )
    make_bad_files(repo)
    return repo


def test_parse_spec_errors_list_the_kinds():
    with pytest.raises(SourceError, match="one of") as error:
        parse_spec("stack:/data")
    for kind in sources.SOURCE_KINDS:
        assert f"{kind}:" in str(error.value)
    with pytest.raises(SourceError, match="python:stdlib and python:site-packages"):
        parse_spec("python:everything")
    with pytest.raises(SourceError, match="needs a path"):
        parse_spec("dir:")
    assert parse_spec("DIR:/x") == sources.SourceSpec("dir", "/x", "DIR:/x")
    assert parse_spec("humaneval:").eval_only


def test_check_exists(tmp_path: Path):
    with pytest.raises(SourceError, match="does not exist"):
        sources.check_exists(parse_spec(f"dir:{tmp_path / 'missing'}"))
    (tmp_path / "file.jsonl").write_text("{}\n")
    with pytest.raises(SourceError, match="not a directory"):
        sources.check_exists(parse_spec(f"dir:{tmp_path / 'file.jsonl'}"))
    sources.check_exists(parse_spec(f"pairs:{tmp_path / 'file.jsonl'}"))
    sources.check_exists(parse_spec("python:stdlib"))


def test_dir_source_extracts_and_counts_every_reject(toy_repo: Path):
    result = read_source(parse_spec(f"dir:{toy_repo}"), ExtractOptions())
    stats = result.stats
    pair_names = {row["func_name"] for row in result.pairs}
    corpus_names = {row["func_name"] for row in result.corpus}
    assert pair_names == TOY_PAIRS | {"greet"}
    assert corpus_names == TOY_PAIRS | TOY_CORPUS_ONLY | {"greet"}
    # 6 toy files + 5 bad ones; the .git dir is not walked
    assert stats.files_seen == 11
    assert stats.files_parsed == 6  # 5 toy files (not tests/helpers.py) + the latin-1 file with a cookie
    assert stats.rejects == {
        "test_path": 1,
        "syntax_error": 1,
        "binary": 1,
        "decode_error": 1,
        "unreadable": 1,
        "dunder": 2,
        "test_name": 1,
        "too_short": 1,
        "empty_body": 1,
        "no_docstring": 1,
        "short_docstring": 1,
    }
    assert stats.errors == 4 and stats.error_units == 10
    assert (stats.pairs, stats.corpus_rows) == (len(result.pairs), len(result.corpus))

    row = next(r for r in result.pairs if r["func_name"] == "distance")
    assert row["repo"] == "toyrepo" and row["path"] == "toypkg/geometry.py"
    assert row["url"] == (toy_repo / "toypkg" / "geometry.py").as_uri() + "#L6-L14"
    assert row["source"] == f"dir:{toy_repo}" and row["language"] == "python"
    assert row["query"] == "Return the Euclidean distance between two points."
    greet = next(r for r in result.pairs if r["func_name"] == "greet")
    assert greet["query"] == "Return a greeting in German: Grüße."
    assert '"Grüße, "' in greet["code"]


def test_workers_give_the_same_rows(toy_repo: Path):
    spec = parse_spec(f"dir:{toy_repo}")
    serial = read_source(spec, ExtractOptions(workers=1))
    parallel = read_source(spec, ExtractOptions(workers=2))
    assert parallel.pairs == serial.pairs and parallel.corpus == serial.corpus
    assert parallel.stats.rejects == serial.stats.rejects


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_permission_denied_file_is_unreadable(tmp_path: Path):
    repo = tmp_path / "repo"
    shutil.copytree(DATA / "toypkg", repo)
    (repo / "geometry.py").chmod(0)
    result = read_source(parse_spec(f"dir:{repo}"), ExtractOptions())
    assert result.stats.rejects["unreadable"] == 1


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


def test_python_stdlib_and_site_packages_samples():
    options = ExtractOptions(max_files=25)
    stdlib = read_source(parse_spec("python:stdlib"), options)
    assert stdlib.stats.files_parsed + stdlib.stats.errors == 25
    assert stdlib.stats.files_skipped_by_limit > 100 and stdlib.stats.rejects["test_path"] > 100
    assert all("/" not in row["repo"] and not row["repo"].endswith(".py") for row in stdlib.pairs)
    assert len({row["repo"] for row in stdlib.corpus}) > 5  # the sample spreads over packages
    site = read_source(parse_spec("python:site-packages"), options)
    assert all(not row["repo"].endswith((".dist-info", ".py")) for row in site.corpus)
    # url: the installed file, with the function's lines; path stays relative to the package root.
    roots = [sysconfig.get_paths()["stdlib"], *sources.site_packages_dirs()]
    for row in stdlib.corpus + site.corpus:
        file, _, lines = row["url"].partition("#")
        local = Path(unquote(urlparse(file).path))
        assert file.startswith("file:///") and local.is_file(), row["url"]
        assert any(local == Path(root, row["path"]) for root in roots), (row["url"], row["path"])
        start, end = (int(n) for n in re.fullmatch(r"L(\d+)-L(\d+)", lines).groups())
        header = local.read_text(encoding="utf-8", errors="replace").splitlines()[start - 1 : end]
        assert row["signature"].split("(")[0] in " ".join(" ".join(header).split()), row["url"]
    assert stdlib.pairs and site.pairs


def test_s3_dir_and_jsonl(s3_env: str, tmp_path: Path):
    for path in sorted((DATA / "toypkg").rglob("*.py")):
        rel = path.relative_to(DATA / "toypkg").as_posix()
        storage.write_bytes(f"{s3_env}/code/toypkg/{rel}", path.read_bytes())
    storage.write_bytes(f"{s3_env}/code/toypkg/broken.py", b"def broken(:\n")
    storage.write_bytes(f"{s3_env}/code/toypkg/.git/x.py", b"def hidden(): pass\n")
    spec = parse_spec(f"dir:{s3_env}/code/toypkg")
    sources.check_exists(spec)
    result = read_source(spec, ExtractOptions())
    assert {row["func_name"] for row in result.pairs} == TOY_PAIRS
    assert result.stats.rejects["syntax_error"] == 1 and result.stats.files_seen == 7
    row = next(r for r in result.pairs if r["func_name"] == "distance")
    assert row["repo"] == "toypkg" and row["path"] == "geometry.py"
    assert row["url"] == f"{s3_env}/code/toypkg/geometry.py#L6-L14"

    storage.write_bytes(f"{s3_env}/csn/a.jsonl", (DATA / "csn" / "python_train_0.jsonl").read_bytes())
    storage.write_bytes(
        f"{s3_env}/csn/b.jsonl.gz", gzip.compress((DATA / "csn" / "codexglue_test.jsonl").read_bytes())
    )
    storage.write_bytes(f"{s3_env}/csn/readme.txt", b"not data")
    csn = read_source(parse_spec(f"csn:{s3_env}/csn"), ExtractOptions())
    assert csn.stats.files_seen == 2 and csn.stats.pairs == 6  # 5 Python, 1 Java
    with pytest.raises(SourceError, match="does not exist"):
        sources.check_exists(parse_spec(f"dir:{s3_env}/nothing/here"))


# --------------------------------------------------------------------------------------------
# Many languages

MIXED_FILES = {
    "api/server.go": (
        "package api\n\n// Serve starts the HTTP server on the given address.\n"
        "func Serve(addr string) error {\n\tsrv := &http.Server{Addr: addr}\n\treturn srv.ListenAndServe()\n}\n"
    ),
    "api/server_test.go": "package api\n\nfunc TestServe(t *testing.T) {\n\tt.Skip()\n\treturn\n}\n",
    "web/src/format.ts": (
        "/** Formats a price in cents as a dollar string. */\n"
        "export function formatPrice(cents: number): string {\n  const dollars = cents / 100;\n"
        "  return `$${dollars.toFixed(2)}`;\n}\n"
    ),
    "lib/util.rb": (
        "# Returns the slug of a title for use in URLs.\ndef slugify(title)\n"
        "  words = title.downcase.split\n  words.join('-')\nend\n"
    ),
    "tools/clean.py": (
        'def clean(text):\n    """Remove control characters from the text."""\n'
        "    kept = [c for c in text if c.isprintable()]\n    return ''.join(kept)\n"
    ),
    "vendor/github.com/x/lib.go": (
        "package lib\n\n// Vendored helper that must not be read.\n"
        "func Helper() int {\n\tx := 1\n\treturn x\n}\n"
    ),
    "web/node_modules/left-pad/index.js": "/** Pads a string. */\nfunction pad(s) {\n  s = ' ' + s;\n  return s;\n}\n",
    "web/dist/app.min.js": "function a(){return 1}\n",
    "api/types.pb.go": "package api\n",
    "api/zz_deepcopy.go": (
        "// Code generated by deepcopy-gen. DO NOT EDIT.\n\npackage api\n\n// DeepCopy copies the object.\n"
        "func (in *Obj) DeepCopy() *Obj {\n\tout := new(Obj)\n\treturn out\n}\n"
    ),
    "README.md": "# mixed\n",
    "Makefile": "all:\n",
}


@pytest.fixture
def mixed_repo(tmp_path: Path) -> Path:
    """A checkout with code in four languages, a test, vendored and generated files, and docs."""
    repo = tmp_path / "mixed"
    for rel, text in MIXED_FILES.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    return repo


def test_dir_of_mixed_languages(mixed_repo: Path):
    result = read_source(parse_spec(f"dir:{mixed_repo}"), ExtractOptions())
    stats = result.stats
    by_name = {row["func_name"]: row for row in result.pairs}
    assert {name: row["language"] for name, row in by_name.items()} == {
        "Serve": "go",
        "formatPrice": "typescript",
        "slugify": "ruby",
        "clean": "python",
    }
    assert by_name["formatPrice"]["query"] == "Formats a price in cents as a dollar string."
    assert by_name["formatPrice"]["path"] == "web/src/format.ts" and by_name["Serve"]["repo"] == "mixed"
    assert "Formats a price" not in by_name["formatPrice"]["code"]
    assert by_name["slugify"]["url"] == (mixed_repo / "lib" / "util.rb").as_uri() + "#L2-L5"
    assert by_name["clean"]["signature"] == "def clean(text):"
    assert by_name["Serve"]["signature"] == "func Serve(addr string) error"
    assert stats.files_seen == 10  # README.md and the Makefile are not code
    assert stats.rejects == {"test_path": 1, "vendored": 2, "generated": 3}
    assert stats.error_units == 4  # files skipped by their path (or header) are not inputs
    languages = stats.to_dict()["languages"]
    assert languages["go"] == {
        "files": 5,
        "functions": 1,
        "pairs": 1,
        "rejects": {"generated": 2, "test_path": 1, "vendored": 1},
    }
    assert languages["typescript"]["pairs"] == languages["python"]["pairs"] == 1
    assert languages["javascript"]["rejects"] == {"generated": 1, "vendored": 1}


def test_dir_languages_filter_and_no_matching_files(mixed_repo: Path):
    only = read_source(parse_spec(f"dir:{mixed_repo}"), ExtractOptions(languages=("ruby", "python")))
    assert {row["language"] for row in only.corpus} == {"ruby", "python"}
    assert set(only.stats.languages) == {"ruby", "python"} and only.stats.files_seen == 2
    with pytest.raises(
        SourceError, match=r"no rust, java files in .*mixed \(extensions \.rs, \.java\)"
    ) as error:
        read_source(parse_spec(f"dir:{mixed_repo}"), ExtractOptions(languages=("rust", "java")))
    assert ".go (5)" in str(error.value) and ".md (1)" in str(error.value)


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


def test_a_file_with_one_huge_line_is_skipped_before_parsing(tmp_path: Path) -> None:
    """A minified or data file with the size limit raised: skipped as long_line, with bounded memory."""
    import resource

    from semcode.data.sources import ExtractOptions, SourceSpec, read_code_files

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "data.py").write_text("TABLE = [" + "1, " * 2_000_000 + "]\n")  # one 6 MB line
    (repo / "ok.py").write_text(
        'def add(a, b):\n    """Add two numbers and return the sum."""\n    c = a + b\n    return c\n'
    )
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = read_code_files(
        SourceSpec("dir", str(repo), f"dir:{repo}"),
        ExtractOptions(max_file_bytes=50_000_000, min_code_lines=2),
    )
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert result.stats.rejects["long_line"] == 1
    assert [row["func_name"] for row in result.corpus] == ["add"]
    assert grown_mb < 500


# --------------------------------------------------------------------------------------------
# text:PATH: raw rows with a text/content column (The Stack, code-rag-bench), JSONL or Parquet

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
    sources.check_layout(spec)
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
            sources.check_layout(spec)
        out = tmp_path / f"out-{name}"
        with pytest.raises(ingest.IngestError, match=message):
            ingest.run(ingest.IngestConfig(sources=(f"pairs:{DATA / 'pairs'}", spec.text)), out)
        assert not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    with pytest.raises(SourceError, match=r"no \.jsonl, \.jsonl\.gz, \.parquet files in"):
        sources.check_layout(parse_spec(f"text:{empty}"))


def test_text_from_s3_is_streamed_like_local(s3_env: str, tmp_path: Path):
    local = tmp_path / "local"
    local.mkdir()
    (local / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in STACK_RECORDS[:3]))
    write_parquet(local / "b.parquet", STACK_RECORDS[2:])
    storage.write_bytes(f"{s3_env}/raw/a.jsonl.gz", gzip.compress((local / "a.jsonl").read_bytes()))
    storage.write_bytes(f"{s3_env}/raw/b.parquet", (local / "b.parquet").read_bytes())
    spec = parse_spec(f"text:{s3_env}/raw")
    sources.check_layout(spec)
    remote = read_source(spec, ExtractOptions())
    here = read_source(parse_spec(f"text:{local}"), ExtractOptions())
    assert remote.stats.files_seen == 2 and remote.stats.records_seen == 6
    assert without_location(remote.corpus) == without_location(here.corpus)
    assert remote.corpus[0]["url"] == f"{s3_env}/raw/a.jsonl.gz#row=1&L4-L7"
    write_parquet(tmp_path / "bad.parquet", [{"code": "x"}])
    storage.write_bytes(f"{s3_env}/bad/c.parquet", (tmp_path / "bad.parquet").read_bytes())
    with pytest.raises(SourceError, match=f"{s3_env}/bad/c.parquet has no 'text' or 'content' column"):
        sources.check_layout(parse_spec(f"text:{s3_env}/bad/"))
