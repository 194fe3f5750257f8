"""Fine-tuning runs: pretraining's loop (accelerate, DeepSpeed, checkpoints, resume) with the model built from a
pretrained checkpoint by channel surgery, and the strategy deciding which parameters train at which rate.

    full     every weight; body at --learning_rate, embedding/recovery at --head_learning_rate, the
             time-conditioned norms at --norm_learning_rate (Poseidon's fine-tuning recipe)
    head     only embedding and recovery (--head_learning_rate)
    lora     peft adapters on attention/MLP projections (+ embedding/recovery), --head_learning_rate
    refiner  `full` for --max_steps (may be 0), then Spectral-Refiner (finetune.refiner) on cached features

After training, the model in `output_dir/model` (and `output_dir/adapter` for LoRA) is evaluated on the held-out
split (`finetune.evaluate`): `evaluation.json` and plots in `output_dir/evaluation/`.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch

from foundation import ScOT
from foundation.data import All2AllPairs, Mixture
from foundation.modeling_scot import ConditionalLayerNorm
from pretrain.config import DataArguments, ModelArguments, TrainArguments
from pretrain.trainer import Pretrainer, build_data

from . import lora, refiner
from .config import FinetuneArguments, check
from .data import resolve_specs
from .surgery import adapt_channels

HEAD_PREFIXES = ("embeddings.patch_embeddings", "patch_recovery")


def parameter_roles(model: torch.nn.Module) -> dict[str, list[torch.nn.Parameter]]:
    """The model's parameters by role: 'head' (embedding, recovery), 'time_norm' (lead-time-conditioned norm
    gains and biases), 'body' (the rest)."""
    time_norm = set()
    for module in model.modules():
        if isinstance(module, ConditionalLayerNorm) and module.use_conditioning:
            time_norm.update(id(p) for p in module.parameters())
    roles: dict[str, list] = {"head": [], "time_norm": [], "body": []}
    for name, p in model.named_parameters():
        name = name.removeprefix("base_model.model.")
        role = "head" if name.startswith(HEAD_PREFIXES) else "time_norm" if id(p) in time_norm else "body"
        roles[role].append(p)
    return roles


@contextmanager
def full_weights():
    """Load whole tensors even under a ZeRO-3 launch, where transformers would partition them at load time.

    Channel surgery copies rows of the loaded tensors; DeepSpeed partitions the finished model in `prepare`.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    reference = getattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref", None)
    config = reference() if reference is not None else None
    if config is None:
        yield
        return
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(config)


def count_parameters(model: torch.nn.Module) -> dict[str, int | float]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total, "trainable_fraction": round(trainable / max(total, 1), 6)}


class Finetuner(Pretrainer):
    """One fine-tuning run (see the module docstring for the strategies)."""

    tag = "finetune"

    def __init__(
        self, model_args: ModelArguments, data_args: DataArguments, train_args: TrainArguments, tune: FinetuneArguments
    ):
        check(tune)
        if not model_args.init_from:
            raise ValueError("--init_from: the pretrained model (folder or Hub repo id) is required")
        self.tune = tune
        data_args = copy.deepcopy(data_args)
        data_args.datasets = resolve_specs(data_args.datasets, Path(train_args.output_dir).parent / "data")
        super().__init__(model_args, data_args, train_args)
        info = self.parameters_info  # counted in param_groups, before ZeRO-3 partitions the tensors
        stage = f" in the {train_args.max_steps} full fine-tuning steps" if tune.strategy == "refiner" else ""
        self.accelerator.print(
            f"[finetune] strategy {tune.strategy}{' (from scratch)' if tune.from_scratch else ''}: "
            f"{info['trainable']:,} of {info['total']:,} parameters train{stage} "
            f"({100 * info['trainable_fraction']:.2f}%)"
            + ("; then only the last layer and the spectral head" if tune.strategy == "refiner" else "")
        )

    # ------------------------------------------------------------------ hooks of the pretraining loop
    def _build_data(self):
        acc, seed, tune = self.accelerator, self.args.seed, self.tune
        data = build_data(self.data_args, seed, acc.process_index, acc.num_processes, tune.train_trajectories)
        if tune.strategy == "refiner" and tune.refiner_loss == "residual":
            # What only the residual loss needs (viscosity, periodic box, u and v) fails now, not after the
            # fine-tune that precedes the refinement; the model's outputs will be these targets.
            sources, _, _, _, _, targets, _ = data
            refiner.residual_parameters(sources[0].info, targets)
        return data

    def build_model(self, grid: tuple[int, int]) -> torch.nn.Module:
        tune, stats = self.tune, self.stats
        with full_weights():  # surgery reads and writes whole tensors, also under ZeRO-3
            base = ScOT.from_pretrained(self.model_args.init_from)
        model = adapt_channels(
            base, self.vocabulary, self.targets, input_stats=stats, output_stats=stats, seed=self.args.seed
        )
        model.config.time_scale = float(self.sources[0].info.time_scale)
        if tune.from_scratch:  # the same architecture and data description, none of the pretrained weights
            torch.manual_seed(self.args.seed)
            model = ScOT(model.config)
        if tune.strategy == "head":
            roles = parameter_roles(model)
            for p in model.parameters():
                p.requires_grad_(False)
            for p in roles["head"]:
                p.requires_grad_(True)
        elif tune.strategy == "lora":
            changed = list(base.config.channel_names) != list(self.vocabulary) or list(
                base.config.output_channel_names
            ) != list(self.targets)
            if changed and not tune.lora_train_head:
                raise ValueError(
                    "--lora_train_head False: the data's channels differ from the pretrained model's, so the "
                    "new embedding/recovery rows must train (keep --lora_train_head True)"
                )
            self.lora_config = lora.lora_config(
                tune.lora_rank, tune.lora_alpha, tune.lora_dropout, tune.lora_targets, tune.lora_train_head
            )
            model = lora.wrap(model, self.lora_config)
        return model

    def extra_run_args(self) -> dict:
        return {"finetune": asdict(self.tune)}

    def param_groups(self, model: torch.nn.Module) -> list[dict]:
        self.parameters_info = count_parameters(model)
        tune, lr = self.tune, self.args.learning_rate
        trainable = [p for p in model.parameters() if p.requires_grad]
        if tune.from_scratch:
            return [{"params": trainable, "lr": lr}]
        if tune.strategy in ("head", "lora"):
            return [{"params": trainable, "lr": tune.head_learning_rate}]
        roles = parameter_roles(model)  # full, and the full fine-tune that precedes the refiner
        return [
            {"params": roles["body"], "lr": lr},
            {"params": roles["head"], "lr": tune.head_learning_rate},
            {"params": roles["time_norm"], "lr": tune.norm_learning_rate},
        ]

    def export(self, metrics: dict) -> Path:
        if self.tune.strategy != "lora":
            return super().export(metrics)
        acc = self.accelerator
        state = acc.get_state_dict(self.model)  # consolidated (ZeRO-3 too), adapter-wrapped names
        folder = self.out / "model"
        if acc.is_main_process:
            config = copy.deepcopy(self.config)
            config.dtype = torch.float32
            with full_weights():  # under ZeRO-3, peft would gather (a collective) on this one rank and hang
                fresh = lora.wrap(ScOT(config), copy.deepcopy(self.lora_config))
            fresh.load_state_dict({k: v.float().cpu() for k, v in state.items()})
            lora.save_adapter(fresh, self.out / "adapter", self.model_args.init_from)
            fresh.merge_and_unload().save_pretrained(folder, safe_serialization=True)
            (self.out / "metrics.json").write_text(json.dumps({"step": self.step, **metrics}, indent=2))
        acc.wait_for_everyone()
        return folder

    # ------------------------------------------------------------------ the run
    def held_out(self, split: str) -> Mixture:
        options = dict(
            stride=self.data_args.stride,
            max_snapshots=self.data_args.max_snapshots,
            include_identity=self.data_args.include_identity,
        )
        parts = [All2AllPairs(s, split, **options) for s in self.sources]
        mean = [self.stats[c][0] for c in self.vocabulary]
        std = [self.stats[c][1] for c in self.vocabulary]
        return Mixture(parts, self.vocabulary, self.targets, input_mean=mean, input_std=std)

    def train(self) -> dict:
        result = super().train()
        if "stopped_at" in result:  # interrupted on purpose (tests of resumption)
            return result
        acc = self.accelerator
        result["strategy"] = self.tune.strategy
        result["from_scratch"] = self.tune.from_scratch
        result["parameters"] = self.parameters_info
        if self.tune.strategy == "refiner":
            result["refiner"] = self.run_refiner(Path(result["model"]))
        if acc.is_main_process:
            from .evaluate import evaluate_run

            with full_weights():  # one rank loading under a ZeRO-3 launch must not enter collectives
                result["evaluation"] = evaluate_run(self, Path(result["model"]), self.out / "evaluation")
            (self.out / "result.json").write_text(json.dumps(result, indent=2, default=str))
        acc.wait_for_everyone()
        return result

    def run_refiner(self, model_dir: Path) -> dict:
        """Spectral-Refiner on the model just exported (after the optional full fine-tune); rewrites model_dir."""
        acc, tune = self.accelerator, self.tune
        summary: dict = {}
        if acc.is_main_process:
            start = time.perf_counter()
            with full_weights():
                model = ScOT.from_pretrained(model_dir).eval()
            for p in model.parameters():
                p.requires_grad_(False)
            residual_mode = tune.refiner_loss == "residual"
            fit_set = self.train_set if tune.refiner_fit_split == "train" else self.held_out(tune.refiner_fit_split)
            fit_rows = refiner.split_indices(len(fit_set), tune.refiner_max_pairs)
            val_rows = refiner.split_indices(len(self.val_set), self.data_args.eval_pairs)
            residual = None
            if residual_mode:
                residual = refiner.NavierStokesResidual(
                    model.config, self.sources[0].info, tune.sobolev_s, tune.sobolev_alpha, self.vocabulary
                )
            fit = refiner.cache_features(model, fit_set, fit_rows, with_tangents=residual_mode)
            val = refiner.cache_features(model, self.val_set, val_rows)
            cached_s = time.perf_counter() - start
            refined, history = refiner.refine(
                model,
                fit,
                val,
                steps=tune.refiner_steps,
                lr=tune.refiner_learning_rate,
                bias_lr=tune.refiner_bias_learning_rate,
                batch_size=tune.refiner_batch_size,
                s=tune.sobolev_s,
                alpha=tune.sobolev_alpha,
                lengths=refiner.box_lengths(self.sources[0].info.domain),
                residual=residual,
                train_recovery=tune.refiner_train_recovery,
                eval_every=tune.refiner_eval_every,
                patience=tune.refiner_patience,
                seed=self.args.seed,
                log=acc.print,
            )
            before = model_dir.with_name("model-before-refiner")
            if before.exists():
                shutil.rmtree(before)
            os.replace(model_dir, before)  # the unrefined model stays available (and is evaluated too)
            refined.save_pretrained(model_dir)
            if (before / "training_data.json").exists():
                shutil.copy2(before / "training_data.json", model_dir / "training_data.json")
            summary = {
                "loss": tune.refiner_loss,
                "fit_pairs": len(fit),
                "val_pairs": len(val),
                "cache_s": round(cached_s, 2),
                "total_s": round(time.perf_counter() - start, 2),
                "val_median_rel_l1_before": history["val_median_rel_l1"][0][1],
                "val_median_rel_l1_after": history["best_val_median_rel_l1"],
                "best_step": history["best_step"],
                "steps_run": history["steps_run"],
                "model_before_refiner": str(before),
                "head_parameters": sum(p.numel() for p in refined.head.parameters())
                + sum(p.numel() for p in refined.model.patch_recovery.parameters()),
            }
            (self.out / "refiner_history.json").write_text(json.dumps(history, indent=2))
        acc.wait_for_everyone()
        return summary
