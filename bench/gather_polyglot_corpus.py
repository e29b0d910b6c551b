"""Gather real training code in nine languages from this machine's package registries.

    .venv/bin/python bench/gather_polyglot_corpus.py --out /tmp/polyglot_corpus
    .venv/bin/python bench/gather_polyglot_corpus.py --out /tmp/polyglot_corpus --languages go,rust
    .venv/bin/python bench/gather_polyglot_corpus.py --out /tmp/polyglot_corpus --dry-run
    .venv/bin/semcode ingest --source dir:/tmp/polyglot_corpus/go --out /tmp/polyglot_ingest_go

Fetches the explicit list of packages in ``PACKAGES`` below and copies their source files into
``OUT/<language>/<package>/``, then prints, per language, the packages, files and bytes there.

Where the code comes from (the only registries this machine reaches):

- Debian (Go, Rust, Ruby, PHP, Java, C, C++): ``apt-get download`` fetches the ``.deb`` into
  ``--deb-dir`` and ``dpkg-deb -x`` unpacks it there. Nothing is installed system-wide and no
  dependency is pulled in, so only the listed package's own files are copied. Go sources live
  under ``/usr/share/gocode/src``, Rust crates under ``/usr/share/cargo/registry``, Ruby under
  ``/usr/share/rubygems-integration/all/gems`` or ``/usr/lib/ruby/vendor_ruby``, PHP under ``/usr/share/php``; Java is read from the JDK's own
  ``src.zip`` (``openjdk-17-source``); C comes from gnulib's library sources and curl's examples;
  C++ from header-only libraries whose headers are ``.hpp`` (``.h`` files are read as C by the
  ingest stage, so libfmt-dev and libspdlog-dev are left out; librange-v3-dev was left out because
  half of its macro-heavy headers do not parse).
- npm (JavaScript, TypeScript): one ``npm install --prefix NPM_PREFIX --ignore-scripts``
  (``--npm-prefix``).
  Only plain ``.js``/``.ts`` sources are copied: no ``.min.js``, ``.d.ts`` or ``dist/`` bundles.

Files are filtered the way ``semcode ingest`` reads a ``dir:`` source: the file's extension must
map to the folder's language (``semcode.data.languages``), and test paths (``semcode.data.extract``),
vendored, bundled and generated paths and files over ``--max-file-bytes`` are left out. ``limit`` keeps the first N files in path order, so that a
language lands at a few hundred files (enough to train on, not more).

The eight evaluation repositories and everything derived from them are refused (``EXCLUDED``,
printed on every run): a package whose name matches is never fetched, and a file whose source
path matches is never copied.

Re-runnable: a fetched ``.deb``, an unpacked package, an installed npm package and a finished
``OUT/<language>/<package>/`` folder are all kept and skipped (a package is copied into a hidden
``.<package>.partial`` folder first and renamed when complete). ``--dry-run`` prints the commands
and copies without running them.
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass

from semcode.data import extract, languages

GOCODE = "usr/share/gocode/src"
CARGO = "usr/share/cargo/registry"
RUBY = "usr"  # usr/lib/ruby/vendor_ruby or usr/share/rubygems-integration/all/gems
PHP = "usr/share/php"
JDK_SRC_ZIP = "usr/lib/jvm/openjdk-17/lib/src.zip"


@dataclass(frozen=True)
class Package:
    language: str  # the folder under OUT (a language of semcode.data.languages)
    name: str  # the folder under OUT/<language>/
    registry: str  # "deb" (a Debian package), "deb-zip" (a zip inside one) or "npm"
    package: str  # the Debian package or the npm spec (name@range)
    root: str  # the folder inside the package whose files are taken ("zip!folder" for deb-zip)
    limit: int = 0  # keep at most this many files, first in path order (0 = all)
    flat: bool = False  # only the files directly in root, not in its sub-folders


# fmt: off
PACKAGES = [
    # language     name (output folder)                  registry   package / npm spec                     root                                          limit
    Package("go", "golang-github-pkg-errors-dev",           "deb", "golang-github-pkg-errors-dev",           GOCODE),
    Package("go", "golang-github-google-uuid-dev",          "deb", "golang-github-google-uuid-dev",          GOCODE),
    Package("go", "golang-github-gorilla-mux-dev",          "deb", "golang-github-gorilla-mux-dev",          GOCODE),
    Package("go", "golang-github-sirupsen-logrus-dev",      "deb", "golang-github-sirupsen-logrus-dev",      GOCODE),
    Package("go", "golang-gopkg-yaml.v3-dev",               "deb", "golang-gopkg-yaml.v3-dev",               GOCODE),
    Package("go", "golang-github-pelletier-go-toml-dev",    "deb", "golang-github-pelletier-go-toml-dev",    GOCODE),
    Package("go", "golang-github-urfave-cli-dev",           "deb", "golang-github-urfave-cli-dev",           GOCODE),
    Package("go", "golang-github-gorilla-websocket-dev",    "deb", "golang-github-gorilla-websocket-dev",    GOCODE),
    Package("go", "golang-github-go-chi-chi-dev",           "deb", "golang-github-go-chi-chi-dev",           GOCODE),
    Package("go", "golang-github-dustin-go-humanize-dev",   "deb", "golang-github-dustin-go-humanize-dev",   GOCODE),
    Package("go", "golang-github-mitchellh-mapstructure-dev", "deb", "golang-github-mitchellh-mapstructure-dev", GOCODE),
    Package("go", "golang-github-burntsushi-toml-dev",      "deb", "golang-github-burntsushi-toml-dev",      GOCODE),
    Package("go", "golang-github-gin-gonic-gin-dev",        "deb", "golang-github-gin-gonic-gin-dev",        GOCODE),
    Package("rust", "librust-regex-syntax-dev",             "deb", "librust-regex-syntax-dev",               CARGO),
    Package("rust", "librust-memchr-dev",                   "deb", "librust-memchr-dev",                     CARGO),
    Package("rust", "librust-itoa-dev",                     "deb", "librust-itoa-dev",                       CARGO),
    Package("rust", "librust-semver-dev",                   "deb", "librust-semver-dev",                     CARGO),
    Package("rust", "librust-log-dev",                      "deb", "librust-log-dev",                        CARGO),
    Package("rust", "librust-anyhow-dev",                   "deb", "librust-anyhow-dev",                     CARGO),
    Package("rust", "librust-thiserror-dev",                "deb", "librust-thiserror-dev",                  CARGO),
    Package("rust", "librust-bitflags-dev",                 "deb", "librust-bitflags-dev",                   CARGO),
    Package("rust", "librust-smallvec-dev",                 "deb", "librust-smallvec-dev",                   CARGO),
    Package("rust", "librust-hashbrown-dev",                "deb", "librust-hashbrown-dev",                  CARGO),
    Package("rust", "librust-once-cell-dev",                "deb", "librust-once-cell-dev",                  CARGO),
    Package("rust", "librust-either-dev",                   "deb", "librust-either-dev",                     CARGO),
    Package("rust", "librust-bytes-dev",                    "deb", "librust-bytes-dev",                      CARGO),
    Package("rust", "librust-serde-dev",                    "deb", "librust-serde-dev",                      CARGO),
    Package("rust", "librust-rand-dev",                     "deb", "librust-rand-dev",                       CARGO),
    Package("rust", "librust-itertools-dev",                "deb", "librust-itertools-dev",                  CARGO),
    Package("rust", "librust-indexmap-dev",                 "deb", "librust-indexmap-dev",                   CARGO),
    Package("ruby", "ruby-rack",                            "deb", "ruby-rack",                              RUBY),
    Package("ruby", "ruby-thor",                            "deb", "ruby-thor",                              RUBY),
    Package("ruby", "ruby-mustache",                        "deb", "ruby-mustache",                          RUBY),
    Package("ruby", "ruby-addressable",                     "deb", "ruby-addressable",                       RUBY),
    Package("ruby", "ruby-public-suffix",                   "deb", "ruby-public-suffix",                     RUBY),
    Package("ruby", "ruby-i18n",                            "deb", "ruby-i18n",                              RUBY),
    Package("ruby", "ruby-mime-types",                      "deb", "ruby-mime-types",                        RUBY),
    Package("ruby", "ruby-tzinfo",                          "deb", "ruby-tzinfo",                            RUBY),
    Package("ruby", "ruby-concurrent",                      "deb", "ruby-concurrent",                        RUBY),
    Package("php", "php-symfony-console",                   "deb", "php-symfony-console",                    PHP),
    Package("php", "php-monolog",                           "deb", "php-monolog",                            PHP),
    Package("php", "php-psr-log",                           "deb", "php-psr-log",                            PHP),
    Package("php", "php-twig",                              "deb", "php-twig",                               PHP),
    Package("php", "php-symfony-string",                    "deb", "php-symfony-string",                     PHP),
    Package("php", "php-symfony-finder",                    "deb", "php-symfony-finder",                     PHP),
    Package("java", "openjdk-17-java.util",                 "deb-zip", "openjdk-17-source", f"{JDK_SRC_ZIP}!java.base/java/util", flat=True),
    Package("java", "openjdk-17-java.util.function",        "deb-zip", "openjdk-17-source", f"{JDK_SRC_ZIP}!java.base/java/util/function"),
    Package("java", "openjdk-17-java.io",                   "deb-zip", "openjdk-17-source", f"{JDK_SRC_ZIP}!java.base/java/io"),
    Package("java", "openjdk-17-java.net",                  "deb-zip", "openjdk-17-source", f"{JDK_SRC_ZIP}!java.base/java/net"),
    Package("java", "openjdk-17-java.time",                 "deb-zip", "openjdk-17-source", f"{JDK_SRC_ZIP}!java.base/java/time"),
    Package("c", "gnulib",                                  "deb", "gnulib",                                 "usr/share/gnulib/lib", limit=300, flat=True),
    Package("c", "libcurl4-doc",                            "deb", "libcurl4-doc",                           "usr/share/doc/libcurl4/examples"),
    Package("cpp", "nlohmann-json3-dev",                    "deb", "nlohmann-json3-dev",                     "usr/include"),
    Package("cpp", "libcli11-dev",                          "deb", "libcli11-dev",                           "usr/include"),
    Package("cpp", "libcxxopts-dev",                        "deb", "libcxxopts-dev",                         "usr/include"),
    Package("cpp", "libcereal-dev",                         "deb", "libcereal-dev",                          "usr/include"),
    Package("cpp", "libasio-dev",                           "deb", "libasio-dev",                            "usr/include", limit=250),
    Package("javascript", "lodash",                         "npm", "lodash@4",                               "", limit=250),
    Package("javascript", "ramda",                          "npm", "ramda@0.30",                             "src", limit=150),
    Package("javascript", "commander",                      "npm", "commander@12",                           "lib"),
    Package("javascript", "yargs",                          "npm", "yargs@17",                               ""),
    Package("javascript", "chalk",                          "npm", "chalk@5",                                "source"),
    Package("javascript", "debug",                          "npm", "debug@4",                                "src"),
    Package("javascript", "semver",                         "npm", "semver@7",                               ""),
    Package("javascript", "minimist",                       "npm", "minimist@1",                             ""),
    Package("typescript", "rxjs",                           "npm", "rxjs@7",                                 "src"),
    Package("typescript", "mobx",                           "npm", "mobx@6",                                 "src"),
    Package("typescript", "immer",                          "npm", "immer@10",                               "src"),
    Package("typescript", "tanstack-query-core",            "npm", "@tanstack/query-core@5",                 "src"),
    Package("typescript", "tanstack-table-core",            "npm", "@tanstack/table-core@8",                 "src"),
    Package("typescript", "tanstack-router-core",           "npm", "@tanstack/router-core@1",                "src"),
]
# fmt: on

# The eight evaluation repositories: (repository, pattern). A pattern is searched (lower case) in
# a package's name and npm spec, and in every source file's path inside the fetched package.
EXCLUDED = [
    ("spf13/cobra", r"cobra"),
    ("google/gson", r"gson"),
    ("expressjs/express", r"expressjs|(^|/)express(@|/|$)"),
    ("colinhacks/zod", r"colinhacks|(^|/|@)zod(@|/|-|$)"),
    ("sinatra/sinatra", r"sinatra|rack-protection|rack/protection"),
    ("guzzle/guzzle", r"guzzle"),
    ("BurntSushi/ripgrep", r"ripgrep|librust-(grep|ignore|globset)\b|(^|/)(grep|grep-\w+|ignore|globset)-\d"),
    ("libuv/libuv", r"libuv|(^|/)uv\.h$|(^|/)uv/"),
]

SKIPPED_DIRS = {  # compared in lower case with every folder between root and the file
    "test", "tests", "testing", "testdata", "spec", "specs", "__tests__", "__mocks__", "fixtures",
    "bench", "benches", "benchmark", "benchmarks", "example", "examples", "_examples",
    "vendor", "node_modules", "third_party", "dist", "umd", "bundles",
}  # fmt: skip
SKIPPED_NAME = re.compile(
    r"(\.min\.js|\.bundle\.js|\.d\.ts|\.d\.mts|\.d\.cts|\.pb\.go)$|(^test_|_test\.|\.test\.|\.spec\.|_spec\.)"
)


def excluded_by(text: str) -> str | None:
    """The evaluation repository that ``text`` (a package name or a source path) belongs to, or None."""
    lowered = text.lower()
    for repository, pattern in EXCLUDED:
        if re.search(pattern, lowered):
            return repository
    return None


def npm_name(spec: str) -> str:
    """``lodash@4`` -> ``lodash``; ``@tanstack/query-core@5`` -> ``@tanstack/query-core``."""
    head, at, _ = spec[1:].partition("@")
    return spec[0] + head if at else spec


def run(command: list[str], dry_run: bool, cwd: str | None = None) -> None:
    print(("would run: " if dry_run else "run: ") + " ".join(command) + (f"  (in {cwd})" if cwd else ""))
    if not dry_run:
        subprocess.run(command, check=True, cwd=cwd)


def fetch_debs(packages: list[str], deb_dir: str, dry_run: bool) -> None:
    """``apt-get download`` the missing .deb files, then ``dpkg-deb -x`` each into deb_dir/root/<pkg>."""
    if not dry_run:
        os.makedirs(deb_dir, exist_ok=True)
    missing = [p for p in packages if not glob.glob(os.path.join(deb_dir, f"{p}_*.deb"))]
    if missing:  # run as root by apt without its sandbox user, which may not write deb_dir
        run(["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", *missing], dry_run, cwd=deb_dir)
    for package in packages:
        dest = os.path.join(deb_dir, "root", package)
        if os.path.isdir(dest):
            continue
        found = sorted(glob.glob(os.path.join(deb_dir, f"{package}_*.deb")))
        deb = found[-1] if found else os.path.join(deb_dir, f"{package}_*.deb")
        if not dry_run:
            shutil.rmtree(dest + ".partial", ignore_errors=True)
            os.makedirs(os.path.dirname(dest), exist_ok=True)
        run(["dpkg-deb", "-x", deb, dest + ".partial"], dry_run)
        if not dry_run:
            os.rename(dest + ".partial", dest)


def fetch_npm(specs: list[str], npm_prefix: str, dry_run: bool) -> None:
    """One ``npm install`` of the specs whose package is not in npm_prefix/node_modules yet."""
    missing = [
        s
        for s in specs
        if not os.path.isfile(os.path.join(npm_prefix, "node_modules", npm_name(s), "package.json"))
    ]
    if missing:
        if not dry_run:
            os.makedirs(npm_prefix, exist_ok=True)
        command = ["npm", "install", "--prefix", npm_prefix, "--ignore-scripts", "--no-audit", "--no-fund"]
        run(command + missing, dry_run)


def wanted(rel: str, language: str, size: int, flat: bool, max_bytes: int) -> bool:
    """Whether the file at ``rel`` (relative to a package's root) is a source file to copy."""
    parts = rel.split("/")
    if flat and len(parts) > 1:
        return False
    if any(part.lower() in SKIPPED_DIRS or part.startswith(".") for part in parts[:-1]):
        return False
    if SKIPPED_NAME.search(parts[-1].lower()):
        return False
    if extract.is_test_path(rel, languages.RULES[language].test_path_words):
        return False  # what the ingest stage would skip as a test path
    return languages.language_of_path(rel) == language and 0 < size <= max_bytes


def list_files(package: Package, deb_dir: str, npm_prefix: str) -> tuple[list[tuple[str, str, int]], str]:
    """(rel, where, size) of every file under the package's root (symlinks left out), and the root's path.

    ``where`` is a file path, or the member name inside the zip for ``deb-zip``.
    """
    if package.registry == "deb-zip":
        zip_rel, _, inner = package.root.partition("!")
        zip_path = os.path.join(deb_dir, "root", package.package, zip_rel)
        with zipfile.ZipFile(zip_path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir() and m.filename.startswith(inner + "/")]
        return [
            (m.filename[len(inner) + 1 :], m.filename, m.file_size) for m in members
        ], f"{zip_path}!{inner}"
    if package.registry == "deb":
        root = os.path.join(deb_dir, "root", package.package, package.root)
    else:
        root = os.path.join(npm_prefix, "node_modules", npm_name(package.package), package.root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                found.append((os.path.relpath(path, root).replace(os.sep, "/"), path, os.path.getsize(path)))
    return found, root


def common_folder(rels: list[str]) -> str:
    """The deepest folder (with a trailing "/", or "") that holds every one of the paths."""
    folders = [rel.split("/")[:-1] for rel in rels]
    shared = os.path.commonprefix(folders) if folders else []
    return "/".join(shared) + "/" if shared else ""


def copy_package(
    package: Package, out: str, deb_dir: str, npm_prefix: str, max_bytes: int
) -> tuple[int, int]:
    """Copy the package's source files into OUT/<language>/<name>/; (files refused, files over limit)."""
    files, root = list_files(package, deb_dir, npm_prefix)
    chosen, refused = [], 0
    for rel, where, size in sorted(files):
        if not wanted(rel, package.language, size, package.flat, max_bytes):
            continue
        if excluded_by(f"{package.package}/{package.root}/{rel}"):
            refused += 1
            continue
        chosen.append((rel, where))
    over_limit = max(len(chosen) - package.limit, 0) if package.limit else 0
    if package.limit:
        chosen = chosen[: package.limit]
    if not chosen:
        raise SystemExit(f"{package.name}: no {package.language} source files under {root}")
    strip = common_folder([rel for rel, _ in chosen])
    final = os.path.join(out, package.language, package.name)
    partial = os.path.join(out, package.language, f".{package.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    archive = zipfile.ZipFile(root.partition("!")[0]) if package.registry == "deb-zip" else None
    for rel, where in chosen:
        dest = os.path.join(partial, rel[len(strip) :])
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if archive is not None:
            with archive.open(where) as source, open(dest, "wb") as target:
                shutil.copyfileobj(source, target)
        else:
            shutil.copyfile(where, dest)
    if archive is not None:
        archive.close()
    os.rename(partial, final)
    return refused, over_limit


def folder_totals(path: str) -> tuple[int, int]:
    """(files, bytes) under a folder."""
    files = size = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            files += 1
            size += os.path.getsize(os.path.join(dirpath, name))
    return files, size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", default="/tmp/polyglot_corpus", help="output folder (OUT/<language>/<package>/)"
    )
    parser.add_argument("--languages", default="", help="comma-separated languages to gather (default: all)")
    parser.add_argument(
        "--deb-dir", default="/tmp/polyglot_debs", help="where .deb files are fetched and unpacked"
    )
    parser.add_argument("--npm-prefix", default="/tmp/polyglot_npm", help="npm install --prefix")
    parser.add_argument(
        "--max-file-bytes", type=int, default=1_000_000, help="skip bigger files (ingest's default)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the commands and copies, run nothing")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    all_languages = sorted({p.language for p in PACKAGES})
    languages = [x.strip() for x in args.languages.split(",") if x.strip()] or all_languages
    unknown = sorted(set(languages) - set(all_languages))
    if unknown:
        parser.error(f"unknown languages {unknown}; known: {', '.join(all_languages)}")

    print("excluded (evaluation repositories, never fetched or copied):")
    for repository, pattern in EXCLUDED:
        print(f"  {repository:20} /{pattern}/")
    selected = []
    for package in PACKAGES:
        if package.language not in languages:
            continue
        repository = excluded_by(package.name) or excluded_by(package.package)
        if repository:
            print(
                f"REFUSED {package.language}/{package.name}: belongs to the evaluation repository {repository}"
            )
            continue
        selected.append(package)

    todo = [p for p in selected if not os.path.isdir(os.path.join(args.out, p.language, p.name))]
    print(f"{len(selected)} packages selected, {len(selected) - len(todo)} already in {args.out}")
    debs = sorted({p.package for p in todo if p.registry in ("deb", "deb-zip")})
    if debs:
        fetch_debs(debs, args.deb_dir, args.dry_run)
    npm_specs = [p.package for p in todo if p.registry == "npm"]
    if npm_specs:
        fetch_npm(npm_specs, args.npm_prefix, args.dry_run)
    for package in todo:
        if args.dry_run:
            limit = f" (first {package.limit} files)" if package.limit else ""
            print(f"would copy {package.registry}:{package.package} {package.root or '.'} -> "
                  f"{os.path.join(args.out, package.language, package.name)}{limit}")  # fmt: skip
            continue
        refused, over_limit = copy_package(
            package, args.out, args.deb_dir, args.npm_prefix, args.max_file_bytes
        )
        notes = ""
        if refused:
            notes += f" ({refused} files refused: excluded)"
        if over_limit:
            notes += f" ({over_limit} files over the limit left out)"
        print(f"copied {package.language}/{package.name}{notes}")
    if args.dry_run:
        return 0

    print("\n| language | packages | files | bytes |\n|---|---:|---:|---:|")
    total_packages = total_files = total_bytes = 0
    for language in languages:
        names = [p.name for p in selected if p.language == language]
        files = size = 0
        for name in names:
            f, b = folder_totals(os.path.join(args.out, language, name))
            files, size = files + f, size + b
        print(f"| {language} | {len(names)} | {files} | {size} |")
        total_packages, total_files, total_bytes = (
            total_packages + len(names),
            total_files + files,
            total_bytes + size,
        )
    print(f"| total | {total_packages} | {total_files} | {total_bytes} |")
    print(f"\nwall time: {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
