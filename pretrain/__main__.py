"""python -m pretrain --config launch/recipes/pretrain-tiny.yaml [--flag value ...]

Also under `accelerate launch [--config_file launch/accelerate/<setup>.yaml] -m pretrain ...`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

from foundation.cli import guarded

from .build import setup_runtime
from .config import parse_args
from .loop import PREEMPTED_EXIT, NonFiniteLoss, Preempted, TrainState
from .trainer import Pretrainer


def main(argv: list[str] | None = None, callbacks: Sequence[Callable[[TrainState], None]] = ()) -> int:
    model_args, data_args, train_args = parse_args(argv)  # parse (bad input: one line and exit 2)

    def body() -> int:
        setup_runtime()
        trainer = Pretrainer(model_args, data_args, train_args)  # build
        result = trainer.train(callbacks)  # run
        if trainer.accelerator.is_main_process:  # close (the trainer also wrote it to output_dir/result.json)
            print(json.dumps(result, indent=2))
        return 0

    return guarded(body, exits={NonFiniteLoss: 3, Preempted: PREEMPTED_EXIT})  # bad input: one line, exit 2


if __name__ == "__main__":
    raise SystemExit(main())
