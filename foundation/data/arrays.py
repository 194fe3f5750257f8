"""Plain arrays: `.npy` files [N, T, C, H, W], `.npz` archives (`fields`, optional `times` and `static`),
and in-memory numpy arrays. Files are memory-mapped, never read whole: an uncompressed `.npz` member is
mapped at its offset inside the archive (a compressed one cannot be, and is refused with a clear message).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .source import DataError, SourceInfo, TrajectorySource, default_splits


def _memmap_npz_member(path: Path, name: str) -> np.ndarray:
    """Memory-map member `name` of an uncompressed .npz archive."""
    with zipfile.ZipFile(path) as archive:
        member = f"{name}.npy"
        if member not in archive.namelist():
            raise DataError(f"{path}: no array {name!r} (has {sorted(n[:-4] for n in archive.namelist())})")
        info = archive.getinfo(member)
        if info.compress_type != zipfile.ZIP_STORED:
            raise DataError(
                f"{path}: array {name!r} is compressed (np.savez_compressed) and cannot be read lazily; "
                f"save it with np.savez or as .npy"
            )
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)
        name_len, extra_len = int.from_bytes(local[26:28], "little"), int.from_bytes(local[28:30], "little")
        start = info.header_offset + 30 + name_len + extra_len
        f.seek(start)
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
        offset = f.tell()
    if fortran:
        raise DataError(f"{path}: array {name!r} is Fortran-ordered; save it C-ordered")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)


class ArraySource(TrajectorySource):
    """Trajectories from arrays [N, T, C, H, W] (file path or in-memory), with metadata given by the caller.

    Args:
        data: A `.npy`/`.npz` path or an array [N, T, C, H, W].
        channel_names: Names of the C channels (default c0, c1, ...).
        times: Snapshot times [T] (default 0, 1, ..., T-1; an .npz `times` array wins over the default).
        static: Static fields [N, S, H, W] (or from the .npz `static` array).
        static_names: Names of the static fields.
        time_scale: Physical time of lead time 1 (default: the span of `times`).
        splits: Trajectory ranges (default 80/10/10 in index order).
        mean, std, static_mean, static_std: Statistics (default: none; see `compute_stats`).
        steady, pde, domain, provenance: As in `SourceInfo`.
    """

    def __init__(
        self,
        data: str | os.PathLike | np.ndarray,
        channel_names: list[str] | None = None,
        times=None,
        static: np.ndarray | None = None,
        static_names: list[str] | None = None,
        time_scale: float | None = None,
        splits: dict | None = None,
        **info: Any,
    ):
        name = "<array>"
        if isinstance(data, (str, os.PathLike)):
            path = Path(data)
            name = str(path)
            if not path.exists():
                raise DataError(f"{path}: no such file")
            if path.suffix == ".npz":
                with zipfile.ZipFile(path) as archive:
                    members = {n[:-4] for n in archive.namelist()}
                key = "fields" if "fields" in members else (sorted(members)[0] if len(members) == 1 else None)
                if key is None:
                    raise DataError(f"{path}: expected an array 'fields' [N, T, C, H, W]; has {sorted(members)}")
                fields = _memmap_npz_member(path, key)
                if times is None and "times" in members:
                    times = np.asarray(_memmap_npz_member(path, "times"))
                if static is None and "static" in members:
                    static = _memmap_npz_member(path, "static")
            else:
                try:
                    fields = np.load(path, mmap_mode="r")
                except ValueError as error:
                    raise DataError(f"{path}: not a readable .npy array ({error})") from None
        else:
            fields = np.asarray(data)
        if fields.ndim != 5:
            raise DataError(f"{name}: fields must be [N, T, C, H, W], got shape {fields.shape}")
        n, t, c = fields.shape[:3]
        times = np.arange(t, dtype=np.float64) if times is None else np.asarray(times, dtype=np.float64)
        span = float(times[-1] - times[0]) if t > 1 else 1.0
        static_names = list(static_names or ([] if static is None else [f"s{i}" for i in range(static.shape[1])]))
        if static is not None and (static.ndim != 4 or static.shape[:2] != (n, len(static_names))):
            raise DataError(f"{name}: static must be [N={n}, S={len(static_names)}, H, W], got {static.shape}")
        self.fields, self.static = fields, static
        super().__init__(
            SourceInfo(
                name=name,
                channel_names=list(channel_names or [f"c{i}" for i in range(c)]),
                times=times,
                time_scale=float(time_scale if time_scale is not None else span),
                splits=splits or default_splits(n),
                static_names=static_names,
                **info,
            ),
            fields.shape,
        )

    def _read(self, index: int, snapshot: int) -> np.ndarray:
        return self.fields[index, snapshot]

    def _read_static(self, index: int) -> np.ndarray:
        if self.static is None:
            return super()._read_static(index)
        return self.static[index]
