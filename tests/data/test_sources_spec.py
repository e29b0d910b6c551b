"""Source specs: parsing KIND:LOCATION and the cheap existence checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from semcode.data.sources.spec import SOURCE_KINDS, SourceError, SourceSpec, check_exists, parse_spec


def test_parse_spec_errors_list_the_kinds():
    with pytest.raises(SourceError, match="one of") as error:
        parse_spec("stack:/data")
    for kind in SOURCE_KINDS:
        assert f"{kind}:" in str(error.value)
    with pytest.raises(SourceError, match="python:stdlib and python:site-packages"):
        parse_spec("python:everything")
    with pytest.raises(SourceError, match="needs a path"):
        parse_spec("dir:")
    assert parse_spec("DIR:/x") == SourceSpec("dir", "/x", "DIR:/x")
    assert parse_spec("humaneval:").eval_only


def test_check_exists(tmp_path: Path):
    with pytest.raises(SourceError, match="does not exist"):
        check_exists(parse_spec(f"dir:{tmp_path / 'missing'}"))
    (tmp_path / "file.jsonl").write_text("{}\n")
    with pytest.raises(SourceError, match="not a directory"):
        check_exists(parse_spec(f"dir:{tmp_path / 'file.jsonl'}"))
    check_exists(parse_spec(f"pairs:{tmp_path / 'file.jsonl'}"))
    check_exists(parse_spec("python:stdlib"))
