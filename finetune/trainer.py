"""Fine-tuning runs: the parts of pretraining's loop (accelerate, DeepSpeed, checkpoints, resume) built from a
pretrained checkpoint by channel surgery, with a strategy (`finetune.strategies`) deciding how the model is
prepared, which parameters train at which rate, how it is exported and what runs after the loop.

After training, the model in `output_dir/model` (and `output_dir/adapter` for LoRA) is evaluated on the held-out
split (`finetune.evaluate`): `evaluation.json` and plots in `output_dir/evaluation/`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from foundation import ScOT
from foundation.compat import whole_weights_under_zero3
from foundation.pdes.specs import resolve_specs
from pretrain.build import TrainData, build_accelerator, build_data
from pretrain.config import DataArguments, ModelArguments, TrainArguments
from pretrain.loop import TrainState, run
from pretrain.prepared import PreparedRun, RunView

from . import refiner
from .config import FinetuneArguments, check
from .strategies import STRATEGIES
from .surgery import adapt_channels, predict_increments


def count_parameters(model: torch.nn.Module) -> dict[str, int | float]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "total": total, "trainable_fraction": round(trainable / max(total, 1), 6)}


def adapted_model(
    init_from: str, data: TrainData, seed: int, aliases: dict[str, str | None] | None = None
) -> tuple[ScOT, ScOT]:
    """(the pretrained model as loaded, a copy whose channels, statistics and time scale are the data's)."""
    with whole_weights_under_zero3():  # surgery reads and writes whole tensors, also under ZeRO-3
        base = ScOT.from_pretrained(init_from)
    model = adapt_channels(base, data.vocabulary, data.targets, data.stats, data.stats, seed=seed, aliases=aliases)
    model.config.time_scale = float(data.sources[0].info.time_scale)
    return base, model


class Finetuner(RunView):
    """One fine-tuning run (see `finetune.strategies` for the strategies)."""

    tag = "finetune"

    def __init__(
        self,
        model_args: ModelArguments,
        data_args: DataArguments,
        train_args: TrainArguments,
        finetune_args: FinetuneArguments,
    ):
        from accelerate.utils import set_seed

        check(finetune_args)
        if not model_args.init_from:
            raise ValueError("--init_from: the pretrained model (folder or Hub repo id) is required")
        self.finetune_args, self.args = finetune_args, train_args
        data_args = copy.deepcopy(data_args)
        data_args.datasets = resolve_specs(data_args.datasets, Path(train_args.output_dir).parent / "data")
        self.accelerator = acc = build_accelerator(train_args, self.tag)
        set_seed(train_args.seed)  # identical initial weights on every rank
        data = build_data(  # the held-out evaluation after training reads eval_split: checked with the rest
            data_args,
            train_args.seed,
            acc.process_index,
            acc.num_processes,
            finetune_args.train_trajectories,
            eval_splits=[finetune_args.eval_split],
        )
        if finetune_args.strategy == "refiner" and finetune_args.refiner_loss == "residual":
            # What only the residual loss needs (viscosity, periodic box, u and v) fails now, not after the
            # fine-tune that precedes the refinement; the model's outputs will be these targets.
            refiner.residual_parameters(data.sources[0].info, data.targets)
        self.strategy = STRATEGIES[finetune_args.strategy](finetune_args)
        base, model = adapted_model(model_args.init_from, data, train_args.seed, finetune_args.channel_aliases())
        if finetune_args.from_scratch:  # the same architecture and data description, none of the pretrained weights
            torch.manual_seed(train_args.seed)
            model = ScOT(model.config)
        if finetune_args.learn_residual:
            model = predict_increments(model)
        model = self.strategy.prepare(model, base)
        self.parameters_info = count_parameters(model)  # before ZeRO-3 partitions the tensors
        groups = self.strategy.param_groups(model, train_args.learning_rate)
        self.run = PreparedRun(
            acc, model, groups, data, model_args, data_args, train_args, self.tag, {"finetune": asdict(finetune_args)}
        )
        info = self.parameters_info
        acc.print(
            f"[finetune] strategy {finetune_args.strategy}{' (from scratch)' if finetune_args.from_scratch else ''}: "
            f"{info['trainable']:,} of {info['total']:,} parameters train"
            f"{self.strategy.describe(train_args.max_steps)} ({100 * info['trainable_fraction']:.2f}%)"
        )

    # ------------------------------------------------------------------ the run
    def finish(self, state: TrainState) -> dict:
        metrics = self.run.selected_metrics(state.step)  # --select_best: the best weights restored first
        folder = self.strategy.export(self.run, metrics, state.step, self.run.model_args.init_from)
        return {"metrics": metrics, "model": str(folder)}

    def train(self, callbacks: Sequence[Callable[[TrainState], None]] = ()) -> dict:
        """The loop, then the strategy's step after it (the refinement), then the held-out evaluation."""
        from .evaluate import evaluate_run

        acc = self.accelerator
        result = run(self.run.parts(self.finish), self.args, callbacks)
        result["strategy"] = self.finetune_args.strategy
        result["from_scratch"] = self.finetune_args.from_scratch
        result["parameters"] = self.parameters_info
        result.update(self.strategy.after_training(self.run, Path(result["model"])))
        if acc.is_main_process:
            with whole_weights_under_zero3():  # one rank loading under a ZeRO-3 launch must not enter collectives
                result["evaluation"] = evaluate_run(
                    Path(result["model"]),
                    self.run.data.specs,
                    self.run.data_args,
                    self.finetune_args,
                    self.run.out / "evaluation",
                )
            (self.run.out / "result.json").write_text(json.dumps(result, indent=2, default=str))
        acc.wait_for_everyone()
        return result
