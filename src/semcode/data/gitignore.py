"""``.gitignore`` rules for ``dir:`` sources: the files git would not track are not read.

A small matcher for the rules git documents (gitignore(5)); the ``pathspec`` package is not a dependency.
What it follows:

- one pattern per line; blank lines and lines starting with ``#`` are none; ``\\#`` and ``\\!`` start a
  pattern with that character; trailing spaces are dropped unless escaped with ``\\``;
- ``!`` negates: a path a later ``!pattern`` matches is kept again, unless a folder above it is ignored
  (git never looks inside an ignored folder, and neither does the walk here);
- a trailing ``/`` matches folders only; a ``/`` at the start or in the middle anchors the pattern to
  the folder of its ``.gitignore``; without one it matches at any depth below that folder;
- ``*`` is any run of characters but ``/``, ``?`` one character but ``/``, ``[a-z]`` / ``[!a-z]`` a class;
  ``**/`` at the start matches in every folder, ``/**`` at the end everything inside, ``/**/`` zero or
  more folders;
- every ``.gitignore`` of the tree counts for the paths below its folder, a deeper one over a higher one
  and a later line over an earlier one; ``.git/info/exclude`` at the root counts as the root's first.

Not followed: ``core.excludesFile`` (a user's global file: a build should not depend on who runs it) and
the index (a tracked file that matches a pattern is ignored here too: there is no git to ask).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from semcode.data.files import FileRefused, read_source_file

IGNORE_FILE = ".gitignore"
MAX_IGNORE_BYTES = 1 << 20  # read no more of one ignore file
EXCLUDE_FILE = os.path.join(".git", "info", "exclude")


@dataclass(frozen=True)
class Rule:
    base: str  # the folder of the .gitignore, relative to the root with "/" ("" = the root)
    regex: re.Pattern[str]  # matched against the path relative to ``base``
    negate: bool
    folders_only: bool


def _class(pattern: str, start: int) -> tuple[str, int]:
    """The regex of the ``[...]`` class opening at ``start`` and the index after it; a ``[`` without its
    ``]`` is a literal."""
    end = start + 1
    if end < len(pattern) and pattern[end] in "!^":
        end += 1
    if end < len(pattern) and pattern[end] == "]":
        end += 1
    while end < len(pattern) and pattern[end] != "]":
        end += 1
    if end >= len(pattern):
        return re.escape("["), start + 1
    body = pattern[start + 1 : end].replace("\\", "\\\\")
    if body[:1] in ("!", "^"):
        body = "^/" + body[1:]  # a class never matches "/"
    return "[" + body + "]", end + 1


def translate(pattern: str) -> str:
    """The regex (without anchors) of one gitignore pattern, its leading ``/`` and trailing ``/`` removed."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**/", i) and (i == 0 or pattern[i - 1] == "/"):
            out.append("(?:.*/)?")  # zero or more folders
            i += 3
        elif pattern.startswith("**", i) and i + 2 == len(pattern) and (i == 0 or pattern[i - 1] == "/"):
            out.append(".*")  # everything inside
            i += 2
        elif char == "*":
            out.append("[^/]*")
            i += 1
        elif char == "?":
            out.append("[^/]")
            i += 1
        elif char == "[":
            text, i = _class(pattern, i)
            out.append(text)
        elif char == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
        else:
            out.append(re.escape(char))
            i += 1
    return "".join(out)


def parse_line(line: str, base: str) -> Rule | None:
    """The rule of one ``.gitignore`` line in folder ``base``, or None for a blank line or a comment."""
    line = line.rstrip("\n").rstrip("\r")
    while line.endswith(" ") and not line.endswith("\\ "):
        line = line[:-1]
    if not line or line.startswith("#"):
        return None
    negate = line.startswith("!")
    if negate:
        line = line[1:]
    elif line.startswith(("\\#", "\\!")):
        line = line[1:]
    folders_only = line.endswith("/")
    line = line.rstrip("/")
    if not line:
        return None
    anchored = "/" in line
    line = line.lstrip("/")
    prefix = "" if anchored else "(?:.*/)?"
    try:
        regex = re.compile(prefix + translate(line) + r"\Z", re.DOTALL)
    except re.error:  # a class git would read otherwise; such a line matches nothing here
        return None
    return Rule(base, regex, negate, folders_only)


@dataclass
class GitIgnore:
    """The rules of a tree's ``.gitignore`` files, read folder by folder as a walk enters them (``enter``);
    ``skips(path, is_dir)`` for a path in a folder entered; ``skipped`` counts the paths it said yes to."""

    rules: list[Rule] = field(default_factory=list)
    skipped: int = 0

    def add(self, text: str, base: str) -> None:
        """The lines of one ignore file in folder ``base`` (relative, "/"-separated; "" = the root)."""
        for line in text.splitlines():
            rule = parse_line(line, base)
            if rule is not None:
                self.rules.append(rule)

    def enter(self, root: str, base: str) -> None:
        """Read ``root/base/.gitignore`` (and at the root ``.git/info/exclude`` first) when there is one."""
        names = [EXCLUDE_FILE, IGNORE_FILE] if not base else [IGNORE_FILE]
        for name in names:
            path = os.path.join(root, *base.split("/"), name) if base else os.path.join(root, name)
            try:  # a regular file inside the root, bounded: a FIFO or a link to /dev/zero would hang the walk
                data = read_source_file(path, os.path.realpath(root), MAX_IGNORE_BYTES)
            except (OSError, FileRefused):  # none there (the common case), or not one to read: no rules
                continue
            self.add(data.decode("utf-8", errors="replace"), base)

    def matches(self, path: str, is_dir: bool) -> bool:
        """Whether the rules ignore ``path`` itself (relative to the root, "/"-separated); the folders above
        it are not looked at (a walk never enters an ignored one; ``ignored`` checks them)."""
        decision = False
        for rule in self.rules:
            if rule.folders_only and not is_dir:
                continue
            if rule.base:
                if not path.startswith(rule.base + "/"):
                    continue
                relative = path[len(rule.base) + 1 :]
            else:
                relative = path
            if rule.regex.match(relative):
                decision = not rule.negate
        return decision

    def skips(self, path: str, is_dir: bool) -> bool:
        """``matches``, counted in ``skipped`` when true."""
        if self.matches(path, is_dir):
            self.skipped += 1
            return True
        return False

    def ignored(self, path: str) -> bool:
        """Whether a file at ``path`` is ignored, by itself or by a folder above it (for a listed tree,
        e.g. an ``s3://`` prefix, which is not walked folder by folder)."""
        parts = path.split("/")
        for depth in range(1, len(parts)):
            if self.matches("/".join(parts[:depth]), True):
                return True
        return self.matches(path, False)
