"""Allen-Cahn reaction-diffusion u_t = eps^2 lap u - (u^3 - u) on the periodic unit square.

Stabilised semi-implicit spectral scheme (Shen and Yang 2010): diffusion implicit, reaction explicit, plus
S (u^{n+1} - u^n) with S = 2 >= max|f'|/2 on [-1, 1], which makes the Ginzburg-Landau energy
E(u) = mean(eps^2 |grad u|^2 / 2 + (u^2 - 1)^2 / 4) non-increasing for any time step.
"""

from __future__ import annotations

import math

import torch

from .base import PDEFamily, Trajectories, UnstableSettings, check_grid_and_span, snapshot_times
from .spectral import wavenumbers

DOMAIN = {"extent": [[0.0, 1.0], [0.0, 1.0]], "periodic": [True, True]}
STABILISER = 2.0


def energy(u: torch.Tensor, eps: float, kx: torch.Tensor, ky: torch.Tensor) -> torch.Tensor:
    u_hat = torch.fft.fft2(u)
    ux, uy = torch.fft.ifft2(1j * kx * u_hat).real, torch.fft.ifft2(1j * ky * u_hat).real
    return (0.5 * eps**2 * (ux**2 + uy**2) + 0.25 * (u**2 - 1) ** 2).mean(dim=(-2, -1))


def step(u: torch.Tensor, k2: torch.Tensor, eps: float, dt: float, n_steps: int) -> torch.Tensor:
    denominator = 1 + dt * STABILISER + dt * eps**2 * k2
    for _ in range(n_steps):
        rhs = (1 + dt * STABILISER) * torch.fft.fft2(u) - dt * torch.fft.fft2(u**3 - u)
        u = torch.fft.ifft2(rhs / denominator).real
    return u


def advance(u: torch.Tensor, duration: float, k2: torch.Tensor, eps: float, dt: float) -> tuple[torch.Tensor, int]:
    """`u` [B, n, n] after `duration`, in equal sub-steps of at most `dt`: (u, sub-steps)."""
    n_sub = max(1, math.ceil(duration / dt - 1e-9))
    return step(u, k2, eps, duration / n_sub, n_sub), n_sub


def evolve(
    fields: torch.Tensor, duration: float, static=None, eps: float = 0.02, dt: float = 1e-3, **_
) -> torch.Tensor:
    """The solver continued from given states `fields` [B, 1, n, n] (physical u) for `duration`, as `simulate`
    steps (float64 inside): what the true dynamics make of, say, a model's prediction."""
    kx, ky = wavenumbers(fields.shape[-1], fields.device, torch.float64)
    u, _ = advance(fields[:, 0].double(), duration, kx**2 + ky**2, eps, dt)
    return u[:, None].to(fields.dtype)


def initial_condition(batch: int, n: int, generator: torch.Generator, dtype=torch.float64) -> torch.Tensor:
    """Smoothed random fields in about [-0.9, 0.9] (modes up to |k| = 2 pi * 6)."""
    kx, ky = wavenumbers(n, dtype=dtype)
    keep = (kx**2 + ky**2) <= (2 * math.pi * 6) ** 2
    noise = torch.randn(batch, n, n, generator=generator, dtype=dtype)
    smooth = torch.fft.ifft2(torch.fft.fft2(noise) * keep).real
    return 0.9 * smooth / smooth.abs().amax(dim=(-2, -1), keepdim=True)


def simulate(
    batch: int,
    resolution: int,
    snapshots: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    t_end: float = 1.0,
    eps: float = 0.02,
    dt: float = 1e-3,
    dtype: torch.dtype = torch.float64,
) -> Trajectories:
    check_grid_and_span(resolution, snapshots, t_end)
    if eps * resolution < 1.0:
        raise UnstableSettings(
            f"eps = {eps} is not resolved by {resolution} points (need eps * n >= 1: interfaces are ~eps wide)"
        )
    if not 0 < dt <= 0.05:
        raise UnstableSettings(f"dt {dt} outside (0, 0.05]: the scheme stays energy stable but loses accuracy")
    kx, ky = wavenumbers(resolution, device, dtype)
    k2 = kx**2 + ky**2
    u = initial_condition(batch, resolution, generator, dtype).to(device)
    times = snapshot_times(t_end, snapshots)
    frames, steps, t = [u], 0, 0.0
    for target in times[1:]:
        u, n_sub = advance(u, target - t, k2, eps, dt)
        steps, t = steps + n_sub, float(target)
        frames.append(u)
    fields = torch.stack(frames, dim=1)[:, :, None].float().cpu()
    return Trajectories(
        fields=fields,
        times=times,
        settings={"scheme": "stabilised semi-implicit spectral", "stabiliser": STABILISER, "dt": dt, "steps": steps},
    )


FAMILIES = {
    "allen-cahn": PDEFamily(
        id="allen-cahn",
        channel_names=("u",),
        static_names=(),
        steady=False,
        t_end=1.0,
        params={"eps": 0.02, "dt": 1e-3},
        domain=DOMAIN,
        simulate=simulate,
        evolve=evolve,
        description="Allen-Cahn phase separation from smoothed random data",
    ),
}
