"""Sample-efficiency study: fine-tuned vs trained from scratch, as a function of the number of trajectories N.

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
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from foundation.data import DataError
from foundation.evaluation import HEADLINE
from pretrain.config import DataArguments, ModelArguments, OptionError, TrainArguments, check_range, parse_dataclasses

from .config import FinetuneArguments, check


@dataclass
class StudyArguments:
    n: list[int] = field(default_factory=lambda: [2, 4, 8, 16], metadata={"help": "Training trajectory counts."})
    scratch_learning_rate: float = field(default=2e-3, metadata={"help": "Learning rate of the scratch runs."})
    metric: str = field(default=HEADLINE, metadata={"help": "Evaluation key compared (foundation.evaluation)."})

    def __post_init__(self):
        check_range(self, "n", low=1)
        check_range(self, "scratch_learning_rate")


def fit_power_law(n: list[float], error: list[float]) -> tuple[float, float]:
    """(C, a) of error = C N^-a, least squares on log error vs log N."""
    slope, intercept = np.polyfit(np.log(np.asarray(n, float)), np.log(np.asarray(error, float)), 1)
    return float(np.exp(intercept)), float(-slope)


def gains(ns: list[int], finetuned: list[float], scratch: list[float]) -> list[dict]:
    """Accuracy and efficiency gains per N (see the module docstring)."""
    c_s, a_s = fit_power_law(ns, scratch)
    rows = []
    for n, e_ft, e_s in zip(ns, finetuned, scratch):
        needed = (c_s / e_ft) ** (1 / a_s) if a_s > 0 else float("inf")
        rows.append(
            {
                "n": n,
                "finetuned": e_ft,
                "scratch": e_s,
                "accuracy_gain": e_s / e_ft,
                "scratch_trajectories_needed": needed,
                "efficiency_gain": needed / n,
                "extrapolated": bool(needed > max(ns) or needed < min(ns)),
            }
        )
    return rows


def run_study(model_args, data_args, train_args, tune, study: StudyArguments, log=print) -> dict:
    from .trainer import Finetuner

    root = Path(train_args.output_dir)
    results: dict[str, dict[int, float]] = {"finetuned": {}, "scratch": {}}
    for n in study.n:
        for kind in ("finetuned", "scratch"):
            run_tune = copy.deepcopy(tune)
            run_tune.train_trajectories = n
            run_train = copy.deepcopy(train_args)
            run_train.output_dir = str(root / f"n{n}-{kind}")
            if kind == "scratch":
                run_tune.from_scratch, run_tune.strategy = True, "full"
                run_train.learning_rate = study.scratch_learning_rate
            trainer = Finetuner(model_args, data_args, run_train, run_tune)
            outcome = trainer.train()
            results[kind][n] = float(outcome["evaluation"][study.metric])
            log(f"[study] N={n} {kind}: {study.metric} {results[kind][n]:.3f}")
    ns = list(study.n)
    finetuned = [results["finetuned"][n] for n in ns]
    scratch = [results["scratch"][n] for n in ns]
    report = {
        "metric": study.metric,
        "split": tune.eval_split,
        "budget": {"max_steps": train_args.max_steps, "batch_size": train_args.batch_size},
        "strategy": tune.strategy,
        "n": ns,
        "finetuned": finetuned,
        "scratch": scratch,
    }
    if len(ns) >= 2:
        report["fit"] = {
            "finetuned": dict(zip(("C", "a"), fit_power_law(ns, finetuned))),
            "scratch": dict(zip(("C", "a"), fit_power_law(ns, scratch))),
        }
        report["gains"] = gains(ns, finetuned, scratch)
    root.mkdir(parents=True, exist_ok=True)
    (root / "study.json").write_text(json.dumps(report, indent=2))
    (root / "study.md").write_text(table(report))
    if len(ns) >= 2:
        plot(report, root / "study.png")
    return report


def table(report: dict) -> str:
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = np.asarray(report["n"], float)
    grid = np.geomspace(ns.min(), ns.max(), 50)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for kind, marker in (("finetuned", "o"), ("scratch", "s")):
        line = ax.loglog(ns, report[kind], marker, label=kind)[0]
        fit = report["fit"][kind]
        ax.loglog(
            grid, fit["C"] * grid ** -fit["a"], "--", color=line.get_color(), label=f"{fit['C']:.3g} N^-{fit['a']:.2f}"
        )
    ax.set_xlabel("training trajectories N")
    ax.set_ylabel(f"test {report['metric']} (%)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def check_study(model_args, data_args, train_args, tune: FinetuneArguments, study: StudyArguments) -> None:
    """What a study needs beyond a fine-tuning run's checks (ValueError of one line)."""
    check(tune, model_args, train_args)
    if tune.from_scratch:
        raise OptionError("from_scratch", "is not for a study: the study trains its scratch runs itself")
    if tune.strategy == "refiner":
        raise OptionError("strategy", "must be full, head or lora in a study (it compares fine-tuning with scratch)")


def main(argv: list[str] | None = None) -> int:
    classes = (ModelArguments, DataArguments, TrainArguments, FinetuneArguments, StudyArguments)
    model_args, data_args, train_args, tune, study, _ = parse_dataclasses(
        classes, argv, sections=("finetune", "study"), check=check_study
    )
    try:
        from pretrain.trainer import setup_runtime

        setup_runtime()
        report = run_study(model_args, data_args, train_args, tune, study)
    except (DataError, ValueError, FileNotFoundError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
