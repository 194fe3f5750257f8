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
    assert summary["prediction_shape"] == [1, 2, 48, 40] and summary["pairs_per_trajectory"] == 66
    assert summary["corpus_shape"] == {"N": 8, "T": 11, "C": 2, "H": 32, "W": 32}
    assert summary["prediction_finite"] and summary["reload_max_abs_difference"] == 0.0
    assert 0.5 < summary["untrained_relative_l1_loss"] < 1.5  # near-zero init: the prediction is ~0
    assert {"config.json", "model.safetensors"} <= set(summary["files"])
