"""Plots shared by the demo, pretraining and evaluation: rows of field panels (input, truth, prediction, error),
and the figures of an evaluation (`foundation.evaluation`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor


def field_rows(rows: list[tuple[str, list[Tensor], list[str]]], path: str | Path) -> None:
    """One row per (channel name, panels, titles); panels titled "error" get a diverging colour map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = max(len(panels) for _, panels, _ in rows)
    fig, axes = plt.subplots(len(rows), width, figsize=(2.5 * width, 2.3 * len(rows)), squeeze=False)
    for r, (name, panels, titles) in enumerate(rows):
        for ax, panel, title in zip(axes[r], panels, titles):
            image = ax.imshow(panel.detach().float().cpu().numpy(), cmap="RdBu_r" if title == "error" else "viridis")
            ax.set_title(f"{name}: {title}", fontsize=8)
            ax.axis("off")
            fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def evaluation_plots(out: Path, samples, result: dict, config) -> list[str]:
    """samples.png (input, truth, prediction, error), rollout.png and spectra.png of an evaluation result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    names = config.output_channel_names
    rows = []
    for x, truth, pred, lead in samples:
        for c, name in enumerate(names):
            ci = config.channel_names.index(name) if name in config.channel_names else 0
            panels = [x[ci], truth[c], pred[c], pred[c] - truth[c]]
            rows.append((name, panels, ["input (normalised)", f"truth (lead {lead:.2f})", "prediction", "error"]))
    field_rows(rows, out / "samples.png")
    written.append("samples.png")

    if result["rollout"]:
        leads = [float(t) for t in result["rollout"]]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for kind in ("direct", "autoregressive"):
            ax.plot(leads, [v[kind] for v in result["rollout"].values()], "o-", label=kind)
        ax.set_xlabel("lead time")
        ax.set_ylabel("median relative L1 (%)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "rollout.png", dpi=80)
        plt.close(fig)
        written.append("rollout.png")

    spectra = result["spectra"]
    k = spectra["wavenumber"][1:]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for ax, c in zip(axes[0], names):
        for kind in ("truth", "prediction", "error"):
            ax.loglog(k, np.maximum(spectra[f"{kind}/{c}"][1:], 1e-30), label=kind)
        ax.set_title(c)
        ax.set_xlabel("|k|")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "spectra.png", dpi=80)
    plt.close(fig)
    written.append("spectra.png")
    return written


def horizon_plot(curves: dict[str, dict], path: str | Path) -> None:
    """Error and spectral energy drift against rollout step, one line per labelled `horizon` result; the
    trained window's end (its largest lead time) dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (err, drift) = plt.subplots(1, 2, figsize=(9, 3.5))
    window, held = None, None
    for label, result in curves.items():
        err.plot(result["lead_time"], result["median_rel_l1_physical/mean"], "o-", ms=3, label=label)
        drift.plot(result["lead_time"], result["energy_drift"], "o-", ms=3, label=label)
        window = window or result.get("trained_max_lead")
        if held is None and "persistence" in result:
            held = (result["lead_time"], result["persistence"])
    if held:  # the same for every model of one data set: drawn once
        err.plot(*held, ":", color="black", lw=1, label="persistence (first snapshot held)")
    for ax in (err, drift):
        if window:
            ax.axvline(window, color="grey", ls="--", lw=1)
        ax.set_xlabel("lead time (model units)")
    err.set_ylabel("median relative L1 (%)")
    drift.set_ylabel("energy drift (prediction / truth - 1)")
    err.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
