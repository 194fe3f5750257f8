"""PDEBench (pdebench/PDEBench) 2-D HDF5 files, read as they are published (no conversion step).

Layouts, detected by the keys of the file (its name only contributes PDE parameters):

- `cfd`, 2-D compressible Navier-Stokes (`2D_CFD_*.hdf5`): root datasets `density`, `Vx`, `Vy`, `pressure`, each
  [N, T, X, Y]; `t-coordinate` (T + 1 entries: the generator allocates one past the last saved snapshot, so the
  first T are the times), `x-coordinate`, `y-coordinate` (cell centres); attributes `M`, `eta`, `zeta`.
  Channels rho, u, v, p.
- `ns-incom`, 2-D incompressible Navier-Stokes (`ns_incom_*.h5`, written by phiflow): `velocity` [N, T, X, Y, 2],
  `particles` [N, T, X, Y, 1] (a passive tracer), `force` [N, X, Y, 2], `t` [N, T]; no coordinates. Channels u, v,
  tracer; static fields f_x, f_y.
- `diff-react`, 2-D diffusion-reaction (`2D_diff-react_*.h5`) and `rdb`, 2-D shallow water, radial dam break
  (`2D_rdb_*.h5`): one group per trajectory (`0000`, `0001`, ..., read in sorted order as PDEBench does), each with
  `data` [T, X, Y, C] and `grid/x`, `grid/y`, `grid/t`. Diffusion-reaction is the FitzHugh-Nagumo system: channels
  `activator` (its u) and `inhibitor` (its v); the dam break stores the water height `h`.
- `darcy`, steady Darcy flow (`2D_DarcyFlow_*.hdf5`): `nu` [N, X, Y] (the coefficient a, a static input),
  `tensor` [N, 1, X, Y] (the solution u, one snapshot), `x-coordinate`, `y-coordinate`; attribute `beta` (the
  constant source term).

Axes: PDEBench stores [..., X, Y]; our fields are [C, H, W] with H = X (first spatial axis) and W = Y, as
PDEBench's own loaders index them (`meshgrid(x, y)` with the first axis x). The domain is given as box edges
(cell centres +/- half a spacing) when coordinates are stored. No statistics are stored (`info.mean/std` are None;
`open_source(..., fill_stats=True)` computes them). PDEBench stores no splits; its loaders hold out 10 % by
stored order, which we follow (see `_splits`).

A folder of files of one layout (PDEBench sets published as one file per seed or batch, e.g. the incompressible
NS `ns_incom_inhom_2d_512-<k>.h5`) is one source: its files in natural order (`-2` before `-10`), whole files
held out as val and test (80/10/10 of the files, by the layout's rule), so no test trajectory shares a file, and
its seed, with a training one.
"""

from __future__ import annotations

import math
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .hdf5 import H5Handle, coordinate_hint, swapped_axes_hint
from .source import DataError, SourceInfo, TrajectorySource

SOURCE = "pdebench/PDEBench (data: DaRUS doi:10.18419/darus-2986)"
CFD_KEYS = {"rho": "density", "u": "Vx", "v": "Vy", "p": "pressure"}  # our channel -> stored dataset
KNOWN = (
    "2-D CFD (density, Vx, Vy, pressure), incompressible NS (velocity, particles, force, t), "
    "per-sample groups (<id>/data, <id>/grid/{x,y,t}: diffusion-reaction, shallow water), "
    "Darcy flow (nu, tensor)"
)
# Tokens of the published file names that carry parameters, e.g. 2D_CFD_Rand_M0.1_Eta0.01_Zeta0.01_periodic_128.
_PARAM = re.compile(r"^(M|Eta|Zeta|beta)([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)$")
_PARAM_NAMES = {"M": "M", "Eta": "eta", "Zeta": "zeta", "beta": "beta"}


def detect_layout(file: h5py.File) -> str | None:
    """The PDEBench layout the keys of `file` match (`cfd`, `ns-incom`, `darcy`, `groups`), or None.

    Only the keys are looked at; the constructor then checks ranks and shapes and refuses 1-D/3-D variants with
    a message that says so (a 1-D CFD file still "looks like" CFD here).
    """
    keys = set(file.keys())
    if {"density", "Vx", "pressure"} <= keys:
        return "cfd"
    if {"velocity", "particles", "force"} <= keys:
        return "ns-incom"
    if "tensor" in keys:
        return "darcy"
    if keys:
        first = file[min(keys)]  # per-sample layouts: every root member is a group "<id>" holding "data"
        if isinstance(first, h5py.Group) and isinstance(first.get("data"), h5py.Dataset):
            return "groups"
    return None


def name_parameters(stem: str) -> dict[str, Any]:
    """PDE parameters carried by a published file name, e.g. `2D_CFD_Rand_M0.1_Eta0.01_Zeta0.01_periodic_128_Train`
    -> {"M": 0.1, "eta": 0.01, "zeta": 0.01, "initial_condition": "rand", "boundary": "periodic", "resolution": 128}.
    Tokens that do not parse are ignored (names are renamed and shortened in the wild)."""
    out: dict[str, Any] = {}
    for token in stem.split("_"):
        match = _PARAM.match(token)
        if match:
            try:
                out[_PARAM_NAMES[match.group(1)]] = float(match.group(2))
            except ValueError:
                pass
        elif token in ("Rand", "Turb"):
            out["initial_condition"] = token.lower()
        elif token in ("periodic", "trans"):
            out["boundary"] = "periodic" if token == "periodic" else "transmissive"
        elif token.isdigit() and "resolution" not in out:
            out["resolution"] = int(token)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def _yaml_config(attrs: h5py.AttributeManager) -> dict[str, Any]:
    """The `config` attribute the PDEBench generators write (their hydra config as YAML), or {} when absent or
    unreadable: it only feeds metadata, never the data."""
    text = _plain(attrs.get("config"))
    if not isinstance(text, str):
        return {}
    try:
        import yaml

        config = yaml.safe_load(text)
    except Exception:  # noqa: BLE001 - a metadata nicety must never stop a read
        return {}
    return config if isinstance(config, dict) else {}


def _edges(path: Path, key: str, coords: Any, n: int, other: int = 0) -> list[float] | None:
    """Box edges of an axis of `n` cells from its cell-centre coordinates (None when they cannot tell); `other`
    is the length of the other spatial axis, which a mismatch is compared with to name its likely cause."""
    c = np.asarray(coords, dtype=np.float64).reshape(-1)
    if len(c) != n:
        raise DataError(
            f"{path}: {key!r} has {len(c)} entries for an axis of {n} cells{coordinate_hint(len(c), n, other)}"
        )
    if n < 2 or not np.all(np.isfinite(c)):
        return None
    half = 0.5 * (c[-1] - c[0]) / (n - 1)
    return [float(c[0] - half), float(c[-1] + half)]


def _splits(n: int, test_first: bool) -> dict[str, tuple[int, int]]:
    """80/10/10 by stored order, with PDEBench's held-out test trajectories.

    PDEBench's single-file loaders (`FNODatasetSingle`/`UNetDatasetSingle` in pdebench/models/{fno,unet}/utils.py:
    CFD, Darcy) take the first 10 % as test, and their cross-validation fold 0 the next 10 % as validation; the
    per-sample-group loaders (`FNODatasetMult`: diffusion-reaction, shallow water) take the last 10 %. Keeping their
    test trajectories keeps our test errors comparable with PDEBench's baselines.
    """
    k = 0 if n < 3 else max(1, math.floor(0.1 * n))
    if test_first:
        return {"test": (0, k), "val": (k, 2 * k), "train": (2 * k, n)}
    return {"train": (0, n - 2 * k), "val": (n - 2 * k, n - k), "test": (n - k, n)}


def _natural(path: Path) -> list:
    """Sort key of a file name with its numbers compared as numbers (`..._512-2.h5` before `..._512-10.h5`)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _folder_splits(counts: list[int], test_first: bool) -> tuple[dict[str, tuple[int, int]], str]:
    """(trajectory ranges, rule) of a folder of files: 80/10/10 of whole files (test first or last as the layout's
    loader takes it), so that held-out trajectories never share a file (a seed) with training ones; under 3
    files, 80/10/10 of the trajectories as for one file."""
    offsets = np.cumsum([0, *counts]).tolist()
    if len(counts) < 3:
        return _splits(offsets[-1], test_first), "80/10/10 of the trajectories by stored order (under 3 files)"
    by_file = _splits(len(counts), test_first)
    where = "first" if test_first else "last"
    rule = f"80/10/10 of whole files in natural name order; test = the {where} 10 % of the files"
    return {s: (offsets[a], offsets[b]) for s, (a, b) in by_file.items()}, rule


class PDEBenchSource(TrajectorySource):
    """One PDEBench 2-D HDF5 file, or a folder of them, read lazily with h5py (one snapshot per read, never the
    whole file).

    The layout is detected from the file's keys (see the module docstring); a file that matches none, a 1-D or
    3-D variant, or datasets whose shapes disagree raise a `DataError` naming the file and the key.

    Args:
        path: A PDEBench .h5/.hdf5 file, or a folder of files of one set (one file per seed or batch of
            trajectories), concatenated in natural name order with whole files held out (`_folder_splits`).
        max_open_files: For a folder, files kept open per process (a set may come as hundreds of files).
    """

    def __init__(self, path: str | os.PathLike, max_open_files: int = 32):
        self.path = Path(path)
        self._parts: list[PDEBenchSource] = []  # a folder's files; empty for one file
        if self.path.is_dir():
            self._open_folder(max_open_files)
            return
        self._h5 = H5Handle(self.path, "PDEBench HDF5")
        file = self._h5.file()
        layout = detect_layout(file)
        self.layout, self._groups = layout or "unknown", []
        try:
            if layout is None:
                keys = sorted(file.keys())[:12]
                raise DataError(f"{self.path}: no known PDEBench 2-D layout (expected {KNOWN}); root keys: {keys}")
            build = {"cfd": self._cfd, "ns-incom": self._ns, "darcy": self._darcy, "groups": self._per_sample}[layout]
            info, shape = build(file)
            super().__init__(info, shape)
        except DataError:
            self._h5.close()  # a refused file is not left open
            raise

    def _open_folder(self, max_open_files: int) -> None:
        files = sorted(
            (p for p in self.path.iterdir() if p.is_file() and p.suffix.lower() in (".h5", ".hdf5")), key=_natural
        )
        if not files:
            raise DataError(f"{self.path}: no .h5/.hdf5 files (a PDEBench folder holds one file per seed or batch)")
        parts: list[PDEBenchSource] = []
        try:
            for file in files:
                parts.append(PDEBenchSource(file))
                parts[-1].close()  # reopened on its first read: a folder may hold hundreds of files
            for part in parts[1:]:
                self._check_same(parts[0], part)
        except DataError:
            for part in parts:
                part.close()
            raise
        first = parts[0]
        self._parts, self.layout, self._groups, self._h5 = parts, first.layout, [], None
        self.max_open_files, self._open = max_open_files, OrderedDict()
        counts = [part.shape[0] for part in parts]
        self._offsets = np.cumsum([0, *counts])
        splits, rule = _folder_splits(counts, test_first=first.layout in ("cfd", "darcy"))
        provenance = {k: v for k, v in first.info.provenance.items() if k != "file"}
        provenance.update(
            folder=str(self.path),
            files=[f.name for f in files],
            trajectories_per_file=counts,
            splits_rule=rule,
        )
        info = SourceInfo(
            name=str(self.path),
            channel_names=list(first.info.channel_names),
            static_names=list(first.info.static_names),
            times=first.info.times,
            time_scale=first.info.time_scale,
            splits=splits,
            steady=first.info.steady,
            pde=dict(first.info.pde),
            domain=dict(first.info.domain),
            provenance=provenance,
        )
        super().__init__(info, (int(self._offsets[-1]), *first.shape[1:]))

    @staticmethod
    def _check_same(first: PDEBenchSource, part: PDEBenchSource) -> None:
        """Files of one folder must be one set: layout, snapshots, channels, grid, times and PDE parameters."""
        where = f"{part.path} (compared with {first.path}, the folder's first file)"
        if part.layout != first.layout:
            raise DataError(f"{where}: a {part.layout} file among {first.layout} files; a folder holds one set")
        if part.shape[1:] != first.shape[1:]:
            shown = "(T, C, X, Y)"
            raise DataError(
                f"{where}: {shown} = {part.shape[1:]} != {first.shape[1:]}"
                f"{swapped_axes_hint(part.shape[1:], first.shape[1:])}"
            )
        a, b = part.info.times - part.info.times[0], first.info.times - first.info.times[0]
        if not np.allclose(a, b, rtol=1e-5, atol=1e-8 * max(1.0, float(np.ptp(b)))):
            raise DataError(f"{where}: the time grid differs beyond a shift (lead times would be wrong)")
        # The grid size in the name may differ in a shortened name; the shapes were compared above.
        ours, theirs = ({k: v for k, v in s.info.pde.items() if k != "resolution"} for s in (part, first))
        if ours != theirs:
            raise DataError(
                f"{where}: PDE parameters {ours} != {theirs}; pass files of different parameters as separate datasets"
            )

    # ------------------------------------------------------------------ layouts
    def _shape_error(self, key: str, shape: tuple, expected: str, like: tuple | None = None) -> DataError:
        hint = swapped_axes_hint(shape, like) if like is not None else ""
        return DataError(f"{self.path}: {key!r} has shape {shape}, expected {expected} ({self.layout} layout){hint}")

    def _info(self, n: int, times: np.ndarray, *, test_first: bool, **fields: Any) -> SourceInfo:
        times = np.asarray(times, dtype=np.float64)
        fields["provenance"] = {
            "format": "pdebench",
            "layout": self.layout,
            "file": str(self.path),
            "source": SOURCE,
            "splits_rule": (
                "80/10/10 by stored order; test = the first 10 % (PDEBench's single-file loaders), val = the next 10 %"
                if test_first
                else "80/10/10 by stored order; test = the last 10 % (PDEBench's per-sample loaders)"
            ),
            "stats": "none stored (PDEBench ships no normalisation statistics)",
            **fields.pop("provenance", {}),
        }
        return SourceInfo(
            name=str(self.path),
            times=times,
            time_scale=float(times[-1] - times[0]) if len(times) > 1 else 1.0,
            splits=_splits(n, test_first),
            **fields,
        )

    def _cfd(self, file: h5py.File) -> tuple[SourceInfo, tuple]:
        density = file["density"]
        if density.ndim != 4:
            dims = {3: "a 1-D", 5: "a 3-D"}.get(density.ndim, f"a rank-{density.ndim}")
            raise DataError(
                f"{self.path}: {dims} PDEBench CFD file ('density' has shape {density.shape}); only the 2-D "
                f"layout [N, T, X, Y] is read"
            )
        for key in CFD_KEYS.values():
            if key not in file:
                raise DataError(f"{self.path}: missing {key!r} (2-D CFD layout: {', '.join(CFD_KEYS.values())})")
            if file[key].shape != density.shape:
                raise self._shape_error(key, file[key].shape, f"{density.shape} like 'density'", density.shape)
        n, t, h, w = density.shape
        times = self._times(file, "t-coordinate", t, allow_extra=True)
        params = name_parameters(self.path.stem)
        for key in ("M", "eta", "zeta"):  # Data_Merge.py writes them as attributes; the name may be shortened
            if key in file.attrs:
                params[key] = float(_plain(file.attrs[key]))
        boundary = params.get("boundary", "periodic")  # every published 2-D CFD set is periodic
        info = self._info(
            n,
            times,
            test_first=True,
            channel_names=list(CFD_KEYS),
            pde={"id": "pdebench-cfd", "family": "pdebench-cfd", "equations": "compressible Navier-Stokes", **params},
            domain=self._domain(file, ("x-coordinate", "y-coordinate"), (h, w), boundary == "periodic"),
            provenance={"stored_keys": dict(CFD_KEYS), "boundary": boundary},
        )
        return info, (n, t, len(CFD_KEYS), h, w)

    def _ns(self, file: h5py.File) -> tuple[SourceInfo, tuple]:
        velocity, particles, force = file["velocity"], file["particles"], file["force"]
        if velocity.ndim != 5 or velocity.shape[-1] != 2:
            raise self._shape_error("velocity", velocity.shape, "[N, T, X, Y, 2]")
        n, t, h, w, _ = velocity.shape
        if particles.shape != (n, t, h, w, 1):
            raise self._shape_error(
                "particles", particles.shape, f"{(n, t, h, w, 1)} to match 'velocity'", (n, t, h, w, 1)
            )
        if force.shape != (n, h, w, 2):
            raise self._shape_error("force", force.shape, f"{(n, h, w, 2)} to match 'velocity'", (n, h, w, 2))
        times = self._times(file, "t", t)
        config = _yaml_config(file.attrs)
        pde: dict[str, Any] = {"id": "pdebench-ns-incom", "family": "pdebench-ns-incom"}
        pde["equations"] = "incompressible Navier-Stokes with a transported tracer and a static body force"
        for ours, theirs in (("viscosity", "NU"), ("dt", "DT"), ("frame_interval", "frame_int")):
            if isinstance(config.get(theirs), (int, float)):
                pde[ours] = config[theirs]
        info = self._info(
            n,
            times,
            test_first=False,  # PDEBench ships no loader for this set: the toolkit's default, test last
            channel_names=["u", "v", "tracer"],
            static_names=["f_x", "f_y"],
            pde=pde,
            # No coordinates are stored; the generator's config (configs/ns_incomp.yaml) sets domain_size [1, 1].
            # Not periodic: velocity has a zero (no-slip) and the tracer a zero-gradient extrapolation at the walls.
            domain={"extent": [[0.0, 1.0], [0.0, 1.0]], "periodic": [False, False], "axes": ["x", "y"]},
            provenance={"stored_keys": {"u": "velocity[..., 0]", "v": "velocity[..., 1]", "tracer": "particles"}},
        )
        return info, (n, t, 3, h, w)

    def _per_sample(self, file: h5py.File) -> tuple[SourceInfo, tuple]:
        self._groups = sorted(file.keys())  # zero-padded ids: sorted is stored order, as PDEBench reads them
        first = file[self._groups[0]]
        data = first["data"]
        if data.ndim != 4:
            raise DataError(
                f"{self.path}: '{self._groups[0]}/data' has shape {data.shape}; only the 2-D layout [T, X, Y, C] is "
                f"read (a 1-D file stores [T, X, C])"
            )
        # The diffusion-reaction generator reshapes its state to [T, Ny, Nx] (y first), while PDEBench's loader reads
        # the axes as (x, y); the published grids are square with identical x and y coordinates, so we follow the
        # loader (H = first stored axis) like every other layout here.
        t, h, w, c = data.shape
        if c == 2:
            self.layout, channels = "diff-react", ["activator", "inhibitor"]  # FitzHugh-Nagumo u (activator), v
        elif c == 1:
            self.layout, channels = "rdb", ["h"]  # water height
        else:
            raise DataError(
                f"{self.path}: '{self._groups[0]}/data' has {c} channels; PDEBench's per-sample 2-D sets store 2 "
                f"(diffusion-reaction) or 1 (shallow water)"
            )
        for key in self._groups:  # metadata only: one shape lookup per group
            item = file[key]
            shape = item["data"].shape if isinstance(item, h5py.Group) and "data" in item else None
            if shape != data.shape:
                hint = swapped_axes_hint(shape, data.shape) if shape is not None else ""
                raise DataError(
                    f"{self.path}: group {key!r} holds data of shape {shape}, group {self._groups[0]!r} "
                    f"{data.shape} (every sample must share one grid and time axis){hint}"
                )
        grid = first.get("grid")
        times = self._times(grid, "t", t, where=f"{self._groups[0]}/grid/") if grid is not None else np.arange(t)
        pde: dict[str, Any]
        sim = _yaml_config(first.attrs).get("sim")
        sim = sim if isinstance(sim, dict) else {}
        if self.layout == "diff-react":
            # Not periodic: the generator's Laplacian has zero-flux (Neumann) rows at the boundary.
            periodic = False
            pde = {
                "id": "pdebench-diff-react",
                "family": "pdebench-diff-react",
                "equations": "FitzHugh-Nagumo diffusion-reaction",
            }
            pde.update({k: sim[k] for k in ("Du", "Dv", "k") if isinstance(sim.get(k), (int, float))})
        else:
            # Not periodic: pyclaw's extrapolation (outflow) boundaries on every side.
            periodic = False
            pde = {"id": "pdebench-rdb", "family": "pdebench-rdb", "equations": "shallow water, radial dam break"}
            if isinstance(sim.get("gravity"), (int, float)):
                pde["gravity"] = sim["gravity"]
        info = self._info(
            len(self._groups),
            times,
            test_first=False,
            channel_names=channels,
            pde=pde,
            domain=self._domain(grid, ("x", "y"), (h, w), periodic),
            provenance={"groups": [self._groups[0], self._groups[-1]], "stored_keys": {"data": channels}},
        )
        return info, (len(self._groups), t, c, h, w)

    def _darcy(self, file: h5py.File) -> tuple[SourceInfo, tuple]:
        tensor = file["tensor"]
        if "nu" not in file or tensor.ndim != 4:
            raise DataError(
                f"{self.path}: 'tensor' has shape {tensor.shape}{'' if 'nu' in file else ' and no nu'}; the only "
                f"2-D scalar layout read is Darcy flow (tensor [N, 1, X, Y], nu [N, X, Y]); 1-D files store "
                f"tensor [N, T, X]"
            )
        n, one, h, w = tensor.shape
        if one != 1:
            raise self._shape_error("tensor", tensor.shape, "[N, 1, X, Y] (one steady solution per sample)")
        if file["nu"].shape != (n, h, w):
            raise self._shape_error("nu", file["nu"].shape, f"{(n, h, w)} to match 'tensor'", (n, h, w))
        params = name_parameters(self.path.stem)
        if "beta" in file.attrs:
            params["beta"] = float(_plain(file.attrs["beta"]))
        info = self._info(
            n,
            np.zeros(1),
            test_first=True,
            channel_names=["u"],
            static_names=["a"],
            steady=True,
            pde={
                "id": "pdebench-darcy",
                "family": "pdebench-darcy",
                "equations": "-div(a grad u) = beta",
                **{k: v for k, v in params.items() if k == "beta"},
            },
            # Not periodic: the solution is held at the boundary (the generator's ghost cells, not a wrap-around).
            domain=self._domain(file, ("x-coordinate", "y-coordinate"), (h, w), False),
            provenance={"stored_keys": {"u": "tensor", "a": "nu"}},
        )
        return info, (n, 1, 1, h, w)

    # ------------------------------------------------------------------ coordinates
    def _times(self, group: h5py.Group, key: str, t: int, allow_extra: bool = False, where: str = "") -> np.ndarray:
        if key not in group:
            return np.arange(t, dtype=np.float64)  # no time coordinate: lead times in snapshots
        times = np.asarray(group[key][...], dtype=np.float64)
        if times.ndim == 2:  # ns-incom stores t per trajectory [N, T]: one time axis must serve all
            rel = times - times[:, :1]
            if not np.allclose(rel, rel[0], rtol=1e-5, atol=1e-8 * max(1.0, float(np.ptp(rel)))):
                raise DataError(f"{self.path}: '{where}{key}' differs between trajectories beyond a shift")
            times = times[0]
        times = times.reshape(-1)
        # CFD: the generator saves T snapshots but allocates T + 1 time entries (arange(it_tot + 1) * dt_save).
        if len(times) == t or (allow_extra and len(times) == t + 1):
            return times[:t]
        raise DataError(f"{self.path}: '{where}{key}' has {len(times)} entries for {t} snapshots")

    def _domain(self, group: h5py.Group | None, keys: tuple[str, str], grid: tuple[int, int], periodic: bool) -> dict:
        extent: list = []
        for key, n, other in zip(keys, grid, grid[::-1]):
            edges = _edges(self.path, key, group[key][...], n, other) if group is not None and key in group else None
            extent.append(edges if edges is not None else [0.0, 1.0])
        domain = {"extent": extent, "periodic": [periodic, periodic], "axes": ["x", "y"]}
        if group is None or any(k not in group for k in keys):
            domain["note"] = "coordinates missing from the file: unit extent assumed"
        return domain

    # ------------------------------------------------------------------ reading
    def _part(self, index: int) -> tuple[PDEBenchSource, int]:
        """(file of a folder, trajectory index in it) of trajectory `index`; keeps at most `max_open_files` open."""
        k = int(np.searchsorted(self._offsets, index, side="right")) - 1
        self._open[k] = None
        self._open.move_to_end(k)
        while len(self._open) > self.max_open_files:
            self._parts[self._open.popitem(last=False)[0]].close()
        return self._parts[k], int(index - self._offsets[k])

    def _where(self, index: int) -> str | None:
        if not self._parts:
            return None
        k = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return f"file {self._parts[k].path}, trajectory {int(index - self._offsets[k])} of that file"

    def _read(self, index: int, snapshot: int) -> np.ndarray:
        if self._parts:
            part, local = self._part(index)
            return part._read(local, snapshot)
        h5 = self._h5
        if self.layout == "cfd":
            return np.stack([h5.dataset(key)[index, snapshot] for key in CFD_KEYS.values()])
        if self.layout == "ns-incom":
            out = np.empty(self.shape[2:], dtype=np.float32)
            out[:2] = np.moveaxis(h5.dataset("velocity")[index, snapshot], -1, 0)
            out[2] = h5.dataset("particles")[index, snapshot, ..., 0]
            return out
        if self.layout == "darcy":
            return h5.dataset("tensor")[index]  # [1, X, Y]
        data = h5.dataset(f"{self._groups[index]}/data")[snapshot]  # [X, Y, C]
        return np.ascontiguousarray(np.moveaxis(data, -1, 0), dtype=np.float32)

    def _read_static(self, index: int) -> np.ndarray:
        if self._parts:
            part, local = self._part(index)
            return part._read_static(local)
        if self.layout == "ns-incom":
            return np.ascontiguousarray(np.moveaxis(self._h5.dataset("force")[index], -1, 0), dtype=np.float32)
        if self.layout == "darcy":
            return self._h5.dataset("nu")[index][None]
        return super()._read_static(index)

    def close(self) -> None:
        for part in self._parts:
            part.close()
        if self._h5 is not None:
            self._h5.close()
