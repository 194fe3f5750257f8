"""The accelerate configs in `launch/accelerate/` work from any directory, not only from the repository root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO_ROOT

from foundation import ScOT, ScOTConfig
from foundation.pdes import generate
from pretrain.trainer import resolve_deepspeed_config_file

NAMED = {  # accelerate config -> the DeepSpeed JSON it names (as written, relative to the repository)
    path.stem: named
    for path in sorted((REPO_ROOT / "launch" / "accelerate").glob("*.yaml"))
    if (named := (yaml.safe_load(path.read_text()).get("deepspeed_config") or {}).get("deepspeed_config_file"))
}


def test_the_deepspeed_accelerate_configs_name_a_json():
    assert {"cpu-2proc-zero2", "cpu-2proc-zero3", "deepspeed-zero2", "multinode-zero3"} <= set(NAMED)


@pytest.mark.parametrize("config", sorted(NAMED))
def test_every_named_deepspeed_config_resolves_from_another_directory(config, tmp_path, monkeypatch):
    named = NAMED[config]
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", named)  # what `accelerate launch` hands the processes
    resolve_deepspeed_config_file()
    resolved = Path(os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"])
    assert resolved.is_absolute() and resolved == REPO_ROOT / named and resolved.is_file()


def test_a_deepspeed_config_found_nowhere_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.json").write_text("{}")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", "mine.json")  # present in the working directory: kept
    resolve_deepspeed_config_file()
    assert os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"] == "mine.json"
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", "launch/deepspeed/zero9.json")
    with pytest.raises(FileNotFoundError, match="DeepSpeed config launch/deepspeed/zero9.json .*no such file in"):
        resolve_deepspeed_config_file()


def test_two_process_zero2_fine_tuning_launched_from_another_directory(tmp_path):
    torch.manual_seed(0)
    config = ScOTConfig.from_preset(
        "tiny", image_size=16, channel_names=["rho", "u", "v", "p"], output_channel_names=["rho", "u", "v", "p"]
    )
    ScOT(config).save_pretrained(tmp_path / "base")
    generate("allen-cahn", 8, 16, tmp_path / "ac.h5", snapshots=4, seed=3, progress=False, eps=0.08)
    accelerate_config = REPO_ROOT / "launch" / "accelerate" / "cpu-2proc-zero2.yaml"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config)]
    cmd += ["-m", "finetune", "--init_from", "base", "--datasets", "ac.h5", "--output_dir", "run"]  # relative to cwd
    cmd += ["--strategy", "full", "--max_steps", "3", "--batch_size", "4", "--eval_pairs", "8", "--tracker", "none"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "2 process(es), DEEPSPEED" in proc.stdout + proc.stderr
    model = ScOT.from_pretrained(tmp_path / "run" / "model")
    assert model.config.channel_names == ["u"] and all(torch.isfinite(p).all() for p in model.parameters())
