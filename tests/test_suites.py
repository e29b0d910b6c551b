"""The held-out repository suites (semcode.suites.polyglot_suites) on tiny archives written here."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from semcode.suites import polyglot_archives, polyglot_suite, polyglot_suites

GO_FILES = {
    "mathx/mathx.go": """package mathx

// Add returns the sum of two integers.
func Add(a, b int) int {
	sum := a + b
	return sum
}

// Clamp limits a value to the closed range from lo to hi.
func Clamp(v, lo, hi int) int {
	if v < lo {
		return lo
	}
	if v > hi {
		return hi
	}
	return v
}

func double(x int) int {
	y := x * 2
	return y
}
""",
    # A test file: skipped by path, as a dir: ingest source skips it.
    "mathx/mathx_test.go": """package mathx

// TestAdd checks that two and two make four.
func TestAdd(t *testing.T) {
	if Add(2, 2) != 4 {
		t.Fatal("bad")
	}
}
""",
}
RUBY_FILES = {
    "greeter/lib/greeter.rb": """# Greets a person by their name on standard output.
def greet(name)
  message = "Hello, #{name}"
  puts message
end

def shout(text)
  loud = text.upcase
  puts loud
end
""",
    "greeter/README.md": "not code\n",
}


def write_archive(path: Path, files: dict[str, str]) -> Path:
    """A .tar.gz holding ``files`` (archive path -> text), like the real polyglot archives."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def benchmarks(tmp_path: Path) -> Path:
    """A benchmarks folder laid out like ../shared/benchmarks: polyglot/<repo>.tar.gz."""
    root = tmp_path / "benchmarks"
    write_archive(root / "polyglot" / "mathx.tar.gz", GO_FILES)
    write_archive(root / "polyglot" / "greeter.tar.gz", RUBY_FILES)
    (root / "polyglot" / "README.md").write_text("not an archive\n")
    return root


def test_one_suite_per_repository_queried_by_its_doc_comments_over_all_its_functions(
    benchmarks: Path,
) -> None:
    suites = polyglot_suites(benchmarks)
    assert [suite.name for suite in suites] == ["polyglot-ruby", "polyglot-go"]  # archive order
    ruby, go = suites
    assert go.source == str(benchmarks / "polyglot" / "mathx.tar.gz")
    assert ruby.source == str(benchmarks / "polyglot" / "greeter.tar.gz")

    # Go: two documented functions are the queries; the undocumented one is a candidate too, the test
    # file's function is not.
    assert sorted(go.queries) == [
        "Add returns the sum of two integers.",
        "Clamp limits a value to the closed range from lo to hi.",
    ]
    assert len(go.codes) == 3
    assert any("func double" in code for code in go.codes)
    assert not any("TestAdd" in code for code in go.codes)
    for query, gold in zip(go.queries, go.gold, strict=True):
        assert f"func {query.split()[0]}(" in go.codes[gold]
        assert "//" not in go.codes[gold]  # the doc comment is the query, not part of the code
    assert go.languages == ["go", "go"] and len(go.exclude) == 0

    assert ruby.queries == ["Greets a person by their name on standard output."]
    assert len(ruby.codes) == 2 and any("def shout" in code for code in ruby.codes)
    assert "def greet" in ruby.codes[ruby.gold[0]]
    assert ruby.languages == ["ruby"]


def test_two_repositories_of_one_language_are_named_after_their_archives(benchmarks: Path) -> None:
    write_archive(benchmarks / "polyglot" / "mathy.tar.gz", GO_FILES)
    names = [suite.name for suite in polyglot_suites(benchmarks)]
    assert names == ["polyglot-ruby", "polyglot-go-mathx", "polyglot-go-mathy"]


def test_an_archive_of_loose_files_is_read_from_its_own_folder(tmp_path: Path) -> None:
    archive = write_archive(tmp_path / "loose.tar.gz", {"mathx.go": GO_FILES["mathx/mathx.go"]})
    suite = polyglot_suite(archive)
    assert suite.name == "polyglot-go" and len(suite.queries) == 2 and len(suite.codes) == 3


def test_unsafe_or_codeless_archives_are_refused(tmp_path: Path) -> None:
    escaping = write_archive(tmp_path / "evil.tar.gz", {"../outside.go": GO_FILES["mathx/mathx.go"]})
    with pytest.raises(tarfile.FilterError):
        polyglot_suite(escaping)
    assert not (tmp_path / "outside.go").exists()
    codeless = write_archive(tmp_path / "docs.tar.gz", {"docs/README.md": "just text\n"})
    with pytest.raises(ValueError, match=r"docs\.tar\.gz.*\.md \(1\)"):
        polyglot_suite(codeless)


def test_missing_or_empty_polyglot_folder_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="polyglot"):
        polyglot_suites(tmp_path / "no-benchmarks")
    (tmp_path / "empty" / "polyglot").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"\*\.tar\.gz"):
        polyglot_archives(tmp_path / "empty")


def test_the_benchmarks_folder_comes_from_the_environment(benchmarks: Path, monkeypatch) -> None:
    monkeypatch.setenv("SEMCODE_BENCHMARKS_DIR", str(benchmarks))
    assert [suite.name for suite in polyglot_suites()] == ["polyglot-ruby", "polyglot-go"]
