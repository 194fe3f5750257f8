"""Losses: the relative Lp of the reference and the negative Sobolev norm of Spectral-Refiner."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from foundation.losses import negative_sobolev_norm, relative_lp_loss


@pytest.mark.parametrize("s,alpha", [(1.0, 1.0), (0.5, 2.0), (2.0, 0.5)])
def test_negative_sobolev_norm_matches_a_direct_sum_over_modes(s, alpha):
    rng = np.random.default_rng(0)
    h, w, lengths = 6, 5, (2.0, 1.0)
    u = rng.normal(size=(h, w))
    total = 0.0
    for p in range(h):  # explicit DFT coefficients and wavenumbers, no FFT
        for q in range(w):
            coeff = sum(u[a, b] * np.exp(-2j * np.pi * (p * a / h + q * b / w)) for a in range(h) for b in range(w))
            coeff /= h * w
            ky = 2 * np.pi * (p if p <= h // 2 else p - h) / lengths[0]
            kx = 2 * np.pi * (q if q <= w // 2 else q - w) / lengths[1]
            if h % 2 == 0 and p == h // 2:
                ky = -ky  # fftfreq's Nyquist sign; |k|^2 is the same either way
            total += (alpha + ky**2 + kx**2) ** (-s) * abs(coeff) ** 2
    value = negative_sobolev_norm(torch.tensor(u), s=s, alpha=alpha, lengths=lengths)
    assert value.item() == pytest.approx(total, rel=1e-12)


def test_negative_sobolev_norm_is_parseval_at_s_zero_and_damps_high_modes():
    x = torch.linspace(0, 1, 33, dtype=torch.float64)[:-1]
    X, Y = torch.meshgrid(x, x, indexing="ij")
    low, high = torch.sin(2 * math.pi * X), torch.sin(2 * math.pi * 8 * X)
    assert negative_sobolev_norm(low, s=0.0).item() == pytest.approx((low.double() ** 2).mean().item(), rel=1e-10)
    # same energy, 64x smaller H^-1 norm for the 8x higher frequency (alpha 0 isolates the |k|^-2 weight)
    ratio = negative_sobolev_norm(low, s=1.0, alpha=0.0) / negative_sobolev_norm(high, s=1.0, alpha=0.0)
    assert ratio.item() == pytest.approx(64.0, rel=1e-9)


def test_relative_lp_loss_groups_and_masks():
    pred, target = torch.ones(2, 4, 3, 3), torch.full((2, 4, 3, 3), 2.0)
    assert relative_lp_loss(pred, target, [0, 1, 3, 4]).item() == pytest.approx(0.5)
    pred[:, 0] = 100.0
    mask = torch.tensor([0.0, 1.0, 1.0, 1.0])
    assert relative_lp_loss(pred, target, [0, 1, 3, 4], channel_mask=mask).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shape"):
        relative_lp_loss(pred, target[:, :3])
