"""Trajectory sources: lazy, read-only access to PDE trajectories [N, T, C, H, W] and their metadata.

Every reader (our HDF5 schema, the published Poseidon layouts, The Well, arrays, Hub datasets) is a
`TrajectorySource`: fields are read one snapshot at a time, never the whole file; static fields (wave speed,
forcing, masks) are kept apart from the evolving state; splits are ranges of trajectory indices; the
normalisation statistics, PDE parameters and provenance travel with the data.
"""

from __future__ import annotations

import json
import math
import numbers
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, NoReturn

import numpy as np

SPLITS = ("train", "val", "test")
SPATIAL_AXES = 2  # (H, W): every source is 2-D


class DataError(ValueError):
    """Bad input data: names the file, key, sample or option."""


def _shown(value: Any, limit: int = 80) -> str:
    """A value as a refusal quotes it: repr, cut short so that the message stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _number(value: Any, where: str) -> float:
    """`value` as a float if it is a finite real number (bools, strings, None, NaN and Inf are not)."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    raise DataError(f"{where}: {_shown(value)} is not a finite number")


def _numbers(value: Any, count: int, where: str) -> list[float]:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise DataError(f"{where}: expected a list of {count} numbers, got {_shown(value)}")
    if len(value) != count:
        raise DataError(f"{where}: {len(value)} entries, expected {count} (one per channel)")
    return [_number(v, where) for v in value]


def _names(value: Any, where: str) -> list[str]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v for v in value):
        raise DataError(f"{where}: expected a list of non-empty strings, got {_shown(value)}")
    return list(value)


def box_intervals(extent: Any, name: str = "domain") -> list[list[float]]:
    """The box [[x0, x1], [y0, y1]] (H axis, then W axis) of a `domain.extent` given either as intervals or as
    side lengths [Lx, Ly] (a length L is the interval [0, L]); one axis may use one form, the other the other.

    Raises:
        DataError: `{name}: domain.extent: ...` for a wrong number of axes, an interval that is not two numbers,
            a value that is not a finite number, a side length <= 0 or an interval with lo >= hi.
    """
    where = f"{name}: domain.extent"
    if isinstance(extent, np.ndarray):
        extent = extent.tolist()
    if not isinstance(extent, (list, tuple)) or len(extent) != SPATIAL_AXES:
        raise DataError(
            f"{where}: expected one entry per spatial axis (H, W), each a side length L or an interval [lo, hi], "
            f"got {_shown(extent)}"
        )
    box = []
    for axis, entry in enumerate(extent):
        if isinstance(entry, (list, tuple)):
            if len(entry) != 2:
                raise DataError(f"{where}: axis {axis} interval {_shown(entry)} is not 2 numbers [lo, hi]")
            lo, hi = (_number(v, f"{where}: axis {axis}") for v in entry)
            if lo >= hi:
                raise DataError(f"{where}: axis {axis} interval [{lo}, {hi}] has lo >= hi")
        else:
            lo, hi = 0.0, _number(entry, f"{where}: axis {axis}")
            if hi <= 0:
                raise DataError(f"{where}: axis {axis} side length {hi} must be positive")
        box.append([lo, hi])
    return box


def box_lengths(domain: dict[str, Any] | None, name: str = "domain") -> tuple[float, float]:
    """Side lengths (H axis, W axis) of the box of a source's `domain` metadata (either form of its extent).

    Without an extent, the unit box: what every built-in solver and the published Poseidon datasets use.
    """
    extent = (domain or {}).get("extent")
    if extent is None:
        return 1.0, 1.0
    (x0, x1), (y0, y1) = box_intervals(extent, name)
    return x1 - x0, y1 - y0


def _splits(splits: Any, n: int, name: str) -> dict[str, tuple[int, int]]:
    if not isinstance(splits, dict):
        raise DataError(f'{name}: splits: expected an object {{"train": [start, stop], ...}}, got {_shown(splits)}')
    out = {}
    for split, bounds in splits.items():
        if not (
            isinstance(bounds, (list, tuple))
            and len(bounds) == 2
            and all(isinstance(b, numbers.Integral) and not isinstance(b, bool) for b in bounds)
        ):
            raise DataError(f"{name}: splits.{split}: expected two integers [start, stop], got {_shown(bounds)}")
        start, stop = int(bounds[0]), int(bounds[1])
        if not 0 <= start <= stop <= n:
            raise DataError(f"{name}: splits.{split}: [{start}, {stop}) is outside the {n} trajectories")
        out[str(split)] = (start, stop)
    return out


def _domain(domain: Any, name: str) -> dict[str, Any]:
    """`domain` with its extent as intervals (one canonical form, whatever the file wrote) and checked periodicity;
    further keys (The Well's axes, spacing, boundary conditions) are kept as they are."""
    if not isinstance(domain, dict):
        raise DataError(
            f'{name}: domain: expected an object {{"extent": ..., "periodic": [bool, bool]}}, got {_shown(domain)}'
        )
    out = dict(domain)  # never the caller's dict: a module constant or an ArraySource argument
    if "extent" in out:
        out["extent"] = box_intervals(out["extent"], name)
    if "periodic" in out:
        periodic = out["periodic"]
        if not (
            isinstance(periodic, (list, tuple))
            and len(periodic) == SPATIAL_AXES
            and all(isinstance(p, (bool, np.bool_)) for p in periodic)
        ):
            raise DataError(
                f"{name}: domain.periodic: expected one true/false per spatial axis (H, W), got {_shown(periodic)}"
            )
        out["periodic"] = [bool(p) for p in periodic]
    return out


@dataclass
class SourceInfo:
    """Metadata of a trajectory source.

    Args:
        name: Human-readable name (file name or dataset id).
        channel_names: Names of the evolving channels, in stored order (channel vocabulary of DESIGN.md).
        static_names: Names of the static (time-independent) fields, inputs only.
        times: Physical time of each stored snapshot, shape [T].
        time_scale: Physical time that maps to lead time 1.0 (the span of the whole stored trajectory).
        splits: {"train": (start, stop), "val": ..., "test": ...}, ranges of trajectory indices.
        mean: Per channel mean of the training split (physical units).
        std: Per channel standard deviation of the training split.
        static_mean: Per static field mean.
        static_std: Per static field standard deviation.
        steady: Time-independent problem: static fields are the input, the single snapshot the target.
        pde: PDE family id and parameters.
        domain: Extent per axis and periodicity.
        provenance: Where the data comes from (solver, version, seed, settings, file, creation time).
    """

    name: str
    channel_names: list[str]
    times: np.ndarray
    time_scale: float
    splits: dict[str, tuple[int, int]]
    static_names: list[str] = field(default_factory=list)
    mean: list[float] | None = None
    std: list[float] | None = None
    static_mean: list[float] | None = None
    static_std: list[float] | None = None
    steady: bool = False
    pde: dict[str, Any] = field(default_factory=dict)
    domain: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["times"] = [float(t) for t in np.asarray(self.times)]
        out["splits"] = {k: list(v) for k, v in self.splits.items()}
        return out


def default_splits(n: int, val: float = 0.1, test: float = 0.1) -> dict[str, tuple[int, int]]:
    """Train first, then val, then test, by trajectory index (the Poseidon convention)."""
    if n < 3:
        n_val = n_test = 0
    else:
        n_val, n_test = max(1, math.floor(n * val)), max(1, math.floor(n * test))
    return {"train": (0, n - n_val - n_test), "val": (n - n_val - n_test, n - n_test), "test": (n - n_test, n)}


class TrajectorySource(ABC):
    """Lazy read access to N trajectories of T snapshots with C channels on an H x W grid.

    Subclasses implement `_read` (one snapshot) and optionally `_read_static`; everything else
    (validation, splits, statistics) lives here. Sources are picklable so that DataLoader workers can
    reopen their files (a subclass keeps file handles out of its pickled state).
    """

    info: SourceInfo
    shape: tuple[int, int, int, int, int]  # (N, T, C, H, W)

    def __init__(self, info: SourceInfo, shape: tuple[int, int, int, int, int]):
        self.info = info
        self.shape = tuple(int(s) for s in shape)
        self._validate()

    # ------------------------------------------------------------------ reading
    @abstractmethod
    def _read(self, index: int, snapshot: int) -> np.ndarray:
        """One snapshot [C, H, W] (float32) of trajectory `index`.

        Either a fresh array the caller may modify (it owns its memory), or a view / read-only array of memory
        the source keeps (a cached row must be handed out read-only): consumers modify only the former.
        """

    def _read_static(self, index: int) -> np.ndarray:
        """Static fields [S, H, W] of trajectory `index`."""
        return np.zeros((0, *self.grid), dtype=np.float32)

    def _where(self, index: int) -> str | None:
        """Where trajectory `index` is stored, when the source's name does not say it (a file of several and the
        trajectory's index in it, a split and row): appended to the `DataError` of a read. None: nothing to add."""
        return None

    def _located(self, error: DataError, index: int) -> NoReturn:
        """Re-raise `error` (being handled), with where trajectory `index` lives (`_where`) if the source says."""
        where = self._where(index)
        if where is None:
            raise error
        raise DataError(f"{error} ({where})") from None

    def read(self, index: int, snapshot: int, check: bool = True) -> np.ndarray:
        """Snapshot `snapshot` of trajectory `index` as float32 [C, H, W]; NaN/Inf raise a `DataError`."""
        n, t = self.shape[:2]
        if not (0 <= index < n and 0 <= snapshot < t):
            raise IndexError(f"{self.info.name}: sample ({index}, {snapshot}) outside [0, {n}) x [0, {t})")
        try:
            out = np.asarray(self._read(index, snapshot), dtype=np.float32)
            if check and not np.isfinite(out).all():  # ~7 us for 4 x 128 x 128: cheap enough for every read
                raise DataError(f"{self.info.name}: trajectory {index}, snapshot {snapshot} contains NaN or Inf")
        except DataError as error:
            self._located(error, index)
        return out

    def read_static(self, index: int, check: bool = True) -> np.ndarray:
        """Static fields [S, H, W] of trajectory `index` (S = 0 when the source has none)."""
        try:
            out = np.asarray(self._read_static(index), dtype=np.float32)
            if check and out.size and not np.isfinite(out).all():
                raise DataError(f"{self.info.name}: static fields of trajectory {index} contain NaN or Inf")
        except DataError as error:
            self._located(error, index)
        return out

    def close(self) -> None:  # noqa: B027 - optional hook: sources without file handles need nothing
        """Release file handles (reopened on the next read)."""

    def __enter__(self) -> TrajectorySource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ metadata
    @property
    def num_trajectories(self) -> int:
        return self.shape[0]

    @property
    def num_snapshots(self) -> int:
        return self.shape[1]

    @property
    def grid(self) -> tuple[int, int]:
        return self.shape[3], self.shape[4]

    def split(self, name: str) -> range:
        """Trajectory indices of split `name`."""
        if name not in self.info.splits:
            raise DataError(f"{self.info.name}: no split {name!r}; has {sorted(self.info.splits)}")
        start, stop = self.info.splits[name]
        if stop <= start:
            raise DataError(f"{self.info.name}: split {name!r} is empty ({start}:{stop})")
        return range(start, stop)

    def _validate(self) -> None:
        """Check every metadata field and normalise it in place to one canonical form (lists of str and float,
        splits of two ints, the domain's extent as intervals), so that metadata means the same whichever reader
        made it. Each refusal is a one-line `DataError` naming the source and the key."""
        info, name = self.info, self.info.name
        if len(self.shape) != 5:
            raise DataError(f"{name}: fields must be [N, T, C, H, W], got shape {self.shape}")
        n, t, c, _, _ = self.shape
        info.channel_names = _names(info.channel_names, f"{name}: channel_names")
        info.static_names = _names(info.static_names, f"{name}: static_names")
        if len(info.channel_names) != c:
            raise DataError(
                f"{name}: channel_names: {len(info.channel_names)} channel names {info.channel_names} for {c} channels"
            )
        names = info.channel_names + info.static_names
        repeated = sorted({x for x in names if names.count(x) > 1})
        if repeated:  # channels are mapped by name (Mixture): a repeated name would feed one field twice
            raise DataError(f"{name}: channel_names: {repeated} named twice (channel_names + static_names {names})")
        times = np.asarray(info.times, dtype=np.float64)
        if len(times) != t:
            raise DataError(f"{name}: times: {len(times)} times for {t} snapshots")
        if not np.isfinite(times).all() or (t > 1 and not np.all(np.diff(times) > 0)):
            raise DataError(f"{name}: times: must be finite and increase, got {_shown(times.tolist())}")
        info.times = times
        info.time_scale = _number(info.time_scale, f"{name}: time_scale")
        if info.time_scale <= 0:
            raise DataError(f"{name}: time_scale: must be positive, got {info.time_scale}")
        info.splits = _splits(info.splits, n, name)
        for key, count in (
            ("mean", c),
            ("std", c),
            ("static_mean", len(info.static_names)),
            ("static_std", len(info.static_names)),
        ):
            value = getattr(info, key)
            if value is None:
                continue
            values = _numbers(value, count, f"{name}: stats.{key}")
            if key.endswith("std") and any(s <= 0 for s in values):
                raise DataError(f"{name}: stats.{key}: must be positive, got {values}")
            setattr(info, key, values)
        if not isinstance(info.steady, (bool, np.bool_)):
            raise DataError(f"{name}: steady: expected true or false, got {_shown(info.steady)}")
        info.steady = bool(info.steady)
        for key, what in (("pde", "family id and parameters"), ("provenance", "solver, version, seed, ...")):
            if not isinstance(getattr(info, key), dict):
                raise DataError(f"{name}: {key}: expected a JSON object ({what}), got {_shown(getattr(info, key))}")
        info.domain = _domain(info.domain, name)

    def describe(self) -> dict[str, Any]:
        """Everything `python -m foundation.data inspect` prints."""
        return {
            "source": type(self).__name__,
            "shape": {
                "N": self.shape[0],
                "T": self.shape[1],
                "C": self.shape[2],
                "H": self.shape[3],
                "W": self.shape[4],
            },
            **self.info.to_json(),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.info.name!r}, shape={self.shape}, channels={self.info.channel_names})"


def json_attr(value: Any) -> str:
    """Attributes of our HDF5 schema are JSON strings."""
    return json.dumps(value, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))
