"""One `generate` request split over processes (and GPUs): each rank simulates its batches into its own shard,
then one process joins the shards into the single file that one process would have written.

    torchrun --nproc_per_node 8 -m foundation.pdes generate --pde ns-gauss --trajectories 20000 \\
        --resolution 128 --device cuda --out corpus/ns-gauss.h5     # or accelerate launch -m foundation.pdes ...
    python -m foundation.pdes generate ... --rank 1 --world_size 4 --no-merge  # plain processes, one per rank
    python -m foundation.pdes merge --out corpus/ns-gauss.h5                     # join when every shard is there

The contract of `generate` holds whatever the number of ranks: trajectory i belongs to batch i // batch, and batch
b is simulated from a generator seeded with (seed, b) alone, so rank r taking batches r, r + W, r + 2W, ... yields
the same fields as one process (bit-identical on the same device and threads). Shards live beside the target in
`.<name>.shards/`, each written atomically (complete or absent) with the request it answers; a rerun keeps the
shards that are there and simulates only the missing ones; the merge computes the statistics over the whole
training split, renames the joined file into place, and only then removes the shards.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import h5py

SHARD_FORMAT = "rank{rank:05d}-of-{world:05d}.h5"


def distributed_rank() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the launcher's environment: torchrun and accelerate launch set RANK,
    WORLD_SIZE and LOCAL_RANK; srun sets SLURM_STEP_NUM_TASKS for the tasks of a step (not for the batch script
    itself, so a plain `python` in an sbatch script is one process, not rank 0 of a world that never comes)."""
    env = os.environ
    if "WORLD_SIZE" in env:
        return int(env.get("RANK", 0)), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_STEP_NUM_TASKS" in env:
        return int(env["SLURM_PROCID"]), int(env["SLURM_STEP_NUM_TASKS"]), int(env.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def shard_folder(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(f".{out.name}.shards")


def batches_of_rank(n: int, batch: int, rank: int, world: int) -> list[int]:
    """The batches rank `rank` of `world` simulates: every world-th, from its own index."""
    return list(range(rank, -(-n // batch), world))


def _request(family_id: str, n: int, resolution: int, snapshots: int | None, seed: int, batch: int, params) -> dict:
    return {
        "pde": family_id,
        "n": n,
        "resolution": resolution,
        "snapshots": snapshots,
        "seed": seed,
        "batch": batch,
        "params": {k: repr(v) for k, v in sorted(params.items())},
    }


def _shard_request(path: Path) -> dict | None:
    with h5py.File(path, "r") as f:
        provenance = json.loads(f.attrs.get("provenance", "{}"))
    return provenance.get("shard", {}).get("request")


def generate_sharded(
    family_id: str,
    n: int,
    resolution: int,
    out: str | os.PathLike,
    rank: int,
    world_size: int,
    snapshots: int | None = None,
    seed: int = 0,
    batch: int = 8,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = True,
    merge: bool = True,
    merge_timeout: float = 3600.0,
    **params: Any,
) -> Path:
    """This rank's shard of a `generate` request; rank 0 then waits for the others' and merges (if `merge`).

    Returns the merged file on rank 0 (with `merge`), else this rank's shard. On GPUs pass device="cuda": rank r
    uses its local GPU.
    """
    from .generate import generate, refuse_existing

    out = refuse_existing(out, overwrite)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size}")
    if device == "cuda":  # its local GPU; a task bound to one GPU (srun --gpus-per-task=1) sees it as cuda:0
        import torch

        device = f"cuda:{distributed_rank()[2] % max(1, torch.cuda.device_count())}"
    request = _request(family_id, n, resolution, snapshots, seed, batch, params)
    shard = shard_folder(out) / SHARD_FORMAT.format(rank=rank, world=world_size)
    if shard.exists() and _shard_request(shard) != request:
        raise ValueError(
            f"{shard} answers another request ({_shard_request(shard)}) than this one ({request}): "
            f"delete {shard.parent} or choose another --out"
        )
    if not shard.exists():  # a finished shard of an interrupted run is kept
        generate(
            family_id,
            n,
            resolution,
            shard,
            snapshots=snapshots,
            seed=seed,
            batch=batch,
            device=device,
            progress=progress,
            batches=batches_of_rank(n, batch, rank, world_size),
            provenance={"shard": {"rank": rank, "world_size": world_size, "request": request}},
            **params,
        )
    if not merge or rank != 0:
        return shard
    deadline = time.monotonic() + merge_timeout
    while not all(p.exists() for p in _shard_paths(out, world_size)):
        if time.monotonic() > deadline:
            missing = [p.name for p in _shard_paths(out, world_size) if not p.exists()]
            raise TimeoutError(
                f"{out}: shards {missing} did not appear within {merge_timeout:.0f} s; when they are there, run "
                f"`python -m foundation.pdes merge --out {out}`"
            )
        time.sleep(1.0)
    return merge_shards(out, overwrite=overwrite)


def _shard_paths(out: Path, world: int) -> list[Path]:
    return [shard_folder(out) / SHARD_FORMAT.format(rank=r, world=world) for r in range(world)]


def merge_shards(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Join the shards of `out` into `out`: trajectories in their global order, statistics of the whole training
    split, the provenance of one process's file (plus the number of ranks). Removes the shards afterwards."""
    from ..data import DataError
    from ..data.hdf5 import H5TrajectoryWriter

    out = Path(out)
    folder = shard_folder(out)
    shards = sorted(folder.glob("rank*-of-*.h5"))
    if not shards:
        raise FileNotFoundError(f"no shards of {out} in {folder}")
    worlds = {int(p.stem.split("-of-")[1]) for p in shards}
    if len(worlds) != 1:
        raise DataError(f"{folder} holds shards of different numbers of ranks {sorted(worlds)}; delete the stale ones")
    (world,) = worlds
    missing = [p.name for p in _shard_paths(out, world) if not p.exists()]
    if missing:
        raise DataError(f"{out}: shards {missing} are missing; rerun the ranks that did not finish")
    with h5py.File(shards[0], "r") as first:
        attrs = {k: json.loads(v) for k, v in first.attrs.items()}
        times = first["times"][()]
        grid = first["fields"].shape[-2:]
    request = attrs["provenance"]["shard"]["request"]
    n, batch = request["n"], request["batch"]
    provenance = {k: v for k, v in attrs["provenance"].items() if k not in ("shard", "seconds", "created")}
    provenance["ranks"] = world
    writer = H5TrajectoryWriter(
        out,
        n=n,
        times=times,
        channel_names=attrs["channel_names"],
        grid=tuple(grid),
        static_names=attrs["static_names"],
        time_scale=attrs["time_scale"],
        steady=attrs["steady"],
        pde=attrs["pde"],
        domain=attrs["domain"],
        provenance=provenance,
        overwrite=overwrite,
    )
    seconds = 0.0
    try:
        for rank, path in enumerate(_shard_paths(out, world)):
            with h5py.File(path, "r") as shard:
                made = json.loads(shard.attrs["provenance"])
                if made.get("shard", {}).get("request") != request:
                    raise DataError(f"{path} answers another request than {shards[0]}; delete {folder} and regenerate")
                seconds = max(seconds, made.get("seconds", 0.0))
                local = 0
                for b in batches_of_rank(n, batch, rank, world):
                    first, size = b * batch, min(batch, n - b * batch)
                    static = shard["static"][local : local + size] if "static" in shard else None
                    writer.write(slice(first, first + size), shard["fields"][local : local + size], static)
                    local += size
    except BaseException:
        writer.abort()
        raise
    writer.meta["provenance"]["seconds"] = seconds  # the slowest rank's simulation time
    path = writer.close()
    for shard in shards:
        shard.unlink()
    folder.rmdir()
    return path
