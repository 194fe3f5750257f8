"""Trajectory sources: lazy, read-only access to PDE trajectories [N, T, C, H, W] and their metadata.

Every reader (our HDF5 schema, the published Poseidon layouts, The Well, arrays, Hub datasets) is a
`TrajectorySource`: fields are read one snapshot at a time, never the whole file; static fields (wave speed,
forcing, masks) are kept apart from the evolving state; splits are ranges of trajectory indices; the
normalisation statistics, PDE parameters and provenance travel with the data.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

SPLITS = ("train", "val", "test")


class DataError(ValueError):
    """Bad input data: names the file, key, sample or option."""


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

    def read(self, index: int, snapshot: int, check: bool = True) -> np.ndarray:
        """Snapshot `snapshot` of trajectory `index` as float32 [C, H, W]; NaN/Inf raise a `DataError`."""
        n, t = self.shape[:2]
        if not (0 <= index < n and 0 <= snapshot < t):
            raise IndexError(f"{self.info.name}: sample ({index}, {snapshot}) outside [0, {n}) x [0, {t})")
        out = np.asarray(self._read(index, snapshot), dtype=np.float32)
        if check and not np.isfinite(out).all():  # ~7 us for 4 x 128 x 128: cheap enough for every read
            raise DataError(f"{self.info.name}: trajectory {index}, snapshot {snapshot} contains NaN or Inf")
        return out

    def read_static(self, index: int, check: bool = True) -> np.ndarray:
        """Static fields [S, H, W] of trajectory `index` (S = 0 when the source has none)."""
        out = np.asarray(self._read_static(index), dtype=np.float32)
        if check and out.size and not np.isfinite(out).all():
            raise DataError(f"{self.info.name}: static fields of trajectory {index} contain NaN or Inf")
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
        info, name = self.info, self.info.name
        if len(self.shape) != 5:
            raise DataError(f"{name}: fields must be [N, T, C, H, W], got shape {self.shape}")
        n, t, c, _, _ = self.shape
        if len(info.channel_names) != c:
            raise DataError(f"{name}: {len(info.channel_names)} channel names {info.channel_names} for {c} channels")
        if len(info.times) != t:
            raise DataError(f"{name}: {len(info.times)} times for {t} snapshots")
        if t > 1 and not np.all(np.diff(np.asarray(info.times, dtype=np.float64)) > 0):
            raise DataError(f"{name}: times must increase, got {list(info.times)}")
        if not info.time_scale > 0:
            raise DataError(f"{name}: time_scale must be positive, got {info.time_scale}")
        for split, (start, stop) in info.splits.items():
            if not 0 <= start <= stop <= n:
                raise DataError(f"{name}: split {split!r} = [{start}, {stop}) is outside the {n} trajectories")
        for key, count in (
            ("mean", c),
            ("std", c),
            ("static_mean", len(info.static_names)),
            ("static_std", len(info.static_names)),
        ):
            value = getattr(info, key)
            if value is not None and len(value) != count:
                raise DataError(f"{name}: stats {key} has {len(value)} entries, expected {count}")
        for key in ("std", "static_std"):
            value = getattr(info, key)
            if value is not None and any(not s > 0 for s in value):
                raise DataError(f"{name}: stats {key} must be positive, got {value}")

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
