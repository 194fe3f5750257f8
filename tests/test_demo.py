"""The README demo runs from a clean state and reproduces its prediction after save/reload."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT


def test_demo_runs_and_round_trips(tmp_path: Path):
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "launch" / "demo.py"), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["prediction_shape"] == summary["input_shape"] == [1, 4, 48, 64]
    assert summary["prediction_finite"] and summary["reload_max_abs_difference"] == 0.0
    assert {"config.json", "model.safetensors"} <= set(summary["files"])
