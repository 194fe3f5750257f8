"""What pretraining buys, in numbers (`finetune.benchmark`, `finetune.study`): power-law fits of error against the
number of training trajectories N, the accuracy and efficiency gains of the fine-tuned model over a baseline, and the
median validation curve of the seeds."""

from __future__ import annotations

import numpy as np

BASELINES = ("scratch", "fno", "persistence")  # what the fine-tuned model is measured against


def fit_power_law(n: list[float], error: list[float]) -> tuple[float, float]:
    """(C, a) of error = C N^-a, least squares on log error vs log N."""
    slope, intercept = np.polyfit(np.log(np.asarray(n, float)), np.log(np.asarray(error, float)), 1)
    return float(np.exp(intercept)), float(-slope)


def gains(ns: list[int], finetuned: list[float], baseline: list[float]) -> list[dict]:
    """Per N: accuracy gain (baseline error / fine-tuned error, measured) and efficiency gain (trajectories the
    baseline's power-law fit needs to reach the fine-tuned error, over N; flagged where it extrapolates).

    Args:
        ns: The training trajectory counts, at least two (the fit).
        finetuned: The fine-tuned model's error per N.
        baseline: The baseline's error per N.
    """
    c, a = fit_power_law(ns, baseline)
    rows = []
    for n, e_ft, e_b in zip(ns, finetuned, baseline):
        needed = (c / e_ft) ** (1 / a) if a > 0 else float("inf")
        rows.append(
            {
                "n": n,
                "finetuned": e_ft,
                "baseline": e_b,
                "accuracy_gain": e_b / e_ft,
                "trajectories_needed": needed,
                "efficiency_gain": needed / n,
                "extrapolated": bool(needed > max(ns) or needed < min(ns)),
            }
        )
    return rows


def baseline_gains(ns: list[int], methods: dict[str, dict]) -> dict[str, list[dict]]:
    """The fine-tuned model's gains over each baseline of a benchmark task that has one (and at least two N).

    Args:
        ns: The training trajectory counts.
        methods: A task's rows: method -> str(N) -> {"test": median test error, ...} (a benchmark's at twice the
            budget, with double_budget); "finetuned" among them.

    Returns:
        Baseline -> `gains` rows; for persistence only the error ratio per N, as it has no learning curve to fit
        (the training mean barely moves with N).
    """
    finetuned = [methods["finetuned"][str(n)]["test"] for n in ns]
    out = {}
    for baseline in BASELINES:
        if baseline in methods and len(ns) >= 2:
            errors = [methods[baseline][str(n)]["test"] for n in ns]
            if baseline == "persistence":
                out[baseline] = [{"n": n, "ratio": f / e} for n, f, e in zip(ns, finetuned, errors)]
            else:
                out[baseline] = gains(ns, finetuned, errors)
    return out


def median_curve(curves: list[list[list[float]]]) -> list[list[float]]:
    """[[step, median over seeds of the validation error]] on the steps every curve has."""
    steps = sorted(set.intersection(*(set(step for step, _ in c) for c in curves)))
    values = [dict((step, v) for step, v in c) for c in curves]
    return [[step, float(np.median([v[step] for v in values]))] for step in steps]
