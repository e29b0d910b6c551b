"""The corpus library: which rows are indexed (the even shares of a capped sample), the corpus shards'
checks and the indexing config's; the rows' embedding and metadata end to end are the indexing stages'
tests (tests/stages/test_build_index.py, tests/stages/test_embed_corpus.py)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from semcode import corpus
from semcode.config import ConfigError


def test_even_shares_take_small_sources_whole_and_split_the_rest() -> None:
    assert corpus.even_shares([10, 40, 6], 24) == [9, 9, 6]
    assert corpus.even_shares([8_586, 89_216], 25_000) == [8_586, 16_414]  # the local preset's sources
    assert corpus.even_shares([5, 5, 5], 4) == [2, 1, 1]  # the last row to the first of the ties
    assert corpus.even_shares([3, 0, 2], 100) == [3, 0, 2]  # a cap over the corpus: everything


def test_bad_corpus_shards_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        corpus.corpus_shards(tmp_path / "missing")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(FileNotFoundError, match="no part-\\*.parquet"):
        corpus.corpus_shards(tmp_path / "nothing")
    (tmp_path / "code_only").mkdir()
    pq.write_table(pa.table({"code": ["def f(): pass"]}), tmp_path / "code_only" / "part-00000.parquet")
    missing = r"no column\(s\) \['language', 'repo', 'path', 'func_name', 'url', 'query'\]"
    with pytest.raises(ValueError, match=missing):
        corpus.corpus_shards(tmp_path / "code_only")


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="use_gpu"):
        corpus.BuildIndexConfig(use_gpu="maybe").validate()
    with pytest.raises(ConfigError, match="refine_k_factor"):
        corpus.BuildIndexConfig(refine_k_factor=0.5).validate()
    with pytest.raises(ConfigError, match="recall_queries must be >= 1"):
        corpus.BuildIndexConfig(recall_queries=0).validate()
    with pytest.raises(ConfigError, match="runtime"):
        corpus.BuildIndexConfig(runtime="tensorrt").validate()


def test_search_documents_put_location_and_doc_before_the_code_in_every_language() -> None:
    from semcode.corpus import dotted_location, search_document

    assert dotted_location("json/__init__.py", "JSONEncoder.encode") == "json.JSONEncoder.encode"
    assert dotted_location("tempfile.py", "mkdtemp") == "tempfile.mkdtemp"
    assert dotted_location("pkg/server/handler.go", "Server.Serve") == "pkg.server.handler.Server.Serve"
    assert dotted_location("lib/router/index.js", "proto.handle") == "lib.router.proto.handle"
    assert dotted_location("src/net/mod.rs", "connect") == "src.net.connect"
    assert dotted_location("", "main") == "main"
    code = "def getenv(key, default=None):\n    return environ.get(key, default)\n"
    doc = "Get an environment variable."
    assert search_document("name+doc+code", code, doc, "os.py", "getenv") == f"os.getenv\n{doc}\n{code}"
    assert search_document("doc+code", code, doc, "os.py", "getenv") == f"{doc}\n{code}"
    assert search_document("code", code, doc, "os.py", "getenv") == code
    undocumented = "int add(int a, int b) { return a + b; }"
    assert (
        search_document("name+doc+code", undocumented, "", "src/math.c", "add")
        == f"src.math.add\n{undocumented}"
    )
