"""Sample-efficiency study: fine-tuned vs trained from scratch, as a function of the number of trajectories N: the
benchmark (`finetune.benchmark`, which also runs an FNO and persistence, several tasks, seeds and learning-rate
grids) on one task, with one learning rate per method.

    python -m finetune.study --init_from runs/demo/pretrain/model --datasets DATA --n 2 4 8 16 \\
        --max_steps 300 --output_dir runs/study [--strategy full] [--scratch_learning_rate 2e-3]

For every N, the pretrained model is fine-tuned on the first N training trajectories and the same architecture
is trained from a random initialisation on the same trajectories with the same budget (steps, batch); both are
evaluated on the same held-out test trajectories (median relative L1 %, mean over channel groups, physical
units). Then, as in the Poseidon paper:
- a power law error ~ C N^-a is fitted to each curve (least squares in log-log);
- accuracy gain AG(N) = error_scratch(N) / error_finetuned(N) (measured);
- efficiency gain EG(N) = N_scratch / N, N_scratch being the number of trajectories the scratch fit needs to
  reach the fine-tuned error at N (an extrapolation where it lies beyond the largest N, flagged so).
Writes study.json, study.md (table) and study.png (curves and fits) into --output_dir.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from foundation.evaluation import HEADLINE
from foundation.plots import saved_figure
from pretrain.config import DataArguments, ModelArguments, OptionError, TrainArguments, check_range

from .benchmark import BenchmarkArguments, cli, run_benchmark
from .cells import RunArguments, cell_folder
from .config import FinetuneArguments, check
from .gains import fit_power_law, gains


@dataclass
class StudyArguments:
    """What a study compares: its trajectory counts, the scratch runs' learning rate and the metric."""

    n: list[int] = field(default_factory=lambda: [2, 4, 8, 16], metadata={"help": "Training trajectory counts."})
    scratch_learning_rate: float = field(default=2e-3, metadata={"help": "Learning rate of the scratch runs."})
    metric: str = field(default=HEADLINE, metadata={"help": "Evaluation key compared (foundation.evaluation)."})

    def __post_init__(self) -> None:
        check_range(self, "n", low=1)
        check_range(self, "scratch_learning_rate")


def run_study(
    model_args: ModelArguments,
    data_args: DataArguments,
    train_args: TrainArguments,
    finetune_args: FinetuneArguments,
    study: StudyArguments,
    log: Callable[[str], None] = print,
) -> dict:
    """The benchmark (`finetune.benchmark`) on one task with two methods, one learning rate each and the run's
    seed; study.json / study.md / study.png in the study's own format.

    Args:
        model_args: The pretrained model (`--init_from`).
        data_args: The one task (`--datasets`) and the data options.
        train_args: The budget, the output folder, the seed and the fine-tuned run's learning rate.
        finetune_args: The fine-tuning options (`--strategy`).
        study: The trajectory counts, the scratch runs' learning rate and the metric compared.
        log: Where the one line per cell goes.

    Returns:
        The report, as study.json holds it.
    """
    bench = BenchmarkArguments(
        tasks=[data_args.datasets[0]],
        n=list(study.n),
        methods=["finetuned", "scratch"],
        seeds=[train_args.seed],
        finetuned_learning_rates=[train_args.learning_rate],
        scratch_learning_rates=[study.scratch_learning_rate],
        double_budget=False,  # one budget, as the study reports it
        finetuned_warmup_steps=train_args.warmup_steps,  # both methods warm up alike, as before
    )
    run = RunArguments(model_args, copy.deepcopy(data_args), train_args, finetune_args)
    run.data_args.datasets = []  # a benchmark's data are its tasks: this one
    (task,) = run_benchmark(run.model_args, run.data_args, run.train_args, run.finetune_args, bench, log=log)[
        "tasks"
    ].values()
    root = Path(train_args.output_dir)
    ((name, _),) = bench.task_list()  # the file's stem, or the family of a pde: spec
    ns = list(study.n)
    results: dict[str, list[float]] = {}
    for kind in ("finetuned", "scratch"):
        results[kind] = []
        for n in ns:
            lr = bench.learning_rates(kind)[0]
            folder = cell_folder(root, name, kind, n, train_args.seed, lr, train_args.max_steps)
            results[kind].append(float(json.loads((folder / "cell.json").read_text())["test_metrics"][study.metric]))
    report = {
        "metric": study.metric,
        "split": "test",
        "budget": run.budget(),
        "strategy": finetune_args.strategy,
        "n": ns,
        "finetuned": results["finetuned"],
        "scratch": results["scratch"],
        "cells": str(root / name),
    }
    if len(ns) >= 2:
        report["fit"] = {
            "finetuned": dict(zip(("C", "a"), fit_power_law(ns, results["finetuned"]))),
            "scratch": dict(zip(("C", "a"), fit_power_law(ns, results["scratch"]))),
        }
        report["gains"] = [
            {**row, "scratch": row.pop("baseline"), "scratch_trajectories_needed": row.pop("trajectories_needed")}
            for row in gains(ns, results["finetuned"], results["scratch"])
        ]
    root.mkdir(parents=True, exist_ok=True)
    (root / "study.json").write_text(json.dumps(report, indent=2))
    (root / "study.md").write_text(table(report))
    if len(ns) >= 2:
        plot(report, root / "study.png")
    return report


def table(report: dict) -> str:
    """The report as markdown: error per N of both, the gains, the fitted power laws."""
    lines = [
        f"Test {report['metric']} (%), {report['strategy']} fine-tuning vs scratch, "
        f"{report['budget']['max_steps']} steps x batch {report['budget']['batch_size']} each\n",
        "| N | fine-tuned | scratch | accuracy gain | efficiency gain |",
        "|---|---|---|---|---|",
    ]
    for row in report.get("gains") or [
        {"n": n, "finetuned": f, "scratch": s} for n, f, s in zip(report["n"], report["finetuned"], report["scratch"])
    ]:
        ag = f"{row['accuracy_gain']:.2f}" if "accuracy_gain" in row else "-"
        eg = "-"
        if "efficiency_gain" in row and np.isfinite(row["efficiency_gain"]):
            eg = f"{row['efficiency_gain']:.2f}" + (" (extrapolated)" if row["extrapolated"] else "")
        lines.append(f"| {row['n']} | {row['finetuned']:.2f} | {row['scratch']:.2f} | {ag} | {eg} |")
    if "fit" in report:
        for kind, fit in report["fit"].items():
            lines.append(f"\n{kind}: error ~ {fit['C']:.3g} N^-{fit['a']:.3f}")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    """Error against N of both, log-log, with their fitted power laws dashed."""
    ns = np.asarray(report["n"], float)
    grid = np.geomspace(ns.min(), ns.max(), 50)
    with saved_figure(path, figsize=(5, 3.6)) as (_, ax):
        for kind, marker in (("finetuned", "o"), ("scratch", "s")):
            line = ax.loglog(ns, report[kind], marker, label=kind)[0]
            fit = report["fit"][kind]
            label = f"{fit['C']:.3g} N^-{fit['a']:.2f}"
            ax.loglog(grid, fit["C"] * grid ** -fit["a"], "--", color=line.get_color(), label=label)
        ax.set_xlabel("training trajectories N")
        ax.set_ylabel(f"test {report['metric']} (%)")
        ax.legend(fontsize=7)


def check_study(
    model_args: ModelArguments,
    data_args: DataArguments,
    train_args: TrainArguments,
    finetune_args: FinetuneArguments,
    study: StudyArguments,
) -> None:
    """What a study needs beyond a fine-tuning run's checks (`finetune.config.check`).

    Raises:
        OptionError: --from_scratch (the study trains its scratch runs itself), a strategy other than full, head
            or lora, or other than one dataset.
    """
    check(finetune_args, model_args, train_args)
    if finetune_args.from_scratch:
        raise OptionError("from_scratch", "is not for a study: the study trains its scratch runs itself")
    if finetune_args.strategy in ("refiner", "fno"):
        raise OptionError("strategy", "must be full, head or lora in a study (it compares fine-tuning with scratch)")
    if len(data_args.datasets) != 1:
        raise OptionError("datasets", "a study is one task: give one dataset (finetune.benchmark takes several)")


def main(argv: list[str] | None = None) -> int:
    """`python -m finetune.study`: the exit code."""
    return cli(argv, StudyArguments, "study", check_study, run_study, table)


if __name__ == "__main__":
    raise SystemExit(main())
