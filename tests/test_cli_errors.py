"""Bad input to `pretrain`, `finetune` and `finetune.study` ends in one `error: ...` line and exit code 2, before any
model or data is built: broken or missing recipes, and values the argument dataclasses refuse."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import get_args

import pytest

from finetune.__main__ import main as finetune_main
from finetune.benchmark import main as benchmark_main
from finetune.config import FinetuneArguments
from finetune.config import parse_args as parse_finetune
from finetune.study import main as study_main
from pretrain.__main__ import main as pretrain_main
from pretrain.config import DataArguments, OptionError, TrainArguments

ENTRY_POINTS: dict[str, Callable[[list[str]], int]] = {
    "pretrain": pretrain_main,
    "finetune": finetune_main,
    "finetune.study": study_main,
    "finetune.benchmark": benchmark_main,
}
# What each command needs besides the option under test (nothing here exists: parsing must stop first).
REQUIRED = {
    "pretrain": ["--datasets", "nope.h5"],
    "finetune": ["--datasets", "nope.h5", "--init_from", "no/model"],
    "finetune.study": ["--datasets", "nope.h5", "--init_from", "no/model"],
    "finetune.benchmark": ["--tasks", "nope.h5", "--init_from", "no/model"],
}


def refused(command: str, argv: list[str], capfd) -> str:
    """Run the command in-process; it must exit with code 2, quickly, and print exactly one line: returned."""
    start = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        ENTRY_POINTS[command](argv)
    assert time.perf_counter() - start < 5, "refused after building something"
    assert exit_info.value.code == 2
    out, err = capfd.readouterr()
    assert "Traceback" not in err and not out
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def recipe(tmp_path: Path, command: str, text: str) -> Path:
    path = tmp_path / f"{command}.yaml"
    model = "model:\n  init_from: no/model\n" if command != "pretrain" else ""
    path.write_text(f"# a recipe\n{model}data:\n  datasets: [nope.h5]\n{text}")
    return path


@pytest.mark.parametrize("command", ENTRY_POINTS)
def test_yaml_syntax_error_names_the_file_and_line(command, tmp_path, capfd):
    path = recipe(tmp_path, command, "train:\n  max_steps: 10\n  learning_rate: 1e-3: 2\n")
    line = path.read_text().splitlines().index("  learning_rate: 1e-3: 2") + 1  # 6 (pretrain) or 8
    message = refused(command, ["--config", str(path)], capfd)
    assert message == f"error: {path}:{line}: could not parse the recipe: mapping values are not allowed here"


@pytest.mark.parametrize("command", ENTRY_POINTS)
def test_missing_recipe_names_the_path(command, tmp_path, capfd):
    path = tmp_path / "no-such-recipe.yaml"
    assert refused(command, ["--config", str(path), "--max_steps", "3"], capfd) == (
        f"error: --config {path}: no such recipe file"
    )
    assert refused(command, ["--config"], capfd) == "error: --config needs a YAML recipe path"


@pytest.mark.parametrize("command", ENTRY_POINTS)
def test_negative_learning_rate_names_the_flag_and_the_recipe(command, tmp_path, capfd):
    # YAML reads `-1e-3` (no dot) as a string, which argparse would take for an option: the recipe must still work
    for value in ("-1e-3", "-0.001"):
        path = recipe(tmp_path, command, f"train:\n  max_steps: 10\n  learning_rate: {value}\n")
        assert refused(command, ["--config", str(path)], capfd) == (
            f"error: --learning_rate must be >= 0, got -0.001 (from {path})"
        )
    # from a flag, alone or overriding the recipe: the recipe is not named
    assert refused(command, [*REQUIRED[command], "--learning_rate", "-0.001"], capfd) == (
        "error: --learning_rate must be >= 0, got -0.001"
    )
    assert refused(command, ["--config", str(path), "--learning_rate", "-0.5"], capfd) == (
        "error: --learning_rate must be >= 0, got -0.5"
    )
    assert refused(command, [*REQUIRED[command], "--learning_rate", "inf"], capfd) == (
        "error: --learning_rate must be a finite number, got inf"
    )


LEARNING_RATES = [
    ("finetune", "head_learning_rate"),
    ("finetune", "norm_learning_rate"),
    ("finetune", "refiner_learning_rate"),
    ("finetune", "refiner_bias_learning_rate"),
    ("finetune.study", "head_learning_rate"),
    ("finetune.study", "scratch_learning_rate"),
]


@pytest.mark.parametrize("command, option", LEARNING_RATES)
def test_every_learning_rate_is_checked(command, option, tmp_path, capfd):
    path = recipe(tmp_path, command, f"finetune:\n  {option}: -2.0e-3\n" if "scratch" not in option else "")
    if "scratch" in option:
        path.write_text(path.read_text() + f"study:\n  {option}: -2.0e-3\n")
    expected = f"error: --{option} must be >= 0, got -0.002"
    assert refused(command, ["--config", str(path)], capfd) == f"{expected} (from {path})"
    assert refused(command, [*REQUIRED[command], f"--{option}", "nan"], capfd) == (
        f"error: --{option} must be a finite number, got nan"
    )


@pytest.mark.parametrize(
    "command, argv, message",
    [
        ("pretrain", ["--batch_size", "0"], "--batch_size must be >= 1, got 0"),
        ("pretrain", ["--warmup_steps", "-1"], "--warmup_steps must be >= 0, got -1"),
        ("pretrain", ["--eval_every", "-5"], "--eval_every must be >= 0, got -5"),
        ("pretrain", ["--save_every", "-1"], "--save_every must be >= 0, got -1"),
        ("pretrain", ["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps must be >= 1, got 0"),
        (
            "pretrain",
            ["--precision", "fp8"],
            "argument --precision: invalid choice: 'fp8' (choose from 'fp32', 'bf16')",
        ),
        ("pretrain", ["--preset", "XL"], "argument --preset: invalid choice: 'XL' (choose from 'tiny', 'T', 'B', 'L')"),
        ("pretrain", ["--stride", "0"], "--stride must be >= 1, got 0"),
        ("finetune", ["--refiner_batch_size", "0"], "--refiner_batch_size must be >= 1, got 0"),
        ("finetune", ["--lora_rank", "0"], "--lora_rank must be >= 1, got 0"),
        ("finetune", ["--channel_map", "u", "tracer"], "--channel_map takes NEW=PRETRAINED (each NEW once), got 'u'"),
        (
            "finetune",
            ["--head_warmup_steps", "5", "--max_steps", "5"],
            "--head_warmup_steps must be below --max_steps (5)",
        ),
        (
            "finetune",
            ["--head_warmup_steps", "5", "--strategy", "head"],
            "--head_warmup_steps holds a pretrained body: only for --strategy full, not from scratch",
        ),
        ("pretrain", ["--lead_steps", "1", "-1"], "--lead_steps must be >= 0, got [1, -1]"),
        (
            "finetune",
            ["--strategy", "lorra"],
            "argument --strategy: invalid choice: 'lorra' (choose from 'full', 'head', 'lora', 'refiner', 'fno')",
        ),
        ("finetune.study", ["--n", "4", "0"], "--n must be >= 1, got [4, 0]"),
        (
            "finetune.benchmark",
            ["--methods", "fno", "unet"],
            "--methods must be among finetuned, finetuned-rollout, scratch, fno, persistence, got ['unet']",
        ),
        (
            "finetune.benchmark",
            ["--datasets", "a.h5"],
            "--datasets is not for a benchmark: its data are the --tasks, one at a time",
        ),
        (
            "finetune.benchmark",
            ["--strategy", "lora"],
            "--strategy must be full in a benchmark (it trains its scratch and FNO runs itself)",
        ),
        (
            "finetune.benchmark",
            ["--tasks", "a=x.h5", "a=y.h5"],
            "--tasks task names must be unique, got ['a', 'a'] (name them: NAME=SPEC)",
        ),
        (
            "finetune.study",
            ["--strategy", "refiner"],
            "--strategy must be full, head or lora in a study (it compares fine-tuning with scratch)",
        ),
    ],
)
def test_other_bad_values_name_the_flag(command, argv, message, capfd):
    assert refused(command, [*REQUIRED[command], *argv], capfd) == f"error: {message}"


@pytest.mark.parametrize("command", ENTRY_POINTS)
def test_zero_steps_are_refused_where_a_run_must_train(command, tmp_path, capfd):
    assert refused(command, [*REQUIRED[command], "--max_steps", "0"], capfd) == (
        "error: --max_steps must be >= 1, got 0"
    )
    path = recipe(tmp_path, command, "train:\n  max_steps: 0\n")
    assert refused(command, ["--config", str(path)], capfd) == f"error: --max_steps must be >= 1, got 0 (from {path})"


def test_zero_steps_are_the_refiner_strategy_refining_the_given_model(capfd):
    for strategy in ("full", "head", "lora"):
        assert refused("finetune", [*REQUIRED["finetune"], "--strategy", strategy, "--max_steps", "0"], capfd)
    model, data, train, tune = parse_finetune([*REQUIRED["finetune"], "--strategy", "refiner", "--max_steps", "0"])
    assert tune.strategy == "refiner" and train.max_steps == 0 and model.init_from == "no/model"
    assert refused("finetune", [*REQUIRED["finetune"], "--strategy", "refiner", "--max_steps", "-1"], capfd) == (
        "error: --max_steps must be >= 0, got -1"
    )


def test_the_dataclasses_check_their_fields_when_built_in_code():
    with pytest.raises(OptionError, match=r"^--learning_rate must be >= 0, got -1") as info:
        TrainArguments(learning_rate=-1)
    assert info.value.option == "learning_rate"
    with pytest.raises(ValueError, match="--eval_pairs must be >= 1"):
        DataArguments(eval_pairs=0)
    with pytest.raises(ValueError, match="--norm_learning_rate must be a finite number"):
        FinetuneArguments(norm_learning_rate=float("nan"))
    TrainArguments(max_steps=0)  # a valid config: the commands that must train refuse it


def test_choices_are_literal_types_checked_in_code_too():
    """The CLI gets argparse choices from the Literal types; a dataclass built in code is checked the same way."""
    from finetune.config import FinetuneArguments
    from foundation.configuration_scot import PRESETS
    from pretrain.config import ModelArguments, OptionError, Preset, TrainArguments

    assert get_args(Preset) == tuple(PRESETS)
    with pytest.raises(OptionError, match="^--strategy must be one of full, head, lora, refiner, fno, got 'lorra'$"):
        FinetuneArguments(strategy="lorra")
    with pytest.raises(OptionError, match="^--refiner_fit_split must be one of train, val, test, got 'valid'$"):
        FinetuneArguments(refiner_fit_split="valid")
    with pytest.raises(OptionError, match="^--preset must be one of tiny, T, B, L, got 'XL'$"):
        ModelArguments(preset="XL")
    with pytest.raises(OptionError, match="^--tracker must be one of tensorboard, wandb, none, got 'mlflow'$"):
        TrainArguments(tracker="mlflow")


def test_options_of_another_strategy_are_named_not_silently_dropped(capfd):
    from finetune.config import FinetuneArguments, ignored_options, parse_args

    assert ignored_options(FinetuneArguments(strategy="lora", lora_rank=4, refiner_steps=300)) == []
    assert ignored_options(FinetuneArguments(strategy="full", lora_rank=4, sobolev_s=0.5)) == ["lora_rank", "sobolev_s"]
    parse_args(["--init_from", "x", "--datasets", "y", "--strategy", "head", "--refiner_steps", "5"])
    assert capfd.readouterr().err.strip() == "warning: --strategy head ignores --refiner_steps"
