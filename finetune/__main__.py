"""python -m finetune --init_from MODEL --datasets SPEC [--strategy full|head|lora|refiner] [--flag value ...]

Also under `accelerate launch [--config_file launch/accelerate/<setup>.yaml] -m finetune ...`; recipes in
`launch/recipes/finetune-*.yaml` (`--config`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from foundation.cli import guarded
from pretrain.build import setup_runtime
from pretrain.loop import PREEMPTED_EXIT, NonFiniteLoss, Preempted, TrainState

from .config import parse_args
from .trainer import Finetuner


def main(argv: list[str] | None = None, callbacks: Sequence[Callable[[TrainState], None]] = ()) -> int:
    model_args, data_args, train_args, finetune_args = parse_args(argv)  # parse (bad input: one line and exit 2)

    def body() -> int:
        setup_runtime()
        trainer = Finetuner(model_args, data_args, train_args, finetune_args)  # build
        result = trainer.train(callbacks)  # run
        if trainer.accelerator.is_main_process:  # close (also in output_dir/result.json)
            print(json.dumps(result, indent=2, default=str))
        return 0

    return guarded(body, exits={NonFiniteLoss: 3, Preempted: PREEMPTED_EXIT})  # bad input: one line, exit 2


if __name__ == "__main__":
    raise SystemExit(main())
