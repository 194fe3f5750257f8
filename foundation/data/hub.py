"""Trajectories as a Hugging Face `datasets` dataset: one row per trajectory, read lazily as a `TrajectorySource`.

Layout (written by `foundation.data.hub_export.save_hub_dataset`, read by `HubDatasetSource`)::

    <folder or repo>/scot_metadata.json                     channels, times, statistics, PDE, domain, provenance
    <folder or repo>/data/{train,validation,test}-*.parquet  rows {"fields": [T, C, H, W], "static": [S, H, W]}
    or the folder of `DatasetDict.save_to_disk` (dataset_dict.json, {train,validation,test}/*.arrow)

Each of our splits is one split of the Hub dataset (val <-> "validation"), so that the Hub's viewer and
`load_dataset` show them as they are. The Arrow data is memory-mapped: the map-style source reads one row per
trajectory it touches, and any row by its index, which is what pretraining's exact resume needs. This module holds
the reading side and the layout's constants; exporting a source to this layout lives in `hub_export`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .source import DataError, SourceInfo, TrajectorySource

METADATA_FILE = "scot_metadata.json"
METADATA_VERSION = 1
# Our split names -> the Hub's conventional split names, in the order trajectories are concatenated.
HUB_SPLITS = {"train": "train", "val": "validation", "test": "test"}
_OUR_SPLIT = {
    "train": "train",
    "training": "train",
    "validation": "val",
    "valid": "val",
    "val": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
METADATA_KEYS = (
    "channel_names",
    "static_names",
    "times",
    "time_scale",
    "mean",
    "std",
    "static_mean",
    "static_std",
    "steady",
    "pde",
    "domain",
    "provenance",
)
# What a repo id's snapshot needs: the data in either layout and our metadata (README for its `configs`).
SNAPSHOT_PATTERNS = ["*.parquet", "**/*.parquet", "*.arrow", "**/*.arrow", "*.json", "**/*.json", "README.md"]


# ----------------------------------------------------------------------------------------------- resolving
def _is_local(repo_or_path: str | os.PathLike) -> bool:
    text = os.fspath(repo_or_path)
    # "org/name" is a repo id unless such a folder exists; explicit paths never go to the Hub.
    return Path(text).expanduser().exists() or text.startswith((".", "/", "~"))


def _snapshot(repo_id: str, revision: str | None) -> Path:
    """The local snapshot of a dataset repo: downloaded, or from the HF cache alone when HF_HUB_OFFLINE=1."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        folder = snapshot_download(repo_id, repo_type="dataset", revision=revision, allow_patterns=SNAPSHOT_PATTERNS)
    except (LocalEntryNotFoundError, RepositoryNotFoundError, HFValidationError) as error:
        raise DataError(
            f"{repo_id}: no such local folder, and the dataset repo (revision {revision or 'main'}) "
            f"is neither reachable nor in the HF cache ({type(error).__name__}: {error})"
        ) from None
    return Path(folder)


def _read_metadata(folder: Path) -> dict[str, Any]:
    path = folder / METADATA_FILE
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object")
    return meta


def _load_local(folder: Path) -> dict[str, Any]:
    """{hub split name: Dataset} of a local folder (save_to_disk output or data files for load_dataset)."""
    import datasets

    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        loaded = datasets.load_from_disk(str(folder))
    else:
        try:
            loaded = datasets.load_dataset(str(folder))
        except (FileNotFoundError, ValueError) as error:
            raise DataError(
                f"{folder}: no dataset found (expected data files for load_dataset or a save_to_disk folder): {error}"
            ) from None
    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}  # a single Dataset.save_to_disk folder: all of it is "train"
    return dict(loaded.items())


def _order(names: Sequence[str]) -> list[str]:
    """Hub split names in concatenation order: train, validation, test, then any others."""
    rank = {"train": 0, "val": 1, "test": 2}
    return sorted(names, key=lambda n: (rank.get(_OUR_SPLIT.get(n, n), 3), n))


def _as_array(value: Any, column: str, where: str) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype == object:  # nested lists that the numpy formatter could not consolidate
        try:
            array = np.asarray(array.tolist(), dtype=np.float32)
        except ValueError:
            raise DataError(f"{where}: column {column!r} is ragged (not a [T, C, H, W] array)") from None
    array = array.astype(np.float32, copy=False)
    # The row is cached and its snapshots are handed out as views: read-only, so that a consumer that works in
    # place (All2AllPairs normalises writeable arrays in place) copies instead of corrupting the cache.
    array.flags.writeable = False
    return array


def _info(
    name: str,
    meta: dict[str, Any],
    shape: tuple[int, ...],
    splits: dict[str, tuple[int, int]],
    provenance: dict[str, Any],
    where: str,
) -> SourceInfo:
    if not meta.get("channel_names"):
        raise DataError(
            f"{where}: no channel_names: add {METADATA_FILE} (see save_hub_dataset) or pass channel_names=[...]"
        )
    t = shape[0]
    times = np.asarray(meta["times"] if meta.get("times") is not None else np.arange(t), dtype=np.float64)
    span = float(times[-1] - times[0]) if len(times) > 1 else 1.0
    return SourceInfo(
        name=name,
        channel_names=list(meta["channel_names"]),
        static_names=list(meta.get("static_names") or []),
        times=times,
        time_scale=float(meta["time_scale"]) if meta.get("time_scale") is not None else span,
        splits=splits,
        mean=meta.get("mean"),
        std=meta.get("std"),
        static_mean=meta.get("static_mean"),
        static_std=meta.get("static_std"),
        steady=bool(meta.get("steady", False)),
        pde=dict(meta.get("pde") or {}),
        domain=dict(meta.get("domain") or {}),
        provenance={**(meta.get("provenance") or {}), **provenance},
    )


def _merge(meta: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    unknown = set(overrides) - set(METADATA_KEYS)
    if unknown:
        raise TypeError(f"unknown metadata {sorted(unknown)}; expected some of {list(METADATA_KEYS)}")
    return {**meta, **{k: v for k, v in overrides.items() if v is not None}}


# ----------------------------------------------------------------------------------------------- map-style
class HubDatasetSource(TrajectorySource):
    """A Hugging Face dataset of trajectories (a local folder or a Hub dataset repo), read one row at a time.

    Rows are trajectories: `fields_column` holds [T, C, H, W] (an `Array4D` feature or nested lists) and the
    optional `static_column` [S, H, W]. The metadata comes from `scot_metadata.json` beside the data, and any of
    it may be given (or overridden) as keyword arguments. A repo id is resolved to its snapshot in the HF cache
    (`huggingface_hub.snapshot_download`, downloaded unless HF_HUB_OFFLINE=1) and read like a local folder.

    Args:
        repo_or_path: Local folder (parquet/arrow data files, or a `save_to_disk` folder) or dataset repo id.
        split: Hub split(s) to read: "train", "val"/"validation", "test", a list of them, or "all"/None for every
            split (concatenated train, validation, test, so that `info.splits` holds all three ranges).
        revision: Branch, tag or commit of a Hub repo (ignored for a local folder).
        fields_column: Column of the evolving fields.
        static_column: Column of the static fields (used when `static_names` is non-empty).
        **metadata: channel_names, static_names, times, time_scale, mean, std, static_mean, static_std, steady,
            pde, domain, provenance (override scot_metadata.json).
    """

    def __init__(
        self,
        repo_or_path: str | os.PathLike,
        split: str | Sequence[str] | None = "train",
        revision: str | None = None,
        fields_column: str = "fields",
        static_column: str = "static",
        **metadata: Any,
    ):
        self.repo_or_path = os.fspath(repo_or_path)
        local = _is_local(self.repo_or_path)
        folder = Path(self.repo_or_path).expanduser() if local else _snapshot(self.repo_or_path, revision)
        if local and not folder.is_dir():
            raise DataError(f"{folder}: no such folder")
        meta = _merge(_read_metadata(folder), metadata)
        available = _load_local(folder)
        names = _order(available) if split in (None, "all") else [split] if isinstance(split, str) else list(split)
        by_ours = {_OUR_SPLIT.get(n, n): n for n in available}
        chosen = []
        for name in names:
            hub_name = name if name in available else by_ours.get(_OUR_SPLIT.get(name, name))
            if hub_name is None:
                raise DataError(f"{self.repo_or_path}: no split {name!r}; the dataset has {sorted(available)}")
            chosen.append(hub_name)
        self.fields_column, self.static_column = fields_column, static_column
        static_names = list(meta.get("static_names") or [])
        self._n_static = len(static_names)
        columns = [fields_column] + ([static_column] if static_names else [])
        self._splits: list[tuple[str, Any]] = []
        for hub_name in chosen:
            data = available[hub_name]
            missing = [c for c in columns if c not in data.column_names]
            if missing:
                raise DataError(f"{self.repo_or_path} [{hub_name}]: no column {missing}; it has {data.column_names}")
            # Decode only the columns in use, as numpy; rows stay memory-mapped Arrow until read.
            self._splits.append((hub_name, data.select_columns(columns).with_format("numpy")))
        counts = [len(d) for _, d in self._splits]
        self._offsets = np.cumsum([0] + counts)
        if self._offsets[-1] == 0:
            raise DataError(f"{self.repo_or_path}: split(s) {chosen} hold no rows")
        self._cache: tuple[int, np.ndarray, np.ndarray | None] | None = None
        self._shape: tuple[int, ...] | None = None
        first = self._row(0)[0]
        self._shape = first.shape
        if first.ndim != 4:
            raise DataError(
                f"{self.repo_or_path} [{chosen[0]}] row 0: column {fields_column!r} has shape "
                f"{first.shape}, expected [T, C, H, W]"
            )
        if "splits" in meta and len(chosen) == 1 and len(available) == 1:
            # One Hub split holding all trajectories: our ranges come from the metadata (see save_hub_dataset).
            splits = {k: tuple(v) for k, v in meta["splits"].items()}
        else:
            splits = {
                _OUR_SPLIT.get(n, n): (int(a), int(b)) for n, a, b in zip(chosen, self._offsets, self._offsets[1:])
            }
        name = self.repo_or_path if len(chosen) == len(available) else f"{self.repo_or_path} [{'+'.join(chosen)}]"
        provenance = {
            "hub": {"repo_or_path": self.repo_or_path, "revision": revision, "folder": str(folder), "splits": chosen}
        }
        info = _info(name, meta, first.shape, splits, provenance, self.repo_or_path)
        super().__init__(info, (int(self._offsets[-1]), *first.shape))

    def locate(self, index: int) -> tuple[str, int]:
        """(Hub split, row) of trajectory `index`."""
        k, row = self._locate(index)
        return self._splits[k][0], row

    def _locate(self, index: int) -> tuple[int, int]:
        k = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return k, int(index - self._offsets[k])

    def _row(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        # Two snapshots of one trajectory (an all2all pair) cost one row read.
        if self._cache is not None and self._cache[0] == index:
            return self._cache[1], self._cache[2]
        k, row = self._locate(index)
        split, record = self._splits[k][0], self._splits[k][1][row]
        where = f"{self.repo_or_path} [{split}] row {row}"
        fields = _as_array(record[self.fields_column], self.fields_column, where)
        if self._shape is not None and fields.shape != self._shape:
            raise DataError(
                f"{where}: column {self.fields_column!r} has shape {fields.shape}, expected {self._shape} like row 0"
            )
        static = None
        if self._n_static:
            static = _as_array(record[self.static_column], self.static_column, where)
            expected = (self._n_static, *fields.shape[2:])
            if static.shape != expected:
                raise DataError(f"{where}: column {self.static_column!r} has shape {static.shape}, expected {expected}")
        self._cache = (index, fields, static)
        return fields, static

    def _read(self, index: int, snapshot: int) -> np.ndarray:
        return self._row(index)[0][snapshot]

    def _read_static(self, index: int) -> np.ndarray:
        static = self._row(index)[1]
        return super()._read_static(index) if static is None else static

    def _where(self, index: int) -> str:
        split, row = self.locate(index)
        return f"split {split!r}, row {row}"

    def close(self) -> None:
        self._cache = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = None
        return state
