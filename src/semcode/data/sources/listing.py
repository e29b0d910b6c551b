"""The files of a source's location, local or ``s3://``: directory walks and listings, JSONL/Parquet file
lists, streamed lines, and which of them a shard reads.

Hidden directories (``.git``, ``.venv``), ``__pycache__`` and ``site-packages`` are skipped everywhere;
in a ``dir:`` source also what its ``.gitignore`` files exclude (semcode.data.gitignore), counted.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from semcode import storage
from semcode.data.gitignore import GitIgnore
from semcode.data.sources.rows import ExtractOptions, Shard, SourceStats

JSONL_SUFFIXES = (".jsonl", ".jsonl.gz")
PARQUET_SUFFIXES = (".parquet",)
TEXT_SUFFIXES = JSONL_SUFFIXES + PARQUET_SUFFIXES
SKIPPED_DIRS = ("__pycache__", "site-packages")
STREAM_BYTES = 8 << 20  # read size of streamed files: one ranged GET per 8 MiB on S3
MAX_LINE_BYTES = 8 << 20  # a JSONL line longer than this is skipped unread (a long_line reject)
PIECE_BYTES = 1 << 20  # lines are read at most this much at a time


def walk_files(root: str, on_error: Callable[[OSError], None], ignore: GitIgnore | None = None) -> list[str]:
    """Relative paths (with "/") of every file under a local directory, sorted, junk dirs pruned; with
    ``ignore``, also what the tree's .gitignore files exclude (read as the walk enters each folder)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=on_error):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in SKIPPED_DIRS)
        rel = os.path.relpath(dirpath, root)
        if ignore is not None:
            base = "" if rel == "." else PurePosixPath(Path(rel)).as_posix()
            ignore.enter(root, base)
            dirnames[:] = [d for d in dirnames if not ignore.skips(f"{base}/{d}".lstrip("/"), True)]
            filenames = [n for n in filenames if not ignore.skips(f"{base}/{n}".lstrip("/"), False)]
        for name in filenames:
            found.append(PurePosixPath(Path(rel) / name).as_posix() if rel != "." else name)
    return sorted(found)


def dir_files(
    location: str, on_error: Callable[[OSError], None], ignore: GitIgnore | None = None
) -> tuple[str, list[tuple[str, str, str]]]:
    """A dir: location's repo name (the directory's name) and its files as (relative path with "/", where
    to read it, url), local or under an ``s3://`` prefix, junk dirs skipped; with ``ignore``, what the
    tree's .gitignore files exclude too (``ignore.skipped`` counts it)."""
    if storage.is_s3(location):
        prefix = location.rstrip("/")
        repo = prefix.rsplit("/", 1)[-1] or storage.split_s3(prefix)[0]
        listed = []
        for uri in storage.list_files(prefix, recursive=True):
            rel = uri[len(prefix) + 1 :]
            if not any(p.startswith(".") or p in SKIPPED_DIRS for p in rel.split("/")[:-1]):
                listed.append((rel, uri, uri))
        if ignore is not None:
            listed = _not_ignored(listed, ignore)
    else:
        root = os.path.abspath(location)
        repo = os.path.basename(root.rstrip(os.sep)) or "root"
        # The url names the directory (and a git checkout's commit) and the path inside it, not where this
        # machine keeps it: dir://toyrepo/pkg/geometry.py, dir://api@3f2c1e0.../main.go.
        commit = git_head(root)
        base = f"dir://{repo}@{commit}" if commit else f"dir://{repo}"
        files = walk_files(root, on_error, ignore)
        listed = [(rel, os.path.join(root, rel), f"{base}/{rel}") for rel in files]
    return repo, listed


def _not_ignored(listed: list[tuple[str, str, str]], ignore: GitIgnore) -> list[tuple[str, str, str]]:
    """The listed files (an s3:// prefix's) that its .gitignore objects, read shallowest first, keep."""
    ignore_files = [entry for entry in listed if entry[0].rsplit("/", 1)[-1] == ".gitignore"]
    for rel, where, _ in sorted(ignore_files, key=lambda entry: entry[0].count("/")):
        try:
            ignore.add(storage.read_text(where), rel.rpartition("/")[0])
        except (OSError, UnicodeDecodeError):  # unreadable: no rules from it
            continue
    kept = [entry for entry in listed if not ignore.ignored(entry[0])]
    ignore.skipped += len(listed) - len(kept)
    return kept


def git_head(root: str) -> str:
    """The commit a git checkout at ``root`` has checked out (40 hex digits), or "" when it is none.

    Read from ``.git/HEAD`` and the ref it names (a loose ref file or ``packed-refs``), without running git."""
    git = os.path.join(root, ".git")
    try:
        with open(os.path.join(git, "HEAD"), encoding="utf-8") as head_file:
            head = head_file.read(256).strip()
        if not head.startswith("ref: "):
            return head if re.fullmatch(r"[0-9a-f]{40}", head) else ""
        ref = head[5:]
        ref_path = os.path.join(git, *ref.split("/"))
        if os.path.isfile(ref_path):
            with open(ref_path, encoding="utf-8") as ref_file:
                commit = ref_file.read(256).strip()
        else:
            with open(os.path.join(git, "packed-refs"), encoding="utf-8") as packed:
                commit = next((line.split()[0] for line in packed if line.rstrip().endswith(f" {ref}")), "")
    except (OSError, UnicodeDecodeError):
        return ""
    return commit if re.fullmatch(r"[0-9a-f]{40}", commit) else ""


def _files_ending(location: str, suffixes: tuple[str, ...]) -> list[str]:
    """A file location as it is; the files of a directory (or prefix) that end in ``suffixes``, sorted."""
    if storage.is_s3(location):
        if location.endswith(suffixes) and not location.endswith("/"):
            return [location]
        return [uri for uri in storage.list_files(location, recursive=True) if uri.endswith(suffixes)]
    if os.path.isfile(location):
        return [location]
    return [path for path in storage.list_files(location, recursive=True) if path.endswith(suffixes)]


def jsonl_files(location: str) -> list[str]:
    """The JSONL files of a file or directory location: a file as it is (a ``.json`` array too), in a
    directory its ``.jsonl``/``.jsonl.gz`` files."""
    return _files_ending(location, JSONL_SUFFIXES)


def text_files(location: str) -> list[str]:
    """The ``.jsonl``/``.jsonl.gz``/``.parquet`` files of a file or directory location, sorted."""
    return _files_ending(location, TEXT_SUFFIXES)


def read_lines(location: str, max_line_bytes: int = 0) -> Iterator[bytes | None]:
    """The lines of a (maybe gzipped) local file or S3 object, streamed (S3: in STREAM_BYTES ranged reads,
    never the whole object in memory); raises OSError/EOFError when unreadable.

    A line longer than ``max_line_bytes`` (0: MAX_LINE_BYTES; its newline included) is never held whole: it
    is read past in bounded chunks and given as None (the caller counts it, ``long_line``), so the line
    numbers stay right.
    """
    with open_stream(location) as stream:
        yield from stream_lines(stream, max_line_bytes)


@contextlib.contextmanager
def open_stream(location: str) -> Iterator[io.BufferedIOBase]:
    """A (maybe gzipped: detected by its magic bytes) local file or S3 object as a buffered binary stream,
    read in STREAM_BYTES pieces (S3: ranged reads); raises OSError when unreadable."""
    with io.BufferedReader(storage.open_input_file(location), STREAM_BYTES) as raw:
        magic = raw.peek(2)[:2]
        yield gzip.GzipFile(fileobj=raw) if magic == b"\x1f\x8b" else raw


def stream_lines(stream: io.BufferedIOBase, max_line_bytes: int = 0) -> Iterator[bytes | None]:
    """The lines of a binary stream, as :func:`read_lines` gives them (a line over the limit as None)."""
    max_line_bytes = max_line_bytes or MAX_LINE_BYTES
    while piece := stream.readline(PIECE_BYTES):
        if piece.endswith(b"\n") or len(piece) < PIECE_BYTES:  # the whole line (most lines)
            yield piece
            continue
        line = bytearray(piece)  # a long line: gathered piece by piece, up to the limit
        while len(line) <= max_line_bytes and not line.endswith(b"\n"):
            if not (piece := stream.readline(PIECE_BYTES)):
                break
            line += piece
        if len(line) <= max_line_bytes:
            yield bytes(line)
            continue
        del line
        while not piece.endswith(b"\n") and (piece := stream.readline(PIECE_BYTES)):
            pass  # the rest of the line, read past
        yield None


def file_label(location: str) -> tuple[str, str]:
    """(repo fallback, url base) for a JSONL file: its name without suffixes, and a URI."""
    name = location.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".gz", ".jsonl", ".json", ".parquet"):
        name = name.removesuffix(suffix)
    url = location if storage.is_s3(location) else Path(location).resolve().as_uri()
    return name, url


def owned_files(
    files: list[str], options: ExtractOptions, shard: Shard, stats: SourceStats
) -> list[tuple[int, str]]:
    """(position, file) of the files this shard reads, after the max_files limit; counts them in stats."""
    limit = options.max_files or len(files)
    owned = [shard.owns(file) for file in files]
    stats.files_seen = sum(owned)
    stats.files_skipped_by_limit = sum(owned[limit:])
    return [(index, file) for index, file in enumerate(files[:limit]) if owned[index]]
