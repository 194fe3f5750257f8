"""Small spectral helpers shared by the periodic solvers (unit square, n x n points x_i = i / n)."""

from __future__ import annotations

import math

import torch


def wavenumbers(n: int, device=None, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Angular wavenumbers (kx, ky) [n, n] of the full FFT on the periodic unit square (x along axis 0)."""
    k = torch.fft.fftfreq(n, d=1.0 / n, device=device, dtype=dtype) * 2 * math.pi
    return torch.meshgrid(k, k, indexing="ij")


def laplacian(u: torch.Tensor, k2: torch.Tensor) -> torch.Tensor:
    """Spectral Laplacian of real fields [..., n, n] given |k|^2 [n, n]."""
    return torch.fft.ifft2(-k2 * torch.fft.fft2(u)).real


def mesh(n: int, device=None, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.arange(n, device=device, dtype=dtype) / n
    return torch.meshgrid(x, x, indexing="ij")


def gaussian_bumps(
    X: torch.Tensor,
    Y: torch.Tensor,
    generator: torch.Generator,
    count: int,
    width: tuple[float, float],
    amplitude: tuple[float, float],
    periodic: bool = True,
) -> torch.Tensor:
    """A sum of `count` Gaussians with random centres, widths and amplitudes (periodic distances if asked)."""
    out = torch.zeros_like(X)
    params = torch.rand(count, 4, generator=generator, dtype=torch.float64).tolist()
    for cx, cy, w, a in params:
        dx, dy = X - cx, Y - cy
        if periodic:
            dx, dy = torch.remainder(dx + 0.5, 1.0) - 0.5, torch.remainder(dy + 0.5, 1.0) - 0.5
        sigma = width[0] + (width[1] - width[0]) * w
        out = out + (amplitude[0] + (amplitude[1] - amplitude[0]) * a) * torch.exp(-(dx**2 + dy**2) / (2 * sigma**2))
    return out
