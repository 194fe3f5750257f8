"""Typed configuration of a fine-tuning run: pretraining's model/data/train arguments plus `FinetuneArguments`.

`--init_from` (a folder or Hub repo id) is the pretrained model; `--learning_rate` is the body's learning rate.
Recipes in `launch/recipes/finetune-*.yaml` may put these fields under a `finetune:` section.

    python -m finetune --config launch/recipes/finetune-refiner.yaml --init_from runs/demo/pretrain/model
"""

from __future__ import annotations

import sys
from dataclasses import MISSING, dataclass, field, fields
from typing import Literal, get_args

from pretrain.config import (
    DataArguments,
    ModelArguments,
    OptionError,
    TrainArguments,
    check_choices,
    check_positive,
    check_range,
    check_steps,
    parse_dataclasses,
)

Strategy = Literal["full", "head", "lora", "refiner", "fno"]
Split = Literal["train", "val", "test"]
RefinerLoss = Literal["labels", "residual"]
STRATEGIES, SPLITS, REFINER_LOSSES = get_args(Strategy), get_args(Split), get_args(RefinerLoss)
LORA_TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]


@dataclass
class LoraOptions:
    """Options only `--strategy lora` reads."""

    lora_rank: int = field(default=8, metadata={"help": "LoRA rank r."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling alpha (update scaled by alpha / r)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA path."})
    lora_targets: list[str] = field(
        default_factory=lambda: list(LORA_TARGETS), metadata={"help": "Module name suffixes that get adapters."}
    )
    lora_train_head: bool = field(default=True, metadata={"help": "Also train embedding and recovery fully."})

    def __post_init__(self):
        check_range(self, "lora_dropout", high=1)
        check_range(self, "lora_rank", low=1)
        check_positive(self, "lora_alpha")  # a scale


@dataclass
class RefinerOptions:
    """Options only `--strategy refiner` reads (the Spectral-Refiner step after the loop)."""

    refiner_steps: int = field(default=300, metadata={"help": "Adam iterations of the refinement."})
    refiner_learning_rate: float = field(default=3e-3, metadata={"help": "lr of the refined weights."})
    refiner_bias_learning_rate: float = field(default=3e-2, metadata={"help": "lr of biases and the mean mode."})
    refiner_batch_size: int = field(default=512, metadata={"help": "Cached samples per refinement step."})
    refiner_loss: RefinerLoss = field(
        default="labels",
        metadata={"help": "labels (H^-s of prediction - target) or residual (NS vorticity, no labels)."},
    )
    refiner_max_pairs: int = field(
        default=4096, metadata={"help": "Pairs whose features are cached for the refinement (evenly spaced)."}
    )
    refiner_train_recovery: bool = field(default=True, metadata={"help": "Train the patch recovery too."})
    refiner_fit_split: Split = field(
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
        check_range(self, "refiner_learning_rate", "refiner_bias_learning_rate", "refiner_steps", "sobolev_s")
        check_range(self, "refiner_batch_size", "refiner_max_pairs", low=1)
        check_range(self, "refiner_eval_every", "refiner_patience", low=1)  # eval_every is a modulus
        check_positive(self, "sobolev_alpha")  # the weight of the mean mode (alpha^-s)


@dataclass
class FnoOptions:
    """Options only `--strategy fno` reads (the FNO baseline, `finetune.baselines.FNOBaseline`)."""

    fno_modes: int = field(default=12, metadata={"help": "Fourier modes kept per axis."})
    fno_width: int = field(default=32, metadata={"help": "Hidden channels of the FNO."})
    fno_layers: int = field(default=4, metadata={"help": "Fourier layers."})

    def __post_init__(self):
        check_range(self, "fno_modes", "fno_width", "fno_layers", low=1)


# Which strategy reads which option group; `ignored_options` names options set for another strategy.
OPTION_GROUPS: dict[str, type] = {"lora": LoraOptions, "refiner": RefinerOptions, "fno": FnoOptions}


@dataclass
class FinetuneArguments(LoraOptions, RefinerOptions, FnoOptions):
    """How to adapt the pretrained model: the options every strategy reads, then each strategy's own group
    (`LoraOptions`, `RefinerOptions`, `FnoOptions`; one flat set of flags and recipe keys)."""

    strategy: Strategy = field(
        default="full",
        metadata={
            "help": "full (every weight; separate lrs), head (embedding + recovery only), lora (adapters on "
            "attention/MLP + head), refiner (optional full fine-tune for max_steps, then Spectral-Refiner), "
            "fno (baseline: neuraloperator's FNO from scratch on the same data)."
        },
    )
    from_scratch: bool = field(
        default=False, metadata={"help": "Same architecture as --init_from, randomly initialised (baseline)."}
    )
    learn_residual: bool = field(
        default=False,
        metadata={
            "help": "Predict the change over the lead time: the output is the input's evolving fields plus the "
            "model's (the reference's learn_residual), with the output projection started at zero, so the model "
            "starts as persistence and learns the increment (scOT strategies; kept in the exported config)."
        },
    )
    head_learning_rate: float = field(default=5e-4, metadata={"help": "Embedding and recovery lr (full, lora)."})
    norm_learning_rate: float = field(default=5e-4, metadata={"help": "Time-conditioned norms' lr (full)."})
    head_warmup_steps: int = field(
        default=0,
        metadata={"help": "First steps in which only embedding and recovery train (full): new rows learn first."},
    )
    channel_map: list[str] = field(
        default_factory=list,
        metadata={
            "help": "NEW=PRETRAINED: a data channel that starts from a pretrained channel's weights of another name "
            "(e.g. a scalar field u=tracer instead of the velocity's u rows; u=: a new channel, zero rows)."
        },
    )
    train_trajectories: int | None = field(
        default=None, metadata={"help": "Use only the first N training trajectories (sample-efficiency studies)."}
    )
    eval_split: Split = field(default="test", metadata={"help": "Split of the final evaluation (held-out)."})
    eval_max_pairs: int = field(default=1024, metadata={"help": "Pairs of the final evaluation (evenly spaced)."})
    eval_rollout_trajectories: int = field(
        default=8, metadata={"help": "Trajectories of the final evaluation's rollout (0: none)."}
    )
    eval_plots: bool = field(default=True, metadata={"help": "Plots of the final evaluation (PNG)."})

    def __post_init__(self):
        check_choices(self)
        LoraOptions.__post_init__(self)
        RefinerOptions.__post_init__(self)
        FnoOptions.__post_init__(self)
        check_range(self, "head_learning_rate", "norm_learning_rate")
        check_range(self, "train_trajectories", "eval_max_pairs", low=1)
        check_range(self, "eval_rollout_trajectories", "head_warmup_steps")
        self.channel_aliases()

    def channel_aliases(self) -> dict[str, str | None]:
        """--channel_map as {data channel: pretrained channel whose weights it starts from (None: new)}."""
        out: dict[str, str | None] = {}
        for item in self.channel_map:
            new, eq, old = item.partition("=")
            if not eq or not new.strip() or new.strip() in out:
                raise OptionError("channel_map", f"takes NEW=PRETRAINED (each NEW once), got {item!r}")
            out[new.strip()] = old.strip() or None
        return out


def ignored_options(finetune_args: FinetuneArguments) -> list[str]:
    """Options of another strategy's group that differ from their defaults (they would be silently ignored)."""
    out = []
    for strategy, group in OPTION_GROUPS.items():
        if strategy == finetune_args.strategy:
            continue
        for f in fields(group):
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            if getattr(finetune_args, f.name) != default:
                out.append(f.name)
    return out


ARGUMENT_CLASSES = (ModelArguments, DataArguments, TrainArguments, FinetuneArguments)


def parse_args(argv: list[str] | None = None):
    """(ModelArguments, DataArguments, TrainArguments, FinetuneArguments) from `--config` and flags."""
    model, data, train, finetune_args, _ = parse_dataclasses(
        ARGUMENT_CLASSES,
        argv,
        sections=("finetune",),
        check=lambda model, data, train, finetune_args: check(finetune_args, model, train),
    )
    ignored = ignored_options(finetune_args)
    if ignored:  # a recipe written for another strategy: say so instead of silently dropping the values
        flags = ", ".join(f"--{name}" for name in ignored)
        print(f"warning: --strategy {finetune_args.strategy} ignores {flags}", file=sys.stderr)
    return model, data, train, finetune_args


def check(
    finetune_args: FinetuneArguments, model: ModelArguments | None = None, train: TrainArguments | None = None
) -> None:
    """Refuse inconsistent choices across the dataclasses with a ValueError of one line (each dataclass checks its
    own fields in `__post_init__`); `model` and `train` are checked when given."""
    if model is not None and not model.init_from:
        raise OptionError("init_from", "is required: the pretrained model (folder or Hub repo id)")
    if finetune_args.from_scratch and finetune_args.strategy in ("head", "lora"):
        raise OptionError(
            "from_scratch", f"trains every weight; --strategy {finetune_args.strategy} freezes most of a random model"
        )
    if finetune_args.learn_residual and finetune_args.strategy == "fno":
        raise OptionError("learn_residual", "is an scOT option; --strategy fno trains neuraloperator's FNO")
    if finetune_args.head_warmup_steps and (finetune_args.strategy != "full" or finetune_args.from_scratch):
        raise OptionError("head_warmup_steps", "holds a pretrained body: only for --strategy full, not from scratch")
    if train is not None and finetune_args.head_warmup_steps and finetune_args.head_warmup_steps >= train.max_steps:
        raise OptionError("head_warmup_steps", f"must be below --max_steps ({train.max_steps})")
    if (
        train is not None and finetune_args.strategy != "refiner"
    ):  # refiner: max_steps 0 refines the given model as it is
        check_steps(train)
