"""The reference's metric: per-sample relative Lp error (in %) per channel group. Summaries, spaces and rollouts
are `foundation.evaluation`'s."""

from __future__ import annotations

import torch
from torch import Tensor


def relative_error_per_sample(
    pred: Tensor, target: Tensor, groups: list[int], p: int = 1, channel_mask: Tensor | None = None, eps: float = 1e-10
) -> Tensor:
    """(B, G) relative Lp error in % of each sample and channel group; NaN where a group is masked out.

    Args:
        pred, target: (B, C, H, W).
        groups: channel-group boundaries, e.g. [0, 1, 3, 4].
        p: 1 (the reference metric) or 2.
        channel_mask: (B, C) or (C,) 0/1: channels a sample does not have are left out of their group.
    """
    diff = (pred.float() - target.float()).abs().pow(p).flatten(2).sum(-1)  # (B, C)
    ref = target.float().abs().pow(p).flatten(2).sum(-1)
    weight = torch.ones_like(diff) if channel_mask is None else channel_mask.float().to(diff.device).expand_as(diff)
    out = []
    for start, stop in zip(groups[:-1], groups[1:]):
        w = weight[:, start:stop]
        num, den = (diff[:, start:stop] * w).sum(-1), (ref[:, start:stop] * w).sum(-1)
        err = (num / (den + eps)).pow(1.0 / p) * 100.0
        out.append(torch.where(w.sum(-1) > 0, err, torch.full_like(err, float("nan"))))
    return torch.stack(out, dim=-1)
