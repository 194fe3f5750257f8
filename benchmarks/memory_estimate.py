"""The will-it-fit estimate (`python -m pretrain.estimate`) against a real 2-process DeepSpeed ZeRO-2 run on CPU.

    python benchmarks/memory_estimate.py                   # tiny (32^2) and T (128^2), micro-batch 4, fp32
    python benchmarks/memory_estimate.py --sizes tiny --steps 2

Per size: a small NS-Sines file at the model's grid (the built-in solver), then `python -m pretrain` under
`accelerate launch --config_file launch/accelerate/cpu-2proc-zero2.yaml` for a few steps, each rank recording its
resident memory just before the run is built and its peak (VmHWM) after the steps; the increase is what the
estimate predicts per rank (model states, the buckets ZeRO writes, activations at the micro-batch). On CPU, ZeRO's
gradient buckets are allocated but only the pages written count in RSS (at most the parameters' worth per
buffer), so the CPU prediction counts those; on a GPU the whole allocation counts. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZES = {"tiny": 32, "T": 128}
MIB = 2**20


def _status_kib(field: str) -> int:
    """A VmRSS / VmHWM line of /proc/self/status, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def worker(out: Path, argv: list[str]) -> int:
    """One rank: the RSS before the run is built, the peak after its steps (written by every rank)."""
    import deepspeed  # noqa: F401  (the libraries' own code and import-time state are not the run's memory)

    from pretrain.__main__ import main

    before = _status_kib("VmRSS")
    rank = int(os.environ.get("RANK", "0"))
    peaks = []
    code = main(argv, callbacks=[lambda state: peaks.append(_status_kib("VmHWM"))])
    (out / f"rank{rank}.json").write_text(json.dumps({"rss_before_kib": before, "peak_kib_by_step": peaks}))
    return code


def measure(size: str, steps: int, batch: int, tmp: Path) -> dict:
    from pretrain.estimate import EstimateArguments, estimate

    resolution = SIZES[size]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO)}
    data = tmp / f"ns-sines-{resolution}.h5"
    generate = ["-m", "foundation.pdes", "generate", "--pde", "ns-sines", "--n", "8", "--snapshots", "3"]
    generate += ["--resolution", str(resolution), "--out", str(data), "--no-progress"]
    subprocess.run([sys.executable, *generate], check=True, env=env, cwd=REPO, capture_output=True)
    out = tmp / size
    out.mkdir()
    run = ["--preset", size, "--datasets", str(data), "--channels", "u", "v", "p"]
    run += ["--max_steps", str(steps), "--batch_size", str(batch), "--eval_every", "0", "--save_every", "0"]
    run += ["--warmup_steps", "0", "--tracker", "none", "--precision", "fp32", "--output_dir", str(out / "run")]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
    launch += [str(REPO / "launch/accelerate/cpu-2proc-zero2.yaml"), __file__, "--worker", str(out), "--", *run]
    proc = subprocess.run(launch, env=env, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the 2-process run of {size} failed:\n{proc.stderr[-3000:]}")
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]
    measured = max((r["peak_kib_by_step"][-1] - r["rss_before_kib"]) * 1024 for r in ranks)
    report = estimate(
        EstimateArguments(
            preset=size,
            resolution=resolution,
            channels=3,
            precision="fp32",
            zero_stage=2,
            world_size=2,
            micro_batch=batch,
        )
    )
    gib = 2**30
    touched = 2 * min(2e8, report["parameters"]) * 4  # two fp32 buckets, pages written up to the parameters' size
    predicted_cpu = report["total_gib_at_micro_batch"] * gib - report["gradient_buckets_gib"] * gib + touched
    return {
        "size": size,
        "grid": resolution,
        "micro_batch": batch,
        "parameters": report["parameters"],
        "estimate_gpu_mib": report["total_gib_at_micro_batch"] * gib / MIB,
        "estimate_cpu_mib": predicted_cpu / MIB,
        "measured_peak_increase_mib": measured / MIB,
        "measured_over_estimate": measured / predicted_cpu,
        "estimate_parts_mib": {
            **{k: v * gib / MIB for k, v in report["per_rank_gib"].items()},
            "buckets_written": touched / MIB,
            "activations": (report["activations_fixed_gib"] + batch * report["activations_per_sample_gib"]) * gib / MIB,
        },
        "peak_mib_by_step": [[(p - r["rss_before_kib"]) * 1024 / MIB for p in r["peak_kib_by_step"]] for r in ranks],
    }


def main() -> int:
    if "--worker" in sys.argv:
        at = sys.argv.index("--worker")
        argv = [a for a in sys.argv[at + 2 :] if a != "--"]
        return worker(Path(sys.argv[at + 1]), argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4, help="micro-batch per rank")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(size, args.steps, args.batch, Path(tmp)) for size in args.sizes]
    print(json.dumps({"benchmark": "memory_estimate", "zero_stage": 2, "processes": 2, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
