"""All2all pairs per second through a DataLoader from an HDF5 source (our schema), printed as JSON.

Writes a corpus of 4 x 128 x 128 float32 snapshots (one chunk per snapshot, as the solvers write), reads it
once to warm the page cache, then times a DataLoader over `All2AllPairs` with `RandomPairSampler` at 0 and
2 workers. A pair is two snapshot reads, normalisation and collation into a batch.

    python benchmarks/data_throughput.py [--trajectories 24] [--pairs 6000] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from foundation.data import All2AllPairs, H5TrajectoryWriter, RandomPairSampler, open_source
from foundation.data.memory import keep_freed_memory

TARGET_PAIRS_PER_S = 3000


def write_corpus(path: Path, trajectories: int, snapshots: int, resolution: int) -> None:
    rng = np.random.default_rng(0)
    with H5TrajectoryWriter(
        path,
        n=trajectories,
        times=np.linspace(0, 1, snapshots),
        channel_names=["rho", "u", "v", "p"],
        grid=(resolution, resolution),
    ) as out:
        for i in range(trajectories):
            out.write(i, rng.standard_normal((snapshots, 4, resolution, resolution), dtype=np.float32))


def measure(pairs: All2AllPairs, workers: int, batch: int, count: int) -> dict:
    sampler = RandomPairSampler(len(pairs), seed=0)
    loader = DataLoader(
        pairs,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers else None,
    )
    seen, start, k = 0, None, 0
    while start is None or seen < count:  # as many epochs as it takes
        for batch_ in loader:
            if k == 2:  # skip worker start-up and the first batches
                start, seen = time.perf_counter(), 0
            k += 1
            seen += batch_["labels"].shape[0]
            if start is not None and seen >= count:
                break
    elapsed = time.perf_counter() - start
    return {"workers": workers, "pairs": seen, "seconds": round(elapsed, 3), "pairs_per_s": round(seen / elapsed, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trajectories", type=int, default=24)
    parser.add_argument("--snapshots", type=int, default=11)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--pairs", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--dir", type=Path, default=None, help="where to write the corpus (default: a temp dir)")
    parser.add_argument("--default-malloc", action="store_true", help="leave glibc's thresholds as they are")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tuned = False if args.default_malloc else keep_freed_memory()  # as the trainer does
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "corpus.h5"
        write_corpus(path, args.trajectories, args.snapshots, args.resolution)
        source = open_source(path)
        pairs = All2AllPairs(source, "train")
        for i in source.split("train"):  # warm page cache
            for s in range(source.num_snapshots):
                source.read(i, s)
        results = [measure(pairs, w, args.batch, args.pairs) for w in args.workers]
        size_mb = path.stat().st_size / 2**20
    print(
        json.dumps(
            {
                "benchmark": "data_throughput",
                "sample_shape": [4, args.resolution, args.resolution],
                "corpus_mb": round(size_mb, 1),
                "pairs_in_index": len(pairs),
                "batch": args.batch,
                "malloc_keeps_freed_memory": tuned,
                "results": results,
                "target_pairs_per_s": TARGET_PAIRS_PER_S,
                "meets_target": {str(r["workers"]): r["pairs_per_s"] >= TARGET_PAIRS_PER_S for r in results},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
