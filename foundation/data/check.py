"""Integrity check of a trajectory source: every snapshot and every static field scanned for NaN/Inf.

`inspect` reads only metadata and a training run reads only the snapshots it samples, so one corrupt snapshot of
a published dataset passes both and surfaces later, as a `DataError` hours into a run or as a skewed validation
metric. `scan` reads everything once, with `check=False`, and counts the non-finite values itself so that it
reports every bad place rather than stopping at the first.

Example:
    >>> with open_source("ns.h5") as source:
    ...     for problem in scan(source, splits=["val"]):
    ...         print(problem)
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .source import SPLITS, DataError, TrajectorySource

STATIC = "static"  # the `snapshot` of a problem in the static fields
NO_SPLIT = "no split"  # how text output names trajectories outside every split (None in the data and JSON)


@dataclass(frozen=True)
class Problem:
    """One bad place: non-finite values in one channel of one snapshot (or static field) of one trajectory.

    Args:
        split: Split holding the trajectory ("train", "val", "test"; "a+b" where splits overlap), None when the
            trajectory lies outside every split.
        trajectory: Trajectory index in the source.
        snapshot: Snapshot index, or "static" for the static fields.
        channel: Channel name (a static field name when `snapshot` is "static"); None when the read itself failed.
        nan: Number of NaN values.
        inf: Number of +Inf and -Inf values.
        error: Why the snapshot could not be read (e.g. a chunk that fails to decompress), else None.
    """

    split: str | None
    trajectory: int
    snapshot: int | str
    channel: str | None
    nan: int = 0
    inf: int = 0
    error: str | None = None


Splits = Sequence[str] | Mapping[str, Sequence[int]] | None  # split names, or the trajectories read per split


def plan(source: TrajectorySource, splits: Splits = None) -> list[tuple[int, str | None]]:
    """(trajectory, split) pairs in index order (sequential reads): every trajectory of the chosen splits, or,
    with `splits=None`, every trajectory of the source, those outside every split with split None. A mapping
    {split: trajectory indices} names the trajectories of each split to read (a run that uses only some)."""
    if splits is None:
        ranges = {name: range(*bounds) for name, bounds in source.info.splits.items()}
        labels: dict[int, str | None] = dict.fromkeys(range(source.num_trajectories))
    elif isinstance(splits, Mapping):
        ranges, labels = {name: list(indices) for name, indices in splits.items()}, {}
    else:
        ranges = {name: source.split(name) for name in splits}  # an unknown or empty split is a DataError
        labels = {}
    for name, indices in ranges.items():
        for index in indices:
            # overlapping splits (some published layouts) are read once and named after all of them
            labels[index] = name if labels.get(index) is None else f"{labels[index]}+{name}"
    return sorted(labels.items())


def scan(
    source: TrajectorySource, splits: Splits = None, progress: bool = True, snapshots: Sequence[int] | None = None
) -> list[Problem]:
    """Every NaN/Inf place in the chosen splits (all trajectories when None), in trajectory order.

    One read per snapshot and one per trajectory's static fields; per-channel counts are computed only for the
    rare snapshot that is not all finite. A snapshot that cannot be read at all is reported with its error and the
    scan goes on.

    Args:
        source: The trajectories.
        splits: Split names, or {split: trajectory indices} (`plan`); None: every trajectory.
        progress: A progress bar on stderr.
        snapshots: Only these snapshot indices (a training run's stride and limit); None: every stored one.
    """
    todo = plan(source, splits)
    channels, statics = source.info.channel_names, source.info.static_names
    read = list(range(source.num_snapshots) if snapshots is None else snapshots)
    problems: list[Problem] = []
    bar = tqdm(
        total=len(todo) * (len(read) + bool(statics)),
        desc=f"check {Path(source.info.name).name}",
        unit="snap",
        file=sys.stderr,
        disable=not progress,
    )
    with bar:
        for index, split in todo:
            places = [(s, channels) for s in read] + ([(STATIC, statics)] if statics else [])
            for snapshot, names in places:
                try:
                    if snapshot == STATIC:
                        values = source.read_static(index, check=False)
                    else:
                        values = source.read(index, snapshot, check=False)
                except (DataError, OSError) as error:  # a corrupt chunk: report it, keep scanning the rest
                    problems.append(Problem(split, index, snapshot, None, error=f"{type(error).__name__}: {error}"))
                else:
                    problems.extend(_count(values, names, split, index, snapshot))
                bar.update()
            if problems and progress:
                bar.set_postfix(bad=len(problems), refresh=False)
    return problems


def _count(values: np.ndarray, names: list[str], split: str | None, index: int, snapshot: int | str) -> list[Problem]:
    if np.isfinite(values).all():  # the common case: one pass over the array, no per-channel work
        return []
    flat = values.reshape(len(values), -1)
    nan, inf = np.isnan(flat).sum(axis=1), np.isinf(flat).sum(axis=1)
    return [Problem(split, index, snapshot, names[c], int(nan[c]), int(inf[c])) for c in np.flatnonzero(nan + inf)]


# ------------------------------------------------------------------------------------------ reporting
def table(problems: list[Problem]) -> list[str]:
    """Aligned text lines, a header and one line per problem (none when there is none)."""
    if not problems:
        return []
    header = ("split", "trajectory", "snapshot", "channel", "nan", "inf")
    rows = [
        (
            p.split or NO_SPLIT,
            str(p.trajectory),
            str(p.snapshot),
            p.channel or "-",
            str(p.nan) if p.error is None else "-",
            str(p.inf) if p.error is None else f"-  unreadable: {p.error}",
        )
        for p in problems
    ]
    widths = [max(len(h), *(len(r[k]) for r in rows)) for k, h in enumerate(header[:-1])]
    right = (False, True, True, False, True)  # numbers right-aligned
    lines = []
    for row in (header, *rows):
        cells = [cell.rjust(w) if r else cell.ljust(w) for cell, w, r in zip(row, widths, right)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return lines


def summary(source: TrajectorySource, problems: list[Problem], splits: list[str] | None = None) -> str:
    """The final line: what was scanned and found."""
    name = source.info.name
    if not problems:
        n = len(plan(source, splits))
        scope = f" ({', '.join(splits)})" if splits else ""
        statics = " + static fields" if source.info.static_names else ""
        return (
            f"check: OK, {_plural(n, 'trajectory', 'trajectories')}{scope} x "
            f"{_plural(source.num_snapshots, 'snapshot')}{statics}, no NaN/Inf in {name}"
        )
    places = {(p.trajectory, p.snapshot) for p in problems}  # static fields count as one more snapshot
    static = sum(1 for _, s in places if s == STATIC)
    unreadable = len({(p.trajectory, p.snapshot) for p in problems if p.error is not None})
    trajectories = {p.trajectory: p.split for p in problems}
    per_split = Counter(trajectories.values())
    others = sorted(s for s in per_split if s is not None and s not in SPLITS)  # overlaps ("train+val")
    order = [s for s in SPLITS if s in per_split] + others + ([None] if None in per_split else [])
    parts = [f"{count} {what}" for count, what in ((static, "static"), (unreadable, "unreadable")) if count]
    counts = ", ".join(f"{s or NO_SPLIT} {per_split[s]}" for s in order)
    detail = f" ({', '.join(parts)})" if parts else ""
    return (
        f"check: {_plural(len(places), 'bad snapshot')}{detail} in "
        f"{_plural(len(trajectories), 'trajectory', 'trajectories')} ({counts}) of {name}"
    )


def report(source: TrajectorySource, problems: list[Problem], splits: list[str] | None = None) -> dict[str, Any]:
    """What `--json` writes: the scope of the scan and the list of problems."""
    return {
        "source": source.info.name,
        "splits": list(splits) if splits else None,
        "trajectories": len(plan(source, splits)),
        "snapshots": source.num_snapshots,
        "channel_names": list(source.info.channel_names),
        "static_names": list(source.info.static_names),
        "ok": not problems,
        "problems": [asdict(p) for p in problems],
    }


def places(problems: list[Problem]) -> dict[tuple[int, int | str], list[Problem]]:
    """The problems grouped by bad place (trajectory, snapshot or "static"), in scan order."""
    out: dict[tuple[int, int | str], list[Problem]] = {}
    for p in problems:
        out.setdefault((p.trajectory, p.snapshot), []).append(p)
    return out


def where(found: list[Problem]) -> str:
    """One bad place in words: `split train, trajectory 1, snapshot 2, field u (1 Inf)`, from its problems."""
    first = found[0]
    snapshot = "static fields" if first.snapshot == STATIC else f"snapshot {first.snapshot}"
    head = f"split {first.split or NO_SPLIT}, trajectory {first.trajectory}, {snapshot}"
    if first.error is not None:
        return f"{head} cannot be read ({first.error})"
    counts = []
    for p in found:
        values = ", ".join(f"{n} {kind}" for n, kind in ((p.nan, "NaN"), (p.inf, "Inf")) if n)
        counts.append(f"{p.channel} ({values})")
    return f"{head}, field{'s' if len(counts) > 1 else ''} {', '.join(counts)}"


def refusal(source: TrajectorySource, problems: list[Problem], remedy: str) -> str:
    """The one-line refusal of a run's data: the file, the first bad place, how many more there are (per split),
    and `remedy` (what the user can do)."""
    grouped = places(problems)
    first, *rest = grouped.values()
    more = ""
    if rest:
        per_split = Counter(found[0].split or NO_SPLIT for found in rest)
        more = f", and {_plural(len(rest), 'more bad place')} ({', '.join(f'{s} {n}' for s, n in per_split.items())})"
    return f"{source.info.name}: NaN/Inf in {where(first)}{more}; {remedy}"


def write_report(path: str | os.PathLike, report: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(report, indent=2) + "\n")


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"
