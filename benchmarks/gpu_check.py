"""One prepared check of everything that has never run on a GPU, at most ~5 minutes on one card.

    python benchmarks/gpu_check.py --out gpu_check.json          # on a CUDA machine (torch >= 2.4)
    python benchmarks/gpu_check.py --cpu --out gpu_check.json    # the same parts at tiny sizes on CPU (CI)

Self-contained: it reads only files of this repository and computes its own CPU fp32 reference in the same run.
Parts, each timed and written to --out as soon as it finishes (a timeout keeps what finished; a part that fails
records its error and the next one runs):
  model     forward+backward of T and B (tiny in --cpu), bf16 and fp32 eager, bf16 compiled: samples/s and MFU
            against the bf16 (fp32) matmul peak measured in the same process;
  pretrain  30 steps of B (tiny) through `python -m pretrain` under accelerate + DeepSpeed ZeRO-2 in bf16
            (fp32 on CPU, 2 processes): samples/s, MFU and peak memory, next to `python -m pretrain.estimate`;
  parity    the same weights on CUDA vs the CPU fp32 forward: fp32 with TF32 off (<= 1e-4 relative L1) and bf16
            (<= 2e-2);
  generate  the built-in solver on the GPU vs the CPU, trajectories/s, through the sharded path.
Prints the JSON summary at the end. Dependencies on a machine without network: install the project's wheels
first (`pip install --no-index --find-links WHEELS -e .`), keeping the machine's own CUDA torch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _write(report: dict, out: Path) -> None:
    tmp = out.with_name(out.name + ".partial")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out)  # a reader (or a timeout) sees the previous complete report or this one


def _env(cpu: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if cpu:
        env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    return env


def part_model(cfg: argparse.Namespace) -> dict:
    """The throughput benchmark's worker per configuration (fresh process each), plus MFU."""
    import torch

    from foundation import ScOTConfig
    from pretrain.flops import peak_flops, train_flops_per_sample

    device = torch.device(cfg.device)
    peaks = {p: peak_flops(device, p, None)[0] for p in ("bf16", "fp32")}
    rows = []
    for size in cfg.sizes:
        overrides = {"input_resampling": "none"} if size == "tiny" else {}
        flops = train_flops_per_sample(ScOTConfig.from_preset(size, **overrides), (cfg.resolution, cfg.resolution))
        for dtype in ("bf16", "fp32"):
            # compiled: bf16 on the GPU only (compiling takes minutes per geometry on a CPU, ~1 min on a GPU)
            for compiled in (False, True) if dtype == "bf16" and not cfg.cpu else (False,):
                spec = dict(size=size, dtype=dtype, compiled=compiled, attention="ours", device=cfg.device)
                spec.update(batch=cfg.batch, resolution=cfg.resolution, repeats=3, warmup=2, threads=cfg.threads)
                cmd = [sys.executable, str(ROOT / "benchmarks/model_throughput.py"), "--worker", json.dumps(spec)]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(cfg.cpu), timeout=cfg.part_timeout)
                if proc.returncode != 0:
                    rows.append({**spec, "error": (proc.stderr.strip().splitlines() or ["failed"])[-1]})
                    continue
                row = json.loads(proc.stdout.strip().splitlines()[-1])
                row["mfu"] = round(flops * row["samples_per_s_train"] / peaks[dtype], 4)
                rows.append(row)
    return {"peak_tflops": {k: round(v / 1e12, 2) for k, v in peaks.items()}, "results": rows}


def part_pretrain(cfg: argparse.Namespace, tmp: Path) -> dict:
    """`python -m pretrain` for a few steps under DeepSpeed ZeRO-2 (1 GPU; 2 CPU processes with --cpu)."""
    from foundation.pdes import generate
    from pretrain.estimate import EstimateArguments, estimate

    data = generate("ns-sines", 16, cfg.resolution, tmp / "ns.h5", snapshots=3, progress=False, device=cfg.device)
    size, precision = cfg.pretrain_size, ("fp32" if cfg.cpu else "bf16")
    if cfg.cpu:
        launcher = ["--config_file", str(ROOT / "launch/accelerate/cpu-2proc-zero2.yaml")]
    else:
        launcher = ["--config_file", str(ROOT / "launch/accelerate/deepspeed-zero2.yaml"), "--num_processes", "1"]
    run = ["--preset", size, "--datasets", str(data), "--max_steps", str(cfg.steps), "--batch_size", str(cfg.batch)]
    run += ["--precision", precision, "--save_every", "0", "--eval_every", "0", "--tracker", "none"]
    run += ["--output_dir", str(tmp / "run"), "--warmup_steps", "0", "--resume", "false"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launcher, "-m", "pretrain", *run]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(cfg.cpu), cwd=ROOT, timeout=cfg.part_timeout)
    if proc.returncode != 0:
        raise RuntimeError((proc.stderr.strip().splitlines() or ["pretrain failed"])[-1])
    result = json.loads((tmp / "run" / "result.json").read_text())
    world = result.get("processes", 1)
    fit = estimate(
        EstimateArguments(preset=size, resolution=cfg.resolution, channels=3, precision=precision, zero_stage=2,
                          world_size=world, micro_batch=cfg.batch)
    )  # fmt: skip
    keys = ("samples_per_s_per_process", "mfu", "peak_tflops", "peak_source", "processes", "peak_memory_gib")
    return {
        "size": size,
        "precision": precision,
        "steps": cfg.steps,
        "batch_per_process": cfg.batch,
        "wall_s": round(time.perf_counter() - start, 1),
        **{k: result.get(k) for k in keys},
        "estimate_gib_at_batch": round(fit["total_gib_at_micro_batch"], 3),
    }


def part_parity(cfg: argparse.Namespace) -> dict:
    """One set of weights: the CPU fp32 forward is the reference for the device's fp32 (TF32 off) and bf16."""
    import torch

    from foundation import ScOT, ScOTConfig

    torch.manual_seed(0)
    overrides = {"input_resampling": "none"} if cfg.parity_size == "tiny" else {}
    model = ScOT(ScOTConfig.from_preset(cfg.parity_size, **overrides)).eval()
    with torch.no_grad():  # away from the near-zero initialisation, so that every path carries signal
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    x = torch.randn(2, model.config.num_channels, cfg.resolution, cfg.resolution)
    t = torch.rand(2)
    with torch.no_grad():
        reference = model(pixel_values=x, time=t).output.double()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

    def rel(out: torch.Tensor) -> float:
        return float((out.double().cpu() - reference).abs().sum() / reference.abs().sum())

    device = torch.device(cfg.device)
    errors = {}
    for name, dtype, limit in (("fp32", torch.float32, 1e-4), ("bf16", torch.bfloat16, 2e-2)):
        moved = ScOT(model.config).eval()
        moved.load_state_dict(model.state_dict())
        moved.to(device=device, dtype=dtype)
        with torch.no_grad():
            out = moved(pixel_values=x.to(device, dtype), time=t.to(device, dtype)).output
        errors[name] = {"rel_l1": rel(out), "limit": limit, "ok": rel(out) <= limit}
    return {"size": cfg.parity_size, "device": cfg.device, "reference": "cpu fp32", **errors}


def part_generate(cfg: argparse.Namespace, tmp: Path) -> dict:
    """Trajectories/s of the solver through the sharded path (one rank) on the device and on the CPU."""
    from foundation.pdes.shards import generate_sharded

    rows = {}
    for device, n in dict.fromkeys([(cfg.device, cfg.gen_n), ("cpu", cfg.gen_n_cpu)]):  # once in --cpu mode
        start = time.perf_counter()
        out = tmp / f"gen-{device}.h5"
        for rank in (1, 0):  # two shards on one device, rank 0 joins: the multi-rank code path
            generate_sharded("ns-gauss", n, cfg.resolution, out, rank=rank, world_size=2, snapshots=5, batch=n // 2,
                             device=device, progress=False)  # fmt: skip
        rows[device] = {"trajectories": n, "seconds": round(time.perf_counter() - start, 2)}
        rows[device]["trajectories_per_s"] = round(n / rows[device]["seconds"], 2)
    if cfg.device != "cpu":
        rows["speedup_vs_cpu"] = round(rows[cfg.device]["trajectories_per_s"] / rows["cpu"]["trajectories_per_s"], 1)
    return {"family": "ns-gauss", "resolution": cfg.resolution, **rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (what CI runs)")
    parser.add_argument("--parts", nargs="+", default=["model", "pretrain", "parity", "generate"])
    parser.add_argument("--part_timeout", type=float, default=240.0)
    cfg = parser.parse_args(argv)
    import torch

    if not cfg.cpu and not torch.cuda.is_available():
        parser.error("no CUDA device here: run with --cpu (tiny sizes on the CPU), or on a GPU machine")
    big = not cfg.cpu
    cfg.device = "cuda" if big else "cpu"
    cfg.sizes = ["T", "B"] if big else ["tiny"]
    cfg.pretrain_size, cfg.parity_size = ("B", "T") if big else ("tiny", "tiny")
    cfg.resolution, cfg.batch, cfg.steps = (128, 16, 30) if big else (32, 2, 3)
    cfg.gen_n, cfg.gen_n_cpu = (64, 8) if big else (4, 4)
    cfg.threads = (os.cpu_count() or 1) if big else 1
    report: dict = {
        "check": "gpu_check",
        "mode": "cpu" if cfg.cpu else "cuda",
        "device": torch.cuda.get_device_name() if big else "cpu",
        "torch": torch.__version__,
        "parts": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name in cfg.parts:
            start = time.perf_counter()
            try:
                if name == "model":
                    result = part_model(cfg)
                elif name == "pretrain":
                    result = part_pretrain(cfg, Path(tmp))
                elif name == "parity":
                    result = part_parity(cfg)
                elif name == "generate":
                    result = part_generate(cfg, Path(tmp))
                else:
                    raise ValueError(f"unknown part {name!r}")
            except Exception as error:  # noqa: BLE001 - recorded, and the next part still runs
                result = {"error": f"{type(error).__name__}: {error}"}
            result["part_s"] = round(time.perf_counter() - start, 1)
            report["parts"][name] = result
            _write(report, cfg.out)
            print(f"[gpu_check] {name}: {json.dumps(result)[:300]}", file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2))
    return 1 if any("error" in part for part in report["parts"].values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
