"""What every built-in PDE family provides to the generator (`foundation.pdes.generate`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


class UnstableSettings(ValueError):
    """Settings (time step, CFL number, resolution) for which the solver would be unstable or meaningless."""


def snapshot_times(t_end: float, snapshots: int) -> np.ndarray:
    """The stored times of an unsteady family: `snapshots` equispaced times in [0, t_end].

    One snapshot is the initial state alone (t = 0), never t_end: every time-dependent solver and the burn-in of
    `foundation.pdes.generate` rely on this one convention.
    """
    return np.linspace(0.0, t_end, snapshots) if snapshots > 1 else np.zeros(1)


def check_grid_and_span(resolution: int, snapshots: int, t_end: float) -> None:
    """Refuse a grid coarser than 8 points per axis, no snapshot, or a non-positive span (one message for all three).

    Raises:
        UnstableSettings: naming the three values.
    """
    if resolution < 8 or snapshots < 1 or t_end <= 0:
        raise UnstableSettings(
            f"need resolution >= 8, snapshots >= 1, t_end > 0; got {resolution}, {snapshots}, {t_end}"
        )


@dataclass
class Trajectories:
    """A batch of simulated trajectories.

    Args:
        fields: [B, T, C, H, W] float32 (CPU), the evolving state at the snapshot times.
        times: [T] physical times of the snapshots (first is 0).
        static: [B, S, H, W] float32 static fields (inputs only: wave speed, forcing, source), or None.
        settings: Solver settings actually used (time step, CFL, scheme, sub-steps...), for provenance.
    """

    fields: torch.Tensor
    times: np.ndarray
    static: torch.Tensor | None = None
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PDEFamily:
    """A family of initial/boundary-value problems and the solver that produces its trajectories.

    Args:
        id: Family id (DESIGN.md: ns-sines, ce-rp, wave-gauss, allen-cahn, poisson-gauss, ...).
        channel_names: Evolving channels (channel vocabulary of DESIGN.md).
        static_names: Static input fields.
        steady: Time-independent problem (static fields in, one snapshot out).
        t_end: Physical time of the last snapshot.
        params: Default PDE parameters (viscosity, gamma, ...), overridable per call.
        domain: Extent per axis and periodicity.
        simulate: `simulate(batch, resolution, snapshots, generator, device, **params) -> Trajectories`.
        description: One line for the CLI and the dataset card.
        evolve: `evolve(fields, duration, static, **params) -> fields`, the solver continued from given physical
            states [B, C, H, W] (what the true dynamics make of a model's prediction), where the family has one.
    """

    id: str
    channel_names: tuple[str, ...]
    static_names: tuple[str, ...]
    steady: bool
    t_end: float
    params: dict[str, Any]
    domain: dict[str, Any]
    simulate: Callable[..., Trajectories]
    description: str = ""
    evolve: Callable[..., torch.Tensor] | None = None
