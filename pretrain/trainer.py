"""Pretraining scOT on all2all pairs with accelerate: one CPU process, DDP, or DeepSpeed ZeRO 1-3.

`Pretrainer` builds the parts of a run (`pretrain.build`: accelerator, data, a new model of the preset or one
continued `--init_from`), prepares them (`pretrain.prepared.PreparedRun`: optimizer, schedule, loader, validation,
export) and hands them to the loop (`pretrain.loop.run`). Fine-tuning (`finetune.trainer`) builds the same parts.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path

from foundation.pdes.specs import resolve_specs

from .build import build_accelerator, build_data, build_model
from .config import DataArguments, ModelArguments, TrainArguments
from .loop import TrainState, run
from .prepared import PreparedRun, RunView


class Pretrainer(RunView):
    """One pretraining run: build the parts, train (resuming if a checkpoint exists), evaluate, export."""

    tag = "pretrain"

    def __init__(self, model_args: ModelArguments, data_args: DataArguments, train_args: TrainArguments):
        from accelerate.utils import set_seed

        data_args = copy.deepcopy(data_args)  # `pde:` generators become the paths of the files they wrote
        data_args.datasets = resolve_specs(data_args.datasets, Path(train_args.output_dir).parent / "data")
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
        metrics = self.run.selected_metrics(state.step)  # --select_best: the best weights restored first
        return {"metrics": metrics, "model": str(self.run.export(metrics, state.step))}

    def train(self, callbacks: Sequence[Callable[[TrainState], None]] = ()) -> dict:
        return run(self.run.parts(self.finish), self.args, callbacks)
