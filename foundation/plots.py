"""Plots shared by the demo, pretraining and evaluation: rows of field panels (input, truth, prediction, error),
and the figures of an evaluation (`foundation.evaluation`); `saved_figure`, the set-up every figure of the project
(these, the benchmark's and the study's) is drawn in."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor


@contextmanager
def saved_figure(path: str | Path, nrows: int = 1, ncols: int = 1, **options: Any) -> Iterator[tuple[Any, Any]]:
    """`plt.subplots(nrows, ncols, **options)` for the block, then written to `path` (tight layout, 80 dpi) and closed.

    Every figure of the project is made here: matplotlib is imported only when one is drawn (it is slow to import)
    and on the Agg backend, as the runs that draw them have no display.

    Args:
        path: The image file written when the block ends (not when it raises).
        nrows: Rows of axes.
        ncols: Columns of axes.
        **options: Further `plt.subplots` arguments (`figsize`, `squeeze`).

    Yields:
        The figure and its axes, as `plt.subplots` returns them.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, **options)
    yield fig, axes
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def field_rows(rows: list[tuple[str, list[Tensor], list[str]]], path: str | Path) -> None:
    """One row per (channel name, panels, titles); panels titled "error" get a diverging colour map."""
    width = max(len(panels) for _, panels, _ in rows)
    size = (2.5 * width, 2.3 * len(rows))
    with saved_figure(path, len(rows), width, figsize=size, squeeze=False) as (fig, axes):
        for r, (name, panels, titles) in enumerate(rows):
            for ax, panel, title in zip(axes[r], panels, titles):
                image = ax.imshow(
                    panel.detach().float().cpu().numpy(), cmap="RdBu_r" if title == "error" else "viridis"
                )
                ax.set_title(f"{name}: {title}", fontsize=8)
                ax.axis("off")
                fig.colorbar(image, ax=ax, fraction=0.046)


def evaluation_plots(out: Path, samples, result: dict, config) -> list[str]:
    """samples.png (input, truth, prediction, error), rollout.png and spectra.png of an evaluation result."""
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
        with saved_figure(out / "rollout.png", figsize=(5, 3.5)) as (_, ax):
            for kind in ("direct", "autoregressive"):
                ax.plot(leads, [v[kind] for v in result["rollout"].values()], "o-", label=kind)
            ax.set_xlabel("lead time")
            ax.set_ylabel("median relative L1 (%)")
            ax.legend()
        written.append("rollout.png")

    spectra = result["spectra"]
    k = spectra["wavenumber"][1:]
    with saved_figure(out / "spectra.png", 1, len(names), figsize=(4 * len(names), 3.2), squeeze=False) as (_, axes):
        for ax, c in zip(axes[0], names):
            for kind in ("truth", "prediction", "error"):
                ax.loglog(k, np.maximum(spectra[f"{kind}/{c}"][1:], 1e-30), label=kind)
            ax.set_title(c)
            ax.set_xlabel("|k|")
            ax.legend(fontsize=7)
    written.append("spectra.png")
    return written


def horizon_plot(curves: dict[str, dict], path: str | Path) -> None:
    """Error and spectral energy drift against rollout step, one line per labelled `horizon` result; the
    trained window's end (its largest lead time) dashed."""
    with saved_figure(path, 1, 2, figsize=(9, 3.5)) as (_, (err, drift)):
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
