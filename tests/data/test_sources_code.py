"""Code sources on small real inputs: a toy package, bad files, a checkout of mixed languages, the
interpreter's stdlib and site-packages, S3."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import sysconfig
from pathlib import Path

import pytest

from semcode import storage
from semcode.data.sources import listing, read_source
from semcode.data.sources.code import read_code_files, site_packages_dirs
from semcode.data.sources.rows import ExtractOptions
from semcode.data.sources.spec import SourceError, SourceSpec, check_exists, parse_spec

DATA = Path(__file__).parent

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
# Definitions that break a pair rule (dunder, test name, one line) and classes: index rows all the same, never pairs.
TOY_INDEX_ONLY = {"identity", "Polygon.__init__", "Polygon.__len__", "Polygon.test_invariants", "Polygon"}
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


def test_dir_source_extracts_and_counts_every_reject(toy_repo: Path):
    result = read_source(parse_spec(f"dir:{toy_repo}"), ExtractOptions())
    stats = result.stats
    pair_names = {row["func_name"] for row in result.pairs}
    corpus_names = {row["func_name"] for row in result.corpus}
    assert pair_names == TOY_PAIRS | {"greet"}
    assert corpus_names == TOY_PAIRS | TOY_CORPUS_ONLY | TOY_INDEX_ONLY | {"greet"}
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


def test_without_index_all_the_corpus_keeps_the_pair_rules(toy_repo: Path):
    result = read_source(parse_spec(f"dir:{toy_repo}"), ExtractOptions(index_all=False))
    assert {row["func_name"] for row in result.corpus} == TOY_PAIRS | TOY_CORPUS_ONLY | {"greet"}
    assert result.stats.rejects["dunder"] == 2 and result.stats.rejects["too_short"] == 1

    row = next(r for r in result.pairs if r["func_name"] == "distance")
    assert row["repo"] == "toyrepo" and row["path"] == "toypkg/geometry.py"
    assert row["url"] == "dir://toyrepo/toypkg/geometry.py#L6-L14"  # the directory's name, not its place
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


def test_python_stdlib_and_site_packages_samples():
    options = ExtractOptions(max_files=25)
    stdlib = read_source(parse_spec("python:stdlib"), options)
    assert stdlib.stats.files_parsed + stdlib.stats.errors == 25
    assert stdlib.stats.files_skipped_by_limit > 100 and stdlib.stats.rejects["test_path"] > 100
    assert all("/" not in row["repo"] and not row["repo"].endswith(".py") for row in stdlib.pairs)
    assert len({row["repo"] for row in stdlib.corpus}) > 5  # the sample spreads over packages
    site = read_source(parse_spec("python:site-packages"), options)
    assert all(not row["repo"].endswith((".dist-info", ".py")) for row in site.corpus)
    # url: python://<source>/<path>, never this machine's absolute path, with the function's lines; path
    # stays relative to the package root.
    roots = {"stdlib": [sysconfig.get_paths()["stdlib"]], "site-packages": site_packages_dirs()}
    for kind, row in [("stdlib", r) for r in stdlib.corpus] + [("site-packages", r) for r in site.corpus]:
        file, _, lines = row["url"].partition("#")
        assert file == f"python://{kind}/{row['path']}", row["url"]
        local = next(Path(root, row["path"]) for root in roots[kind] if Path(root, row["path"]).is_file())
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
    check_exists(spec)
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
        check_exists(parse_spec(f"dir:{s3_env}/nothing/here"))


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
    assert by_name["slugify"]["url"] == f"dir://{mixed_repo.name}/lib/util.rb#L2-L5"
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


def test_a_file_with_one_huge_line_is_skipped_before_parsing(tmp_path: Path) -> None:
    """A minified or data file with the size limit raised: skipped as long_line, with bounded memory."""
    import resource

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


def test_a_git_checkouts_commit_is_in_its_urls_and_no_absolute_path_is(toy_repo: Path):
    commit = "3f2c1e0b9a8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b"
    (toy_repo / ".git" / "refs" / "heads").mkdir(parents=True)
    (toy_repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (toy_repo / ".git" / "refs" / "heads" / "main").write_text(commit + "\n")
    assert listing.git_head(str(toy_repo)) == commit
    result = read_source(parse_spec(f"dir:{toy_repo}"), ExtractOptions())
    assert all(row["url"].startswith(f"dir://toyrepo@{commit}/") for row in result.corpus)
    assert not any(str(toy_repo.parent) in row["url"] for row in result.corpus + result.pairs)
    (toy_repo / ".git" / "refs" / "heads" / "main").unlink()  # packed refs, a detached head, no repo
    (toy_repo / ".git" / "packed-refs").write_text(f"# pack-refs with: peeled\n{commit} refs/heads/main\n")
    assert listing.git_head(str(toy_repo)) == commit
    (toy_repo / ".git" / "HEAD").write_text(commit)
    assert listing.git_head(str(toy_repo)) == commit
    assert listing.git_head(str(toy_repo / "toypkg")) == ""


GOOD = 'def add_numbers(a, b):\n    """Add two numbers and return their sum."""\n    total = a + b\n    return total\n'


@pytest.mark.timeout(60)  # a FIFO opened for reading without O_NONBLOCK waits for a writer forever
def test_only_regular_files_inside_the_root_are_read(tmp_path: Path):
    """Links out of the repository (a secret, /dev/zero), a FIFO, a socket and a name that is not UTF-8:
    each skipped, counted and named; a link that stays inside is read; the rest of the source is read."""
    import socket

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.py").write_text(GOOD.replace("return total", 'return "TOPSECRET"'))
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "good.py").write_text(GOOD)
    (repo / "pkg" / "link.py").symlink_to(outside / "secret.py")
    (repo / "pkg" / "zero.py").symlink_to("/dev/zero")
    (repo / "inside.py").symlink_to(repo / "pkg" / "good.py")  # stays inside: read like any file
    os.mkfifo(repo / "pkg" / "x.py")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(repo / "pkg" / "sock.py"))
    (repo / "outlink").symlink_to(outside, target_is_directory=True)  # a linked folder: never walked
    bad_name = os.fsencode(repo / "pkg") + b"/bad\xffname.py"
    with open(bad_name, "w") as file:
        file.write(GOOD)
    try:
        result = read_code_files(SourceSpec("dir", str(repo), f"dir:{repo}"), ExtractOptions(workers=2))
    finally:
        server.close()
    stats = result.stats
    assert not any("TOPSECRET" in row["code"] for row in result.corpus)
    assert sorted(row["path"] for row in result.corpus) == ["inside.py", "pkg/good.py"]
    assert {reason: stats.rejects[reason] for reason in ("outside_root", "not_regular", "bad_file_name")} == {
        "outside_root": 2,
        "not_regular": 2,
        "bad_file_name": 1,
    }
    assert stats.errors == 0 and stats.files_seen == 7
    assert sorted(stats.rejected_files) == [
        "pkg/bad\\xffname.py: bad_file_name",
        f"pkg/link.py: outside_root (a link to {outside / 'secret.py'})",
        "pkg/sock.py: not_regular (a socket)",
        "pkg/x.py: not_regular (a FIFO)",
        "pkg/zero.py: outside_root (a link to /dev/zero)",
    ]
    assert stats.to_dict()["rejected_files"] == sorted(stats.rejected_files)


def test_a_file_bigger_than_it_said_is_read_no_further_than_the_limit(tmp_path: Path):
    from semcode.data.files import FileRefused, read_source_file

    (tmp_path / "a.py").write_text("x = 1\n" * 100)
    assert read_source_file(str(tmp_path / "a.py"), str(tmp_path), 600) == b"x = 1\n" * 100
    with pytest.raises(FileRefused, match="too_large"):
        read_source_file(str(tmp_path / "a.py"), str(tmp_path), 599)
    with pytest.raises(FileRefused, match="not_regular: a character device"):
        read_source_file("/dev/zero", "", 10)  # no root to leave: still never read


def _nested_classes(levels: int) -> str:
    """The second fault battery's file: ``levels`` classes, each inside the last (one space per level)."""
    lines = [" " * i + f"class C{i}:" for i in range(levels)]
    return "\n".join([*lines, " " * levels + "def method(self):", " " * (levels + 1) + "return 1", ""])


def test_a_file_nested_past_the_limit_is_too_deep_before_parsing(tmp_path: Path):
    """600 nested classes (190 KB) segfaulted tree-sitter-python; past CPython's own 100 levels a file is
    skipped, named, before any parsing. Real code, however long its lines of alignment, is not."""
    from semcode.data.sources.code import MAX_INDENT_LEVELS, indent_levels

    assert indent_levels(_nested_classes(MAX_INDENT_LEVELS)) == MAX_INDENT_LEVELS + 1  # the method's body
    assert indent_levels(_nested_classes(MAX_INDENT_LEVELS - 1)) == MAX_INDENT_LEVELS
    aligned = "def f(a,\n" + " " * 150 + "b):\n    # a comment\n    return (a,\n" + " " * 200 + "b)\n"
    assert indent_levels(aligned) == 2
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "deep.py").write_text(_nested_classes(600))
    (repo / "good.py").write_text(GOOD)
    result = read_code_files(SourceSpec("dir", str(repo), f"dir:{repo}"), ExtractOptions())
    assert [row["func_name"] for row in result.corpus] == ["add_numbers"]
    assert result.stats.rejected_files == ["deep.py: too_deep (over 100 levels of indentation)"]


def test_a_file_that_kills_its_parsing_worker_costs_only_that_file(tmp_path: Path):
    """A parse tree past the worker's memory cap (about 200 bytes of tree per byte of a long expression):
    the worker dies, the file is a named parse_crash, a fresh worker reads the files after it, in order."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "a_big.py").write_text("X = [\n" + "1,\n" * 1_500_000 + "]\n")  # 4.5 MB: ~900 MB of tree
    for name in ("b_one.py", "c_two.py", "d_three.py"):
        (repo / name).write_text(GOOD.replace("add_numbers", name[2:-3]))
    spec = SourceSpec("dir", str(repo), f"dir:{repo}")
    for workers in (1, 2):
        options = ExtractOptions(max_file_bytes=10_000_000, parse_memory_mb=200, workers=workers)
        result = read_code_files(spec, options)
        assert [row["func_name"] for row in result.corpus] == ["one", "two", "three"]
        assert result.stats.rejects["parse_crash"] == 1 and result.stats.files_parsed == 3
        (named,) = result.stats.rejected_files
        assert named.startswith("a_big.py: parse_crash (its parsing worker died (") and "200" in named
