"""Compressible Euler equations in 2-D: a batched finite-volume solver and the CE-RP, CE-KH, CE-Gauss families.

    d_t (rho, rho u, rho v, E) + d_x F(U) + d_y G(U) = 0,    p = (gamma - 1) (E - rho (u^2 + v^2) / 2)

Scheme (Toro, "Riemann Solvers and Numerical Methods for Fluid Dynamics", 3rd ed., 2009):
- finite volumes on a uniform Cartesian grid, unsplit: x and y fluxes enter every Runge-Kutta stage;
- MUSCL reconstruction of the primitive variables (rho, u, v, p) with a slope limiter (minmod by default, MC or
  van Leer optional). Every limiter here keeps the face values between the neighbouring cell values, so faces
  inherit positive density and pressure from the cells;
- HLLC Riemann solver (Toro sec. 10.4) with pressure-based wave-speed estimates (Toro sec. 10.5.2) or Davis' bounds;
- SSP-RK2 (default) or SSP-RK3 in time, dt from the CFL condition of the unsplit 2-D scheme,
  dt = cfl / (max(|u| + c) / dx + max(|v| + c) / dy), one dt per trajectory;
- boundary conditions per axis: "periodic" or "transmissive" (zero-gradient ghost cells).

Layout: states are [B, C, Nx, Ny] with x along dim -2 and y along dim -1, as the Navier-Stokes families of this
package and the Poseidon files ("x-dim, y-dim") store them; `u` is the velocity along x (dim -2). Cell i covers
[i dx, (i + 1) dx]: values live at cell centres (i + 1/2) dx.

`exact_riemann` samples the exact solution of the 1-D Riemann problem (Toro ch. 4) and is what the tests check
the solver against.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .base import PDEFamily, Trajectories, UnstableSettings, snapshot_times

GAMMA = 1.4
DOMAIN = {"extent": [[0.0, 1.0], [0.0, 1.0]], "periodic": [True, True]}
CHANNELS = ("rho", "u", "v", "p")
LIMITERS = ("minmod", "mc", "vanleer")
INTEGRATORS = ("ssprk2", "ssprk3")
WAVE_SPEEDS = ("pressure", "davis")
BOUNDARIES = ("periodic", "transmissive")
MAX_CFL = 0.5  # unsplit 2-D MUSCL-RK: the CFL bound of the first-order Godunov stage in 2-D


class PositivityError(FloatingPointError):
    """The solution lost positivity (density or pressure <= 0) or became non-finite; raised instead of writing it."""


# ----------------------------------------------------------------------------------------------- state conversions
def conservative_to_primitive(U: torch.Tensor, gamma: float = GAMMA) -> torch.Tensor:
    """(rho, rho u, rho v, E) [B, 4, ...] -> (rho, u, v, p) [B, 4, ...]."""
    rho, mx, my, E = U.unbind(1)
    u, v = mx / rho, my / rho
    p = (gamma - 1.0) * (E - 0.5 * (mx * u + my * v))
    return torch.stack([rho, u, v, p], dim=1)


def primitive_to_conservative(W: torch.Tensor, gamma: float = GAMMA) -> torch.Tensor:
    """(rho, u, v, p) [B, 4, ...] -> (rho, rho u, rho v, E) [B, 4, ...]."""
    rho, u, v, p = W.unbind(1)
    E = p / (gamma - 1.0) + 0.5 * rho * (u * u + v * v)
    return torch.stack([rho, rho * u, rho * v, E], dim=1)


def max_dt(
    U: torch.Tensor, cfl: float, gamma: float = GAMMA, dx: float | None = None, dy: float | None = None
) -> torch.Tensor:
    """Largest stable time step [B] per trajectory of U [B, 4, Nx, Ny]: cfl / (max(|u|+c)/dx + max(|v|+c)/dy).

    dx and dy default to the unit square (1 / Nx, 1 / Ny).
    """
    dx = 1.0 / U.shape[-2] if dx is None else dx
    dy = 1.0 / U.shape[-1] if dy is None else dy
    return _max_dt_primitive(conservative_to_primitive(U, gamma), cfl, gamma, dx, dy)


def _max_dt_primitive(W: torch.Tensor, cfl: float, gamma: float, dx: float, dy: float) -> torch.Tensor:
    rho, u, v, p = W.unbind(1)
    c = torch.sqrt(gamma * p / rho)
    sx = (u.abs() + c).flatten(1).amax(1)
    sy = (v.abs() + c).flatten(1).amax(1)
    # Unsplit 2-D: the first-order update is a convex combination of the two 1-D updates, so the x and y rates add
    # up; dt (sx / dx + sy / dy) <= 1/2 keeps every MUSCL-RK stage within the 1-D Godunov CFL bound of 1.
    return cfl / (sx / dx + sy / dy)


# ----------------------------------------------------------------------------------------------- reconstruction
def _limited_slope(a: torch.Tensor, b: torch.Tensor, limiter: str) -> torch.Tensor:
    """Limited slope from the backward (a) and forward (b) differences of a cell."""
    if limiter == "minmod":  # max(min(a, b), 0) + min(max(a, b), 0): the smaller one if signs agree, else 0
        return torch.minimum(a, b).clamp_min(0.0) + torch.maximum(a, b).clamp_max(0.0)
    if limiter == "mc":  # monotonised central: minmod(2a, (a + b) / 2, 2b)
        lo = torch.minimum(torch.minimum(2 * a, 2 * b), 0.5 * (a + b))
        hi = torch.maximum(torch.maximum(2 * a, 2 * b), 0.5 * (a + b))
        return lo.clamp_min(0.0) + hi.clamp_max(0.0)
    if limiter == "vanleer":  # harmonic mean, 0 at extrema; the inner where() avoids 0/0 where a = b = 0
        ab = a * b
        return torch.where(ab > 0, 2 * ab / (a + b).where(ab > 0, torch.ones_like(a)), torch.zeros_like(a))
    raise ValueError(f"unknown limiter {limiter!r}; choose from {LIMITERS}")


def _pad_last(q: torch.Tensor, bc: str) -> torch.Tensor:
    """Two ghost cells on each side of the last dim of q [B, C, M, N]."""
    if bc == "periodic":
        return torch.cat([q[..., -2:], q, q[..., :2]], dim=-1)
    if bc == "transmissive":
        return F.pad(q, (2, 2, 0, 0), mode="replicate")
    raise ValueError(f"unknown boundary condition {bc!r}; choose from {BOUNDARIES}")


def _faces_last(W: torch.Tensor, bc: str, limiter: str) -> tuple[torch.Tensor, torch.Tensor]:
    """MUSCL left/right states [B, 4, M, N + 1] at the N + 1 faces along the last dim of W [B, 4, M, N]."""
    n = W.shape[-1]
    Wp = _pad_last(W, bc)  # cells -2 .. N + 1
    d = Wp[..., 1:] - Wp[..., :-1]  # N + 3 differences
    s = _limited_slope(d[..., :-1], d[..., 1:], limiter)  # slopes of cells -1 .. N
    left = Wp[..., 1 : n + 2] + 0.5 * s[..., : n + 1]  # right edge of cells -1 .. N - 1
    right = Wp[..., 2 : n + 3] - 0.5 * s[..., 1 : n + 2]  # left edge of cells 0 .. N
    return left, right


# ----------------------------------------------------------------------------------------------- HLLC
def hllc_flux(WL: torch.Tensor, WR: torch.Tensor, gamma: float = GAMMA, wave_speeds: str = "pressure") -> torch.Tensor:
    """HLLC flux (Toro sec. 10.4) normal to a face from primitive states (rho, u_n, u_t, p) [B, 4, ...] either side.

    Returns the flux of (rho, rho u_n, rho u_t, E) [B, 4, ...].
    """
    rl, ul, vl, pl = WL.unbind(1)
    rr, ur, vr, pr = WR.unbind(1)
    cl = torch.sqrt(gamma * pl / rl)
    cr = torch.sqrt(gamma * pr / rr)
    if wave_speeds == "pressure":  # Toro sec. 10.5.2: PVRS star pressure decides shock or rarefaction per side
        p_star = (0.5 * (pl + pr) - 0.125 * (ur - ul) * (rl + rr) * (cl + cr)).clamp_min(0.0)
        g = (gamma + 1.0) / (2.0 * gamma)
        ql = torch.where(p_star > pl, torch.sqrt(1.0 + g * (p_star / pl - 1.0)), torch.ones_like(pl))
        qr = torch.where(p_star > pr, torch.sqrt(1.0 + g * (p_star / pr - 1.0)), torch.ones_like(pr))
        sl, sr = ul - cl * ql, ur + cr * qr
    elif wave_speeds == "davis":
        sl, sr = torch.minimum(ul - cl, ur - cr), torch.maximum(ul + cl, ur + cr)
    else:
        raise ValueError(f"unknown wave-speed estimate {wave_speeds!r}; choose from {WAVE_SPEEDS}")
    ml, mr = rl * (sl - ul), rr * (sr - ur)  # ml < 0 < mr whenever c > 0, so the denominator never vanishes
    s_star = (pr - pl + ul * ml - ur * mr) / (ml - mr)

    # Pick each face's side once: the flux is F_K + s_K (U*_K - U_K) with s_K = 0 outside the fan (F = F_K), K = L
    # left of the contact and R right of it (Toro eqs. 10.38-10.39). Selecting the states before the algebra keeps
    # every branch finite and avoids stacking four candidate fluxes.
    left = s_star >= 0
    r, u, v, p = (torch.where(left, a, b) for a, b in ((rl, rr), (ul, ur), (vl, vr), (pl, pr)))
    s = torch.where(left, sl, sr)
    m = torch.where(left, ml, mr)
    s = torch.where((sl >= 0) | (sr <= 0), torch.zeros_like(s), s)  # supersonic: the upwind physical flux
    E = p / (gamma - 1.0) + 0.5 * r * (u * u + v * v)
    # U*_K - U_K = r (s_K - u) / (s_K - s*) [1, s*, v, E/r + (s* - u)(s* + p / m)] - [r, r u, r v, E]; with
    # chi = (s_K - u) / (s_K - s*) - 1 = (s* - u) / (s_K - s*) the differences stay well scaled.
    chi = (s_star - u) / torch.where(s == 0, torch.ones_like(s), s - s_star)
    d_rho = r * chi
    d_mx = r * ((chi + 1.0) * s_star - u)
    d_my = d_rho * v
    d_E = E * chi + (chi + 1.0) * r * (s_star - u) * (s_star + p / m)
    ru = r * u
    return torch.stack(
        [ru + s * d_rho, ru * u + p + s * d_mx, ru * v + s * d_my, u * (E + p) + s * d_E],
        dim=1,
    )


# ----------------------------------------------------------------------------------------------- solver
@dataclass(frozen=True)
class EulerSolver:
    """Unsplit MUSCL-HLLC finite-volume solver for the 2-D compressible Euler equations on a uniform grid.

    States are conservative U [B, 4, Nx, Ny] = (rho, rho u, rho v, E), x along dim -2, y along dim -1.

    Args:
        dx: Cell width along x (dim -2).
        dy: Cell width along y (dim -1).
        gamma: Ratio of specific heats of the ideal gas.
        bc_x: Boundary condition along x: "periodic" or "transmissive".
        bc_y: Boundary condition along y: "periodic" or "transmissive".
        limiter: Slope limiter of the MUSCL reconstruction: "minmod", "mc" or "vanleer".
        time_integrator: "ssprk2" (Heun, 2 stages) or "ssprk3" (Shu-Osher, 3 stages).
        wave_speeds: HLLC wave-speed estimate: "pressure" (Toro's pressure-based) or "davis".
    """

    dx: float
    dy: float
    gamma: float = GAMMA
    bc_x: str = "periodic"
    bc_y: str = "periodic"
    limiter: str = "minmod"
    time_integrator: str = "ssprk2"
    wave_speeds: str = "pressure"

    def __post_init__(self) -> None:
        for name, value, allowed in [
            ("bc_x", self.bc_x, BOUNDARIES),
            ("bc_y", self.bc_y, BOUNDARIES),
            ("limiter", self.limiter, LIMITERS),
            ("time_integrator", self.time_integrator, INTEGRATORS),
            ("wave_speeds", self.wave_speeds, WAVE_SPEEDS),
        ]:
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose from {allowed}")
        if not self.gamma > 1.0:
            raise UnstableSettings(f"gamma {self.gamma} must be > 1 for an ideal gas")
        if not (self.dx > 0 and self.dy > 0):
            raise UnstableSettings(f"cell sizes must be positive, got dx={self.dx}, dy={self.dy}")

    def _flux_divergence_last(self, W: torch.Tensor, bc: str, h: float) -> torch.Tensor:
        """-(F_{j+1/2} - F_{j-1/2}) / h along the last dim; W holds (rho, u_normal, u_tangential, p)."""
        left, right = _faces_last(W, bc, self.limiter)
        flux = hllc_flux(left, right, self.gamma, self.wave_speeds)
        return (flux[..., :-1] - flux[..., 1:]) / h

    def rhs(self, U: torch.Tensor) -> torch.Tensor:
        """dU/dt = -(dF/dx + dG/dy) of U [B, 4, Nx, Ny]."""
        W = conservative_to_primitive(U, self.gamma)
        # y faces: y is already the last dim, (u, v) swapped so the normal velocity comes first.
        swap = [0, 2, 1, 3]
        dy_part = self._flux_divergence_last(W[:, swap], self.bc_y, self.dy)[:, swap]
        # x faces: the same 1-D code on the transposed grid, so x and y share every line of the flux computation.
        dx_part = self._flux_divergence_last(W.transpose(-1, -2).contiguous(), self.bc_x, self.dx).transpose(-1, -2)
        return dx_part + dy_part

    def step(self, U: torch.Tensor, dt: torch.Tensor | float) -> torch.Tensor:
        """One SSP Runge-Kutta step; dt is a float or a per-trajectory tensor [B]."""
        if isinstance(dt, torch.Tensor):
            dt = dt.to(U.dtype).view(-1, 1, 1, 1)
        U1 = U + dt * self.rhs(U)
        if self.time_integrator == "ssprk2":
            return 0.5 * U + 0.5 * (U1 + dt * self.rhs(U1))
        U2 = 0.75 * U + 0.25 * (U1 + dt * self.rhs(U1))
        return U / 3.0 + 2.0 / 3.0 * (U2 + dt * self.rhs(U2))

    def max_dt(self, U: torch.Tensor, cfl: float) -> torch.Tensor:
        """CFL time step [B] per trajectory."""
        return max_dt(U, cfl, self.gamma, self.dx, self.dy)

    def run(
        self, U0: torch.Tensor, times: Sequence[float], cfl: float = 0.4, max_steps: int = 1_000_000
    ) -> tuple[torch.Tensor, list[int]]:
        """Integrate U0 [B, 4, Nx, Ny] from times[0]; return the primitive states at `times` [B, T, 4, Nx, Ny] (CPU).

        Each trajectory takes its own CFL time step, shortened to land exactly on every requested time, so a
        trajectory's result does not depend on the others in the batch. Returns the states and the number of steps
        each trajectory took.

        Raises:
            PositivityError: density or pressure <= 0, or a non-finite value, naming the step, time and trajectory.
        """
        times = [float(t) for t in times]
        if any(b < a for a, b in zip(times, times[1:])):
            raise ValueError(f"times must be non-decreasing, got {times}")
        if not 0 < cfl <= MAX_CFL:
            raise UnstableSettings(f"cfl {cfl} outside (0, {MAX_CFL}]")
        batch = U0.shape[0]
        U = U0
        t = torch.full((batch,), times[0], dtype=torch.float64, device=U0.device)  # float64 lands exactly
        steps = torch.zeros(batch, dtype=torch.long, device=U0.device)
        frames = []
        for target in times:
            while True:
                W = conservative_to_primitive(U, self.gamma)
                remaining = target - t
                active = remaining > 0
                ok = torch.isfinite(W).flatten(1).all(1) & (W[:, 0].flatten(1).amin(1) > 0)
                ok &= W[:, 3].flatten(1).amin(1) > 0
                any_active, any_bad, too_many = torch.stack(  # one device sync per step
                    [active.any(), (~ok).any(), (steps >= max_steps).any()]
                ).tolist()
                if any_bad:
                    self._refuse(W, ok, t, steps)
                if not any_active:
                    break
                if too_many:
                    raise UnstableSettings(f"more than {max_steps} steps before t = {target:.6g}: dt collapsed")
                dt_cfl = _max_dt_primitive(W, cfl, self.gamma, self.dx, self.dy).to(torch.float64)
                lands = dt_cfl >= remaining
                dt = torch.where(active, torch.minimum(dt_cfl, remaining), torch.zeros_like(dt_cfl))
                U = torch.where(active.view(-1, 1, 1, 1), self.step(U, dt), U)
                t = torch.where(active, torch.where(lands, torch.full_like(t, target), t + dt), t)
                steps += active.long()
            frames.append(W.cpu())  # snapshots wait on the host: device memory holds only the running state
        return torch.stack(frames, dim=1), steps.tolist()

    @staticmethod
    def _refuse(W: torch.Tensor, ok: torch.Tensor, t: torch.Tensor, steps: torch.Tensor) -> None:
        bad = (~ok).nonzero().flatten().tolist()
        i = bad[0]
        rho_min = float(torch.nan_to_num(W[i, 0], nan=-math.inf).min())
        p_min = float(torch.nan_to_num(W[i, 3], nan=-math.inf).min())
        raise PositivityError(
            f"trajectories {bad} lost positivity: trajectory {i} after step {int(steps[i])} at t = {float(t[i]):.6g} "
            f"has min rho {rho_min:.3g}, min p {p_min:.3g} (non-finite counted as -inf); reduce cfl, use the "
            "minmod limiter or a finer grid"
        )


# ----------------------------------------------------------------------------------------------- exact Riemann
def _pressure_function(p: float, rho: float, c: float, pk: float, gamma: float) -> tuple[float, float]:
    """Toro's f_K(p) and its derivative: shock branch above p_K, rarefaction branch below."""
    if p > pk:
        a, b = 2.0 / ((gamma + 1.0) * rho), (gamma - 1.0) / (gamma + 1.0) * pk
        root = math.sqrt(a / (p + b))
        return (p - pk) * root, root * (1.0 - 0.5 * (p - pk) / (b + p))
    ratio = p / pk
    f = 2.0 * c / (gamma - 1.0) * (ratio ** ((gamma - 1.0) / (2.0 * gamma)) - 1.0)
    return f, ratio ** (-(gamma + 1.0) / (2.0 * gamma)) / (rho * c)


def riemann_star_state(
    left: Sequence[float], right: Sequence[float], gamma: float = GAMMA, tol: float = 1e-14
) -> tuple[float, float]:
    """Pressure and velocity (p*, u*) of the star region of the 1-D Riemann problem (Toro sec. 4.3, Newton).

    Args:
        left, right: (rho, u, p) either side of the discontinuity.

    Raises:
        ValueError: non-positive states, or data that generate vacuum (Toro eq. 4.82).
    """
    rl, ul, pl = (float(x) for x in left)
    rr, ur, pr = (float(x) for x in right)
    if min(rl, pl, rr, pr) <= 0:
        raise ValueError(f"densities and pressures must be positive, got left={left}, right={right}")
    cl, cr = math.sqrt(gamma * pl / rl), math.sqrt(gamma * pr / rr)
    du = ur - ul
    if 2.0 / (gamma - 1.0) * (cl + cr) <= du:
        raise ValueError(f"the data generate vacuum (pressure positivity condition fails): left={left}, right={right}")
    # Initial guess: PVRS, floored; Newton on f(p) = f_L + f_R + du converges monotonically (f is concave, increasing).
    p = max(0.5 * (pl + pr) - 0.125 * du * (rl + rr) * (cl + cr), 1e-8 * min(pl, pr))
    for _ in range(200):
        fl, dfl = _pressure_function(p, rl, cl, pl, gamma)
        fr, dfr = _pressure_function(p, rr, cr, pr, gamma)
        p_new = max(p - (fl + fr + du) / (dfl + dfr), 1e-3 * p)
        change = abs(p_new - p) / (0.5 * (p_new + p))
        p = p_new
        if change < tol:
            break
    else:
        raise RuntimeError(f"exact Riemann solver did not converge for left={left}, right={right}")
    fl, _ = _pressure_function(p, rl, cl, pl, gamma)
    fr, _ = _pressure_function(p, rr, cr, pr, gamma)
    return p, 0.5 * (ul + ur) + 0.5 * (fr - fl)


def exact_riemann(
    left: Sequence[float], right: Sequence[float], xi: torch.Tensor | np.ndarray, gamma: float = GAMMA
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact solution (rho, u, p) of the 1-D Euler Riemann problem sampled at xi = x / t (Toro sec. 4.5).

    Args:
        left, right: (rho, u, p) for x < 0 and x > 0 at t = 0.
        xi: Similarity coordinates x / t, any shape.
        gamma: Ratio of specific heats.

    Returns:
        rho, u, p as float64 tensors of xi's shape (on xi's device when xi is a tensor).
    """
    xi = torch.as_tensor(xi, dtype=torch.float64)
    rl, ul, pl = (float(x) for x in left)
    rr, ur, pr = (float(x) for x in right)
    p_star, u_star = riemann_star_state(left, right, gamma)
    g1, g2 = (gamma - 1.0) / (2.0 * gamma), (gamma + 1.0) / (2.0 * gamma)
    g6 = (gamma - 1.0) / (gamma + 1.0)
    full = functools.partial(torch.full_like, xi)

    def side(r, u, p, c, sign):  # sign -1: left wave, +1: right wave; returns (rho, u, p) on that side of the contact
        ratio = p_star / p
        if p_star > p:  # shock
            speed = u + sign * c * math.sqrt(g2 * ratio + g1)
            r_star = r * (ratio + g6) / (g6 * ratio + 1.0)
            outside = sign * (xi - speed) >= 0
            return (
                torch.where(outside, full(r), full(r_star)),
                torch.where(outside, full(u), full(u_star)),
                torch.where(outside, full(p), full(p_star)),
            )
        c_star = c * ratio**g1
        head, tail = u + sign * c, u_star + sign * c_star
        # inside the fan (Toro eq. 4.56 / 4.63)
        c_fan = 2.0 / (gamma + 1.0) * (c - sign * (gamma - 1.0) / 2.0 * (u - xi))
        u_fan = 2.0 / (gamma + 1.0) * (-sign * c + (gamma - 1.0) / 2.0 * u + xi)
        r_fan = r * (c_fan / c) ** (2.0 / (gamma - 1.0))
        p_fan = p * (c_fan / c) ** (2.0 * gamma / (gamma - 1.0))
        outside = sign * (xi - head) >= 0
        star = sign * (xi - tail) <= 0
        r_out = torch.where(outside, full(r), torch.where(star, full(r * ratio ** (1.0 / gamma)), r_fan))
        u_out = torch.where(outside, full(u), torch.where(star, full(u_star), u_fan))
        p_out = torch.where(outside, full(p), torch.where(star, full(p_star), p_fan))
        return r_out, u_out, p_out

    cl, cr = math.sqrt(gamma * pl / rl), math.sqrt(gamma * pr / rr)
    left_side = side(rl, ul, pl, cl, -1.0)
    right_side = side(rr, ur, pr, cr, 1.0)
    on_left = xi <= u_star
    return tuple(torch.where(on_left, a, b) for a, b in zip(left_side, right_side))  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------- initial conditions
# Poseidon (Herde et al. 2024) simulates these families on the periodic unit square, gamma = 1.4, up to T = 1. Its
# dataset cards confirm the kinds ("4-quadrant Riemann problems", a Kelvin-Helmholtz shear layer, "Gaussians as
# vorticity"); the exact ranges below are this module's choices, calibrated so that the mean pressure of a
# trajectory matches the constant Poseidon subtracts per dataset (RP 0.215, KH 1.0, Gauss 2.513; measured here
# ~0.20, ~1.006, ~2.52). Every Trajectories.settings records them.
IC_PARAMS: dict[str, dict[str, Any]] = {
    "ce-rp": {"centre": [0.5, 0.5], "rho": [0.1, 1.0], "p": [0.1, 0.3], "velocity": [-0.5, 0.5]},
    "ce-kh": {
        "rho_inner": 2.0,
        "rho_outer": 1.0,
        "u_inner": -0.5,
        "u_outer": 0.5,
        "p": 1.0,
        "interfaces": [0.25, 0.75],
        "modes": 10,
        "epsilon": 0.05,
    },
    "ce-gauss": {"rho": 1.0, "p": 2.5, "count": 100, "sigma": [0.01, 0.1], "amplitude": [-1.0, 1.0]},
}


def _cell_centres(nx: int, ny: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = (torch.arange(nx, dtype=torch.float64) + 0.5) / nx
    y = (torch.arange(ny, dtype=torch.float64) + 0.5) / ny
    return torch.meshgrid(x, y, indexing="ij")  # X varies along dim -2


def _uniform(generator: torch.Generator, low: float, high: float, *shape: int) -> torch.Tensor:
    return low + (high - low) * torch.rand(*shape, generator=generator, dtype=torch.float64)


def _riemann_quadrants(batch: int, X: torch.Tensor, Y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Four constant states (rho, u, v, p) in the quadrants around the centre."""
    cfg = IC_PARAMS["ce-rp"]
    rho = _uniform(gen, *cfg["rho"], batch, 4)
    vel = _uniform(gen, *cfg["velocity"], batch, 4, 2)
    p = _uniform(gen, *cfg["p"], batch, 4)
    states = torch.stack([rho, vel[..., 0], vel[..., 1], p], dim=1)  # [B, 4 variables, 4 quadrants]
    quadrant = (X >= cfg["centre"][0]).long() + 2 * (Y >= cfg["centre"][1]).long()  # [Nx, Ny] in 0..3
    return states[:, :, quadrant]


def _kelvin_helmholtz(batch: int, X: torch.Tensor, Y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A dense band between two interfaces y = y_j + epsilon sum_n a_n cos(b_n + 2 pi n x), sheared against the rest.

    The amplitudes a_n ~ U[0, 1] are normalised to sum 1, the phases b_n ~ U[-pi, pi] (Fjordholm, Kappeli, Mishra,
    Tadmor 2017, the random-interface Kelvin-Helmholtz problem of the ETH group).
    """
    cfg = IC_PARAMS["ce-kh"]
    m = cfg["modes"]
    a = torch.rand(batch, 2, m, generator=gen, dtype=torch.float64)
    a = a / a.sum(-1, keepdim=True)
    b = _uniform(gen, -math.pi, math.pi, batch, 2, m)
    n = torch.arange(1, m + 1, dtype=torch.float64)
    x = X[:, :1]  # [Nx, 1]: the interfaces move with x only
    waves = torch.cos(b[..., None, None] + 2 * math.pi * n[:, None, None] * x)  # [B, 2, m, Nx, 1]
    shift = cfg["epsilon"] * (a[..., None, None] * waves).sum(2)  # [B, 2, Nx, 1]
    low, high = cfg["interfaces"][0] + shift[:, 0], cfg["interfaces"][1] + shift[:, 1]
    inner = (Y > low) & (Y < high)  # [B, Nx, Ny]
    const = functools.partial(torch.tensor, dtype=torch.float64)  # scalars in where() would default to float32
    rho = torch.where(inner, const(cfg["rho_inner"]), const(cfg["rho_outer"]))
    u = torch.where(inner, const(cfg["u_inner"]), const(cfg["u_outer"]))
    return torch.stack([rho, u, torch.zeros_like(rho), torch.full_like(rho, cfg["p"])], dim=1)


def _gaussian_vortices(batch: int, X: torch.Tensor, Y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Uniform density and pressure; the velocity of a vorticity that is a sum of periodic Gaussians.

    w = sum_i alpha_i / sigma_i exp(-|x - x_i|^2 / (2 sigma_i^2)), then -lap psi = w - mean(w) and
    (u, v) = (d_y psi, -d_x psi), spectrally on the periodic grid: divergence-free, and curl = w - mean(w).
    """
    cfg = IC_PARAMS["ce-gauss"]
    m = cfg["count"]
    centres = torch.rand(batch, m, 2, generator=gen, dtype=torch.float64)
    sigma = _uniform(gen, *cfg["sigma"], batch, m)
    alpha = _uniform(gen, *cfg["amplitude"], batch, m)
    nx, ny = X.shape
    w = torch.zeros(batch, nx, ny, dtype=torch.float64)
    for i in range(m):  # a loop over the Gaussians (not the cells) keeps memory at one field per trajectory
        ddx = torch.remainder(X - centres[:, i, 0, None, None] + 0.5, 1.0) - 0.5  # minimum-image distance
        ddy = torch.remainder(Y - centres[:, i, 1, None, None] + 0.5, 1.0) - 0.5
        s = sigma[:, i, None, None]
        w = w + alpha[:, i, None, None] / s * torch.exp(-(ddx**2 + ddy**2) / (2 * s**2))
    kx = torch.fft.fftfreq(nx, d=1.0 / nx, dtype=torch.float64) * 2 * math.pi
    ky = torch.fft.rfftfreq(ny, d=1.0 / ny, dtype=torch.float64) * 2 * math.pi
    # The derivative of a Nyquist mode is not real: zero those wavenumbers so (u, v) stays exactly divergence-free.
    if nx % 2 == 0:
        kx[nx // 2] = 0.0
    if ny % 2 == 0:
        ky[-1] = 0.0
    KX, KY = torch.meshgrid(kx, ky, indexing="ij")
    k2 = KX**2 + KY**2
    w_hat = torch.fft.rfft2(w)
    psi_hat = torch.where(k2 > 0, w_hat / k2.clamp_min(1e-30), torch.zeros_like(w_hat))  # drops the mean
    u = torch.fft.irfft2(1j * KY * psi_hat, s=(nx, ny))
    v = torch.fft.irfft2(-1j * KX * psi_hat, s=(nx, ny))
    return torch.stack([torch.full_like(u, cfg["rho"]), u, v, torch.full_like(u, cfg["p"])], dim=1)


_INITIAL_CONDITIONS = {"ce-rp": _riemann_quadrants, "ce-kh": _kelvin_helmholtz, "ce-gauss": _gaussian_vortices}


def initial_condition(family: str, batch: int, resolution: int | tuple[int, int], generator: torch.Generator):
    """Primitive initial states (rho, u, v, p) [B, 4, Nx, Ny] (float64, CPU) of `family`, drawn with `generator`."""
    if family not in _INITIAL_CONDITIONS:
        raise ValueError(f"unknown compressible Euler family {family!r}; choose from {sorted(_INITIAL_CONDITIONS)}")
    nx, ny = (resolution, resolution) if isinstance(resolution, int) else resolution
    X, Y = _cell_centres(nx, ny)
    return _INITIAL_CONDITIONS[family](batch, X, Y, generator)


# ----------------------------------------------------------------------------------------------- simulate
def simulate(
    batch: int,
    resolution: int | tuple[int, int],
    snapshots: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    family: str = "ce-rp",
    t_end: float = 1.0,
    cfl: float = 0.4,
    gamma: float = GAMMA,
    dtype: torch.dtype = torch.float64,
    limiter: str = "minmod",
    time_integrator: str = "ssprk2",
    wave_speeds: str = "pressure",
) -> Trajectories:
    """Simulate `batch` trajectories of a compressible Euler family on the periodic unit square.

    Returns (rho, u, v, p) [B, T, 4, Nx, Ny] float32 on the CPU at `snapshots` equispaced times in [0, t_end]
    (one snapshot: the initial state only). Initial conditions are drawn on the CPU with `generator`, so a seed
    gives the same data on any device.

    Raises:
        UnstableSettings: cfl outside (0, 0.5], resolution < 8, snapshots < 1, t_end <= 0, gamma <= 1, batch < 1.
        PositivityError: the run lost positivity (the message names the step, time and trajectory).
    """
    nx, ny = (resolution, resolution) if isinstance(resolution, int) else tuple(resolution)
    if not (isinstance(cfl, (int, float)) and 0 < cfl <= MAX_CFL):
        raise UnstableSettings(
            f"cfl {cfl} outside (0, {MAX_CFL}]: the unsplit 2-D MUSCL-RK scheme needs "
            "dt (max(|u|+c)/dx + max(|v|+c)/dy) <= 0.5 to stay stable and positive"
        )
    if min(nx, ny) < 8:
        raise UnstableSettings(f"resolution {resolution} too coarse: need >= 8 cells per axis")
    if snapshots < 1:
        raise UnstableSettings(f"snapshots must be >= 1, got {snapshots}")
    if not t_end > 0:
        raise UnstableSettings(f"t_end must be > 0, got {t_end}")
    if not gamma > 1.0:
        raise UnstableSettings(f"gamma {gamma} must be > 1 for an ideal gas")
    if batch < 1:
        raise UnstableSettings(f"batch must be >= 1, got {batch}")
    solver = EulerSolver(
        dx=1.0 / nx,
        dy=1.0 / ny,
        gamma=gamma,
        limiter=limiter,
        time_integrator=time_integrator,
        wave_speeds=wave_speeds,
    )
    W0 = initial_condition(family, batch, (nx, ny), generator)
    U0 = primitive_to_conservative(W0, gamma).to(device=device, dtype=dtype)
    times = snapshot_times(t_end, snapshots)
    states, steps = solver.run(U0, times.tolist(), cfl=cfl)
    settings = {
        "solver": "finite volume, unsplit",
        "scheme": f"MUSCL (primitive variables) + HLLC + {time_integrator.upper()}",
        "riemann_solver": "hllc",
        "wave_speeds": wave_speeds,
        "limiter": limiter,
        "time_integrator": time_integrator,
        "cfl": cfl,
        "gamma": gamma,
        "steps": steps,
        "boundary": {"x": "periodic", "y": "periodic"},
        "grid": "cell centres (i + 1/2) / n, x along dim -2",
        "dtype": str(dtype).replace("torch.", ""),
        "initial_condition": {"family": family, **IC_PARAMS[family]},
    }
    return Trajectories(fields=states.float().cpu(), times=times, static=None, settings=settings)


def _family(id_: str, description: str) -> PDEFamily:
    return PDEFamily(
        id=id_,
        channel_names=CHANNELS,
        static_names=(),
        steady=False,
        t_end=1.0,
        params={"gamma": GAMMA, "cfl": 0.4},
        domain=DOMAIN,
        simulate=functools.partial(simulate, family=id_),
        description=description,
    )


FAMILIES: dict[str, PDEFamily] = {
    "ce-rp": _family("ce-rp", "compressible Euler, four-quadrant Riemann problem with random constant states"),
    "ce-kh": _family("ce-kh", "compressible Euler, Kelvin-Helmholtz shear layer with randomly perturbed interfaces"),
    "ce-gauss": _family("ce-gauss", "compressible Euler, uniform rho and p, velocity of Gaussian vortices"),
}
