"""Portable paths: nothing a bundle or a registry pointer holds names a folder of the build machine.

``path_roots`` lists the folders to replace and their names (``<run>``, ``<bundle>``, ``<venv>``, ``<python>``,
``<cwd>``, ``~``, ``<tmp>``); ``portable`` rewrites every string of a JSON value with them; ``portable_json_files``
does it to a model folder's settings files. semcode.bundle and semcode.index_bundle apply them to everything
a bundle holds.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from semcode import storage

# An absolute local path left after the roots (two segments at least; not part of a URL, "<run>/x" or "~/x")
ABSOLUTE_PATH = re.compile(r"(?<![\w.~>/-])/[^\s/'\"<>|:;,()\[\]{}]+(?:/[^\s/'\"<>|:;,()\[\]{}]+)+/?")
UNKNOWN_ROOT = "<local>"  # what stands for the folders of an absolute path under none of the roots


def path_roots(named: dict[str, str | os.PathLike[str] | None] | None = None) -> list[tuple[str, str]]:
    """(absolute folder, the name that replaces it), most specific first: ``named`` ({"<run>": the run folder,
    "<bundle>": the bundle, ...}; "/" and s3:// ones are left out), then the build machine's own: the Python
    environment <venv>, the Python installation <python>, the working directory <cwd>, the home ~ and the
    temporary folder <tmp>. A folder under several is named by the deepest (a tie: the earlier)."""
    candidates = [
        *(named or {}).items(),
        ("<venv>", sys.prefix),
        ("<python>", sys.base_prefix),
        ("<cwd>", os.getcwd()),
        ("~", os.path.expanduser("~")),
        ("<tmp>", tempfile.gettempdir()),
    ]
    roots: dict[str, str] = {}
    for name, folder in candidates:
        if folder is None or storage.is_s3(os.fspath(folder)) or not os.path.isabs(os.fspath(folder)):
            continue
        for variant in (os.path.abspath(folder), os.path.realpath(folder)):
            if variant.rstrip("/"):
                roots.setdefault(variant.rstrip("/"), name)
    return sorted(roots.items(), key=lambda item: -len(item[0]))


def portable_text(text: str, roots: list[tuple[str, str]]) -> str:
    """``text`` with every absolute path under a root (path_roots) starting with the root's name instead
    ("<run>/train_encoder/encoder"), and any other absolute local path reduced to its last name
    ("<local>/data.jsonl"); URLs, s3:// URIs and relative names are kept."""
    if "/" not in text:
        return text
    for folder, name in roots:
        if folder in text:
            text = re.sub(re.escape(folder) + r"(?![\w.-])", name.replace("\\", r"\\"), text)
    return ABSOLUTE_PATH.sub(lambda m: f"{UNKNOWN_ROOT}/{m.group(0).rstrip('/').rsplit('/', 1)[-1]}", text)


def portable(value: Any, roots: list[tuple[str, str]]) -> Any:
    """``value`` (JSON: dicts, lists, strings, ...) with portable_text applied to every string, keys too."""
    if isinstance(value, str):
        return portable_text(value, roots)
    if isinstance(value, dict):
        return {portable(key, roots): portable(item, roots) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [portable(item, roots) for item in value]
    return value


# JSON files of a model folder that hold vocabularies, not settings: never rewritten
VOCABULARY_JSON = ("tokenizer", "vocab", "merges", "special_tokens", "added_tokens")


def portable_json_files(folder: Path, roots: list[tuple[str, str]]) -> None:
    """Rewrite the settings JSON files under ``folder`` (a model's config.json, semcode_*.json, ...; not
    its vocabularies) with ``portable``; a file that holds no path is left as it is."""
    for path in sorted(folder.rglob("*.json")) if folder.is_dir() else []:
        if path.name.startswith(VOCABULARY_JSON):
            continue
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        fixed = portable(data, roots)
        if fixed != data:
            path.write_text(json.dumps(fixed, indent=2) + "\n")


def run_folder(stage_dirs: Iterable[Path | None]) -> str | None:
    """The deepest folder holding every stage output (the run's folder), None when it is the root."""
    folders = [os.path.abspath(d) for d in stage_dirs if d is not None]
    common = os.path.commonpath(folders) if folders else "/"
    return None if common in ("/", os.path.abspath(os.sep)) else common


# ---------------------------------------------------------------------------------------------
# Assembling
