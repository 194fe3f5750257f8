"""PDE trajectory data: sources, the all2all pair index and sampler, mixtures, statistics.

`open_source(spec)` opens any supported source:

- `"path/to/file.h5"`: our HDF5 schema (what `foundation.pdes` writes), or The Well / PDEBench recognised by keys;
- `"CE-RP:path/to/CE-RP.nc"` (or `layout="CE-RP"`): a published Poseidon file in its layout;
- `"well:path"`: The Well (a file or a dataset folder);
- `"pdebench:path/to/2D_CFD_....hdf5"`: a PDEBench 2-D file (CFD, incompressible NS, diffusion-reaction, shallow
  water, Darcy), its layout detected by its keys;
- `"path/to/fields.npy"` / `.npz`: plain arrays [N, T, C, H, W];
- `"hub:org/name"` or `"hub:path/to/folder"`: a Hugging Face dataset (local folder or Hub repo id).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py

from .arrays import ArraySource
from .hdf5 import H5Source, H5TrajectoryWriter
from .mixture import Mixture
from .pairs import All2AllPairs, RandomPairSampler
from .pdebench import PDEBenchSource, detect_layout
from .poseidon import LAYOUTS, PoseidonSource
from .source import DataError, SourceInfo, TrajectorySource, default_splits
from .stats import compute_stats

OTHER_LAYOUTS = ("scot", "arrays", "well", "hub", "pdebench")  # spec prefixes besides the Poseidon layout names

__all__ = [
    "All2AllPairs",
    "ArraySource",
    "DataError",
    "H5Source",
    "H5TrajectoryWriter",
    "LAYOUTS",
    "Mixture",
    "PDEBenchSource",
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
        layout: A Poseidon layout name, The Well ("well"), arrays ("arrays"), a Hub dataset ("hub"), PDEBench
            ("pdebench"), or our schema ("scot"); inferred from the spec when omitted (an .h5/.hdf5 file by its keys).
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
        if prefix in LAYOUTS or prefix in OTHER_LAYOUTS:
            layout, text = prefix, rest
    path = Path(text)
    if layout is None:
        suffix = path.suffix.lower()
        if suffix in (".npy", ".npz"):
            layout = "arrays"
        elif suffix in (".h5", ".hdf5") and path.is_file():
            layout = _hdf5_layout(path)
        else:
            layout = "scot"
    if layout in LAYOUTS:
        source = PoseidonSource(path, layout, **options)
    elif layout == "scot":
        source = H5Source(path, **options)
    elif layout == "arrays":
        source = ArraySource(path, **options)
    elif layout == "pdebench":
        source = PDEBenchSource(path, **options)
    elif layout == "well":
        from .well import WellSource

        source = WellSource(path, **options)
    elif layout == "hub":
        from .hub import HubDatasetSource

        options.setdefault("split", "all")  # one source with train/val/test ranges, like every other reader
        source = HubDatasetSource(text, **options)
    else:
        known = ", ".join([*OTHER_LAYOUTS, *sorted(LAYOUTS)])
        raise DataError(f"unknown layout {layout!r} for {text}; known: {known}")
    if fill_stats:
        _fill_stats(source)
    return source


def _hdf5_layout(path: Path) -> str:
    """Our schema or PDEBench, told apart by the root keys of an .h5/.hdf5 file (names are no guide: PDEBench's
    `ns_incom_*.h5` and our files share the suffix)."""
    try:
        with h5py.File(path, "r") as file:
            keys = set(file.keys())
            if keys & {"fields", "times"}:
                return "scot"  # ours (a damaged one gets H5Source's specific message)
            if keys & {"t0_fields", "t1_fields"}:
                return "well"  # The Well's files group their fields by tensor order
            if detect_layout(file) is not None:
                return "pdebench"
    except OSError as error:
        raise DataError(f"{path}: not a readable HDF5 file ({error})") from None
    raise DataError(
        f"{path}: neither our HDF5 schema (root datasets 'fields' and 'times'), The Well, nor a known PDEBench 2-D "
        f"layout; "
        f"root keys: {sorted(keys)[:12]}"
    )


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
