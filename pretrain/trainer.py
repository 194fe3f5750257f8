"""Pretraining scOT on all2all pairs with accelerate: one CPU process, DDP, or DeepSpeed ZeRO 1-3.

This module builds the parts of a run and hands them to the loop (`pretrain.loop.run`): the accelerator,
the data (`TrainData`), the model, and a `PreparedRun` (optimizer, schedule, loader under accelerate, validation,
export) that fine-tuning builds the same way. Parallelism and precision come from the launcher (`accelerate
launch --config_file launch/accelerate/...`); they are decided here, in one place, and logged with the reason.
The data pipeline shards itself (`RandomPairSampler` per rank), so the DataLoader is not handed to accelerate.

The final model is exported with `save_pretrained` (safetensors + config with channels, grid, normalisation and
time scale), consolidated from ZeRO-3 shards when needed, with `training_data.json` beside it.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from foundation import ScOT, ScOTConfig
from foundation.compat import fused_adamw, skip_deepspeed_shm_comm
from foundation.data import All2AllPairs, Mixture, RandomPairSampler, open_source
from foundation.data.memory import keep_freed_memory
from foundation.evaluation import ErrorTable, dataset_names, feedable, group_names, pair_errors, rollout
from foundation.losses import unrolled_loss

from .config import DataArguments, ModelArguments, TrainArguments
from .loop import NonFiniteLoss, TrainParts, TrainState, run

__all__ = [
    "NonFiniteLoss",
    "PreparedRun",
    "Pretrainer",
    "RunView",
    "TrainData",
    "build_accelerator",
    "build_data",
    "setup_runtime",
]


# ----------------------------------------------------------------------------------------------- set-up
REPO_ROOT = Path(__file__).resolve().parents[1]  # launch/ (accelerate and DeepSpeed configs) lives here


def resolve_deepspeed_config_file() -> None:
    """Let `launch/accelerate/*.yaml` name their DeepSpeed JSON relative to the repository, from any directory.

    `accelerate launch` hands `deepspeed_config_file` to the processes unchanged (ACCELERATE_DEEPSPEED_CONFIG_FILE)
    and the DeepSpeed plugin opens it relative to the working directory when the Accelerator is built; a path that
    is not there but is in the repository (`launch/deepspeed/zero2.json`) is made absolute first.
    """
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if not path or path == "none" or Path(path).is_absolute() or Path(path).exists():
        return
    if (REPO_ROOT / path).is_file():
        os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"] = str(REPO_ROOT / path)
        return
    # accelerate's own message names neither the accelerate config nor where it looked
    raise FileNotFoundError(
        f"DeepSpeed config {path} (deepspeed_config_file of the accelerate config): no such file in {Path.cwd()} "
        f"or {REPO_ROOT}"
    )


def setup_runtime() -> None:
    """Process-wide set-up, once, by the entry points (`python -m pretrain`, `python -m finetune`, the demo).

    Batches reuse freed memory instead of page-faulting fresh mmaps every step; on a machine without CUDA,
    DeepSpeed runs on the CPU without JIT-compiling its shared-memory comm op (~40 s at every start); the
    DeepSpeed JSON an accelerate config names is found from any directory.
    """
    keep_freed_memory()
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        skip_deepspeed_shm_comm()
    resolve_deepspeed_config_file()


def build_accelerator(train: TrainArguments, tag: str = "pretrain"):
    """The Accelerator, with the choices the launcher leaves to us made explicit and logged."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, InitProcessGroupKwargs

    handlers = []
    if not torch.cuda.is_available():
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # gloo is the CPU backend; accelerate would otherwise pick one DeepSpeed cannot use on the CPU.
            handlers.append(InitProcessGroupKwargs(backend="gloo"))
    log_with = None if train.tracker == "none" else train.tracker
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    accelerator = Accelerator(
        # Without cpu=True a multi-process CPU launch trains unsynchronised copies; with it DeepSpeed is dropped.
        cpu=not torch.cuda.is_available() and not deepspeed,
        # bf16 without DeepSpeed is autocast over fp32 master weights (DeepSpeed's bf16 is set in its config).
        mixed_precision="bf16" if train.precision == "bf16" and not deepspeed else "no",
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        log_with=log_with,
        project_dir=train.output_dir,
        kwargs_handlers=handlers,
    )
    plugin = accelerator.state.deepspeed_plugin
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        ds = plugin.deepspeed_config
        # We shard the data ourselves, so accelerate cannot read the micro-batch from a DataLoader.
        ds["train_micro_batch_size_per_gpu"] = train.batch_size
        ds["gradient_accumulation_steps"] = train.gradient_accumulation_steps
        ds["gradient_clipping"] = train.max_grad_norm if train.max_grad_norm > 0 else 0.0
        ds.setdefault(
            "train_batch_size", train.batch_size * train.gradient_accumulation_steps * accelerator.num_processes
        )
        if ds.get("zero_optimization", {}).get("stage") == 3:
            ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True  # export needs it
        if train.precision == "bf16":
            ds["bf16"] = {"enabled": True}
    accelerator.print(
        f"[{tag}] {accelerator.num_processes} process(es), {accelerator.distributed_type.value} on "
        f"{accelerator.device}; precision {train.precision} "
        + (
            "(DeepSpeed bf16 engine: bf16 weights and activations, fp32 master weights)"
            if plugin and train.precision == "bf16"
            else "(autocast: bf16 matmuls over fp32 master weights; FFTs and norm statistics in fp32)"
            if train.precision == "bf16"
            else "(fp32 everywhere)"
        )
    )
    return accelerator


@dataclass
class TrainData:
    """The data of a run: sources, all2all pairs as Mixtures on the channel vocabulary, this rank's sampler."""

    sources: list
    train_set: Mixture
    val_set: Mixture
    sampler: RandomPairSampler
    vocabulary: list[str]  # the model's input channels
    targets: list[str]  # the model's output channels
    stats: dict[str, tuple[float, float]]  # (mean, std) per channel name
    specs: list[str]  # what each source was opened from

    @property
    def names(self) -> list[str]:
        """A short unique name per dataset, from the source's own name (file stem, folder or repo id)."""
        return dataset_names(self.sources)


def build_data(data: DataArguments, seed: int, rank: int, world: int, max_trajectories: int | None = None) -> TrainData:
    """Sources -> all2all pairs -> one Mixture on the channel vocabulary; the train sampler of this rank.

    `max_trajectories` keeps only the first N training trajectories of each source (sample-efficiency studies).
    """
    sources = [open_source(spec, fill_stats=True) for spec in data.datasets]
    options = dict(stride=data.stride, max_snapshots=data.max_snapshots, include_identity=data.include_identity)
    # Steady problems have no trajectory to roll out: beside time-dependent ones they train on pairs only (the
    # Mixture masks their placeholder sequences); alone, All2AllPairs refuses the rollout.
    only_steady = all(s.info.steady for s in sources)

    def rollouts(source) -> dict:
        steps = data.rollout_steps if only_steady or not source.info.steady else 0
        return dict(rollout_steps=steps, rollout_lead_steps=data.rollout_lead_steps, rollout_split=data.rollout_split)

    train_parts = [All2AllPairs(s, "train", lead_steps=data.lead_steps, **options, **rollouts(s)) for s in sources]
    if max_trajectories is not None:
        for part, source in zip(train_parts, sources):
            if max_trajectories > len(part.trajectories):
                raise ValueError(
                    f"{source.info.name}: {max_trajectories} training trajectories asked, the train split has "
                    f"{len(part.trajectories)}"
                )
            part.trajectories = part.trajectories[:max_trajectories]
    val_parts = [All2AllPairs(s, "val", **options) for s in sources]
    vocabulary = list(data.channels) if data.channels else []
    if not vocabulary:
        for part in train_parts:
            vocabulary += [c for c in part.input_names if c not in vocabulary]
    targets = [c for c in vocabulary if any(c in p.target_names for p in train_parts)]
    for part in train_parts:  # outputs that are no inputs: a steady problem's solution (static f -> u)
        targets += [c for c in part.target_names if c not in targets]
    stats = channel_statistics(sources, vocabulary + [c for c in targets if c not in vocabulary])
    mean, std = [stats[c][0] for c in vocabulary], [stats[c][1] for c in vocabulary]
    train_set = Mixture(train_parts, vocabulary, targets, weights=data.weights, input_mean=mean, input_std=std)
    val_set = Mixture(val_parts, vocabulary, targets, input_mean=mean, input_std=std)
    sampler = RandomPairSampler(len(train_set), seed=seed, rank=rank, world_size=world)
    return TrainData(sources, train_set, val_set, sampler, vocabulary, targets, stats, list(data.datasets))


def channel_statistics(sources, vocabulary: list[str]) -> dict[str, tuple[float, float]]:
    """Per vocabulary channel (mean, std) from the first dataset that has it (state or static field)."""
    stats: dict[str, tuple[float, float]] = {}
    for source in sources:
        info = source.info
        for name, m, s in zip(info.channel_names, info.mean, info.std):
            stats.setdefault(name, (float(m), float(s)))
        for name, m, s in zip(info.static_names, info.static_mean or [], info.static_std or []):
            stats.setdefault(name, (float(m), float(s)))
    return {c: stats.get(c, (0.0, 1.0)) for c in vocabulary}


def build_model(model_args: ModelArguments, vocabulary, targets, stats, grid, time_scale: float = 1.0) -> ScOT:
    """A new model of the preset, or `--init_from` a checkpoint; either way its config describes the data.

    The pairs are normalised with the datasets' statistics and their lead times divided by the datasets' time
    scales, so the config gets those (of the first dataset having each channel; every dataset's own values
    are exported in training_data.json) and `predict` on physical fields matches what training saw.
    """
    data_stats = dict(
        input_mean=[stats[c][0] for c in vocabulary],
        input_std=[stats[c][1] for c in vocabulary],
        output_mean=[stats[c][0] for c in targets],
        output_std=[stats[c][1] for c in targets],
        time_scale=time_scale,
    )
    if model_args.init_from:
        model = ScOT.from_pretrained(model_args.init_from)
        have, want = model.config.channel_names, list(vocabulary)
        if have != want or model.config.output_channel_names != list(targets):
            raise ValueError(
                f"--init_from {model_args.init_from} has channels {have} -> "
                f"{model.config.output_channel_names}; the data needs {want} -> {list(targets)} "
                f"(channel surgery is fine-tuning's job; pretraining continues a model as it is)"
            )
        for key, value in data_stats.items():
            setattr(model.config, key, value)
        return model
    config = ScOTConfig.from_preset(
        model_args.preset,
        channel_names=list(vocabulary),
        output_channel_names=list(targets),
        image_size=list(grid) if grid[0] != grid[1] else grid[0],
        input_resampling=model_args.input_resampling,
        **data_stats,
    )
    return ScOT(config)


_FLOPS: dict[tuple, float] = {}  # by geometry: a study or benchmark runs many models of one geometry per process


def train_flops_per_sample(config: ScOTConfig, grid: tuple[int, int]) -> float:
    """Forward + backward FLOPs of one sample, counted once per geometry on the meta device (no memory, no
    compute; ~1.7 s for the tiny model, hence the cache)."""
    fields = ("image_size", "patch_size", "num_channels", "num_out_channels", "embed_dim", "depths", "num_heads")
    fields += ("skip_connections", "window_size", "mlp_ratio", "use_conditioning", "learn_residual", "input_resampling")
    key = (tuple(grid), *(json.dumps(getattr(config, f)) for f in fields))
    if key not in _FLOPS:
        _FLOPS[key] = _count_train_flops(config, grid)
    return _FLOPS[key]


def _count_train_flops(config: ScOTConfig, grid: tuple[int, int]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = ScOT(config)
        x, t = torch.zeros(1, config.num_channels, *grid), torch.zeros(1)
    with FlopCounterMode(display=False) as counter:
        model(pixel_values=x, time=t).output.sum().backward()
    return float(counter.get_total_flops())


def module_train_flops(model: torch.nn.Module, channels: int, grid: tuple[int, int]) -> float:
    """Forward + backward FLOPs of one sample through `model` (run once on a zero input; FFTs are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    x, t = torch.zeros(1, channels, *grid, device=device), torch.zeros(1, device=device)
    with FlopCounterMode(display=False) as counter:
        model(pixel_values=x, time=t).output.sum().backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def peak_flops(device: torch.device, precision: str, datasheet_tflops: float | None) -> tuple[float, str]:
    """FLOP/s the MFU is relative to: a datasheet figure if given, else a large matmul measured here."""
    if datasheet_tflops:
        return datasheet_tflops * 1e12, "datasheet"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, reps = time.perf_counter(), 5
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start), f"measured ({n}x{n} {precision} matmul)"


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


# ----------------------------------------------------------------------------------------------- the run
def trained_leads(parts, rollout_weight: float = 0.0) -> tuple[float, float | None]:
    """(largest lead time the model is trained to predict in one call, the rollout-training step or None), model
    units. The pairs' largest lead, unless the rollout weight is 1 and no pair is trained: then the longest step
    of the rollout sequences (a model trained so never saw the pairs' longer leads; jumping by them would be
    extrapolating)."""
    rollout = [p for p in parts if p.rollout_steps]
    if rollout and rollout_weight >= 1 and len(rollout) < len(parts):
        names = [p.source.info.name for p in parts if p not in rollout]
        raise ValueError(
            f"--rollout_weight {rollout_weight:g} trains no pair, so {names} (no rollouts) would not train"
        )
    steps = [p.rollout_time for p in rollout if p.rollout_time is not None]
    step = float(max(steps)) if steps else None
    if rollout and rollout_weight >= 1:
        return float(max(p.rollout_max_step for p in rollout)), step
    return float(max(p.lead_times.max() for p in parts)), step


class RolloutObjective:
    """The training loss with rollout sequences in the batch: (1 - w) * pair loss + w * K-step rollout loss.

    K follows the curriculum of `TrainArguments.rollout_length` (a function of the step only, so a resumed run
    trains the same K); the pair loss is skipped at w = 1. Activations: pushforward keeps those of two forward
    passes (the pair's and the rollout's last step; the K - 1 steps before run without gradient), unrolled those
    of K + 1. Under DDP or DeepSpeed all forward passes of a step go through the wrapped model before its one
    backward, as gradient accumulation's do.
    """

    KEYS = ("rollout_inputs", "rollout_labels", "rollout_time")
    MASK = "rollout_mask"  # per sample, 0 for a steady problem's placeholder (foundation.data.Mixture)

    def __init__(self, config, train_args: TrainArguments, steps: int):
        if feedable(config) is None:  # now, not at the first step of a launched run
            raise ValueError(
                f"--rollout_steps {steps}: the model's outputs {config.output_channel_names} are not all among its "
                f"inputs {config.channel_names}, so a rollout cannot feed them back"
            )
        self.config, self.args, self.steps = config, train_args, steps

    def __call__(self, model: torch.nn.Module, batch: dict, step: int) -> torch.Tensor:
        batch = dict(batch)
        inputs, labels, lead = (batch.pop(k) for k in self.KEYS)
        keep = batch.pop(self.MASK, None)
        mask = batch.get("channel_mask")
        if keep is not None:
            mask = (torch.ones_like(labels[:, 0, :, 0, 0]) if mask is None else mask) * keep[:, None].to(labels.dtype)
        length = self.args.rollout_length(step, self.steps)
        lead = lead[:, :length] if lead.dim() == 2 else lead  # split sequences: one lead time per step
        loss = unrolled_loss(
            model,
            inputs,
            labels[:, :length],
            lead,
            mode=self.args.rollout_mode,
            noise_std=self.args.rollout_noise,
            channel_mask=mask,
            config=self.config,
        )
        w = self.args.rollout_weight
        return loss if w >= 1 else (1 - w) * model(**batch).loss + w * loss


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
        self.loader = DataLoader(
            data.train_set,
            batch_size=train_args.batch_size,
            sampler=data.sampler,
            num_workers=data_args.num_workers,
            drop_last=True,
            persistent_workers=data_args.num_workers > 0,
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


class Pretrainer(RunView):
    """One pretraining run: build the parts, train (resuming if a checkpoint exists), evaluate, export."""

    tag = "pretrain"

    def __init__(self, model_args: ModelArguments, data_args: DataArguments, train_args: TrainArguments):
        from accelerate.utils import set_seed

        accelerator = build_accelerator(train_args, self.tag)
        set_seed(train_args.seed)  # identical initial weights on every rank
        data = build_data(data_args, train_args.seed, accelerator.process_index, accelerator.num_processes)
        model = build_model(
            model_args, data.vocabulary, data.targets, data.stats, data.sources[0].grid, data.sources[0].info.time_scale
        )
        if model_args.gradient_checkpointing:
            model.activation_checkpointing_enable()
        trainable = [p for p in model.parameters() if p.requires_grad]  # one group at the run's learning rate
        self.run = PreparedRun(
            accelerator, model, [{"params": trainable}], data, model_args, data_args, train_args, self.tag
        )
        self.accelerator, self.args = accelerator, train_args

    def evaluate(self, breakdown: bool = False) -> dict:
        return self.run.evaluate(breakdown)

    def finish(self, state: TrainState) -> dict:
        metrics = self.run.final_metrics()
        return {"metrics": metrics, "model": str(self.run.export(metrics, state.step))}

    def train(self, callbacks: Sequence[Callable[[TrainState], None]] = ()) -> dict:
        return run(self.run.parts(self.finish), self.args, callbacks)
