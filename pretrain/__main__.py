"""python -m pretrain --config launch/recipes/pretrain-tiny.yaml [--flag value ...]

Also under `accelerate launch [--config_file launch/accelerate/<setup>.yaml] -m pretrain ...`.
"""

from __future__ import annotations

import json

from .config import parse_args
from .trainer import Pretrainer


def main() -> None:
    model_args, data_args, train_args = parse_args()  # parse
    trainer = Pretrainer(model_args, data_args, train_args)  # build
    result = trainer.train()  # run
    trainer.accelerator.print(json.dumps(result, indent=2))  # close


if __name__ == "__main__":
    main()
