"""A run prepared under accelerate: optimizer, schedule, loader, validation and export around a built model.

Pretraining (`pretrain.trainer.Pretrainer`) and every fine-tuning strategy (`finetune.trainer.Finetuner`) build a
`PreparedRun` the same way from the parts of `pretrain.build`, and hand `PreparedRun.parts` to the loop.

The final model is exported with `save_pretrained` (safetensors + config with channels, grid, normalisation and
time scale), consolidated from ZeRO-3 shards when needed, with `training_data.json` beside it.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import signal
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from foundation import ScOT, ScOTConfig
from foundation.compat import fused_adamw
from foundation.data import Mixture
from foundation.evaluation import ErrorTable, group_names, pair_errors, rollout

from .build import TrainData
from .config import DataArguments, ModelArguments, TrainArguments
from .flops import module_train_flops, peak_flops, train_flops_per_sample
from .loop import TrainParts, TrainState
from .objectives import RolloutObjective, trained_leads
from .selection import BestWeights


def ignore_signals(names: list[str], worker_id: int = 0) -> None:
    """DataLoader worker start-up: the preemption signals are the main process's to handle."""
    for name in names:
        signal.signal(getattr(signal, name), signal.SIG_IGN)


def cosine_with_warmup(optimizer, warmup: int, total: int, min_ratio: float):
    """Linear warm-up then cosine decay. A parameter group with "hold_steps" (e.g. a fine-tuned body held while
    new channels' rows learn) stays at 0 for those steps, then warms up again before it joins the schedule."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def held(hold: int):
        return lambda step: 0.0 if step < hold else factor(step) * min(1.0, (step - hold + 1) / max(1, warmup))

    holds = [int(group.get("hold_steps", 0)) for group in optimizer.param_groups]
    if not any(holds):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, [held(h) if h else factor for h in holds])


class PreparedRun:
    """A model, its AdamW parameter groups and the data, prepared under accelerate: what the loop needs, plus
    validation and export. Pretraining and every fine-tuning strategy build one the same way.

    Args:
        accelerator: From `build_accelerator`.
        model: The model to train (plain ScOT, or wrapped, e.g. by peft).
        param_groups: AdamW parameter groups (each may carry its own "lr").
        data: From `build_data`.
        model_args, data_args, train_args: The run's configuration.
        tag: Name in logs and trackers.
        run_args: Extra entries for run_args.json.
    """

    def __init__(
        self,
        accelerator,
        model: torch.nn.Module,
        param_groups: list[dict],
        data: TrainData,
        model_args: ModelArguments,
        data_args: DataArguments,
        train_args: TrainArguments,
        tag: str = "pretrain",
        run_args: dict | None = None,
    ):
        self.accelerator, self.data, self.tag = accelerator, data, tag
        self.model_args, self.data_args, self.args = model_args, data_args, train_args
        self.out = Path(train_args.output_dir)
        self.config = model.config
        # The exported model's trained window (its rollouts jump by it: foundation.evaluation.default_jump) and
        # the rollout-training step, if any.
        weight = train_args.rollout_weight if data_args.rollout_steps else 0.0
        self.config.max_lead_time, self.config.rollout_lead_time = trained_leads(data.train_set.parts, weight)
        self.group_names = group_names(self.config)
        grid = data.sources[0].grid
        if isinstance(model, ScOT):
            self.flops_per_sample = train_flops_per_sample(self.config, grid)
        else:  # another architecture (a baseline): counted on the module itself
            self.flops_per_sample = module_train_flops(model, self.config.num_channels, grid)
        self.peak = peak_flops(accelerator.device, train_args.precision, train_args.peak_tflops)
        self.base_optimizer = fused_adamw(param_groups, train_args.learning_rate, train_args.weight_decay)
        scheduler = cosine_with_warmup(
            self.base_optimizer, train_args.warmup_steps, train_args.max_steps, train_args.min_lr_ratio
        )
        if model_args.compile:
            model = torch.compile(model)
        self.model, self.optimizer, self.scheduler = accelerator.prepare(model, self.base_optimizer, scheduler)
        # --select_best: the lowest-validation weights, kept in output_dir/best (None: the last step's are exported)
        self.selection = BestWeights(accelerator, self.model, self.out / "best") if train_args.select_best else None
        self.loader = DataLoader(
            data.train_set,
            batch_size=train_args.batch_size,
            sampler=data.sampler,
            num_workers=data_args.num_workers,
            drop_last=True,
            persistent_workers=data_args.num_workers > 0,
            # SLURM signals every process of a task: a worker killed by the preemption signal would end the run
            # before the main process writes its checkpoint; the workers end with the main process instead.
            worker_init_fn=functools.partial(ignore_signals, train_args.preemption_signals),
        )
        if len(self.loader) == 0:  # every batch would be dropped: the loop would wait for one forever
            raise ValueError(
                f"--batch_size {train_args.batch_size}: the training split has {len(data.sampler)} pairs per process, "
                "fewer than one batch (lower --batch_size, or train on more trajectories)"
            )
        self.run_args = {
            "model": asdict(model_args),
            "data": asdict(data_args),
            "train": asdict(train_args),
            "processes": accelerator.num_processes,
            "distributed": accelerator.distributed_type.value,
            "device": str(accelerator.device),
            "torch": torch.__version__,
            **(run_args or {}),
        }

    def parts(self, finish: Callable[[TrainState], dict]) -> TrainParts:
        """The loop's view of this run, ending with `finish`."""
        objective = None
        if self.data_args.rollout_steps:
            objective = RolloutObjective(self.config, self.args, self.data_args.rollout_steps)
        return TrainParts(
            objective=objective,
            accelerator=self.accelerator,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            base_optimizer=self.base_optimizer,
            loader=self.loader,
            sampler=self.data.sampler,
            dataset=self.data.train_set,
            out=self.out,
            evaluate=self.evaluate,
            finish=finish,
            flops_per_sample=self.flops_per_sample,
            peak=self.peak,
            tag=self.tag,
            run_args=self.run_args,
            selection=self.selection,
        )

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, breakdown: bool = False) -> dict:
        """`foundation.evaluation` on a fixed subset of validation pairs (all ranks together), normalised fields:
        median relative L1 and L2 (%) per channel group and over groups.

        With `breakdown`, also per dataset and per lead time (under "by_dataset" / "by_lead_time"), for the
        model card.
        """
        acc, model, val_set = self.accelerator, self.model, self.data.val_set
        model.eval()
        n = min(self.data_args.eval_pairs, len(val_set))
        picks = np.linspace(0, len(val_set) - 1, n).round().astype(int)[acc.process_index :: acc.num_processes]
        table = pair_errors(model, val_set, picks, self.args.batch_size, "normalised", acc.device, config=self.config)
        # equal row counts on every rank for the gather; NaN rows are padding, dropped after it
        rows = torch.full((math.ceil(n / acc.num_processes), 2 * len(self.group_names) + 2), float("nan"))
        rows[: len(picks)] = table.as_tensor()
        table = ErrorTable.from_tensor(acc.gather(rows.to(acc.device)), len(self.group_names))
        model.train()
        out: dict = table.summary(self.group_names, "normalised", stats=("median",))
        if breakdown:
            out["by_dataset"] = table.by_dataset(self.group_names, self.data.names, "normalised", stats=("median",))
            out["by_lead_time"] = table.by_lead_time(self.group_names, "normalised", decimals=2, stats=("median",))
        return out

    def final_metrics(self) -> dict:
        """Validation with breakdowns, plus the direct vs autoregressive rollout on a few validation trajectories
        per dataset (normalised fields) when outputs can be fed back as inputs."""
        metrics = self.evaluate(breakdown=True)
        self.model.eval()
        metrics["rollout"] = rollout(
            self.model, self.data.val_set, 2, "normalised", self.accelerator.device, self.config
        )
        self.model.train()
        return metrics

    def selected_metrics(self, step: int) -> dict:
        """`final_metrics` of the weights to export: the last step's (trained to `step`), or with --select_best
        those of the lowest validation seen, loaded into the model first when they beat the last step's
        (`pretrain.selection.BestWeights.select`; the metrics then lead with "selected_step" and "selected_by")."""
        metrics = self.final_metrics()
        if self.selection is None:
            return metrics
        return self.selection.select(metrics, step, self.final_metrics)

    # ------------------------------------------------------------------ export
    def export(
        self, metrics: dict, step: int, rebuild: Callable[[ScOTConfig, dict], torch.nn.Module] | None = None
    ) -> Path:
        """save_pretrained folder of the final model (consolidated from ZeRO-3 shards when needed), with
        training_data.json beside it and metrics.json in the run folder.

        Args:
            metrics: Written to metrics.json.
            step: The step the model was trained to.
            rebuild: (fp32 config, consolidated state dict) -> the ScOT to save; the default loads the state into a
                fresh ScOT. LoRA merges its adapters here (and writes them).
        """
        acc = self.accelerator
        state = acc.get_state_dict(self.model)
        folder = self.out / "model"
        if acc.is_main_process:
            # A fresh fp32 copy: the trained module may hold bf16 weights (DeepSpeed bf16) and its config
            # would then tell every later from_pretrained to load in bf16.
            config = copy.deepcopy(self.config)
            config.dtype = torch.float32
            state = {k: v.float().cpu() for k, v in state.items()}
            if rebuild is None:
                fresh = ScOT(config)
                fresh.load_state_dict(state)
            else:
                fresh = rebuild(config, state)
            fresh.save_pretrained(folder, safe_serialization=True)
            datasets = [
                {
                    "spec": spec,
                    "channels": s.info.channel_names,
                    "static": s.info.static_names,
                    "mean": s.info.mean,
                    "std": s.info.std,
                    "time_scale": s.info.time_scale,
                    "pde": s.info.pde,
                    "provenance": s.info.provenance,
                }
                for spec, s in zip(self.data.specs, self.data.sources)
            ]
            (folder / "training_data.json").write_text(json.dumps(datasets, indent=2, default=str))
            (self.out / "metrics.json").write_text(json.dumps({"step": step, **metrics}, indent=2))
        acc.wait_for_everyone()
        return folder


class RunView:
    """What callers (tests, the demo, studies) read of a built run, for the classes that hold a `PreparedRun`."""

    run: PreparedRun

    @property
    def model(self) -> torch.nn.Module:
        return self.run.model

    @property
    def optimizer(self):
        return self.run.optimizer

    @property
    def config(self) -> ScOTConfig:
        return self.run.config

    @property
    def train_set(self) -> Mixture:
        return self.run.data.train_set

    @property
    def val_set(self) -> Mixture:
        return self.run.data.val_set
