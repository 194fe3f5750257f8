"""Forward and forward+backward throughput and peak memory of scOT, printed as JSON.

Each configuration (size x dtype x eager/compiled x attention path) runs in a fresh subprocess, so that
its peak memory is its own and compiled graphs do not leak between runs. Ratios compare runs of the same
invocation (the machines are shared and noisy: absolute seconds move between runs, ratios much less).

    python benchmarks/model_throughput.py                       # tiny and T, fp32 and bf16, eager and compiled
    python benchmarks/model_throughput.py --sizes T --no-compile --repeats 10

"naive" is the same model with materialised attention logits and window geometry rebuilt on every call: the
yardstick for the default ("ours") path, always measured in the same invocation (never against a figure from
another day: a 1.5x claimed that way measured 0.82-0.93x side by side). `*_time_vs_naive_fwd_bwd` is ours / naive
(below 1 is faster).
The tiny preset runs natively at the benchmark grid (input_resampling="none"), otherwise it would resample
128x128 down to its 32x32 grid and measure little.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time


def benchmark_model(spec: dict):
    """(model, device) of a benchmark row: seeded, preset `spec["size"]` (tiny runs natively at any grid) in
    `spec["dtype"]` on `spec["device"]` (with `spec["threads"]` CPU threads). Also used by gpu_check.py."""
    import torch

    from foundation import ScOT, ScOTConfig

    torch.manual_seed(0)
    device = torch.device(spec["device"])
    if device.type == "cpu":
        torch.set_num_threads(spec["threads"])
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[spec["dtype"]]
    overrides = {"input_resampling": "none"} if spec["size"] == "tiny" else {}
    return ScOT(ScOTConfig.from_preset(spec["size"], **overrides)).to(device=device, dtype=dtype), device


def _worker(spec: dict) -> dict:
    import torch

    model, device = benchmark_model(spec)
    model.config._attn_implementation = "eager" if spec["attention"] == "naive" else "sdpa"
    res, batch = spec["resolution"], spec["batch"]
    x = torch.randn(batch, 4, res, res, device=device)
    t = torch.rand(batch, device=device)
    run = torch.compile(model) if spec["compiled"] else model

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def forward():
        with torch.no_grad():
            run(pixel_values=x, time=t)

    def forward_backward():
        for p in model.parameters():  # as a trainer's zero_grad(set_to_none=True): no accumulation into old grads
            p.grad = None
        run(pixel_values=x, time=t).output.float().square().mean().backward()

    def timed(fn) -> list[float]:
        out = []
        for _ in range(spec["repeats"]):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            out.append(time.perf_counter() - start)
        return out

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(spec["warmup"]):
        forward()
        forward_backward()
    warmup_s = time.perf_counter() - start
    fwd = timed(forward)
    fwd_bwd = timed(forward_backward)
    result = {
        **spec,
        "params": sum(p.numel() for p in model.parameters()),
        "warmup_s": round(warmup_s, 2),
        "forward_s": round(statistics.median(fwd), 4),
        "forward_backward_s": round(statistics.median(fwd_bwd), 4),
        "forward_backward_min_s": round(min(fwd_bwd), 4),
        "samples_per_s_train": round(batch / statistics.median(fwd_bwd), 2),
        "samples_per_s_inference": round(batch / statistics.median(fwd), 2),
    }
    if device.type == "cuda":
        result["peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    else:  # the process's peak resident set over what the model and inputs already held
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result["peak_memory_mb"] = round(peak - rss_before, 1)
        result["peak_rss_mb"] = round(peak, 1)
    return result


def _configs(args) -> list[dict]:
    base = dict(
        batch=args.batch,
        resolution=args.resolution,
        repeats=args.repeats,
        warmup=args.warmup,
        device=args.device,
        threads=args.threads,
    )
    out = []
    for size in args.sizes:
        for dtype in args.dtypes:
            out.append(dict(base, size=size, dtype=dtype, compiled=False, attention="ours"))
            out.append(dict(base, size=size, dtype=dtype, compiled=False, attention="naive"))
            if args.compile:
                out.append(dict(base, size=size, dtype=dtype, compiled=True, attention="ours"))
    return out


def _median_over_rounds(results: list[dict]) -> list[dict]:
    """One entry per configuration: median times over the rounds that succeeded."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        if not r.get("error"):
            groups.setdefault((r["size"], r["dtype"], r["compiled"], r["attention"]), []).append(r)
    out = []
    for runs in groups.values():
        merged = {k: v for k, v in runs[0].items() if k != "round"}
        for key in ("forward_s", "forward_backward_s", "peak_memory_mb"):
            merged[key] = round(statistics.median(r[key] for r in runs), 4)
        merged["samples_per_s_train"] = round(merged["batch"] / merged["forward_backward_s"], 2)
        merged["samples_per_s_inference"] = round(merged["batch"] / merged["forward_s"], 2)
        merged["rounds"] = len(runs)
        out.append(merged)
    return out


def _ratios(results: list[dict]) -> dict:
    def find(size, dtype, compiled, attention):
        for r in results:
            if (r["size"], r["dtype"], r["compiled"], r["attention"]) == (size, dtype, compiled, attention):
                return r
        return None

    ratios = {}
    for r in results:
        if r["attention"] != "ours" or r.get("error"):
            continue
        key = f"{r['size']}_{r['dtype']}_{'compiled' if r['compiled'] else 'eager'}"
        naive = find(r["size"], r["dtype"], False, "naive")
        if naive and not naive.get("error"):
            ratios[f"{key}_speedup_vs_naive_fwd_bwd"] = round(naive["forward_backward_s"] / r["forward_backward_s"], 3)
            ratios[f"{key}_time_vs_naive_fwd_bwd"] = round(r["forward_backward_s"] / naive["forward_backward_s"], 3)
            ratios[f"{key}_speedup_vs_naive_fwd"] = round(naive["forward_s"] / r["forward_s"], 3)
        fp32 = find(r["size"], "fp32", False, "ours")
        if fp32 and r is not fp32 and not fp32.get("error"):
            ratios[f"{key}_speedup_vs_fp32_eager_fwd_bwd"] = round(
                fp32["forward_backward_s"] / r["forward_backward_s"], 3
            )
    return ratios


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "T"])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="alternate the configurations this many times")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(_worker(json.loads(args.worker))))
        return
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    results = []
    # Rounds alternate the configurations (ours, naive, ours, naive, ...) so that a slow spell of the shared
    # machine falls on both; the ratios use the median over rounds.
    for spec in (dict(spec, round=r) for r in range(args.rounds) for spec in _configs(args)):
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True)
        if proc.returncode == 0:
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        else:
            results.append({**spec, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"})
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(
        json.dumps(
            {
                "benchmark": "model_throughput",
                "results": results,
                "medians": (medians := _median_over_rounds(results)),
                "ratios": _ratios(medians),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
