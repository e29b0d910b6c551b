"""Source specs: ``KIND:LOCATION`` strings parsed into a SourceSpec, and the cheap checks before reading.

``~`` in local paths is expanded; the kinds and what each reads are in :data:`SOURCE_KINDS` and the
package docstring (:mod:`semcode.data.sources`).

Options after ``#`` (``pairs:`` and ``csn:`` only; comma-separated), for files a user brings as they are:

- a split, ``#valid``: every row of the source goes to that split (train, valid, test; validation, val,
  dev and eval mean valid), whatever its own ``split`` field says: ``--source pairs:train.jsonl
  --source pairs:val.jsonl#valid``;
- a field mapping, ``FIELD=NAME`` or ``FIELD=NAME+NAME``: the row's FIELD is the record's NAME (several:
  their texts joined; a dotted NAME reads a nested object): ``pairs:papers.json#query=title+abstract``.
  ``pairs:`` maps any of PAIR_FIELDS, ``csn:`` only ``split`` (``csn:data/#split=partition``).

The fields a mapping names are checked in each file before any work (semcode.data.sources.jsonl
check_fields), naming the file and the field.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from semcode import storage
from semcode.data.split import SPLIT_NAMES, split_name

SOURCE_KINDS = {
    "python": "python:stdlib or python:site-packages: the running interpreter's own code",
    "dir": "dir:PATH: a directory or git checkout of code in any supported language (local or s3://)",
    "csn": "csn:PATH: CodeSearchNet/CodeXGLUE JSONL(.gz) file or directory (local or s3://)",
    "pairs": "pairs:PATH[#SPLIT][#FIELD=NAME+NAME,...]: JSONL or a JSON array with query/code or "
    "anchor/positive/negative, an optional split field (local or s3://)",
    "text": "text:PATH: raw text or code rows, JSONL(.gz) or Parquet with a text or content column "
    "(The Stack, code-rag-bench), a file or directory (local or s3://)",
    "humaneval": "humaneval: or humaneval:PATH: HumanEval, evaluation only",
}
PYTHON_LOCATIONS = ("stdlib", "site-packages")
# The fields a pairs: mapping may set (semcode.data.pairs' columns a user's file can supply) and csn:'s.
PAIR_FIELDS = (
    "query",
    "code",
    "hard_negatives",
    "language",
    "repo",
    "path",
    "func_name",
    "url",
    "split",
    "license",
)
MAPPABLE = {"pairs": PAIR_FIELDS, "csn": ("split",)}


class SourceError(ValueError):
    """A source spec is malformed or names something that does not exist."""


@dataclass(frozen=True)
class SourceSpec:
    kind: str
    location: str
    text: str  # the spec as the user wrote it: the `source` column and the manifest key
    split: str = ""  # "#valid": every row goes to this split ("" = the rows' own split field, or the hash)
    # "#query=title+abstract": (("query", ("title", "abstract")),)
    fields: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def eval_only(self) -> bool:
        return self.kind == "humaneval"


def parse_options(text: str, kind: str, options: str) -> tuple[str, tuple[tuple[str, tuple[str, ...]], ...]]:
    """The split and the field mapping of a spec's ``#`` options; SourceError names what is wrong."""
    split, fields = "", {}
    allowed = MAPPABLE[kind]
    for option in options.split(","):
        target, equals, names = (part.strip() for part in option.partition("="))
        if not equals:
            if not split_name(target):
                raise SourceError(
                    f"source {text!r}: option {option!r} is not a split ({', '.join(SPLIT_NAMES)}) nor "
                    f"FIELD=NAME with a FIELD of {', '.join(allowed)}"
                )
            if split:
                raise SourceError(f"source {text!r}: one split per source, got {split!r} and {target!r}")
            split = split_name(target)
            continue
        parts = tuple(name.strip() for name in names.split("+"))
        if target not in allowed:
            raise SourceError(f"source {text!r}: {kind}: cannot map {target!r}; it maps {', '.join(allowed)}")
        if target in fields or not all(parts) or (len(parts) > 1 and target in ("hard_negatives", "split")):
            raise SourceError(
                f"source {text!r}: mapping {option!r} must be FIELD=NAME or FIELD=NAME+NAME (hard_negatives "
                "and split: one NAME), each FIELD once"
            )
        fields[target] = parts
    return split, tuple(fields.items())


def parse_spec(text: str) -> SourceSpec:
    """``"dir:/code"`` -> SourceSpec("dir", "/code"); raises SourceError listing the valid kinds."""
    kind, sep, location = text.partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in SOURCE_KINDS:
        valid = "\n  ".join(SOURCE_KINDS.values())
        raise SourceError(f"unknown source {text!r}; a source is KIND:LOCATION, one of:\n  {valid}")
    split, fields = "", ()
    if kind in MAPPABLE and "#" in location:
        location, _, options = location.partition("#")
        split, fields = parse_options(text, kind, options)
    location = location.strip()
    if location and not storage.is_s3(location):
        location = os.path.expanduser(location)
    if kind == "python" and location not in PYTHON_LOCATIONS:
        raise SourceError(f"source {text!r}: python sources are python:stdlib and python:site-packages")
    if kind in ("dir", "csn", "pairs", "text") and not location:
        raise SourceError(f"source {text!r} needs a path: {SOURCE_KINDS[kind]}")
    return SourceSpec(kind, location, text, split, fields)


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
