"""The training loop of the encoder and decoder stages (``run_steps``) and its bookkeeping: how many
steps (``plan_steps``), when to evaluate, checkpoint and stop, what each step measures.

A stage sets up (semcode.train.distributed), resumes (semcode.train.checkpoints), opens its log
(semcode.train.history) and calls the shared loop::

    setup_distributed()                                   # env defaults for one process, process group
    seed_everything(seed)
    optimizer = adamw(model, lr, weight_decay)            # a torch optimizer: DeepSpeed builds no C++ Adam
    scheduler = warmup_cosine_schedule(optimizer, warmup_steps, total_steps, min_lr_ratio)
    engine = initialize(model, optimizer, scheduler, deepspeed_config(...))
    plan = plan_steps(len(pairs), batch_size, grad_accum, world_size, epochs, max_steps, ...)
    state = resume_state(checkpoints_dir, engine, resume, run_shape)  # None for a fresh run
    log = TrainingLog("encoder", "pairs", plan.total_steps, plan.epochs)  # history.json and progress lines
    step, stopped_by = run_steps(engine, plan, log, schedule, micro_batches, forward, evaluate, ...)
        # per micro-batch: forward, engine.backward(loss), engine.step() (steps LR, clips, accumulates);
        # after each optimizer step: the time budget, evaluate when due, save_checkpoint when due (every
        # checkpoint_every steps, and at the end of every checkpoint_every_epochs epochs)
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from semcode.train.checkpoints import DurableCheckpoints, Preempted, StopRequest, save_checkpoint, unwrap
from semcode.train.distributed import barrier, current_lr, is_main_process, world_size
from semcode.train.history import TENSORBOARD_DIR, TrainingLog


@dataclass(frozen=True)
class StepPlan:
    """The shape of a run, in optimizer steps and in this rank's micro-batches."""

    micro_per_epoch: int  # micro-batches per epoch on each rank
    total_steps: int  # optimizer steps of the whole run
    total_micro: int  # micro-batches of the whole run on each rank (total_steps * grad_accum)
    epochs: int  # epochs started, the last one possibly partial
    warmup_steps: int


def plan_steps(
    num_items: int,
    batch_size: int,
    grad_accum: int,
    world_size: int,
    epochs: int,
    max_steps: int = 0,
    warmup_steps: int = 0,
    warmup_ratio: float = 0.0,
    unit: str = "training pairs",
) -> StepPlan:
    """Steps of a run over ``num_items`` examples cut into full micro-batches (semcode.train.data.epoch_batches).

    ``max_steps`` > 0 wins over ``epochs``; ``warmup_steps`` 0 means ``warmup_ratio`` of the steps.
    Raises ValueError when the data makes no optimizer step at all.
    """
    micro_per_epoch = num_items // (batch_size * world_size)
    total_steps = max_steps or (epochs * micro_per_epoch) // grad_accum
    if micro_per_epoch == 0 or total_steps == 0:
        raise ValueError(
            f"{num_items} {unit} make no optimizer step with batch_size {batch_size}, "
            f"grad_accum {grad_accum} and {world_size} rank(s); use more pairs or smaller batches"
        )
    total_micro = total_steps * grad_accum
    return StepPlan(
        micro_per_epoch=micro_per_epoch,
        total_steps=total_steps,
        total_micro=total_micro,
        epochs=math.ceil(total_micro / micro_per_epoch),
        warmup_steps=warmup_steps or round(warmup_ratio * total_steps),
    )


def time_budget_exceeded(run_started: float, budget_minutes: float, device: Any) -> bool:
    """True once ``budget_minutes`` (0 = none) have passed since ``run_started`` (a perf_counter value).

    With several ranks the slowest rank's clock decides, so every rank stops at the same step.
    """
    if not budget_minutes:
        return False
    elapsed = torch.tensor(float(time.perf_counter() - run_started))
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        elapsed = elapsed.to(device)
        torch.distributed.all_reduce(elapsed, op=torch.distributed.ReduceOp.MAX)
    return float(elapsed) > budget_minutes * 60


def is_due(step: int, every: int) -> bool:
    """Whether a periodic action (evaluation, checkpoint) runs after ``step``; ``every`` 0 = never."""
    return every > 0 and step % every == 0


@dataclass(frozen=True)
class LoopSchedule:
    """When ``run_steps`` evaluates, checkpoints and stops (0 = never / no budget)."""

    grad_accum: int
    eval_every: int
    checkpoint_every: int
    keep_checkpoints: int
    time_budget_minutes: float
    checkpoint_every_epochs: int = 0

    @classmethod
    def from_config(cls, config: Any) -> LoopSchedule:
        """From a stage config that has the six fields of the same names (both training stages do)."""
        return cls(
            config.grad_accum,
            config.eval_every,
            config.checkpoint_every,
            config.keep_checkpoints,
            config.time_budget_minutes,
            config.checkpoint_every_epochs,
        )


class StepOutput(NamedTuple):
    """What one micro-batch's forward pass gives the loop (the ``forward`` callback of ``run_steps``)."""

    loss: torch.Tensor  # to backpropagate
    averaged: dict[
        str, torch.Tensor
    ]  # averaged over the accumulated micro-batches for the log, e.g. {"loss": ..}
    items: int  # what the micro-batch trained on (pairs, tokens): for items/s
    as_is: dict[str, float]  # logged as they are, e.g. a learnable temperature


class LoopResult(NamedTuple):
    last_step: int  # the last optimizer step taken
    stopped_by: str  # "steps" (the plan's end) or "time_budget"


def run_steps(
    engine: Any,
    plan: StepPlan,
    log_: TrainingLog,
    schedule: LoopSchedule,
    checkpoints_dir: Path,
    run_shape: dict[str, Any],
    start_step: int,
    micro_batches: Callable[[int, int, int], Iterable[Any]],
    forward: Callable[[Any], StepOutput],
    evaluate: Callable[[int], None],
    tensorboard_dir: Path | None = None,
    durable: DurableCheckpoints | None = None,
    definition: Path | None = None,
) -> LoopResult:
    """The training loop of both stages, from optimizer step ``start_step`` to the plan's end or the budget.

    ``micro_batches(epoch, position, count)`` yields this rank's micro-batches ``position`` ..
    ``position + count`` of that (0-based) epoch, at most to its end. ``forward(batch)`` runs the engine
    and returns (the loss to backpropagate, the values to average over the accumulated micro-batches
    for the progress line, e.g. ``{"loss": ...}``, the items the micro-batch trained on, values logged
    as they are, e.g. a learnable temperature). ``evaluate(step)`` runs when due and at the end.
    ``tensorboard_dir`` (default: ``checkpoints_dir``'s parent, the stage's output directory, /
    tensorboard) receives the live metrics. ``durable``: each checkpoint is also uploaded there.
    ``definition``: a folder every checkpoint carries as ``definition/`` (the model without its weights).
    Returns the last optimizer step and what stopped the run ("steps" or "time_budget").

    SIGTERM (a preempted or evicted pod) or Ctrl-C ends the run after the optimizer step under way: a
    checkpoint (made durable), an evaluation only if one was due anyway (so the history matches an
    uninterrupted run's), then Preempted is raised with the exit code the signal calls for. SIGUSR1 asks for
    a checkpoint after the step under way, and the run goes on (a resume from it replays the same steps).
    """
    ranks = world_size()
    step = start_step
    run_started = time.perf_counter()
    micro_step = step * schedule.grad_accum  # the data position: global index of the next micro-batch
    log_.start_live(tensorboard_dir or Path(checkpoints_dir).parent / TENSORBOARD_DIR, start_step)
    # DeepSpeed records the gradient norm only when its optimizer wrapper computes one (ZeRO 1/2, bf16);
    # with a plain torch optimizer (fp32, ZeRO 0: the CPU runs) it clips without keeping the norm.
    own_grad_norm = not hasattr(engine.optimizer, "_global_grad_norm")
    epochs_done = micro_step // plan.micro_per_epoch
    stopped_by = "steps"
    sums: dict[str, float] = {}
    items = 0
    data_seconds = 0.0
    allreduce = AllReduceClock(engine)
    checkpoint = None
    with StopRequest() as stop_request:
        try:
            while micro_step < plan.total_micro and stopped_by == "steps":
                epoch, position = divmod(micro_step, plan.micro_per_epoch)
                batches = micro_batches(epoch, position, plan.total_micro - micro_step)
                for batch, waited in _timed(batches):
                    data_seconds += waited
                    output = forward(batch)
                    engine.backward(output.loss)
                    for name, value in output.averaged.items():
                        sums[name] = sums.get(name, 0.0) + float(value.detach()) / schedule.grad_accum
                    items += output.items
                    as_is = output.as_is
                    boundary = engine.is_gradient_accumulation_boundary()
                    lr = current_lr(engine)  # the LR of this update: the scheduler steps after it
                    # Before the step: gradients are all-reduced by now and not yet clipped.
                    grad_norm = gradient_norm(engine) if boundary and own_grad_norm else None
                    engine.step()
                    micro_step += 1
                    if not boundary:
                        continue

                    step += 1
                    if not math.isfinite(sums["loss"]):
                        raise FloatingPointError(
                            f"loss is {sums['loss']} at step {step}; try a lower lr or grad_clip"
                        )
                    if grad_norm is None:
                        norm = engine.get_global_grad_norm()  # None when DeepSpeed computed none
                        grad_norm = None if norm is None else float(norm)
                    log_.step(
                        step,
                        epoch + 1,
                        {**sums, **as_is},
                        lr,
                        items * ranks,
                        rank_items=items,
                        grad_norm=grad_norm,
                        data_seconds=data_seconds,
                        allreduce_seconds=allreduce.take(),
                    )
                    sums, items, data_seconds = {}, 0, 0.0

                    last = step == plan.total_steps
                    if not last and stop_request.agreed(engine.device):
                        stopped_by = "preempted"
                        log_.message(f"{stop_request.name}: stopping after step {step} with a checkpoint")
                    elif not last and time_budget_exceeded(
                        run_started, schedule.time_budget_minutes, engine.device
                    ):
                        stopped_by = "time_budget"
                        log_.message(
                            f"time budget of {schedule.time_budget_minutes} min reached at step {step}"
                        )
                    final = last or stopped_by != "steps"
                    if is_due(step, schedule.eval_every) or (final and stopped_by != "preempted"):
                        evaluate(step)
                    epochs_now = micro_step // plan.micro_per_epoch  # complete epochs after this step
                    epoch_due = schedule.checkpoint_every_epochs > 0 and (
                        epochs_now // schedule.checkpoint_every_epochs
                        > epochs_done // schedule.checkpoint_every_epochs
                    )
                    asked = stop_request.checkpoint_asked(engine.device)  # SIGUSR1: save now, then go on
                    if final or epoch_due or asked or is_due(step, schedule.checkpoint_every):
                        train_state = {"run": run_shape, "micro_step": micro_step, "history": log_.history}
                        checkpoint = save_checkpoint(
                            checkpoints_dir, engine, step, train_state, schedule.keep_checkpoints, definition
                        )
                        if durable is not None:
                            if is_main_process():
                                checkpoint = durable.push(checkpoint)
                            barrier()
                        ended = f" (end of epoch {epochs_now})" if epochs_now > epochs_done else ""
                        ended += " (asked for by SIGUSR1; training goes on)" if asked and not final else ""
                        log_.message(f"checkpoint {checkpoint}{ended}")
                        log_.restart_clock()
                    while epochs_done < micro_step // plan.micro_per_epoch:
                        epochs_done += 1
                        log_.end_epoch(epochs_done, step, complete=True)
                    if final:
                        if micro_step % plan.micro_per_epoch:  # max_steps or the budget ended it mid-epoch
                            log_.end_epoch(epochs_done + 1, step, complete=False)
                        break
        finally:
            log_.flush_live()  # a crash keeps the curves up to it
    if stopped_by == "preempted":
        if stop_request.signal_number == signal.SIGINT and not durable:  # Ctrl-C on the stage itself
            then = "the same command with --resume continues from it"
        else:
            retry = " (or a new run with its --resume)" if durable else " with --resume"
            then = f"a retry of the task{retry} continues from it"
        raise Preempted(
            f"stopped by {stop_request.name} after step {step}: checkpoint {checkpoint}; {then}",
            exit_code=stop_request.exit_code,
        )
    return LoopResult(step, stopped_by)


class AllReduceClock:
    """Seconds this rank spends in DeepSpeed's gradient all-reduce: the transfer and the wait for the
    slowest rank, the idle time a load imbalance costs.

    DeepSpeed's engine calls ``engine.allreduce_gradients`` from ``backward`` (every ZeRO stage: the
    whole reduction with ZeRO 0/1, what overlapping did not hide with ZeRO 2); this wraps that bound
    method with a clock, on CUDA synchronising first so the clock sees NCCL's work, not its launch.
    Installed only with two or more ranks: a world of one reduces nothing.
    """

    def __init__(self, engine: Any) -> None:
        self.seconds = 0.0
        original = getattr(engine, "allreduce_gradients", None)
        if original is None or world_size() < 2:
            return
        on_cuda = getattr(engine, "device", torch.device("cpu")).type == "cuda"

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                if on_cuda:
                    torch.cuda.synchronize(engine.device)
                self.seconds += time.perf_counter() - started

        engine.allreduce_gradients = timed

    def take(self) -> float:
        """The seconds since the last take."""
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def _timed(batches: Iterable[Any]) -> Iterable[tuple[Any, float]]:
    """(batch, seconds spent getting it): the loop's wait on data (a DataLoader's workers, tokenizing)."""
    iterator = iter(batches)
    while True:
        started = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            return
        yield batch, time.perf_counter() - started


def gradient_norm(engine: Any) -> float:
    """The global L2 norm of the module's gradients (what DeepSpeed's clipping measures before it clips).

    Call after the accumulation boundary's ``backward`` (DeepSpeed has all-reduced the gradients there)
    and before ``step``, which clips and then zeroes them.
    """
    grads = [p.grad.detach() for p in unwrap(engine).parameters() if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])))
