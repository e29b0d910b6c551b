"""The lock files (tools/lock.py): exact pins only, and every dependency pyproject.toml names is locked at a
version its range allows. Whether the lock still equals the installed environment is
`python tools/lock.py --check` (the Makefile's set-up installs from the lock, so it does after `make setup`)."""

from __future__ import annotations

import runpy
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
lock = runpy.run_path(str(REPO / "tools" / "lock.py"))
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def requirements(lines: list[str]) -> dict[str, Requirement]:
    return {canonicalize_name(r.name): r for r in map(Requirement, lines)}


RUNTIME = requirements(PYPROJECT["project"]["dependencies"])
TEST = requirements(
    PYPROJECT["project"]["optional-dependencies"]["test"] + PYPROJECT["build-system"]["requires"]
)


@pytest.mark.parametrize(
    ("lock_file", "direct"),
    [("requirements.lock", RUNTIME), ("requirements-test.lock", TEST)],
)
def test_every_dependency_is_locked_within_its_range(lock_file: str, direct: dict[str, Requirement]) -> None:
    pinned = lock["read_lock"](REPO / "requirements.lock")  # the test lock includes it (-r)
    pinned |= lock["read_lock"](REPO / lock_file)
    missing = sorted(set(direct) - set(pinned))
    assert not missing, f"{lock_file} lacks {missing}: run `make lock`"
    outside = [
        f"{name}=={pinned[name]} (pyproject: {direct[name]})"
        for name in direct
        if not direct[name].specifier.contains(pinned[name], prereleases=True)
    ]
    assert not outside, f"{lock_file} pins outside pyproject's ranges: {outside}: run `make lock`"


def test_the_test_lock_builds_on_the_runtime_lock_without_repeating_it() -> None:
    text = (REPO / "requirements-test.lock").read_text()
    assert "-r requirements.lock" in text.splitlines()
    runtime = lock["read_lock"](REPO / "requirements.lock")
    test_only = lock["read_lock"](REPO / "requirements-test.lock")
    assert not set(runtime) & set(test_only)
    assert "pip" in test_only  # the Makefile pins the installer from here


def test_the_torch_pin_is_designs() -> None:
    """torch 2.13.0 (DESIGN: a local CPU wheel here, installed first): the lock may not move it."""
    assert lock["read_lock"](REPO / "requirements.lock")["torch"] == "2.13.0"


def test_a_range_instead_of_a_pin_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "requirements.lock"
    bad.write_text("numpy>=1.26\n")
    with pytest.raises(ValueError, match="not an exact pin"):
        lock["read_lock"](bad)


def test_the_makefile_installs_from_the_lock() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert "PIP_INSTALL := $(PY) -m pip install --quiet --no-compile" in makefile
    assert "$(PIP_INSTALL) -r requirements-test.lock" in makefile
    assert "--no-deps --no-build-isolation -e ." in makefile  # nothing resolved outside the lock
    assert "$(STAMP): pyproject.toml $(LOCKS)" in makefile  # a moved lock re-runs the set-up
