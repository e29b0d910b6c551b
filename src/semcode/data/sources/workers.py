"""Worker processes that parse source files, so that a crash costs one file, not the ingest.

Tree-sitter is C: a grammar's bug (tree-sitter-python's scanner segfaults on a few hundred nested
indentation levels) or a parse tree that outgrows memory (about 200 bytes of tree per byte of a long
expression: 50 MB of source took 7.5 GB, then segfaulted) ends the process, and no ``except`` catches
that. So files are read and parsed in worker processes, one file at a time each, each with its address
space capped at what it held when it started plus ``memory_mb``. Workers are spawned (a fresh
interpreter: no boto3 connection or thread of the parent's, the parent's environment and folder as they
are now; about 0.4 s of imports each) and are the parent's own children, so ``time -v`` and
``RUSAGE_CHILDREN`` count them. A worker that dies takes only the file it held: the caller's ``on_crash``
turns that file into a reject naming the signal (``parse_crash``), and a fresh worker takes the dead
one's place. A MemoryError inside a worker is a crash of that file too; any other exception is raised in
the parent, as from a process pool. Results come back in the order of the jobs. A worker that cannot start
(a script that calls ingest without ``if __name__ == "__main__":``, which spawning re-runs) is an error,
never a crash of the file it was given: each worker says it is ready before it gets a job.
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import signal
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.connection import Connection, wait
from typing import Any


class _Worker:
    def __init__(self, function: Callable[..., Any], memory_mb: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.connection, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child, function, memory_mb), daemon=True)
        self.process.start()
        child.close()  # the worker's end lives in the worker only: its death is an EOF here

    def wait_ready(self) -> None:
        """Raise RuntimeError when the worker died before it could take a job."""
        try:
            self.connection.recv()  # ("ready", None)
        except (EOFError, OSError):
            raise RuntimeError(
                f"a file-parsing worker process could not start ({self.death()}); a script that runs ingest "
                'must call it under `if __name__ == "__main__":` (spawned processes import the main module)'
            ) from None

    def death(self) -> str:
        """How the worker ended: "SIGSEGV", "exit 1" (after it closed its end)."""
        self.process.join(timeout=10)
        code = self.process.exitcode
        if code is None:
            self.process.kill()
            self.process.join()
            return "no answer"
        return signal.Signals(-code).name if code < 0 else f"exit {code}"

    def stop(self) -> None:
        self.connection.close()  # EOF: the worker returns
        self.process.join(timeout=5)
        if self.process.exitcode is None:
            self.process.kill()
            self.process.join()


class Workers:
    """``count`` worker processes running ``function`` (a module-level function) on jobs (argument
    tuples); use as a context manager."""

    def __init__(self, count: int, function: Callable[..., Any], memory_mb: int) -> None:
        self.function = function
        self.memory_mb = memory_mb
        self._workers = [_Worker(function, memory_mb) for _ in range(max(1, count))]
        for worker in self._workers:  # started side by side, then each one's word that it is ready
            worker.wait_ready()

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for worker in self._workers:
            worker.stop()

    def map(self, jobs: Iterable[tuple], on_crash: Callable[[tuple, str], Any]) -> Iterator[Any]:
        """``function(*job)`` for every job, in order; ``on_crash(job, how)`` for a job whose worker died."""
        jobs = list(jobs)
        results: dict[int, Any] = {}
        waiting = iter(range(len(jobs)))
        busy: dict[Connection, tuple[_Worker, int]] = {}
        idle = list(self._workers)
        following = 0
        while following < len(jobs):
            while idle and (index := next(waiting, None)) is not None:
                worker = idle.pop()
                try:
                    worker.connection.send(jobs[index])
                except OSError:  # it died idle (killed from outside): a fresh one takes the job
                    worker = self._replace(worker)
                    worker.connection.send(jobs[index])
                busy[worker.connection] = (worker, index)
            for connection in wait(list(busy)):
                worker, index = busy.pop(connection)
                try:
                    status, value = connection.recv()
                except (EOFError, OSError):
                    status, value = "crash", worker.death()
                    worker = self._replace(worker)
                if status == "error":
                    raise value
                results[index] = value if status == "ok" else on_crash(jobs[index], value)
                idle.append(worker)
            while following in results:
                yield results.pop(following)
                following += 1

    def _replace(self, dead: _Worker) -> _Worker:
        dead.stop()
        fresh = _Worker(self.function, self.memory_mb)
        self._workers[self._workers.index(dead)] = fresh
        fresh.wait_ready()
        return fresh


def _serve(connection: Connection, function: Callable[..., Any], memory_mb: int) -> None:
    """A worker: the address space capped, then jobs answered until the parent closes its end."""
    _cap_memory(memory_mb << 20)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    connection.send(("ready", None))
    while True:
        try:
            job = connection.recv()
        except (EOFError, OSError):
            return
        try:
            answer: tuple[str, Any] = ("ok", function(*job))
        except MemoryError:
            answer = ("crash", "MemoryError")
        except Exception as error:  # noqa: BLE001  (raised again in the parent, as a pool would)
            answer = ("error", error)
        try:
            connection.send(answer)
        except (pickle.PicklingError, TypeError, AttributeError) as error:  # an exception pickle cannot take
            connection.send(("error", RuntimeError(f"{answer[1]!r} (not picklable: {error})")))


def _cap_memory(extra_bytes: int) -> None:
    """RLIMIT_AS = the address space held now + ``extra_bytes`` (Linux; elsewhere no cap)."""
    try:
        import resource

        with open("/proc/self/statm") as statm:
            held = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (ImportError, OSError, ValueError):
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = held + extra_bytes
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
