"""Our HDF5 dataset schema (written by `foundation.pdes`, read here).

Root datasets: `fields` float32 [N, T, C, H, W] chunked (1, 1, C, H, W); `times` float64 [T]; optional
`static` float32 [N, S, H, W]. Root attributes, JSON strings: `channel_names`, `static_names`, `pde`,
`domain`, `time_scale`, `splits`, `stats`, `provenance`, `schema_version`, plus `steady`.

The writer never writes over an existing file and never leaves a corrupt one: it writes to a temporary file
beside the target and renames it into place when the data and its statistics are complete.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .source import DataError, SourceInfo, TrajectorySource, default_splits, json_attr

SCHEMA_VERSION = 1
REQUIRED_ATTRS = ("channel_names", "time_scale", "splits")


def swapped_axes_hint(shape: Sequence[int], expected: Sequence[int | None]) -> str:
    """The likely cause of a shape mismatch, as a clause to append to its message, or "".

    Data written by another tool most often disagree with a reader by their two spatial axes: stored y first
    ([..., Y, X], the row-major image convention) where the reader expects x first. When `shape` is `expected`
    with exactly two axes of different lengths exchanged, the clause says so and how to fix it.

    Args:
        shape: The shape found (a dataset's, or a grid (H, W)).
        expected: The shape the reader expects; None matches any length (e.g. a trajectory count).
    """
    if len(shape) != len(expected):
        return ""
    wrong = [i for i, (s, e) in enumerate(zip(shape, expected)) if e is not None and s != e]
    if len(wrong) != 2:
        return ""
    i, j = wrong
    if (shape[i], shape[j]) != (expected[j], expected[i]):
        return ""
    return (
        f"; axes {i} and {j} hold each other's lengths: likely stored y first ([..., Y, X]) where x first "
        f"([..., X, Y]) is read; write them transposed (np.swapaxes(data, {i}, {j}))"
    )


def coordinate_hint(count: int, n: int, other: int) -> str:
    """The likely cause of a coordinate array of `count` entries for an axis of `n` cells, or "": when it
    matches the other axis (`other` cells), the axes are most likely stored y first."""
    if count == other != n:
        return (
            f"; the other axis has {other} cells: likely stored y first ([..., Y, X]) where x first ([..., X, Y]) "
            f"is read; write the data transposed"
        )
    return ""


class H5Handle:
    """An HDF5 file opened lazily, read-only, and reopened in every process (h5py handles do not survive fork,
    so each DataLoader worker opens its own). Datasets are looked up once per open file."""

    def __init__(self, path: Path, kind: str = "HDF5"):
        self.path, self.kind = Path(path), kind
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._datasets: dict[str, h5py.Dataset] = {}

    def file(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            if not self.path.exists():
                raise DataError(f"{self.path}: no such file")
            try:
                self._file = h5py.File(self.path, "r")
            except OSError as error:
                raise DataError(f"{self.path}: not a readable {self.kind} file ({error})") from None
            self._pid, self._datasets = os.getpid(), {}
        return self._file

    def dataset(self, key: str) -> h5py.Dataset:
        file = self.file()
        if key not in self._datasets:
            self._datasets[key] = file[key]
        return self._datasets[key]

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file, self._datasets = None, {}

    def __getstate__(self) -> dict:
        return {"path": self.path, "kind": self.kind, "_file": None, "_pid": None, "_datasets": {}}


def _attr(file: h5py.File, path: Path, key: str, default: Any = None) -> Any:
    """Root attribute `key` decoded from JSON, as written; `SourceInfo` validation checks what it holds."""
    if key not in file.attrs:
        if default is not None or key not in REQUIRED_ATTRS:
            return default
        raise DataError(
            f"{path}: {key}: missing (a required root attribute of our HDF5 schema, see foundation.data.hdf5)"
        )
    value = file.attrs[key]
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.ndarray):  # written with h5py as a native array (e.g. a list of names), not as JSON
        return [v.decode() if isinstance(v, bytes) else v for v in value.tolist()]
    if not isinstance(value, str):
        return value.item() if hasattr(value, "item") else value
    try:
        return json.loads(value)
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: {key}: not valid JSON ({error}): {value[:60]!r}") from None


class H5Source(TrajectorySource):
    """A file of our HDF5 schema, read lazily (one chunk per snapshot)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._h5 = H5Handle(self.path)
        file = self._h5.file()
        for key in ("fields", "times"):
            if key not in file:
                raise DataError(f"{self.path}: missing dataset {key!r} (expected fields [N,T,C,H,W] and times [T])")
        fields = file["fields"]
        if fields.ndim != 5:
            raise DataError(f"{self.path}: 'fields' must be [N, T, C, H, W], got shape {fields.shape}")
        version = _attr(file, self.path, "schema_version", SCHEMA_VERSION)
        if type(version) is not int or not 1 <= version <= SCHEMA_VERSION:
            raise DataError(
                f"{self.path}: schema_version: {version!r} is not a version this reader knows (1 to {SCHEMA_VERSION})"
            )
        stats = _attr(file, self.path, "stats", {})
        if not isinstance(stats, dict):
            raise DataError(
                f'{self.path}: stats: expected an object {{"mean": [...], "std": [...]}}, got {type(stats).__name__}'
            )
        # Every value as the file holds it: `SourceInfo` validation (TrajectorySource._validate) checks and
        # normalises them, the same for every reader; coercing here (list("uv"), float("2")) would hide bad files.
        info = SourceInfo(
            name=str(self.path),
            channel_names=_attr(file, self.path, "channel_names"),
            static_names=_attr(file, self.path, "static_names", []),
            times=np.asarray(file["times"][...], dtype=np.float64),
            time_scale=_attr(file, self.path, "time_scale"),
            splits=_attr(file, self.path, "splits"),
            mean=stats.get("mean"),
            std=stats.get("std"),
            static_mean=stats.get("static_mean"),
            static_std=stats.get("static_std"),
            steady=_attr(file, self.path, "steady", False),
            pde=_attr(file, self.path, "pde", {}),
            domain=_attr(file, self.path, "domain", {}),
            provenance=_attr(file, self.path, "provenance", {}),
        )
        super().__init__(info, fields.shape)
        static_names = self.info.static_names
        if static_names and "static" not in file:
            raise DataError(f"{self.path}: static_names: {static_names} but no 'static' dataset")
        expected = (fields.shape[0], len(static_names), *fields.shape[3:])
        if "static" in file and file["static"].shape != expected:
            raise DataError(
                f"{self.path}: 'static' has shape {file['static'].shape}, expected {expected} (like 'fields' "
                f"{fields.shape}){swapped_axes_hint(file['static'].shape, expected)}"
            )
        # What the solvers write, one uncompressed float32 chunk per snapshot, is read as the raw chunk: about
        # twice as fast as h5py's selection machinery, which dominates the cost of a 4 x 128 x 128 read.
        n_filters = fields.id.get_create_plist().get_nfilters()
        self._raw_chunks = fields.chunks == (1, 1, *fields.shape[2:]) and n_filters == 0 and fields.dtype == "<f4"

    def _read(self, index: int, snapshot: int) -> np.ndarray:
        fields = self._h5.dataset("fields")
        if self._raw_chunks:
            out = np.empty(self.shape[2:], dtype="<f4")  # a fresh, owned array: pairs normalise it in place
            try:
                fields.id.read_direct_chunk((index, snapshot, 0, 0, 0), out=out.reshape(-1).view(np.uint8))
            except (KeyError, ValueError, OSError, RuntimeError):  # a chunk never written: h5py returns its fill value
                return fields[index, snapshot]
            return out
        return fields[index, snapshot]

    def _read_static(self, index: int) -> np.ndarray:
        if not self.info.static_names:
            return super()._read_static(index)
        return self._h5.dataset("static")[index]

    def close(self) -> None:
        self._h5.close()


class H5TrajectoryWriter:
    """Write trajectories to our schema, chunk by chunk, then statistics and metadata, then rename into place.

    Example:
        >>> with H5TrajectoryWriter("ns.h5", n=8, times=np.linspace(0, 1, 11), channel_names=["u", "v"],
        ...                         grid=(64, 64), pde={"id": "ns-sines", "nu": 4e-4}) as out:
        ...     out.write(0, fields)  # [T, C, H, W]

    Args:
        path: Target file; refused if it exists unless `overwrite`.
        n: Number of trajectories.
        times: Physical times of the snapshots [T].
        channel_names: Evolving channels.
        grid: (H, W).
        static_names: Static fields, written with `write(..., static=...)`.
        time_scale: Physical time mapping to lead time 1; defaults to the span of `times`.
        splits: Trajectory-index ranges; defaults to 80/10/10 in index order.
        steady: Time-independent problem (static fields in, one snapshot out).
        pde, domain, provenance: Metadata dicts (JSON-serialisable).
        overwrite: Replace an existing file (only once the new one is complete).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        n: int,
        times,
        channel_names: list[str],
        grid: tuple[int, int],
        static_names: list[str] | None = None,
        time_scale: float | None = None,
        splits: dict[str, tuple[int, int]] | None = None,
        steady: bool = False,
        pde: dict | None = None,
        domain: dict | None = None,
        provenance: dict | None = None,
        overwrite: bool = False,
    ):
        self.path = Path(path)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} exists; refusing to write over it (pass overwrite=True)")
        self.times = np.asarray(times, dtype=np.float64)
        span = float(self.times[-1] - self.times[0]) if len(self.times) > 1 else 1.0
        self.n, self.channel_names, self.static_names = n, list(channel_names), list(static_names or [])
        self.time_scale = float(time_scale if time_scale is not None else span)
        self.splits = splits or default_splits(n)
        self.meta = dict(steady=steady, pde=pde or {}, domain=domain or {}, provenance=dict(provenance or {}))
        self.meta["provenance"].setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.partial")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = h5py.File(self.tmp, "w")
        t, c, (h, w) = len(self.times), len(self.channel_names), grid
        self.fields = self.file.create_dataset("fields", (n, t, c, h, w), dtype="float32", chunks=(1, 1, c, h, w))
        self.file.create_dataset("times", data=self.times)
        self.static = None
        if self.static_names:
            s = len(self.static_names)
            self.static = self.file.create_dataset("static", (n, s, h, w), dtype="float32", chunks=(1, s, h, w))
        self.written = np.zeros(n, dtype=bool)

    def write(self, index: int | slice, fields: np.ndarray, static: np.ndarray | None = None) -> None:
        """Trajectory `index` [T, C, H, W] (or a slice of them [b, T, C, H, W]); NaN/Inf are refused."""
        fields = np.asarray(fields, dtype=np.float32)
        if not np.isfinite(fields).all():
            raise DataError(f"{self.path}: trajectory {index} contains NaN or Inf; not written")
        self.fields[index] = fields
        if self.static is not None:
            if static is None:
                raise DataError(f"{self.path}: static fields {self.static_names} missing for trajectory {index}")
            self.static[index] = np.asarray(static, dtype=np.float32)
        self.written[index] = True

    def close(self) -> Path:
        """Compute statistics over the training split, write the metadata, rename into place."""
        if not self.written.all():
            missing = np.flatnonzero(~self.written)[:10].tolist()
            self.abort()
            raise DataError(f"{self.path}: trajectories {missing} were never written; nothing was saved")
        attrs = self.file.attrs
        attrs["channel_names"] = json_attr(self.channel_names)
        attrs["static_names"] = json_attr(self.static_names)
        attrs["time_scale"] = json_attr(self.time_scale)
        attrs["splits"] = json_attr({k: list(v) for k, v in self.splits.items()})
        attrs["schema_version"] = json_attr(SCHEMA_VERSION)
        for key, value in self.meta.items():
            attrs[key] = json_attr(value)
        self.file.flush()
        attrs["stats"] = json_attr(self._stats())
        self.file.close()
        os.replace(self.tmp, self.path)  # atomic: readers see the old file or the complete new one
        return self.path

    def _stats(self) -> dict[str, list[float]]:
        from .stats import RunningStats

        start, stop = self.splits["train"]
        state = RunningStats(len(self.channel_names))
        static = RunningStats(len(self.static_names)) if self.static_names else None
        for i in range(start, stop):
            state.update(self.fields[i])
            if static is not None:
                static.update(self.static[i][None])
        mean, std = state.result()
        out = {"mean": mean, "std": std}
        if static is not None:
            out["static_mean"], out["static_std"] = static.result()
        return out

    def abort(self) -> None:
        """Drop the partial file; the target (if any) is untouched."""
        try:
            self.file.close()
        finally:
            self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> H5TrajectoryWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
