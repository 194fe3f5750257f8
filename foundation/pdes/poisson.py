"""Steady Poisson problem -lap u = f on the unit square with u = 0 on the boundary (source -> solution).

The grid holds the n x n interior nodes x_i = i / (n + 1). A sine transform (computed with an FFT of the odd
extension) diagonalises the Laplacian with eigenvalues (pi k)^2, so the solve is exact for sine modes and
spectrally accurate for smooth sources.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .base import PDEFamily, Trajectories, UnstableSettings
from .spectral import gaussian_bumps

DOMAIN = {
    "extent": [[0.0, 1.0], [0.0, 1.0]],
    "periodic": [False, False],
    "boundary": "dirichlet u = 0",
    "nodes": "interior, x_i = i / (n + 1)",
}


def dst1(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Type-I discrete sine transform along `dim` (unnormalised): X_k = sum_i x_i sin(pi i k / (n + 1))."""
    x = x.movedim(dim, -1)
    n = x.shape[-1]
    zeros = torch.zeros(*x.shape[:-1], 1, dtype=x.dtype, device=x.device)
    extended = torch.cat([zeros, x, zeros, -x.flip(-1)], dim=-1)  # odd extension, period 2 (n + 1)
    out = -torch.fft.fft(extended, dim=-1).imag[..., 1 : n + 1] / 2
    return out.movedim(-1, dim)


def solve(f: torch.Tensor) -> torch.Tensor:
    """u with -lap u = f, u = 0 on the boundary, for sources [..., n, n] on the interior nodes."""
    n = f.shape[-1]
    if f.shape[-2] != n:
        raise UnstableSettings(f"the sine solver needs square grids, got {tuple(f.shape[-2:])}")
    k = torch.arange(1, n + 1, dtype=f.dtype, device=f.device) * math.pi
    eig = k[:, None] ** 2 + k[None, :] ** 2
    coeff = dst1(dst1(f, -1), -2) / eig
    return dst1(dst1(coeff, -1), -2) * (2.0 / (n + 1)) ** 2  # DST-I is its own inverse up to 2 / (n + 1)


def nodes(n: int, device=None, dtype=torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.arange(1, n + 1, device=device, dtype=dtype) / (n + 1)
    return torch.meshgrid(x, x, indexing="ij")


def simulate(
    batch: int,
    resolution: int,
    snapshots: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    sources: int = 6,
    dtype: torch.dtype = torch.float64,
) -> Trajectories:
    if resolution < 8:
        raise UnstableSettings(f"resolution {resolution} too coarse (>= 8)")
    if snapshots != 1:
        raise UnstableSettings(f"poisson-gauss is steady: one snapshot (the solution), got --snapshots {snapshots}")
    X, Y = nodes(resolution, dtype=dtype)
    f = torch.stack(
        [gaussian_bumps(X, Y, generator, sources, (0.03, 0.1), (-50.0, 50.0), periodic=False) for _ in range(batch)]
    ).to(device)
    u = solve(f)
    return Trajectories(
        fields=u[:, None, None].float().cpu(),
        times=np.zeros(1),
        static=f[:, None].float().cpu(),
        settings={"scheme": "sine transform (exact for the discrete sine modes)"},
    )


FAMILIES = {
    "poisson-gauss": PDEFamily(
        id="poisson-gauss",
        channel_names=("u",),
        static_names=("f",),
        steady=True,
        t_end=1.0,
        params={"sources": 6},
        domain=DOMAIN,
        simulate=simulate,
        description="steady Poisson problem with Gaussian sources, zero Dirichlet data",
    ),
}
