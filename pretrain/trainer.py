"""Pretraining scOT on all2all pairs with accelerate: one CPU process, DDP, or DeepSpeed ZeRO 1-3.

Parallelism and precision come from the launcher (`accelerate launch --config_file launch/accelerate/...`);
they are decided here, in one place, and logged with the reason. The data pipeline shards itself
(`RandomPairSampler` per rank), so the DataLoader is not handed to accelerate.

Checkpoints are the full training state (model, optimizer and scheduler through `accelerator.save_state`,
sharded by DeepSpeed when it runs; sampler position; step; non-finite counter), written into a hidden folder
and renamed into place once every rank has finished, the last `keep_last` kept. A resumed run continues the
uninterrupted run's loss curve exactly. The final model is exported with `save_pretrained` (safetensors +
config with channels, grid, normalisation and time scale), consolidated from ZeRO-3 shards when needed.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from foundation import ScOT, ScOTConfig
from foundation.data import All2AllPairs, Mixture, RandomPairSampler, open_source
from foundation.data.memory import keep_freed_memory
from foundation.metrics import relative_error_per_sample, summary

from .config import DataArguments, ModelArguments, TrainArguments


class NonFiniteLoss(RuntimeError):
    """Too many non-finite losses in a row; the last good checkpoint is intact."""


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


def build_accelerator(train: TrainArguments, tag: str = "pretrain"):
    """The Accelerator, with the choices the launcher leaves to us made explicit and logged."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, InitProcessGroupKwargs

    resolve_deepspeed_config_file()
    handlers = []
    if not torch.cuda.is_available():
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # gloo is the CPU backend; accelerate would otherwise pick one DeepSpeed cannot use on the CPU.
            handlers.append(InitProcessGroupKwargs(backend="gloo"))
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        try:  # DeepSpeed JIT-compiles a shared-memory op at every CPU start (~40 s) unless told not to
            import deepspeed.ops

            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        except ImportError:
            pass
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


def build_data(data: DataArguments, seed: int, rank: int, world: int, max_trajectories: int | None = None):
    """Sources -> all2all pairs -> one Mixture on the channel vocabulary; the train sampler of this rank.

    `max_trajectories` keeps only the first N training trajectories of each source (sample-efficiency studies).
    """
    sources = [open_source(spec, fill_stats=True) for spec in data.datasets]
    options = dict(stride=data.stride, max_snapshots=data.max_snapshots, include_identity=data.include_identity)
    train_parts = [All2AllPairs(s, "train", **options) for s in sources]
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
    return sources, train_set, val_set, sampler, vocabulary, targets, stats


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


def train_flops_per_sample(config: ScOTConfig, grid: tuple[int, int]) -> float:
    """Forward + backward FLOPs of one sample, counted once on the meta device (no memory, no compute)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = ScOT(config)
        x, t = torch.zeros(1, config.num_channels, *grid), torch.zeros(1)
    with FlopCounterMode(display=False) as counter:
        model(pixel_values=x, time=t).output.sum().backward()
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
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ----------------------------------------------------------------------------------------------- the run
class Pretrainer:
    """One pretraining run: build, train (resuming if a checkpoint exists), evaluate, export."""

    def __init__(self, model_args: ModelArguments, data_args: DataArguments, train_args: TrainArguments):
        from accelerate.utils import set_seed

        self.model_args, self.data_args, self.args = model_args, data_args, train_args
        keep_freed_memory()  # batches reuse freed memory instead of page-faulting fresh mmaps every step
        self.out = Path(train_args.output_dir)
        self.accelerator = acc = build_accelerator(train_args, self.tag)
        set_seed(train_args.seed)  # identical initial weights on every rank
        (self.sources, self.train_set, self.val_set, self.sampler, self.vocabulary, self.targets, self.stats) = (
            self._build_data()
        )
        grid = self.sources[0].grid
        model = self.build_model(grid)
        if model_args.gradient_checkpointing:
            model.activation_checkpointing_enable()
        self.group_names = self._group_names(model.config)
        self.config = model.config
        self.flops_per_sample = train_flops_per_sample(self.config, grid)
        self.peak, self.peak_source = peak_flops(acc.device, train_args.precision, train_args.peak_tflops)
        optimizer = torch.optim.AdamW(
            self.param_groups(model), lr=train_args.learning_rate, weight_decay=train_args.weight_decay
        )
        scheduler = cosine_with_warmup(
            optimizer, train_args.warmup_steps, train_args.max_steps, train_args.min_lr_ratio
        )
        if model_args.compile:
            model = torch.compile(model)
        self.model, self.optimizer, self.scheduler = acc.prepare(model, optimizer, scheduler)
        self.loader = DataLoader(
            self.train_set,
            batch_size=train_args.batch_size,
            sampler=self.sampler,
            num_workers=data_args.num_workers,
            drop_last=True,
            persistent_workers=data_args.num_workers > 0,
        )
        self.step, self.epoch, self.consumed, self.nonfinite = 0, 0, 0, 0
        self.throughput: dict | None = None
        self.history: list[dict] = []

    # Hooks that fine-tuning overrides (finetune.trainer.Finetuner): what model, which parameters train how.
    tag = "pretrain"

    def _build_data(self):
        acc = self.accelerator
        return build_data(self.data_args, self.args.seed, acc.process_index, acc.num_processes)

    def build_model(self, grid: tuple[int, int]) -> torch.nn.Module:
        time_scale = self.sources[0].info.time_scale
        return build_model(self.model_args, self.vocabulary, self.targets, self.stats, grid, time_scale=time_scale)

    def param_groups(self, model: torch.nn.Module) -> list[dict]:
        """AdamW parameter groups; every parameter at the run's learning rate when pretraining."""
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def extra_run_args(self) -> dict:
        return {}

    @staticmethod
    def _group_names(config: ScOTConfig) -> list[str]:
        groups = config.channel_slice_list_normalized_loss
        names = config.output_channel_names
        return ["+".join(names[a:b]) for a, b in zip(groups[:-1], groups[1:])]

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoints(self) -> Path:
        return self.out / "checkpoints"

    def _complete_checkpoints(self) -> list[Path]:
        if not self.checkpoints.exists():
            return []
        done = [p for p in self.checkpoints.glob("step-*") if (p / "trainer_state.json").exists()]
        return sorted(done, key=lambda p: int(p.name.split("-")[1]))

    def save_checkpoint(self) -> Path:
        acc = self.accelerator
        final = self.checkpoints / f"step-{self.step:07d}"
        partial = self.checkpoints / f".partial-step-{self.step:07d}"
        if acc.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(partial))
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {
                "step": self.step,
                "epoch": self.epoch,
                "consumed": self.consumed,
                "nonfinite": self.nonfinite,
                "world_size": acc.num_processes,
                "sampler": self.sampler.state_dict(consumed=self.consumed),
            }
            (partial / "trainer_state.json").write_text(json.dumps(state, indent=2))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(partial, final)  # readers see the previous checkpoints or this complete one
            for old in self._complete_checkpoints()[: -self.args.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def maybe_resume(self) -> bool:
        if not self.args.resume:
            return False
        done = self._complete_checkpoints()
        if not done:
            return False
        last = done[-1]
        state = json.loads((last / "trainer_state.json").read_text())
        if state["world_size"] != self.accelerator.num_processes:
            raise ValueError(
                f"{last}: saved by {state['world_size']} processes, resumed with "
                f"{self.accelerator.num_processes}; resume with the same world size"
            )
        self.accelerator.load_state(str(last))
        self.step, self.epoch, self.consumed = state["step"], state["epoch"], state["consumed"]
        self.nonfinite = state["nonfinite"]
        self.sampler.load_state_dict({**state["sampler"], "epoch": self.epoch, "position": self.consumed})
        self.train_set.set_epoch(self.epoch)
        self.accelerator.print(f"[{self.tag}] resumed from {last} (step {self.step})")
        return True

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def evaluate(self, breakdown: bool = False) -> dict:
        """Median relative L1 (%) per channel group on a fixed subset of validation pairs (all ranks together).

        With `breakdown`, also per dataset and per lead time (under "by_dataset" / "by_lead_time"), for the
        model card.
        """
        acc, model = self.accelerator, self.model
        model.eval()
        n = min(self.data_args.eval_pairs, len(self.val_set))
        picks = np.linspace(0, len(self.val_set) - 1, n).round().astype(int)[acc.process_index :: acc.num_processes]
        per_rank = math.ceil(n / acc.num_processes)
        # columns: one per channel group, then dataset index and lead time
        errors = torch.full((per_rank, len(self.group_names) + 2), float("nan"), device=acc.device)
        groups = self.config.channel_slice_list_normalized_loss
        for start in range(0, len(picks), self.args.batch_size):
            items = [self.val_set[int(k)] for k in picks[start : start + self.args.batch_size]]
            batch = {k: torch.stack([it[k] for it in items]).to(acc.device) for k in items[0]}
            pred = model(pixel_values=batch["pixel_values"], time=batch["time"]).output
            rows = slice(start, start + len(items))
            errors[rows, :-2] = relative_error_per_sample(
                pred, batch["labels"], groups, channel_mask=batch["channel_mask"]
            )
            errors[rows, -2], errors[rows, -1] = batch["dataset"].float(), batch["time"].float()
        gathered = acc.gather(errors).cpu()
        gathered = gathered[~torch.isnan(gathered[:, :-2]).all(dim=1)]
        model.train()
        out: dict = summary(gathered[:, :-2], self.group_names)
        if breakdown:
            names = [Path(spec).stem if ":" not in spec else spec.split(":")[0] for spec in self.data_args.datasets]
            out["by_dataset"] = {
                names[k]: summary(gathered[gathered[:, -2] == k][:, :-2], self.group_names)
                for k in range(len(names))
                if (gathered[:, -2] == k).any()
            }
            leads = torch.round(gathered[:, -1] * 100) / 100
            out["by_lead_time"] = {
                f"{float(t):.2f}": summary(gathered[leads == t][:, :-2], self.group_names)["median_rel_l1/mean"]
                for t in torch.unique(leads)
            }
        return out

    @torch.no_grad()
    def rollout_check(self, trajectories: int = 2) -> dict[str, float]:
        """Autoregressive rollout (one snapshot interval per call) vs one direct call, to the last snapshot.

        Reported as the median relative L1 (%) at the final time over a few validation trajectories per
        dataset; only for datasets whose inputs are the outputs (no static fields).
        """
        acc, model = self.accelerator, self.model
        model.eval()
        errors = {"direct": [], "rollout": []}
        groups = self.config.channel_slice_list_normalized_loss
        for k, part in enumerate(self.val_set.parts):
            if part.source.info.static_names or part.source.info.steady or len(part.snapshots) < 3:
                continue
            pattern = {tuple(ab): p for p, ab in enumerate(part.pattern.tolist())}
            last = len(part.snapshots) - 1
            for slot in range(min(trajectories, len(part.trajectories))):
                base = slot * len(part.pattern)
                direct = self.val_set.item(k, base + pattern[(0, last)])
                device = acc.device
                truth, mask = direct["labels"][None].to(device), direct["channel_mask"][None].to(device)
                x = direct["pixel_values"][None].to(device)
                fill = x.clone()
                pred = model(pixel_values=x, time=direct["time"][None].to(device)).output
                errors["direct"].append(relative_error_per_sample(pred, truth, groups, channel_mask=mask))
                for step in range(last):
                    one = self.val_set.item(k, base + pattern[(step, step + 1)])
                    x = model(pixel_values=x, time=one["time"][None].to(device)).output
                    x = torch.where(mask[:, :, None, None] > 0, x, fill)  # absent channels keep their fill
                errors["rollout"].append(relative_error_per_sample(x, truth, groups, channel_mask=mask))
        model.train()
        out = {}
        for name, values in errors.items():
            if values:
                out[f"{name}_final_median_rel_l1"] = float(torch.nanmedian(torch.cat(values)).cpu())
        return out

    # ------------------------------------------------------------------ training
    def _batches(self):
        while True:
            yield from self.loader
            self.epoch, self.consumed = self.epoch + 1, 0
            self.sampler.set_epoch(self.epoch)
            self.train_set.set_epoch(self.epoch)  # moves the sub-sampling of down-weighted datasets

    def train(self) -> dict:
        from tqdm.auto import tqdm

        acc, args = self.accelerator, self.args
        resumed = self.maybe_resume()
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            run_args = {
                "model": asdict(self.model_args),
                "data": asdict(self.data_args),
                "train": asdict(args),
                "processes": acc.num_processes,
                "distributed": acc.distributed_type.value,
                "device": str(acc.device),
                "torch": torch.__version__,
                **self.extra_run_args(),
            }
            (self.out / "run_args.json").write_text(json.dumps(run_args, indent=2, default=str))
        if args.tracker != "none":
            acc.init_trackers(self.tag, config=_flat_config(self.model_args, self.data_args, args))
        losses_file = self.out / "losses.jsonl"
        if acc.is_main_process and not resumed and losses_file.exists():
            losses_file.unlink()
        if acc.is_main_process and resumed and losses_file.exists():  # drop entries past the checkpoint
            kept = [line for line in losses_file.read_text().splitlines() if json.loads(line)["step"] <= self.step]
            losses_file.write_text("".join(k + "\n" for k in kept))
        self.model.train()
        batches = self._batches()
        bar = tqdm(
            total=args.max_steps,
            initial=self.step,
            disable=not acc.is_main_process,
            desc=self.tag,
            mininterval=0.1 if sys.stderr.isatty() else 10.0,
        )  # logs and CI get a line every 10 s
        start, seen, first_step = time.perf_counter(), 0, self.step
        while self.step < args.max_steps:
            step_loss = torch.zeros((), device=acc.device)
            skipped = False
            for _ in range(args.gradient_accumulation_steps):
                batch = next(batches)
                self.consumed += args.batch_size
                batch = {k: v.to(acc.device) for k, v in batch.items() if k != "dataset"}
                with acc.accumulate(self.model):
                    loss = self.model(**batch).loss
                    bad = acc.reduce(torch.tensor(float(not torch.isfinite(loss)), device=acc.device), "sum")
                    if bad.item() > 0:  # every rank skips together, or the collectives would hang
                        skipped = True
                        self.optimizer.zero_grad()
                        continue
                    acc.backward(loss)
                    if acc.sync_gradients and args.max_grad_norm > 0 and acc.state.deepspeed_plugin is None:
                        acc.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad()
                    step_loss += loss.detach() / args.gradient_accumulation_steps
            if skipped:
                self.nonfinite += 1
                acc.print(
                    f"[{self.tag}] step {self.step + 1}: non-finite loss, step skipped ({self.nonfinite} in a row)"
                )
                if self.nonfinite >= args.max_nonfinite_steps:
                    raise NonFiniteLoss(
                        f"{self.nonfinite} non-finite losses in a row at step {self.step + 1}; the "
                        f"last good checkpoint in {self.checkpoints} is intact"
                    )
                continue
            self.nonfinite = 0
            self.step += 1
            if self.step - first_step == 2:  # the first steps pay for allocation and warm-up
                start, seen = time.perf_counter(), 0
            elif self.step - first_step > 2:
                seen += args.batch_size * args.gradient_accumulation_steps
            mean_loss = acc.reduce(step_loss, "mean").item()
            lr = self.scheduler.get_last_lr()[0]
            if acc.is_main_process:
                with losses_file.open("a") as f:
                    f.write(json.dumps({"step": self.step, "loss": mean_loss, "lr": lr}) + "\n")
            rate = seen / max(time.perf_counter() - start, 1e-9)  # per process
            self.throughput = {"samples_per_s_per_process": rate, "mfu": rate * self.flops_per_sample / self.peak}
            bar.set_postfix(
                loss=f"{mean_loss:.4f}",
                lr=f"{lr:.2e}",
                samples_s=f"{rate:.1f}",
                mfu=f"{100 * self.throughput['mfu']:.1f}%",
                refresh=False,  # update() redraws, at most every mininterval
            )
            bar.update(1)
            if self.step % args.log_every == 0 and args.tracker != "none":
                acc.log(
                    {
                        "train/loss": mean_loss,
                        "train/lr": lr,
                        "train/samples_per_s": rate,
                        "train/mfu": self.throughput["mfu"],
                    },
                    step=self.step,
                )
            if args.eval_every and self.step % args.eval_every == 0 and self.step < args.max_steps:
                metrics = self.evaluate()
                if args.tracker != "none":
                    acc.log({f"val/{k}": v for k, v in metrics.items()}, step=self.step)
            if (args.save_every and self.step % args.save_every == 0) or self.step == args.max_steps:
                self.save_checkpoint()
            if args.stop_after is not None and self.step >= args.stop_after:
                bar.close()
                result = {"stopped_at": self.step, **self.performance()}
                if acc.is_main_process:
                    (self.out / "result.json").write_text(json.dumps(result, indent=2))
                return result
        bar.close()
        metrics = self.evaluate(breakdown=True)
        if self.vocabulary == self.targets:  # a rollout needs outputs that can be fed back as inputs
            metrics.update({f"rollout/{k}": v for k, v in self.rollout_check().items()})
        export = self.export(metrics)
        if args.tracker != "none":
            acc.log({f"val/{k}": v for k, v in metrics.items() if isinstance(v, float)}, step=self.step)
            acc.end_training()
        result = {"step": self.step, "metrics": metrics, "model": str(export), **self.performance()}
        if acc.is_main_process:
            (self.out / "result.json").write_text(json.dumps(result, indent=2))
        return result

    def performance(self) -> dict:
        """Throughput per process and the MFU estimate (model FLOPs over the peak it is relative to)."""
        out = {
            "train_gflop_per_sample": round(self.flops_per_sample / 1e9, 3),
            "peak_tflops": round(self.peak / 1e12, 3),
            "peak_source": self.peak_source,
            "processes": self.accelerator.num_processes,
        }
        if getattr(self, "throughput", None):
            out["samples_per_s_per_process"] = round(self.throughput["samples_per_s_per_process"], 3)
            out["mfu"] = round(self.throughput["mfu"], 4)
        return out

    def export(self, metrics: dict) -> Path:
        """save_pretrained folder of the final model (consolidated from ZeRO-3 shards when needed)."""
        acc = self.accelerator
        state = acc.get_state_dict(self.model)
        folder = self.out / "model"
        if acc.is_main_process:
            unwrapped = acc.unwrap_model(self.model)
            unwrapped = getattr(unwrapped, "_orig_mod", unwrapped)  # torch.compile wrapper
            # A fresh fp32 copy: the trained module may hold bf16 weights (DeepSpeed bf16) and its config
            # would then tell every later from_pretrained to load in bf16.
            config = copy.deepcopy(unwrapped.config)
            config.dtype = torch.float32
            fresh = ScOT(config)
            fresh.load_state_dict({k: v.float().cpu() for k, v in state.items()})
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
                for spec, s in zip(self.data_args.datasets, self.sources)
            ]
            (folder / "training_data.json").write_text(json.dumps(datasets, indent=2, default=str))
            (self.out / "metrics.json").write_text(json.dumps({"step": self.step, **metrics}, indent=2))
        acc.wait_for_everyone()
        return folder


def _flat_config(*parts) -> dict:
    out = {}
    for part in parts:
        for key, value in asdict(part).items():
            out[key] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out
