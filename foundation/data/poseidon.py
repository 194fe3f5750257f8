"""The published Poseidon datasets, read as they are (netCDF4/HDF5 files on the Hub, no conversion step).

Each layout names the key that holds the data, which stored channels are used and under which names, the
normalisation constants of the reference, the splits (train first, then val, then test, by index) and the
static fields. Lead time as in the reference: (j - i) / (index of the last stored snapshot).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .hdf5 import H5Handle
from .source import DataError, SourceInfo, TrajectorySource

NS_STD = {"rho": 0.31, "u": 0.391, "v": 0.356, "p": 0.185}
NS_MEAN = {"rho": 0.80, "u": 0.0, "v": 0.0, "p": 0.0}


@dataclass(frozen=True)
class PoseidonLayout:
    """How one published dataset is stored and normalised."""

    name: str
    key: str
    channels: tuple[str, ...]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    val: int
    test: int
    select: tuple[int, ...] | None = None  # stored channel indices used (None: all)
    has_channel_dim: bool = True
    transpose: bool = False  # stored with x and y swapped (NS-SL)
    static_key: str | None = None  # static field stored per trajectory [N, H, W]
    static_names: tuple[str, ...] = ()
    static_mean: tuple[float, ...] | None = None
    static_std: tuple[float, ...] | None = None
    steady: bool = False
    pde: dict = field(default_factory=dict)


def _ns(name: str, val: int = 120, test: int = 240) -> PoseidonLayout:
    # u, v (and a tracer in the tracer variants, detected from the channel count)
    return PoseidonLayout(
        name,
        "velocity",
        ("u", "v"),
        (0.0, 0.0),
        (NS_STD["u"], NS_STD["v"]),
        val,
        test,
        select=(0, 1),
        transpose=name == "NS-SL",
        pde={"id": name.lower(), "family": "ns"},
    )


def _ce(name: str, p_mean: float) -> PoseidonLayout:
    return PoseidonLayout(
        name,
        "data",
        ("rho", "u", "v", "p"),
        (0.80, 0.0, 0.0, p_mean),
        (NS_STD["rho"], NS_STD["u"], NS_STD["v"], NS_STD["p"]),
        120,
        240,
        select=(0, 1, 2, 3),
        pde={"id": name.lower(), "family": "ce"},
    )


def _wave(name: str, u: tuple[float, float], c: tuple[float, float]) -> PoseidonLayout:
    # u without a channel axis, the wave speed c stored per trajectory; `u` and `c`: (mean, std) of each
    return PoseidonLayout(
        name,
        "solution",
        ("u",),
        (u[0],),
        (u[1],),
        60,
        240,
        has_channel_dim=False,
        static_key="c",
        static_names=("c",),
        static_mean=(c[0],),
        static_std=(c[1],),
        pde={"id": name.lower()},
    )


LAYOUTS: dict[str, PoseidonLayout] = {
    **{n: _ns(n) for n in ("NS-Sines", "NS-Gauss", "NS-PwC", "NS-SVS", "NS-BB", "NS-SL")},
    "NS-Tracer-PwC": PoseidonLayout(
        "NS-Tracer-PwC",
        "velocity",
        ("u", "v", "tracer"),
        (0.0, 0.0, 0.19586183),
        (0.391, 0.356, 0.37),
        120,
        240,
        select=(0, 1, 2),
        pde={"id": "ns-tracer-pwc"},
    ),
    "FNS-KF": PoseidonLayout(
        "FNS-KF",
        "solution",
        ("u", "v"),
        (0.0, 0.0),
        (0.2202, 0.2208),
        120,
        240,
        select=(0, 1),
        static_names=("f",),
        static_mean=(-1.30e-9,),
        static_std=(0.0707,),
        pde={"id": "fns-kf", "forcing": "0.1 sin(2 pi (x + y))"},
    ),
    "CE-RP": _ce("CE-RP", 0.215),
    "CE-CRP": _ce("CE-CRP", 0.553),
    "CE-KH": _ce("CE-KH", 1.0),
    "CE-Gauss": _ce("CE-Gauss", 2.513),
    "CE-RPUI": _ce("CE-RPUI", 1.33),
    "CE-RM": PoseidonLayout(
        "CE-RM",
        "solution",
        ("rho", "u", "v", "p"),
        (1.196, 0.0, 0.0, 1.565),
        (0.554, 0.243, 0.243, 0.896),
        100,
        130,
        select=(0, 1, 2, 3),
        pde={"id": "ce-rm"},
    ),
    # The reference normalises GCE-RT with constants it does not publish: statistics are computed from data.
    "GCE-RT": PoseidonLayout(
        "GCE-RT",
        "solution",
        ("rho", "u", "v", "p", "phi"),
        None,
        None,
        100,
        130,
        select=(0, 1, 2, 3, 5),
        pde={"id": "gce-rt"},
    ),
    "Wave-Layer": _wave("Wave-Layer", (0.03467, 0.10442), (3498.56, 647.84)),
    "Wave-Gauss": _wave("Wave-Gauss", (0.03344, 0.11719), (2618.46, 601.52)),
    "ACE": PoseidonLayout(
        "ACE", "solution", ("u",), (0.002484,), (0.65351,), 60, 240, has_channel_dim=False, pde={"id": "allen-cahn"}
    ),
    "Poisson-Gauss": PoseidonLayout(
        "Poisson-Gauss",
        "solution",
        ("u",),
        (0.000560,),
        (0.024012,),
        120,
        240,
        has_channel_dim=False,
        static_key="source",
        static_names=("f",),
        static_mean=(0.01482,),
        static_std=(4.7551,),
        steady=True,
        pde={"id": "poisson-gauss"},
    ),
    "SE-AF": PoseidonLayout(
        "SE-AF",
        "solution",
        ("rho",),
        (0.92984,),
        (0.10864,),
        120,
        240,
        select=(1,),
        static_names=("mask",),
        static_mean=(0.0,),
        static_std=(1.0,),
        steady=True,
        pde={"id": "se-af"},
    ),
    "Helmholtz": PoseidonLayout(
        "Helmholtz",
        "Sample_{i}",
        ("u",),
        (0.11524,),
        (0.82800,),
        128,
        512,
        static_names=("a", "bc"),
        steady=True,
        pde={"id": "helmholtz"},
    ),
}


def layout_names() -> list[str]:
    return sorted(LAYOUTS)


class _Stored(NamedTuple):
    """What a file holds, as its layout reads it: trajectories, snapshots, grid as stored, channels used (names,
    published mean and std, stored indices or None for all)."""

    n: int
    t: int
    h: int
    w: int
    channels: list[str]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    select: tuple[int, ...] | None


class PoseidonSource(TrajectorySource):
    """One published Poseidon file, read lazily with h5py in its published layout `layout`."""

    def __init__(self, path: str | os.PathLike, layout: str):
        if layout not in LAYOUTS:
            raise DataError(f"unknown Poseidon layout {layout!r}; known: {', '.join(layout_names())}")
        self.path, self.layout = Path(path), LAYOUTS[layout]
        self._h5 = H5Handle(self.path, "netCDF4/HDF5")
        lay = self.layout
        stored = self._grouped() if lay.name == "Helmholtz" else self._array()
        self._select = None if stored.select is None else list(stored.select)
        n, t, h, w = stored.n, stored.t, stored.h, stored.w
        if lay.transpose:
            h, w = w, h
        last = max(t - 1, 1)
        info = SourceInfo(
            name=str(self.path),
            channel_names=stored.channels,
            static_names=list(lay.static_names),
            times=np.arange(t, dtype=np.float64),
            time_scale=float(last),  # lead time = (j - i) / index of the last stored snapshot
            splits={
                "train": (0, n - lay.val - lay.test),
                "val": (n - lay.val - lay.test, n - lay.test),
                "test": (n - lay.test, n),
            },
            mean=None if stored.mean is None else list(stored.mean),
            std=None if stored.std is None else list(stored.std),
            static_mean=list(lay.static_mean) if lay.static_mean else None,
            static_std=list(lay.static_std) if lay.static_std else None,
            steady=lay.steady,
            pde=dict(lay.pde),
            domain={"extent": [[0.0, 1.0], [0.0, 1.0]]},
            provenance={"layout": lay.name, "file": str(self.path), "source": f"camlab-ethz/{lay.name}"},
        )
        if n - lay.val - lay.test <= 0:
            raise DataError(
                f"{self.path}: {n} trajectories cannot hold the {lay.val} val + {lay.test} test of layout {lay.name}"
            )
        super().__init__(info, (n, t, len(stored.channels), h, w))
        if lay.name == "FNS-KF":  # the forcing is analytic and the same for every trajectory
            x = np.arange(w, dtype=np.float32) / w
            y = np.arange(h, dtype=np.float32) / h
            self._forcing = (0.1 * np.sin(2 * np.pi * (x[None, :] + y[:, None])))[None].astype(np.float32)

    def _grouped(self) -> _Stored:
        """Helmholtz: one group Sample_<i> per trajectory holding the coefficient a, the boundary value bc and u."""
        file, lay = self._h5.file(), self.layout
        n = sum(1 for k in file.keys() if k.startswith("Sample_"))
        if n == 0 or "Sample_0" not in file:
            raise DataError(f"{self.path}: no 'Sample_<i>' groups (layout {lay.name})")
        for key in ("a", "bc", "u"):
            if key not in file["Sample_0"]:
                raise DataError(f"{self.path}: group 'Sample_0' lacks {key!r} (layout {lay.name})")
        h, w = file["Sample_0"]["u"].shape[-2:]
        return _Stored(n, 1, h, w, list(lay.channels), lay.mean, lay.std, None)

    def _array(self) -> _Stored:
        """Every other layout: one array [N, (T,) (C,) H, W] under the layout's key (static fields beside it)."""
        file, lay = self._h5.file(), self.layout
        if lay.key not in file:
            raise DataError(
                f"{self.path}: missing key {lay.key!r} (layout {lay.name} stores its data there; "
                f"the file has {sorted(file.keys())})"
            )
        data = file[lay.key]
        rank = (3 if lay.steady else 4) + (1 if lay.has_channel_dim else 0)
        if data.ndim != rank:
            raise DataError(f"{self.path}: {lay.key!r} has shape {data.shape}, layout {lay.name} expects rank {rank}")
        n, h, w = data.shape[0], data.shape[-2], data.shape[-1]
        t = 1 if lay.steady else data.shape[1]
        channels, select = list(lay.channels), lay.select
        mean, std = lay.mean, lay.std
        if lay.has_channel_dim:
            stored = data.shape[1 if lay.steady else 2]
            if lay.key == "velocity" and stored == 3 and lay.name != "NS-Tracer-PwC":
                # tracer variants store a third channel: keep it, with the published tracer constants
                channels, select = ["u", "v", "tracer"], (0, 1, 2)
                mean, std = (*mean, 0.19586183), (*std, 0.37)
            if select is not None and max(select) >= stored:
                raise DataError(
                    f"{self.path}: {lay.key!r} has {stored} channels, layout {lay.name} reads channels {list(select)}"
                )
        if lay.static_key is not None and lay.static_key not in file:
            raise DataError(f"{self.path}: missing key {lay.static_key!r} (static field of layout {lay.name})")
        return _Stored(n, t, h, w, channels, mean, std, select)

    def _orient(self, x: np.ndarray) -> np.ndarray:
        return np.swapaxes(x, -1, -2) if self.layout.transpose else x

    def _read(self, index: int, snapshot: int) -> np.ndarray:
        lay = self.layout
        if lay.name == "Helmholtz":
            return self._h5.file()[f"Sample_{index}"]["u"][...].reshape(1, *self.grid)
        data = self._h5.dataset(lay.key)
        if lay.steady:
            x = data[index] if lay.has_channel_dim else data[index][None]
        else:
            x = data[index, snapshot] if lay.has_channel_dim else data[index, snapshot][None]
        if self._select is not None:
            x = x[self._select]
        return self._orient(x)

    def _read_static(self, index: int) -> np.ndarray:
        lay = self.layout
        if lay.name == "Helmholtz":
            group = self._h5.file()[f"Sample_{index}"]
            a = group["a"][...].reshape(self.grid) - 1.0  # the reference feeds a - 1
            bc = np.full(self.grid, float(np.asarray(group["bc"][...]).reshape(-1)[0]), dtype=np.float32)
            return np.stack([a, bc]).astype(np.float32)
        if lay.name == "FNS-KF":
            return self._forcing
        if lay.name == "SE-AF":
            return self._orient(self._h5.dataset(lay.key)[index, :1])  # the shape mask is the input
        if lay.static_key is None:
            return super()._read_static(index)
        return self._orient(self._h5.dataset(lay.static_key)[index][None])

    def close(self) -> None:
        self._h5.close()
