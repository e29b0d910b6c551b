"""Stage publish: copy a validated release bundle into the registry and point ``latest`` at it.

The registry is a local folder or an ``s3://bucket/prefix``; storage.py does the copying either way::

    <registry>/<name>/<version>/                every file of the bundle (bundle.json last)
    <registry>/<name>/<version>/_COMPLETE.json  written once every file is there
    <registry>/<name>/latest                    {"version", "path" ("<name>/<version>", relative to the
                                                registry), "published_at", "primary_metric", ...}

The steps, in this order, so that ``latest`` never names a partial copy:

1. validate the bundle (semcode.bundle.validate_bundle): a broken bundle is refused before any copy;
2. refuse a version that is already published (its folder has the marker): versions are immutable,
   a new model gets a new version. A folder without the marker is the debris of a failed publish and
   is copied over (resumed); a copy that fails because the registry's disk is full is removed at once
   (cleaned), so that it does not keep the space a retry needs;
3. copy the files, bundle.json last, check that they are all there, write the marker;
4. move ``latest`` as a compare-and-swap: under an exclusive lock (semcode.locks.exclusive_lock: a lock
   file on disk, a conditional write or a lease object on S3), ``latest`` is read again and must still
   name the champion the gate compared the bundle with (bundle.json ``source.gate.champion``: a version,
   or none when the registry was empty); then it is replaced in one atomic step (one PUT on S3, a
   temporary file and os.replace on disk). When another publish moved it meanwhile (gate B, publish A,
   publish B), the bundle is refused naming both versions (exit 3), its copy is removed, and ``latest``
   stays: gate it again against the new champion. The same check runs before the copy, so a stale bundle
   is refused at once. A bundle assembled without the gate (no ``source.gate``) has no champion to check:
   it is published as before, and the log says so.

A failure anywhere before step 4 leaves ``latest`` where it was.

5. with ``keep_versions`` N (0 = keep every version), still under the lock: the complete versions of this
   name beyond the N most recently published are removed (``prune_versions``), marker first, so that a
   scheduled re-index or retraining does not grow the registry without end. The new ``latest`` and the
   version it replaced (the rollback target) are always kept, so N is at least 2; a folder without the
   marker (another publish still copying, or a failed one) is never touched.

Writes out/manifest.json (what was copied where, the previous and new pointers, the versions removed,
seconds) and out/config.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from semcode import bundle as bundles
from semcode import config as cfg
from semcode import locks, storage
from semcode.bundle import BundleError
from semcode.config import ConfigError, field
from semcode.progress import Progress, log
from semcode.registry import latest_uri, read_latest, version_uri, write_latest
from semcode.registry import resolve_latest as resolve_latest  # re-exported: publish.resolve_latest

TAG = "publish"
EXIT_REFUSED = 3  # latest no longer names the champion the gate compared with (as semcode gate's refusal)
LATEST_LOCK = ".latest.lock"  # <registry>/<name>/.latest.lock: held while latest is checked and moved
UNKNOWN = object()  # a bundle without a gate record: no champion to check


class ChampionChanged(RuntimeError):
    """``latest`` names another version than the champion the gate compared the bundle with."""


def gated_champion(bundle: dict) -> object:
    """The champion version the gate compared the bundle with (None: the registry was empty), or UNKNOWN for
    a bundle assembled without the gate."""
    gate = (bundle.get("source") or {}).get("gate")
    if not isinstance(gate, dict) or "champion" not in gate:
        return UNKNOWN
    champion = gate["champion"]
    return champion.get("version") if isinstance(champion, dict) else None


def check_champion(expected: object, current: dict | None, config: PublishConfig, version: str) -> None:
    """ChampionChanged unless ``latest`` (``current``) still names the champion the gate compared with."""
    now = None if current is None else current.get("version")
    if expected is UNKNOWN or now == expected:
        return
    compared = f"champion {expected}" if expected else "no champion (the registry was empty)"
    if now is None:
        raise ChampionChanged(
            f"refused: {config.name} {version} was gated against {compared}, but latest in {config.registry} "
            "is gone; gate it again before publishing"
        )
    raise ChampionChanged(
        f"refused: {config.name} {version} was gated against {compared}, but latest in {config.registry} "
        f"now names {now}; gate it again against {now} before publishing"
    )


@dataclass(frozen=True)
class PublishConfig:
    registry: str = field("", "registry to publish into: a local folder or s3://bucket/prefix (required)")
    name: str = field("semcode", "model name: the registry folder <registry>/<name>/; must match bundle.json")
    keep_versions: int = field(
        0,
        "after publishing, remove the complete versions of this name beyond the N most recently published "
        "(latest and the version it replaced are always kept, so N >= 2; 0 = keep every version)",
    )

    def validate(self) -> None:
        if not self.registry:
            raise ConfigError("registry is required: a local folder or s3://bucket/prefix")
        if not bundles.VERSION_PATTERN.fullmatch(self.name) or self.name == bundles.LATEST:
            raise ConfigError(f"name {self.name!r} must be letters, digits, '.', '_' or '-' (a folder name)")
        if self.keep_versions < 0 or self.keep_versions == 1:
            raise ConfigError(
                f"keep_versions must be 0 (keep every version) or at least 2 (latest and the version it "
                f"replaced, the rollback target), got {self.keep_versions}"
            )


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def copy_bundle(local_bundle: Path, target: str) -> list[dict]:
    """Copy every file of the bundle under ``target``, bundle.json last; returns what was copied."""
    names = sorted(p.relative_to(local_bundle).as_posix() for p in local_bundle.rglob("*") if p.is_file())
    names = [n for n in names if n != bundles.BUNDLE_JSON] + [bundles.BUNDLE_JSON]
    copied = []
    with Progress(TAG, total=len(names), unit="files") as progress:
        for name in names:
            destination = storage.join(target, name)
            storage.copy(local_bundle / name, destination)
            copied.append({"file": name, "to": destination, "bytes": (local_bundle / name).stat().st_size})
            progress.update(1)
    present = set(storage.list_files(target))
    missing = [entry["to"] for entry in copied if entry["to"] not in present]
    if missing:
        raise OSError(f"publishing to {target}: {len(missing)} file(s) missing after the copy: {missing[:5]}")
    return copied


def published_versions(registry: str, name: str) -> list[tuple[str, str]]:
    """(published_at, version) of every complete version of ``name`` in ``registry`` (a folder with the
    completion marker), newest first; a marker that cannot be read sorts as the oldest."""
    root = storage.join(registry, name)
    if not storage.is_s3(root) and not Path(root).is_dir():
        return []
    versions = []
    for path in storage.list_files(root, recursive=True):
        relative = path[len(root) :].strip("/")
        version, _, file_name = relative.partition("/")
        if file_name != bundles.COMPLETE_MARKER or not bundles.VERSION_PATTERN.fullmatch(version):
            continue  # not a release: another file, or a folder (an S3 key's part) no version is named
        try:
            published_at = str(json.loads(storage.read_text(path)).get("published_at") or "")
        except (OSError, ValueError, AttributeError):
            published_at = ""
        versions.append((published_at, version))
    return sorted(versions, reverse=True)


def prune_versions(config: PublishConfig, keep: set[str]) -> list[str]:
    """Step 5 (module doc): remove the complete versions beyond the ``config.keep_versions`` newest, never
    one in ``keep``; returns the versions removed, oldest last. Call it under the registry's lock."""
    if not config.keep_versions:
        return []
    removed = []
    for _, version in published_versions(config.registry, config.name)[config.keep_versions :]:
        if version in keep:
            continue
        target = version_uri(config.registry, config.name, version)
        # the marker first: a half-removed version reads as an incomplete one, never as a release
        storage.remove_file(storage.join(target, bundles.COMPLETE_MARKER))
        storage.remove_tree(target)
        removed.append(version)
    if removed:
        log(
            TAG,
            f"keep_versions {config.keep_versions}: removed {len(removed)} older version(s): {', '.join(removed)}",
        )
    return removed


def run(config: PublishConfig, bundle_dir: str | Path, out_dir: str | Path) -> dict:
    """Publish ``bundle_dir`` (local or s3://) to ``config.registry``; returns the manifest."""
    config.validate()
    started = time.perf_counter()
    with storage.local_dir(bundle_dir) as local_bundle:
        # 1. The bundle must meet the contract before anything is copied.
        summary = bundles.validate_bundle(local_bundle)
        bundle = bundles.read_bundle_json(local_bundle)
        if bundle["name"] != config.name:
            raise ValueError(
                f"bundle {bundle_dir} is named {bundle['name']!r} but publish --name is {config.name!r}; "
                "gate and publish must use the same name"
            )
        version = bundle["version"]
        target = version_uri(config.registry, config.name, version)
        marker = storage.join(target, bundles.COMPLETE_MARKER)

        # 2. Versions are immutable.
        if storage.exists(marker):
            raise FileExistsError(
                f"{config.name} {version} is already published at {target}; a new model needs a new version"
            )
        if storage.exists(target):
            log(
                TAG,
                f"{target} holds an incomplete earlier attempt (no {bundles.COMPLETE_MARKER}); copying over it",
            )
        previous = read_latest(config.registry, config.name)
        expected = gated_champion(bundle)
        check_champion(expected, previous, config, version)  # stale already: refused before any copy
        if expected is UNKNOWN:
            log(TAG, f"{bundle_dir} records no gate decision: latest moves without a champion check")

        # 3. Copy, check, mark complete.
        log(
            TAG,
            f"{config.name} {version}: {summary['files'] + 1} files, {summary['bytes'] / 1e6:.1f} MB -> {target}",
        )
        copy_started = time.perf_counter()
        try:
            copied = copy_bundle(local_bundle, target)
        except OSError as error:
            if storage.is_disk_full(error):  # the half copy would keep the space a retry needs
                storage.remove_tree(target)
                log(TAG, f"the registry's disk is full: removed the partial copy {target}")
            raise
        copy_seconds = time.perf_counter() - copy_started
        published_at = utc_now()
        completion = {
            "name": config.name,
            "version": version,
            "published_at": published_at,
            "files": len(copied),
            "bytes": sum(entry["bytes"] for entry in copied),
            "bundle_json_sha256": bundles.sha256_file(local_bundle / bundles.BUNDLE_JSON),
        }
        storage.write_text(marker, json.dumps(completion, indent=2) + "\n")

    # 4. Only now does latest move: compare-and-swap, under the registry's lock.
    with locks.exclusive_lock(storage.join(config.registry, config.name, LATEST_LOCK)):
        previous = read_latest(config.registry, config.name)
        try:
            check_champion(expected, previous, config, version)
        except ChampionChanged:
            storage.remove_tree(target)  # never released: the marker goes with it, nothing points at it
            raise
        pointer = {
            "version": version,
            "path": f"{config.name}/{version}",  # relative to the registry: no local folder in the pointer
            "published_at": published_at,
            "primary_metric": bundle["metrics"].get("primary"),
            "previous_version": None if previous is None else previous.get("version"),
        }
        write_latest(config.registry, config.name, pointer)
        removed = prune_versions(config, keep={version, pointer["previous_version"]})

    manifest = {
        "registry": config.registry,
        "name": config.name,
        "version": version,
        "destination": target,
        "latest": latest_uri(config.registry, config.name),
        "pointer": pointer,
        "previous_latest": previous,
        "files": copied,
        "removed_versions": removed,
        "bytes": completion["bytes"],
        "copy_seconds": round(copy_seconds, 3),
        "seconds": round(time.perf_counter() - started, 3),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    cfg.save_resolved(config, out)
    log(
        TAG,
        f"published {config.name} {version} to {target}; latest -> {version} in {manifest['seconds']:.1f}s",
    )
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="semcode publish",
        description="Validate a release bundle, copy it to <registry>/<name>/<version>/ and point "
        "<registry>/<name>/latest at it (only once the copy is complete).",
        epilog=(
            "examples:\n"
            "  semcode publish --bundle runs/r1/gate/bundle --registry s3://models/registry --out runs/r1/publish\n"
            "  semcode publish --bundle runs/r1/gate/bundle --registry ./registry --out runs/r1/publish"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--bundle", required=True, metavar="DIR", help="the bundle directory (gate output bundle/)"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory for manifest.json")
    cfg.add_arguments(parser, PublishConfig)
    args = parser.parse_args(argv)
    try:
        config = cfg.from_args(PublishConfig, args, section="publish")
        run(config, args.bundle, args.out)
    except ChampionChanged as error:
        print(f"semcode publish: {error}", file=sys.stderr)
        return EXIT_REFUSED
    except (*cfg.BAD_INPUT_ERRORS, BundleError, ConfigError, OSError) as error:
        return cfg.bad_input("publish", error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
