"""Read a local ``dir:`` source again, parsing only the files whose content changed (``semcode index
--update``).

``code_files`` lists the files a read of the source parses (semcode.data.sources.code: the same listing,
``.gitignore``, language and path rules) and ``file_digests`` their sha256, taken before the read so a file
that changes while it is read is seen as changed next time. ``reread`` then parses the files whose sha256
differs from the one recorded (new ones too) and takes the rows of every other file from the previous
read, with their url moved to the source's commit now; the rows come in the order a whole read gives
(file by file in listing order, a file's definitions in order), so the index is the one a rebuild makes.
A file's rows are what extraction gives for its content, so those of an unchanged file are its rows
again, as long as the extraction is the same: the caller reads everything after a semcode upgrade.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from semcode.data.files import FileRefused, read_source_file
from semcode.data.gitignore import GitIgnore
from semcode.data.sources import code
from semcode.data.sources.code import FileTask
from semcode.data.sources.rows import ExtractOptions, new_row
from semcode.data.sources.spec import SourceSpec

COMMIT_IN_URL = re.compile(r"^(dir://[^/@]*)@[0-9a-f]{40}/")
ROW_FIELDS = ("code", "language", "repo", "path", "func_name", "signature")  # as index_meta keeps them
MAX_DIGEST_BYTES = 64 << 20  # a bigger file is over any sane max_file_bytes: read (and refused) again


def code_files(spec: SourceSpec, options: ExtractOptions) -> tuple[list[FileTask], Counter[str]]:
    """(the files a read of the local ``dir:`` source parses, in its order; the files of its languages it
    skips by reason: the path rules, ``vendored``, ``generated``, ``test_path``, and ``gitignored``, the
    files and folders its .gitignore files exclude)."""
    ignore = GitIgnore()
    tasks = code._dir_tasks(spec, options, lambda error: None, ignore)  # the reader's own listing
    skipped: Counter[str] = Counter({"gitignored": ignore.skipped} if ignore.skipped else {})
    kept = []
    for task in tasks:
        reason = code.path_reject(task)
        if reason is None:
            kept.append(task)
        else:
            skipped[reason] += 1
    return kept, skipped


def file_digests(tasks: Iterable[FileTask]) -> dict[str, str]:
    """{path: sha256 of its bytes} ("" for a file that cannot be read: it is read, and refused, again).

    Read as a whole read reads (semcode.data.files): a FIFO, a device or a link out of the source's folder
    is never opened, and no file is read past MAX_DIGEST_BYTES."""
    digests = {}
    for task in tasks:
        try:
            data = read_source_file(task.location, task.root, MAX_DIGEST_BYTES)
        except (OSError, FileRefused):
            digests[task.path] = ""
            continue
        digests[task.path] = hashlib.sha256(data).hexdigest()
    return digests


def file_url(url: str) -> str:
    """A row's url without its ``#L`` fragment and its commit: what names the file across commits."""
    return COMMIT_IN_URL.sub(r"\1/", url.split("#", 1)[0])


def rows_by_file(rows: Iterable[dict]) -> dict[str, list[dict]]:
    """Index metadata rows (code, language, repo, path, func_name, url, signature, doc) by ``file_url``."""
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        grouped.setdefault(file_url(row["url"]), []).append(row)
    return grouped


@dataclass
class Reread:
    rows: list[dict]  # corpus rows (PAIR_SCHEMA), in the order a whole read gives
    digests: dict[str, str]  # path -> sha256 now
    files_seen: int = 0  # of the source's languages, as a whole read counts them (path rules included)
    files_read: int = 0
    files_kept: int = 0
    rejects: Counter[str] = field(default_factory=Counter)  # files skipped by path, and of those parsed


def reread(
    spec: SourceSpec,
    options: ExtractOptions,
    digests_before: dict[str, str],
    rows_before: dict[str, list[dict]],
) -> Reread:
    """The source's corpus rows now: files whose sha256 is the one in ``digests_before`` keep their rows of
    ``rows_before`` (``rows_by_file`` of the previous index's metadata; the url moved to the commit now),
    the others are parsed."""
    tasks, skipped = code_files(spec, options)
    done = Reread([], file_digests(tasks), rejects=skipped)
    done.files_seen = len(tasks) + sum(count for reason, count in skipped.items() if reason != "gitignored")
    for task in tasks:
        if done.digests[task.path] and digests_before.get(task.path) == done.digests[task.path]:
            done.files_kept += 1
            for row in rows_before.get(file_url(task.url), []):
                fragment = row["url"][len(row["url"].split("#", 1)[0]) :]
                kept = {name: row[name] for name in ROW_FIELDS}
                done.rows.append(
                    new_row(
                        spec.text, query=row["doc"], url=task.url + fragment, license=task.license, **kept
                    )
                )
            continue
        outcome = code.process_file(task, spec.text, options)
        done.files_read += 1
        done.rows.extend(outcome.corpus)
        done.rejects.update(outcome.rejects)
    return done
