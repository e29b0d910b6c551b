"""An exclusive lock around a read-check-write (publish's move of ``latest``, `semcode index --update`), local
(an flock'ed file) or on S3 (a lease object written with If-None-Match where the store honours it)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.exceptions

from semcode import storage

LOCK_WAIT_SECONDS = 60.0  # how long a writer waits for another one's lock before it gives up
LEASE_SECONDS = 300.0  # an S3 lease older than this was left by a writer that died: it is taken over
LEASE_SETTLE_SECONDS = 1.0  # a store without conditional writes: the lease is read back after this long


class LockBusy(storage.StorageError):
    """Another writer held the lock for longer than the wait."""


@contextlib.contextmanager
def exclusive_lock(uri: storage.PathOrUri, wait_seconds: float = LOCK_WAIT_SECONDS) -> Iterator[None]:
    """Hold the lock ``uri`` (a file beside what it guards) for the block; LockBusy, naming the holder, when
    another writer keeps it past ``wait_seconds``.

    Local: ``fcntl.flock`` on the file, which the kernel releases when its process ends, so a writer killed
    with the lock leaves none behind. S3: a lease object created with a conditional write (``If-None-Match:
    *``, which AWS S3, MinIO and others honour). A store that ignores the condition is found out by writing
    the lease a second time under the same condition (which must fail); there the lease is written only when
    none is held, read back after LEASE_SETTLE_SECONDS and held only if it is still this writer's (two
    writers racing both read, only the last one's lease survives). A lease older than LEASE_SECONDS was left
    by a writer that died and is taken over; the lease is deleted when the block ends."""
    uri = os.fspath(uri)
    owner = f"{socket.gethostname()}:{os.getpid()}"
    if not storage.is_s3(uri):
        with _local_lock(Path(uri), owner, wait_seconds):
            yield
        return
    bucket, key = storage._object_key(uri)
    settings = storage.s3_settings()
    client = storage.s3_client(settings)
    token = uuid.uuid4().hex
    body = json.dumps({"owner": owner, "token": token, "expires": time.time() + LEASE_SECONDS}).encode()
    deadline = time.monotonic() + wait_seconds
    with storage._s3_errors(uri, settings):
        while not _take_lease(client, bucket, key, body, token):
            holder = _read_lease(client, bucket, key)
            if holder is not None and holder.get("expires", 0) < time.time():
                client.delete_object(Bucket=bucket, Key=key)  # a dead writer's
                continue
            if time.monotonic() > deadline:
                raise LockBusy(
                    f"{uri} is held by {(holder or {}).get('owner', 'another writer')} for over {wait_seconds:g} s"
                )
            time.sleep(0.2)
    try:
        yield
    finally:
        with storage._s3_errors(uri, settings):
            if (_read_lease(client, bucket, key) or {}).get("token") == token:
                client.delete_object(Bucket=bucket, Key=key)


@contextlib.contextmanager
def _local_lock(path: Path, owner: str, wait_seconds: float) -> Iterator[None]:
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    holder = path.read_text(errors="replace").strip() or "another writer"
                    raise LockBusy(f"{path} is held by {holder} for over {wait_seconds:g} s") from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.write(fd, owner.encode() + b"\n")
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race the next writer's flock)


def _conditional_put(client: Any, bucket: str, key: str, body: bytes) -> bool:
    """PUT ``body`` only if ``key`` does not exist; False when the store says it does (412, or 409 for a
    conflicting concurrent conditional write)."""
    try:
        client.put_object(Bucket=bucket, Key=key, Body=body, IfNoneMatch="*")
        return True
    except botocore.exceptions.ClientError as error:
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = error.response.get("Error", {}).get("Code", "")
        if status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict"):
            return False
        raise


def _read_lease(client: Any, bucket: str, key: str) -> dict | None:
    try:
        return json.loads(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    except botocore.exceptions.ClientError as error:
        if storage._is_not_found(error):
            return None
        raise
    except ValueError:
        return {}  # not a lease of ours: held, without an expiry we can read


def _take_lease(client: Any, bucket: str, key: str, body: bytes, token: str) -> bool:
    """True when this writer now holds the lease ``key`` (exclusive_lock explains how)."""
    held = _read_lease(client, bucket, key)
    if held is not None and held.get("token") != token:
        return False
    if not _conditional_put(client, bucket, key, body):
        return False
    if not _conditional_put(client, bucket, key, body):
        return True  # the store honours If-None-Match: the first write made the lease ours alone
    time.sleep(LEASE_SETTLE_SECONDS)  # it ignores the condition: the last writer's lease survives
    return (_read_lease(client, bucket, key) or {}).get("token") == token
