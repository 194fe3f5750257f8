"""Trajectories as a Hugging Face `datasets` dataset: one row per trajectory, read lazily or streamed.

Layout (written by `save_hub_dataset`, read by `HubDatasetSource` and `stream_pairs`)::

    <folder or repo>/scot_metadata.json                     channels, times, statistics, PDE, domain, provenance
    <folder or repo>/data/{train,validation,test}-*.parquet  rows {"fields": [T, C, H, W], "static": [S, H, W]}
    or the folder of `DatasetDict.save_to_disk` (dataset_dict.json, {train,validation,test}/*.arrow)

Each of our splits is one split of the Hub dataset (val <-> "validation"), so that the Hub's viewer and
`load_dataset` show them as they are. The Arrow data is memory-mapped: a map-style source reads one row per
trajectory it touches. Multi-node pretraining streams instead (`stream_pairs`): each rank reads its own share of
the rows (`datasets.distributed.split_dataset_by_node`) and expands every trajectory into its all2all pairs.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from .pairs import All2AllPairs
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


def _remote_metadata(repo_id: str, revision: str | None) -> dict[str, Any]:
    """scot_metadata.json of a repo without downloading its data (works offline from the HF cache)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        path = hf_hub_download(repo_id, METADATA_FILE, repo_type="dataset", revision=revision)
    except (EntryNotFoundError, LocalEntryNotFoundError):
        return {}
    return _read_metadata(Path(path).parent)


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

    def read(self, index: int, snapshot: int, check: bool = True) -> np.ndarray:
        try:
            return super().read(index, snapshot, check)
        except DataError as error:
            split, row = self.locate(index)
            raise DataError(f"{error} (split {split!r}, row {row})") from None

    def read_static(self, index: int, check: bool = True) -> np.ndarray:
        try:
            return super().read_static(index, check)
        except DataError as error:
            split, row = self.locate(index)
            raise DataError(f"{error} (split {split!r}, row {row})") from None

    def close(self) -> None:
        self._cache = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_cache"] = None
        return state


# ----------------------------------------------------------------------------------------------- export
def _partitions(source: TrajectorySource) -> tuple[list[tuple[str, range]], dict | None]:
    """Hub splits to write and, when our splits are not consecutive ranges covering all trajectories in
    train/val/test order, the ranges to keep in the metadata instead (everything then goes to one split)."""
    n, ranges, start = source.num_trajectories, [], 0
    for ours in HUB_SPLITS:
        a, b = source.info.splits.get(ours, (start, start))
        if a != start:
            break
        ranges.append((ours, range(a, b)))
        start = b
    extra = set(source.info.splits) - set(HUB_SPLITS)
    if start == n and not extra:
        return [(HUB_SPLITS[ours], r) for ours, r in ranges if len(r)], None
    return [("train", range(n))], {k: list(v) for k, v in source.info.splits.items()}


def _rows(source: TrajectorySource, indices: range, static: bool) -> Iterator[dict[str, Any]]:
    for i in indices:
        row = {"fields": np.stack([source.read(i, t) for t in range(source.num_snapshots)]), "trajectory": i}
        if static:
            row["static"] = source.read_static(i)
        yield row


def save_hub_dataset(
    source: TrajectorySource,
    folder: str | os.PathLike,
    format: str = "parquet",
    num_shards: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Export any `TrajectorySource` as a Hub dataset folder (ready for `upload_folder` / `push_to_hub`).

    One row per trajectory (`fields` Array4D [T, C, H, W] float32, `static` Array3D [S, H, W] when the source
    has static fields, `trajectory` its index in the source); one Hub split per split of the source; the
    metadata in scot_metadata.json. Trajectories are read one at a time, never the whole source. The folder is
    written beside its target and renamed into place when complete.

    Args:
        source: The trajectories.
        folder: Target folder; refused if it exists and is not empty, unless `overwrite`.
        format: "parquet" (data/<split>-XXXXX-of-YYYYY.parquet, the Hub's layout, streamable) or "arrow"
            (`DatasetDict.save_to_disk`).
        num_shards: Files per split (default: about 500 MB each). More shards let `stream_pairs` give whole
            files to each rank.
        overwrite: Replace an existing folder (only once the new one is complete).
    """
    import datasets

    if format not in ("parquet", "arrow"):
        raise ValueError(f"format must be 'parquet' or 'arrow', got {format!r}")
    target = Path(folder)
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise FileExistsError(f"{target} exists and is not empty; refusing to write over it (pass overwrite=True)")
    n, t, c, h, w = source.shape
    s = len(source.info.static_names)
    features = {"fields": datasets.Array4D(shape=(t, c, h, w), dtype="float32"), "trajectory": datasets.Value("int64")}
    if s:
        features["static"] = datasets.Array3D(shape=(s, h, w), dtype="float32")
    features = datasets.Features(features)
    parts, ranges = _partitions(source)
    row_bytes = 4 * (t * c + s) * h * w
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    cache = Path(tempfile.mkdtemp(prefix="scot-export-"))
    try:
        splits = {}
        for hub_name, indices in parts:
            # A private cache and a fresh fingerprint: the rows come from files that `datasets` cannot hash,
            # so its cache must never hand back an older export.
            splits[hub_name] = datasets.Dataset.from_generator(
                _rows,
                features=features,
                cache_dir=str(cache),
                fingerprint=uuid.uuid4().hex,
                gen_kwargs={"source": source, "indices": indices, "static": bool(s)},
                split=hub_name,
            )
        # A shard holds at least one row; by default about 500 MB.
        shards = {
            k: max(1, min(len(d), num_shards or -(-len(d) * row_bytes // 500_000_000))) for k, d in splits.items()
        }
        if format == "arrow":
            datasets.DatasetDict(splits).save_to_disk(str(tmp), num_shards=shards)
        else:
            (tmp / "data").mkdir()
            for hub_name, data in splits.items():
                for k in range(shards[hub_name]):
                    shard = data.shard(shards[hub_name], k, contiguous=True)
                    # Row groups of ~64 MB: streaming reads a row group at a time.
                    shard.to_parquet(
                        str(tmp / "data" / f"{hub_name}-{k:05d}-of-{shards[hub_name]:05d}.parquet"),
                        batch_size=max(1, 64_000_000 // row_bytes),
                    )
        meta = {key: value for key, value in source.info.to_json().items() if key in METADATA_KEYS}
        meta["provenance"] = {
            **meta.get("provenance", {}),
            "exported_from": source.info.name,
            "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        meta.update(
            schema_version=METADATA_VERSION,
            fields_column="fields",
            static_column="static" if s else None,
            shape=[t, c, h, w],
            hub_splits={_OUR_SPLIT[k]: k for k in splits},
            name=source.info.name,
        )
        if ranges is not None:
            meta["splits"] = ranges
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=1))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return target


# ----------------------------------------------------------------------------------------------- streaming
class _Trajectory(TrajectorySource):
    """One trajectory held in memory, so that `All2AllPairs` builds the streamed items exactly as it does for
    a map-style source (same normalisation, lead times, pair pattern and options)."""

    def __init__(self, info: SourceInfo, fields: np.ndarray):
        self.fields, self.static = fields, np.zeros((0, *fields.shape[2:]), np.float32)
        super().__init__(info, (1, *fields.shape))

    def _read(self, index: int, snapshot: int) -> np.ndarray:
        return self.fields[snapshot]

    def _read_static(self, index: int) -> np.ndarray:
        return self.static


class StreamedPairs(IterableDataset):
    """All2all pairs of the trajectories a rank streams from a Hub dataset (built by `stream_pairs`).

    Items are those of `All2AllPairs.__getitem__`: pixel_values, labels, time, channel_mask. Every pair of a
    trajectory is yielded once per epoch. With `shuffle`, the trajectories come through `datasets`' shuffle buffer
    and the pairs of `pool` trajectories at a time are interleaved at random, so that a batch mixes trajectories.
    Under a DataLoader with workers, `datasets` gives each worker its own shards of the rank's share.
    """

    def __init__(
        self,
        data: Any,
        info: SourceInfo,
        pair_options: dict[str, Any],
        fields_column: str,
        static_column: str,
        shuffle: bool,
        seed: int,
        pool: int,
        rank: int,
    ):
        super().__init__()
        self.data, self.info, self.pair_options = data, info, pair_options
        self.fields_column, self.static_column = fields_column, static_column
        self.shuffle, self.seed, self.pool, self.rank = shuffle, seed, max(1, pool), rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """A new shuffle order (trajectories and pairs) for each epoch; the same on every rank."""
        self.epoch = epoch
        self.data.set_epoch(epoch)

    def _trajectories(self) -> Iterator[tuple[np.ndarray, np.ndarray | None, str]]:
        shape = None
        for k, row in enumerate(self.data):
            where = f"{self.info.name}: streamed row {k} of rank {self.rank}"
            fields = _as_array(row[self.fields_column], self.fields_column, where)
            shape = shape or fields.shape
            if fields.ndim != 4 or fields.shape != shape:
                raise DataError(f"{where}: column {self.fields_column!r} has shape {fields.shape}, expected {shape}")
            static = None
            if self.info.static_names:
                static = _as_array(row[self.static_column], self.static_column, where)
                if static.shape != (len(self.info.static_names), *shape[2:]):
                    raise DataError(
                        f"{where}: column {self.static_column!r} has shape {static.shape}, expected "
                        f"{(len(self.info.static_names), *shape[2:])}"
                    )
            yield fields, static, where

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        worker = torch.utils.data.get_worker_info()
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, worker.id if worker else 0])
        holder: _Trajectory | None = None
        pairs: All2AllPairs | None = None
        pool: list[tuple[np.ndarray, np.ndarray | None, str, list[int]]] = []  # trajectories being expanded
        stream = self._trajectories()
        while True:
            while len(pool) < (self.pool if self.shuffle else 1):
                item = next(stream, None)
                if item is None:
                    break
                if holder is None:
                    holder = _Trajectory(self.info, item[0])
                    pairs = All2AllPairs(holder, "train", **self.pair_options)
                order = rng.permutation(len(pairs)) if self.shuffle else np.arange(len(pairs))
                pool.append((*item, order[::-1].tolist()))  # popped from the end
            if not pool:
                return
            slot = int(rng.integers(len(pool))) if self.shuffle else 0
            holder.fields, static, where, order = pool[slot]
            if static is not None:
                holder.static = static
            try:
                yield pairs[order.pop()]
            except DataError as error:  # the holder's "trajectory 0" means nothing to the user: name the row
                raise DataError(f"{error} ({where})") from None
            if not order:
                pool.pop(slot)


def stream_pairs(
    repo_or_path: str | os.PathLike,
    rank: int = 0,
    world_size: int = 1,
    split: str = "train",
    revision: str | None = None,
    fields_column: str = "fields",
    static_column: str = "static",
    shuffle: bool = False,
    seed: int = 0,
    buffer_size: int = 64,
    pool: int = 8,
    stride: int = 1,
    max_snapshots: int | None = None,
    include_identity: bool = True,
    lead_steps: Sequence[int] | None = None,
    normalize: bool = True,
    check_finite: bool = True,
    **metadata: Any,
) -> StreamedPairs:
    """Stream the all2all pairs of this rank's share of a Hub dataset (multi-node pretraining).

    `datasets.load_dataset(..., streaming=True)` reads the rows as they are needed (a local folder, or the Hub;
    with HF_HUB_OFFLINE=1 a repo id is read from its snapshot in the HF cache), and
    `datasets.distributed.split_dataset_by_node` gives rank r of `world_size` a disjoint share: whole files when
    their number divides by `world_size`, else every world_size-th row. Together the ranks see every trajectory
    exactly once per epoch. Ranks may get a different number of trajectories: train by steps, not epochs.

    Args:
        repo_or_path: Local dataset folder or Hub dataset repo id (layout of `save_hub_dataset`).
        rank, world_size: This process's node/rank and how many there are.
        split: The Hub split ("train", "val"/"validation", "test").
        revision: Branch, tag or commit of a Hub repo.
        fields_column, static_column: Columns of the evolving and static fields.
        shuffle: Shuffle trajectories (a buffer of `buffer_size`, the same seed on all ranks as `datasets`
            requires) and interleave the pairs of `pool` trajectories at random.
        seed: Shuffle seed; `set_epoch` changes the order per epoch.
        stride, max_snapshots, include_identity, lead_steps, normalize, check_finite: As for `All2AllPairs`.
        **metadata: Overrides of scot_metadata.json (channel_names, times, mean, std, ...).
    """
    import datasets
    from datasets.distributed import split_dataset_by_node
    from huggingface_hub import constants

    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of {world_size}")
    text = os.fspath(repo_or_path)
    local = _is_local(text)
    offline = bool(constants.HF_HUB_OFFLINE)
    folder = Path(text).expanduser() if local else _snapshot(text, revision) if offline else None
    meta = _merge(_read_metadata(folder) if folder is not None else _remote_metadata(text, revision), metadata)
    hub_split = HUB_SPLITS.get(_OUR_SPLIT.get(split, split), split)
    if folder is None:
        data = datasets.load_dataset(text, split=hub_split, revision=revision, streaming=True)
    elif (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        loaded = datasets.load_from_disk(str(folder))
        table = loaded if isinstance(loaded, datasets.Dataset) else loaded[hub_split]
        # Enough shards that whole shards can go to each rank (contiguous blocks of rows).
        shards = max(1, min(len(table), 8 * world_size) // world_size * world_size)
        data = table.to_iterable_dataset(num_shards=shards)
    else:
        data = datasets.load_dataset(str(folder), split=hub_split, streaming=True)
    static_names = list(meta.get("static_names") or [])
    columns = [fields_column] + ([static_column] if static_names else [])
    missing = [c for c in columns if c not in (data.column_names or columns)]
    if missing:
        raise DataError(f"{text} [{hub_split}]: no column {missing}; it has {data.column_names}")
    data = data.select_columns(columns).with_format("numpy")
    if shuffle:
        data = data.shuffle(seed=seed, buffer_size=buffer_size)  # before the split, the same seed on every rank
    data = split_dataset_by_node(data, rank=rank, world_size=world_size)
    shape = tuple(meta.get("shape") or ())
    t = shape[0] if shape else len(meta.get("times") or []) or None
    if t is None:
        raise DataError(f"{text}: the number of snapshots is unknown: add {METADATA_FILE} or pass times=[...]")
    info = _info(
        f"{text} [{hub_split}]",
        meta,
        (t,),
        {"train": (0, 1)},
        {
            "hub": {
                "repo_or_path": text,
                "revision": revision,
                "split": hub_split,
                "rank": rank,
                "world_size": world_size,
            }
        },
        text,
    )
    if normalize and (info.mean is None or info.std is None or (static_names and info.static_std is None)):
        raise DataError(f"{text}: no normalisation statistics in {METADATA_FILE}; pass mean=/std= or normalize=False")
    options = dict(
        stride=stride,
        max_snapshots=max_snapshots,
        include_identity=include_identity,
        lead_steps=lead_steps,
        normalize=normalize,
        check_finite=check_finite,
    )
    return StreamedPairs(data, info, options, fields_column, static_column, shuffle, seed, pool, rank)
