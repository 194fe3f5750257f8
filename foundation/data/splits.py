"""Splits a run needs, checked before it starts: one line naming the source, the empty split and what to pass.

A split that is missing or empty otherwise surfaces late: an empty evaluation split ends a fine-tune after all its
training steps (The Well's downloads often hold train and valid only), an empty validation split as a bare
"split 'val' is empty" from deep inside the data pipeline. `require_splits` refuses such a run up front.

    require_splits(data_args.datasets, {"train", "val", finetune_args.eval_split}, {finetune_args.eval_split:
                   "--eval_split"})
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .source import SPLITS, DataError, TrajectorySource

# What each split is for in a run, said in the refusal so the user sees why an empty one matters.
PURPOSE = {"train": "training", "val": "validation during training", "test": "the held-out evaluation"}
# The Well's folder of each split (foundation.data.well.SPLIT_FOLDERS), for "download data/<folder>/" advice.
WELL_FOLDERS = {"train": "train", "val": "valid", "test": "test"}

Spec = TrajectorySource | str | os.PathLike | dict


def split_sizes(source: TrajectorySource) -> dict[str, int]:
    """Trajectories per split of `source` (train, val, test first, then any others), 0 for a missing one."""
    sizes = {s: 0 for s in SPLITS}
    for name, (start, stop) in source.info.splits.items():
        sizes[name] = max(0, stop - start)
    return sizes


def _remedy(source: TrajectorySource, split: str, flag: str | None, sizes: dict[str, int]) -> str:
    """What to pass instead: another non-empty held-out split for the flag that chose this one, and how to give
    the source the split (which depends on where it comes from)."""
    options = []
    if flag is not None:
        # Only held-out splits are offered: evaluating on the training split would measure memorisation.
        others = [s for s in SPLITS if s not in (split, "train") and sizes.get(s, 0) > 0]
        if others:
            options.append(f"pass {flag} {others[0]}")
    provenance = source.info.provenance or {}
    if provenance.get("format") == "the_well":
        folder = WELL_FOLDERS.get(split, split)
        options.append(
            f"add The Well's data/{folder}/ files beside data/train/ (or pass split_files with a {split!r} entry)"
        )
    elif provenance.get("format") == "pdebench":
        options.append("pass a PDEBench file or folder of at least 3 trajectories (80/10/10 holds some out)")
    else:
        options.append(f"give the source a non-empty {split!r} range in its splits")
    return "; or ".join(options)


def check_splits(source: TrajectorySource, splits: Iterable[str], flags: Mapping[str, str] | None = None) -> None:
    """Refuse `source` when any of `splits` is missing or empty (see `require_splits`)."""
    flags = dict(flags or {})
    wanted = set(splits)
    sizes = split_sizes(source)
    for split in [s for s in SPLITS if s in wanted] + sorted(wanted - set(SPLITS)):  # stable, readable order
        if sizes.get(split, 0) > 0:
            continue
        flag = flags.get(split)
        use = f"{flag} {split} ({PURPOSE.get(split, 'this run')})" if flag else PURPOSE.get(split, "this run")
        shown = ", ".join(f"{s} {n}" for s, n in sizes.items())
        raise DataError(
            f"{source.info.name}: the {split!r} split is empty (trajectories: {shown}) and {use} needs it; "
            f"{_remedy(source, split, flag, sizes)}"
        )


def require_splits(
    sources: Sequence[Spec] | Spec, splits: Iterable[str], flags: Mapping[str, str] | None = None
) -> None:
    """Refuse a run before it starts when a source lacks a split it will use.

    Args:
        sources: Opened sources, or specs as `foundation.data.open_source` takes them (opened for their metadata
            only, then closed: no statistics are computed, no field is read).
        splits: The splits the run uses, e.g. {"train", "val", eval_split}.
        flags: The option that chose a split, e.g. {"test": "--eval_split"}: the refusal then offers another
            held-out split for that option.

    Raises:
        DataError: One line naming the source, the empty split, what needs it and what to pass instead.
    """
    if isinstance(sources, (TrajectorySource, str, os.PathLike, dict)):
        sources = [sources]
    splits = list(splits)
    for spec in sources:
        if isinstance(spec, TrajectorySource):
            check_splits(spec, splits, flags)
            continue
        from . import open_source  # here: foundation.data imports this module's siblings at start-up

        source: Any = open_source(spec)
        try:
            check_splits(source, splits, flags)
        finally:
            source.close()
