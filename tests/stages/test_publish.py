"""Publish as a compare-and-swap (issue 31): ``latest`` moves only while it still names the champion the gate
compared the bundle with, checked under the registry's lock; two writers, a stale bundle, a full disk.

The bundles are the tiny real run's (tests/bundle_fixture.py), gated for real against a local registry or a
real S3 server (rclone serve s3, which ignores conditional writes: the lease path of locks.exclusive_lock).
"""

from __future__ import annotations

import errno
import json
import threading
from pathlib import Path

import pytest
from bundle_fixture import TinyRun, cached_tiny_run

from semcode import bundle as bundles
from semcode import config as cfg
from semcode import storage
from semcode.registry import read_latest
from semcode.stages import gate, publish


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    return cached_tiny_run(tmp_path_factory)


def gated(run: TinyRun, tmp: Path, registry: str, version: str, mrr: float) -> Path:
    """The bundle of ``version``, gated (and passed) against ``registry`` as it is now."""
    metrics = run.eval_metrics()
    metrics["suites"]["test"]["full"]["model"]["mrr"] = mrr
    metrics["primary"] = {"name": "test/full/model/mrr", "value": mrr}
    (tmp / f"eval-{version}").mkdir(parents=True)
    (tmp / f"eval-{version}" / "metrics.json").write_text(json.dumps(metrics))
    config = cfg.from_dict(
        gate.GateConfig, {"registry": registry, "version": version, "min_comparable_queries": 1}
    )
    decision = gate.run(
        config, run.encoder, run.onnx, run.index, tmp / f"eval-{version}", tmp / f"gate-{version}"
    )
    assert decision["passed"], decision["reasons"]
    return Path(decision["bundle"])


def publish_to(bundle_dir: Path, registry: str, out: Path) -> dict:
    return publish.run(publish.PublishConfig(registry=registry), bundle_dir, out)


def latest_version(registry: str) -> str | None:
    pointer = read_latest(registry, "semcode")
    return None if pointer is None else pointer["version"]


def test_a_bundle_gated_against_an_older_champion_is_refused_naming_both(
    tiny_run: TinyRun, tmp_path: Path, capsys
):
    """The issue's sequence: gate B, then publish A, then publish B (B was never compared with A)."""
    registry = str(tmp_path / "registry")
    bundle_b = gated(tiny_run, tmp_path, registry, "b", 0.30)  # against an empty registry
    bundle_a = gated(tiny_run, tmp_path, registry, "a", 0.40)
    assert bundles.read_bundle_json(bundle_b)["source"]["gate"]["champion"] is None
    publish_to(bundle_a, registry, tmp_path / "publish-a")
    argv = ["--bundle", str(bundle_b), "--registry", registry, "--out", str(tmp_path / "publish-b")]
    assert publish.main(argv) == publish.EXIT_REFUSED
    refusal = capsys.readouterr().err.strip().splitlines()[-1]
    assert refusal.startswith("semcode publish: refused: semcode b was gated against no champion"), refusal
    assert "now names a; gate it again against a" in refusal
    assert latest_version(registry) == "a" and not (Path(registry) / "semcode" / "b").exists()

    # Gated again, against a: compared (and better), so it is published.
    bundle_c = gated(tiny_run, tmp_path, registry, "c", 0.45)
    assert bundles.read_bundle_json(bundle_c)["source"]["gate"]["champion"]["version"] == "a"
    assert publish_to(bundle_c, registry, tmp_path / "publish-c")["pointer"]["previous_version"] == "a"
    assert latest_version(registry) == "c"


@pytest.mark.parametrize("where", ["local", "s3"])
def test_two_writers_move_latest_once(tiny_run: TinyRun, tmp_path: Path, where: str, request):
    """Two bundles gated against the same champion, published at the same time: one moves latest, the other
    is refused (latest no longer names the champion it was compared with) and leaves nothing behind."""
    registry = str(tmp_path / "registry") if where == "local" else f"{request.getfixturevalue('s3_env')}/reg"
    publish_to(gated(tiny_run, tmp_path, registry, "v1", 0.40), registry, tmp_path / "publish-v1")
    bundles_by_version = {v: gated(tiny_run, tmp_path, registry, v, 0.41) for v in ("x", "y")}
    outcomes: dict[str, object] = {}
    start = threading.Barrier(2)

    def writer(version: str) -> None:
        start.wait()
        try:
            outcomes[version] = publish_to(
                bundles_by_version[version], registry, tmp_path / f"publish-{version}"
            )
        except publish.ChampionChanged as error:
            outcomes[version] = error

    threads = [threading.Thread(target=writer, args=(version,)) for version in bundles_by_version]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [v for v, outcome in outcomes.items() if isinstance(outcome, dict)]
    losers = [v for v, outcome in outcomes.items() if isinstance(outcome, publish.ChampionChanged)]
    assert len(winners) == 1 and len(losers) == 1, outcomes
    [winner], [loser] = winners, losers
    assert latest_version(registry) == winner
    assert outcomes[winner]["pointer"]["previous_version"] == "v1"
    message = str(outcomes[loser])
    assert f"semcode {loser} was gated against champion v1" in message and f"now names {winner}" in message
    assert not storage.exists(storage.join(registry, "semcode", loser))
    bundles.validate_bundle(storage.join(registry, "semcode", winner))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_keep_versions_removes_the_oldest_releases_and_nothing_in_flight(
    tiny_run: TinyRun, tmp_path: Path, where: str, request
):
    """A scheduled re-index publishes a version an hour: with keep_versions the registry keeps the newest
    N complete versions (latest and the one it replaced always), never a folder another publish is still
    copying (no completion marker)."""
    registry = str(tmp_path / "registry") if where == "local" else f"{request.getfixturevalue('s3_env')}/reg"
    in_flight = storage.join(registry, "semcode", "v9-copying", "bundle.json")
    storage.write_text(in_flight, "{}")  # another publish's copy, not complete yet
    removed = {}
    for number, version in enumerate(("v1", "v2", "v3", "v4")):
        config = publish.PublishConfig(registry=registry, keep_versions=2)
        bundle = gated(tiny_run, tmp_path, registry, version, 0.40 + number / 100)
        removed[version] = publish.run(config, bundle, tmp_path / f"publish-{version}")["removed_versions"]
    assert removed == {"v1": [], "v2": [], "v3": ["v1"], "v4": ["v2"]}
    assert [version for _, version in publish.published_versions(registry, "semcode")] == ["v4", "v3"]
    assert latest_version(registry) == "v4"
    for version in ("v1", "v2"):
        assert not storage.exists(storage.join(registry, "semcode", version, "bundle.json"))
    bundles.validate_bundle(storage.join(registry, "semcode", "v3"))  # the rollback target, whole
    assert storage.exists(in_flight)
    with pytest.raises(cfg.ConfigError, match="keep_versions must be 0 .* or at least 2"):
        publish.PublishConfig(registry=registry, keep_versions=1).validate()


def test_a_copy_that_fills_the_disk_is_removed(tiny_run: TinyRun, tmp_path: Path, monkeypatch):
    registry = str(tmp_path / "registry")
    bundle = gated(tiny_run, tmp_path, registry, "v1", 0.40)
    real_copy, copied = storage.copy, []

    def copy_until_full(src, dst) -> None:  # the registry's disk fills up at the fourth file
        if len(copied) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_copy(src, dst)
        copied.append(dst)

    monkeypatch.setattr(storage, "copy", copy_until_full)
    with pytest.raises(OSError, match="No space left"):
        publish_to(bundle, registry, tmp_path / "publish-full")
    assert len(copied) == 3 and not (Path(registry) / "semcode" / "v1").exists()  # cleaned, not left
    monkeypatch.setattr(storage, "copy", real_copy)
    publish_to(bundle, registry, tmp_path / "publish-retry")
    assert latest_version(registry) == "v1"
