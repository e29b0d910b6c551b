"""SIGUSR1 ("save now") on ``semcode run``: passed on to the training stage it is running, and to nothing else.

A training stage answers SIGUSR1 with a checkpoint after the step under way and trains on; while it sets up,
evaluates or saves it says in one line that no step is under way (semcode.train.checkpoints: StopRequest,
save_requests_outside_steps). Any other stage (ingest, export, evaluate, ...), and a training stage still
importing its libraries, has no handler: SIGUSR1's default action would end it and fail its task. So
``semcode run`` sends the signal only to processes that catch it, and otherwise says in one line which task
is running and that it has no training step to checkpoint. With kfp.local's subprocess runner only:

- Which processes are a task's: kfp.local starts each task as ``sh -c '... python -m kfp.dsl.executor_main
  ...'`` and the stage runs in that python process (one rank on one machine; its tokenizer workers below
  it). semcode.pipeline.kfp_local starts every task with its name in its environment (kfp_local.TASK_ENV),
  which all the task's processes inherit; a process under this one without it (TensorBoard) is no task's.
- Which of them has the handler: the kernel's mask of the signals a process catches (``SigCgt`` in
  /proc/<pid>/status), set while a Python handler is installed and cleared when the default is back. It is
  the very fact that decides whether the signal is safe, read when it is sent, and needs nothing from the
  stages; a marker the stage writes (a file, its process title) would be a second record to keep in step
  with the handler, and a crashed stage's file would outlive it. A process that catches SIGUSR1 gets it and
  its own children do not: a tokenizer worker forked from a training stage inherits the handler, but the
  stage is what checkpoints.

One race is left: a stage that puts the default back (after its last step, as it finishes) between the check
and the signal is ended by it; its task then fails with a signal, which semcode run tries again (from the
checkpoint). The docker runner's tasks are containers, not processes under this one: there it is one line
naming ``docker kill``.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from semcode.pipeline.kfp_local import TAG, TASK_ENV

SAVE_SIGNAL = signal.SIGUSR1
PROC = Path("/proc")


@contextmanager
def forward_save_requests(runner: str) -> Iterator[None]:
    """While inside, SIGUSR1 on this process goes to the training stage the ``runner``'s task runs (module
    doc), with one ``[run]`` line; the handler before is put back after. Main thread only (where Python
    delivers signals; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def answer(signum: int, frame: Any) -> None:
        # not print: the handler may interrupt a print to stderr (a reentrant call)
        os.write(2, f"[{TAG}] {forward(runner)}\n".encode())

    previous = signal.signal(SAVE_SIGNAL, answer)
    try:
        yield
    finally:
        signal.signal(SAVE_SIGNAL, previous if previous is not None else signal.SIG_DFL)


def forward(runner: str) -> str:
    """Send SIGUSR1 to the processes of the running tasks that catch it; returns what was done, in words."""
    if runner != "subprocess":
        return (
            f"SIGUSR1 is not passed on to task containers (--runner {runner}): "
            "docker kill --signal USR1 CONTAINER of the training task"
        )
    if not PROC.is_dir():
        return "SIGUSR1 is passed on only where /proc lists the processes (Linux): kill -USR1 the stage's pid"
    running, catching = tasks_under(os.getpid())
    sent = []
    for pid, task in catching:
        with suppress(ProcessLookupError):  # it ended meanwhile
            os.kill(pid, SAVE_SIGNAL)
            sent.append(f"{task} (pid {pid})")
    if sent:
        return f"SIGUSR1 passed on to {', '.join(sent)}: a checkpoint after the step under way, then it trains on"
    if not running:
        return "SIGUSR1: no task is running, no training step to checkpoint: nothing sent"
    tasks, has = ("task", "has") if len(running) == 1 else ("tasks", "have")
    return (
        f"SIGUSR1: the running {tasks} {', '.join(running)} {has} no training step to checkpoint (not a "
        "training stage, or one still starting): nothing sent"
    )


def tasks_under(root: int) -> tuple[list[str], list[tuple[int, str]]]:
    """(the names of the tasks running under ``root``, (pid, task) of their processes that catch SIGUSR1):
    a process that catches it stands for its children (module doc)."""
    children = children_by_parent()
    running: list[str] = []
    catching: list[tuple[int, str]] = []
    stack = list(reversed(children.get(root, [])))
    while stack:
        pid = stack.pop()
        task = task_of(pid)
        if task is None:  # not a task's (TensorBoard), nor are its children
            continue
        if task not in running:
            running.append(task)
        if catches(pid, SAVE_SIGNAL):
            catching.append((pid, task))
        else:
            stack.extend(reversed(children.get(pid, [])))
    return running, catching


def children_by_parent() -> dict[int, list[int]]:
    """Every live process's children, by parent pid, from /proc (zombies left out); semcode run's stop
    (local.stop_tasks) asks its own children from it too."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        state, parent = stat[stat.rfind(")") + 2 :].split()[:2]  # after the name, which may hold spaces
        if state != "Z":
            children.setdefault(int(parent), []).append(int(entry.name))
    return children


def task_of(pid: int) -> str | None:
    """The task a process belongs to (kfp_local.TASK_ENV in its environment), or None."""
    prefix = f"{TASK_ENV}=".encode()
    try:
        environment = (PROC / str(pid) / "environ").read_bytes()
    except OSError:  # gone meanwhile, or not ours to read
        return None
    for entry in environment.split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix) :].decode(errors="replace")
    return None


def catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (SigCgt, the mask of caught signals)."""
    try:
        status = (PROC / str(pid) / "status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False
