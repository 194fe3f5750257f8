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


def test_loads_by_repo_id_offline_and_gives_the_reference_outputs():
    from conftest import fixture_folder

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    source = fixture_folder("scot-mini")  # the published layout, kept with the tests
    commit = lay_out_in_cache(source, "camlab-ethz/Poseidon-T")
    io = load_file(source / "io.safetensors")
    for revision in (None, commit):
        model = ScOT.from_pretrained("camlab-ethz/Poseidon-T", revision=revision).eval()
        with torch.no_grad():
            out = model(pixel_values=io["input_32"], time=io["time_32"]).output
        assert (out - io["output_32"]).abs().max().item() <= 1e-5
    assert model.config.channel_names == ["rho", "u", "v", "p"]


def test_unknown_repo_offline_is_a_clear_error():
    with pytest.raises(OSError, match="nobody/nothing"):
        ScOT.from_pretrained("nobody/nothing")


def test_folder_without_config_is_a_clear_error(tmp_path: Path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(OSError, match=f"{tmp_path}.*config.json"):
        ScOT.from_pretrained(tmp_path)


def test_refined_folder_is_refused_by_scot_and_automodel_and_loads_whole_with_load_model(tmp_path: Path):
    from transformers import AutoModel

    from finetune import load_model
    from finetune.refiner import RefinedScOT, SpectralHead
    from foundation import ScOTConfig

    model = ScOT(ScOTConfig.from_preset("tiny", image_size=16)).eval()
    head = SpectralHead(4, (16, 16))
    with torch.no_grad():
        head.weight.normal_(0, 0.1)  # a fitted head changes the prediction
        head.bias.normal_(0, 0.1)
    folder = tmp_path / "refined"
    RefinedScOT(model, head).save_pretrained(folder)
    for load in (ScOT.from_pretrained, AutoModel.from_pretrained):
        with pytest.raises(ValueError, match=f"{folder}: a Spectral-Refiner model.*finetune.load_model"):
            load(folder)
    lay_out_in_cache(folder, "org/refined")
    with pytest.raises(ValueError, match="org/refined: a Spectral-Refiner model"):
        ScOT.from_pretrained("org/refined")
    x, t = torch.randn(2, 4, 16, 16), torch.rand(2)
    with torch.no_grad():
        refined = load_model(folder)(pixel_values=x, time=t).output
        plain = ScOT.from_pretrained(folder, ignore_spectral_head=True).eval()(pixel_values=x, time=t).output
        assert torch.allclose(refined, head(model(pixel_values=x, time=t).output), atol=1e-6)
    assert not torch.allclose(refined, plain, atol=1e-3)  # the head matters: dropping it would be silent
