"""What every built-in PDE family provides to the generator (`foundation.pdes.generate`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


class UnstableSettings(ValueError):
    """Settings (time step, CFL number, resolution) for which the solver would be unstable or meaningless."""


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
