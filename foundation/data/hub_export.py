"""Export any `TrajectorySource` as a Hugging Face dataset folder: one row per trajectory, ready for the Hub.

The layout written here is the one `foundation.data.hub` documents and `HubDatasetSource` reads: the data as
parquet files (data/{train,validation,test}-*.parquet, the Hub's layout) or a `DatasetDict.save_to_disk` folder,
and scot_metadata.json beside it with the channels, times, splits, statistics, PDE, domain and provenance.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .hub import HUB_SPLITS, METADATA_FILE, METADATA_KEYS, METADATA_VERSION
from .source import TrajectorySource


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
        num_shards: Files per split (default: about 500 MB each).
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
        _write_splits(splits, tmp, format, num_shards, row_bytes)
        (tmp / METADATA_FILE).write_text(json.dumps(_metadata(source, splits, ranges), indent=1))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return target


def _write_splits(splits: dict[str, Any], tmp: Path, format: str, num_shards: int | None, row_bytes: int) -> None:
    """The Hub splits (`datasets.Dataset`s) into `tmp`, as a `save_to_disk` folder or data/*.parquet shards."""
    import datasets

    # A shard holds at least one row; by default about 500 MB.
    shards = {k: max(1, min(len(d), num_shards or -(-len(d) * row_bytes // 500_000_000))) for k, d in splits.items()}
    if format == "arrow":
        datasets.DatasetDict(splits).save_to_disk(str(tmp), num_shards=shards)
        return
    (tmp / "data").mkdir()
    for hub_name, data in splits.items():
        for k in range(shards[hub_name]):
            shard = data.shard(shards[hub_name], k, contiguous=True)
            # Row groups of ~64 MB: a streaming reader (`load_dataset(streaming=True)`) reads one at a time.
            shard.to_parquet(
                str(tmp / "data" / f"{hub_name}-{k:05d}-of-{shards[hub_name]:05d}.parquet"),
                batch_size=max(1, 64_000_000 // row_bytes),
            )


def _metadata(source: TrajectorySource, splits: dict[str, Any], ranges: dict | None) -> dict[str, Any]:
    """scot_metadata.json of the export: the source's metadata, the columns, the shape and the Hub splits written
    (`ranges`: our splits when they are not the Hub's, see `_partitions`)."""
    _, t, c, h, w = source.shape
    meta = {key: value for key, value in source.info.to_json().items() if key in METADATA_KEYS}
    meta["provenance"] = {
        **meta.get("provenance", {}),
        "exported_from": source.info.name,
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    meta.update(
        schema_version=METADATA_VERSION,
        fields_column="fields",
        static_column="static" if source.info.static_names else None,
        shape=[t, c, h, w],
        hub_splits={ours: hub for ours, hub in HUB_SPLITS.items() if hub in splits},
        name=source.info.name,
    )
    if ranges is not None:
        meta["splits"] = ranges
    return meta
