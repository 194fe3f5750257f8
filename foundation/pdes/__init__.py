"""Built-in PDE solvers that generate trajectories in the toolkit's HDF5 schema (the embedded default data).

python -m foundation.pdes list
python -m foundation.pdes generate --pde ns-sines --n 32 --resolution 64 --snapshots 11 --seed 0 --out ns.h5
"""

from __future__ import annotations

from .allen_cahn import FAMILIES as _ALLEN_CAHN
from .base import PDEFamily, Trajectories, UnstableSettings
from .navier_stokes import FAMILIES as _NAVIER_STOKES
from .poisson import FAMILIES as _POISSON
from .wave import FAMILIES as _WAVE

FAMILIES: dict[str, PDEFamily] = {**_NAVIER_STOKES, **_WAVE, **_ALLEN_CAHN, **_POISSON}
try:  # the compressible Euler solver lives in its own module
    from .euler import FAMILIES as _EULER

    FAMILIES.update(_EULER)
except ImportError:  # pragma: no cover - only while the module is being written
    pass


def get_family(family_id: str) -> PDEFamily:
    """The family `family_id`, or a `ValueError` listing the known ids."""
    if family_id not in FAMILIES:
        raise ValueError(f"unknown PDE family {family_id!r}; known: {', '.join(sorted(FAMILIES))}")
    return FAMILIES[family_id]


from .generate import generate  # noqa: E402 - needs FAMILIES

__all__ = ["FAMILIES", "PDEFamily", "Trajectories", "UnstableSettings", "generate", "get_family"]
