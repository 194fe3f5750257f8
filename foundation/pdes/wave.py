"""Acoustic wave equation u_tt = c(x)^2 lap u on the periodic unit square, with c a static field.

Pseudo-spectral Laplacian, Stormer-Verlet (leapfrog) in time: symplectic and second order, so the wave energy
is conserved up to a bounded O(dt^2) oscillation. Stable for dt * c_max * |k|_max < 2, |k|_max = sqrt(2) pi n;
the time step is that bound times `cfl` (<= 1).
"""

from __future__ import annotations

import functools
import math

import torch

from .base import PDEFamily, Trajectories, UnstableSettings, check_grid_and_span, snapshot_times
from .spectral import gaussian_bumps, laplacian, mesh, wavenumbers

DOMAIN = {"extent": [[0.0, 1.0], [0.0, 1.0]], "periodic": [True, True]}


def wave_speed(family: str, X: torch.Tensor, Y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    if family == "wave-gauss":  # a smooth medium: background plus Gaussian inclusions
        return 1.0 + gaussian_bumps(X, Y, generator, 3, (0.08, 0.2), (-0.4, 0.4))
    if family == "wave-layer":  # horizontal layers with random speeds and slightly wavy interfaces
        layers = 3 + int(torch.randint(0, 3, (1,), generator=generator))
        speeds = 0.6 + 0.8 * torch.rand(layers, generator=generator, dtype=torch.float64)
        bounds = torch.sort(torch.rand(layers - 1, generator=generator, dtype=torch.float64)).values
        phase = float(torch.rand(1, generator=generator)) * 2 * math.pi
        depth = Y + 0.02 * torch.sin(2 * math.pi * X + phase)
        c = torch.full_like(X, float(speeds[0]))
        for b, s in zip(bounds.tolist(), speeds[1:].tolist()):
            c = torch.where(depth > b, torch.full_like(X, s), c)
        return c
    raise UnstableSettings(f"unknown wave family {family!r}")


def step(u: torch.Tensor, v: torch.Tensor, c2: torch.Tensor, k2: torch.Tensor, dt: float, n_steps: int):
    """n_steps of Stormer-Verlet for (u, u_t)."""
    acc = c2 * laplacian(u, k2)
    for _ in range(n_steps):
        v = v + 0.5 * dt * acc
        u = u + dt * v
        acc = c2 * laplacian(u, k2)
        v = v + 0.5 * dt * acc
    return u, v


def energy(u: torch.Tensor, v: torch.Tensor, c2: torch.Tensor, kx: torch.Tensor, ky: torch.Tensor) -> torch.Tensor:
    """0.5 * mean(u_t^2 + c^2 |grad u|^2) per sample (conserved for constant c)."""
    u_hat = torch.fft.fft2(u)
    ux, uy = torch.fft.ifft2(1j * kx * u_hat).real, torch.fft.ifft2(1j * ky * u_hat).real
    return 0.5 * (v**2 + c2 * (ux**2 + uy**2)).mean(dim=(-2, -1))


def max_stable_dt(c_max: float, n: int) -> float:
    return 2.0 / (c_max * math.sqrt(2.0) * math.pi * n)


def simulate(
    batch: int,
    resolution: int,
    snapshots: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    family: str = "wave-gauss",
    t_end: float = 1.0,
    cfl: float = 0.5,
    dtype: torch.dtype = torch.float64,
) -> Trajectories:
    """u at `snapshots` times in [0, t_end], starting from Gaussian pulses at rest; c as the static field."""
    check_grid_and_span(resolution, snapshots, t_end)
    if not 0 < cfl <= 1.0:
        raise UnstableSettings(f"cfl {cfl} outside (0, 1]: leapfrog is unstable beyond dt * c * |k|max = 2")
    X, Y = mesh(resolution, device, dtype)
    kx, ky = wavenumbers(resolution, device, dtype)
    k2 = kx**2 + ky**2
    c = torch.stack([wave_speed(family, X.cpu(), Y.cpu(), generator) for _ in range(batch)]).to(device)
    u = torch.stack(
        [gaussian_bumps(X.cpu(), Y.cpu(), generator, 2, (0.03, 0.08), (-1.0, 1.0)) for _ in range(batch)]
    ).to(device)
    v = torch.zeros_like(u)
    c2 = c**2
    dt_max = cfl * max_stable_dt(float(c.max()), resolution)
    times = snapshot_times(t_end, snapshots)
    frames, steps, t = [u], 0, 0.0
    for target in times[1:]:
        n_sub = max(1, math.ceil((target - t) / dt_max))
        u, v = step(u, v, c2, k2, (target - t) / n_sub, n_sub)
        steps, t = steps + n_sub, float(target)
        frames.append(u)
    fields = torch.stack(frames, dim=1)[:, :, None].float().cpu()  # [B, T, 1, n, n]
    return Trajectories(
        fields=fields,
        times=times,
        static=c[:, None].float().cpu(),
        settings={"scheme": "pseudo-spectral, Stormer-Verlet", "cfl": cfl, "steps": steps, "dt_max": dt_max},
    )


def _family(id_: str, description: str) -> PDEFamily:
    return PDEFamily(
        id=id_,
        channel_names=("u",),
        static_names=("c",),
        steady=False,
        t_end=1.0,
        params={"cfl": 0.5},
        domain=DOMAIN,
        simulate=functools.partial(simulate, family=id_),
        description=description,
    )


FAMILIES = {
    "wave-gauss": _family("wave-gauss", "acoustic waves in a smooth medium with Gaussian inclusions"),
    "wave-layer": _family("wave-layer", "acoustic waves in a layered medium"),
}
