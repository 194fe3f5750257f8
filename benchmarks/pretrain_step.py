"""Pretraining throughput: samples/s and MFU estimate per process, 1 vs 2 processes, printed as JSON.

Generates a small Navier-Stokes corpus at each model's grid with the built-in solver, then runs
`python -m pretrain` for a few steps in one process and under `accelerate launch` with two processes
(plain DDP and DeepSpeed ZeRO-2 over gloo on the CPU; NCCL on GPUs). The trainer measures its own
throughput after two warm-up steps and its MFU over a matmul peak measured in the same process.

    python benchmarks/pretrain_step.py [--sizes tiny T] [--steps 10]
    python benchmarks/pretrain_step.py --compare HEAD~3 --setups "1 process" --repeats 3

`--compare REV` also runs every configuration from a git worktree of REV (same corpus, same Python), the two
commits interleaved (ours, theirs, ours, theirs, ...) so that a noisy shared machine affects both alike, and
prints the median ratio ours / REV of samples/s per configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
GRIDS = {"tiny": 32, "T": 128, "B": 128, "L": 128}
SETUPS = {
    "1 process": [],
    "2 processes DDP": ["--config_file", str(ROOT / "launch/accelerate/cpu-2proc-ddp.yaml")],
    "2 processes ZeRO-2": ["--config_file", str(ROOT / "launch/accelerate/cpu-2proc-zero2.yaml")],
}


def run(
    size: str, setup: str, corpus: Path, out: Path, steps: int, batch: int, precision: str, root: Path = ROOT
) -> dict:
    argv = [
        "-m",
        "pretrain",
        "--preset",
        size,
        "--datasets",
        str(corpus),
        "--output_dir",
        str(out),
        "--max_steps",
        str(steps),
        "--batch_size",
        str(batch),
        "--save_every",
        "0",
        "--eval_every",
        "0",
        "--eval_pairs",
        "4",
        "--tracker",
        "none",
        "--resume",
        "false",
        "--precision",
        precision,
    ]
    launcher = SETUPS[setup]
    cmd = [sys.executable] + (["-m", "accelerate.commands.launch", *launcher] if launcher else []) + argv
    threads = "1" if launcher else str(os.cpu_count() or 1)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu")}
    env["PYTHONPATH"] = str(root)  # the commit under test (the installed package is this checkout)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env=env)
    if proc.returncode != 0:
        return {"size": size, "setup": setup, "error": proc.stderr.strip().splitlines()[-1]}
    result = json.loads((out / "result.json").read_text())
    keys = ("samples_per_s_per_process", "mfu", "train_gflop_per_sample", "peak_tflops", "peak_source", "processes")
    return {
        "size": size,
        "setup": setup,
        "batch_per_process": batch,
        "threads_per_process": int(threads),
        **{k: result.get(k) for k in keys},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "T"])
    parser.add_argument("--setups", nargs="+", default=list(SETUPS))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--compare", metavar="REV", help="also run a git worktree of REV, interleaved")
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration (and commit)")
    args = parser.parse_args()
    from foundation.pdes import generate

    results, ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        roots = {"ours": ROOT}
        if args.compare:
            theirs = Path(tmp) / "theirs"
            add = ["git", "worktree", "add", "--detach", str(theirs), args.compare]
            subprocess.run(add, cwd=ROOT, check=True, capture_output=True)  # stdout holds only the JSON
            roots[args.compare] = theirs
        try:
            for size in args.sizes:
                corpus = generate(
                    "ns-sines", 6, GRIDS[size], Path(tmp) / f"ns-{size}.h5", snapshots=3, batch=6, progress=False
                )
                for setup in args.setups:
                    rates: dict[str, list[float]] = {name: [] for name in roots}
                    for repeat in range(args.repeats):
                        for name, root in roots.items():  # interleaved: both commits see the same machine
                            out = Path(tmp) / f"run-{size}-{len(results)}"
                            row = run(size, setup, corpus, out, args.steps, args.batch, args.precision, root)
                            results.append({"commit": name, "repeat": repeat, **row})
                            rates[name].append(row.get("samples_per_s_per_process") or float("nan"))
                            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
                    if args.compare:
                        ours, theirs_rate = (statistics.median(rates[n]) for n in roots)
                        ratios.append(
                            {
                                "size": size,
                                "setup": setup,
                                "ours_samples_per_s": ours,
                                f"{args.compare}_samples_per_s": theirs_rate,
                                "ratio": ours / theirs_rate,
                            }
                        )
        finally:
            if args.compare:
                remove = ["git", "worktree", "remove", "--force", str(theirs)]
                subprocess.run(remove, cwd=ROOT, check=False, capture_output=True)
    report = {
        "benchmark": "pretrain_step",
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "steps": args.steps,
        "precision": args.precision,
        "results": results,
    }
    if args.compare:
        report["compare"] = {"against": args.compare, "repeats": args.repeats, "ratios": ratios}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
