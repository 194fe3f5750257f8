"""Incompressible Navier-Stokes on the periodic unit square, pseudo-spectral in vorticity form.

    w_t + u . grad w = nu lap w + f,     u = curl^-1 w,     (optional) c_t + u . grad c = kappa lap c

Time stepping is torch-cfd's low-storage RK4 / Crank-Nicolson IMEX scheme (explicit advection and forcing,
implicit diffusion), with torch-cfd's grid and vorticity-to-velocity inversion and a symmetric 2/3-rule
filter. The equation object is ours so that a passive tracer and the static Kolmogorov forcing ride along in
one batched state [B, 1 or 2, n, n/2 + 1]. The time step follows the CFL condition of the current velocity
and lands exactly on every snapshot time. Output: velocity (u, v) (and the tracer) at the snapshots.

Initial-condition families in the spirit of Poseidon's NS-Sines, NS-Gauss, NS-PwC, NS-SL (shear layer) and
FNS-KF (Kolmogorov forcing, f = 0.1 sin(2 pi (x + y)) as a static field).
"""

from __future__ import annotations

import functools
import math

import torch
from torch_cfd.grids import Grid
from torch_cfd.spectral import RK4CrankNicolsonStepper, vorticity_to_velocity

from .base import PDEFamily, Trajectories, UnstableSettings, snapshot_times

DOMAIN = {"extent": [[0.0, 1.0], [0.0, 1.0]], "periodic": [True, True]}


class VorticityEquation(torch.nn.Module):
    """The IMEX split of the vorticity (and tracer) equation for torch-cfd's steppers.

    State: rfft2 coefficients [B, K, n, n/2 + 1], K = 1 (vorticity) or 2 (vorticity, tracer).
    """

    def __init__(
        self,
        n: int,
        viscosity: float,
        diffusivity: float = 0.0,
        forcing: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float64,
    ):
        super().__init__()
        self.grid = Grid((n, n), domain=((0.0, 1.0), (0.0, 1.0)), device=torch.device(device))
        kx, ky = self.grid.rfft_mesh()
        self.kx, self.ky = kx.to(device=device, dtype=dtype), ky.to(device=device, dtype=dtype)
        laplace = -4 * math.pi**2 * (self.kx**2 + self.ky**2)
        self.n = n
        self.linear = torch.stack([viscosity * laplace, diffusivity * laplace])  # per state channel
        # 2/3 rule on a set symmetric in +-k (torch-cfd's brick-wall filter keeps one extra negative kx row, which
        # breaks the exact energy and enstrophy conservation of the truncated inviscid system).
        cutoff = n / 3
        self.filter = ((self.kx.abs() <= cutoff) & (self.ky.abs() <= cutoff)).to(dtype)
        self.forcing_hat = None if forcing is None else torch.fft.rfft2(forcing.to(device=device, dtype=dtype))

    def velocity(self, w_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Physical velocity (u, v) [B, n, n] from vorticity coefficients [B, n, n/2 + 1]."""
        (u_hat, v_hat), _ = vorticity_to_velocity(self.grid, w_hat, (self.kx, self.ky))
        return torch.fft.irfft2(u_hat, s=(self.n, self.n)), torch.fft.irfft2(v_hat, s=(self.n, self.n))

    def explicit_terms(self, state: torch.Tensor, t: float = 0.0) -> torch.Tensor:
        u, v = self.velocity(state[:, 0])
        ikx, iky = 2j * math.pi * self.kx, 2j * math.pi * self.ky
        out = []
        for k in range(state.shape[1]):  # advection of vorticity and tracer by the same velocity
            gx = torch.fft.irfft2(ikx * state[:, k], s=(self.n, self.n))
            gy = torch.fft.irfft2(iky * state[:, k], s=(self.n, self.n))
            out.append(torch.fft.rfft2(-(u * gx + v * gy)) * self.filter)  # 2/3 de-aliasing
        terms = torch.stack(out, dim=1)
        if self.forcing_hat is not None:
            terms[:, 0] = terms[:, 0] + self.forcing_hat
        return terms

    def implicit_terms(self, state: torch.Tensor) -> torch.Tensor:
        return self.linear[: state.shape[1]] * state

    def implicit_solve(self, state: torch.Tensor, step: float) -> torch.Tensor:
        return state / (1 - step * self.linear[: state.shape[1]])


# ----------------------------------------------------------------------------------------------- initial conditions
def _mesh(n: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.arange(n, device=device, dtype=dtype) / n
    return torch.meshgrid(x, x, indexing="ij")  # X varies along the first (row) axis


def _rand(generator: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=generator, dtype=torch.float64)


def _vorticity_of_velocity(u: torch.Tensor, v: torch.Tensor, eq: VorticityEquation) -> torch.Tensor:
    u_hat, v_hat = torch.fft.rfft2(u), torch.fft.rfft2(v)
    return 2j * math.pi * (eq.kx * v_hat - eq.ky * u_hat)  # w = dv/dx - du/dy


def initial_vorticity(family: str, batch: int, eq: VorticityEquation, generator: torch.Generator) -> torch.Tensor:
    """rfft2 coefficients [B, n, n/2 + 1] of the initial vorticity of `family`."""
    n, device, dtype = eq.n, eq.kx.device, eq.kx.dtype
    X, Y = _mesh(n, device, dtype)
    family = family.replace("-tracer", "")  # the tracer variants share the vorticity families
    out = []
    for _ in range(batch):
        if family == "ns-sines":  # sum of sines in velocity with amplitudes decaying with frequency
            p = 10
            alpha = (_rand(generator, p, p) * 2 - 1).to(device)
            beta = _rand(generator, p, p).to(device)
            gamma = _rand(generator, p, p).to(device)
            u = torch.zeros_like(X)
            v = torch.zeros_like(X)
            for i in range(p):
                for j in range(p):
                    scale = 1.0 / (2 * math.pi * (i + j + 1))
                    u = u + alpha[i, j] * scale * torch.sin(2 * math.pi * ((i + 1) * X + (j + 1) * Y + beta[i, j]))
                    v = v + alpha[i, j] * scale * torch.sin(2 * math.pi * ((i + 1) * X + (j + 1) * Y + gamma[i, j]))
            w_hat = _vorticity_of_velocity(u, v, eq)
        elif family == "ns-gauss":  # superposed Gaussian vortices of random sign, width and position
            m = 8
            w = torch.zeros_like(X)
            centres, widths, amps = _rand(generator, m, 2), 0.025 + 0.075 * _rand(generator, m), _rand(generator, m)
            for k in range(m):
                dx = torch.remainder(X - centres[k, 0].item() + 0.5, 1.0) - 0.5  # periodic distance
                dy = torch.remainder(Y - centres[k, 1].item() + 0.5, 1.0) - 0.5
                sign = 1.0 if amps[k] > 0.5 else -1.0
                w = w + sign * 2.0 * torch.exp(-(dx**2 + dy**2) / (2 * widths[k].item() ** 2)) / widths[k].item()
            w_hat = torch.fft.rfft2(w - w.mean())
        elif family == "ns-pwc":  # piecewise constant vorticity on a random p x p partition
            p = 1 + int(_rand(generator, 1).item() * 4) + 2
            values = (_rand(generator, p, p) * 2 - 1) * 10
            idx = torch.arange(n, device=device) * p // n
            w = values.to(device)[idx[:, None], idx[None, :]]
            w_hat = torch.fft.rfft2(w - w.mean())
        elif family == "ns-sl":  # double shear layer with a perturbed interface
            rho, delta = 0.1, 0.05
            k = 10
            phases = _rand(generator, 2, k).to(device) * 2 * math.pi
            amps = _rand(generator, 2, k).to(device) * 0.05
            sigma = sum(amps[0, m] * torch.sin(2 * math.pi * (m + 1) * X + phases[0, m]) for m in range(k))
            u = torch.where(Y <= 0.5, torch.tanh((Y - 0.25 - sigma) / rho), torch.tanh((0.75 + sigma - Y) / rho))
            v = delta * torch.sin(
                2
                * math.pi
                * (X + sum(amps[1, m] * torch.cos(2 * math.pi * (m + 1) * Y + phases[1, m]) for m in range(k)))
            )
            w_hat = _vorticity_of_velocity(u, v, eq)
        elif family == "ns-kf":  # a random smooth vorticity field, then Kolmogorov forcing drives the flow
            k2 = (eq.kx**2 + eq.ky**2).clamp_min(1.0)
            noise = torch.randn(n, n // 2 + 1, 2, generator=generator, dtype=dtype).to(device)
            spectrum = torch.view_as_complex(noise.contiguous()) * k2 ** (-1.5) * n * n * 5.0
            spectrum[0, 0] = 0
            w_hat = spectrum * (k2 <= 64)
        else:
            raise UnstableSettings(f"unknown Navier-Stokes family {family!r}")
        out.append(w_hat)
    return torch.stack(out)


def initial_tracer(batch: int, eq: VorticityEquation, generator: torch.Generator) -> torch.Tensor:
    """A blob-and-stripes passive scalar in [0, 1]."""
    X, Y = _mesh(eq.n, eq.kx.device, eq.kx.dtype)
    out = []
    for _ in range(batch):
        c = _rand(generator, 3).tolist()
        field = 0.5 + 0.5 * torch.sin(2 * math.pi * (X + c[0])) * torch.cos(2 * math.pi * (2 * Y + c[1]))
        out.append(torch.fft.rfft2(field * (0.5 + 0.5 * c[2])))
    return torch.stack(out)


def kolmogorov_forcing(n: int, device=None, dtype=torch.float64) -> torch.Tensor:
    X, Y = _mesh(n, device, dtype)
    return 0.1 * torch.sin(2 * math.pi * (X + Y))


# ----------------------------------------------------------------------------------------------- simulate
def simulate(
    batch: int,
    resolution: int,
    snapshots: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    family: str = "ns-sines",
    t_end: float = 1.0,
    viscosity: float = 4e-4,
    tracer: bool = False,
    diffusivity: float = 0.0,
    cfl: float = 0.5,
    dtype: torch.dtype = torch.float64,
) -> Trajectories:
    """Simulate `batch` trajectories of `family` and return (u, v[, tracer]) at `snapshots` times in [0, t_end]."""
    if resolution < 16:
        raise UnstableSettings(f"resolution {resolution} is too coarse for the spectral solver (>= 16)")
    if not 0 < cfl <= 1.0:
        raise UnstableSettings(f"cfl {cfl} outside (0, 1]: the explicit advection step would be unstable")
    if viscosity < 0 or diffusivity < 0:
        raise UnstableSettings(f"viscosity {viscosity} and diffusivity {diffusivity} must be >= 0")
    if snapshots < 1 or t_end <= 0:
        raise UnstableSettings(f"need snapshots >= 1 and t_end > 0, got {snapshots}, {t_end}")
    forcing = kolmogorov_forcing(resolution, device, dtype) if family == "ns-kf" else None
    eq = VorticityEquation(resolution, viscosity, diffusivity, forcing, device, dtype)
    stepper = RK4CrankNicolsonStepper()
    state = initial_vorticity(family, batch, eq, generator)[:, None]
    if tracer:
        state = torch.cat([state, initial_tracer(batch, eq, generator)[:, None]], dim=1)
    times = snapshot_times(t_end, snapshots)
    frames, steps, t = [], 0, 0.0
    for target in times:
        state, n_steps = _advance(state, eq, stepper, t, float(target), cfl, family)
        steps, t = steps + n_steps, float(target)
        frames.append(_physical(state, eq))
    fields = torch.stack(frames, dim=1).float().cpu()  # [B, T, C, n, n]
    static = None if forcing is None else forcing.float().cpu().expand(batch, 1, resolution, resolution).clone()
    settings = {
        "scheme": "pseudo-spectral vorticity, 2/3 de-aliasing, torch-cfd RK4 / Crank-Nicolson IMEX",
        "cfl": cfl,
        "steps": steps,
        "dtype": str(dtype).replace("torch.", ""),
    }
    return Trajectories(fields=fields, times=times, static=static, settings=settings)


def _advance(state, eq: VorticityEquation, stepper, t: float, target: float, cfl: float, family: str):
    """`state` (rfft2 coefficients) from time `t` to `target` in sub-steps at CFL number `cfl`: (state, steps)."""
    steps = 0
    while target - t > 1e-12:
        u, v = eq.velocity(state[:, 0])
        speed = float(torch.maximum(u.abs().amax(), v.abs().amax()))
        interval = target - t
        n_sub = max(1, math.ceil(interval / (cfl * (1.0 / eq.n) / max(speed, 1e-8))))
        dt = interval / n_sub
        for _ in range(n_sub):
            state = stepper(state, dt, eq, t)
            t += dt
            steps += 1
        t = target
        if not torch.isfinite(state).all():
            raise UnstableSettings(f"{family}: the solution blew up before t = {target:.4g} (dt = {dt:.3g})")
    return state, steps


def _physical(state: torch.Tensor, eq: VorticityEquation) -> torch.Tensor:
    """(u, v[, tracer]) [B, C, n, n] of a state."""
    channels = list(eq.velocity(state[:, 0]))
    if state.shape[1] > 1:
        channels.append(torch.fft.irfft2(state[:, 1], s=(eq.n, eq.n)))
    return torch.stack(channels, dim=1)


def evolve(
    fields: torch.Tensor,
    duration: float,
    static=None,
    family: str = "ns-sines",
    viscosity: float = 4e-4,
    diffusivity: float = 0.0,
    cfl: float = 0.5,
    **_,
) -> torch.Tensor:
    """The solver continued from given states `fields` [B, 2 or 3, n, n] (physical u, v[, tracer]) for
    `duration`: the vorticity of (u, v) (its divergent part, which the flow cannot carry, drops out), stepped as
    `simulate` steps (float64 inside), then (u, v[, tracer]) again."""
    n, device = fields.shape[-1], fields.device
    forcing = kolmogorov_forcing(n, device) if family == "ns-kf" else None
    eq = VorticityEquation(n, viscosity, diffusivity, forcing, device)
    x = fields.double()
    state = [_vorticity_of_velocity(x[:, 0], x[:, 1], eq)]
    if fields.shape[1] > 2:
        state.append(torch.fft.rfft2(x[:, 2]))
    state, _ = _advance(torch.stack(state, dim=1), eq, RK4CrankNicolsonStepper(), 0.0, duration, cfl, family)
    return _physical(state, eq).to(fields.dtype)


def _family(id_: str, description: str, **params) -> PDEFamily:
    tracer = params.get("tracer", False)
    return PDEFamily(
        id=id_,
        channel_names=("u", "v", "tracer") if tracer else ("u", "v"),
        static_names=("f",) if id_ == "ns-kf" else (),
        steady=False,
        t_end=1.0,
        params={"viscosity": 4e-4, "cfl": 0.5, **params},
        domain=DOMAIN,
        simulate=functools.partial(simulate, family=id_),
        evolve=functools.partial(evolve, family=id_),
        description=description,
    )


FAMILIES = {
    "ns-sines": _family("ns-sines", "incompressible NS, sum-of-sines initial velocity"),
    "ns-gauss": _family("ns-gauss", "incompressible NS, superposed Gaussian vortices"),
    "ns-pwc": _family("ns-pwc", "incompressible NS, piecewise constant initial vorticity"),
    "ns-sl": _family("ns-sl", "incompressible NS, perturbed double shear layer"),
    "ns-kf": _family("ns-kf", "incompressible NS with Kolmogorov forcing 0.1 sin(2 pi (x + y))"),
    "ns-tracer-pwc": _family(
        "ns-tracer-pwc", "incompressible NS, piecewise constant vorticity, passive tracer", tracer=True
    ),
}
