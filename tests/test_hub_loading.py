"""Loading by Hub repo id from a real HF cache layout, offline (HF_HUB_OFFLINE=1 in conftest)."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants
from safetensors.torch import load_file

from foundation import ScOT


def lay_out_in_cache(folder: Path, repo_id: str, revision: str = "main") -> str:
    """Put `folder` into the HF hub cache as the snapshot of `repo_id` at `revision`; return the commit hash."""
    repo = Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    for file in folder.iterdir():
        if file.name == "io.safetensors":
            continue
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        link = snapshot / file.name
        if not link.exists():
            os.symlink(os.path.relpath(blob, snapshot), link)  # the cache's own blob + symlink layout
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return commit


def test_loads_by_repo_id_offline_and_gives_the_reference_outputs(fixtures_dir: Path):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    source = fixtures_dir / "scot-t-narrow"
    commit = lay_out_in_cache(source, "camlab-ethz/Poseidon-T")
    io = load_file(source / "io.safetensors")
    for revision in (None, commit):
        model = ScOT.from_pretrained("camlab-ethz/Poseidon-T", revision=revision).eval()
        with torch.no_grad():
            out = model(pixel_values=io["input_128"], time=io["time_128"]).output
        assert (out - io["output_128"]).abs().max().item() <= 1e-5
    assert model.config.channel_names == ["rho", "u", "v", "p"]


def test_unknown_repo_offline_is_a_clear_error():
    with pytest.raises(OSError, match="nobody/nothing"):
        ScOT.from_pretrained("nobody/nothing")


def test_folder_without_config_is_a_clear_error(tmp_path: Path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(OSError, match=f"{tmp_path}.*config.json"):
        ScOT.from_pretrained(tmp_path)
