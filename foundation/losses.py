"""Training losses (as in the reference): relative Lp per channel group, averaged over groups."""

from __future__ import annotations

import torch
from torch import Tensor


def relative_lp_loss(
    pred: Tensor,
    target: Tensor,
    groups: list[int] | None = None,
    p: int = 1,
    channel_mask: Tensor | None = None,
    eps: float = 1e-10,
) -> Tensor:
    """Mean over channel groups of ||pred_g - y_g||_p^p / (||y_g||_p^p + eps), summed over the batch.

    Args:
        pred: (B, C, H, W) prediction.
        target: (B, C, H, W) target, same shape.
        groups: channel-group boundaries, e.g. [0, 1, 3, 4] for rho | u, v | p; None = one group per channel.
        p: 1 (L1, the reference default) or 2 (squared L2).
        channel_mask: optional (C,) or (B, C) 0/1 weights; masked channels count neither in the numerator nor
            in the denominator, and a group with no unmasked channel in the batch is left out of the mean.
        eps: keeps all-zero targets finite.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
    channels = pred.shape[1]
    groups = list(range(channels + 1)) if groups is None else list(groups)
    if groups[0] != 0 or groups[-1] != channels:
        raise ValueError(f"channel groups {groups} do not cover the {channels} channels")
    diff = (pred.float() - target.float()).abs().pow(p)
    ref = target.float().abs().pow(p)
    per_channel_diff = diff.flatten(2).sum(-1)  # (B, C)
    per_channel_ref = ref.flatten(2).sum(-1)
    if channel_mask is not None:
        weight = torch.as_tensor(channel_mask, dtype=torch.float32, device=pred.device).expand_as(per_channel_diff)
        per_channel_diff = per_channel_diff * weight
        per_channel_ref = per_channel_ref * weight
    else:
        weight = torch.ones_like(per_channel_diff)
    losses, present = [], []
    for start, stop in zip(groups[:-1], groups[1:]):
        num = per_channel_diff[:, start:stop].sum()
        den = per_channel_ref[:, start:stop].sum()
        losses.append(num / (den + eps))
        present.append((weight[:, start:stop].sum() > 0).float())
    losses_t, present_t = torch.stack(losses), torch.stack(present)
    return (losses_t * present_t).sum() / present_t.sum().clamp_min(1.0)
