"""The prepared GPU check runs in its --cpu mode (tiny sizes), so that it cannot rot before a GPU runs it."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import subprocess
import sys
import time

from conftest import REPO_ROOT, multiprocess


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO_ROOT / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_worker_that_times_out_keeps_the_rows_it_finished(tmp_path):
    check = _module()
    rows = tmp_path / "rows.jsonl"
    worker = "import json, sys, time; f = open(sys.argv[1], 'a'); f.write(json.dumps({'batch': 1}) + '\\n')"
    worker += '; f.flush(); f.write(\'{"batch": 2, "cut\'); f.flush(); time.sleep(60)'
    start = time.perf_counter()
    got, error = check._run([sys.executable, "-c", worker, str(rows)], rows, 2.0, dict(os.environ), tmp_path / "log")
    assert time.perf_counter() - start < 20
    assert got == [{"batch": 1}] and error.startswith("timed out after 2 s")
    got, error = check._run([sys.executable, "-c", "raise SystemExit('no GPU')"], None, 30, dict(os.environ), rows)
    assert got == [] and error == "exit 1: no GPU"


@multiprocess
def test_the_gpu_check_runs_every_part_on_cpu_and_writes_its_json(tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    cmd = [sys.executable, str(REPO_ROOT / "benchmarks/gpu_check.py"), "--cpu", "--out", str(out), "--batch", "1", "2"]
    cmd += ["--worker_timeout_s", "compile=3"]  # compiling takes minutes on a CPU: this worker is made to time out
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path)
    report = json.loads(out.read_text())
    assert report["mode"] == "cpu" and proc.returncode == 1, proc.stderr[-3000:]  # 1: the compile row's error
    parts = report["parts"]
    assert list(parts) == ["model", "profile", "pretrain", "compile", "parity", "generate"]
    errors = [(name, row) for name, part in parts.items() for row in part["rows"] if "error" in row]
    assert [name for name, _ in errors] == ["compile"], errors
    assert errors[0][1]["error"].startswith("timed out after 3 s") and errors[0][1]["rows_finished"] == 0

    model = parts["model"]["rows"]  # one row per dtype x batch, from one worker per dtype
    assert sorted((r["dtype"], r["batch"]) for r in model) == [("bf16", 1), ("bf16", 2), ("fp32", 1), ("fp32", 2)]
    assert all(0 < r["mfu"] < 1 and r["samples_per_s"] > 0 and r["peak_tflops"] > 0 for r in model)

    trainer = {r["launcher"]: r for r in parts["pretrain"]["rows"]}
    assert set(trainer) == {"plain", "zero2"} and trainer["zero2"]["processes"] == 2
    assert all(r["batch"] == 2 and r["samples_per_s"] > 0 and 0 < r["mfu"] < 1 for r in trainer.values())

    profiles = parts["profile"]["rows"]
    assert [r["path"].split()[0] for r in profiles] == ["bare", "pretrain.loop.train_step"]
    for row in profiles:
        shares = [op["share"] for op in row["top_cpu_ops"]]
        assert 0 < len(shares) <= 15 and all(0 < s <= 1 for s in shares) and sum(shares) <= 1.0001
        assert (
            row["steps"] == 2 and row["step_ms"] > 0 and row["top_kernels"] == [] and row["gpu_idle_fraction"] is None
        )
    assert "| CPU op (self time) |" in parts["profile"]["markdown"]
    traces = sorted(p.name for p in tmp_path.glob("check.profile-*.trace.json.gz"))
    assert traces == ["check.profile-bare.trace.json.gz", "check.profile-train_step.trace.json.gz"]
    assert json.loads(gzip.open(tmp_path / traces[0]).read())["traceEvents"]

    assert 0 < parts["parity"]["rows"][0]["bf16"]["rel_l1"] <= 2e-2  # a real bf16 error, within the check's bound
    assert parts["generate"]["rows"][0]["cpu"]["trajectories"] == 4
    summary = (tmp_path / "check.md").read_text()
    assert proc.stdout.strip() == summary.strip() == report["summary_markdown"].strip()
    assert len(summary) < 12_000 and "| tiny | 2 | trainer zero2 | fp32 |" in summary
    assert "| tiny | 2 | trainer plain | fp32 | " in summary and "timed out" in summary


def test_the_profile_tables_of_a_gpu_trace():
    """Kernels, GPU idle time and syncs as a CUDA trace names them (a made-up trace of two steps)."""
    check = _module()

    def x(cat, name, ts, dur):
        return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur}

    events = [x("user_annotation", "ProfilerStep#1", 0, 100), x("user_annotation", "ProfilerStep#2", 100, 100)]
    events += [x("kernel", "gemm", 10, 40), x("kernel", "gemm", 110, 40), x("kernel", "elementwise", 30, 40)]
    events += [x("gpu_memcpy", "Memcpy DtoH (Device -> Pageable)", 150, 10), x("cuda_runtime", "cudaMemcpy", 149, 12)]
    events += [x("cuda_runtime", "cudaStreamSynchronize", 50, 5), x("cuda_runtime", "cudaDeviceSynchronize", 190, 5)]
    table = check._analyse(events, [], top=15, harness_syncs=1)
    assert table["steps"] == 2 and table["step_ms"] == 0.1 and table["kernels_per_step"] == 1.5
    assert table["gpu_idle_fraction"] == round(1 - (60 + 40 + 10) / 200, 4)  # 10-70, 110-150, 150-160 busy
    assert [(k["name"], k["share"]) for k in table["top_kernels"]] == [
        ("gemm", round(80 / 120, 4)),
        ("elementwise", 0.3333),
    ]
    assert table["syncs_per_step"] == dict(device_sync=0, event_sync=0, memcpy_blocking=0.5, stream_sync=0.5,
                                           memcpy_dtoh=0.5)  # fmt: skip
