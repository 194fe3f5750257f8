"""The accelerate configs in `launch/accelerate/` work from any directory, not only from the repository root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT

from pretrain.build import resolve_deepspeed_config_file

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


# A 2-process DeepSpeed fine-tuning launched from another directory (cwd = its tmp_path, relative paths) is
# tests/test_finetune.py::test_lora_under_deepspeed_zero3_two_processes: one launch covers both.
