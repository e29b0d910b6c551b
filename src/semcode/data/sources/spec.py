"""Source specs: ``KIND:LOCATION`` strings parsed into a SourceSpec, and the cheap checks before reading.

``~`` in local paths is expanded; the kinds and what each reads are in :data:`SOURCE_KINDS` and the
package docstring (:mod:`semcode.data.sources`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from semcode import storage

SOURCE_KINDS = {
    "python": "python:stdlib or python:site-packages: the running interpreter's own code",
    "dir": "dir:PATH: a directory or git checkout of code in any supported language (local or s3://)",
    "csn": "csn:PATH: CodeSearchNet/CodeXGLUE JSONL(.gz) file or directory (local or s3://)",
    "pairs": "pairs:PATH: JSONL with query/code or anchor/positive/negative (local or s3://)",
    "text": "text:PATH: raw text or code rows, JSONL(.gz) or Parquet with a text or content column "
    "(The Stack, code-rag-bench), a file or directory (local or s3://)",
    "humaneval": "humaneval: or humaneval:PATH: HumanEval, evaluation only",
}
PYTHON_LOCATIONS = ("stdlib", "site-packages")


class SourceError(ValueError):
    """A source spec is malformed or names something that does not exist."""


@dataclass(frozen=True)
class SourceSpec:
    kind: str
    location: str
    text: str  # the spec as the user wrote it: the `source` column and the manifest key

    @property
    def eval_only(self) -> bool:
        return self.kind == "humaneval"


def parse_spec(text: str) -> SourceSpec:
    """``"dir:/code"`` -> SourceSpec("dir", "/code"); raises SourceError listing the valid kinds."""
    kind, sep, location = text.partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in SOURCE_KINDS:
        valid = "\n  ".join(SOURCE_KINDS.values())
        raise SourceError(f"unknown source {text!r}; a source is KIND:LOCATION, one of:\n  {valid}")
    location = location.strip()
    if location and not storage.is_s3(location):
        location = os.path.expanduser(location)
    if kind == "python" and location not in PYTHON_LOCATIONS:
        raise SourceError(f"source {text!r}: python sources are python:stdlib and python:site-packages")
    if kind in ("dir", "csn", "pairs", "text") and not location:
        raise SourceError(f"source {text!r} needs a path: {SOURCE_KINDS[kind]}")
    return SourceSpec(kind, location, text)


def check_exists(spec: SourceSpec) -> None:
    """Raise SourceError when a source's path is missing or of the wrong type (cheap: no reading)."""
    if spec.kind == "python" or (spec.kind == "humaneval" and not spec.location):
        return
    location = spec.location
    try:
        found = storage.exists(location)
    except OSError as error:  # an unreachable S3 endpoint, a missing bucket, bad credentials
        raise SourceError(f"source '{spec.text}': cannot check {location}: {error}") from error
    if not found:
        raise SourceError(f"source '{spec.text}': {location} does not exist")
    if storage.is_s3(location):
        return
    if spec.kind == "dir" and not os.path.isdir(location):
        raise SourceError(f"source '{spec.text}': {location} is not a directory")
    if not os.access(location, os.R_OK):
        raise SourceError(f"source '{spec.text}': {location} is not readable (permission denied)")
