"""What a benchmark (`finetune.benchmark`) writes into its output folder: benchmark.json (the report), benchmark.md
(`table`: the median test error per task x N x method, marked where doubling the budget still changed it, the error
ratios, rollouts past the training window, the gains) and benchmark.png (`figure`: error against N per task)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from foundation.plots import saved_figure

from .gains import BASELINES


def write(report: dict, root: Path, plot: bool = False) -> None:
    """benchmark.json and benchmark.md into `root`, and benchmark.png with `plot` (once, at the end of a run)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "benchmark.json").write_text(json.dumps(report, indent=2))
    (root / "benchmark.md").write_text(table(report))
    if plot:
        figure(report, root / "benchmark.png")


def table(report: dict) -> str:
    """The report as markdown: its caption, the test error table and what follows it (see the module)."""
    methods = report["methods"]
    steps, batch = report["budget"]["max_steps"], report["budget"]["batch_size"]
    if report.get("double_budget"):
        budget = (
            f"every trained method {2 * steps} steps x batch {batch} (learning rate chosen on validation at "
            f"{steps} steps, then every seed trained again at twice the budget, own warm-up and cosine schedule)"
        )
    else:
        budget = f"every trained method {steps} steps x batch {batch}, learning rate chosen on validation"
    lines = [
        f"Test {report['metric']} (%), median over seeds {report['seeds']} [min-max]; {budget}; persistence is "
        "the training mean on steady tasks. Pretrained model: " + str(report["init_from"]) + "\n",
        "| task | N | "
        + " | ".join(methods)
        + " | fine-tuned / scratch | fine-tuned / FNO | fine-tuned / persistence |",
        "|---|---|" + "---|" * (len(methods) + 3),
    ]
    unconverged = False
    for name, task in report["tasks"].items():
        for n in report["n"]:
            cells, errors = [], {}
            for method in methods:
                row = task["methods"].get(method, {}).get(str(n))
                if row is None:
                    cells.append("-")
                    continue
                errors[method] = row["test"]
                spread = f" [{row['test_min']:.2f}-{row['test_max']:.2f}]" if len(row["test_by_seed"]) > 1 else ""
                mark = "*" if row.get("converged") is False else ""
                unconverged |= bool(mark)
                cells.append(f"{row['test']:.2f}{mark}{spread}")
            ratios = [
                f"{errors['finetuned'] / errors[b]:.2f}" if "finetuned" in errors and b in errors else "-"
                for b in BASELINES
            ]
            lines.append(f"| {name} | {n} | " + " | ".join(cells + ratios) + " |")
    if unconverged:
        tolerance = 100 * report.get("converged_tolerance", 0.05)
        lines.append(f"\n\\* doubling the budget changed the test error by {tolerance:g} % or more: not converged")
    return "\n".join(lines + _horizon_lines(report) + _gain_lines(report)) + "\n"


def _horizon_lines(report: dict) -> list[str]:
    """The table of rollouts past the training window, for the tasks x N that have them (none: no lines)."""
    methods = report["methods"]
    long = [
        (name, n, task)
        for name, task in report["tasks"].items()
        for n in report["n"]
        if any("horizon_final" in (task["methods"].get(m, {}).get(str(n)) or {}) for m in methods)
    ]
    if not long:
        return []
    lines = [
        "\nPast the training window: the same models rolled out from the first test snapshot to the end of "
        "trajectories longer than the window (default strategy), median rel. L1 (%) at the last step\n",
        "| task | N | last step | " + " | ".join(methods) + " |",
        "|---|---|---|" + "---|" * len(methods),
    ]
    for name, n, task in long:
        rows = [task["methods"].get(m, {}).get(str(n)) or {} for m in methods]
        step = next(r["horizon_final_step"] for r in rows if "horizon_final_step" in r)
        cells = [f"{r['horizon_final']:.2f}" if "horizon_final" in r else "-" for r in rows]
        lines.append(f"| {name} | {n} | {step} | " + " | ".join(cells) + " |")
    return lines


def _gain_lines(report: dict) -> list[str]:
    """Per task: the gains over each fitted baseline."""
    lines = []
    for name, task in report["tasks"].items():
        for baseline, rows in (task.get("gains") or {}).items():
            if rows and "efficiency_gain" in rows[0]:
                text = ", ".join(
                    f"N={r['n']}: AG {r['accuracy_gain']:.2f}, EG {r['efficiency_gain']:.3g}"
                    + (" (extrapolated)" if r["extrapolated"] else "")
                    for r in rows
                )
                lines.append(f"\n{name} vs {baseline}: {text}")
    return lines


def figure(report: dict, path: Path) -> None:
    """Median test error against N per method (seeds' min-max as error bars), one panel per task, log-log."""
    tasks = list(report["tasks"].items())
    if not tasks:
        return
    with saved_figure(path, 1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False) as (_, axes):
        ns = np.asarray(report["n"], float)
        for ax, (name, task) in zip(axes[0], tasks):
            for method, rows in task["methods"].items():
                ys = [rows[str(n)]["test"] for n in report["n"]]
                lo = [rows[str(n)]["test"] - rows[str(n)]["test_min"] for n in report["n"]]
                hi = [rows[str(n)]["test_max"] - rows[str(n)]["test"] for n in report["n"]]
                ax.errorbar(ns, ys, yerr=[lo, hi], marker="o", capsize=3, label=method)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(name)
            ax.set_xlabel("training trajectories N")
            ax.set_ylabel("test median rel. L1 (%)")
            ax.legend(fontsize=7)
