"""Generate a dataset file of one PDE family, batch by batch, in the toolkit's HDF5 schema."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..data.hdf5 import H5TrajectoryWriter
from .base import PDEFamily, Trajectories, UnstableSettings


def generate(
    family_id: str,
    n: int,
    resolution: int,
    out: str | os.PathLike,
    snapshots: int | None = None,
    seed: int = 0,
    batch: int = 8,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
    splits: dict[str, tuple[int, int]] | None = None,
    batches: list[int] | None = None,
    provenance: dict[str, Any] | None = None,
    **params: Any,
) -> Path:
    """Simulate `n` trajectories of `family_id` and write them to `out`.

    Reproducible from (`seed`, `batch`): batch b draws its initial conditions from a generator seeded with
    (seed, b). The file appears only once complete (written beside it, then renamed), with the PDE
    parameters, solver settings, seed and versions in its metadata and statistics over its training split.

    Args:
        family_id: A family of `foundation.pdes.FAMILIES`.
        n: Number of trajectories.
        resolution: Grid points per axis.
        out: Output file (refused if it exists, unless `overwrite`).
        snapshots: Stored snapshots (default 21; 1 for steady families).
        seed: Base seed.
        batch: Trajectories simulated together.
        device: "cpu" or "cuda".
        overwrite: Replace an existing file once the new one is complete.
        progress: Show a progress bar.
        splits: Trajectory ranges (default 80/10/10).
        batches: Only these batches of the request, in this order (a shard of `foundation.pdes.shards`); the file
            then holds their trajectories only.
        provenance: Extra provenance entries.
        params: PDE parameters overriding the family's defaults (e.g. viscosity=1e-3); `t_end` (the stored
            span) and `t_start` (a burn-in: the solver runs from t = 0 but stores the snapshots of [t_start,
            t_start + t_end], times shifted to start at 0; a multiple of the snapshot spacing), for trajectories
            past an initial transient, e.g. a forced flow nearer its statistically steady state.
    """
    from . import get_family

    family = get_family(family_id)
    out = refuse_existing(out, overwrite)
    snapshots = (1 if family.steady else 21) if snapshots is None else snapshots
    merged, skipped, batches, sizes = _plan(family_id, family, n, batch, snapshots, batches, params)
    writer, start, first = None, time.time(), 0
    bar = tqdm(total=sum(sizes), desc=family_id, unit="traj", disable=not progress)
    try:
        for b, size in zip(batches, sizes):
            generator = torch.Generator().manual_seed(seed * 1_000_003 + b)
            result = _simulate(family, size, resolution, snapshots, generator, device, skipped, merged)
            if writer is None:  # the first batch fixes times and settings
                run = {"seed": seed, "batch": batch, "device": device}
                writer = _open_writer(
                    out, family_id, family, result, sum(sizes), resolution, merged, splits, overwrite, run, provenance
                )
            writer.write(
                slice(first, first + size),
                result.fields.numpy(),
                None if result.static is None else result.static.numpy(),
            )
            first += size
            bar.update(size)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        bar.close()
    writer.meta["provenance"]["seconds"] = round(time.time() - start, 2)
    return writer.close()


def refuse_existing(out: str | os.PathLike, overwrite: bool) -> Path:
    """`out` as a Path, refused before any work if it exists (unless `overwrite`): one rule for `generate` and
    its sharded form `foundation.pdes.shards.generate_sharded`.

    Raises:
        FileExistsError: `out` exists and `overwrite` is off.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; refusing to write over it (pass overwrite=True / --overwrite)")
    return out


def _plan(
    family_id: str,
    family: PDEFamily,
    n: int,
    batch: int,
    snapshots: int,
    batches: list[int] | None,
    params: dict[str, Any],
) -> tuple[dict[str, Any], int, list[int], list[int]]:
    """The checked request: (PDE parameters with the family's defaults, burn-in snapshots, the batches to
    simulate, their sizes); UnstableSettings naming what cannot be simulated, before anything is."""
    if n < 1 or batch < 1:
        raise UnstableSettings(f"need n >= 1 and batch >= 1, got n={n}, batch={batch}")
    unknown = set(params) - set(family.params) - {"t_end", "t_start", "dtype"}
    if unknown:
        raise UnstableSettings(f"{family_id}: unknown parameters {sorted(unknown)}; known: {sorted(family.params)}")
    merged = {**family.params, **params}
    skipped = _burn_in(family, snapshots, merged)  # snapshots simulated before the stored ones
    count = -(-n // batch)
    batches = list(range(count)) if batches is None else batches
    if not batches or any(not 0 <= b < count for b in batches):
        raise UnstableSettings(f"batches {batches} are not among the {count} batches of n={n}, batch={batch}")
    sizes = [min(batch, n - b * batch) for b in batches]  # batch b holds trajectories b * batch, ... of the request
    return merged, skipped, batches, sizes


def _open_writer(
    out: Path,
    family_id: str,
    family: PDEFamily,
    result: Trajectories,
    n: int,
    resolution: int,
    params: dict[str, Any],
    splits: dict[str, tuple[int, int]] | None,
    overwrite: bool,
    run: dict[str, Any],
    extra: dict[str, Any] | None,
) -> H5TrajectoryWriter:
    """The writer of the `n` trajectories of a request, its times and solver settings those of the first batch
    `result`; provenance: the solver and its settings, `run` (seed, batch, device), the versions, then `extra`."""
    return H5TrajectoryWriter(
        out,
        n=n,
        times=result.times,
        channel_names=list(family.channel_names),
        grid=(resolution, resolution),
        static_names=list(family.static_names),
        time_scale=float(result.times[-1] - result.times[0]) if len(result.times) > 1 else 1.0,
        splits=splits,
        steady=family.steady,
        overwrite=overwrite,
        pde={"id": family_id, **{k: v for k, v in params.items() if k != "dtype"}},
        domain=family.domain,
        provenance={
            "solver": getattr(family.simulate, "func", family.simulate).__module__,  # partials too
            "settings": result.settings,
            **run,
            "torch": torch.__version__,
            "python": platform.python_version(),
            **(extra or {}),
        },
    )


def _burn_in(family, snapshots: int, params: dict[str, Any]) -> int:
    """How many snapshots of spacing t_end / (snapshots - 1) fit in the burn-in `t_start` (0 without one);
    UnstableSettings naming it if it is negative, not such a multiple, or asked of a steady family."""
    t_start = float(params.get("t_start", 0.0))
    if t_start == 0.0:
        return 0
    if family.steady or snapshots < 2 or t_start < 0:
        raise UnstableSettings(
            f"{family.id}: t_start={t_start} needs an unsteady family, snapshots >= 2 and t_start >= 0"
        )
    spacing = float(params.get("t_end", family.t_end)) / (snapshots - 1)
    skipped = round(t_start / spacing)
    if abs(skipped * spacing - t_start) > 1e-9 * max(1.0, t_start):
        raise UnstableSettings(
            f"{family.id}: t_start={t_start} is not a multiple of the snapshot spacing {spacing:.6g} "
            "(t_end / (snapshots - 1)); the stored times would not continue the solver's grid"
        )
    return skipped


def _simulate(family, size, resolution, snapshots, generator, device, skipped: int, params: dict[str, Any]):
    """`family.simulate`, with a burn-in of `skipped` snapshots run on the same time grid and dropped."""
    params = {k: v for k, v in params.items() if k != "t_start"}  # the solvers know spans, not burn-ins
    if not skipped:
        return family.simulate(size, resolution, snapshots, generator, device, **params)
    spacing = float(params.get("t_end", family.t_end)) / (snapshots - 1)
    params["t_end"] = spacing * (snapshots - 1 + skipped)
    result = family.simulate(size, resolution, snapshots + skipped, generator, device, **params)
    result.fields = result.fields[:, skipped:].contiguous()
    result.times = result.times[skipped:] - result.times[skipped]
    result.settings = {**result.settings, "burn_in_snapshots": skipped}
    return result
