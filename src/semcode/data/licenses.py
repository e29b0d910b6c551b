"""Licences: the SPDX licence of every row, found where its source keeps it, and the ingest filter over them.

Users ship search results and decoder output into their own code, so each row says whose terms apply
(the ``license`` column of pairs, corpus, index_meta.parquet and search results; "" = not found). Where
it comes from, by source kind:

- ``dir:`` (a directory or git checkout): the licence file nearest above each file (``LICENSE``,
  ``LICENCE``, ``COPYING``, ``UNLICENSE``, with any suffix: ``LICENSE.md``, ``LICENSE-MIT``), so a
  monorepo's or a vendored folder's own licence wins. Its text is identified by ``licenseclassifier``
  (a pure-Python port of Go's licensecheck: it reports nothing rather than a guess); a file that bundles
  several licence texts counts by its first, the project's own; two licence files side by side (Rust's
  ``LICENSE-MIT`` and ``LICENSE-APACHE``) are a choice: ``Apache-2.0 OR MIT``.
- ``python:site-packages``: each package's metadata (``License-Expression``, else a ``License`` field
  that is an SPDX expression or a licence text, else its ``License ::`` classifiers, else the licence file
  in its ``.dist-info``).
- ``python:stdlib``: ``PSF-2.0``.
- JSONL and text rows: their own ``license`` field (``licenses``, or The Stack's
  ``max_stars_repo_licenses``, a list, read as a choice).

Every value is normalised by ``license-expression`` (``mit`` -> ``MIT``, the deprecated ``GPL-3.0`` ->
``GPL-3.0-only``); a value that is no SPDX expression is kept as written.

The filter (:class:`LicenseFilter`, ingest's ``allow_licenses`` / ``deny_licenses``): a row is kept when
its licence can be met with allowed, undenied licences: every part of an ``AND``, one side of an ``OR``.
``unknown`` in either list stands for rows without a licence found; with an allow list they are dropped
unless it names ``unknown``. Ids are checked before any work: a misspelling is an error naming it.
"""

from __future__ import annotations

import functools
import importlib.metadata
import posixpath
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from license_expression import ExpressionError, LicenseSymbol, LicenseWithExceptionSymbol, get_spdx_licensing

STDLIB_LICENSE = "PSF-2.0"
UNKNOWN = "unknown"  # the filters' and the counts' word for a row without a licence
LICENSE_FILE = re.compile(r"^(licen[cs]e|copying|unlicen[cs]e)([-._].*)?$", re.IGNORECASE)
MAX_LICENSE_BYTES = 200_000  # a licence file read (the longest SPDX texts are ~40 KB)
CLASSIFIERS = {  # the `License ::` trove classifiers that name one SPDX licence
    "MIT License": "MIT",
    "MIT No Attribution License (MIT-0)": "MIT-0",
    "Apache Software License": "Apache-2.0",
    "ISC License (ISCL)": "ISC",
    "Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0",
    "Python Software Foundation License": "PSF-2.0",
    "The Unlicense (Unlicense)": "Unlicense",
    "zlib/libpng License": "Zlib",
    "Boost Software License 1.0 (BSL-1.0)": "BSL-1.0",
    "BSD Zero-Clause License (0BSD)": "0BSD",
    "GNU General Public License v2 (GPLv2)": "GPL-2.0-only",
    "GNU General Public License v2 or later (GPLv2+)": "GPL-2.0-or-later",
    "GNU General Public License v3 (GPLv3)": "GPL-3.0-only",
    "GNU General Public License v3 or later (GPLv3+)": "GPL-3.0-or-later",
    "GNU Lesser General Public License v2 (LGPLv2)": "LGPL-2.0-only",
    "GNU Lesser General Public License v2 or later (LGPLv2+)": "LGPL-2.0-or-later",
    "GNU Lesser General Public License v3 (LGPLv3)": "LGPL-3.0-only",
    "GNU Lesser General Public License v3 or later (LGPLv3+)": "LGPL-3.0-or-later",
    "GNU Affero General Public License v3": "AGPL-3.0-only",
    "GNU Affero General Public License v3 or later (AGPLv3+)": "AGPL-3.0-or-later",
    "Eclipse Public License 2.0 (EPL-2.0)": "EPL-2.0",
    "CC0 1.0 Universal (CC0 1.0) Public Domain Dedication": "CC0-1.0",
}
ROW_FIELDS = ("license", "licenses", "max_stars_repo_licenses")  # a JSONL or text row's own licence


@functools.cache
def _licensing():  # the SPDX licence list, loaded once (~70 ms)
    return get_spdx_licensing()


@functools.lru_cache(maxsize=4096)  # rows of a source share a few licences: each is parsed once
def normalise(value: str) -> str:
    """An SPDX expression in its canonical spelling (``mit or apache-2.0`` -> ``MIT OR Apache-2.0``);
    ExpressionError for an id SPDX does not know."""
    return _licensing().parse(value, validate=True, strict=False).render("{symbol.key}")


def row_license(value: object) -> str:
    """A row's own licence field as a normalised expression ("" for none); a list (The Stack's
    ``max_stars_repo_licenses``) is a choice of its items; a value SPDX does not know is kept as written."""
    if isinstance(value, list):
        items = sorted({row_license(item) for item in value} - {""})
        return (
            items[0]
            if len(items) == 1
            else " OR ".join(f"({item})" if " " in item else item for item in items)
        )
    if not isinstance(value, str) or not value.strip():
        return ""
    try:
        return normalise(value.strip())
    except ExpressionError:
        return value.strip()


def record_license(record: dict) -> str:
    """The licence a JSONL or text record carries in one of ROW_FIELDS (any case of the key), or ""."""
    for key, value in record.items():
        if str(key).lower() in ROW_FIELDS:
            found = row_license(value)
            if found:
                return found
    return ""


def from_text(text: str) -> str:
    """The SPDX id of a licence file's text (its first licence, when it bundles several), or ""."""
    from licenseclassifier import identify_license  # its matcher's tables load on first use (~30 ms)

    matches = identify_license(text)
    return row_license(matches[0].id) if matches else ""


def dir_licenses(paths: Iterable[str], read: Callable[[str], bytes]) -> Callable[[str], str]:
    """For a dir: source's files (relative paths with "/"): a function giving each path its licence, that of
    the licence files nearest above it (``read`` gets a licence file's relative path, returns its bytes)."""
    found: dict[str, list[str]] = {}  # folder ("" = the root) -> licences of its licence files
    for path in paths:
        folder, name = posixpath.split(path)
        if LICENSE_FILE.match(name):
            try:
                text = read(path)[:MAX_LICENSE_BYTES].decode("utf-8", errors="replace")
            except OSError:
                continue
            licence = from_text(text)
            if licence:
                found.setdefault(folder, []).append(licence)
    by_folder = {folder: " OR ".join(sorted(set(ids))) for folder, ids in found.items()}

    def licence_of(path: str) -> str:
        folder = posixpath.dirname(path)
        while True:
            if folder in by_folder:
                return by_folder[folder]
            if not folder:
                return ""
            folder = posixpath.dirname(folder)

    return licence_of


def distribution_license(distribution: importlib.metadata.Distribution) -> str:
    """An installed package's licence from its metadata, or ""."""
    metadata = distribution.metadata
    expression = metadata.get("License-Expression") or ""
    if expression.strip():
        return row_license(expression)
    text = (metadata.get("License") or "").strip()
    if text and "\n" not in text and len(text) < 100:
        try:
            return normalise(text)
        except ExpressionError:
            pass  # "BSD", "new BSD License": the classifiers may say more
    elif text:
        found = from_text(text)  # the whole licence text pasted into the field
        if found:
            return found
    named = sorted(
        {
            CLASSIFIERS[classifier.rsplit(" :: ", 1)[-1]]
            for classifier in metadata.get_all("Classifier") or []
            if classifier.startswith("License ::") and classifier.rsplit(" :: ", 1)[-1] in CLASSIFIERS
        }
    )
    if named:
        return " OR ".join(named)
    for file in distribution.files or []:  # the licence file the wheel ships in its .dist-info
        if file.parts[0].endswith(".dist-info") and LICENSE_FILE.match(file.name):
            try:
                found = from_text(file.read_binary()[:MAX_LICENSE_BYTES].decode("utf-8", errors="replace"))
            except OSError:
                continue
            if found:
                return found
    return ""


def package_licenses() -> dict[str, str]:
    """{top-level module or package name: its distribution's licence} of the running interpreter."""
    licences: dict[str, str] = {}
    for top, names in importlib.metadata.packages_distributions().items():
        for name in names:
            try:
                licence = distribution_license(importlib.metadata.distribution(name))
            except importlib.metadata.PackageNotFoundError:
                continue
            if licence:
                licences[top] = licence
                break
    return licences


def counts(rows: Iterable[dict]) -> dict[str, int]:
    """{licence: rows}, most first; rows without one count as ``unknown``."""
    return dict(Counter(row.get("license") or UNKNOWN for row in rows).most_common())


# --------------------------------------------------------------------------------------------
# The ingest filter


def check_ids(ids: Iterable[str], name: str) -> tuple[str, ...]:
    """The ids of an allow or deny list, each a known SPDX licence id in its canonical spelling (or
    ``unknown``); ValueError naming the list and the first id SPDX does not know."""
    checked = []
    for value in ids:
        value = value.strip()
        if value.lower() == UNKNOWN:
            checked.append(UNKNOWN)
            continue
        try:
            expression = _licensing().parse(value, validate=True, strict=False)
        except ExpressionError:
            raise ValueError(
                f"{name}: {value!r} is not an SPDX licence id (e.g. MIT, Apache-2.0, BSD-3-Clause, "
                "GPL-3.0-only; https://spdx.org/licenses/), nor 'unknown'"
            ) from None
        if not isinstance(expression, LicenseSymbol) or isinstance(expression, LicenseWithExceptionSymbol):
            raise ValueError(f"{name}: {value!r} is an expression; list single licence ids, comma-separated")
        checked.append(expression.key)
    return tuple(dict.fromkeys(checked))


@dataclass(frozen=True)
class LicenseFilter:
    """Which licences ingest keeps: ``allow`` (empty = all) less ``deny``, both checked SPDX ids."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return bool(self.allow or self.deny)

    def _usable(self, licence: str) -> bool:
        return (not self.allow or licence in self.allow) and licence not in self.deny

    @functools.lru_cache(maxsize=4096)  # noqa: B019 (frozen and small: the cache may keep it)
    def permits(self, licence: str) -> bool:
        """Whether a row of this licence (an expression, "" = none found) is kept."""
        if not self.active:
            return True
        if not licence:
            return self._usable(UNKNOWN)
        try:
            expression = _licensing().parse(licence, validate=False, strict=False)
        except ExpressionError:
            return self._usable(licence)  # a row's own value SPDX does not know: kept only when named as is
        return self._met(expression)

    def _met(self, expression: object) -> bool:
        if isinstance(expression, LicenseWithExceptionSymbol):
            return self._usable(expression.license_symbol.key)
        if isinstance(expression, LicenseSymbol):
            return self._usable(expression.key)
        parts = [self._met(part) for part in expression.args]
        return any(parts) if isinstance(expression, _licensing().OR) else all(parts)
