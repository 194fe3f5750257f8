"""The README demo runs end to end (at a smaller size than README's) and writes what it promises."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from foundation import ScOT

pytestmark = pytest.mark.slow


def test_demo_generates_pretrains_evaluates_and_plots(demo_run):
    tmp_path, proc = demo_run
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 60 and summary["pairs"]["train"] > 0
    val = "median_rel_l1_normalised/mean"  # pretraining validates on normalised fields
    assert summary["val_after"][val] < summary["val_before"][val]
    assert set(summary["val_by_dataset"]) == {"ns-sines", "ce-rp"}
    assert Path(summary["plot"]).stat().st_size > 10_000  # a real PNG
    assert ScOT.from_pretrained(summary["model"]).config.channel_names == ["rho", "u", "v", "p"]
    assert (tmp_path / "pretrain" / "metrics.json").exists()
    # fine-tuning on the unseen PDE: scratch vs full vs full + refiner, on held-out trajectories
    table = summary["finetune"]["table"]
    assert set(table) == {"scratch", "full fine-tune", "full + refiner"}
    assert all(0 < row["test_median_rel_l1"] < 1e3 for row in table.values())
    refined = summary["finetune"]["refiner"]
    assert refined["val_median_rel_l1_after"] <= refined["val_median_rel_l1_before"]  # best head kept
    assert table["full + refiner"]["trainable_parameters"] < table["full fine-tune"]["trainable_parameters"] / 100
    assert "| full + refiner |" in proc.stdout
