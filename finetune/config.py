"""Typed configuration of a fine-tuning run: pretraining's model/data/train arguments plus `FinetuneArguments`.

`--init_from` (a folder or Hub repo id) is the pretrained model; `--learning_rate` is the body's learning rate.
Recipes in `launch/recipes/finetune-*.yaml` may put these fields under a `finetune:` section.

    python -m finetune --config launch/recipes/finetune-refiner.yaml --init_from runs/demo/pretrain/model
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pretrain.config import (
    DataArguments,
    ModelArguments,
    OptionError,
    TrainArguments,
    check_choice,
    check_positive,
    check_range,
    check_steps,
    parse_dataclasses,
)

STRATEGIES = ("full", "head", "lora", "refiner")
SPLITS = ("train", "val", "test")
REFINER_LOSSES = ("labels", "residual")
LORA_TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]


@dataclass
class FinetuneArguments:
    """How to adapt the pretrained model."""

    strategy: str = field(
        default="full",
        metadata={
            "help": "full (every weight; separate lrs), head (embedding + recovery only), lora (adapters on "
            "attention/MLP + head), refiner (optional full fine-tune for max_steps, then Spectral-Refiner)."
        },
    )
    from_scratch: bool = field(
        default=False, metadata={"help": "Same architecture as --init_from, randomly initialised (baseline)."}
    )
    head_learning_rate: float = field(default=5e-4, metadata={"help": "Embedding and recovery lr (full, lora)."})
    norm_learning_rate: float = field(default=5e-4, metadata={"help": "Time-conditioned norms' lr (full)."})
    train_trajectories: int | None = field(
        default=None, metadata={"help": "Use only the first N training trajectories (sample-efficiency studies)."}
    )
    eval_split: str = field(default="test", metadata={"help": "Split of the final evaluation (held-out)."})
    # LoRA
    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling alpha (update scaled by alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA path."})
    lora_targets: list[str] = field(
        default_factory=lambda: list(LORA_TARGETS), metadata={"help": "Module name suffixes that get adapters."}
    )
    lora_train_head: bool = field(default=True, metadata={"help": "Also train embedding and recovery fully."})
    # Spectral-Refiner
    refiner_steps: int = field(default=300, metadata={"help": "Adam iterations of the refinement."})
    refiner_learning_rate: float = field(default=3e-3, metadata={"help": "lr of the refined weights."})
    refiner_bias_learning_rate: float = field(default=3e-2, metadata={"help": "lr of biases and the mean mode."})
    refiner_batch_size: int = field(default=512, metadata={"help": "Cached samples per refinement step."})
    refiner_loss: str = field(
        default="labels",
        metadata={"help": "labels (H^-s of prediction - target) or residual (NS vorticity, no labels)."},
    )
    refiner_max_pairs: int = field(
        default=4096, metadata={"help": "Pairs whose features are cached for the refinement (evenly spaced)."}
    )
    refiner_train_recovery: bool = field(default=True, metadata={"help": "Train the patch recovery too."})
    refiner_fit_split: str = field(
        default="train", metadata={"help": "Split the refinement fits (residual mode may fit the test inputs)."}
    )
    refiner_eval_every: int = field(default=10, metadata={"help": "Refinement steps between validations."})
    refiner_patience: int = field(
        default=20,
        metadata={
            "help": "Validations without improvement before stopping (the validation error often rises for the "
            "first ~100 steps before it falls: keep this patient)."
        },
    )
    sobolev_s: float = field(default=1.0, metadata={"help": "Order s of the H^-s loss."})
    sobolev_alpha: float = field(default=10**-1.5, metadata={"help": "alpha in (alpha + |k|^2)^-s."})

    def __post_init__(self):
        check_choice(self, "strategy", STRATEGIES)
        check_choice(self, "refiner_loss", REFINER_LOSSES)
        check_choice(self, "eval_split", SPLITS)
        check_choice(self, "refiner_fit_split", SPLITS)
        check_range(self, "head_learning_rate", "norm_learning_rate", "refiner_learning_rate")
        check_range(self, "refiner_bias_learning_rate", "refiner_steps", "sobolev_s")
        check_range(self, "lora_dropout", high=1)
        check_range(self, "train_trajectories", "lora_rank", "refiner_batch_size", "refiner_max_pairs", low=1)
        check_range(self, "refiner_eval_every", "refiner_patience", low=1)  # eval_every is a modulus
        check_positive(self, "lora_alpha", "sobolev_alpha")  # a scale; the weight of the mean mode (alpha^-s)


ARGUMENT_CLASSES = (ModelArguments, DataArguments, TrainArguments, FinetuneArguments)


def parse_args(argv: list[str] | None = None):
    """(ModelArguments, DataArguments, TrainArguments, FinetuneArguments) from `--config` and flags."""
    model, data, train, tune, _ = parse_dataclasses(
        ARGUMENT_CLASSES, argv, sections=("finetune",), check=lambda model, data, train, tune: check(tune, model, train)
    )
    return model, data, train, tune


def check(tune: FinetuneArguments, model: ModelArguments | None = None, train: TrainArguments | None = None) -> None:
    """Refuse inconsistent choices across the dataclasses with a ValueError of one line (each dataclass checks its
    own fields in `__post_init__`); `model` and `train` are checked when given."""
    if model is not None and not model.init_from:
        raise OptionError("init_from", "is required: the pretrained model (folder or Hub repo id)")
    if tune.from_scratch and tune.strategy in ("head", "lora"):
        raise OptionError(
            "from_scratch", f"trains every weight; --strategy {tune.strategy} freezes most of a random model"
        )
    if train is not None and tune.strategy != "refiner":  # refiner: max_steps 0 refines the given model as it is
        check_steps(train)
