"""The Well (PolymathicAI, "the_well") HDF5 datasets, read lazily as a `TrajectorySource`.

Layout of one dataset folder::

    <dataset>/stats.yaml                       mean/std (and rms, *_delta) per field, over the training data
    <dataset>/data/{train,valid,test}/*.hdf5   trajectories, several files per split

Each file: root attributes `dataset_name`, `n_spatial_dims`, `n_trajectories`, `grid_type`,
`simulation_parameters` (names of further root attributes); groups `dimensions` (`time`, one coordinate
dataset per name in its `spatial_dims` attribute), `boundary_conditions` (one group per condition, attributes
`bc_type`, `associated_dims`), `scalars`, and `t0_fields` (scalar fields [n_traj, T, X, Y]), `t1_fields`
(vectors [..., D]), `t2_fields` (tensors [..., D, D]). Every field dataset carries `time_varying`,
`sample_varying` and `dim_varying` attributes; a leading axis is stored only when the field varies along it.

Mapping onto this toolkit: the time-varying fields become the evolving channels (vectors and tensors expanded
into components named like The Well's own reader does: `velocity_x`, `C_xy`), the others static fields.
Obvious names are mapped onto the channel vocabulary (density -> rho, pressure -> p, energy -> E, a Cartesian
velocity -> u, v). The grid axes keep their stored order: H is the first spatial dimension (`x`), W the second
(`y`); `info.domain["axes"]` records it.
"""

from __future__ import annotations

import itertools
import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .hdf5 import swapped_axes_hint
from .source import SPLITS, DataError, SourceInfo, TrajectorySource, default_splits

# Folder names of The Well's splits, in the order their trajectories are concatenated.
SPLIT_FOLDERS = (("train", "train"), ("val", "valid"), ("test", "test"))
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "valid": "val",
    "val": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
SCALAR_NAMES = {"density": "rho", "pressure": "p", "energy": "E"}
VECTOR_NAMES = {"velocity": ("u", "v")}
FIELD_GROUPS = ("t0_fields", "t1_fields", "t2_fields")
REQUIRED_GROUPS = ("dimensions", "t0_fields", "t1_fields")
HDF5_SUFFIXES = (".hdf5", ".h5")


def _plain(value: Any) -> Any:
    """An HDF5 attribute as plain Python (str, float, list), so that metadata is JSON-serialisable."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()] if value.dtype.kind in "OSU" else value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _names(value: Any) -> list[str]:
    """A list-of-names attribute; The Well writes some of them as a bare string."""
    value = _plain(value)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


@dataclass(frozen=True)
class _Field:
    """One field dataset of a Well file and the channels it expands into."""

    group: str
    name: str
    order: int  # tensor order: 0 scalar, 1 vector, 2 tensor
    time_varying: bool
    sample_varying: bool
    dim_varying: tuple[bool, ...]
    components: tuple[str, ...]  # The Well's component suffixes: ("",), ("x", "y"), ("xx", "xy", ...)

    @property
    def key(self) -> str:
        return f"{self.group}/{self.name}"

    @property
    def signature(self) -> tuple:
        return self.group, self.name, self.order, self.time_varying, self.dim_varying

    def well_names(self) -> list[str]:
        return [f"{self.name}_{c}" if c else self.name for c in self.components]


def _channel_names(field: _Field, spatial_dims: list[str]) -> list[str]:
    if field.order == 0:
        return [SCALAR_NAMES.get(field.name, field.name)]
    if field.order == 1 and field.name in VECTOR_NAMES and list(spatial_dims) == ["x", "y"]:
        return list(VECTOR_NAMES[field.name])
    return field.well_names()


@dataclass
class _FileMeta:
    path: Path
    dataset_name: str
    n_trajectories: int
    times: np.ndarray
    grid: tuple[int, int]
    spatial_dims: list[str]
    fields: list[_Field]
    parameters: dict[str, Any]
    scalars: dict[str, Any]  # constant scalars
    sample_scalars: list[str]  # scalars with one value per trajectory (and not time-varying)
    domain: dict[str, Any]


def _require(file: h5py.File, path: Path, key: str) -> Any:
    if key not in file:
        raise DataError(f"{path}: missing {key!r} (The Well layout: groups {', '.join(REQUIRED_GROUPS)}, ...)")
    return file[key]


def _field_names(group: h5py.Group, path: Path) -> list[str]:
    names = _names(group.attrs["field_names"]) if "field_names" in group.attrs else sorted(group.keys())
    for name in names:
        if name not in group or not isinstance(group[name], h5py.Dataset):
            raise DataError(f"{path}: {group.name}/{name} is listed in field_names but is not a dataset")
    return names


def _scan(path: Path) -> _FileMeta:
    """Read and check the metadata of one file (no field data)."""
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise DataError(f"{path}: not a readable HDF5 file ({error})") from None
    with file:
        attrs = file.attrs
        spatial_dims, times, coords = _coordinates(file, path)
        grid = (len(coords[0]), len(coords[1]))
        fields = _fields(file, path, spatial_dims, times, grid)
        n_traj = _trajectory_count(file, path, fields)
        if times.ndim == 2:
            # Per-trajectory time grids: one SourceInfo.times serves all, so they may differ by a shift only.
            rel = times - times[:, :1]
            if not np.allclose(rel, rel[0], rtol=1e-5, atol=1e-8 * max(1.0, float(np.ptp(rel)))):
                raise DataError(f"{path}: dimensions/time differs between trajectories beyond a shift")
            times = times[0]
        parameters = {str(k): _plain(attrs[k]) for k in _names(attrs.get("simulation_parameters", [])) if k in attrs}
        scalars, sample_scalars = _scalars(file)
        return _FileMeta(
            path=path,
            dataset_name=str(_plain(attrs.get("dataset_name", path.stem))),
            n_trajectories=n_traj,
            times=times,
            grid=grid,
            spatial_dims=spatial_dims,
            fields=fields,
            parameters=parameters,
            scalars=scalars,
            sample_scalars=sample_scalars,
            domain=_domain(file, spatial_dims, coords),
        )


def _coordinates(file: h5py.File, path: Path) -> tuple[list[str], np.ndarray, list[np.ndarray]]:
    """(spatial dims, times [T] or per trajectory [n_traj, T], increasing coordinates per axis) of a 2-D file
    with the required groups; DataError naming what is missing or not 2-D."""
    dims = _require(file, path, "dimensions")
    spatial_dims = _names(dims.attrs.get("spatial_dims", ["x", "y"]))
    n_dims = int(_plain(file.attrs.get("n_spatial_dims", len(spatial_dims))))
    if n_dims != 2 or len(spatial_dims) != 2:
        raise DataError(f"{path}: a {n_dims}-D dataset (spatial_dims {spatial_dims}); only 2-D datasets are supported")
    for group in REQUIRED_GROUPS[1:]:
        _require(file, path, group)
    if "time" not in dims:
        raise DataError(f"{path}: missing 'dimensions/time'")
    times = np.asarray(dims["time"][...], dtype=np.float64)
    coords = []
    for dim in spatial_dims:
        if dim not in dims:
            raise DataError(f"{path}: missing coordinates 'dimensions/{dim}' (listed in spatial_dims)")
        c = np.asarray(dims[dim][...], dtype=np.float64)
        c = c[0] if c.ndim == 2 else c  # sample-varying grids: the first trajectory's
        if not np.all(np.diff(c) > 0):  # the box and the spacing are read off them
            raise DataError(f"{path}: dimensions/{dim}: coordinates must increase, got {c[:4].tolist()}...")
        coords.append(c)
    return spatial_dims, times, coords


def _fields(
    file: h5py.File, path: Path, spatial_dims: list[str], times: np.ndarray, grid: tuple[int, int]
) -> list[_Field]:
    """The field datasets of t0/t1/t2_fields in stored order, each checked against the shape its
    time_varying / sample_varying / dim_varying attributes imply."""
    fields = []
    for order, group_name in enumerate(FIELD_GROUPS):
        if group_name not in file:
            continue  # t2_fields is often absent in practice; t0/t1 are required (`_coordinates`)
        group = file[group_name]
        components = tuple("".join(c) for c in itertools.product(spatial_dims, repeat=order))
        for name in _field_names(group, path):
            ds, a = group[name], group[name].attrs
            field = _Field(
                group=group_name,
                name=name,
                order=order,
                time_varying=bool(_plain(a.get("time_varying", True))),
                sample_varying=bool(_plain(a.get("sample_varying", True))),
                dim_varying=tuple(bool(v) for v in _plain(a.get("dim_varying", [True, True]))),
                components=components,
            )
            fields.append(field)
            expected = (
                ([None] if field.sample_varying else [])
                + ([len(times) if times.ndim == 1 else times.shape[-1]] if field.time_varying else [])
                + [n for n, varying in zip(grid, field.dim_varying) if varying]
                + [2] * order
            )
            if (
                len(field.dim_varying) != 2
                or ds.ndim != len(expected)
                or any(e is not None and e != s for e, s in zip(expected, ds.shape))
            ):
                shown = tuple("n_traj" if e is None else e for e in expected)
                raise DataError(
                    f"{path}: {field.key} has shape {ds.shape}, expected {shown} (time_varying="
                    f"{field.time_varying}, sample_varying={field.sample_varying}, dim_varying="
                    f"{list(field.dim_varying)}; the grid is dimensions/{spatial_dims[0]} x "
                    f"dimensions/{spatial_dims[1]}){swapped_axes_hint(ds.shape, expected)}"
                )
    return fields


def _trajectory_count(file: h5py.File, path: Path, fields: list[_Field]) -> int:
    """The declared n_trajectories (else the leading axis of a sample-varying field, else 1), which every
    sample-varying field must hold."""
    n_traj = file.attrs.get("n_trajectories")
    varying = [file[f.key].shape[0] for f in fields if f.sample_varying]
    n_traj = int(_plain(n_traj)) if n_traj is not None else (varying[0] if varying else 1)
    for f in fields:
        if f.sample_varying and file[f.key].shape[0] != n_traj:
            raise DataError(
                f"{path}: {f.key} holds {file[f.key].shape[0]} trajectories, the file declares "
                f"n_trajectories = {n_traj}"
            )
    return n_traj


def _scalars(file: h5py.File) -> tuple[dict[str, Any], list[str]]:
    """(constant scalars with their values, names of the scalars with one value per trajectory)."""
    scalars, sample_scalars = {}, []
    if "scalars" in file:
        group = file["scalars"]
        for name in _names(group.attrs.get("field_names", sorted(group.keys()))):
            if name not in group or _plain(group[name].attrs.get("time_varying", False)):
                continue  # time series of scalars are outputs of the run, not parameters
            if _plain(group[name].attrs.get("sample_varying", False)):
                sample_scalars.append(name)
            else:
                value = np.asarray(group[name][...]).reshape(-1)
                scalars[name] = value[0].item() if value.size == 1 else value.tolist()
    return scalars, sample_scalars


def _box_edges(c: np.ndarray, periodic: bool) -> list[float]:
    """[lo, hi] of the box along one axis from its coordinates (at least two points).

    The Well stores coordinates, not box edges, in either of two conventions. Spectral solvers (Dedalus) write the
    nodes a + k d of a periodic box [a, a + n d): the last one is one spacing short of the edge (x = 0, d, ...,
    L - d; the files of tests/test_data_well_hub.py are written so). Finite-volume solvers write the cell centres
    a + (k + 1/2) d. A box edge a is a round number (0, -1, -L/2, -pi on an even grid): a whole number of spacings
    from 0 for nodes, a half-integer number of them for centres. So a periodic axis whose first coordinate is
    nearer a whole than a half-integer number of spacings is read as nodes, [c0, c[-1] + d]; every other axis as
    cell centres, [c0 - d/2, c[-1] + d/2]. Either way a periodic axis of n points spans n d, the period that the
    spectral derivatives of the refiner's residual need; [c0, c[-1]] would be one spacing short of it.
    """
    first, last = float(c[1] - c[0]), float(c[-1] - c[-2])  # end spacings (equal on The Well's uniform grids)
    offset = float(c[0]) / first
    if periodic and abs(offset - round(offset)) < 0.25:
        return [float(c[0]), float(c[-1]) + last]
    return [float(c[0]) - first / 2, float(c[-1]) + last / 2]


def _domain(file: h5py.File, spatial_dims: list[str], coords: list[np.ndarray]) -> dict[str, Any]:
    bcs: dict[str, list[str]] = {d: [] for d in spatial_dims}
    for group in file.get("boundary_conditions", {}).values():
        kind = str(_plain(group.attrs.get("bc_type", "unknown"))).lower()
        for dim in _names(group.attrs.get("associated_dims", [])):
            bcs.setdefault(dim, []).append(kind)
    periodic = [bool(bcs[d]) and all(k == "periodic" for k in bcs[d]) for d in spatial_dims]
    out = {
        "axes": list(spatial_dims),  # H is the first spatial dimension as stored, W the second
        "grid_type": str(_plain(file.attrs.get("grid_type", "cartesian"))),
        "spacing": [float(c[1] - c[0]) if len(c) > 1 else 0.0 for c in coords],
        "periodic": periodic,
        "boundary_conditions": {d: sorted(set(k)) for d, k in bcs.items()},
    }
    if all(len(c) > 1 for c in coords):  # a single point has no spacing, hence no box to tell
        out["extent"] = [_box_edges(c, p) for c, p in zip(coords, periodic)]
    return out


def _merged(per_file: list[dict[str, Any]]) -> dict[str, Any]:
    """One value per key when all files agree, else the list of per-file values (in file order)."""
    out = {}
    for key in dict.fromkeys(k for d in per_file for k in d):
        values = [d.get(key) for d in per_file]
        out[key] = values[0] if all(v == values[0] for v in values) else values
    return out


def _hdf5_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in HDF5_SUFFIXES)


def _discover(path: Path, split_files: dict[str, Any] | None) -> tuple[list[tuple[str, list[Path]]], Path]:
    """Files per split (our names, in concatenation order) and the dataset root (where stats.yaml lives)."""
    if split_files is not None:
        per_split: dict[str, list[Path]] = {}
        for key, files in split_files.items():
            if key not in _SPLIT_ALIASES:
                raise DataError(f"split_files: unknown split {key!r}; use train, val (or valid) and test")
            files = [files] if isinstance(files, (str, os.PathLike)) else list(files)
            per_split.setdefault(_SPLIT_ALIASES[key], []).extend(
                Path(f) if Path(f).is_absolute() or path.is_file() else path / f for f in files
            )
        root = path if path.is_dir() else path.parent
        return [(s, per_split.get(s, [])) for s, _ in SPLIT_FOLDERS], root
    if path.is_file():
        split = _SPLIT_ALIASES.get(path.parent.name.lower(), "train")
        return [(s, [path] if s == split else []) for s, _ in SPLIT_FOLDERS], _root_of(path.parent)
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    if (path / "data").is_dir():
        out = [
            (split, _hdf5_files(path / "data" / folder) if (path / "data" / folder).is_dir() else [])
            for split, folder in SPLIT_FOLDERS
        ]
        if not any(files for _, files in out):
            raise DataError(f"{path}: no .hdf5 files under data/train, data/valid or data/test")
        return out, path
    files = _hdf5_files(path)
    if not files:
        raise DataError(f"{path}: no .hdf5 files (expected a Well dataset folder with data/{{train,valid,test}}/)")
    split = _SPLIT_ALIASES.get(path.name.lower(), "train")
    return [(s, files if s == split else []) for s, _ in SPLIT_FOLDERS], _root_of(path)


def _root_of(folder: Path) -> Path:
    """<dataset>/data/<split>/ -> <dataset>; any other folder is its own root."""
    if folder.name.lower() in _SPLIT_ALIASES and folder.parent.name == "data":
        return folder.parent.parent
    return folder


def _load_stats(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    import yaml

    try:
        stats = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise DataError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(stats, dict):
        raise DataError(f"{path}: expected a mapping with 'mean' and 'std', got {type(stats).__name__}")
    return stats


def _field_stats(stats: dict[str, Any] | None, key: str, fields: list[_Field], path: Path) -> list[float] | None:
    """Per-channel values of `stats[key]` for `fields`, or None when any field lacks them."""
    table = (stats or {}).get(key)
    if not isinstance(table, dict):
        return None
    out: list[float] = []
    for field in fields:
        if field.name not in table:
            return None
        values = np.asarray(table[field.name], dtype=np.float64).reshape(-1)  # tensors row-major: xx, xy, yx, yy
        if values.size == 1 and len(field.components) > 1:
            values = np.repeat(values, len(field.components))  # one value for the whole vector
        if values.size != len(field.components):
            raise DataError(
                f"{path}: {key}[{field.name!r}] has {values.size} values for the "
                f"{len(field.components)} components of {field.key}"
            )
        out.extend(float(v) for v in values)
    if key == "std":
        # A constant component has std 0 in the file; normalising it must shift, never divide by 0
        # (the convention of foundation.data.stats.RunningStats).
        out = [s if s > 0 else 1.0 for s in out]
    return out


def _selected_fields(meta, fields: list[str] | None) -> list:
    """The fields of `meta` to read: all of them, or those named, in the order named."""
    available = list(meta.fields)
    if fields is None:
        return available
    by_name = {f.name: f for f in available}
    unknown = [name for name in fields if name not in by_name]
    if unknown:
        raise DataError(f"{meta.path}: no field {unknown}; the file has {[f.name for f in available]}")
    return [by_name[name] for name in fields]


def _splits(
    per_split: list, counts: list[int], may_split: bool, split_files: dict[str, Any] | None
) -> tuple[dict[str, tuple[int, int]], np.ndarray | None, str]:
    """(trajectory ranges per split, the reordering of an automatic split or None, the rule that made them).

    The files of each split follow each other in `per_split`'s order; a source of training data only is split
    automatically (`_auto_split`) when `may_split`.
    """
    splits, start, k = {}, 0, 0
    for split, files in per_split:  # the source's files are these lists concatenated, in this order
        stop = start + sum(counts[k : k + len(files)])
        splits[split], start, k = (start, stop), stop, k + len(files)
    rule = "given" if split_files is not None else "The Well's data/train, data/valid and data/test folders"
    only_train = splits["train"][1] > splits["train"][0] and all(splits[s][1] == splits[s][0] for s in SPLITS[1:])
    if not (may_split and only_train):
        return splits, None, rule
    made = _auto_split(counts)
    if made is None:
        return splits, None, "all train: too few trajectories to hold any out (3 in a file, or 3 files, are needed)"
    order, splits, rule = made
    return splits, order, rule


def _auto_split(counts: list[int]) -> tuple[np.ndarray, dict[str, tuple[int, int]], str] | None:
    """Train/val/test for training data only: (order, splits, rule), or None when nothing can be held out.

    The Well splits each file (one parameter set) 80/10/10 by trajectory; a download of data/train/ alone, or one
    of its files, is split the same way here: per file `default_splits` (train first, val, test the last 10 %),
    so every parameter set is seen in training and evaluated on new initial conditions. When no file holds the 3
    trajectories that needs, whole files are held out instead (at least 3 files), else None. `order[i]` is
    (file, index in the file) of trajectory i: train, then val, then test, each in file order.
    """
    chosen: dict[str, list[tuple[int, int]]] = {s: [] for s in SPLITS}
    if max(counts) >= 3:
        for k, n in enumerate(counts):
            for split, (start, stop) in default_splits(n).items():
                chosen[split].extend((k, i) for i in range(start, stop))
        rule = "automatic (training data only): 80/10/10 of each file's trajectories by stored order, test last"
    elif len(counts) >= 3:
        for split, (start, stop) in default_splits(len(counts)).items():
            chosen[split].extend((k, i) for k in range(start, stop) for i in range(counts[k]))
        rule = "automatic (training data only, under 3 trajectories per file): 80/10/10 of whole files, test last"
    else:
        return None
    order = np.array([pair for split in SPLITS for pair in chosen[split]], dtype=np.int64).reshape(-1, 2)
    splits, start = {}, 0
    for split in SPLITS:
        splits[split], start = (start, start + len(chosen[split])), start + len(chosen[split])
    return order, splits, rule


class WellSource(TrajectorySource):
    """A dataset of The Well (one .hdf5 file, or a dataset folder with data/{train,valid,test}/), read lazily.

    A snapshot costs one HDF5 hyperslab read per field; files are opened on first use, once per process
    (DataLoader workers reopen them after a fork), never read whole.

    Args:
        path: A Well .hdf5 file, a split folder (data/train/), or a dataset folder holding data/ and stats.yaml.
            For a folder the files of data/train, data/valid and data/test are concatenated in that order and
            `info.splits` gives their trajectory ranges; a single file or split folder belongs to the split its
            folder name says (data/valid/ -> val), else to "train", which `auto_split` then splits.
        fields: The Well field names to use, in this order (default: all, t0 then t1 then t2, in stored order).
            Time-varying fields become evolving channels, the others static fields.
        split_files: Explicit files per split, {"train": [...], "val": [...], "test": [...]} (paths relative to
            `path` or absolute), e.g. to use a subset of a large dataset; `path` then locates stats.yaml.
        max_open_files: Files kept open per process (a split of a large dataset may have hundreds).
        auto_split: When only training data is given (a single file, or a folder without valid/ and test/) and no
            `split_files`, hold out validation and test trajectories as The Well does (see `_auto_split`) instead
            of leaving a source that no run can validate or evaluate on. `info.provenance["splits_rule"]` says
            which rule made the splits.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fields: list[str] | None = None,
        split_files: dict[str, Any] | None = None,
        max_open_files: int = 32,
        auto_split: bool = True,
    ):
        self.path = Path(path)
        per_split, root = _discover(self.path, split_files)
        self.files: list[Path] = [f for _, files in per_split for f in files]
        if not self.files:
            raise DataError(f"{self.path}: no files to read")
        metas = [_scan(f) for f in self.files]
        first = metas[0]
        for meta in metas[1:]:
            self._check_consistent(first, meta)
        available = _selected_fields(first, fields)
        self._evolving = [f for f in available if f.time_varying]
        self._static = [f for f in available if not f.time_varying]
        if not self._evolving:
            raise DataError(f"{first.path}: no time-varying field among {[f.name for f in available]}")
        channels, statics = self._channel_lists(first.spatial_dims)

        counts = [m.n_trajectories for m in metas]
        self._offsets = np.cumsum([0] + counts)
        # _order: trajectory index -> (file, index in it), when an automatic split reorders them; None: stored order.
        splits, self._order, rule = _splits(per_split, counts, auto_split and split_files is None, split_files)
        self.stats_path = root / "stats.yaml"
        stats = _load_stats(self.stats_path)
        times = first.times
        info = SourceInfo(
            name=str(self.path),
            channel_names=channels,
            static_names=statics,
            times=times,
            time_scale=float(times[-1] - times[0]) if len(times) > 1 else 1.0,
            splits=splits,
            mean=_field_stats(stats, "mean", self._evolving, self.stats_path),
            std=_field_stats(stats, "std", self._evolving, self.stats_path),
            static_mean=_field_stats(stats, "mean", self._static, self.stats_path) if self._static else None,
            static_std=_field_stats(stats, "std", self._static, self.stats_path) if self._static else None,
            pde={
                "id": first.dataset_name,
                "family": "the_well",
                "parameters": _merged([m.parameters for m in metas]),
                "scalars": _merged([m.scalars for m in metas]),
                "well_fields": {f.name: f.key for f in available},
            },
            domain=first.domain,
            provenance={
                "format": "the_well",
                "root": str(root),
                "files": [str(f) for f in self.files],
                "trajectories_per_file": counts,
                "splits_rule": rule,
                "stats": str(self.stats_path) if stats is not None else None,
                "well_channel_names": [n for f in self._evolving for n in f.well_names()],
                "well_static_names": [n for f in self._static for n in f.well_names()],
            },
        )
        self._metas = metas
        self.max_open_files = max_open_files
        self._handles: OrderedDict[int, h5py.File] = OrderedDict()
        self._pid = os.getpid()
        super().__init__(info, (int(self._offsets[-1]), len(times), len(channels), *first.grid))

    # ------------------------------------------------------------------ metadata
    def _channel_lists(self, spatial_dims: list[str]) -> tuple[list[str], list[str]]:
        """Channel and static names; a mapped name that would collide falls back to The Well's own names."""
        fields = self._evolving + self._static
        mapped = [_channel_names(f, spatial_dims) for f in fields]
        flat = [n for names in mapped for n in names]
        taken = {n for n in flat if flat.count(n) > 1}
        names = [f.well_names() if taken & set(m) else m for f, m in zip(fields, mapped)]
        channels = [n for names_ in names[: len(self._evolving)] for n in names_]
        statics = [n for names_ in names[len(self._evolving) :] for n in names_]
        if len(set(channels + statics)) != len(channels + statics):
            raise DataError(f"{self.path}: duplicate channel names {channels + statics}")
        return channels, statics

    @staticmethod
    def _check_consistent(first: _FileMeta, meta: _FileMeta) -> None:
        where = f"{meta.path} (compared with {first.path})"
        if meta.dataset_name != first.dataset_name:
            raise DataError(f"{where}: dataset_name {meta.dataset_name!r} != {first.dataset_name!r}")
        if meta.grid != first.grid:
            raise DataError(f"{where}: grid {meta.grid} != {first.grid}{swapped_axes_hint(meta.grid, first.grid)}")
        if [f.signature for f in meta.fields] != [f.signature for f in first.fields]:
            raise DataError(
                f"{where}: fields {[f.key for f in meta.fields]} differ from {[f.key for f in first.fields]}"
            )
        if len(meta.times) != len(first.times):
            raise DataError(f"{where}: {len(meta.times)} snapshots != {len(first.times)}")
        a, b = meta.times - meta.times[0], first.times - first.times[0]
        if not np.allclose(a, b, rtol=1e-5, atol=1e-8 * max(1.0, float(np.ptp(b)))):
            raise DataError(f"{where}: the time grid differs beyond a shift (lead times would be wrong)")

    def locate(self, index: int) -> tuple[Path, int]:
        """(file, trajectory index within that file) of trajectory `index`."""
        k, local = self._locate(index)
        return self.files[k], local

    def trajectory_parameters(self, index: int) -> dict[str, Any]:
        """Simulation parameters and constant scalars of trajectory `index` (The Well stores one parameter set
        per file; scalars that vary per trajectory are read from the file)."""
        k, local = self._locate(index)
        meta = self._metas[k]
        out = {**meta.scalars, **meta.parameters}
        if meta.sample_scalars:
            group = self._file(k)["scalars"]
            for name in meta.sample_scalars:
                value = np.asarray(group[name][local]).reshape(-1)
                out[name] = value[0].item() if value.size == 1 else value.tolist()
        return out

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < self.shape[0]:
            raise IndexError(f"{self.info.name}: trajectory {index} outside [0, {self.shape[0]})")
        if self._order is not None:
            k, local = self._order[index]
            return int(k), int(local)
        k = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return k, int(index - self._offsets[k])

    # ------------------------------------------------------------------ reading
    def _file(self, k: int) -> h5py.File:
        # h5py handles do not survive fork: each DataLoader worker opens its own.
        if self._pid != os.getpid():
            self._handles, self._pid = OrderedDict(), os.getpid()
        handle = self._handles.get(k)
        if handle is None:
            try:
                handle = h5py.File(self.files[k], "r")
            except OSError as error:
                raise DataError(f"{self.files[k]}: not a readable HDF5 file ({error})") from None
            self._handles[k] = handle
            while len(self._handles) > self.max_open_files:  # a split may span hundreds of files
                self._handles.popitem(last=False)[1].close()
        self._handles.move_to_end(k)
        return handle

    def _component(self, file: h5py.File, field: _Field, local: int, snapshot: int | None) -> np.ndarray:
        index: tuple = ()
        if field.sample_varying:
            index += (local,)
        if field.time_varying:
            index += (snapshot,)
        data = np.asarray(file[field.group][field.name][index], dtype=np.float32)
        for axis, varying in enumerate(field.dim_varying):
            if not varying:  # stored without this axis: constant along it
                data = np.expand_dims(data, axis)
        h, w = self.grid
        data = np.broadcast_to(data, (h, w, *data.shape[2:])).reshape(h, w, -1)
        return np.moveaxis(data, -1, 0)  # components first: [D or D*D or 1, H, W]

    def _read(self, index: int, snapshot: int) -> np.ndarray:
        k, local = self._locate(index)
        file = self._file(k)
        return np.concatenate([self._component(file, f, local, snapshot) for f in self._evolving], axis=0)

    def _read_static(self, index: int) -> np.ndarray:
        if not self._static:
            return super()._read_static(index)
        k, local = self._locate(index)
        file = self._file(k)
        return np.concatenate([self._component(file, f, local, None) for f in self._static], axis=0)

    def _where(self, index: int) -> str:
        path, local = self.locate(index)
        return f"file {path}, trajectory {local} of that file"

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles = OrderedDict()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.update(_handles=OrderedDict(), _pid=None)
        return state
