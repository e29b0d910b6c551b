"""The model registry's layout: ``<registry>/<name>/<version>/`` (a published bundle, complete once its
COMPLETE marker is there) and ``<registry>/<name>/latest``, the pointer to the version search and the gate
take as the champion. Local folders and s3:// alike (semcode.storage). publish writes it
(semcode.stages.publish: a compare-and-swap under a lock), the gate, search, serve and ``semcode run`` read it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from semcode import storage
from semcode.bundle import COMPLETE_MARKER, LATEST, check_version, read_json
from semcode.portable import path_roots, portable


def version_uri(registry: str, name: str, version: str) -> str:
    return storage.join(registry, name, check_version(version))


def latest_uri(registry: str, name: str) -> str:
    return storage.join(registry, name, LATEST)


def read_latest(registry: str, name: str) -> dict | None:
    """The ``latest`` pointer of ``name`` in ``registry``, or None when nothing was published yet.

    A missing S3 bucket or unreachable endpoint raises StorageError: it is not "no champion".
    """
    uri = latest_uri(registry, name)
    if not storage.exists(uri):
        return None
    pointer = read_json(uri, f"registry pointer {name}/{LATEST}")
    if not isinstance(pointer.get("version"), str):
        raise ValueError(f"registry pointer {uri} has no version: {pointer}")
    return pointer


def resolve_latest(registry: str, name: str) -> str | None:
    """The folder (path or s3:// URI) of the latest published version of ``name``, or None.

    The folder is rebuilt from ``registry`` and the pointer's version (the pointer's ``path`` is only
    informative), so a registry copied elsewhere still resolves.
    """
    pointer = read_latest(registry, name)
    if pointer is None:
        return None
    folder = version_uri(registry, name, pointer["version"])
    if not storage.exists(storage.join(folder, COMPLETE_MARKER)):
        raise ValueError(
            f"registry pointer {latest_uri(registry, name)} names version {pointer['version']}, but "
            f"{folder} has no {COMPLETE_MARKER}: the registry is damaged"
        )
    return folder


def write_latest(registry: str, name: str, pointer: dict) -> None:
    """Replace the ``latest`` pointer in one atomic step: one PUT on S3, os.replace on local disk. Its
    ``path`` is made relative to the registry ("<name>/<version>"), whatever the caller gave, and nothing
    in it names a local folder (``portable``)."""
    uri = latest_uri(registry, name)
    pointer = {**portable(pointer, path_roots()), "path": f"{name}/{pointer['version']}"}
    data = json.dumps(pointer, indent=2) + "\n"
    if storage.is_s3(uri):
        storage.write_text(uri, data)  # a small object is one PutObject: readers see old or new, whole
        return
    target = Path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{LATEST}.{os.getpid()}.partial")
    partial.write_text(data)
    os.replace(partial, target)
