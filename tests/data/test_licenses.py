"""Licences on real licence texts (the ones installed packages ship) and real package metadata: detection,
the nearest licence file of a dir: source, the allow/deny filter, and every source kind's ``license``."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest
from licence_fixture import APACHE, BSD3, MIT, licensed_tree

from semcode.data import licenses
from semcode.data.licenses import LicenseFilter, check_ids
from semcode.data.sources import read_source
from semcode.data.sources.rows import ExtractOptions
from semcode.data.sources.spec import parse_spec

TOYPKG = Path(__file__).parent / "toypkg"


def test_licence_texts_are_identified_and_prose_is_not() -> None:
    assert licenses.from_text(MIT) == "MIT"
    assert licenses.from_text(APACHE) == "Apache-2.0"
    assert licenses.from_text(BSD3) == "BSD-3-Clause"
    assert licenses.from_text(MIT + "\n\n" + APACHE) == "MIT"  # a bundle counts by its first: the project's
    assert licenses.from_text("This project is released under the MIT license. See LICENSE.") == ""


def test_row_values_are_normalised_and_unknown_ones_kept_as_written() -> None:
    assert licenses.row_license("mit or apache-2.0") == "MIT OR Apache-2.0"
    assert licenses.row_license("GPL-3.0") == "GPL-3.0-only"  # the deprecated id's meaning
    assert licenses.row_license(["apache-2.0", "mit", "MIT"]) == "Apache-2.0 OR MIT"  # The Stack: a choice
    assert licenses.row_license("Some Custom Licence") == "Some Custom Licence"
    assert licenses.row_license(None) == licenses.row_license("  ") == ""
    assert licenses.record_license({"License": "bsd-3-clause", "code": "x"}) == "BSD-3-Clause"


def test_package_metadata_gives_the_installed_packages_licences() -> None:
    def of(name: str) -> str:
        return licenses.distribution_license(importlib.metadata.distribution(name))

    assert of("licenseclassifier") == "BSD-3-Clause"  # License-Expression
    assert of("requests") == "Apache-2.0"  # a License field that is an SPDX id
    assert of("Jinja2") == "BSD-3-Clause"  # only "BSD License" classifiers: its .dist-info licence file
    assert licenses.package_licenses()["yaml"] == "MIT"  # by top-level module, as site-packages rows' repo


def test_filter_meets_and_or_and_unknown() -> None:
    allow = LicenseFilter(allow=("MIT", "Apache-2.0"))
    assert allow.permits("MIT") and allow.permits("GPL-3.0-only OR MIT")
    assert not allow.permits("MIT AND GPL-3.0-only") and not allow.permits("") and not allow.permits("Custom")
    assert LicenseFilter(allow=("MIT", "unknown")).permits("")
    deny = LicenseFilter(deny=("GPL-3.0-only",))
    assert deny.permits("") and deny.permits("GPL-3.0-only OR MIT") and deny.permits("Apache-2.0")
    assert not deny.permits("GPL-3.0-only") and not deny.permits("MIT AND GPL-3.0-only")
    assert not LicenseFilter(deny=("unknown",)).permits("")
    assert LicenseFilter().permits("anything at all")


def test_ids_are_checked_and_canonical() -> None:
    assert check_ids(["mit", " apache-2.0", "GPL-3.0", "Unknown"], "allow_licenses") == (
        "MIT",
        "Apache-2.0",
        "GPL-3.0-only",
        "unknown",
    )
    with pytest.raises(ValueError, match=r"deny_licenses: 'GPL3' is not an SPDX licence id"):
        check_ids(["GPL3"], "deny_licenses")
    with pytest.raises(ValueError, match="is an expression"):
        check_ids(["MIT OR Apache-2.0"], "allow_licenses")


def test_dir_rows_carry_their_nearest_licence_file(tmp_path: Path) -> None:
    repo = licensed_tree(tmp_path)
    result = read_source(parse_spec(f"dir:{repo}"), ExtractOptions())
    by_path = {row["path"]: row["license"] for row in result.corpus}
    assert by_path["dual/shapes.py"] == "Apache-2.0 OR MIT"
    assert {licence for path, licence in by_path.items() if not path.startswith("dual/")} == {"BSD-3-Clause"}
    assert all(row["license"] for row in result.pairs)


def test_dir_files_refused_by_licence_are_rejects_before_reading(tmp_path: Path) -> None:
    repo = licensed_tree(tmp_path)
    whole = read_source(parse_spec(f"dir:{repo}"), ExtractOptions())
    kept = read_source(parse_spec(f"dir:{repo}"), ExtractOptions(licenses=LicenseFilter(allow=("MIT",))))
    assert {row["path"] for row in kept.corpus} == {"dual/shapes.py"}
    refused = whole.stats.files_parsed - kept.stats.files_parsed
    assert kept.stats.rejects["license"] == refused > 0
    assert kept.stats.error_share == 0.0  # a rule, not bad input


def test_python_sources_carry_psf_and_package_licences() -> None:
    options = ExtractOptions(max_files=5)
    stdlib = read_source(parse_spec("python:stdlib"), options)
    assert stdlib.corpus and {row["license"] for row in stdlib.corpus} == {"PSF-2.0"}
    site = read_source(parse_spec("python:site-packages"), ExtractOptions(max_files=40))
    known = licenses.package_licenses()
    assert site.corpus and all(row["license"] == known.get(row["repo"], "") for row in site.corpus)
    assert any(row["license"] for row in site.corpus)


def test_pairs_rows_carry_their_license_field_and_are_filtered(tmp_path: Path) -> None:
    code = "def add(a, b):\n    total = a + b\n    return total\n"
    rows = [
        {"query": "add two numbers", "code": code, "license": "mit"},
        {"query": "add two numbers again", "code": code + "\n", "license": "GPL-3.0-or-later"},
        {"query": "add numbers without a licence", "code": code + "\n\n"},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    whole = read_source(parse_spec(f"pairs:{path}"), ExtractOptions())
    assert [row["license"] for row in whole.pairs] == ["MIT", "GPL-3.0-or-later", ""]
    deny = ExtractOptions(licenses=LicenseFilter(deny=("GPL-3.0-or-later",)))
    kept = read_source(parse_spec(f"pairs:{path}"), deny)
    assert [row["license"] for row in kept.pairs] == ["MIT", ""]
    assert kept.stats.rejects["license"] == 1
    mapped = read_source(parse_spec(f"pairs:{path}#license=query"), ExtractOptions())
    assert mapped.pairs[0]["license"] == "add two numbers"  # a mapping names the field; kept as written


def test_text_rows_read_the_stacks_licence_list(tmp_path: Path) -> None:
    code = (TOYPKG / "geometry.py").read_text()
    path = tmp_path / "stack.jsonl"
    rows = [
        {"content": code, "max_stars_repo_path": "a/geometry.py", "max_stars_repo_licenses": ["MIT"]},
        {"content": code, "max_stars_repo_path": "b/geometry.py", "max_stars_repo_licenses": ["AGPL-3.0"]},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    whole = read_source(parse_spec(f"text:{path}"), ExtractOptions())
    assert {row["license"] for row in whole.corpus} == {"MIT", "AGPL-3.0-only"}
    deny = ExtractOptions(licenses=LicenseFilter(deny=check_ids(["AGPL-3.0"], "deny_licenses")))
    kept = read_source(parse_spec(f"text:{path}"), deny)
    assert {row["license"] for row in kept.corpus} == {"MIT"} and kept.stats.rejects["license"] == 1
