"""Pretraining scOT on all2all pairs: `python -m pretrain` or `accelerate launch -m pretrain`."""

from .config import DataArguments, ModelArguments, TrainArguments, parse_args
from .loop import NonFiniteLoss
from .trainer import Pretrainer

__all__ = ["DataArguments", "ModelArguments", "NonFiniteLoss", "Pretrainer", "TrainArguments", "parse_args"]
