"""Plots shared by the demo, pretraining and evaluation: rows of field panels (input, truth, prediction, error)."""

from __future__ import annotations

from pathlib import Path

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
