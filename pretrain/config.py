"""Typed configuration of a pretraining run; YAML recipes in `launch/recipes/` mirror these fields.

The CLI is generated from the dataclasses (transformers' HfArgumentParser): `--config recipe.yaml` reads a
recipe and any flag after it overrides the recipe, e.g. `python -m pretrain --config launch/recipes/pretrain-tiny.yaml
--max_steps 50`. Unknown keys in a recipe are errors, as unknown flags are. Values are checked where they are typed
(`__post_init__` of each dataclass, so programmatic runs get the same checks); the CLI turns any bad input (a recipe
that is missing or not YAML, a bad value) into one `error: ...` line with exit code 2, naming the flag and, when the
value came from a recipe, the recipe file.
"""

from __future__ import annotations

import difflib
import math
import re
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, NoReturn, get_args, get_origin, get_type_hints

import yaml

# Choices are Literal types: HfArgumentParser makes them argparse choices, `check_choices` checks them for
# dataclasses built in code, and the tuples below are read from them.
Preset = Literal["tiny", "T", "B", "L"]  # foundation.configuration_scot.PRESETS (a test keeps them equal)
Precision = Literal["fp32", "bf16"]
Tracker = Literal["tensorboard", "wandb", "none"]
RolloutMode = Literal["pushforward", "unrolled"]  # foundation.losses.ROLLOUT_MODES
Resampling = Literal["fourier", "none"]  # ScOTConfig.input_resampling
NonFinite = Literal["refuse", "skip", "off"]  # what build_data does with NaN/Inf in the data a run reads
PRECISIONS, TRACKERS, RESAMPLINGS = get_args(Precision), get_args(Tracker), get_args(Resampling)


class OptionError(ValueError):
    """A bad value of one option; `option` is the field name (the flag without its dashes)."""

    def __init__(self, option: str, message: str):
        super().__init__(f"--{option} {message}")
        self.option = option


def check_range(obj: Any, *names: str, low: float = 0, high: float | None = None) -> None:
    """Each named field of `obj` is a finite number in [low, high]; None passes (the option is unset)."""
    for name in names:
        value = getattr(obj, name)
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v is None:
                continue
            if not math.isfinite(v):
                raise OptionError(name, f"must be a finite number, got {value}")
            if v < low or (high is not None and v > high):
                bound = f">= {low:g}" if high is None else f"between {low:g} and {high:g}"
                raise OptionError(name, f"must be {bound}, got {value}")


def check_positive(obj: Any, *names: str) -> None:
    """Each named field of `obj` is a finite number > 0; None passes (the option is unset)."""
    for name in names:
        value = getattr(obj, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise OptionError(name, f"must be > 0, got {value}")


def check_choice(obj: Any, name: str, choices: Sequence[str]) -> None:
    """The named field of `obj` is one of `choices`."""
    value = getattr(obj, name)
    if value not in choices:
        allowed = " or ".join(choices) if len(choices) == 2 else "one of " + ", ".join(choices)
        raise OptionError(name, f"must be {allowed}, got {value!r}")


def check_choices(obj: Any) -> None:
    """Every `Literal`-typed field of the dataclass `obj` holds one of its choices."""
    hints = get_type_hints(type(obj))
    for f in fields(obj):
        if get_origin(hints[f.name]) is Literal:
            check_choice(obj, f.name, get_args(hints[f.name]))


@dataclass
class ModelArguments:
    """What to train."""

    preset: Preset = field(default="tiny", metadata={"help": "Geometry preset: tiny, T, B or L."})
    init_from: str | None = field(default=None, metadata={"help": "Start from this folder or Hub repo id."})
    input_resampling: Resampling = field(
        default="fourier", metadata={"help": "'fourier' (resample to the model grid) or 'none' (native grid)."}
    )
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute activations in backward."})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model."})

    def __post_init__(self):
        check_choices(self)


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
    lead_steps: list[int] | None = field(
        default=None,
        metadata={
            "help": "Training pairs only of these lead times j - i, in snapshots in use (e.g. 1: one-step pairs; "
            "default: all2all). Validation and evaluation keep every pair."
        },
    )
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers per process."})
    eval_pairs: int = field(default=256, metadata={"help": "Validation pairs per evaluation (per run, not rank)."})
    rollout_steps: int = field(
        default=0,
        metadata={
            "help": "Rollout training: every training pair also brings a sequence of this many steps of its "
            "trajectory (the model fed its own outputs; see --rollout_weight); steady datasets in the mixture "
            "train on pairs only. 0: all2all pairs only."
        },
    )
    rollout_lead_steps: int = field(
        default=1,
        metadata={
            "help": "Snapshots in use per rollout step; 0: the pair's own lead (clipped to what K steps fit), "
            "sequences of every step size from every start that fits."
        },
    )
    rollout_split: bool = field(
        default=False,
        metadata={
            "help": "Rollout sequences span their pair i -> j in K steps of unequal length (cut per pair), so the "
            "model learns to continue from its own predictions of every lead; rollout_lead_steps is then unused."
        },
    )
    nonfinite: NonFinite = field(
        default="refuse",
        metadata={
            "help": "NaN/Inf in the data the run reads (the snapshots in use and static fields of the train and val "
            "splits, and fine-tuning's --eval_split), found by one pass before training: refuse (exit 2, naming the "
            "first bad place), skip (drop every pair and rollout sequence that reads one; validation drops the "
            "trajectory) or off (no pass; a bad snapshot the sampler reaches stops the run then)."
        },
    )
    # Filled in by the run (pretrain.build.build_data), not a flag: what --nonfinite skip dropped, per source, so
    # that run_args.json records it.
    nonfinite_skipped: list[dict] | None = field(default=None, init=False)

    def __post_init__(self):
        check_range(self, "weights", "num_workers", "lead_steps", "rollout_steps", "rollout_lead_steps")
        check_range(self, "stride", "max_snapshots", "eval_pairs", low=1)
        check_choices(self)


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
    precision: Precision = field(default="fp32", metadata={"help": "fp32 or bf16."})
    seed: int = field(default=0, metadata={"help": "Seed of the model init and the pair sampler."})
    log_every: int = field(default=10, metadata={"help": "Steps between logged losses."})
    eval_every: int = field(default=100, metadata={"help": "Steps between validations (0: only at the end)."})
    save_every: int = field(default=100, metadata={"help": "Steps between checkpoints (0: only at the end)."})
    keep_last: int = field(default=2, metadata={"help": "Checkpoints kept."})
    select_best: bool = field(
        default=False,
        metadata={
            "help": "Export the weights of the lowest validation error seen (every --eval_every steps and the last "
            "step) instead of the last step's (Poseidon's rule for fine-tuning and scratch runs)."
        },
    )
    tracker: Tracker = field(default="tensorboard", metadata={"help": "tensorboard, wandb or none."})
    resume: bool = field(default=True, metadata={"help": "Continue from the last checkpoint in output_dir."})
    max_nonfinite_steps: int = field(default=5, metadata={"help": "Stop after this many non-finite losses in a row."})
    preemption_signals: list[str] = field(
        default_factory=lambda: ["SIGTERM", "SIGUSR1"],
        metadata={
            "help": "Signals that preempt the run (SLURM's, before it kills a job): every rank finishes its step, "
            "a checkpoint is written at the next synchronised step (at most --max_nonfinite_steps later) and the "
            "run exits with code 75; rerun the same command to resume. 'none': keep the signals' default action."
        },
    )
    peer_timeout_s: float = field(
        default=30.0,
        metadata={
            "help": "Multi-process runs: a rank whose heartbeat (a thread, ~1 s) stops for this long is lost, and "
            "every other rank exits with one line naming it (a rank that dies mid-collective is named within a few "
            "seconds); the last complete checkpoint is intact, rerun the same command to resume (0: off)."
        },
    )
    collective_timeout_s: float = field(
        default=600.0,
        metadata={
            "help": "Multi-process runs: a collective (every process group, DeepSpeed's too) that waits longer than "
            "this for a rank fails the run. Longer than the slowest step, evaluation or checkpoint; the default is "
            "NCCL's and DeepSpeed's own (torch's gloo default is 1800)."
        },
    )
    peak_tflops: float | None = field(
        default=None, metadata={"help": "Datasheet peak TFLOP/s per device for the MFU (default: measured)."}
    )
    rollout_weight: float = field(
        default=0.5,
        metadata={
            "help": "With --rollout_steps: loss = (1 - w) * all2all pair loss + w * rollout loss (1: rollouts only)."
        },
    )
    rollout_mode: RolloutMode = field(
        default="pushforward",
        metadata={
            "help": "pushforward: the first K-1 steps without gradient, the last trained (memory of one step); "
            "unrolled: gradients through all K steps (K times the activations)."
        },
    )
    rollout_noise: float = field(
        default=0.0, metadata={"help": "Gaussian noise (normalised units) on the inputs of the trained steps."}
    )
    rollout_curriculum_steps: int = field(
        default=0,
        metadata={
            "help": "Grow the rollout length linearly from 1 to --rollout_steps over this many optimizer steps "
            "(0: the full length from the start)."
        },
    )

    def __post_init__(self):
        # max_steps 0 is a valid config (fine-tuning's refiner strategy refines the given model as it is); the
        # commands that must train refuse it (`check_steps`).
        check_range(self, "max_steps", "learning_rate", "weight_decay", "warmup_steps", "max_grad_norm")
        check_range(self, "eval_every", "save_every")
        if self.select_best and not self.eval_every:
            raise OptionError(
                "select_best", "needs validations during training: set --eval_every > 0 (0 validates only at the end)"
            )
        check_positive(self, "peak_tflops")  # the MFU divides by it
        check_range(self, "min_lr_ratio", high=1)
        # keep_last 0 would keep every checkpoint (a [:-0] slice), log_every 0 divides by zero
        check_range(self, "batch_size", "gradient_accumulation_steps", "log_every", "keep_last", low=1)
        check_range(self, "max_nonfinite_steps", low=1)
        check_range(self, "peer_timeout_s")
        check_positive(self, "collective_timeout_s")
        self.preemption_signals = [] if self.preemption_signals in (["none"], []) else list(self.preemption_signals)
        unknown = [name for name in self.preemption_signals if not hasattr(signal, name)]
        if unknown:
            raise OptionError("preemption_signals", f"unknown signal(s) {unknown}; e.g. SIGTERM SIGUSR1, or none")
        check_range(self, "rollout_weight", high=1)
        check_range(self, "rollout_noise", "rollout_curriculum_steps")
        check_choices(self)

    def rollout_length(self, step: int, steps: int) -> int:
        """Rollout steps trained at optimizer step `step` (0-based) of a run with `steps` = --rollout_steps."""
        if self.rollout_curriculum_steps <= 0 or steps <= 1:
            return steps
        return min(steps, 1 + (steps - 1) * step // self.rollout_curriculum_steps)


ARGUMENT_CLASSES = (ModelArguments, DataArguments, TrainArguments)


def read_recipe(path: str | Path, sections: tuple[str, ...] = ()) -> dict[str, Any]:
    """A YAML recipe as a flat mapping of option names to values (flat, or sectioned as model/data/train and
    `sections`); ValueError with one line naming the file (and line) if it is missing or not a YAML mapping."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"--config {path}: no such recipe file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(
            f"--config {path}: cannot read the recipe ({getattr(error, 'strerror', None) or error})"
        ) from None
    try:
        recipe = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"{where}: could not parse the recipe: {problem}") from None
    if not isinstance(recipe, dict):
        raise ValueError(f"{path}: a recipe is a mapping of option names to values")
    flat: dict[str, Any] = {}
    for key, value in recipe.items():
        if key in ("model", "data", "train", *sections) and isinstance(value, dict):
            flat.update(value)
        else:
            flat[key] = value
    return {key: value for key, value in flat.items() if value is not None}  # null: the option's default


def recipe_to_argv(path: str | Path, sections: tuple[str, ...] = ()) -> list[str]:
    """Flags equivalent to a YAML recipe (flat, or sectioned as model/data/train and `sections`)."""
    return _to_argv(read_recipe(path, sections))


def _to_argv(recipe: dict[str, Any]) -> list[str]:
    argv: list[str] = []
    for key, value in recipe.items():
        if isinstance(value, list):
            argv.extend([f"--{key}", *map(str, value)])
        else:  # `--key=value`: argparse takes a separate "-1e-3" (YAML reads it as a string) for an option
            argv.append(f"--{key}={value}")
    return argv


def _parser(classes: tuple):
    from transformers import HfArgumentParser

    class RecipeParser(HfArgumentParser):
        """HfArgumentParser whose errors are one line that names the recipe a bad value came from."""

        recipe: str | None = None
        from_recipe: frozenset[str] = frozenset()  # options whose value is the recipe's (no flag overrode it)

        def error(self, message: str) -> NoReturn:
            option = re.search(r"--(\w+)", message)
            if self.recipe and option and option.group(1) in self.from_recipe:
                message += f" (from {self.recipe})"
            # One line instead of argparse's usage block, which for these dataclasses fills a screen (see --help).
            self.exit(2, f"error: {message}\n")

    return RecipeParser(classes)


def parse_dataclasses(
    classes: tuple,
    argv: list[str] | None = None,
    sections: tuple[str, ...] = (),
    check: Callable[..., None] | None = None,
    needs_datasets: bool = True,
) -> tuple:
    """`--config recipe.yaml` plus flags (flags win) into instances of `classes`, then `check(*instances)`.

    Bad input of any kind (missing or unparsable recipe, unknown option, a value refused by a dataclass's
    `__post_init__` or by `check`) exits with code 2 and one `error: ...` line on stderr; unknown flags get hints.
    """
    import sys

    parser = _parser(classes)
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--config" in argv:
        at = argv.index("--config")
        if at + 1 >= len(argv):
            parser.error("--config needs a YAML recipe path")
        path, flags = argv[at + 1], argv[:at] + argv[at + 2 :]
        try:
            recipe = read_recipe(path, sections)
        except ValueError as error:
            parser.error(str(error))
        overridden = {a[2:].split("=")[0].replace("-", "_") for a in flags if a.startswith("--")}  # --learning-rate too
        parser.recipe, parser.from_recipe = path, frozenset(recipe) - overridden
        argv = _to_argv(recipe) + flags
    try:
        *parsed, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
        if unknown:
            known = [f"--{f.name}" for cls in classes for f in fields(cls) if f.init]  # init=False: not a flag
            hints = []
            for flag in (u.split("=")[0] for u in unknown if u.startswith("--")):
                close = difflib.get_close_matches(flag, known, n=1, cutoff=0.75)
                hints.append(f"{flag}" + (f" (did you mean {close[0]}?)" if close else ""))
            parser.error("unknown option(s): " + ", ".join(hints or unknown))
        if needs_datasets and not parsed[1].datasets:
            parser.error("--datasets: at least one source is needed")
        if check is not None:
            check(*parsed)
    except ValueError as error:  # a __post_init__ or `check` refused a value: one line, not a traceback
        parser.error(str(error))
    return (*parsed, parser)


def check_steps(train: TrainArguments) -> None:
    """A run that trains needs at least one optimizer step (max_steps 0 would export the untrained model)."""
    if train.max_steps < 1:
        raise OptionError("max_steps", f"must be >= 1, got {train.max_steps}")


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainArguments]:
    """Parse `--config recipe.yaml` plus flags (flags win) into the three argument dataclasses."""
    model, data, train, _ = parse_dataclasses(
        ARGUMENT_CLASSES, argv, check=lambda model, data, train: check_steps(train)
    )
    return model, data, train
