"""The .gitignore matcher of dir: sources (semcode.data.gitignore) against the rules gitignore(5) states."""

from __future__ import annotations

from pathlib import Path

import pytest

from semcode.data.gitignore import GitIgnore
from semcode.data.sources.listing import walk_files


def rules(text: str, base: str = "") -> GitIgnore:
    ignore = GitIgnore()
    ignore.add(text, base)
    return ignore


@pytest.mark.parametrize(
    ("pattern", "path", "is_dir", "ignored"),
    [
        ("*.log", "a.log", False, True),
        ("*.log", "deep/down/a.log", False, True),  # no slash: any depth
        ("*.log", "a.log.txt", False, False),
        ("/top.py", "top.py", False, True),  # a leading slash anchors
        ("/top.py", "sub/top.py", False, False),
        ("doc/frotz", "doc/frotz", True, True),  # a middle slash anchors too
        ("doc/frotz", "a/doc/frotz", True, False),
        ("build/", "build", True, True),  # a trailing slash: folders only
        ("build/", "build", False, False),
        ("build/", "src/build", True, True),
        ("**/foo", "a/b/foo", False, True),
        ("**/foo", "foo", False, True),
        ("abc/**", "abc/x/y.py", False, True),
        ("abc/**", "abc", True, False),
        ("a/**/b", "a/b", False, True),
        ("a/**/b", "a/x/y/b", False, True),
        ("a?c.py", "abc.py", False, True),
        ("a?c.py", "a/c.py", False, False),  # ? never matches a slash
        ("[ab]x.py", "bx.py", False, True),
        ("[!ab]x.py", "cx.py", False, True),
        ("[!ab]x.py", "ax.py", False, False),
        ("\\#hash.py", "#hash.py", False, True),  # an escaped # is a pattern, not a comment
        ("# comment", "# comment", False, False),
        ("trailing.py   ", "trailing.py", False, True),  # trailing spaces dropped
        ("[unclosed", "[unclosed", False, True),  # a [ without ] is a literal
    ],
)
def test_a_pattern(pattern: str, path: str, is_dir: bool, ignored: bool):
    assert rules(pattern).matches(path, is_dir) is ignored


def test_negation_and_order():
    ignore = rules("*.py\n!keep.py\n")
    assert ignore.matches("a.py", False) and not ignore.matches("pkg/keep.py", False)
    assert rules("!keep.py\n*.py\n").matches("keep.py", False)  # the last matching line decides
    # a file inside an ignored folder stays ignored whatever a later line says (git never looks inside)
    assert rules("out/\n!out/keep.py\n").ignored("out/keep.py")
    assert not rules("out/*\n!out/keep.py\n").ignored("out/keep.py")


def test_a_nested_gitignore_applies_below_its_folder_and_wins():
    ignore = rules("*.gen\n")
    ignore.add("!ok.gen\n/local.py\n", "sub")
    assert ignore.matches("x.gen", False) and not ignore.matches("sub/ok.gen", False)
    assert ignore.matches("sub/local.py", False) and not ignore.matches("local.py", False)
    assert not ignore.matches("subway/local.py", False)


def test_a_walk_prunes_ignored_folders_and_counts(tmp_path: Path):
    for name in ("a.py", "build/x.py", "src/b.py", "src/gen/c.py", "src/keep/d.py", "notes.tmp"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    (tmp_path / ".gitignore").write_text("build/\n*.tmp\n")
    (tmp_path / "src" / ".gitignore").write_text("gen/\n")
    (tmp_path / ".git" / "info").mkdir(parents=True)
    (tmp_path / ".git" / "info" / "exclude").write_text("keep/\n")
    ignore = GitIgnore()
    found = walk_files(str(tmp_path), lambda error: None, ignore)
    assert found == [".gitignore", "a.py", "src/.gitignore", "src/b.py"]
    assert ignore.skipped == 4  # build/, notes.tmp, src/gen/ and src/keep/ (.git/info/exclude)
    assert walk_files(str(tmp_path), lambda error: None) == sorted(
        [
            ".gitignore",
            "a.py",
            "build/x.py",
            "notes.tmp",
            "src/.gitignore",
            "src/b.py",
            "src/gen/c.py",
            "src/keep/d.py",
        ]
    )
