"""The prepared GPU check runs in its --cpu mode (tiny sizes), so that it cannot rot before a GPU runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import REPO_ROOT, multiprocess


@multiprocess
def test_the_gpu_check_runs_every_part_on_cpu_and_writes_its_json(tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    cmd = [sys.executable, str(REPO_ROOT / "benchmarks/gpu_check.py"), "--cpu", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report == json.loads(proc.stdout) and report["mode"] == "cpu"
    parts = report["parts"]
    assert list(parts) == ["model", "pretrain", "parity", "generate"]
    assert not [name for name, part in parts.items() if "error" in part]
    model = parts["model"]["results"]
    assert {(r["dtype"], r["compiled"]) for r in model} == {("bf16", False), ("fp32", False)}
    assert all(0 < r["mfu"] < 1 and r["samples_per_s_train"] > 0 for r in model)
    assert parts["pretrain"]["processes"] == 2 and parts["pretrain"]["samples_per_s_per_process"] > 0
    assert 0 < parts["parity"]["bf16"]["rel_l1"] <= 2e-2  # a real bf16 error, within the check's bound
    assert parts["generate"]["cpu"]["trajectories"] == 4
