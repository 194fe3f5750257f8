"""Normalisation statistics in one streaming pass (per-channel mean and std, float64 accumulators)."""

from __future__ import annotations

import numpy as np


class RunningStats:
    """Per-channel mean and (population) standard deviation, merged batch by batch (Chan et al.)."""

    def __init__(self, channels: int):
        self.count = 0
        self.mean = np.zeros(channels, dtype=np.float64)
        self.m2 = np.zeros(channels, dtype=np.float64)

    def update(self, x: np.ndarray) -> None:
        """Add values [..., C, H, W] (any leading dims)."""
        x = np.asarray(x, dtype=np.float64)
        channels = self.mean.shape[0]
        flat = np.moveaxis(x.reshape(-1, channels, x.shape[-2] * x.shape[-1]), 1, 0).reshape(channels, -1)
        n = flat.shape[1]
        if n == 0:
            return
        mean = flat.mean(axis=1)
        m2 = ((flat - mean[:, None]) ** 2).sum(axis=1)
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * n / total
        self.m2 = self.m2 + m2 + delta**2 * self.count * n / total
        self.count = total

    def result(self, min_std: float = 1e-12) -> tuple[list[float], list[float]]:
        """(mean, std); a constant channel gets std 1 so that normalising it is a shift, never a division by 0."""
        std = np.sqrt(self.m2 / max(self.count, 1))
        std = np.where(std > min_std, std, 1.0)
        return self.mean.tolist(), std.tolist()


def compute_stats(source, split: str = "train", snapshots: list[int] | None = None) -> dict[str, list[float]]:
    """Mean and std per channel (and per static field) over a split of `source`, one streaming pass.

    Reads one snapshot at a time, so memory stays at one sample whatever the dataset size.
    """
    n_channels = source.shape[2]
    state = RunningStats(n_channels)
    static = RunningStats(len(source.info.static_names)) if source.info.static_names else None
    snaps = range(source.num_snapshots) if snapshots is None else snapshots
    for index in source.split(split):
        for s in snaps:
            state.update(source.read(index, s)[None])
        if static is not None:
            static.update(source.read_static(index)[None])
    mean, std = state.result()
    out = {"mean": mean, "std": std}
    if static is not None:
        out["static_mean"], out["static_std"] = static.result()
    return out
