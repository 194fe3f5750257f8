"""PDE trajectory data: sources, the all2all pair index and sampler, mixtures, statistics.

`open_source(spec)` opens any supported source:

- `"path/to/file.h5"`: our HDF5 schema (what `foundation.pdes` writes);
- `"CE-RP:path/to/CE-RP.nc"` (or `layout="CE-RP"`): a published Poseidon file in its layout;
- `"well:path"`: The Well (a file or a dataset folder);
- `"path/to/fields.npy"` / `.npz`: plain arrays [N, T, C, H, W];
- `"hub:org/name"` or `"hub:path/to/folder"`: a Hugging Face dataset (local folder or Hub repo id).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .arrays import ArraySource
from .hdf5 import H5Source, H5TrajectoryWriter
from .mixture import Mixture
from .pairs import All2AllPairs, RandomPairSampler
from .poseidon import LAYOUTS, PoseidonSource
from .source import DataError, SourceInfo, TrajectorySource, default_splits
from .stats import compute_stats

__all__ = [
    "All2AllPairs",
    "ArraySource",
    "DataError",
    "H5Source",
    "H5TrajectoryWriter",
    "LAYOUTS",
    "Mixture",
    "PoseidonSource",
    "RandomPairSampler",
    "SourceInfo",
    "TrajectorySource",
    "compute_stats",
    "default_splits",
    "open_source",
]


def open_source(
    spec: str | os.PathLike | dict[str, Any], layout: str | None = None, fill_stats: bool = False, **options: Any
) -> TrajectorySource:
    """Open a trajectory source from a spec string, a path, or a dict {"path": ..., "layout": ..., ...}.

    Args:
        spec: What to open (see the module docstring).
        layout: A Poseidon layout name, The Well ("well"), arrays ("arrays"), a Hub dataset ("hub"), or our
            schema ("scot"); inferred from the spec when omitted.
        fill_stats: Compute missing normalisation statistics over the training split (one streaming pass).
        options: Passed to the reader (e.g. channel_names for arrays).
    """
    if isinstance(spec, dict):
        spec = dict(spec)
        path = spec.pop("path")
        return open_source(
            path, layout=spec.pop("layout", layout), fill_stats=spec.pop("fill_stats", fill_stats), **spec, **options
        )
    text = str(spec)
    if layout is None and ":" in text and not Path(text).exists():
        prefix, rest = text.split(":", 1)
        if prefix in LAYOUTS or prefix in ("well", "hub", "arrays", "scot"):
            layout, text = prefix, rest
    path = Path(text)
    if layout is None:
        suffix = path.suffix.lower()
        layout = "arrays" if suffix in (".npy", ".npz") else "scot"
    if layout in LAYOUTS:
        source = PoseidonSource(path, layout, **options)
    elif layout == "scot":
        source = H5Source(path, **options)
    elif layout == "arrays":
        source = ArraySource(path, **options)
    elif layout == "well":
        from .well import WellSource

        source = WellSource(path, **options)
    elif layout == "hub":
        from .hub import HubDatasetSource

        options.setdefault("split", "all")  # one source with train/val/test ranges, like every other reader
        source = HubDatasetSource(text, **options)
    else:
        known = ", ".join(["scot", "arrays", "well", "hub", *sorted(LAYOUTS)])
        raise DataError(f"unknown layout {layout!r} for {text}; known: {known}")
    if fill_stats:
        _fill_stats(source)
    return source


def _fill_stats(source: TrajectorySource) -> None:
    info = source.info
    missing_state = info.mean is None or info.std is None
    missing_static = bool(info.static_names) and (info.static_mean is None or info.static_std is None)
    if not (missing_state or missing_static):
        return
    stats = compute_stats(source, "train")
    if missing_state:
        info.mean, info.std = stats["mean"], stats["std"]
    if missing_static:
        info.static_mean, info.static_std = stats["static_mean"], stats["static_std"]
    info.provenance = {**info.provenance, "stats": "computed over the training split by foundation.data"}
