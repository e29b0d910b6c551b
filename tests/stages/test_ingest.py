"""The ingest stage end to end on small real inputs: run(), main(), manifest, splits, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from semcode import storage
from semcode.config import ConfigError, from_dict
from semcode.data.pairs import COLUMNS, SPLITS, read_split, read_table
from semcode.data.split import assign_split
from semcode.stages import ingest
from semcode.stages.ingest import IngestConfig, IngestError

DATA = Path(__file__).parents[1] / "data"
CSN = DATA / "csn"
PAIRS = DATA / "pairs" / "pairs_example.jsonl"
SMALL_REPO = DATA / "smallrepo"  # 4 files, 32 documented functions in Go and TypeScript
FAST = {"num_perm": 64}  # fewer permutations: same behaviour on these tiny inputs, faster tests


def make_toy_repo(root: Path) -> Path:
    """The toy package in a checkout, with a syntax error, a binary and a non-UTF-8 file beside it."""
    repo = root / "toyrepo"
    shutil.copytree(DATA / "toypkg", repo / "toypkg")
    (repo / "broken_syntax.py").write_text("def broken(:\n    return 1\n")
    (repo / "blob.py").write_bytes(b"\x00\x01 binary \x00\n")
    (repo / "latin1.py").write_bytes(b'def f():\n    """Gr\xfc\xdfe aus der Welt."""\n    return 1\n')
    return repo


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def many_repo_pairs(path: Path, repos: int, per_repo: int = 3, offset: int = 0) -> Path:
    """Pairs from many repositories, each function distinct enough to survive deduplication."""
    rows = []
    for r in range(offset, offset + repos):
        for f in range(per_repo):
            words = [f"name{r}x{f}y{k}" for k in range(8)]
            code = f"def fn_{r}_{f}(value):\n" + "".join(
                f"    {w} = value + {k}\n" for k, w in enumerate(words)
            )
            rows.append(
                {
                    "query": f"function {f} of repository {r}",
                    "code": code,
                    "repo": f"org/repo{r}",
                    "path": f"mod{f}.py",
                    "func_name": f"fn_{r}_{f}",
                }
            )
    return write_jsonl(path, rows)


def config(**values) -> IngestConfig:
    return from_dict(IngestConfig, {**FAST, **values})


def read_all_pairs(out: Path) -> list[dict]:
    return [row for split in SPLITS for row in read_split(out / "pairs", split).to_pylist()]


def test_run_end_to_end(tmp_path: Path):
    repo = make_toy_repo(tmp_path)
    sources = [f"dir:{repo}", f"csn:{CSN}", f"pairs:{PAIRS}", "humaneval:"]
    out = tmp_path / "out"
    manifest = ingest.run(config(sources=sources), out)

    assert manifest == json.loads((out / "manifest.json").read_text())
    saved = json.loads((out / "config.json").read_text())
    assert saved["config_class"] == "IngestConfig" and saved["config"]["sources"] == sources

    pairs = read_all_pairs(out)
    corpus = read_table(out / "corpus").to_pylist()
    evaluation = read_table(out / "eval" / "humaneval").to_pylist()
    assert pq.read_schema(next((out / "pairs" / "train").glob("part-*.parquet"))).names == list(COLUMNS)
    # the manifest counts match the files
    assert manifest["totals"]["pairs"] == len(pairs) == sum(manifest["split"]["sizes"].values())
    assert manifest["totals"]["corpus_rows"] == len(corpus)
    assert manifest["totals"]["eval_rows"] == len(evaluation) == 164
    assert manifest["eval"] == {"humaneval": {"rows": 164, "dir": "eval/humaneval"}}
    for split in SPLITS:
        assert manifest["split"]["sizes"][split] == read_split(out / "pairs", split).num_rows
    dedup = manifest["dedup"]["pairs"]
    per_source = manifest["sources"]
    assert (
        dedup["before"]
        == sum(s["pairs"] for s in per_source.values())
        == dedup["after"] + (dedup["exact_removed"] + dedup["near_removed"] + dedup["eval_overlap_removed"])
    )
    assert dedup["after"] == len(pairs)

    toy = per_source[f"dir:{repo}"]
    assert toy["pairs"] == 12 and toy["corpus_rows"] == 19 and toy["files_seen"] == 9  # 5 index-only rows
    assert toy["rejects"]["syntax_error"] == 1 and toy["rejects"]["binary"] == 1
    assert toy["rejects"]["decode_error"] == 1 and toy["rejects"]["test_path"] == 1
    # no languages given: every language, so the Java row of the CSN file is read too
    assert (
        per_source[f"csn:{CSN}"]["pairs"] == 6 and per_source[f"csn:{CSN}"]["rejects"]["malformed_json"] == 1
    )
    assert per_source[f"csn:{CSN}"]["languages"]["java"]["pairs"] == 1
    assert toy["languages"]["python"]["pairs"] == 12 and manifest["languages"]["java"]["functions"] == 1
    assert manifest["languages"]["python"]["pairs"] == sum(
        s["languages"].get("python", {}).get("pairs", 0) for s in per_source.values()
    )
    assert per_source[f"pairs:{PAIRS}"]["pairs"] == 4 and per_source["humaneval:"]["eval_rows"] == 164
    assert manifest["throughput"]["pairs_per_s"] > 0 and manifest["seconds"] > 0

    # evaluation rows never reach training; every row says where it came from
    assert {row["source"] for row in pairs} == {f"dir:{repo}", f"csn:{CSN}", f"pairs:{PAIRS}"}
    assert all(row["repo"] != "humaneval" for row in pairs + corpus)
    assert {row["split"] for row in evaluation} == {"test"}
    # one unit (repository, or file when there are too few repositories) is never in two splits
    unit = manifest["split"]["unit"]
    seen: dict[str, str] = {}
    for row in pairs:
        key = row["repo"] if unit == "repo" else f"{row['repo']}/{row['path']}"
        assert seen.setdefault(key, row["split"]) == row["split"]
    hard = [row for row in pairs if row["hard_negatives"]]
    assert len(hard) == 2


def test_split_by_repository_is_stable_and_never_leaks(tmp_path: Path):
    first = many_repo_pairs(tmp_path / "first.jsonl", repos=60)
    out = tmp_path / "out"
    manifest = ingest.run(config(sources=[f"pairs:{first}"], split_unit="repo"), out)
    assert manifest["split"]["unit"] == "repo" and manifest["warnings"] == []
    pairs = read_all_pairs(out)
    assert len(pairs) == 180
    split_of: dict[str, str] = {}
    for row in pairs:
        assert split_of.setdefault(row["repo"], row["split"]) == row["split"]
        assert row["split"] == assign_split(row["repo"], 0, (0.8, 0.1, 0.1))
    assert all(manifest["split"]["sizes"][name] > 0 for name in SPLITS)
    assert sum(manifest["split"]["repos"].values()) == 60
    assert sorted(sum(manifest["split"]["repo_names"].values(), [])) == sorted(split_of)

    # more repositories later: the old ones stay where they were
    second = many_repo_pairs(tmp_path / "second.jsonl", repos=40, offset=60)
    ingest.run(config(sources=[f"pairs:{first}", f"pairs:{second}"], split_unit="repo"), out)
    for row in read_all_pairs(out):
        if row["repo"] in split_of:
            assert row["split"] == split_of[row["repo"]]


def test_a_small_repository_is_split_by_function_and_fills_every_split(tmp_path: Path):
    # 4 files, 32 documented functions in Go and TypeScript: too few repositories and files to split by,
    # so by function; neither valid nor test is left empty (the hash alone leaves test empty here).
    manifest = ingest.run(config(sources=[f"dir:{SMALL_REPO}"]), tmp_path / "auto")
    split = manifest["split"]
    assert split["unit"] == "function" and split["by_rank"]
    assert split["sizes"] == {"train": 26, "valid": 3, "test": 3}
    assert any("split by function (32 functions)" in warning for warning in manifest["warnings"])
    pairs = read_all_pairs(tmp_path / "auto")
    assert {row["language"] for row in pairs} == {"go", "typescript"}
    corpus = read_table(tmp_path / "auto" / "corpus").to_pylist()
    split_of = {(row["path"], row["func_name"]): row["split"] for row in pairs}
    assert all(split_of.get((row["path"], row["func_name"]), row["split"]) == row["split"] for row in corpus)


def test_a_repository_of_enough_files_is_split_by_file(tmp_path: Path):
    repo = tmp_path / "files"
    for index in range(12):
        (repo / f"mod{index}.go").parent.mkdir(parents=True, exist_ok=True)
        (repo / f"mod{index}.go").write_text(
            f"package mod\n\n// Scale{index} multiplies a value by the factor of module {index}.\n"
            f"func Scale{index}(value int) int {{\n\tfactor := {index} + 1\n\treturn value * factor\n}}\n"
        )
    manifest = ingest.run(config(sources=[f"dir:{repo}"]), tmp_path / "out")
    assert manifest["split"]["unit"] == "file" and all(manifest["split"]["sizes"].values())
    assert any("split by file (12 files)" in warning for warning in manifest["warnings"])


def test_forced_repository_unit_can_leave_splits_empty(tmp_path: Path):
    repo = make_toy_repo(tmp_path)
    only = assign_split("toyrepo", 0, (0.8, 0.1, 0.1))
    forced = config(sources=[f"dir:{repo}"], split_unit="repo")
    if only == "train":
        manifest = ingest.run(forced, tmp_path / "repo")
        assert manifest["split"]["sizes"]["valid"] == manifest["split"]["sizes"]["test"] == 0
        assert any("valid split is empty" in warning for warning in manifest["warnings"])
    else:
        with pytest.raises(IngestError, match="train split is empty"):
            ingest.run(forced, tmp_path / "repo")


def test_splits_the_files_give_are_kept(tmp_path: Path):
    """A #valid file, rows with a split field, a JSON array with other field names: each as the user gave it."""
    train = many_repo_pairs(tmp_path / "train.jsonl", repos=12)
    val = many_repo_pairs(tmp_path / "val.jsonl", repos=3, offset=100)
    rows = [
        json.loads(line)
        for line in many_repo_pairs(tmp_path / "t.jsonl", 2, offset=200).read_text().splitlines()
    ]
    fielded = [dict(row, split="test" if index % 2 else "Validation") for index, row in enumerate(rows)]
    write_jsonl(tmp_path / "fielded.jsonl", fielded)
    papers = [
        {
            "title": f"Paper {index} on sorting",
            "abstract": f"Method {index} sorts in place.",
            "impl": f"def sort_{index}(items):\n"
            + "".join(f"    step_{index}_{k} = items[{k}]\n" for k in range(6)),
        }
        for index in range(6)
    ]
    (tmp_path / "papers.json").write_text(json.dumps(papers, indent=1))
    sources = [
        f"pairs:{train}",
        f"pairs:{val}#valid",
        f"pairs:{tmp_path / 'fielded.jsonl'}",
        f"pairs:{tmp_path / 'papers.json'}#query=title+abstract,code=impl,train",
    ]
    out = tmp_path / "out"
    manifest = ingest.run(config(sources=sources), out)
    pairs = read_all_pairs(out)
    by_source = {}
    for row in pairs:
        by_source.setdefault(row["source"], set()).add(row["split"])
    assert by_source[sources[1]] == {"valid"} and by_source[sources[3]] == {"train"}
    assert by_source[sources[2]] == {"valid", "test"}
    assert by_source[sources[0]] <= {"train", "test"}  # valid is given by val.jsonl: no hashed row goes there
    assert manifest["split"]["given"] == {"train": 6, "valid": 9 + 3, "test": 3}
    paper = next(row for row in pairs if row["source"] == sources[3])
    assert paper["query"].startswith("Paper ") and "sorts in place" in paper["query"]
    assert paper["url"].endswith("papers.json#/0") and paper["code"].startswith("def sort_0(items):")


def test_bad_field_mappings_and_splits_are_refused_before_work(tmp_path: Path):
    (tmp_path / "papers.json").write_text(
        json.dumps([{"title": "a paper", "code": "def f():\n    return 1\n"}])
    )
    with pytest.raises(IngestError, match=r"papers.json has no field 'abstrct' \(mapped to query\)"):
        ingest.check_sources(config(sources=[f"pairs:{tmp_path / 'papers.json'}#query=title+abstrct"]))
    with pytest.raises(ConfigError, match="cannot map 'qurey'"):
        config(sources=[f"pairs:{tmp_path / 'papers.json'}#qurey=title"]).validate()
    write_jsonl(
        tmp_path / "odd.jsonl", [{"query": "a b c", "code": "def f():\n    return 1\n", "split": "holdout"}]
    )
    with pytest.raises(IngestError, match=r"odd.jsonl#L1: split 'holdout' is not one of"):
        ingest.run(config(sources=[f"pairs:{tmp_path / 'odd.jsonl'}"]), tmp_path / "out")


def test_near_duplicates_across_sources_keep_the_first(tmp_path: Path):
    code = (DATA / "toypkg" / "geometry.py").read_text().split("def midpoint")[0].split("def distance")[1]
    original = "def distance" + code
    renamed = original.replace("dy", "delta_y")  # one identifier renamed: a near duplicate
    a = write_jsonl(
        tmp_path / "a.jsonl", [{"query": "distance between two points", "code": original, "repo": "a"}]
    )
    b = write_jsonl(
        tmp_path / "b.jsonl", [{"query": "how far apart two points are", "code": renamed, "repo": "b"}]
    )
    rows = many_repo_pairs(tmp_path / "filler.jsonl", repos=30)
    manifest = ingest.run(config(sources=[f"pairs:{a}", f"pairs:{b}", f"pairs:{rows}"]), tmp_path / "out")
    assert manifest["dedup"]["pairs"]["near_removed"] == 1
    queries = {row["query"] for row in read_all_pairs(tmp_path / "out")}
    assert "distance between two points" in queries and "how far apart two points are" not in queries


def test_two_workers_write_what_one_writes(tmp_path: Path):
    """With workers=2 the corpus is deduplicated in a second process beside the pairs: same result."""
    repo = make_toy_repo(tmp_path)
    sources = [f"dir:{repo}", f"csn:{CSN}", f"pairs:{PAIRS}"]
    manifests = {n: ingest.run(config(sources=sources, workers=n), tmp_path / f"w{n}") for n in (1, 2)}
    assert read_all_pairs(tmp_path / "w1") == read_all_pairs(tmp_path / "w2")
    assert (
        read_table(tmp_path / "w1" / "corpus").to_pylist()
        == read_table(tmp_path / "w2" / "corpus").to_pylist()
    )
    dedup = {
        n: {k: v for k, v in m["dedup"]["corpus"].items() if k != "seconds"} for n, m in manifests.items()
    }
    assert dedup[1] == dedup[2] and dedup[1]["before"] == 30  # with the 5 index-only toy rows


def test_pairs_that_copy_an_evaluation_problem_are_removed(tmp_path: Path):
    from semcode.data.sources import read_source
    from semcode.data.sources.rows import ExtractOptions
    from semcode.data.sources.spec import parse_spec

    problem = read_source(parse_spec("humaneval:"), ExtractOptions()).eval_rows[0]
    leak = write_jsonl(
        tmp_path / "leak.jsonl", [{"query": "close numbers", "code": problem["code"], "repo": "leak"}]
    )
    rows = many_repo_pairs(tmp_path / "rows.jsonl", repos=30)
    out = tmp_path / "out"
    manifest = ingest.run(config(sources=[f"pairs:{leak}", f"pairs:{rows}", "humaneval:"]), out)
    assert manifest["dedup"]["pairs"]["eval_overlap_removed"] == 1
    assert manifest["dedup"]["pairs"]["eval_rows_overlapped"] == 1
    assert read_table(out / "eval" / "humaneval").num_rows == 164
    assert "close numbers" not in {row["query"] for row in read_all_pairs(out)}


def test_run_on_a_package_in_s3(s3_env: str, tmp_path: Path):
    for path in sorted((DATA / "toypkg").rglob("*.py")):
        rel = path.relative_to(DATA / "toypkg").as_posix()
        storage.write_bytes(f"{s3_env}/checkouts/toypkg/{rel}", path.read_bytes())
    spec = f"dir:{s3_env}/checkouts/toypkg"
    manifest = ingest.run(config(sources=[spec]), tmp_path / "out")
    assert manifest["sources"][spec]["pairs"] == 12 and manifest["sources"][spec]["files_seen"] == 6
    pairs = read_all_pairs(tmp_path / "out")
    assert {row["repo"] for row in pairs} == {"toypkg"}
    assert all(row["url"].startswith(f"{s3_env}/checkouts/toypkg/") for row in pairs)
    with pytest.raises(IngestError, match="does not exist"):
        ingest.run(config(sources=[f"dir:{s3_env}/checkouts/missing"]), tmp_path / "out2")


def test_bad_sources_fail_before_any_work(tmp_path: Path):
    out = tmp_path / "out"
    with pytest.raises(IngestError, match="does not exist"):
        ingest.run(config(sources=["python:stdlib", f"dir:{tmp_path / 'missing'}"]), out)
    assert not out.exists()
    with pytest.raises(ConfigError, match="(?s)unknown source 'stack:/x'.*dir:PATH"):
        config(sources=["stack:/x"])
    with pytest.raises(IngestError, match="evaluation-only"):
        ingest.run(config(sources=["humaneval:"]), out)


def test_a_source_that_yields_nothing_names_itself(tmp_path: Path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.py").write_text("def broken(:\n")
    (bad / "b.py").write_text("class Nope(\n")
    (bad / "c.py").write_bytes(b"\x00\x00")
    message = f"source 'dir:{bad}' yielded no pairs: 3 files, rejected (syntax_error: 2, binary: 1)"
    with pytest.raises(IngestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ingest.run(config(sources=[f"pairs:{PAIRS}", f"dir:{bad}"]), tmp_path / "out")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(IngestError, match="yielded no pairs"):
        ingest.run(config(sources=[f"pairs:{empty}"]), tmp_path / "out")


def test_too_many_bad_lines_fail_the_source(tmp_path: Path):
    noisy = tmp_path / "noisy.jsonl"
    noisy.write_text(
        '{"query": "sum two numbers", "code": "def add(a, b):\\n    return a + b\\n"}\n' + "{oops\n" * 3
    )
    with pytest.raises(
        IngestError,
        match=r"source 'pairs:.*noisy.jsonl': 3 of 4 inputs are bad \(75% > max_reject_share 50%\)",
    ):
        ingest.run(config(sources=[f"pairs:{noisy}"]), tmp_path / "out")
    manifest = ingest.run(
        config(sources=[f"pairs:{noisy}"], max_reject_share=0.8, min_pairs=1), tmp_path / "out"
    )
    assert manifest["sources"][f"pairs:{noisy}"]["rejects"] == {"malformed_json": 3}


def test_a_source_of_duplicates_fails_at_ingest(tmp_path: Path):
    same = '{"query": "sum two numbers", "code": "def add(a, b):\\n    s = a + b\\n    return s\\n"}\n'
    copies = tmp_path / "copies.jsonl"
    copies.write_text(same * 50)
    with pytest.raises(IngestError, match=r"1 pair left after deduplication .* \(49 of 50 were duplicates\)"):
        ingest.run(config(sources=[f"pairs:{copies}"]), tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_config_validation():
    with pytest.raises(ConfigError, match="ratios"):
        config(train_ratio=0.5)
    with pytest.raises(ConfigError, match="lower the threshold"):
        config(near_dup_threshold=0.99, num_perm=128)
    with pytest.raises(ConfigError, match="split_unit"):
        config(split_unit="row")
    with pytest.raises(ConfigError, match="sources is empty"):
        config(sources=[])
    with pytest.raises(ConfigError, match="unknown language 'klingon'; supported: python, go, java"):
        config(languages=["go", "klingon"])
    assert config(languages=["Go", "JAVA"]).extract_options().languages == ("go", "java")
    assert config().extract_options().languages == ()


def make_polyglot_repo(root: Path) -> Path:
    """A small checkout with a documented function in Go, Java and Ruby."""
    repo = root / "polyglot"
    files = {
        "cmd/root.go": "package cmd\n\n// Execute runs the root command and exits on error.\n"
        "func Execute() {\n\terr := root.Execute()\n\tcheck(err)\n}\n",
        "src/Text.java": "class Text {\n    /** Returns the text with its first letter in upper case. */\n"
        "    static String capitalize(String s) {\n        String head = s.substring(0, 1);\n"
        "        return head.toUpperCase() + s.substring(1);\n    }\n}\n",
        "lib/slug.rb": "# Returns the slug of a title for use in URLs.\ndef slugify(title)\n"
        "  words = title.downcase.split\n  words.join('-')\nend\n",
    }
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    return repo


def test_languages_on_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    repo = make_polyglot_repo(tmp_path)
    out = tmp_path / "out"
    argv = ["--source", f"dir:{repo}", "--out", str(out), "--num-perm", "64", "--split-unit", "file"]
    assert ingest.main([*argv, "--languages", "go,java"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["languages"]) == {"go", "java"}
    assert manifest["sources"][f"dir:{repo}"]["languages"]["go"]["pairs"] == 1
    assert json.loads((out / "config.json").read_text())["config"]["languages"] == ["go", "java"]
    assert {row["language"] for row in read_table(out / "corpus").to_pylist()} == {"go", "java"}
    capsys.readouterr()

    assert ingest.main([*argv, "--languages", "go,cobol"]) == 2  # refused before any work
    assert "unknown language 'cobol'; supported: python, go" in capsys.readouterr().err


def test_dir_without_files_of_the_languages_names_them(tmp_path: Path):
    repo = make_polyglot_repo(tmp_path)
    with pytest.raises(IngestError, match=r"no rust files in .*polyglot \(extensions \.rs\); it holds: "):
        ingest.run(config(sources=[f"dir:{repo}"], languages=["rust"]), tmp_path / "out")


def test_main(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    repo = make_toy_repo(tmp_path)
    out = tmp_path / "out"
    code = ingest.main(
        [
            "--source",
            f"dir:{repo}",
            "--sources",
            f"csn:{CSN}",
            "--out",
            str(out),
            "--num-perm",
            "64",
            "--rows-per-shard",
            "5",
        ]
    )
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["sources"]) == {f"csn:{CSN}", f"dir:{repo}"}
    captured = capsys.readouterr()
    assert f"{manifest['totals']['pairs']} pairs" in captured.out
    assert "--sources is deprecated" in captured.err and "use --source KIND:LOCATION" in captured.err
    assert manifest["shards"]["corpus"] == len(list((out / "corpus").glob("part-*.parquet"))) > 1

    # a second run into the same directory replaces the shards instead of mixing with them
    assert (
        ingest.main(
            ["--source", f"dir:{repo}", "--source", f"csn:{CSN}", "--out", str(out), "--num-perm", "64"]
        )
        == 0
    )
    assert len(list((out / "corpus").glob("part-*.parquet"))) == 1

    assert ingest.main(["--source", "nope:x", "--out", str(out)]) == 2
    assert "unknown source 'nope:x'" in capsys.readouterr().err


def test_a_full_disk_names_the_folder_it_could_not_write(tmp_path: Path, monkeypatch, capsys):
    """pyarrow's own message names no file ("Error writing bytes to file ... No space left on device")."""
    import errno

    real_write_shards = ingest.write_shards

    def fill_the_disk_at_the_corpus(rows, directory, rows_per_shard):
        if Path(directory).name == "corpus":
            raise OSError(
                errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device"
            )
        return real_write_shards(rows, directory, rows_per_shard=rows_per_shard)

    monkeypatch.setattr(ingest, "write_shards", fill_the_disk_at_the_corpus)
    out = tmp_path / "out"
    code = ingest.main(["--source", f"csn:{CSN}", "--out", str(out), "--num-perm", "64", "--min-pairs", "1"])
    assert code == 2
    assert f"No space left on device while writing {out / 'corpus'}" in capsys.readouterr().err
    assert not (out / "manifest.json").exists()  # nothing says the stage finished


def test_a_re_ingest_that_dies_mid_write_leaves_the_earlier_output_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Issue 31 case 3: re-ingest other sources into an --out that holds an earlier ingest, dying once the
    new train split is written. The earlier train, test and manifest stay together, nothing of the new run
    is mixed in; the next run removes the partial folder and replaces the output whole."""
    out = tmp_path / "out"
    first = ingest.run(config(sources=[f"pairs:{many_repo_pairs(tmp_path / 'a.jsonl', repos=30)}"]), out)
    before = {path.relative_to(out): path.read_bytes() for path in out.rglob("*") if path.is_file()}
    real_write = ingest._write

    def dies_after_train(rows: list[dict], directory: Path, rows_per_shard: int) -> int:
        written = real_write(rows, directory, rows_per_shard)
        if directory.name == "train":
            raise MemoryError("killed after the train split")
        return written

    monkeypatch.setattr(ingest, "_write", dies_after_train)
    other = many_repo_pairs(tmp_path / "b.jsonl", repos=20, offset=100)
    with pytest.raises(MemoryError):
        ingest.run(config(sources=[f"pairs:{other}"]), out)
    after = {path.relative_to(out): path.read_bytes() for path in out.rglob("*") if path.is_file()}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl", "out"]

    monkeypatch.setattr(ingest, "_write", real_write)
    storage.partial_path(out).mkdir()  # what a kill -9 would have left
    (storage.partial_path(out) / "stale").write_text("x")
    second = ingest.run(config(sources=[f"pairs:{other}"]), out)
    assert second["totals"]["pairs"] == 60 != first["totals"]["pairs"]
    assert {row["repo"] for row in read_all_pairs(out)} == {f"org/repo{r}" for r in range(100, 120)}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.jsonl", "out"]
