"""Typed configuration of a pretraining run; YAML recipes in `launch/recipes/` mirror these fields.

The CLI is generated from the dataclasses (transformers' HfArgumentParser): `--config recipe.yaml` reads a
recipe and any flag after it overrides the recipe, e.g. `python -m pretrain --config launch/recipes/pretrain-tiny.yaml
--max_steps 50`. Unknown keys in a recipe are errors, as unknown flags are.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml


@dataclass
class ModelArguments:
    """What to train."""

    preset: str = field(default="tiny", metadata={"help": "Geometry preset: tiny, T, B or L."})
    init_from: str | None = field(default=None, metadata={"help": "Start from this folder or Hub repo id."})
    input_resampling: str = field(
        default="fourier", metadata={"help": "'fourier' (resample to the model grid) or 'none' (native grid)."}
    )
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations in backward."})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model."})


@dataclass
class DataArguments:
    """Where the all2all pairs come from."""

    datasets: list[str] = field(
        default_factory=list, metadata={"help": "Sources, as foundation.data.open_source specs (files, LAYOUT:file)."}
    )
    weights: list[float] | None = field(default=None, metadata={"help": "Sampling weight per dataset."})
    channels: list[str] | None = field(
        default=None, metadata={"help": "Model channel vocabulary (default: the datasets' channels, in order)."}
    )
    stride: int = field(default=1, metadata={"help": "Use every stride-th stored snapshot."})
    max_snapshots: int | None = field(default=None, metadata={"help": "Use at most this many snapshots."})
    include_identity: bool = field(default=True, metadata={"help": "Keep the lead-time-0 pairs."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers per process."})
    eval_pairs: int = field(default=256, metadata={"help": "Validation pairs per evaluation (per run, not rank)."})


@dataclass
class TrainArguments:
    """How to train."""

    output_dir: str = field(default="runs/pretrain", metadata={"help": "Checkpoints, logs, exported model."})
    max_steps: int = field(default=200, metadata={"help": "Optimizer steps."})
    batch_size: int = field(default=8, metadata={"help": "Pairs per process per micro-step."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-steps per optimizer step."})
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak learning rate (AdamW)."})
    weight_decay: float = field(default=1e-6, metadata={"help": "AdamW weight decay."})
    warmup_steps: int = field(default=20, metadata={"help": "Linear warm-up steps before the cosine decay."})
    min_lr_ratio: float = field(default=0.0, metadata={"help": "Final learning rate / peak."})
    max_grad_norm: float = field(default=5.0, metadata={"help": "Gradient clipping (0: off)."})
    precision: str = field(default="fp32", metadata={"help": "fp32 or bf16."})
    seed: int = field(default=0, metadata={"help": "Seed of the model init and the pair sampler."})
    log_every: int = field(default=10, metadata={"help": "Steps between logged losses."})
    eval_every: int = field(default=100, metadata={"help": "Steps between validations (0: only at the end)."})
    save_every: int = field(default=100, metadata={"help": "Steps between checkpoints (0: only at the end)."})
    keep_last: int = field(default=2, metadata={"help": "Checkpoints kept."})
    tracker: str = field(default="tensorboard", metadata={"help": "tensorboard, wandb or none."})
    resume: bool = field(default=True, metadata={"help": "Continue from the last checkpoint in output_dir."})
    max_nonfinite_steps: int = field(default=5, metadata={"help": "Stop after this many non-finite losses in a row."})
    peak_tflops: float | None = field(
        default=None, metadata={"help": "Datasheet peak TFLOP/s per device for the MFU (default: measured)."}
    )
    stop_after: int | None = field(
        default=None, metadata={"help": "Stop (as if killed) after this step; for tests of resumption."}
    )


ARGUMENT_CLASSES = (ModelArguments, DataArguments, TrainArguments)


def recipe_to_argv(path: str | Path, sections: tuple[str, ...] = ()) -> list[str]:
    """Flags equivalent to a YAML recipe (flat, or sectioned as model/data/train and `sections`)."""
    text = Path(path).read_text()
    recipe = yaml.safe_load(text) or {}
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: a recipe is a mapping of option names to values")
    flat: dict = {}
    for key, value in recipe.items():
        if key in ("model", "data", "train", *sections) and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    argv: list[str] = []
    for key, value in flat.items():
        if value is None:
            continue
        argv.append(f"--{key}")
        if isinstance(value, list):
            argv.extend(str(v) for v in value)
        else:
            argv.append(str(value))
    return argv


def parse_dataclasses(classes: tuple, argv: list[str] | None = None, sections: tuple[str, ...] = ()) -> tuple:
    """`--config recipe.yaml` plus flags (flags win) into instances of `classes`; unknown flags get hints."""
    import sys

    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv:
        at = argv.index("--config")
        if at + 1 >= len(argv):
            raise SystemExit("--config needs a YAML recipe path")
        argv = recipe_to_argv(argv[at + 1], sections) + argv[:at] + argv[at + 2 :]
    parser = HfArgumentParser(classes)
    *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if unknown:
        known = [f"--{f.name}" for cls in classes for f in fields(cls)]
        hints = []
        for flag in (u for u in unknown if u.startswith("--")):
            close = difflib.get_close_matches(flag, known, n=1, cutoff=0.75)
            hints.append(f"{flag}" + (f" (did you mean {close[0]}?)" if close else ""))
        parser.error("unknown option(s): " + ", ".join(hints or unknown))
    _, data, train = parsed[:3]
    if train.precision not in ("fp32", "bf16"):
        parser.error(f"--precision must be fp32 or bf16, got {train.precision!r}")
    if train.tracker not in ("tensorboard", "wandb", "none"):
        parser.error(f"--tracker must be tensorboard, wandb or none, got {train.tracker!r}")
    if not data.datasets:
        parser.error("--datasets: at least one source is needed")
    return (*parsed, parser)


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainArguments]:
    """Parse `--config recipe.yaml` plus flags (flags win) into the three argument dataclasses."""
    model, data, train, _ = parse_dataclasses(ARGUMENT_CLASSES, argv)
    return model, data, train
