"""Read, write, list and copy files that live on local disk or on S3 (``s3://bucket/key``).

Every function takes a local path or an ``s3://`` URI and does the same thing for both, so a stage
never branches on where its inputs live. S3 goes through boto3 and works with AWS, MinIO, SeaweedFS
and ``rclone serve s3``; the connection is configured from the environment, re-read on every call:

- ``AWS_ENDPOINT_URL_S3``, ``AWS_ENDPOINT_URL`` or ``S3_ENDPOINT_URL``: the S3 endpoint (first set
  wins); unset means AWS itself. With an endpoint, requests use path-style addressing
  (``http://host/bucket/key``), which every S3-compatible server understands.
- ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``: credentials; unset means
  boto3's usual chain (profile, instance or pod role).
- ``AWS_REGION`` or ``AWS_DEFAULT_REGION``: the region (default ``us-east-1``).
- ``SEMCODE_S3_MAX_ATTEMPTS``: attempts per request, with exponential backoff between them, for
  throttling, 5xx answers and connection errors (default 5).
- ``SEMCODE_S3_MULTIPART_MB``: objects at least this big (MiB) go up and down in parallel parts of
  this size (default 64, at least 5: the S3 minimum part size).

Errors say what to fix: a missing object raises ``FileNotFoundError`` naming the URI; a missing
bucket, rejected credentials or an unreachable endpoint raise ``StorageError`` naming the bucket and
the endpoint, and the environment variables to check.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.exceptions
from boto3.s3.transfer import TransferConfig

from semcode.config import ConfigError, OutputError

S3_PREFIX = "s3://"
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "S3_ENDPOINT_URL")
DEFAULT_REGION = "us-east-1"
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_MULTIPART_MB = 64
MIN_MULTIPART_MB = 5  # S3 refuses parts smaller than 5 MiB (except the last one)
MAX_SINGLE_COPY_BYTES = 5 * 1024**3  # CopyObject copies up to 5 GiB in one request
S3_DELETE_BATCH = 1000  # DeleteObjects removes at most this many keys per request
CREDENTIAL_VARIABLES = "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN if you use one)"

PathOrUri = str | os.PathLike[str]


class StorageError(OSError):
    """S3 is misconfigured or unreachable: a missing bucket, rejected credentials, a dead endpoint."""


# ---------------------------------------------------------------------------------------------
# URIs


def is_s3(uri: PathOrUri) -> bool:
    return os.fspath(uri).startswith(S3_PREFIX)


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b.txt`` -> ``("bucket", "a/b.txt")``; the key is ``""`` for a bare bucket."""
    if not is_s3(uri):
        raise ValueError(f"not an S3 URI (expected s3://bucket/key): {uri!r}")
    bucket, _, key = uri[len(S3_PREFIX) :].partition("/")
    if not bucket:
        raise ValueError(f"S3 URI has no bucket name: {uri!r}")
    return bucket, key


def join(base: PathOrUri, *parts: str) -> str:
    """Join path parts onto a local path or an S3 URI (always ``/`` inside S3 keys)."""
    base = os.fspath(base)
    if not is_s3(base):
        return os.path.join(base, *parts)
    pieces = [base.rstrip("/")] + [part.strip("/") for part in parts if part.strip("/")]
    return "/".join(pieces)


def check_relative_name(name: str, what: str) -> str:
    """``name`` if it is a relative path that stays inside its folder (no absolute path, no ``..`` part,
    no backslash or NUL); else ValueError naming it. Every name that comes from outside (a bundle.json, an
    S3 listing, a manifest) goes through this before it becomes a path: a key ``../../.bashrc`` in a
    bucket must not write outside the folder it is copied into."""
    parts = name.split("/")
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or any(part in ("..", "") for part in parts[:-1])
        or parts[-1] in ("..", ".", "")
        or (len(name) > 1 and name[1] == ":")  # C:... on Windows
    ):
        raise ValueError(
            f"{what} {name!r}: not a relative name inside its folder (absolute, '..' or empty parts)"
        )
    return name


def contained_join(root: PathOrUri, name: str, what: str) -> str:
    """``join(root, name)`` for a name from outside, checked with ``check_relative_name``; for a local root
    the resolved path must also lie under the resolved root (a symlink inside cannot lead out)."""
    check_relative_name(name, what)
    path = join(root, name)
    if not is_s3(os.fspath(root)):
        resolved_root = Path(os.fspath(root)).resolve()
        if not Path(path).resolve().is_relative_to(resolved_root):
            raise ValueError(f"{what} {name!r}: resolves outside {resolved_root}")
    return path


def _object_key(uri: str) -> tuple[str, str]:
    """The bucket and key of an S3 URI that must name an object, not a bucket or a folder."""
    bucket, key = split_s3(uri)
    if not key or key.endswith("/"):
        raise ValueError(f"S3 URI names a bucket or a folder, not a file: {uri!r}")
    return bucket, key


# ---------------------------------------------------------------------------------------------
# Connection settings, read from the environment on every call


@dataclass(frozen=True)
class S3Settings:
    endpoint_url: str | None
    region: str
    access_key: str | None
    secret_key: str | None
    session_token: str | None
    max_attempts: int
    multipart_bytes: int

    def endpoint_name(self) -> str:
        return self.endpoint_url or f"the AWS default endpoint (none of {', '.join(ENDPOINT_VARIABLES)} set)"


def _int_from_env(name: str, default: int, minimum: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def s3_settings() -> S3Settings:
    """The S3 connection as the environment describes it right now."""
    endpoint = next((os.environ[name] for name in ENDPOINT_VARIABLES if os.environ.get(name)), None)
    return S3Settings(
        endpoint_url=endpoint,
        region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION,
        access_key=os.environ.get("AWS_ACCESS_KEY_ID") or None,
        secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY") or None,
        session_token=os.environ.get("AWS_SESSION_TOKEN") or None,
        max_attempts=_int_from_env("SEMCODE_S3_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS, minimum=1),
        multipart_bytes=_int_from_env("SEMCODE_S3_MULTIPART_MB", DEFAULT_MULTIPART_MB, MIN_MULTIPART_MB)
        * 1024**2,
    )


@functools.lru_cache(maxsize=16)
def _cached_client(
    endpoint_url: str | None,
    region: str,
    access_key: str | None,
    secret_key: str | None,
    session_token: str | None,
    max_attempts: int,
) -> Any:
    config = botocore.config.Config(
        # "standard" retries throttling, 5xx answers and connection errors with exponential backoff;
        # total_max_attempts counts the first try too (botocore's max_attempts does not).
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        connect_timeout=10,
        read_timeout=60,
        # Custom endpoints (MinIO, SeaweedFS, rclone) serve buckets as paths, not as subdomains.
        s3={"addressing_style": "path" if endpoint_url else "auto"},
        # Only checksum when S3 requires it: several S3-compatible servers refuse the newer
        # default CRC checksum headers.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    # A session of its own: boto3's default session is shared global state and not thread-safe.
    session = boto3.session.Session(
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        aws_session_token=session_token,
        region_name=region,
    )
    return session.client("s3", endpoint_url=endpoint_url, config=config)


def s3_client(settings: S3Settings | None = None) -> Any:
    """The boto3 S3 client for the current environment, cached per endpoint and credentials."""
    s = settings or s3_settings()
    return _cached_client(
        s.endpoint_url, s.region, s.access_key, s.secret_key, s.session_token, s.max_attempts
    )


def _transfer_config(settings: S3Settings) -> TransferConfig:
    return TransferConfig(
        multipart_threshold=settings.multipart_bytes, multipart_chunksize=settings.multipart_bytes
    )


# ---------------------------------------------------------------------------------------------
# Turning botocore errors into errors that say what to fix


def _is_not_found(error: botocore.exceptions.ClientError) -> bool:
    code = error.response.get("Error", {}).get("Code", "")
    return code in ("NoSuchKey", "NotFound", "404")


def _bucket_exists(client: Any, bucket: str) -> bool:
    try:
        client.head_bucket(Bucket=bucket)
    except botocore.exceptions.ClientError as error:
        if error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            return False
    return True  # exists, or we cannot tell: let the original error speak


def _missing_bucket(bucket: str, uri: str, settings: S3Settings) -> StorageError:
    return StorageError(
        f"S3 bucket '{bucket}' does not exist at {settings.endpoint_name()} (while accessing {uri}): "
        f"create the bucket, or check the URI and {' / '.join(ENDPOINT_VARIABLES)}"
    )


def _translate(error: Exception, uri: str, settings: S3Settings) -> OSError:
    endpoint = settings.endpoint_name()
    if isinstance(error, botocore.exceptions.NoCredentialsError):
        return StorageError(f"no AWS credentials found for {uri} at {endpoint}: set {CREDENTIAL_VARIABLES}")
    if isinstance(error, botocore.exceptions.ConnectionError | botocore.exceptions.HTTPClientError):
        return StorageError(
            f"cannot reach S3 endpoint {endpoint} for {uri} after {settings.max_attempts} attempts "
            f"({error}): check {' / '.join(ENDPOINT_VARIABLES)} and that the server is running"
        )
    if not isinstance(error, botocore.exceptions.ClientError):
        return StorageError(f"S3 request for {uri} at {endpoint} failed: {error}")

    details = error.response.get("Error", {})
    code = details.get("Code", "")
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    bucket, _ = split_s3(uri)
    if code == "NoSuchBucket":
        return _missing_bucket(bucket, uri, settings)
    if _is_not_found(error):
        # HEAD answers carry no error code, so "404" may mean a missing key or a missing bucket.
        if not _bucket_exists(s3_client(settings), bucket):
            return _missing_bucket(bucket, uri, settings)
        return FileNotFoundError(f"S3 object not found: {uri} (at {endpoint})")
    if code == "AccessDenied":
        return StorageError(
            f"S3 endpoint {endpoint} denied access to {uri} (AccessDenied): the credentials in "
            f"{CREDENTIAL_VARIABLES} lack permission for bucket '{bucket}'"
        )
    if status == 403:
        return StorageError(
            f"S3 endpoint {endpoint} rejected the credentials for {uri} ({code or 'HTTP 403'}): "
            f"check {CREDENTIAL_VARIABLES}, and that they may access bucket '{bucket}'"
        )
    return StorageError(
        f"S3 request for {uri} at {endpoint} failed: {code} {details.get('Message', '')}".strip()
    )


@contextlib.contextmanager
def _s3_errors(uri: str, settings: S3Settings) -> Iterator[None]:
    try:
        yield
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
        raise _translate(error, uri, settings) from error


# ---------------------------------------------------------------------------------------------
# Files


def read_bytes(uri: PathOrUri) -> bytes:
    uri = os.fspath(uri)
    if not is_s3(uri):
        return Path(uri).read_bytes()
    bucket, key = _object_key(uri)
    settings = s3_settings()
    buffer = io.BytesIO()
    with _s3_errors(uri, settings):
        # download_fileobj (not get_object) retries broken streams and fetches big objects in parts.
        s3_client(settings).download_fileobj(bucket, key, buffer, Config=_transfer_config(settings))
    return buffer.getvalue()


@functools.lru_cache(maxsize=16)
def _arrow_s3(
    endpoint_url: str | None,
    region: str,
    access_key: str | None,
    secret_key: str | None,
    session_token: str | None,
    max_attempts: int,
) -> Any:
    import pyarrow.fs

    return pyarrow.fs.S3FileSystem(
        access_key=access_key,
        secret_key=secret_key,
        session_token=session_token,
        region=region,
        endpoint_override=endpoint_url,  # with an endpoint, buckets are paths (as for boto3 above)
        connect_timeout=10,
        request_timeout=60,
        retry_strategy=pyarrow.fs.AwsStandardS3RetryStrategy(max_attempts=max_attempts),
    )


def open_input_file(uri: PathOrUri) -> Any:
    """A streaming, seekable reader of a local file or an S3 object (a ``pyarrow.NativeFile``).

    Nothing is read until asked: on S3 each read is a ranged GET (pyarrow's S3 filesystem, configured
    from the same environment as boto3 here), so ``pyarrow.parquet.ParquetFile`` reads a footer or one
    row group at a time, and ``io.BufferedReader(open_input_file(uri), size)`` streams lines in
    ``size``-byte requests. A missing file raises ``FileNotFoundError`` naming it.
    """
    import pyarrow.fs

    uri = os.fspath(uri)
    if not is_s3(uri):
        if not os.path.isfile(uri):
            raise FileNotFoundError(f"file not found: {uri}")
        return pyarrow.fs.LocalFileSystem().open_input_file(os.path.abspath(uri))
    bucket, key = _object_key(uri)
    s = s3_settings()
    filesystem = _arrow_s3(
        s.endpoint_url, s.region, s.access_key, s.secret_key, s.session_token, s.max_attempts
    )
    try:
        return filesystem.open_input_file(f"{bucket}/{key}")
    except FileNotFoundError:
        raise FileNotFoundError(f"S3 object not found: {uri} (at {s.endpoint_name()})") from None
    except OSError as error:
        raise StorageError(f"S3 read of {uri} at {s.endpoint_name()} failed: {error}") from error


def read_text(uri: PathOrUri, encoding: str = "utf-8") -> str:
    return read_bytes(uri).decode(encoding)


def write_bytes(uri: PathOrUri, data: bytes) -> None:
    """Write ``data`` to a file (parent folders are created) or an S3 object (multipart when big)."""
    uri = os.fspath(uri)
    if not is_s3(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
        Path(uri).write_bytes(data)
        return
    bucket, key = _object_key(uri)
    settings = s3_settings()
    with _s3_errors(uri, settings):
        s3_client(settings).upload_fileobj(io.BytesIO(data), bucket, key, Config=_transfer_config(settings))


def write_text(uri: PathOrUri, text: str, encoding: str = "utf-8") -> None:
    write_bytes(uri, text.encode(encoding))


def exists(uri: PathOrUri) -> bool:
    """True for an existing file or folder; on S3 a "folder" is a prefix with at least one object.

    A missing bucket is a configuration error, not a missing file: it raises ``StorageError``.
    """
    uri = os.fspath(uri)
    if not is_s3(uri):
        return os.path.exists(uri)
    bucket, key = split_s3(uri)
    settings = s3_settings()
    client = s3_client(settings)
    with _s3_errors(uri, settings):
        if key and not key.endswith("/"):
            try:
                client.head_object(Bucket=bucket, Key=key)
                return True
            except botocore.exceptions.ClientError as error:
                if not _is_not_found(error):
                    raise
        folder = key.rstrip("/") + "/" if key else ""
        # A missing bucket makes this listing fail with NoSuchBucket, which _s3_errors reports.
        listing = client.list_objects_v2(Bucket=bucket, Prefix=folder, MaxKeys=1)
        return not key or listing.get("KeyCount", 0) > 0


def check_writable(location: PathOrUri, what: str) -> None:
    """Fail now, naming ``what`` and the location, when a folder or S3 prefix cannot be written. For the
    locations a run writes at its end (the registry): a dead endpoint, a missing bucket or read-only
    credentials found before the first task, not after it. On S3 a probe object is written and removed;
    a local folder is checked without creating anything: its nearest existing ancestor must be a
    writable folder."""
    location = os.fspath(location)
    if not is_s3(location):
        existing = Path(location).absolute()
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise StorageError(f"{what} {location} is not writable: {existing} is a file, not a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise StorageError(f"{what} {location} is not writable: no write permission on {existing}")
        return
    probe = join(location, f".semcode-write-probe-{os.getpid()}")
    try:
        write_bytes(probe, b"")
        bucket, key = _object_key(probe)
        settings = s3_settings()
        with _s3_errors(probe, settings):
            s3_client(settings).delete_object(Bucket=bucket, Key=key)
    except StorageError as error:
        raise StorageError(f"{what} {location} is not writable: {error}") from None


def _relative_files(prefix: str, recursive: bool) -> list[str]:
    """Paths (with ``/``) of the files under a local folder or an S3 prefix, relative to it, sorted."""
    if not is_s3(prefix):
        root = Path(prefix)
        if not root.exists():
            raise FileNotFoundError(f"folder not found: {prefix}")
        if not root.is_dir():
            raise NotADirectoryError(f"not a folder: {prefix}")
        pattern = "**/*" if recursive else "*"
        return sorted(path.relative_to(root).as_posix() for path in root.glob(pattern) if path.is_file())

    bucket, key = split_s3(prefix)
    folder = key.rstrip("/") + "/" if key.rstrip("/") else ""  # "s3://b/data" means the folder data/
    settings = s3_settings()
    arguments = {"Bucket": bucket, "Prefix": folder}
    if not recursive:
        arguments["Delimiter"] = "/"
    names: list[str] = []
    with _s3_errors(prefix, settings):
        for page in s3_client(settings).get_paginator("list_objects_v2").paginate(**arguments):
            for item in page.get("Contents", []):
                name = item["Key"][len(folder) :]
                if name and not name.endswith("/"):  # skip "folder marker" objects some tools create
                    names.append(name)
    return sorted(names)


def list_files(prefix: PathOrUri, recursive: bool = True) -> list[str]:
    """Full paths or URIs of the files under a folder or S3 prefix, sorted.

    An S3 prefix is a folder: ``s3://b/data`` lists ``data/...``, not ``data2/...``. A missing local
    folder raises ``FileNotFoundError``; an S3 prefix with no objects lists as empty (S3 has no folders).
    """
    prefix = os.fspath(prefix)
    return [join(prefix, name) for name in _relative_files(prefix, recursive)]


@contextlib.contextmanager
def unique_partial(target: PathOrUri) -> Iterator[Path]:
    """A temporary file beside the local file ``target`` that no other writer uses (``.NAME.<random>.partial``),
    renamed onto ``target`` in one step when the block ends without error and removed when it fails. Writers of
    the same file (processes sharing a cache folder) never write into, rename or remove each other's file, and a
    reader sees the old file or a whole new one."""
    target = Path(os.fspath(target))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        dir=target.parent, prefix=f"{PARTIAL_PREFIX}{target.name}.", suffix=PARTIAL_SUFFIX
    )
    os.close(fd)
    partial = Path(name)
    try:
        with disk_space_errors(target):
            yield partial
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def copy(src: PathOrUri, dst: PathOrUri) -> None:
    """Copy one file to another; each side a local path or an S3 URI. Parent folders are created."""
    src, dst = os.fspath(src), os.fspath(dst)
    settings = s3_settings()
    transfer = _transfer_config(settings)

    if not is_s3(src) and not is_s3(dst):
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    elif not is_s3(src):  # local -> S3
        bucket, key = _object_key(dst)
        with open(src, "rb") as source, _s3_errors(dst, settings):
            s3_client(settings).upload_fileobj(source, bucket, key, Config=transfer)
    elif not is_s3(dst):  # S3 -> local, through a temporary file so a failed download leaves nothing
        bucket, key = _object_key(src)
        target = Path(dst)
        with unique_partial(target) as partial, open(partial, "wb") as sink, _s3_errors(src, settings):
            s3_client(settings).download_fileobj(bucket, key, sink, Config=transfer)
    else:  # S3 -> S3, server-side: the data never passes through this machine
        src_bucket, src_key = _object_key(src)
        dst_bucket, dst_key = _object_key(dst)
        client = s3_client(settings)
        with _s3_errors(src, settings):
            size = client.head_object(Bucket=src_bucket, Key=src_key)["ContentLength"]
        source = {"Bucket": src_bucket, "Key": src_key}
        with _s3_errors(dst, settings):
            if size <= MAX_SINGLE_COPY_BYTES:
                client.copy_object(CopySource=source, Bucket=dst_bucket, Key=dst_key)
            else:  # bigger objects need a multipart copy
                client.copy(source, dst_bucket, dst_key, Config=transfer)


def copy_tree(src_prefix: PathOrUri, dst_prefix: PathOrUri) -> list[str]:
    """Copy every file under a folder or S3 prefix to the same relative paths under another one.

    Any mix of local and S3 works (upload, download, S3 to S3, local to local). Returns the
    destination paths/URIs, sorted. Nothing to copy is an error: it usually means a wrong source.
    """
    src_prefix, dst_prefix = os.fspath(src_prefix), os.fspath(dst_prefix)
    names = _relative_files(src_prefix, recursive=True)
    if not names:
        raise FileNotFoundError(f"no files to copy under {src_prefix}")
    # Every name is checked before the first copy: a bad one leaves the destination untouched.
    destinations = [contained_join(dst_prefix, name, f"file under {src_prefix}") for name in names]
    for name, destination in zip(names, destinations, strict=True):
        copy(join(src_prefix, name), destination)
    return destinations


def remove_file(uri: PathOrUri) -> None:
    """Delete one file or S3 object; nothing there is not an error (idempotent, as remove_tree)."""
    uri = os.fspath(uri)
    if not is_s3(uri):
        Path(uri).unlink(missing_ok=True)
        return
    bucket, key = _object_key(uri)
    settings = s3_settings()
    with _s3_errors(uri, settings):
        s3_client(settings).delete_object(Bucket=bucket, Key=key)


def remove_tree(prefix: PathOrUri) -> int:
    """Delete every file under a local folder or an S3 prefix (the folder too, locally); returns how
    many files went. Nothing there is not an error: deleting is idempotent."""
    prefix = os.fspath(prefix)
    if not is_s3(prefix):
        root = Path(prefix)
        if not root.exists():
            return 0
        count = sum(1 for path in root.rglob("*") if path.is_file())
        shutil.rmtree(root)
        return count
    bucket, key = split_s3(prefix)
    folder = key.rstrip("/") + "/" if key.rstrip("/") else ""
    keys = [folder + name for name in _relative_files(prefix, recursive=True)]
    settings = s3_settings()
    client = s3_client(settings)
    with _s3_errors(prefix, settings):
        for start in range(0, len(keys), S3_DELETE_BATCH):
            batch = [{"Key": name} for name in keys[start : start + S3_DELETE_BATCH]]
            client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
    return len(keys)


# Disk space and write errors that name the path, outputs that are complete or absent
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # no space left; the user's quota exceeded
NOT_WRITABLE_HINTS = {
    errno.EROFS: "the file system is read-only: write elsewhere (a writable --out or folder)",
    errno.EACCES: "no permission to write there: fix its permissions or write elsewhere",
    errno.EPERM: "the operation is not permitted there: fix its permissions or write elsewhere",
}
PARTIAL_PREFIX = "."  # out/index.faiss is written as out/.index.faiss.partial, then renamed
PARTIAL_SUFFIX = ".partial"
OLD_SUFFIX = ".old"  # where an earlier output waits while its replacement is renamed in
STAGE_OUTPUT_MARKERS = ("manifest.json", "metrics.json", "config.json", "decision.json")


def is_disk_full(error: BaseException) -> bool:
    """True for a full disk or an exceeded quota (OSError ENOSPC/EDQUOT, or FAISS's RuntimeError for one)."""
    return _is_disk_full(error)


def _is_disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError):
        return error.errno in DISK_FULL_ERRNOS
    # FAISS reports a failed fwrite as a RuntimeError carrying strerror ("... (No space left on device)").
    return isinstance(error, RuntimeError) and any(
        os.strerror(code) in str(error) for code in DISK_FULL_ERRNOS
    )


def _is_about(filename: Any, path: Path) -> bool:
    """Whether an error's file name is ``path``, inside it, a folder above it, or a temporary sibling of it
    (``.NAME...``): an unwritable input read inside a write block is not reported as the output."""
    if filename is None:
        return True
    name, target = Path(os.fsdecode(filename)).absolute(), path.absolute()
    if name == target or name.is_relative_to(target) or target.is_relative_to(name):
        return True
    return name.is_relative_to(target.parent) and target.name in name.relative_to(target.parent).parts[0]


def _write_error(error: BaseException, path: Path) -> OutputError | None:
    """``error`` as one OutputError line naming ``path`` and what to do, or None when it is another error."""
    if _is_disk_full(error):
        code = error.errno if isinstance(error, OSError) and error.errno else errno.ENOSPC
        hint = "free space there or write elsewhere"
    elif isinstance(error, OSError) and error.errno in NOT_WRITABLE_HINTS and _is_about(error.filename, path):
        code, hint = error.errno, NOT_WRITABLE_HINTS[error.errno]
    else:
        return None
    return OutputError(code, f"{os.strerror(code)} while writing {os.fspath(path)}: {hint}")


def command_error_line(error: BaseException) -> str | None:
    """What a command prints instead of a traceback when it meets a full disk or quota, a read-only file system
    or a forbidden path outside a stage output (a search cache download, an index, a publish): one line naming
    the path and what to do; None for any other error (semcode.cli uses it for every command). An
    OutputError is its own message. The path is the one the error names (a copy's destination for a full
    disk), else that of a file open for writing in the frames the error came through: a failed ``write()``
    names no file. EACCES may come from a read as well, so its line says "use another path", not "write"."""
    if isinstance(error, OutputError):
        return error.strerror
    if _is_disk_full(error):
        code = error.errno if isinstance(error, OSError) and error.errno else errno.ENOSPC
        path = _failed_path(error, prefer_destination=True)
        where = f"while writing {path}" if path else "(the system did not say which file)"
        return f"{os.strerror(code)} {where}: free space there or write elsewhere"
    if isinstance(error, OSError) and error.errno in NOT_WRITABLE_HINTS:
        path = _failed_path(error) or "(the system did not say which file)"
        hint = (
            NOT_WRITABLE_HINTS[error.errno]
            if error.errno == errno.EROFS
            else "fix its permissions (or its folder's) or use another path"
        )
        return f"{os.strerror(error.errno)}: {path}: {hint}"
    return None


def _failed_path(error: BaseException, prefer_destination: bool = False) -> str | None:
    """The file ``error`` is about: its filename (with ``prefer_destination``, a copy's filename2 first), else
    the name of a file open for writing in the innermost frame of its traceback that has one."""
    if isinstance(error, OSError):
        names = (error.filename2, error.filename) if prefer_destination else (error.filename,)
        for name in names:
            if isinstance(name, str | bytes | os.PathLike):
                return os.fsdecode(name)
    frames = []
    traceback = error.__traceback__
    while traceback is not None:
        frames.append(traceback.tb_frame)
        traceback = traceback.tb_next
    for frame in reversed(frames):
        for value in frame.f_locals.values():
            if not isinstance(value, io.IOBase):  # a file object: open() gives one, closed or not
                continue
            mode, name = getattr(value, "mode", ""), getattr(value, "name", None)
            if isinstance(mode, str) and any(c in mode for c in "wax+") and isinstance(name, str | bytes):
                return os.fsdecode(name)
    return None


@contextlib.contextmanager
def disk_space_errors(path: PathOrUri) -> Iterator[None]:
    """Re-raise a full disk or quota inside the block (OSError ENOSPC/EDQUOT, or FAISS's RuntimeError for
    one), or a read-only or forbidden ``path`` (EROFS, EACCES, EPERM on it or beside it), as an OutputError
    of the same errno that names ``path`` and what to do: a bare "No space left on device" does not say which
    of a stage's outputs, or which disk, ran out."""
    try:
        yield
    except OutputError:
        raise
    except (OSError, RuntimeError) as error:
        translated = _write_error(error, Path(os.fspath(path)))
        if translated is None:
            raise
        raise translated from error


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def partial_path(path: PathOrUri) -> Path:
    """The temporary sibling ``.NAME.partial`` that ``path`` is written as before it is renamed into place."""
    target = Path(os.fspath(path))
    return target.with_name(f"{PARTIAL_PREFIX}{target.name}{PARTIAL_SUFFIX}")


def _old_path(target: Path) -> Path:
    return target.with_name(f"{PARTIAL_PREFIX}{target.name}{OLD_SUFFIX}")


@functools.lru_cache(maxsize=1)
def _renameat2() -> Any:
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # not Linux, or a C library without it
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE): at every instant each name holds one of
    the two. False where the system or the file system cannot (the caller then renames twice)."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), os.fspath(second))


def _swap_into_place(partial: Path, target: Path) -> None:
    """Put the complete ``partial`` at ``target``; an earlier folder there is replaced whole: exchanged in
    one step where the system can (then removed), else moved aside to ``.NAME.old``, the new one renamed
    in and the old one removed. A kill anywhere leaves ``target`` old, new or (between the two renames)
    absent, never a mix, plus temporary siblings that the next write removes."""
    if not (partial.is_dir() and target.is_dir() and not target.is_symlink()):
        os.replace(partial, target)
        return
    if _exchange(partial, target):
        shutil.rmtree(partial)  # the old output, now under the temporary name
        return
    old = _old_path(target)
    _remove(old)
    os.replace(target, old)
    os.replace(partial, target)
    shutil.rmtree(old)


@contextlib.contextmanager
def atomic_output(path: PathOrUri, keep: str = "") -> Iterator[Path]:
    """A temporary sibling to write the local file or folder ``path`` through (``.NAME.partial``): renamed onto
    ``path`` when the block ends without error, removed when it fails, so a fault (a full disk, a kill) never
    leaves a truncated file under the real name; a full disk or an unwritable folder is reported naming
    ``path`` (disk_space_errors). An existing ``path`` stays until the new one is complete, then is replaced
    whole (_swap_into_place). A partial left by a run that was killed is removed first, unless it holds
    ``keep`` (a relative path, e.g. ``checkpoints/latest``): then it is kept on entry and on failure, for a
    resumed run to continue. S3 uploads need none of this: an object appears only once its upload completed."""
    target = Path(os.fspath(path))
    partial = partial_path(target)
    with disk_space_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove(_old_path(target))  # left by a kill between the two renames of a swap
        if not (keep and (partial / keep).exists()):
            _remove(partial)  # left by an earlier run that was killed
    succeeded = False
    try:
        with disk_space_errors(target):
            try:
                yield partial
            except OutputError as error:  # named by the path the user gave, not the temporary one
                message = error.strerror.replace(os.fspath(partial), os.fspath(target))
                raise OutputError(error.errno, message) from error
            _swap_into_place(partial, target)
        succeeded = True
    finally:
        kept = not succeeded and keep and (partial / keep).exists()
        if not kept and (partial.exists() or partial.is_symlink()):
            _remove(partial)


def _check_replaceable(target: Path) -> None:
    """Refuse an ``--out`` that a stage output must not replace: a file, or a folder with files that are not
    an earlier stage output (none of STAGE_OUTPUT_MARKERS): replacing it whole would delete them."""
    if target.is_symlink() or not target.exists():
        return
    if not target.is_dir():
        raise FileExistsError(f"output {target} exists and is not a folder")
    if any(target.iterdir()) and not any((target / name).is_file() for name in STAGE_OUTPUT_MARKERS):
        raise FileExistsError(
            f"output {target} holds files that are not a semcode stage output (none of "
            f"{', '.join(STAGE_OUTPUT_MARKERS)}): a stage replaces its --out whole, so choose a new or empty folder"
        )


@contextlib.contextmanager
def stage_output(out_dir: PathOrUri, keep: str = "", resume: bool = False) -> Iterator[Path]:
    """The folder a stage writes its whole output into: a fresh ``.NAME.partial`` beside ``out_dir`` (the
    same file system, so the final rename is one step), renamed onto ``out_dir`` when the block ends without
    error (write the manifest or metrics file last); ``out_dir`` holding an earlier complete output is
    replaced whole, never mixed. A failure or a kill leaves the earlier output or none, plus at most the
    clearly named partial that the next run removes. Errors writing it are one OutputError line naming the
    path and the cause (full disk, read-only, forbidden).

    Training stages pass ``keep`` (their resumable state inside the output, ``checkpoints/latest``): a
    partial holding it survives a failure and is continued by the next run (whose own checks ask for
    --resume), and with ``resume`` an earlier complete output holding ``keep`` is copied whole into the fresh
    partial (_copy_for_resume), so that --resume continues the run it holds, as it would in place."""
    text = os.fspath(out_dir)
    if is_s3(text):
        raise ValueError(
            f"output {text}: a stage writes a local folder (KFP maps its artifacts to local paths)"
        )
    target = Path(text)
    _check_replaceable(target)
    with atomic_output(target, keep=keep) as partial:
        if resume and keep and not partial.exists() and (target / keep).exists():
            _copy_for_resume(target, partial, linked=target / keep.split("/", 1)[0])
        partial.mkdir(parents=True, exist_ok=True)
        yield partial


def _copy_for_resume(target: Path, partial: Path, linked: Path) -> None:
    """Copy the complete output ``target`` into the fresh ``partial`` of a run that continues it. Files in the
    folders under ``linked`` (the checkpoint folders: a run adds new ones, it never rewrites a file of one in
    place) are hard links where the file system allows, so a resume costs no second copy of the optimizer
    state; everything else (the ``latest`` pointer, best weights, logs, metrics) is copied, so the earlier
    output stays as it was until the swap, whatever the run rewrites in place."""

    def copy_file(source: str, destination: str) -> str:
        if Path(source).is_relative_to(linked) and len(Path(source).relative_to(linked).parts) > 1:
            with contextlib.suppress(OSError):  # another file system, or no links there: a copy
                os.link(source, destination)
                return destination
        return shutil.copy2(source, destination)

    shutil.copytree(target, partial, symlinks=True, copy_function=copy_file)


def atomic_stage(function: Any) -> Any:
    """Decorate a stage's ``run(..., out_dir, ...)``: it writes into :func:`stage_output` of its ``out_dir``
    argument, so its output appears at ``out_dir`` complete or not at all."""
    import inspect

    signature = inspect.signature(function)
    if "out_dir" not in signature.parameters:
        raise TypeError(f"{function.__qualname__} has no out_dir parameter")

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        with stage_output(bound.arguments["out_dir"]) as partial:
            bound.arguments["out_dir"] = partial
            return function(*bound.args, **bound.kwargs)

    return wrapper


@contextlib.contextmanager
def local_file(uri: PathOrUri) -> Iterator[Path]:
    """A local path for a file: the path itself, or a temporary download of an S3 object.

    For readers that need a real file (pyarrow, tokenizers, FAISS); the download is removed on exit.
    """
    uri = os.fspath(uri)
    if not is_s3(uri):
        if not os.path.isfile(uri):
            raise FileNotFoundError(f"file not found: {uri}")
        yield Path(uri)
        return
    _, key = _object_key(uri)
    with tempfile.TemporaryDirectory(prefix="semcode-s3-") as tmp:
        path = Path(tmp) / key.rsplit("/", 1)[-1]
        copy(uri, path)
        yield path


@contextlib.contextmanager
def local_dir(prefix: PathOrUri) -> Iterator[Path]:
    """A local folder for a folder: the folder itself, or a temporary download of an S3 prefix."""
    prefix = os.fspath(prefix)
    if not is_s3(prefix):
        if not os.path.isdir(prefix):
            raise FileNotFoundError(f"folder not found: {prefix}")
        yield Path(prefix)
        return
    with tempfile.TemporaryDirectory(prefix="semcode-s3-") as tmp:
        copy_tree(prefix, tmp)
        yield Path(tmp)
