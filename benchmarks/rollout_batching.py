"""Evaluation rollouts one trajectory at a time vs batched: seconds of `foundation.evaluation.rollout` (direct vs
autoregressive, every evaluation) and `horizon` (past the window), printed as JSON.

    python benchmarks/rollout_batching.py --model runs/horizon/ac216-all2all/model \
        --datasets runs/horizon/data/allen-cahn-n216-r64-s21-seed24-val8-test16-eps0.04-t_end2.0.h5 --max_snapshots 11

`batch_size` 1 is the one-call-per-trajectory loop these functions ran before; both settings alternate in one run
(best of `--repeats`), so the ratio is side by side. `max_rel_diff` checks that batching changed no error.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="Model folder (anything finetune.load_model reads).")
    parser.add_argument("--datasets", nargs="+", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--trajectories", type=int, default=16)
    parser.add_argument("--max_snapshots", type=int, default=None, help="For rollout(): the training window.")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch

    from finetune import load_model
    from foundation.data import open_source
    from foundation.evaluation import held_out_pairs, horizon, rollout

    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    sources = [open_source(spec, fill_stats=True) for spec in args.datasets]
    data = held_out_pairs(model.config, sources, args.split, max_snapshots=args.max_snapshots)
    runs = {
        "rollout": lambda b: rollout(model, data, args.trajectories, "physical", batch_size=b),
        "horizon": lambda b: horizon(model, sources, args.split, trajectories=args.trajectories, batch_size=b),
    }

    def numbers(result) -> list[float]:  # every error in a result, in a fixed order
        if isinstance(result, dict):
            return [x for key in sorted(result) for x in numbers(result[key])]
        if isinstance(result, list):
            return [x for item in result for x in numbers(item)]
        return [float(result)] if isinstance(result, float) else []

    out = {"trajectories": args.trajectories, "threads": args.threads}
    for name, run in runs.items():
        seconds, results = {1: [], args.batch_size: []}, {}
        for _ in range(args.repeats):
            for batch in seconds:
                start = time.perf_counter()
                results[batch] = run(batch)
                seconds[batch].append(time.perf_counter() - start)
        pairs = zip(numbers(results[1]), numbers(results[args.batch_size]))
        out[name] = {
            "seconds_batch_1": min(seconds[1]),
            f"seconds_batch_{args.batch_size}": min(seconds[args.batch_size]),
            "speedup": min(seconds[1]) / min(seconds[args.batch_size]),
            "max_rel_diff": max(abs(a - b) / max(abs(a), 1e-12) for a, b in pairs),
        }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
