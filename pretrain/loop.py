"""The training loop of pretraining and fine-tuning: it receives built parts and runs them.

    parts = TrainParts(accelerator, model, optimizer, scheduler, loader, ..., evaluate=..., finish=...)
    result = run(parts, train_args)

What the model is, which parameters train at which rate, how to evaluate and how to export are the caller's parts
(`pretrain.prepared.PreparedRun` builds them, for pretraining and for each fine-tuning strategy); the loop owns the
cadence (log, evaluate, save), the non-finite policy and resumption.

No host synchronisation happens on a step that neither logs, evaluates, saves nor checks the non-finite streak:
the loss, the non-finite flag and the skip decision stay on the device. A step whose loss is non-finite on any
rank is skipped by every rank inside the fused AdamW (`foundation.compat.skip_optimizer_step`), and the streak of
such steps is read at those cadence steps (every `max_nonfinite_steps` steps at least).

Preemption (`Preemption`): a signal of `--preemption_signals` (SLURM's SIGTERM or `--signal`) sets a flag that the
ranks all-reduce at those same cadence steps, so every rank stops at one step, after its checkpoint; the entry
points then exit with `PREEMPTED_EXIT` and the same command resumes exactly.

Checkpoints are the full training state (model, optimizer and scheduler through `accelerator.save_state`, sharded
by DeepSpeed when it runs; sampler position; step), written into a hidden folder and renamed into place once every
rank has finished, the last `keep_last` kept. A resumed run continues the uninterrupted run's loss curve exactly.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from foundation.compat import skip_optimizer_step

from .checkpoint import Checkpointer
from .config import TrainArguments


class NonFiniteLoss(RuntimeError):
    """Too many non-finite losses in a row; the last good checkpoint is intact."""


PREEMPTED_EXIT = 75  # EX_TEMPFAIL: the run stopped for a preemption signal after a checkpoint; rerun it to resume


class Preempted(Exception):
    """A preemption signal arrived: every rank finished its step and the run checkpointed; rerun it to resume."""


class Preemption:
    """Preemption signals (SLURM sends SIGTERM, or the signal of `--signal`, before it kills a job) turned into a
    request the loop honours at its next synchronised step, instead of the default action (death, and every step
    since the last periodic checkpoint lost).

    The handler only sets a flag: a signal may arrive in the middle of a step or of a collective, and the ranks
    may receive it at different steps, so the loop all-reduces the flag where it already syncs (every
    `max_nonfinite_steps` steps at least) and all ranks stop at the same step. The previous handlers come back
    on `restore` (in-process runs, tests).
    """

    def __init__(self, names: Sequence[str]):
        self.received: str | None = None
        self._previous: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():  # signal.signal works in the main thread only
            return
        for name in names:
            number = getattr(signal, name)
            self._previous[number] = signal.signal(number, self._handle)

    def _handle(self, number: int, frame) -> None:
        self.received = self.received or signal.Signals(number).name

    def requested(self, device) -> torch.Tensor:
        """This rank's request as a device scalar (1.0 if a signal arrived), for the all-reduce."""
        return torch.full((), float(self.received is not None), device=device)

    def restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous = {}


@dataclass
class TrainState:
    """Where a run is: what a checkpoint holds besides the model, optimizer and scheduler states."""

    step: int = 0
    epoch: int = 0
    consumed: int = 0  # samples of the current epoch this rank has consumed
    nonfinite: int = 0  # non-finite steps in a row, as last read from the device


@dataclass
class TrainParts:
    """Everything the loop runs, built by the caller.

    Args:
        accelerator: The prepared run's `accelerate.Accelerator`.
        model, optimizer, scheduler: As returned by `accelerator.prepare`.
        base_optimizer: The torch optimizer before `prepare` (a fused AdamW: it skips non-finite steps on device).
        loader: Training batches of this rank (its sampler shards the data itself).
        sampler: The resumable `RandomPairSampler` of `loader`.
        dataset: The training dataset (`set_epoch` moves the sub-sampling of down-weighted datasets).
        out: The run folder (checkpoints, losses.jsonl, validation.jsonl, run_args.json, result.json).
        evaluate: Validation metrics during training (every `eval_every` steps); flat {name: float}.
        finish: After the last step: final evaluation and export, returns entries of result.json.
        flops_per_sample: Forward + backward FLOPs of one sample (the MFU's numerator).
        peak: (FLOP/s, how it was obtained) the MFU is relative to.
        tag: Name in logs and trackers.
        run_args: Written to run_args.json (the configuration of the run).
        objective: loss = objective(model, micro_batch, step) (0-based optimizer step) instead of
            `model(**micro_batch).loss`: rollout training (`pretrain.objectives.RolloutObjective`).
        selection: With --select_best, the `pretrain.selection.BestWeights` that every validation during training
            is shown to (it saves the best weights); `finish` asks it which weights to export.
    """

    accelerator: Any
    model: torch.nn.Module
    optimizer: Any
    scheduler: Any
    base_optimizer: torch.optim.Optimizer
    loader: Any
    sampler: Any
    dataset: Any
    out: Path
    evaluate: Callable[[], dict]
    finish: Callable[[TrainState], dict]
    flops_per_sample: float
    peak: tuple[float, str]
    tag: str = "pretrain"
    run_args: dict = field(default_factory=dict)
    objective: Callable[[torch.nn.Module, dict, int], torch.Tensor] | None = None
    selection: Any = None


# ----------------------------------------------------------------------------------------------- one step
def train_step(
    parts: TrainParts, micro_batches: Sequence[dict], max_grad_norm: float, step: int = 0
) -> tuple[torch.Tensor, ...]:
    """One optimizer step over `micro_batches` (gradient accumulation); returns (mean loss, skipped) on the device.

    Nothing here reads a tensor on the host: a non-finite loss on any rank makes every rank skip the update on
    the device (the all-reduced flag goes to the fused AdamW), so the collectives of all ranks stay in step.
    """
    acc, model, optimizer = parts.accelerator, parts.model, parts.optimizer
    skipped = torch.zeros((), device=acc.device)
    total = torch.zeros((), device=acc.device)
    deepspeed = acc.state.deepspeed_plugin is not None
    for batch in micro_batches:
        with acc.accumulate(model):
            loss = model(**batch).loss if parts.objective is None else parts.objective(model, batch, step)
            bad = acc.reduce((~torch.isfinite(loss.detach())).float(), "sum").clamp(max=1.0)
            skipped = torch.maximum(skipped, bad)
            skip_optimizer_step(parts.base_optimizer, skipped)  # read by the update at the accumulation boundary
            acc.backward(loss)  # DeepSpeed also steps here, at the boundary
            if acc.sync_gradients and max_grad_norm > 0 and not deepspeed:
                acc.clip_grad_norm_(model.parameters(), max_grad_norm)
            optimizer.step()
            parts.scheduler.step()
            optimizer.zero_grad()
            total = total + loss.detach() / len(micro_batches)
    return acc.reduce(total, "mean"), skipped


def _micro_batches(parts: TrainParts, state: TrainState, batch_size: int) -> Iterator[dict]:
    """Training batches on the device, epoch after epoch, keeping `state.epoch` and `state.consumed` current."""
    device = parts.accelerator.device
    while True:
        for batch in parts.loader:
            state.consumed += batch_size
            yield {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "dataset"}
        state.epoch, state.consumed = state.epoch + 1, 0
        parts.sampler.set_epoch(state.epoch)
        parts.dataset.set_epoch(state.epoch)  # moves the sub-sampling of down-weighted datasets


class _LossLog:
    """Per-step losses kept on the device and written to losses.jsonl (and the tracker) at logging steps."""

    def __init__(self, path: Path, main: bool):
        self.path, self.main = path, main
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor, float]] = []

    def record(self, step: int, loss: torch.Tensor, skipped: torch.Tensor, lr: float) -> None:
        self.pending.append((step, loss, skipped, lr))

    def flush(self) -> dict | None:
        """Write what is pending (one host sync for all of it); the last entry's values, or None."""
        if not self.pending:
            return None
        values = torch.stack([torch.stack([loss.float(), skip]) for _, loss, skip, _ in self.pending]).tolist()
        lines = []
        for (step, _, _, lr), (loss, skip) in zip(self.pending, values):
            entry = {"step": step, "loss": None if skip else loss, "lr": lr}
            if skip:
                entry["skipped"] = True  # non-finite on some rank: no update
            lines.append(entry)
        self.pending = []
        if self.main:
            with self.path.open("a") as f:
                f.writelines(json.dumps(entry) + "\n" for entry in lines)
        return lines[-1]


# ----------------------------------------------------------------------------------------------- the loop
def run(parts: TrainParts, args: TrainArguments, callbacks: Sequence[Callable[[TrainState], None]] = ()) -> dict:
    """Train to `args.max_steps` (resuming from the last checkpoint in `parts.out` if any), then `parts.finish`.

    Args:
        parts: The built run.
        args: Steps, cadences, clipping, tracker, resumption.
        callbacks: Called with the state after every step (e.g. a test that stops the run as if killed).
    Returns:
        result.json's content: step, what `finish` returned, throughput and MFU.
    """
    acc = parts.accelerator
    state = TrainState()
    checkpointer = Checkpointer(acc, parts.out / "checkpoints", args.keep_last, parts.sampler)
    resumed = checkpointer.resume(state, parts.dataset) if args.resume else None
    if resumed is not None:
        acc.print(f"[{parts.tag}] resumed from {resumed} (step {state.step})")
    logs = _RunLogs(parts, args, state.step if resumed is not None else None)
    if parts.selection is not None:  # a resumed run's comparison continues from the saved best
        parts.selection.start(state.step if resumed is not None else None)

    parts.model.train()
    batches = _micro_batches(parts, state, args.batch_size)
    bar = _progress_bar(parts, args, state.step)
    clock = _Throughput(state.step, args.batch_size * args.gradient_accumulation_steps)
    preemption = Preemption(args.preemption_signals)
    try:
        _steps(parts, args, state, logs, checkpointer, preemption, batches, bar, clock, callbacks)
    finally:  # the error line of a stopped run starts on a line of its own, after the bar's
        preemption.restore()
        bar.close()
    logs.losses.flush()
    finished = parts.finish(state)
    selection = parts.selection
    result = {"step": state.step, **(selection.record if selection is not None else {}), **finished}
    # the curve ends with the last step's weights, also when the exported metrics are those of the best weights
    last_metrics = selection.last_metrics if selection is not None else None
    logs.close(state.step, last_metrics if last_metrics is not None else result.get("metrics", {}))
    result.update(performance(parts, clock.throughput))
    if acc.is_main_process:
        (parts.out / "result.json").write_text(json.dumps(result, indent=2, default=str))
    return result


def _steps(
    parts: TrainParts,
    args: TrainArguments,
    state: TrainState,
    logs: _RunLogs,
    checkpointer: Checkpointer,
    preemption: Preemption,
    batches: Iterator[dict],
    bar,
    clock: _Throughput,
    callbacks: Sequence[Callable[[TrainState], None]],
) -> None:
    """The optimizer steps up to `args.max_steps`: train step, then the cadence (log, validate, save) and the
    host syncs it needs; raises `NonFiniteLoss` on a streak of non-finite steps, `Preempted` after the checkpoint
    a preemption signal asked for."""
    acc = parts.accelerator
    streak = torch.full((), float(state.nonfinite), device=acc.device)  # non-finite steps in a row, on device
    while state.step < args.max_steps:
        micro = [next(batches) for _ in range(args.gradient_accumulation_steps)]
        loss, skipped = train_step(parts, micro, args.max_grad_norm, state.step)
        streak = (streak + skipped) * skipped
        state.step += 1
        logs.losses.record(state.step, loss, skipped, parts.scheduler.get_last_lr()[0])
        bar.update(1)
        clock.tick(state.step)

        last = state.step == args.max_steps
        log = state.step % args.log_every == 0 or last
        evaluate = bool(args.eval_every) and state.step % args.eval_every == 0 and not last
        save = (bool(args.save_every) and state.step % args.save_every == 0) or last
        stop = False
        if log or evaluate or save or state.step % args.max_nonfinite_steps == 0:
            requests = acc.reduce(preemption.requested(acc.device), "sum")  # every rank takes part: same steps
            nonfinite, requests = torch.stack([streak, requests]).tolist()  # the host sync of this step
            state.nonfinite, stop = int(nonfinite), requests > 0 and not last  # at the last step: finish normally
            save = save or stop
            if state.nonfinite >= args.max_nonfinite_steps:
                logs.losses.flush()
                raise NonFiniteLoss(
                    f"{state.nonfinite} non-finite losses in a row at step {state.step}; the last good "
                    f"checkpoint in {checkpointer.folder} is intact"
                )
        if log:
            logs.training(state, bar, clock)
        if evaluate:
            metrics = parts.evaluate()
            logs.validation(state.step, metrics)
            if parts.selection is not None:
                parts.selection.observe(state.step, metrics)
        if save and state.nonfinite == 0:  # a skipped step never becomes the checkpoint a run resumes from
            logs.losses.flush()
            checkpointer.save(state)
        for callback in callbacks:
            callback(state)
        if stop:
            saved = "checkpoint written" if state.nonfinite == 0 else "no checkpoint (non-finite step), the last stands"
            raise Preempted(
                f"preempted ({preemption.received or 'signal on another rank'}) at step {state.step}: {saved} in "
                f"{checkpointer.folder}; rerun the same command to resume"
            )


def _progress_bar(parts: TrainParts, args: TrainArguments, step: int):
    from tqdm.auto import tqdm

    return tqdm(
        total=args.max_steps,
        initial=step,
        disable=not parts.accelerator.is_main_process,
        desc=parts.tag,
        mininterval=0.1 if sys.stderr.isatty() else 10.0,  # logs and CI get a line every 10 s
    )


class _Throughput:
    """Samples per second per process since the third step (the first steps pay for allocation and warm-up),
    read only at logging steps (after their host sync), and the MFU it makes."""

    def __init__(self, first_step: int, samples_per_step: int):
        self.first, self.per_step = first_step, samples_per_step
        self.started, self.seen = time.perf_counter(), 0
        self.throughput: dict | None = None  # the last logged {"samples_per_s_per_process", "mfu"}

    def tick(self, step: int) -> None:
        if step - self.first == 2:
            self.started, self.seen = time.perf_counter(), 0
        elif step - self.first > 2:
            self.seen += self.per_step

    def read(self, flops_per_sample: float, peak: float) -> dict:
        rate = self.seen / max(time.perf_counter() - self.started, 1e-9)
        self.throughput = {"samples_per_s_per_process": rate, "mfu": rate * flops_per_sample / peak}
        return self.throughput


class _RunLogs:
    """run_args.json, losses.jsonl, validation.jsonl (the validation curve) and the tracker of a run.

    A resumed run (`resumed_step` given) keeps its logs up to the checkpoint's step and drops what came after it,
    so the curves of a run killed and resumed read as the uninterrupted run's; a new run starts them afresh.
    """

    def __init__(self, parts: TrainParts, args: TrainArguments, resumed_step: int | None):
        self.parts, self.acc = parts, parts.accelerator
        out = parts.out
        self.losses = _LossLog(out / "losses.jsonl", self.acc.is_main_process)
        self.curve = out / "validation.jsonl"
        if self.acc.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            (out / "run_args.json").write_text(json.dumps(parts.run_args, indent=2, default=str))
            for log in (self.losses.path, self.curve):
                _truncate_log(log, resumed_step)
        self.tracking = args.tracker != "none"
        self.eval_every = args.eval_every
        if self.tracking:
            self.acc.init_trackers(parts.tag, config=_flat(parts.run_args))

    def training(self, state: TrainState, bar, clock: _Throughput) -> None:
        """A logging step: pending losses to losses.jsonl, the progress bar, the tracker."""
        parts = self.parts
        entry = self.losses.flush()
        throughput = clock.read(parts.flops_per_sample, parts.peak[0])  # after the step's host sync
        rate = throughput["samples_per_s_per_process"]
        if state.nonfinite:
            self.acc.print(f"[{parts.tag}] step {state.step}: non-finite loss, {state.nonfinite} step(s) skipped")
        loss_text = "skipped" if entry["loss"] is None else f"{entry['loss']:.4f}"
        bar.set_postfix(
            loss=loss_text,
            lr=f"{entry['lr']:.2e}",
            samples_s=f"{rate:.1f}",
            mfu=f"{100 * throughput['mfu']:.1f}%",
            refresh=False,  # update() redraws, at most every mininterval
        )
        if self.tracking and entry["loss"] is not None:
            values = {"train/loss": entry["loss"], "train/lr": entry["lr"], "train/samples_per_s": rate}
            self.acc.log({**values, "train/mfu": throughput["mfu"]}, step=state.step)

    def validation(self, step: int, metrics: dict) -> None:
        """An evaluation step: its scalars to validation.jsonl and the tracker."""
        scalars = {k: v for k, v in metrics.items() if isinstance(v, float)}
        if self.acc.is_main_process:
            with self.curve.open("a") as f:
                f.write(json.dumps({"step": step, **scalars}) + "\n")
        if self.tracking:
            self.acc.log({f"val/{k}": v for k, v in scalars.items()}, step=step)

    def close(self, step: int, final_metrics: dict) -> None:
        """The final validation as the curve's last point (when the run had a curve), then the tracker's end."""
        final = {k: v for k, v in final_metrics.items() if isinstance(v, float)}
        if final and self.acc.is_main_process and bool(self.eval_every):
            with self.curve.open("a") as f:
                f.write(json.dumps({"step": step, **final}) + "\n")
        if self.tracking:
            self.acc.log({f"val/{k}": v for k, v in final.items()}, step=step)
            self.acc.end_training()


def _truncate_log(log: Path, resumed_step: int | None) -> None:
    """A new run's log goes; a resumed run's keeps the entries up to its checkpoint's step."""
    if not log.exists():
        return
    if resumed_step is None:
        log.unlink()
        return
    kept = [line for line in log.read_text().splitlines() if json.loads(line)["step"] <= resumed_step]
    log.write_text("".join(k + "\n" for k in kept))


def performance(parts: TrainParts, throughput: dict | None) -> dict:
    """Throughput per process and the MFU estimate (model FLOPs over the peak it is relative to)."""
    out = {
        "train_gflop_per_sample": round(parts.flops_per_sample / 1e9, 3),
        "peak_tflops": round(parts.peak[0] / 1e12, 3),
        "peak_source": parts.peak[1],
        "processes": parts.accelerator.num_processes,
    }
    if throughput:
        out["samples_per_s_per_process"] = round(throughput["samples_per_s_per_process"], 3)
        out["mfu"] = round(throughput["mfu"], 4)
    device = parts.accelerator.device
    if device.type == "cuda":  # what the will-it-fit estimate is checked against on GPUs
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return out


def _flat(config: dict) -> dict:
    """Tracker-friendly flat config: nested sections merged, non-scalars as strings."""
    out = {}
    for value in config.values():
        if isinstance(value, dict):
            for key, item in value.items():
                out[key] = item if isinstance(item, (int, float, str, bool)) else str(item)
    return out
