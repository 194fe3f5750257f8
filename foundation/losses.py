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


def negative_sobolev_norm(
    u: Tensor, s: float = 1.0, alpha: float = 1.0, lengths: tuple[float, float] = (1.0, 1.0), squared: bool = True
) -> Tensor:
    """H^-s norm of periodic fields (..., H, W), exactly by Parseval: sum_k (alpha + |k|^2)^-s |u_k|^2.

    `u_k` are the Fourier coefficients normalised so that sum_k |u_k|^2 = mean(u^2) (norm="forward"), and k the
    angular wavenumbers of a box of side `lengths`. s = 0 gives the mean square; larger s weighs low
    frequencies more (Spectral-Refiner's loss, e.g. on the residual or on prediction - target); alpha = 0 leaves
    the mean out (the homogeneous seminorm). FFTs in fp64.
    Returns one value per leading index (the squared norm unless `squared=False`).
    """
    h, w = u.shape[-2:]
    coeffs = torch.fft.fft2(u.to(torch.float64), norm="forward")
    ky = torch.fft.fftfreq(h, d=lengths[0] / h, device=u.device, dtype=torch.float64) * 2 * torch.pi
    kx = torch.fft.fftfreq(w, d=lengths[1] / w, device=u.device, dtype=torch.float64) * 2 * torch.pi
    base = alpha + ky[:, None] ** 2 + kx[None, :] ** 2
    # alpha = 0 is the homogeneous seminorm: the mean (k = 0) carries no weight instead of an infinite one.
    weight = torch.where(base > 0, base.clamp_min(1e-300) ** (-s), torch.zeros_like(base))
    norm2 = (weight * coeffs.abs() ** 2).sum(dim=(-2, -1))
    return norm2 if squared else norm2.sqrt()


ROLLOUT_MODES = ("pushforward", "unrolled")


def unrolled_loss(
    model,
    pixel_values: Tensor,
    targets: Tensor,
    time: Tensor,
    mode: str = "pushforward",
    noise_std: float = 0.0,
    channel_mask: Tensor | None = None,
    config=None,
) -> Tensor:
    """The loss of a K-step rollout: the model fed its own outputs K times, compared with the stored snapshots.

    Args:
        model: any model of `finetune.load_model` (called as `model(pixel_values=, time=).output`, with `.config`).
        pixel_values: (B, C_in, H, W) normalised inputs at t0.
        targets: (B, K, C_out, H, W) normalised snapshots at t0 + k * time, k = 1..K.
        time: (B,) the lead time of every step, or (B, K) one per step, in the model's units.
        mode: "unrolled" -- the mean over the K steps of the relative Lp loss, gradients through every step;
            "pushforward" -- the first K - 1 steps without gradient (cheap: no activations kept), the loss of the
            last step only: the model learns to correct the inputs it will produce itself (Brandstetter et al.,
            2022), at the memory of one step.
        noise_std: Gaussian noise (normalised units) added to the input of every step that is trained (all of
            them when unrolled, the last when pushforward): robustness to the errors a rollout feeds back.
        channel_mask: (B, C_out) 0 where a sample lacks a channel (no loss, its fill is kept in the inputs).
        config: The model's config when `model` is wrapped (DDP, DeepSpeed) and has none itself.
    Only the evolving outputs are fed back (`foundation.evaluation.feed_back`); static inputs stay.
    """
    from .evaluation import feed_back, feedable

    if mode not in ROLLOUT_MODES:
        raise ValueError(f"rollout mode must be one of {', '.join(ROLLOUT_MODES)}, got {mode!r}")
    if targets.dim() != 5:
        raise ValueError(f"targets must be (B, K, C_out, H, W), got shape {tuple(targets.shape)}")
    config = model.config if config is None else config
    feed = feedable(config)
    if feed is None:
        raise ValueError(f"outputs {config.output_channel_names} are not all inputs: a rollout cannot feed them back")
    groups, p = config.channel_slice_list_normalized_loss, config.p
    steps = targets.shape[1]

    def noisy(x: Tensor) -> Tensor:
        return x + noise_std * torch.randn_like(x) if noise_std > 0 else x

    def lead(k: int) -> Tensor:
        return time[:, k] if time.dim() == 2 else time

    state, losses = pixel_values, []
    if mode == "pushforward" and steps > 1:
        with torch.no_grad():
            for k in range(steps - 1):
                state = feed_back(state, model(pixel_values=state, time=lead(k)).output, feed, channel_mask)
        state = state.detach()
    first = steps - 1 if mode == "pushforward" else 0
    for k in range(first, steps):
        y = model(pixel_values=noisy(state), time=lead(k)).output
        losses.append(relative_lp_loss(y, targets[:, k], groups, p=p, channel_mask=channel_mask))
        if k + 1 < steps:
            state = feed_back(state, y, feed, channel_mask)
    return torch.stack(losses).mean()
