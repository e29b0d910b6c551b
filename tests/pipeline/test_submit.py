"""`semcode submit` through the real kfp.Client against a fake KFP v2beta1 API on 127.0.0.1
(tests/fake_kfp.py): upload, versions, run parameters, caching, auth, and the exit code of each outcome."""

from __future__ import annotations

import json

import pytest
import yaml
from fake_kfp import FakeKFP, failed, never_finishes, passed, refused

from semcode.pipeline import submit
from semcode.pipeline.compile import DEFAULT_OUTPUT

TOKEN = "s3cret-token"
REGISTRY = "s3://models/registry"
FAST = ["--poll-interval", "0.01", "--timeout", "30"]  # poll the fake without waiting


@pytest.fixture(autouse=True)
def no_kfp_environment(monkeypatch):
    """The machine's own KFP settings must not leak into the tests."""
    variables = (
        "KFP_HOST",
        "KF_PIPELINES_ENDPOINT",
        "KFP_TOKEN",
        "KFP_TOKEN_FILE",
        "KF_PIPELINES_SA_TOKEN_PATH",
    )
    for variable in (*variables, "GITHUB_SHA", "CI_COMMIT_SHA"):
        monkeypatch.delenv(variable, raising=False)


def run_submit(kfp: FakeKFP, *args: str) -> int:
    return submit.main(["--host", kfp.url, "--preset", "tiny", *FAST, *args])


def documents(text: str) -> list[dict]:
    return list(yaml.safe_load_all(text))


def test_first_submit_creates_the_pipeline_and_runs_the_preset_with_overrides(tmp_path, capsys):
    result_file = tmp_path / "submit.json"
    with FakeKFP(token=TOKEN, script=passed()) as kfp:
        code = run_submit(
            kfp,
            "--token",
            TOKEN,
            "--param",
            "train_encoder_max_steps=100",
            "--param",
            "ingest_sources=[python:stdlib]",
            "--param",
            f"gate_registry={REGISTRY}",
            "--param",
            "gate_version=2024.10",  # a string parameter keeps its text: not the float 2024.1
            "--param",
            "gpu_count=2",  # a cluster parameter, not in presets
            "--version-name",
            "v1",
            "--output-json",
            str(result_file),
        )
    out, err = capsys.readouterr()
    assert code == submit.EXIT_OK, err
    assert kfp.errors == []

    # Every request carried the bearer token.
    assert kfp.requests and all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in kfp.requests)

    # The pipeline did not exist: created from the committed package, then version v1 added to it.
    (created,) = kfp.calls("POST", "/pipelines/upload")
    assert created.query["name"] == "semcode-train"
    assert documents(created.upload) == documents(DEFAULT_OUTPUT.read_text())  # caching on: as compiled
    (version,) = kfp.calls("POST", "/pipelines/upload_version")
    pipeline_id = next(iter(kfp.pipelines))
    assert version.query["name"] == "v1" and version.query["pipelineid"] == pipeline_id
    assert documents(version.upload) == documents(DEFAULT_OUTPUT.read_text())

    # The run: that version, in the experiment "semcode", with the preset's values and the overrides.
    (created_run,) = kfp.calls("POST", "/runs")
    v1_id = next(v for v, stored in kfp.versions.items() if stored["display_name"] == "v1")
    assert created_run.body["pipeline_version_reference"] == {
        "pipeline_id": pipeline_id,
        "pipeline_version_id": v1_id,
    }
    assert kfp.experiments[created_run.body["experiment_id"]]["display_name"] == "semcode"
    assert created_run.body["display_name"] == "tiny v1"
    parameters = created_run.body["runtime_config"]["parameters"]
    assert parameters["train_encoder_max_steps"] == 100  # --param over the preset's 30
    assert parameters["ingest_sources"] == ["python:stdlib"]
    assert parameters["gate_registry"] == REGISTRY
    assert parameters["gate_version"] == "2024.10"
    assert parameters["gpu_count"] == 2
    assert parameters["train_encoder_size"] == "tiny"  # from src/semcode/configs/tiny.yaml
    assert parameters["export_onnx_max_mrr_loss"] == 1.0
    declared = documents(DEFAULT_OUTPUT.read_text())[0]["root"]["inputDefinitions"]["parameters"]
    assert set(parameters) <= set(declared)

    # Progress on stderr, the outcome on stdout and in --output-json.
    run_id = created_run_id(kfp)
    assert f"[submit] run {run_id} RUNNING" in err and "running: train-encoder" in err
    assert "gate PASSED" in out and f"/#/runs/details/{run_id}" in out
    result = json.loads(result_file.read_text())
    assert result["run_id"] == run_id and result["state"] == "SUCCEEDED" and result["passed"] is True
    assert result["url"] == f"{kfp.url}/#/runs/details/{run_id}"


def created_run_id(kfp: FakeKFP) -> str:
    (run_id,) = kfp.runs
    return run_id


def test_an_existing_pipeline_gets_a_new_version_and_no_cache_is_in_that_version(capsys):
    with FakeKFP() as kfp:
        pipeline_id = kfp.add_pipeline("semcode-train")
        assert run_submit(kfp, "--param", f"gate_registry={REGISTRY}", "--no-cache") == submit.EXIT_OK
        assert run_submit(kfp, "--param", f"gate_registry={REGISTRY}", "--version-name", "again") == 0
    assert kfp.errors == []
    assert kfp.calls("POST", "/pipelines/upload") == []  # no second pipeline
    first, second = kfp.calls("POST", "/pipelines/upload_version")
    assert first.query["pipelineid"] == second.query["pipelineid"] == pipeline_id
    assert len(kfp.experiments) == 1  # created by the first submit, found by the second

    # --no-cache: KFP reads caching from the spec, so the uploaded version has it off in every task,
    # and is otherwise the committed package.
    committed = documents(DEFAULT_OUTPUT.read_text())
    uncached = documents(first.upload)
    assert uncached == submit.without_caching(committed) != committed
    spec = uncached[0]
    dags = [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]
    tasks = [task for dag in dags for task in dag["tasks"].values()]
    # 22 stage tasks (ingest: one task or shard indices + shard + merge; a first training per round-count
    # branch, 3 rounds of mine + train; plan + embed shard + build_index) + 11 DAGs (9 conditions and
    # branch groups, 2 ParallelFor loops)
    assert len(tasks) == 33 and all(task["cachingOptions"] == {"enableCache": False} for task in tasks)
    assert "caching off" in first.query["description"]
    # caching on (the default): the package as compiled
    assert documents(second.upload) == committed


@pytest.mark.parametrize(
    ("script", "expected", "message"),
    [
        (passed(), submit.EXIT_OK, "gate PASSED"),
        (refused(), submit.EXIT_REFUSED, "gate REFUSED"),  # publish never created (condition false)
        (refused(publish_state="SKIPPED"), submit.EXIT_REFUSED, "gate REFUSED"),
        (failed("train-encoder"), submit.EXIT_FAILED, "FAILED after"),
    ],
    ids=["passed", "refused", "refused-publish-skipped", "failed"],
)
def test_exit_code_follows_the_run_and_the_gate(script, expected, message, tmp_path, capsys):
    result_file = tmp_path / "result.json"
    with FakeKFP(script=script) as kfp:
        code = run_submit(kfp, "--param", f"gate_registry={REGISTRY}", "--output-json", str(result_file))
    out = capsys.readouterr().out
    assert code == expected, out
    assert message in out
    result = json.loads(result_file.read_text())
    assert result["state"] == script[-1][0]
    if expected == submit.EXIT_FAILED:
        assert result["passed"] is None
        assert result["error"] == kfp.run_error and kfp.run_error in out  # the run's error message
    else:
        assert result["passed"] is (expected == submit.EXIT_OK)


def test_without_a_registry_the_verdict_is_unknown_and_the_run_counts(capsys):
    with FakeKFP(script=refused()) as kfp:  # publish does not run without a registry, pass or not
        assert run_submit(kfp) == submit.EXIT_OK
    out, err = capsys.readouterr()
    assert "gate verdict unknown (no gate_registry given)" in out
    assert "warning: no gate_registry" in err


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--param", "train_encoder_max_stepz=100"], "valid: build_index_factory"),
        (["--param", "train_encoder_max_steps=lots"], "expected an integer"),
        (["--param", "ingest_sources=python:stdlib"], "expected a YAML list"),
        (["--param", "train_encoder_max_steps"], "expected KEY=VALUE"),
        (["--param", "train_encoder_towers=three"], "towers"),  # the stage config's own validation
        (["--preset", "no-such-preset"], "not found"),
        (["--package", "/no/such/pipeline.yaml"], "not found"),
    ],
    ids=["unknown-param", "bad-int", "bad-list", "no-equals", "bad-stage-value", "preset", "package"],
)
def test_bad_input_exits_2_before_any_request(args, complaint, capsys):
    with FakeKFP() as kfp:
        code = run_submit(kfp, *args)
    err = capsys.readouterr().err
    assert code == submit.EXIT_BAD_INPUT, err
    assert complaint in err
    assert kfp.requests == []


def test_unknown_param_lists_every_valid_one(capsys):
    with FakeKFP() as kfp:
        assert run_submit(kfp, "--param", "max_steps=3") == submit.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "unknown pipeline parameter(s) max_steps" in err
    for name in ("train_encoder_max_steps", "ingest_sources", "gate_registry", "gpu_count"):
        assert name in err
    assert kfp.requests == []


def test_missing_host_exits_2(capsys):
    assert submit.main(["--preset", "tiny"]) == submit.EXIT_BAD_INPUT
    assert "KFP_HOST" in capsys.readouterr().err


def test_host_and_token_from_the_environment_and_a_token_file(monkeypatch, tmp_path, capsys):
    with FakeKFP(token=TOKEN) as kfp:
        monkeypatch.setenv("KFP_HOST", kfp.url)
        # No token: the API says 401 and submit fails (exit 1), naming the API.
        assert submit.main(["--preset", "tiny", *FAST]) == submit.EXIT_FAILED
        assert "401" in capsys.readouterr().err

        monkeypatch.setenv("KFP_TOKEN", TOKEN)
        assert submit.main(["--preset", "tiny", *FAST, "--version-name", "by-env"]) == submit.EXIT_OK

        monkeypatch.delenv("KFP_TOKEN")
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n")  # a projected ServiceAccount token, re-read per request
        kfp.requests.clear()
        code = submit.main(
            ["--preset", "tiny", *FAST, "--token-file", str(token_file), "--version-name", "by-file"]
        )
        assert code == submit.EXIT_OK
        assert {r.headers.get("authorization") for r in kfp.requests} == {f"Bearer {TOKEN}"}


def test_timeout_exits_1_and_leaves_the_run_going(tmp_path, capsys):
    result_file = tmp_path / "result.json"
    with FakeKFP(script=never_finishes()) as kfp:
        code = submit.main(
            [
                "--host",
                kfp.url,
                "--preset",
                "tiny",
                "--poll-interval",
                "0.05",
                "--timeout",
                "0.3",
                "--output-json",
                str(result_file),
            ]
        )
    out = capsys.readouterr().out
    assert code == submit.EXIT_FAILED
    assert "still RUNNING after" in out and "--timeout" in out
    result = json.loads(result_file.read_text())
    assert result["state"] == "RUNNING" and result["passed"] is None
    assert len(kfp.calls("GET", f"/runs/{result['run_id']}")) >= 2


def test_a_few_failed_polls_do_not_end_the_wait(capsys):
    with FakeKFP(script=passed(), unavailable_polls=submit.MAX_POLL_FAILURES) as kfp:
        assert run_submit(kfp, "--param", f"gate_registry={REGISTRY}") == submit.EXIT_OK
    assert f"failed ({submit.MAX_POLL_FAILURES}/{submit.MAX_POLL_FAILURES})" in capsys.readouterr().err

    with FakeKFP(script=passed(), unavailable_polls=submit.MAX_POLL_FAILURES + 1) as kfp:
        assert run_submit(kfp, "--param", f"gate_registry={REGISTRY}") == submit.EXIT_FAILED
    assert "503" in capsys.readouterr().err


def test_no_wait_starts_the_run_and_returns(monkeypatch, capsys):
    monkeypatch.setenv("GITHUB_SHA", "0123456789abcdef")
    with FakeKFP(script=never_finishes()) as kfp:
        assert run_submit(kfp, "--no-wait", "--experiment", "nightly", "--run-name", "n1") == submit.EXIT_OK
    assert kfp.calls("GET", f"/runs/{created_run_id(kfp)}") == []
    (version,) = kfp.calls("POST", "/pipelines/upload_version")
    assert version.query["name"].endswith("-0123456")  # <UTC time>-<short sha of $GITHUB_SHA>
    (created_run,) = kfp.calls("POST", "/runs")
    assert created_run.body["display_name"] == "n1"
    assert [e["display_name"] for e in kfp.experiments.values()] == ["nightly"]
    assert "not waiting" in capsys.readouterr().out


def test_package_tasks_and_durations():
    package = submit.read_package(DEFAULT_OUTPUT)
    assert sorted(package.task_names()) == sorted(
        [
            "ingest",
            *("ingest-shard-indices", "ingest-shard", "ingest-merge"),  # ingest_shards > 1
            "train-tokenizer",
            *("train-encoder", "train-encoder-2", "train-encoder-3"),  # one per hard-negative branch...
            *("train-encoder-4", "train-encoder-5", "train-encoder-6"),  # ...and one per round
            *("mine-hard-negatives", "mine-hard-negatives-2", "mine-hard-negatives-3"),
            "evaluate",
            "train-decoder",
            *("plan-corpus-shards", "embed-corpus", "build-index"),
            "export-onnx",
            "gate",
            "publish",
        ]
    )
    assert [submit.parse_duration(t) for t in ("90", "45s", "90m", "6h", "0.5")] == [90, 45, 5400, 21600, 0.5]


def test_a_missing_default_package_is_compiled(monkeypatch, tmp_path):
    monkeypatch.setattr(submit, "DEFAULT_OUTPUT", tmp_path / "train_pipeline.yaml")
    with submit.package_to_upload(None, cache=True) as package:
        assert package.path.is_file() and package.path.parent != tmp_path  # a temporary file
        assert package.spec["pipelineInfo"]["name"] == "semcode-train"
        assert "train_encoder_max_steps" in package.parameters
    assert not (tmp_path / "train_pipeline.yaml").exists()  # the repository is left alone


def test_resume_continues_an_earlier_runs_checkpoints_under_its_checkpoint_root(capsys):
    with FakeKFP(script=never_finishes()) as kfp:
        root = "s3://models/checkpoints"
        assert (
            run_submit(kfp, "--no-wait", "--version-name", "v1", "--param", f"checkpoint_root={root}")
            == submit.EXIT_OK
        )
        (first,) = kfp.calls("POST", "/runs")
        first_id = created_run_id(kfp)
        assert run_submit(kfp, "--no-wait", "--version-name", "v2", "--resume", first_id) == submit.EXIT_OK
        second = kfp.calls("POST", "/runs")[-1]
        parameters = second.body["runtime_config"]["parameters"]
        assert parameters["resume_run_id"] == first_id and parameters["checkpoint_root"] == root
        assert "resume_run_id" not in first.body["runtime_config"]["parameters"]

        # A run without durable checkpoints cannot be resumed; an unknown run is named.
        assert run_submit(kfp, "--no-wait", "--version-name", "v3") == submit.EXIT_OK
        plain_id = list(kfp.runs)[-1]
        capsys.readouterr()
        assert (
            run_submit(kfp, "--no-wait", "--version-name", "v4", "--resume", plain_id)
            == submit.EXIT_BAD_INPUT
        )
        assert f"--resume {plain_id}: that run set no checkpoint_root" in capsys.readouterr().err
        assert (
            run_submit(kfp, "--no-wait", "--version-name", "v5", "--resume", "no-such-run")
            == submit.EXIT_BAD_INPUT
        )
        assert "--resume no-such-run: no such run" in capsys.readouterr().err


def test_the_index_pipeline_is_submitted_with_its_own_parameters_and_no_gate(capsys):
    from semcode.pipeline.compile import INDEX_OUTPUT

    script = [("SUCCEEDED", {"index": "SUCCEEDED", "condition-1": "SUCCEEDED", "publish": "SUCCEEDED"})]
    params = [
        "--param",
        "index_encoder=s3://models/registry/semcode/latest",
        "--param",
        "index_sources=[dir:s3://code/monorepo]",
        "--param",
        "index_previous=s3://models/indexes/code-index/latest",
        "--param",
        "publish_registry=s3://models/indexes",
        "--param",
        "index_recall_queries=50",
    ]
    with FakeKFP(script=script) as kfp:
        assert submit.main(["--host", kfp.url, "--pipeline", "index", *FAST, *params]) == submit.EXIT_OK
        (created,) = kfp.calls("POST", "/pipelines/upload")
        (run,) = kfp.calls("POST", "/runs")
    assert created.query["name"] == "semcode-index"
    assert documents(created.upload) == documents(INDEX_OUTPUT.read_text())
    parameters = run.body["runtime_config"]["parameters"]
    assert parameters["index_sources"] == ["dir:s3://code/monorepo"]
    assert parameters["index_recall_queries"] == 50
    assert parameters["publish_registry"] == "s3://models/indexes"
    assert "SUCCEEDED" in capsys.readouterr().out.splitlines()[0]

    with FakeKFP() as kfp:  # checked before any request: the index stage's config, no preset
        assert submit.main(["--host", kfp.url, "--pipeline", "index", "--param", "index_document=all"]) == 2
        assert "document must be one of" in capsys.readouterr().err
        assert submit.main(["--host", kfp.url, "--pipeline", "index", "--preset", "gpu"]) == 2
        assert "no preset" in capsys.readouterr().err
        assert kfp.requests == []
