"""`--select_best`: export the weights of the lowest validation error seen instead of the last step's.

Poseidon fine-tunes (and trains its from-scratch baselines) for a fixed budget and tests the checkpoint with the
lowest validation error, not the last one: a small fine-tuning set over-fits, and a scratch run at a high learning
rate wanders, long before the step budget ends. `BestWeights` is that rule, in one place:

* during training (`observe`, every `--eval_every` steps) a validation that is strictly lower than the best so far
  saves the model's full state dict to `<output_dir>/best/model.safetensors` and its record to `best/best.json`
  ({"step", "metric", "value"});
* a resumed run reads the record back (`start`), so the comparison carries on where the killed run left it;
* after the last step (`select`) the final validation of the last weights is compared with the best: if the best
  is strictly lower, its weights are loaded into the model, the final metrics are recomputed on them, and those
  are exported. Either way the choice is recorded as "selected_step" and "selected_by".

Only the value and step live in memory; the weights wait on disk (a second copy of a large model in host memory
on every rank would cost more than the one write per improvement does).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from foundation.evaluation import metric_key

from .config import OptionError

SELECTION_METRIC = metric_key(space="normalised")  # median_rel_l1_normalised/mean: what validation.jsonl logs
WEIGHTS, RECORD = "model.safetensors", "best.json"


def refuse_partitioned(select_best: bool, zero_stage: int | None) -> None:
    """--select_best is refused under ZeRO-3: the restore loads a whole state dict into the module, whose
    parameters are then partitioned placeholders (it would need deepspeed.zero.GatheredParameters around the
    load, and the engine's fp32 partitions would still hold the last step's weights)."""
    if select_best and zero_stage == 3:
        raise OptionError(
            "select_best",
            "is not supported under DeepSpeed ZeRO stage 3 (partitioned parameters); use ZeRO stage 1 or 2, DDP, "
            "or export the last step's weights (drop --select_best)",
        )


class BestWeights:
    """The lowest validation error of a run and its weights in `folder` (`<output_dir>/best`).

    Every method is called on every rank at the same step: `accelerator.get_state_dict` may be a collective, and
    the comparisons are made on validation metrics that every rank holds identically (they are gathered), so all
    ranks take the same branch. Only the main process writes.

    Args:
        accelerator: The run's `accelerate.Accelerator`.
        model: The prepared (wrapped) model.
        folder: Where the best weights and their record go.
        metric: The validation key compared (lower is better).
    """

    def __init__(self, accelerator: Any, model: torch.nn.Module, folder: Path, metric: str = SELECTION_METRIC):
        self.accelerator, self.model, self.folder, self.metric = accelerator, model, Path(folder), metric
        self.best: dict | None = None  # {"step", "metric", "value"} of the saved weights
        self.last_metrics: dict | None = None  # the final validation of the last step's weights (the curve's end)
        self.record: dict = {}  # {"selected_step", "selected_by"} once `select` has chosen

    # ------------------------------------------------------------------ during training
    def start(self, resumed_step: int | None) -> None:
        """A new run (`resumed_step` None) forgets an earlier run's best in the same folder; a resumed run reads
        its record back. A record from a step after the checkpoint resumed from is kept: the resumed run
        recomputes the same validations exactly, and a value equal to the best does not replace it."""
        self.best = None
        if resumed_step is None:
            if self.accelerator.is_main_process:
                for name in (RECORD, WEIGHTS):  # the record first: weights without a record are never read
                    (self.folder / name).unlink(missing_ok=True)
            self.accelerator.wait_for_everyone()  # no rank reads a stale record left behind
            return
        self.best = self._read()

    def observe(self, step: int, metrics: dict) -> bool:
        """A validation during training: save the weights if `metrics` is strictly the lowest so far."""
        value = float(metrics[self.metric])
        if value != value or (self.best is not None and not value < self.best["value"]):  # strictly lower; NaN never
            return False
        state = self.accelerator.get_state_dict(self.model)  # every rank: a collective under some engines
        record = {"step": step, "metric": self.metric, "value": value}
        if self.accelerator.is_main_process:
            self._write(state, record)
        del state
        self.best = record
        self.accelerator.wait_for_everyone()
        return True

    # ------------------------------------------------------------------ at the end
    def select(self, last_metrics: dict, step: int, recompute: Callable[[], dict]) -> dict:
        """The final metrics to export: `last_metrics` (of the last step's weights, at `step`), or, when the best
        saved validation is strictly lower, those recomputed by `recompute` after its weights were loaded into
        the model. Both carry "selected_step" and "selected_by" (first, after metrics.json's "step")."""
        self.last_metrics = last_metrics
        last = float(last_metrics[self.metric])
        if self.best is not None and self.best["value"] < last:
            self.accelerator.wait_for_everyone()  # the main process's write is complete before anyone reads
            self._restore()
            metrics = recompute()
            self.record = {"selected_step": self.best["step"], "selected_by": f"lowest validation {self.metric}"}
        else:
            metrics = last_metrics
            self.record = {"selected_step": step, "selected_by": "last step"}
        return {**self.record, **metrics}

    # ------------------------------------------------------------------ files
    def _write(self, state: dict, record: dict) -> None:
        """Weights then record, each through a temporary file and `os.replace`: a kill leaves the previous pair
        or the new one. The record is also in the weights' metadata, so that a kill between the two renames (new
        weights, old record) is recognised on resume (`_read`)."""
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        # fp32 on the CPU, each tensor its own copy (safetensors refuses tensors that share storage)
        tensors = {k: v.detach().float().cpu().contiguous().clone() for k, v in state.items() if torch.is_tensor(v)}
        weights = self.folder / WEIGHTS
        partial = weights.with_name(f".{WEIGHTS}.partial")
        save_file(tensors, str(partial), metadata={"best": json.dumps(record)})
        _fsync(partial)
        os.replace(partial, weights)
        text = self.folder / RECORD
        partial = text.with_name(f".{RECORD}.partial")
        partial.write_text(json.dumps(record, indent=2))
        _fsync(partial)
        os.replace(partial, text)

    def _read(self) -> dict | None:
        """The saved best on resume: best.json, or the weights' own record when they are newer (a kill between
        the two renames of `_write`); None without weights or for another metric."""
        from safetensors import safe_open

        weights, text = self.folder / WEIGHTS, self.folder / RECORD
        if not weights.exists():
            return None
        with safe_open(str(weights), framework="pt") as f:
            inner = json.loads((f.metadata() or {}).get("best", "null"))
        record = json.loads(text.read_text()) if text.exists() else None
        if inner is not None and inner != record:
            record = inner  # what the weights on disk are
        if record is None or record.get("metric") != self.metric:
            return None
        return record

    def _restore(self) -> None:
        """The best weights into the model on every rank (each reads the same file: no broadcast needed)."""
        from safetensors.torch import load_file

        state = load_file(str(self.folder / WEIGHTS))
        # the object whose state_dict `get_state_dict` took (DDP / DeepSpeed wrapper removed): the same keys
        self.accelerator.unwrap_model(self.model).load_state_dict(state)
        self.accelerator.wait_for_everyone()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())
