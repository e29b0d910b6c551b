"""History and progress: ``TrainingLog`` (history.json, progress lines, the per-rank table) and its live
TensorBoard curves.

Live metrics (docs/observability.md): the loop (semcode.train.loop.run_steps) writes TensorBoard event
files as it trains, with torch.utils.tensorboard, into the stage's output directory::

    tensorboard/            rank 0: <tag>/train/* (loss and its parts, lr, grad_norm, items_per_second,
                            as-is values such as the temperature), <tag>/valid/* (each evaluation),
                            <tag>/rank/* (its own), the resolved config as text (<tag>/config) and, at the
                            end, the hparams plugin's record: the config against the final metrics
                            (<tag>/final/*)
    tensorboard/rank-1/     rank 1: its <tag>/rank/* only (items_per_second, step_seconds, data_wait_seconds,
                            peak_rss_mib, cuda_max_allocated_mib), and so on per rank

Every tag starts with the stage's tag (``encoder``, ``decoder``): the two stages' losses are on very
different scales and never share a chart, while a stage's trainings in one pipeline run (runs ``encoder``,
``encoder-3`` for a hard-negative round, ...) do, so they compare at a glance. ``SEMCODE_TENSORBOARD_DIR=/some/dir`` also writes the same
files to ``/some/dir/<run name>/`` (a local or mounted path; the run name is short: ``encoder``,
``encoder-2``, ``decoder``, see ``run_name``); with ``s3://bucket/prefix`` each rank uploads its event files
to ``<prefix>/<run name>/[rank-<r>/]`` every
``TENSORBOARD_UPLOAD_SECONDS`` while it trains and once more at the end (EventFileMirror), so
``tensorboard --logdir s3://bucket/prefix`` shows the curves live. ``SEMCODE_TENSORBOARD=0`` writes none
(for benchmarks).
"""

from __future__ import annotations

import json
import os
import re
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

import semcode
from semcode import storage
from semcode.progress import Progress, format_seconds, log
from semcode.train.distributed import is_main_process, rank

TENSORBOARD_DIR = "tensorboard"  # inside the stage's output directory, so the artifact carries the curves
TENSORBOARD_PREFIX_ENV = semcode.TENSORBOARD_PREFIX_ENV  # a second place for them: <prefix>/<tag>/
TENSORBOARD_SWITCH_ENV = "SEMCODE_TENSORBOARD"  # "0": no event files at all (throughput benchmarks)
TENSORBOARD_FLUSH_SECONDS = 5  # how stale a live curve may be; the writer's own thread flushes
TENSORBOARD_UPLOAD_SECONDS = 30.0  # how stale a curve on S3 may be: one PUT per grown event file


def peak_rss_mib() -> float:
    """This process's peak resident memory (not its DataLoader workers'), in MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def _format_value(value: float) -> str:
    return f"{value:.4f}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"


def run_name(tag: str, out_dir: str | Path) -> str:
    """The stage's short TensorBoard run name: ``tag``, or ``tag-N`` when its output lies in a pipeline task's
    folder ``train-<tag>-N`` (KFP numbers a component's further tasks in a pipeline: the hard-negative rounds'
    trainings, a branch's), so each training of a run is a run of its own."""
    task = Path(out_dir).resolve().parent.name
    found = re.fullmatch(rf"train-{re.escape(tag)}-(\d+)", task)
    return f"{tag}-{found.group(1)}" if found else tag


def hparam_value(value: Any) -> float | int | str | bool:
    """A config value as the hparams plugin takes it (a number, a string or a bool)."""
    if isinstance(value, bool | int | float | str):
        return value
    return json.dumps(value) if isinstance(value, list | dict | tuple) else str(value)


def config_markdown(config: dict[str, Any]) -> str:
    """The resolved config as a markdown table (TensorBoard's text plugin renders markdown)."""
    rows = [
        f"| {name} | {json.dumps(value) if not isinstance(value, str) else value} |"
        for name, value in config.items()
    ]
    return "\n".join(["| setting | value |", "|---|---|", *rows])


def live_log_dirs(tag: str, tensorboard_dir: str | Path) -> list[Path]:
    """Where rank 0's event files are written: ``tensorboard_dir``, and ``$SEMCODE_TENSORBOARD_DIR/<tag>`` (the run name)
    when that is a local (or mounted) path. Empty with ``SEMCODE_TENSORBOARD=0``. An ``s3://`` prefix is
    not written to directly: see ``live_log_upload``."""
    if os.environ.get(TENSORBOARD_SWITCH_ENV, "1") == "0":
        return []
    dirs = [Path(tensorboard_dir)]
    prefix = os.environ.get(TENSORBOARD_PREFIX_ENV, "")
    if prefix and not storage.is_s3(prefix):
        if "://" in prefix:
            raise ValueError(f"{TENSORBOARD_PREFIX_ENV}={prefix}: give a local path or an s3:// prefix")
        dirs.append(Path(prefix) / tag)
    return dirs


def live_log_upload(tag: str) -> str | None:
    """The S3 prefix that rank 0's event files are uploaded to while training (``<prefix>/<tag>``), when
    ``$SEMCODE_TENSORBOARD_DIR`` is an ``s3://`` prefix (and logging is on); else None."""
    prefix = os.environ.get(TENSORBOARD_PREFIX_ENV, "")
    if os.environ.get(TENSORBOARD_SWITCH_ENV, "1") == "0" or not storage.is_s3(prefix):
        return None
    return storage.join(prefix, tag)


def check_live_log_prefix(tag: str) -> None:
    """Fail before training, naming the variable, when ``$SEMCODE_TENSORBOARD_DIR`` cannot be written."""
    prefix = os.environ.get(TENSORBOARD_PREFIX_ENV, "")
    if prefix and os.environ.get(TENSORBOARD_SWITCH_ENV, "1") != "0":
        storage.check_writable(live_log_upload(tag) or Path(prefix) / tag, TENSORBOARD_PREFIX_ENV)


class EventFileMirror:
    """Keeps copies of one folder's event files under an S3 prefix while they grow.

    TensorBoard's event files only ever grow, and S3 has no append: each upload PUTs the whole file,
    so a reader sees the events up to the last upload, never a torn file. A daemon thread uploads the
    files whose size changed every ``every`` seconds; ``close`` uploads once more. A failed upload is
    said once on stderr and retried at the next turn: the curves are not worth stopping training for.
    """

    def __init__(self, folder: Path, destination: str, every: float = TENSORBOARD_UPLOAD_SECONDS) -> None:
        self.folder, self.destination, self.every = folder, destination, every
        self._sizes: dict[str, int] = {}
        self._warned = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tensorboard-upload", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self.sync()

    def sync(self) -> None:
        """Upload every event file of the folder (not its sub-folders: other ranks') that grew."""
        with self._lock:
            for path in sorted(self.folder.glob("events.out.tfevents.*")):
                size = path.stat().st_size
                if self._sizes.get(path.name) == size:
                    continue
                try:
                    storage.copy(path, storage.join(self.destination, path.name))
                except OSError as error:
                    if not self._warned:
                        log("tensorboard", f"upload to {self.destination} failed (retried): {error}")
                        self._warned = True
                    continue
                self._sizes[path.name] = size

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sync()


class LiveMetrics:
    """One rank's TensorBoard writers (torch.utils.tensorboard), one per log directory.

    Rank 0 writes into each directory itself, rank r into ``<dir>/rank-<r>/``: TensorBoard shows one run
    per rank and draws the ranks' values of one per-rank tag (``encoder/rank/items_per_second``) in one chart.
    ``purge_step`` (a resumed run's first step) hides what a crashed run logged past its checkpoint.
    """

    def __init__(
        self, log_dirs: list[Path], rank_: int, purge_step: int | None = None, upload_to: str | None = None
    ) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.dirs = [d if rank_ == 0 else d / f"rank-{rank_}" for d in log_dirs]
        self.writers = [
            SummaryWriter(str(d), purge_step=purge_step, max_queue=100, flush_secs=TENSORBOARD_FLUSH_SECONDS)
            for d in self.dirs
        ]
        self.mirror = None
        if upload_to:  # the first folder's files, uploaded as they grow (``upload_to``/rank-<r> per rank)
            destination = upload_to if rank_ == 0 else storage.join(upload_to, f"rank-{rank_}")
            self.mirror = EventFileMirror(self.dirs[0], destination)

    def add_summaries(self, summaries: list[Any], step: int = 0) -> None:
        """Write ready-made ``Summary`` protos (text, hparams) at ``step`` into every directory."""
        for writer in self.writers:
            for summary in summaries:
                writer.file_writer.add_summary(summary, step)

    def add(self, values: dict[str, float], step: int) -> None:
        """Write ``values`` (tag -> value) as scalars at ``step``: one event for all of them.

        ``SummaryWriter.add_scalar`` writes one event per scalar, about 8x the cost (1.2 ms against
        0.16 ms for a step's 12 scalars on a 2-core CPU), so the summary is built here and handed to
        the SummaryWriter's FileWriter; TensorBoard reads both alike.
        """
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(
            value=[Summary.Value(tag=tag, simple_value=float(value)) for tag, value in values.items()]
        )
        for writer in self.writers:
            writer.file_writer.add_summary(summary, step)

    def flush(self) -> None:
        for writer in self.writers:
            writer.flush()

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
        if self.mirror is not None:
            self.mirror.close()


class TrainingLog:
    """Per-step history (losses, LR, throughput), evaluations, the best metric, and progress on stderr.

    On a terminal a progress bar carries the latest values; otherwise (logs, CI, KFP pods) one line
    every ``log_every`` steps, and one line per epoch, shaped like::

        [encoder] epoch 1/3 step 120/700 | loss 2.3100 (contrastive 2.1000 hard 0.2100) | lr 4.8e-04 | 512 pairs/s | eta 3m12s | best mrr 0.4100
        [encoder] epoch 1 complete | train loss 2.4012 | valid loss 2.2000 | valid mrr 0.4100 | time 1m05s

    Throughput and ETA count training time only: the clock restarts after each evaluation and
    checkpoint. ``history`` (a dict) is what ``history.json`` holds; pass a saved one back to resume.
    Once ``start_live`` has run (``run_steps`` calls it) every step and evaluation also goes to
    TensorBoard (LiveMetrics): every rank writes its own ``rank/*`` values, rank 0 the rest.
    """

    def __init__(
        self,
        tag: str,
        unit: str,
        total_steps: int,
        epochs: int,
        log_every: int = 10,
        metric: str = "mrr",
        history: dict[str, Any] | None = None,
        force_plain: bool | None = None,
        lower_is_better: bool = False,
        run: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.tag, self.unit, self.total_steps, self.epochs = tag, unit, total_steps, epochs
        self.run = run or tag  # the TensorBoard run's name (run_name)
        self.config = config  # the resolved config: TensorBoard's text and hparams
        self.log_every, self.metric = max(1, log_every), metric
        self.lower_is_better = lower_is_better  # e.g. a validation loss: the best is the lowest
        self.history: dict[str, Any] = history or {"steps": [], "evals": [], "best": None}
        self.steps_this_run = 0
        self.items_this_run = 0
        self.train_seconds = 0.0
        # This rank's own share of this run, for rank_table: steps, items, seconds, data wait, loss sum.
        self.rank_totals = {
            "steps": 0,
            "items": 0,
            "seconds": 0.0,
            "data_seconds": 0.0,
            "allreduce_seconds": 0.0,
            "loss_sum": 0.0,
        }
        self._clock = time.perf_counter()
        self.quiet = not is_main_process()  # one process speaks for all ranks
        plain = not sys.stderr.isatty() if force_plain is None else force_plain
        start = self.history["steps"][-1]["step"] if self.history["steps"] else 0
        self._bar = None
        if not plain and not self.quiet:
            self._bar = Progress(tag, total=max(0, total_steps - start), unit="steps")
        self.live: LiveMetrics | None = None
        self.loss_name = "loss"  # the first of the step values (run_steps' StepOutput.averaged)
        self._epoch_clock = time.perf_counter()
        self._epoch_evals_from = len(self.history["evals"])

    def start_live(self, tensorboard_dir: str | Path, start_step: int) -> None:
        """Open this rank's TensorBoard writers (unless SEMCODE_TENSORBOARD=0) and start the epoch clock.

        A fresh run first writes the evaluations recorded before training (the zero-shot one at step 0);
        a resumed run's were written by the run that saved the checkpoint.
        """
        self._epoch_clock = time.perf_counter()
        self._epoch_evals_from = len(self.history["evals"])
        dirs = live_log_dirs(self.run, tensorboard_dir)
        if not dirs or self.live is not None:
            return
        upload_to = live_log_upload(self.run)
        self.live = LiveMetrics(
            dirs, rank(), purge_step=start_step + 1 if start_step else None, upload_to=upload_to
        )
        if start_step == 0 and not self.quiet:
            if self.config is not None:
                from torch.utils.tensorboard.summary import text

                self.live.add_summaries([text(f"{self.tag}/config", config_markdown(self.config))])
            for entry in self.history["evals"]:
                self._write_eval(entry)
        shown = [str(d) for d in self.live.dirs] + ([upload_to] if upload_to else [])
        self.message(f"tensorboard: {', '.join(shown)}")

    def flush_live(self) -> None:
        if self.live is not None:
            self.live.flush()

    def _write_eval(self, entry: dict[str, Any]) -> None:
        values = {f"{self.tag}/valid/{k}": v for k, v in entry.items() if k not in ("step", "seconds")}
        self.live.add(values, entry["step"])

    def restart_clock(self) -> None:
        """Exclude the time since the last step (evaluation, checkpoint) from throughput and ETA."""
        self._clock = time.perf_counter()

    def step(
        self,
        step: int,
        epoch: int,
        values: dict[str, float],
        lr: float,
        items: int,
        rank_items: int | None = None,
        grad_norm: float | None = None,
        data_seconds: float = 0.0,
        allreduce_seconds: float = 0.0,
    ) -> None:
        """Record optimizer step ``step`` (1-based) of ``epoch`` (1-based); ``values``' first key is the loss.

        ``items``: what all ranks trained on in this step; ``rank_items``: this rank's share (default
        all of it); ``grad_norm``: before clipping; ``data_seconds``: time this rank waited for batches;
        ``allreduce_seconds``: time it spent in the gradient all-reduce (AllReduceClock).
        """
        now = time.perf_counter()
        seconds = now - self._clock
        self._clock = now
        self.steps_this_run += 1
        self.items_this_run += items
        self.train_seconds += seconds
        self.loss_name = next(iter(values), self.loss_name)
        totals = self.rank_totals
        totals["steps"] += 1
        totals["items"] += items if rank_items is None else rank_items
        totals["seconds"] += seconds
        totals["data_seconds"] += data_seconds
        totals["allreduce_seconds"] += allreduce_seconds
        totals["loss_sum"] += float(values.get(self.loss_name, 0.0))
        entry = {"step": step, "epoch": epoch, "lr": lr, **{k: float(v) for k, v in values.items()}}
        if grad_norm is not None:
            entry["grad_norm"] = float(grad_norm)
        entry.update({"items": items, "seconds": round(seconds, 4), "data_seconds": round(data_seconds, 4)})
        if allreduce_seconds:
            entry["allreduce_seconds"] = round(allreduce_seconds, 4)
        self.history["steps"].append(entry)
        if self.live is not None:
            self._write_step(
                step, values, lr, items, rank_items, grad_norm, data_seconds, allreduce_seconds, seconds
            )
        text = self.step_line(step, epoch, values, lr)
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.update(1, postfix=text)
        elif step % self.log_every == 0 or self.steps_this_run == 1 or step >= self.total_steps:
            log(self.tag, text)

    def _write_step(
        self,
        step: int,
        values: dict[str, float],
        lr: float,
        items: int,
        rank_items: int | None,
        grad_norm: float | None,
        data_seconds: float,
        allreduce_seconds: float,
        seconds: float,
    ) -> None:
        per_second = 1.0 / seconds if seconds > 0 else 0.0
        rank_values = {
            "items_per_second": (items if rank_items is None else rank_items) * per_second,
            "step_seconds": seconds,
            "data_wait_seconds": data_seconds,
            "allreduce_seconds": allreduce_seconds,
            "peak_rss_mib": peak_rss_mib(),
        }
        if torch.cuda.is_available():
            rank_values["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
        scalars = {f"{self.tag}/rank/{name}": value for name, value in rank_values.items()}
        if not self.quiet:  # rank 0 writes the run's values too; another rank only its own
            train = {**values, "lr": lr, "items_per_second": items * per_second}
            if grad_norm is not None:
                train["grad_norm"] = grad_norm
            scalars.update({f"{self.tag}/train/{name}": value for name, value in train.items()})
        self.live.add(scalars, step)

    def final_metrics(self) -> dict[str, float]:
        """The run's end as the hparams plugin compares runs: the last step's loss, the last evaluation's
        metrics and the best one (``<tag>/final/*`` tags)."""
        final: dict[str, float] = {}
        if self.history["steps"]:
            last = self.history["steps"][-1]
            final[f"{self.tag}/final/{self.loss_name}"] = float(last.get(self.loss_name, 0.0))
        if self.history["evals"]:
            last_eval = self.history["evals"][-1]
            final.update(
                {
                    f"{self.tag}/final/valid_{k}": float(v)
                    for k, v in last_eval.items()
                    if k not in ("step", "seconds")
                }
            )
        best = self.history["best"]
        if best is not None and self.metric in best:
            final[f"{self.tag}/final/best_{self.metric}"] = float(best[self.metric])
        return final

    def _write_hparams(self) -> None:
        """The hparams plugin's record of this run (its config against its final metrics), in the run's own
        directory, so the run keeps its name (SummaryWriter.add_hparams would make a sub-run)."""
        from torch.utils.tensorboard.summary import hparams

        final = self.final_metrics()
        step = self.history["steps"][-1]["step"] if self.history["steps"] else 0
        self.live.add(final, step)  # the plugin reads each metric's last scalar
        config = {name: hparam_value(value) for name, value in (self.config or {}).items()}
        self.live.add_summaries(list(hparams(config, final)), step)

    def rank_table(self) -> dict[str, Any]:
        """Every rank's share of this run, gathered (a collective: every rank calls it): ``{"ranks":
        [{rank, steps, items_per_second, mean_loss, data_wait_seconds, data_wait_share, allreduce_seconds,
        allreduce_share, peak_rss_mib}, ...], "items_per_second_spread": max / min}``; with two or more ranks also one line per rank."""
        totals = self.rank_totals
        seconds, steps = totals["seconds"], totals["steps"]
        mine = {
            "rank": rank(),
            "steps": steps,
            "items_per_second": round(totals["items"] / seconds, 2) if seconds > 0 else 0.0,
            "mean_loss": round(totals["loss_sum"] / steps, 6) if steps else None,
            "data_wait_seconds": round(totals["data_seconds"], 3),
            "data_wait_share": round(totals["data_seconds"] / seconds, 4) if seconds > 0 else 0.0,
            "allreduce_seconds": round(totals["allreduce_seconds"], 3),
            "allreduce_share": round(totals["allreduce_seconds"] / seconds, 4) if seconds > 0 else 0.0,
            "peak_rss_mib": round(peak_rss_mib(), 1),
        }
        ranks = [mine]
        if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            ranks = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(ranks, mine)
        rates = [entry["items_per_second"] for entry in ranks]
        spread = round(max(rates) / min(rates), 3) if min(rates) > 0 else None
        if len(ranks) > 1:
            for entry in ranks:
                self.message(
                    f"rank {entry['rank']}: {entry['steps']} steps | {entry['items_per_second']:,.1f} "
                    f"{self.unit}/s | mean loss {_format_value(entry['mean_loss'] or 0.0)} | data wait "
                    f"{entry['data_wait_share']:.1%} | all-reduce {entry['allreduce_share']:.1%} | "
                    f"peak RSS {entry['peak_rss_mib']:,.0f} MiB"
                )
            self.message(f"ranks: {len(ranks)} | {self.unit}/s max/min {spread}")
        return {"ranks": ranks, "items_per_second_spread": spread}

    def step_line(self, step: int, epoch: int, values: dict[str, float], lr: float) -> str:
        names = list(values)
        loss = f"{names[0]} {_format_value(values[names[0]])}" if names else ""
        if len(names) > 1:
            loss += " (" + " ".join(f"{k} {_format_value(values[k])}" for k in names[1:]) + ")"
        rate = self.items_this_run / self.train_seconds if self.train_seconds > 0 else 0.0
        seconds_per_step = self.train_seconds / max(1, self.steps_this_run)
        eta = format_seconds(max(0, self.total_steps - step) * seconds_per_step)
        best = self.history["best"]
        best_text = f" | best {self.metric} {best[self.metric]:.4f}" if best else ""
        return (
            f"epoch {epoch}/{self.epochs} step {step}/{self.total_steps} | {loss} | lr {lr:.1e} | "
            f"{rate:.0f} {self.unit}/s | eta {eta}{best_text}"
        )

    def evaluate(self, step: int, metrics: dict[str, float], seconds: float = 0.0) -> bool:
        """Record an evaluation; returns True when ``metrics[metric]`` is the best so far (higher wins, or
        lower with ``lower_is_better``)."""
        value = float(metrics[self.metric])
        best = self.history["best"]
        is_best = best is None or (
            value < best[self.metric] if self.lower_is_better else value > best[self.metric]
        )
        entry = {"step": step, **{k: float(v) for k, v in metrics.items()}, "seconds": round(seconds, 3)}
        self.history["evals"].append(entry)
        if self.live is not None and not self.quiet:
            self._write_eval(entry)
        if is_best:
            self.history["best"] = {"step": step, self.metric: value}
        best = self.history["best"]
        others = " ".join(f"{k} {_format_value(float(v))}" for k, v in metrics.items() if k != self.metric)
        self.message(
            f"eval step {step} | {self.metric} {value:.4f}{' ' + others if others else ''} | "
            f"best {best[self.metric]:.4f} (step {best['step']})" + (" *" if is_best else "")
        )
        self.restart_clock()
        return is_best

    def end_epoch(self, epoch: int, step: int, complete: bool) -> str:
        """Print (and return) the summary line of ``epoch`` (1-based): its mean train loss, the last
        evaluation since the previous epoch ended (valid loss when it has one, the metric), wall time."""
        now = time.perf_counter()
        seconds, self._epoch_clock = now - self._epoch_clock, now
        losses = [e[self.loss_name] for e in self.history["steps"] if e["epoch"] == epoch]
        evals = self.history["evals"][self._epoch_evals_from :]
        self._epoch_evals_from = len(self.history["evals"])
        parts = [f"epoch {epoch} complete" if complete else f"epoch {epoch} stopped at step {step}"]
        if losses:
            parts.append(f"train {self.loss_name} {_format_value(sum(losses) / len(losses))}")
        if evals and "loss" in evals[-1]:
            parts.append(f"valid loss {_format_value(evals[-1]['loss'])}")
        if evals and self.metric != "loss":
            parts.append(f"valid {self.metric} {evals[-1][self.metric]:.4f}")
        parts.append(f"time {format_seconds(seconds)}")
        text = " | ".join(parts)
        self.message(text)
        return text

    def announce_start(self, state: dict[str, Any] | None, resume: bool, checkpoints_dir: str | Path) -> None:
        """Say whether this run resumed (``state`` from resume_state) or starts from step 0."""
        if state is not None:
            self.message(f"resumed from {state['path']} at step {state['step']}/{self.total_steps}")
        elif resume:
            self.message(f"resume: no checkpoint in {checkpoints_dir} yet, starting from step 0")

    def message(self, text: str) -> None:
        """A line on stderr that does not break the progress bar."""
        if self.quiet:
            return
        if self._bar is not None:
            from tqdm import tqdm

            tqdm.write(f"[{self.tag}] {text}", file=sys.stderr)
        else:
            log(self.tag, text)

    def items_per_second(self) -> float:
        return self.items_this_run / self.train_seconds if self.train_seconds > 0 else 0.0

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if is_main_process():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(self.history, indent=1) + "\n")
        return path

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self.live is not None:
            if self.config is not None and not self.quiet:
                self._write_hparams()
            self.live.close()
            self.live = None
