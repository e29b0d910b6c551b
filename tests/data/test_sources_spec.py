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


def test_spec_options_a_split_and_a_field_mapping():
    spec = parse_spec("pairs:/data/papers.json#query=title+abstract,code=impl,Dev")
    assert (spec.location, spec.split) == ("/data/papers.json", "valid")
    assert spec.fields == (("query", ("title", "abstract")), ("code", ("impl",)))
    assert parse_spec("csn:/data/#split=partition").fields == (("split", ("partition",)),)
    assert parse_spec("dir:/code/#tag").location == "/code/#tag"  # only pairs: and csn: take options
    for bad, message in [
        ("pairs:/a#holdout", "is not a split"),
        ("pairs:/a#valid,test", "one split per source"),
        ("pairs:/a#qurey=title", "cannot map 'qurey'"),
        ("pairs:/a#query=", "must be FIELD=NAME"),
        ("pairs:/a#split=a+b", "split: one NAME"),
        ("csn:/a#query=title", "it maps split"),
    ]:
        with pytest.raises(SourceError, match=message):
            parse_spec(bad)
