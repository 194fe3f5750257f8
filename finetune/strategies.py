"""Fine-tuning strategies: each says how to prepare the model, which parameters train at which rate, how to
export the result, and what runs after the training loop.

    full     every weight; body at --learning_rate, embedding/recovery at --head_learning_rate, the
             time-conditioned norms at --norm_learning_rate (Poseidon's fine-tuning recipe)
    head     only embedding and recovery (--head_learning_rate)
    lora     peft adapters on attention/MLP projections (+ embedding/recovery), --head_learning_rate
    refiner  `full` for --max_steps (may be 0), then Spectral-Refiner (finetune.refiner) on cached features
    fno      the baseline: neuraloperator's FNO (finetune.baselines) from scratch on the same data description
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from foundation import ScOT
from foundation.compat import whole_weights_under_zero3
from foundation.evaluation import held_out_pairs
from foundation.modeling_scot import ConditionalLayerNorm
from pretrain.prepared import PreparedRun

from . import lora, refiner
from .config import FinetuneArguments

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


class Strategy:
    """Full fine-tuning; the other strategies change what differs."""

    name = "full"

    def __init__(self, finetune_args: FinetuneArguments):
        self.finetune_args = finetune_args

    def prepare(self, model: ScOT, base: ScOT) -> torch.nn.Module:
        """The model to train, from the channel-adapted `model` (`base` is the pretrained model as loaded)."""
        return model

    def param_groups(self, model: torch.nn.Module, learning_rate: float) -> list[dict]:
        """AdamW parameter groups with their learning rates."""
        if self.finetune_args.from_scratch:
            return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": learning_rate}]
        roles = parameter_roles(model)
        hold = {"hold_steps": self.finetune_args.head_warmup_steps} if self.finetune_args.head_warmup_steps else {}
        return [
            {"params": roles["body"], "lr": learning_rate, **hold},
            {"params": roles["head"], "lr": self.finetune_args.head_learning_rate},
            {"params": roles["time_norm"], "lr": self.finetune_args.norm_learning_rate, **hold},
        ]

    def describe(self, max_steps: int) -> str:
        return ""

    def export(self, run: PreparedRun, metrics: dict, step: int, init_from: str) -> Path:
        """The fine-tuned model folder (`run.export`: safetensors + config + training_data.json)."""
        return run.export(metrics, step)

    def after_training(self, run: PreparedRun, model_dir: Path) -> dict:
        """What runs after the loop, on every process, on the model exported to `model_dir`; entries for
        result.json."""
        return {}


class Full(Strategy):
    name = "full"


class Head(Strategy):
    name = "head"

    def prepare(self, model: ScOT, base: ScOT) -> torch.nn.Module:
        roles = parameter_roles(model)
        for p in model.parameters():
            p.requires_grad_(False)
        for p in roles["head"]:
            p.requires_grad_(True)
        return model

    def param_groups(self, model: torch.nn.Module, learning_rate: float) -> list[dict]:
        return [
            {"params": [p for p in model.parameters() if p.requires_grad], "lr": self.finetune_args.head_learning_rate}
        ]


class Lora(Head):
    name = "lora"

    def prepare(self, model: ScOT, base: ScOT) -> torch.nn.Module:
        finetune_args = self.finetune_args
        changed = (model.config.channel_names, model.config.output_channel_names) != (
            base.config.channel_names,
            base.config.output_channel_names,
        )
        if changed and not finetune_args.lora_train_head:
            raise ValueError(
                "--lora_train_head False: the data's channels differ from the pretrained model's, so the "
                "new embedding/recovery rows must train (keep --lora_train_head True)"
            )
        self.config = lora.lora_config(
            finetune_args.lora_rank,
            finetune_args.lora_alpha,
            finetune_args.lora_dropout,
            finetune_args.lora_targets,
            finetune_args.lora_train_head,
        )
        return lora.wrap(model, self.config)

    def export(self, run: PreparedRun, metrics: dict, step: int, init_from: str) -> Path:
        """`adapter/` (peft files, the fine-tuned config, base_model.json) and the merged model in `model/`."""

        def rebuild(config, state: dict) -> ScOT:
            with whole_weights_under_zero3():  # under ZeRO-3, peft would gather (a collective) on this one rank
                fresh = lora.wrap(ScOT(config), copy.deepcopy(self.config))
            fresh.load_state_dict(state)
            lora.save_adapter(fresh, run.out / "adapter", init_from)
            return fresh.merge_and_unload()

        return run.export(metrics, step, rebuild=rebuild)


class Refiner(Full):
    name = "refiner"

    def describe(self, max_steps: int) -> str:
        return f" in the {max_steps} full fine-tuning steps; then only the last layer and the spectral head"

    def after_training(self, run: PreparedRun, model_dir: Path) -> dict:
        """Spectral-Refiner on the model just exported (`refiner.refine_exported`), on the main process while the
        others wait; the unrefined model moves to `model-before-refiner/`."""
        acc, data, args, finetune_args = run.accelerator, run.data, run.data_args, self.finetune_args
        summary: dict = {}
        if acc.is_main_process:
            fit_set = data.train_set
            if finetune_args.refiner_fit_split != "train":  # held-out pairs, normalised as the training pairs are
                options = dict(
                    stride=args.stride, max_snapshots=args.max_snapshots, include_identity=args.include_identity
                )
                fit_set = held_out_pairs(
                    run.config, data.sources, finetune_args.refiner_fit_split, source_stats=True, **options
                )
            info = data.sources[0].info
            summary = refiner.refine_exported(
                model_dir,
                fit_set,
                data.val_set,
                info,
                finetune_args,
                args.eval_pairs,
                run.out,
                run.args.seed,
                acc.print,
            )
        acc.wait_for_everyone()
        return {"refiner": summary}


class Fno(Strategy):
    """Not a fine-tuning: the FNO baseline, built for the channel-adapted config (same inputs, outputs and
    statistics as the scOT it is compared with) and trained from scratch through the same loop."""

    name = "fno"

    def __init__(self, finetune_args: FinetuneArguments):
        from .baselines import fno_class

        fno_class()  # a missing [baselines] extra is said now, before the pretrained model loads, in one line
        super().__init__(finetune_args)

    def prepare(self, model: ScOT, base: ScOT) -> torch.nn.Module:
        from .baselines import FNOBaseline

        finetune_args = self.finetune_args
        return FNOBaseline(
            copy.deepcopy(model.config), finetune_args.fno_modes, finetune_args.fno_width, finetune_args.fno_layers
        )

    def param_groups(self, model: torch.nn.Module, learning_rate: float) -> list[dict]:
        return [{"params": list(model.parameters()), "lr": learning_rate}]

    def describe(self, max_steps: int) -> str:
        return " (an FNO from neuraloperator, from scratch)"

    def export(self, run: PreparedRun, metrics: dict, step: int, init_from: str) -> Path:
        from .baselines import FNOBaseline

        def rebuild(config, state: dict) -> torch.nn.Module:
            finetune_args = self.finetune_args
            fresh = FNOBaseline(config, finetune_args.fno_modes, finetune_args.fno_width, finetune_args.fno_layers)
            fresh.load_state_dict(state)
            return fresh

        return run.export(metrics, step, rebuild=rebuild)


STRATEGIES: dict[str, type[Strategy]] = {"full": Full, "head": Head, "lora": Lora, "refiner": Refiner, "fno": Fno}
