"""Trajectories per second of every built-in PDE family, printed as JSON.

    python benchmarks/solver_throughput.py                              # all families, 64 and 128, CPU
    python benchmarks/solver_throughput.py --families ns-sines ce-rp --resolutions 64 --device cuda

Each family simulates one batch of trajectories with its default parameters and 21 snapshots (1 for steady
problems) in float64, as `python -m foundation.pdes generate` does; file writing is not included.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from foundation.pdes import FAMILIES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=sorted(FAMILIES))
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--snapshots", type=int, default=21)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for family_id in args.families:
        family = FAMILIES[family_id]
        for resolution in args.resolutions:
            snapshots = 1 if family.steady else args.snapshots
            generator = torch.Generator().manual_seed(0)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            try:
                out = family.simulate(args.batch, resolution, snapshots, generator, args.device, **family.params)
            except Exception as error:  # report and go on: one family must not hide the others' figures
                results.append({"family": family_id, "resolution": resolution, "error": str(error)})
                continue
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            results.append(
                {
                    "family": family_id,
                    "resolution": resolution,
                    "batch": args.batch,
                    "snapshots": snapshots,
                    "seconds": round(seconds, 3),
                    "trajectories_per_s": round(args.batch / seconds, 3),
                    "steps": out.settings.get("steps"),
                }
            )
            print(json.dumps(results[-1]), flush=True, file=sys.stderr)
    print(
        json.dumps(
            {
                "benchmark": "solver_throughput",
                "device": args.device,
                "threads": torch.get_num_threads(),
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
