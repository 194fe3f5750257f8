"""One prepared measuring run for one GPU (issue 27, "Measure first"): where Poseidon-B's training time goes.

The one call a GPU session makes (after `bash ../shared/device/make-wheels.sh` here, carry [".whl"]), ~8 minutes:

    bash .whl/install.sh && export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 &&
        python3 benchmarks/gpu_check.py --out $OUT/gpu_check.json      # device tool: timeout_s 570, carry [".whl"]

    python benchmarks/gpu_check.py --cpu --out gpu_check.json    # the same parts at tiny sizes on the CPU (CI)

Time on one H200 with the defaults (estimates; --budget_s 480 caps the whole run: a worker never runs past the
budget, parity and generate keep ~45 s of it, and what does not fit becomes a row saying so):
  model     ~60 s   bare forward+backward, T and B (--sizes) x bf16 and fp32 eager x --batch (64 256), one worker
                    per size: samples/s, MFU against the matmul peak of the dtype measured in the same worker
                    process, peak memory;
  profile   ~60 s   torch.profiler over 3 training steps of B bf16 at the first --batch after warm-up: the bare
                    model with a plain fused AdamW step, and `pretrain.loop.train_step` of a `Pretrainer` built
                    in-process (one plain process: autocast bf16, its DataLoader and all): top 15 CUDA kernels and
                    CPU ops by self time (share), GPU idle fraction, host-device syncs per step; traces (.json.gz)
                    next to --out;
  pretrain  ~200 s  `python -m pretrain` (--trainer_sizes B) at each --trainer_batch, in one plain process and
                    under launch/accelerate/deepspeed-zero2.yaml on one GPU (on the CPU: one process and the
                    2-process CPU ZeRO-2 config), 8 steps: samples/s, its own MFU and peak memory, its start-up cost,
                    and the ratio to the bare model at the same size, batch and precision;
  compile   rest    torch.compile(dynamic=False) bf16 of T then B at --compile_batch (256): compile time (the first
                    step) apart from the steady-state step, a compact profile, torch._dynamo counters (recompiles in
                    the steady state); a whole-model compile of T took > 140 s before (gpu-h200.md), so B may not fit:
                    its row then says "timed out", and `--parts compile --sizes B --budget_s 540` measures it alone;
  parity    ~15 s   the same weights (T) on CUDA vs the CPU fp32 forward: fp32 TF32 off (<= 1e-4), bf16 (<= 2e-2);
  generate  ~30 s   the built-in solver on the GPU vs the CPU, trajectories/s, through the sharded path.

Every measurement runs in a worker process of its own with a timeout (--worker_timeout_s, per part with
`part=seconds`): a worker writes each row as it finishes, so one that times out or fails keeps its finished rows and
adds one row with its error; the other workers and parts run on. The report is rewritten to --out after each part;
the summary (markdown tables, also written to --out with suffix .md) is printed at the end; the full JSON is in --out.
Files: --out, its .md, and the two profile traces: 4 files, a few MB (the device tool brings back 8 of <= 16 MiB).
Dependencies on a machine without network: `.whl/install.sh` installs the project's missing wheels, keeping the
machine's own CUDA torch.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))  # model_throughput.benchmark_model: the rows both benchmarks build

PARTS = ("model", "profile", "pretrain", "compile", "parity", "generate")
# Per worker process, seconds (GPU; --cpu uses CPU_TIMEOUTS); always capped by what is left of --budget_s.
TIMEOUTS = dict(model=120, profile=150, pretrain=150, compile=300, parity=90, generate=90)
CPU_TIMEOUTS = dict(model=120, profile=120, pretrain=150, compile=300, parity=60, generate=60)
RESERVE_S = dict(parity=15, generate=30)  # kept for these parts while the parts before them run (GPU)


# ----------------------------------------------------------------------------------------------- workers
def _run(cmd: list[str], rows_file: Path | None, timeout: float, env: dict, log: Path) -> tuple[list[dict], str | None]:
    """Run `cmd` in a process group of its own for at most `timeout` s; return the rows it wrote (JSON lines in
    `rows_file`, kept whatever happens) and its error, None if it exited 0."""
    error = None
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        try:
            proc.wait(timeout=max(timeout, 0.1))
        except subprocess.TimeoutExpired:
            error = f"timed out after {timeout:.0f} s (--worker_timeout_s / --budget_s)"
        try:  # the whole group: launchers leave ranks behind otherwise
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    if error is None and proc.returncode != 0:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        error = f"exit {proc.returncode}: " + (lines[-1].strip()[:300] if lines else "no output")
    rows = []
    if rows_file is not None and rows_file.exists():
        for line in rows_file.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by the kill
                pass
    return rows, error


def _env(cpu: bool) -> dict:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)  # wheels put there stay
    env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
    if cpu:
        env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    return env


class Runner:
    """Starts workers under the per-part timeouts and the run's budget; keeps every worker's log."""

    def __init__(self, cfg: argparse.Namespace, tmp: Path):
        self.cfg, self.tmp, self.count = cfg, tmp, 0
        self.deadline = time.monotonic() + cfg.budget_s

    def budget_left(self, part: str) -> float:
        later = self.cfg.parts[self.cfg.parts.index(part) + 1 :]
        reserve = 0 if self.cfg.cpu else sum(RESERVE_S.get(p, 0) for p in later)
        return self.deadline - time.monotonic() - reserve

    def command(self, part: str, cmd: list[str], label: dict, rows_file: Path | None = None) -> list[dict]:
        """Rows of one worker command, plus one row with its error if it failed, timed out or was not started."""
        left = self.budget_left(part)
        if left < 5:
            return [{**label, "error": "not started: the run's --budget_s is spent"}]
        timeout = min(self.cfg.timeouts[part], left)
        self.count += 1
        log = self.tmp / f"worker-{self.count}.log"
        start = time.perf_counter()
        rows, error = _run(cmd, rows_file, timeout, _env(self.cfg.cpu), log)
        if error:
            tail = log.read_text(errors="replace")[-1500:]
            rows.append({**label, "error": error, "rows_finished": len(rows), "log_tail": tail})
        for row in rows:
            row.setdefault("worker_s", round(time.perf_counter() - start, 1))
            _progress(part, row)
        return rows

    def worker(self, part: str, kind: str, spec: dict, label: dict) -> list[dict]:
        rows_file = self.tmp / f"rows-{self.count + 1}.jsonl"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--spec", json.dumps(spec)]
        return self.command(part, [*cmd, "--rows", str(rows_file)], label, rows_file)


def _progress(part: str, row: dict) -> None:
    keep = {k: v for k, v in row.items() if not isinstance(v, (list, dict)) and k != "log_tail"}
    print(f"[gpu_check] {part}: {json.dumps(keep)[:240]}", file=sys.stderr, flush=True)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_memory_gib(device) -> float:
    import resource

    import torch

    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)  # the process's peak RSS so far


def _bare_model(spec: dict):
    """The bare model of `spec` on its device and dtype, a fused AdamW if asked, and a step function per batch."""
    import torch
    from model_throughput import benchmark_model

    from foundation.compat import fused_adamw

    model, device = benchmark_model(spec)
    model.config._attn_implementation = "sdpa"
    dtype = next(model.parameters()).dtype
    optimizer = fused_adamw(model.parameters(), 1e-4, 0.0) if spec.get("optimizer") else None
    run = torch.compile(model, dynamic=False) if spec.get("compiled") else model

    def make_step(batch: int) -> Callable[..., None]:
        res, channels = spec["resolution"], model.config.num_channels
        x = torch.randn(batch, channels, res, res, device=device, dtype=dtype)
        t = torch.rand(batch, device=device, dtype=dtype)

        def step(*_) -> None:
            for p in model.parameters():  # as zero_grad(set_to_none=True)
                p.grad = None
            run(pixel_values=x, time=t).output.float().square().mean().backward()
            if optimizer is not None:
                optimizer.step()

        return step

    return model, device, make_step


def _dynamo_counters() -> dict:
    from torch._dynamo.utils import counters

    return {
        "frames_ok": counters["frames"]["ok"],
        "frames_total": counters["frames"]["total"],
        "unique_graphs": counters["stats"]["unique_graphs"],
        "graph_breaks": sum(counters["graph_break"].values()),
    }


def worker_bare(spec: dict, emit: Callable[[dict], None]) -> None:
    """Forward+backward steps of the bare model per dtype at each batch (eager, or compiled: compile time apart)."""
    for dtype in spec["dtypes"]:
        _bare_rows({**spec, "dtype": dtype}, emit)


def _bare_rows(spec: dict, emit: Callable[[dict], None]) -> None:
    import torch

    from pretrain.flops import peak_flops

    model, device, make_step = _bare_model(spec)
    peak = peak_flops(device, spec["dtype"], None)[0]
    for batch in spec["batches"]:
        row = dict(size=spec["size"], dtype=spec["dtype"], mode="compiled" if spec.get("compiled") else "eager")
        row.update(batch=batch, resolution=spec["resolution"], peak_tflops=round(peak / 1e12, 2))
        try:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            step = make_step(batch)
            if spec.get("compiled"):
                before, start = _dynamo_counters(), time.perf_counter()
                step()
                _sync(device)
                row["compile_s"] = round(time.perf_counter() - start, 1)  # the first step: tracing and codegen
            for _ in range(spec["warmup"]):
                step()
            _sync(device)
            steady, start = _dynamo_counters() if spec.get("compiled") else None, time.perf_counter()
            for _ in range(spec["repeats"]):
                step()
            _sync(device)
            seconds = (time.perf_counter() - start) / spec["repeats"]
            row.update(step_s=round(seconds, 4), samples_per_s=round(batch / seconds, 2))
            row.update(mfu=round(spec["flops"] * batch / seconds / peak, 4), peak_memory_gib=_peak_memory_gib(device))
            if spec.get("compiled"):
                now = _dynamo_counters()
                row["dynamo"] = {**now, "compiled_frames_first_step": now["frames_ok"] - before["frames_ok"]}
                row["dynamo"]["recompiles_in_steady_state"] = now["frames_ok"] - steady["frames_ok"]
                row["profile"] = _profiled(step, 3, device, None, top=5)
        except Exception as error:  # noqa: BLE001 - e.g. out of memory at the larger batch: the next batch runs
            row["error"] = f"{type(error).__name__}: {str(error)[:300]}"
        emit(row)
    del model, make_step
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------- profiles
def _profiled(step: Callable[[int], object], steps: int, device, trace_out: str | None, top: int = 15) -> dict:
    """torch.profiler over `steps` calls of `step` (after one profiled warm-up step): the tables of `_analyse`.

    The last step ends with one device synchronize of this harness (so that every kernel is in the trace); it is
    left out of the sync count."""
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    got: dict = {}
    folder = Path(tempfile.mkdtemp(prefix="gpu_check_trace_"))

    def ready(prof) -> None:
        path = folder / "trace.json"
        prof.export_chrome_trace(str(path))
        got["trace"], got["averages"] = path, prof.key_averages()

    plan = schedule(wait=0, warmup=1, active=steps, repeat=1)
    with profile(activities=activities, schedule=plan, on_trace_ready=ready) as prof:
        for i in range(steps + 1):
            step(i)
            if i == 0:  # still the warm-up step: outside the tables
                _sync(device)
                start = time.perf_counter()
            if i == steps:
                _sync(device)
                host_s = time.perf_counter() - start
            prof.step()
    trace = json.loads(got["trace"].read_text())
    if trace_out:  # on a GPU without the CPU ops (their table is in the report): tens of MB less
        kept = (
            trace
            if device.type == "cpu"
            else {**trace, "traceEvents": [e for e in trace.get("traceEvents", []) if e.get("cat") not in HOST_CATS]}
        )
        with gzip.open(trace_out, "wt", compresslevel=4) as dst:
            json.dump(kept, dst)
    shutil.rmtree(folder, ignore_errors=True)
    out = _analyse(trace.get("traceEvents", []), got["averages"], top, harness_syncs=int(device.type == "cuda"))
    out["host_step_ms"] = round(host_s / steps * 1e3, 2)
    return out


SYNC_CALLS = {  # host-device synchronisations as the CUDA runtime / driver names them
    "cudaStreamSynchronize": "stream_sync",
    "cudaDeviceSynchronize": "device_sync",
    "cudaEventSynchronize": "event_sync",
    "cudaMemcpy": "memcpy_blocking",
    "cuStreamSynchronize": "stream_sync",
    "cuCtxSynchronize": "device_sync",
}
DEVICE_CATS = ("kernel", "gpu_memcpy", "gpu_memset")
HOST_CATS = ("cpu_op", "python_function", "fwdbwd", "ac2g", "cpu_instant_event")


def _short(name: str, width: int = 60) -> str:
    name = re.sub(r"\s+", " ", name)
    return name if len(name) <= width else name[: width - 3] + "..."


def _busy_us(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    """Length of the union of the intervals within [lo, hi]."""
    busy, reach = 0.0, lo
    for start, end in sorted(intervals):
        start, end = max(start, reach), min(end, hi)
        if end > start:
            busy, reach = busy + end - start, end
    return busy


def _analyse(events: list[dict], averages, top: int, harness_syncs: int = 0) -> dict:
    """Per-step tables of a chrome trace (kernels, GPU busy time, syncs) and of the key averages (CPU self time)."""
    steps = [  # the host's step ranges (the GPU's copies are "gpu_user_annotation")
        e
        for e in events
        if e.get("ph") == "X"
        and e.get("cat") in ("user_annotation", "cpu_op")
        and e["name"].startswith("ProfilerStep#")
    ]
    n = max(len(steps), 1)
    lo = min((e["ts"] for e in steps), default=0.0)
    hi = max((e["ts"] + e["dur"] for e in steps), default=0.0)
    device = [e for e in events if e.get("ph") == "X" and e.get("cat") in DEVICE_CATS]
    hi = max([hi] + [e["ts"] + e["dur"] for e in device])
    wall = max(hi - lo, 1e-9)
    kernels: dict[str, list[float]] = {}
    for e in device:
        if e["cat"] == "kernel":
            entry = kernels.setdefault(e["name"], [0.0, 0])
            entry[0], entry[1] = entry[0] + e["dur"], entry[1] + 1
    kernel_total = sum(t for t, _ in kernels.values())
    syncs = dict.fromkeys(sorted(set(SYNC_CALLS.values())), 0)
    for e in events:
        if e.get("ph") == "X" and e.get("cat") in ("cuda_runtime", "cuda_driver") and e.get("name") in SYNC_CALLS:
            syncs[SYNC_CALLS[e["name"]]] += 1
    syncs["device_sync"] = max(syncs["device_sync"] - harness_syncs, 0)
    syncs["memcpy_dtoh"] = sum(1 for e in device if e["cat"] == "gpu_memcpy" and "DtoH" in e.get("name", ""))
    ranked = sorted(kernels.items(), key=lambda kv: -kv[1][0])[:top]
    return {
        "steps": len(steps),
        "step_ms": round(wall / n / 1e3, 2),
        "gpu_busy_ms_per_step": round(_busy_us([(e["ts"], e["ts"] + e["dur"]) for e in device], lo, hi) / n / 1e3, 2),
        "gpu_idle_fraction": round(1 - _busy_us([(e["ts"], e["ts"] + e["dur"]) for e in device], lo, hi) / wall, 4)
        if device
        else None,
        "kernels_per_step": round(sum(c for _, c in kernels.values()) / n, 1),
        "syncs_per_step": {k: round(v / n, 2) for k, v in syncs.items()},
        "top_kernels": [
            {
                "name": _short(k),
                "ms_per_step": round(t / n / 1e3, 3),
                "calls_per_step": round(c / n, 1),
                "share": round(t / kernel_total, 4),
            }
            for k, (t, c) in ranked
        ],  # fmt: skip
        "top_cpu_ops": _cpu_table(averages, n, top),
    }


def _cpu_table(averages, steps: int, top: int) -> list[dict]:
    """CPU ops by self time (profiler step annotations merged: their self time is Python outside any op)."""
    merged: dict[str, list[float]] = {}
    for e in averages:
        if not str(getattr(e, "device_type", "CPU")).endswith("CPU"):
            continue
        name = re.sub(r"ProfilerStep#\d+", "ProfilerStep*", e.key)
        entry = merged.setdefault(name, [0.0, 0])
        entry[0], entry[1] = entry[0] + e.self_cpu_time_total, entry[1] + e.count
    total = sum(t for t, _ in merged.values()) or 1.0
    ranked = sorted(((k, v) for k, v in merged.items() if v[0] > 0), key=lambda kv: -kv[1][0])[:top]
    return [
        {"name": _short(k), "ms_per_step": round(t / steps / 1e3, 3), "calls_per_step": round(c / steps, 1),
         "share": round(t / total, 4)}
        for k, (t, c) in ranked
    ]  # fmt: skip


def worker_profile_bare(spec: dict, emit: Callable[[dict], None]) -> None:
    """The bare model's training step (forward, backward, fused AdamW), profiled after warm-up."""
    _, device, make_step = _bare_model({**spec, "optimizer": True})
    step = make_step(spec["batch"])
    for _ in range(spec["warmup"]):
        step()
    _sync(device)
    row = {"path": "bare model + fused AdamW", "size": spec["size"], "dtype": spec["dtype"], "batch": spec["batch"]}
    emit({**row, **_profiled(step, spec["steps"], device, spec["trace"])})


def worker_profile_train_step(spec: dict, emit: Callable[[dict], None]) -> None:
    """`pretrain.loop.train_step` of a `Pretrainer` built in this process (one plain process), profiled after
    warm-up; each step takes its batch from the run's DataLoader, as the loop does."""

    from pretrain.build import setup_runtime
    from pretrain.config import parse_args
    from pretrain.loop import TrainState, _micro_batches, train_step
    from pretrain.trainer import Pretrainer

    setup_runtime()
    model_args, data_args, train_args = parse_args(spec["argv"])
    trainer = Pretrainer(model_args, data_args, train_args)
    parts = trainer.run.parts(trainer.finish)
    parts.model.train()
    batches = _micro_batches(parts, TrainState(), train_args.batch_size)
    device = parts.accelerator.device

    def step(i: int = 0) -> None:
        train_step(parts, [next(batches)], train_args.max_grad_norm, i)

    for i in range(spec["warmup"]):
        step(i)
    _sync(device)
    row = {"path": "pretrain.loop.train_step (Pretrainer, 1 plain process)", "size": spec["size"]}
    row.update(dtype=train_args.precision, batch=train_args.batch_size)
    emit({**row, **_profiled(step, spec["steps"], device, spec["trace"])})


# ----------------------------------------------------------------------------------------------- parity, solver
def worker_parity(spec: dict, emit: Callable[[dict], None]) -> None:
    """One set of weights: the CPU fp32 forward is the reference for the device's fp32 (TF32 off) and bf16."""
    import torch

    from foundation import ScOT, ScOTConfig

    torch.manual_seed(0)
    overrides = {"input_resampling": "none"} if spec["size"] == "tiny" else {}
    model = ScOT(ScOTConfig.from_preset(spec["size"], **overrides)).eval()
    with torch.no_grad():  # away from the near-zero initialisation, so that every path carries signal
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    x = torch.randn(2, model.config.num_channels, spec["resolution"], spec["resolution"])
    t = torch.rand(2)
    with torch.no_grad():
        reference = model(pixel_values=x, time=t).output.double()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = torch.device(spec["device"])
    row = {"size": spec["size"], "device": spec["device"], "reference": "cpu fp32"}
    for name, dtype, limit in (("fp32", torch.float32, 1e-4), ("bf16", torch.bfloat16, 2e-2)):
        moved = ScOT(model.config).eval()
        moved.load_state_dict(model.state_dict())
        moved.to(device=device, dtype=dtype)
        with torch.no_grad():
            out = moved(pixel_values=x.to(device, dtype), time=t.to(device, dtype)).output
        rel = float((out.double().cpu() - reference).abs().sum() / reference.abs().sum())
        row[name] = {"rel_l1": rel, "limit": limit, "ok": rel <= limit}
    emit(row)


def worker_generate(spec: dict, emit: Callable[[dict], None]) -> None:
    """Trajectories/s of the solver through the sharded path (two shards, rank 0 joins) on the device and the CPU."""
    from foundation.pdes.shards import generate_sharded

    row: dict = {"family": "ns-gauss", "resolution": spec["resolution"]}
    for device, n in dict.fromkeys([(spec["device"], spec["n"]), ("cpu", spec["n_cpu"])]):  # once in --cpu mode
        start = time.perf_counter()
        out = Path(spec["folder"]) / f"gen-{device}.h5"
        for rank in (1, 0):
            generate_sharded("ns-gauss", n, spec["resolution"], out, rank=rank, world_size=2, snapshots=5,
                             batch=n // 2, device=device, progress=False)  # fmt: skip
        seconds = time.perf_counter() - start
        row[device] = {"trajectories": n, "seconds": round(seconds, 2), "trajectories_per_s": round(n / seconds, 2)}
    if spec["device"] != "cpu":
        row["speedup_vs_cpu"] = round(row[spec["device"]]["trajectories_per_s"] / row["cpu"]["trajectories_per_s"], 1)
    emit(row)


WORKERS = {
    "bare": worker_bare,
    "profile_bare": worker_profile_bare,
    "profile_train_step": worker_profile_train_step,
    "parity": worker_parity,
    "generate": worker_generate,
}


# ----------------------------------------------------------------------------------------------- the parts
def _flops(cfg: argparse.Namespace, size: str) -> float:
    from foundation import ScOTConfig
    from pretrain.flops import train_flops_per_sample

    overrides = {"input_resampling": "none"} if size == "tiny" else {}
    return train_flops_per_sample(ScOTConfig.from_preset(size, **overrides), (cfg.resolution, cfg.resolution))


def _bare_spec(cfg: argparse.Namespace, size: str, dtypes: list[str], batches: list[int], compiled: bool) -> dict:
    spec = dict(size=size, dtypes=dtypes, batches=batches, compiled=compiled, resolution=cfg.resolution)
    spec.update(device=cfg.device, threads=cfg.threads, warmup=cfg.warmup, repeats=cfg.repeats)
    return {**spec, "flops": _flops(cfg, size)}


def part_model(cfg: argparse.Namespace, runner: Runner) -> dict:
    """Bare forward+backward, eager, bf16 and fp32, every size x batch (one worker per size)."""
    rows = []
    for size in cfg.sizes:
        spec = _bare_spec(cfg, size, ["bf16", "fp32"], cfg.batch, compiled=False)
        label = dict(size=size, dtype="bf16,fp32", mode="eager", batch=",".join(map(str, cfg.batch)))
        rows += runner.worker("model", "bare", spec, label)
    return {"rows": rows}


def part_compile(cfg: argparse.Namespace, runner: Runner) -> dict:
    """torch.compile bf16 of each size at --compile_batch (one worker per size: its graphs are its own)."""
    rows = []
    for size in cfg.sizes:
        spec = _bare_spec(cfg, size, ["bf16"], cfg.compile_batch, compiled=True)
        label = dict(size=size, dtype="bf16", mode="compiled", batch=",".join(map(str, cfg.compile_batch)))
        rows += runner.worker("compile", "bare", spec, label)
    return {"rows": rows}


def _dataset(cfg: argparse.Namespace, tmp: Path) -> Path:
    """The trainer's data, made once per run on the device: enough pairs for the largest batch."""
    path = tmp / "ns.h5"
    if not path.exists():
        import torch

        from foundation.pdes import generate

        n, snapshots = (16, 3) if cfg.cpu else (32, 5)  # 32 x 15 pairs: > 256 training pairs
        generate("ns-sines", n, cfg.resolution, path, snapshots=snapshots, progress=False, device=cfg.device)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return path


def _trainer_argv(cfg: argparse.Namespace, size: str, batch: int, data: Path, out: Path) -> list[str]:
    run = ["--preset", size, "--datasets", str(data), "--max_steps", str(cfg.steps), "--batch_size", str(batch)]
    run += ["--precision", cfg.precision, "--save_every", "0", "--eval_every", "0", "--tracker", "none"]
    run += ["--output_dir", str(out), "--warmup_steps", "0", "--resume", "false", "--eval_pairs", str(min(batch, 32))]
    return run + ["--num_workers", "0" if cfg.cpu else "4", "--log_every", str(cfg.steps)]


def part_pretrain(cfg: argparse.Namespace, runner: Runner) -> dict:
    """`python -m pretrain` per size x batch, in one plain process and under ZeRO-2 (1 GPU; 2 CPU processes)."""
    from pretrain.estimate import EstimateArguments, estimate

    data = _dataset(cfg, runner.tmp)
    zero2 = "cpu-2proc-zero2.yaml" if cfg.cpu else "deepspeed-zero2.yaml"
    launchers = {
        "plain": [sys.executable, "-m", "pretrain"],
        "zero2": [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                  str(ROOT / "launch/accelerate" / zero2), *([] if cfg.cpu else ["--num_processes", "1"]),
                  "-m", "pretrain"],
    }  # fmt: skip
    rows = []
    for size in cfg.trainer_sizes:
        for batch in cfg.trainer_batch:
            for launcher, head in launchers.items():
                out = runner.tmp / f"run-{size}-{batch}-{launcher}"
                label = dict(size=size, batch=batch, launcher=launcher, precision=cfg.precision, steps=cfg.steps)
                start = time.perf_counter()
                got = runner.command("pretrain", [*head, *_trainer_argv(cfg, size, batch, data, out)], label)
                if got:  # an error row
                    shutil.rmtree(out, ignore_errors=True)
                    rows += got
                    continue
                result = json.loads((out / "result.json").read_text())
                row = {**label, "wall_s": round(time.perf_counter() - start, 1)}
                keys = ("samples_per_s_per_process", "mfu", "peak_tflops", "processes", "peak_memory_gib")
                row.update({k: result.get(k) for k in keys})
                row["samples_per_s"] = row.pop("samples_per_s_per_process")
                if row["samples_per_s"]:  # start-up, final evaluation, export and checkpoint: the rest of the wall
                    row["overhead_s"] = round(row["wall_s"] - (cfg.steps - 2) * batch / row["samples_per_s"], 1)
                if launcher == "zero2":
                    world = row["processes"] or 1
                    fit = EstimateArguments(preset=size, resolution=cfg.resolution, channels=3, micro_batch=batch,
                                            precision=cfg.precision, zero_stage=2, world_size=world)  # fmt: skip
                    row["estimate_gib"] = round(estimate(fit)["total_gib_at_micro_batch"], 3)
                _progress("pretrain", row)
                shutil.rmtree(out, ignore_errors=True)  # checkpoints of B are GBs
                rows.append(row)
    return {"rows": rows}


def part_profile(cfg: argparse.Namespace, runner: Runner) -> dict:
    """The bare model's step and the trainer's train_step, profiled; a markdown table of both."""
    size, batch = cfg.sizes[-1], cfg.batch[0]
    steps, warmup = (3, 3) if not cfg.cpu else (2, 1)
    stem = cfg.out.with_suffix("")
    spec = dict(size=size, dtype="bf16", batch=batch, resolution=cfg.resolution, device=cfg.device, steps=steps)
    spec.update(threads=cfg.threads, warmup=warmup, trace=f"{stem}.profile-bare.trace.json.gz")
    rows = runner.worker("profile", "profile_bare", spec, dict(path="bare model + fused AdamW", size=size))
    data = _dataset(cfg, runner.tmp)
    argv = _trainer_argv(cfg, size, batch, data, runner.tmp / "run-profile")
    argv[argv.index("--precision") + 1] = "bf16"  # the trainer's bf16 path, also on the CPU
    spec = dict(argv=argv, size=size, steps=steps, warmup=warmup, trace=f"{stem}.profile-train_step.trace.json.gz")
    rows += runner.worker("profile", "profile_train_step", spec, dict(path="pretrain.loop.train_step", size=size))
    shutil.rmtree(runner.tmp / "run-profile", ignore_errors=True)
    return {"rows": rows, "markdown": profile_markdown(rows)}


def part_parity(cfg: argparse.Namespace, runner: Runner) -> dict:
    spec = dict(size=cfg.parity_size, resolution=cfg.resolution, device=cfg.device)
    return {"rows": runner.worker("parity", "parity", spec, {"size": cfg.parity_size})}


def part_generate(cfg: argparse.Namespace, runner: Runner) -> dict:
    spec = dict(resolution=cfg.resolution, device=cfg.device, n=cfg.gen_n, n_cpu=cfg.gen_n_cpu, folder=str(runner.tmp))
    return {"rows": runner.worker("generate", "generate", spec, {"family": "ns-gauss"})}


RUN_PART = dict(model=part_model, profile=part_profile, pretrain=part_pretrain, compile=part_compile,
                parity=part_parity, generate=part_generate)  # fmt: skip


# ----------------------------------------------------------------------------------------------- the summary
def _cell(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def throughput_markdown(parts: dict) -> str:
    """samples/s (per process), MFU and peak memory of every bare and trainer row; trainer / bare at the same size,
    batch and precision."""
    bare = {}
    lines = ["| size | batch | path | dtype | samples/s | MFU % | peak GiB | vs bare | notes |", "|" + "---|" * 9]
    for row in parts.get("model", {}).get("rows", []) + parts.get("compile", {}).get("rows", []):
        if "samples_per_s" in row and row.get("mode") == "eager":
            bare[(row["size"], row["batch"], row["dtype"])] = row["samples_per_s"]
    for part in ("model", "compile", "pretrain"):
        for row in parts.get(part, {}).get("rows", []):
            path = f"trainer {row['launcher']}" if part == "pretrain" else f"bare {row.get('mode', '')}"
            dtype = row.get("precision", row.get("dtype"))
            notes = []
            if row.get("error"):
                notes.append(row["error"][:90])
            if "compile_s" in row:
                notes.append(f"compile {row['compile_s']} s")
            if row.get("processes", 1) not in (1, None):
                notes.append(f"{row['processes']} processes")
            if "overhead_s" in row:
                notes.append(f"start-up etc. {row['overhead_s']} s")
            ratio = None
            if part != "model" and row.get("samples_per_s") and (row["size"], row.get("batch"), dtype) in bare:
                ratio = row["samples_per_s"] / bare[(row["size"], row["batch"], dtype)]
            mfu = row["mfu"] * 100 if row.get("mfu") is not None else None
            cells = [row.get("size"), row.get("batch"), path, dtype, _cell(row.get("samples_per_s")), _cell(mfu, 2),
                     _cell(row.get("peak_memory_gib")), _cell(ratio, 2), "; ".join(notes)]  # fmt: skip
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def profile_markdown(rows: list[dict]) -> str:
    out = []
    for row in rows:
        head = f"**{row.get('path')}**, {row.get('size')} {row.get('dtype', '')} batch {row.get('batch', '-')}"
        if row.get("error"):
            out.append(f"{head}: {row['error'][:200]}")
            continue
        syncs = ", ".join(f"{k} {v}" for k, v in row["syncs_per_step"].items() if v)
        idle = _cell(row["gpu_idle_fraction"], 3)
        out.append(
            f"{head}: step {row['step_ms']} ms (host clock {row['host_step_ms']} ms), GPU idle {idle}, "
            f"{row['kernels_per_step']} kernels/step, syncs/step: {syncs or 'none'}"
        )
        for title, key in (("CUDA kernel", "top_kernels"), ("CPU op", "top_cpu_ops")):
            if not row[key]:
                continue
            out += [f"\n| {title} (self time) | ms/step | calls/step | share |", "|---|---|---|---|"]
            out += [
                f"| {r['name']} | {r['ms_per_step']} | {r['calls_per_step']} | {r['share']:.3f} |" for r in row[key]
            ]
        out.append("")
    return "\n".join(out)


def summary_markdown(report: dict) -> str:
    parts = report["parts"]
    lines = [f"## gpu_check on {report['device']} (torch {report['torch']}), {report.get('wall_s')} s", ""]
    lines += ["### Throughput (forward+backward; trainer: python -m pretrain)", throughput_markdown(parts), ""]
    compiled = [r for r in parts.get("compile", {}).get("rows", []) if "dynamo" in r]
    for r in compiled:
        p = r.get("profile") or {}
        lines.append(f"compiled {r['size']} batch {r['batch']}: dynamo {json.dumps(r['dynamo'])}; GPU idle "
                     f"{_cell(p.get('gpu_idle_fraction'), 3)}, {p.get('kernels_per_step')} kernels/step")  # fmt: skip
    if "profile" in parts:
        lines += ["", "### Profile", parts["profile"].get("markdown", "")]
    for name in ("parity", "generate"):
        for row in parts.get(name, {}).get("rows", []):
            lines.append(f"{name}: {json.dumps({k: v for k, v in row.items() if k != 'log_tail'})[:300]}")
    lines.append("\n" + ", ".join(f"{k} {v.get('part_s')} s" for k, v in parts.items()))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- main
def _write(report: dict, out: Path) -> None:
    tmp = out.with_name(out.name + ".partial")
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out)  # a reader (or a timeout) sees the previous complete report or this one


def _timeouts(values: list[str], cpu: bool) -> dict:
    out = dict(CPU_TIMEOUTS if cpu else TIMEOUTS)
    for value in values:
        part, _, seconds = value.rpartition("=")
        if part and part not in PARTS:
            raise ValueError(f"--worker_timeout_s {value}: unknown part {part!r} (one of {', '.join(PARTS)})")
        for name in [part] if part else PARTS:
            out[name] = float(seconds)
    return out


def _config(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (what CI runs)")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS, help="in this order")
    parser.add_argument("--sizes", nargs="+", help="bare model, profile (the last) and compile (GPU: T B; CPU: tiny)")
    parser.add_argument("--batch", nargs="+", type=int, help="per-GPU batch sizes (GPU: 64 256; CPU: 1 2)")
    parser.add_argument("--resolution", type=int, help="grid (GPU: 128; CPU: 32)")
    parser.add_argument("--trainer_sizes", nargs="+", help="python -m pretrain runs (GPU: B; CPU: tiny)")
    parser.add_argument("--trainer_batch", nargs="+", type=int, help="(GPU: every --batch; CPU: the last)")
    parser.add_argument("--compile_batch", nargs="+", type=int, help="(default: the last --batch)")
    parser.add_argument("--steps", type=int, help="trainer steps; throughput from the third on (GPU: 8; CPU: 4)")
    parser.add_argument("--worker_timeout_s", nargs="+", default=[], help="SECONDS for every part, or PART=SECONDS")
    parser.add_argument("--budget_s", type=float, help="the whole run (GPU: 480; CPU: 900)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=Path, help=argparse.SUPPRESS)
    cfg = parser.parse_args(argv)
    if cfg.worker:
        return cfg
    big = not cfg.cpu
    try:
        cfg.timeouts = _timeouts(cfg.worker_timeout_s, cfg.cpu)
    except ValueError as error:
        parser.error(str(error))
    cfg.sizes = cfg.sizes or (["T", "B"] if big else ["tiny"])
    cfg.batch = cfg.batch or ([64, 256] if big else [1, 2])
    cfg.resolution = cfg.resolution or (128 if big else 32)
    cfg.trainer_sizes = cfg.trainer_sizes or (["B"] if big else ["tiny"])
    cfg.trainer_batch = cfg.trainer_batch or (cfg.batch if big else cfg.batch[-1:])
    cfg.compile_batch = cfg.compile_batch or cfg.batch[-1:]
    cfg.steps = cfg.steps or (8 if big else 4)
    cfg.budget_s = cfg.budget_s or (480.0 if big else 900.0)
    cfg.device, cfg.precision = ("cuda", "bf16") if big else ("cpu", "fp32")
    cfg.parity_size = "T" if big else "tiny"
    cfg.gen_n, cfg.gen_n_cpu = (64, 8) if big else (4, 4)
    cfg.threads = (os.cpu_count() or 1) if big else 1
    cfg.warmup, cfg.repeats = (2, 5) if big else (1, 2)
    return cfg


CONFIG_KEYS = ("sizes", "batch", "resolution", "trainer_sizes", "trainer_batch", "compile_batch", "steps", "budget_s")
CONFIG_KEYS += ("timeouts",)


def main(argv: list[str] | None = None) -> int:
    cfg = _config(argv)
    if cfg.worker:  # one measurement, rows appended to --rows as they finish
        with open(cfg.rows, "a") as rows:

            def emit(row: dict) -> None:
                rows.write(json.dumps(row) + "\n")
                rows.flush()

            WORKERS[cfg.worker](json.loads(cfg.spec), emit)
        return 0
    import torch

    if not cfg.cpu and not torch.cuda.is_available():
        sys.exit("error: no CUDA device here: run with --cpu (tiny sizes on the CPU), or on a GPU machine")
    started = time.perf_counter()
    report: dict = {
        "check": "gpu_check",
        "mode": "cpu" if cfg.cpu else "cuda",
        "device": torch.cuda.get_device_name() if not cfg.cpu else "cpu",
        "torch": torch.__version__,
        "config": {k: getattr(cfg, k) for k in CONFIG_KEYS},
        "parts": {},
    }
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        runner = Runner(cfg, Path(tmp))
        for name in cfg.parts:
            start = time.perf_counter()
            try:
                result = RUN_PART[name](cfg, runner)
            except Exception as error:  # noqa: BLE001 - recorded, and the next part still runs
                result = {"rows": [{"error": f"{type(error).__name__}: {error}"}]}
            result["part_s"] = round(time.perf_counter() - start, 1)
            report["parts"][name] = result
            report["wall_s"] = round(time.perf_counter() - started, 1)
            _write(report, cfg.out)
    summary = summary_markdown(report)
    report["summary_markdown"] = summary
    _write(report, cfg.out)
    cfg.out.with_suffix(".md").write_text(summary + "\n")
    print(summary)
    errors = [row for part in report["parts"].values() for row in part["rows"] if "error" in row]
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
