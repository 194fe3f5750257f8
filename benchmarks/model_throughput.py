"""Forward and forward+backward throughput and peak memory of scOT, printed as JSON.

Each configuration (size x dtype x eager/compiled x attention path) runs in a fresh subprocess, so that
its peak memory is its own and compiled graphs do not leak between runs. Ratios compare runs of the same
invocation (the machines are shared and noisy: absolute seconds move between runs, ratios much less).

    python benchmarks/model_throughput.py                       # tiny and T, fp32 and bf16, eager and compiled
    python benchmarks/model_throughput.py --sizes T --no-compile --repeats 10

"naive" is the same model with materialised attention logits and window geometry rebuilt on every call.
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

# Measured on these 2-core machines with the reference implementation (shared/reference/environment.md);
# quoted for context, not measured by this script.
REFERENCE_T_FWD_BWD_FP32_CPU_S = 0.83


def _worker(spec: dict) -> dict:
    import torch

    from foundation import ScOT, ScOTConfig

    torch.manual_seed(0)
    device = torch.device(spec["device"])
    if device.type == "cpu":
        torch.set_num_threads(spec["threads"])
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[spec["dtype"]]
    overrides = {"input_resampling": "none"} if spec["size"] == "tiny" else {}
    model = ScOT(ScOTConfig.from_preset(spec["size"], **overrides)).to(device=device, dtype=dtype)
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
            ratios[f"{key}_speedup_vs_naive_fwd"] = round(naive["forward_s"] / r["forward_s"], 3)
        fp32 = find(r["size"], "fp32", False, "ours")
        if fp32 and r is not fp32 and not fp32.get("error"):
            ratios[f"{key}_speedup_vs_fp32_eager_fwd_bwd"] = round(
                fp32["forward_backward_s"] / r["forward_backward_s"], 3
            )
        if r["size"] == "T" and r["device"] == "cpu" and r["batch"] == 4 and r["resolution"] == 128:
            ratios[f"{key}_speedup_vs_reference_figure"] = round(
                REFERENCE_T_FWD_BWD_FP32_CPU_S / r["forward_backward_s"], 3
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
    for spec in _configs(args):
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
                "ratios": _ratios(results),
                "reference_T_fwd_bwd_fp32_cpu_s": REFERENCE_T_FWD_BWD_FP32_CPU_S,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
