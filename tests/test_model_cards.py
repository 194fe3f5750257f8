"""Cards from real run metadata, release folders, the dry-run publish, and loading/saving official checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT
from huggingface_hub import DatasetCard, ModelCard
from safetensors.torch import load_file

from foundation import ScOT
from foundation.data import open_source
from model_cards import collect_run, render_dataset_card, render_model_card


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A small pretraining run (NS-Sines + CE-RP at 16 x 16, 8 steps) with the demo's prediction plot: what a card
    renders from, built in this process in seconds."""
    import importlib.util

    from foundation.pdes import generate
    from pretrain.config import DataArguments, ModelArguments, TrainArguments
    from pretrain.trainer import Pretrainer

    out = tmp_path_factory.mktemp("run")
    corpora = [
        generate(pde, 8, 16, out / "data" / f"{pde}.h5", snapshots=4, seed=k, batch=8, progress=False)
        for k, pde in enumerate(["ns-sines", "ce-rp"])
    ]
    data = DataArguments(datasets=[str(p) for p in corpora], channels=["rho", "u", "v", "p"], eval_pairs=16)
    train = TrainArguments(
        output_dir=str(out / "pretrain"),
        max_steps=8,
        batch_size=4,
        warmup_steps=2,
        eval_every=4,  # validation.jsonl: the card's validation curve
        save_every=8,
        keep_last=1,
        tracker="none",
        resume=False,
    )
    trainer = Pretrainer(ModelArguments(preset="tiny"), data, train)
    result = trainer.train()
    spec = importlib.util.spec_from_file_location("demo", REPO_ROOT / "launch" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    model = ScOT.from_pretrained(result["model"]).eval()
    demo.plot_predictions(model, trainer.val_set, out / "pretrain" / "predictions.png")
    return out / "pretrain"


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "model_cards", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})},
    )


def test_model_card_front_matter_parses_and_carries_the_metrics(run_dir: Path, tmp_path: Path):
    meta = collect_run(run_dir)
    card = render_model_card(meta, "me/scot-tiny-demo", base_model="camlab-ethz/Poseidon-T")
    path = tmp_path / "README.md"
    card.save(path)
    loaded = ModelCard.load(path)  # huggingface_hub's own parser and validation
    data = loaded.data.to_dict()
    assert data["license"] == "apache-2.0" and data["library_name"] == "pde-foundation"
    assert data["base_model"] == "camlab-ethz/Poseidon-T" and "scot-tiny" in data["tags"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    results = {(r.dataset_name, r.metric_name): r.metric_value for r in loaded.data.eval_results}
    median = "median_rel_l1_normalised/"  # validation is on normalised fields, and the card says so
    for dataset, values in metrics["by_dataset"].items():
        for key in [k for k in values if k.startswith(median)]:
            group = key[len(median) :]
            assert results[(dataset, f"median relative L1 (%, normalised) {group}")] == round(values[key], 3)
    text = loaded.text
    assert "2,912,672 parameters" in text and "rho, u, v, p" in text and "predictions.png" in text
    assert 'ScOT.from_pretrained("me/scot-tiny-demo")' in text and "| lead time |" in text
    assert "samples/s per process" in text and "ns-sines" in text
    assert "Validation during training (4 pairs per step per process)" in text and "| step | 4 | 8 |" in text
    assert "Downstream benchmark" not in text  # none given


def test_card_of_a_release_carries_its_downstream_benchmark(run_dir: Path, tmp_path: Path):
    from finetune.report import write

    row = {"learning_rate": 1e-3, "test": 5.0, "test_min": 4.0, "test_max": 6.0, "test_by_seed": [4.0, 6.0]}
    report = {
        "metric": "median_rel_l1_physical/mean",
        "init_from": str(run_dir / "model"),
        "budget": {"max_steps": 10, "batch_size": 4},
        "n": [8],
        "seeds": [0, 1],
        "methods": ["finetuned", "scratch"],
        "tasks": {"allen-cahn": {"methods": {"finetuned": {"8": row}, "scratch": {"8": {**row, "test": 10.0}}}}},
    }
    write(report, tmp_path / "bench")
    card = render_model_card(collect_run(run_dir, tmp_path / "bench"), "me/scot-tiny-demo").content
    assert "## Does it transfer? Downstream benchmark" in card and "on PDEs it never saw (allen-cahn)" in card
    assert "| allen-cahn | 8 | 5.00 [4.00-6.00] | 10.00 [4.00-6.00] | 0.50 |" in card
    with pytest.raises(FileNotFoundError, match="no benchmark.md"):
        collect_run(run_dir, tmp_path)


def test_card_and_release_carry_the_horizon_evaluation(run_dir: Path, tmp_path: Path):
    import shutil

    from model_cards.publish import prepare_release

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    curve = [2.0 + j for j in range(12)]
    horizon = {
        "strategy": "jump",
        "max_lead": 0.5,
        "trained_max_lead": 0.5,
        "trajectories": 4,
        "steps": list(range(1, 13)),
        "lead_time": [0.1 * j for j in range(1, 13)],
        "median_rel_l1_physical/mean": curve,
        "energy_drift": [-0.01 * j for j in range(1, 13)],
        "final": {"step": 12, "lead_time": 1.2, "median_rel_l1_physical/mean": 13.0},
        "windows": {"6-12": 10.0},
        "final_from_truth": {"input_step": 7, "median_rel_l1_physical/mean": 4.5},
        "persistence": [3.0 * j for j in range(1, 13)],
    }
    (run / "horizon").mkdir()
    (run / "horizon" / "horizon.json").write_text(json.dumps(horizon))
    card = render_model_card(collect_run(run), "me/scot-tiny-demo").content
    assert "### Past the training window (4 held-out trajectories, physical units)" in card
    assert "| median rel. L1 (%) | 2.00 | 4.00 | 6.00 | 9.00 | 11.00 | 13.00 |" in card
    assert "| persistence (%) | 3.00 | 9.00 | 15.00 | 24.00 | 30.00 | 36.00 |\n| energy drift |" in card
    assert "trained on lead times up to 0.5" in card and "Last step (12, lead time 1.20): 13.00%" in card
    assert "steps 6-12: 10.00%" in card
    assert "from the true state at step 7: 4.50%; the other 8.50 points are what feeding" in card
    files = prepare_release(run, tmp_path / "release", "me/scot-tiny-demo")
    assert "horizon" in files and (tmp_path / "release" / "horizon" / "horizon.json").exists()
    assert "Past the training window" not in render_model_card(collect_run(run_dir), "me/x").content  # none: no section


def test_dataset_card_of_a_generated_file(run_dir: Path, tmp_path: Path):
    source = open_source(run_dir.parent / "data" / "ce-rp.h5")
    card = render_dataset_card(source, "me/ce-rp-small")
    card.save(tmp_path / "README.md")
    loaded = DatasetCard.load(tmp_path / "README.md")
    assert "ce-rp" in loaded.data.to_dict()["tags"]
    assert "| rho |" in loaded.text and "foundation.pdes.euler" in loaded.text and "8 (train 0-6" in loaded.text


def test_dry_run_publish_lists_exactly_the_files_and_operations(run_dir: Path, tmp_path: Path):
    release = tmp_path / "release"
    secret = "hf_" + "x" * 30
    proc = _cli(
        "publish",
        str(run_dir),
        "--repo-id",
        "me/scot-tiny-demo",
        "--release-dir",
        str(release),
        "--revision",
        "v1",
        "--private",
        "--dry-run",
        env={"HF_TOKEN": secret},
    )
    assert proc.returncode == 0, proc.stderr
    assert secret not in proc.stdout + proc.stderr
    plan = json.loads(proc.stdout)
    expected = [
        "README.md",
        "config.json",
        "metrics.json",
        "model.safetensors",
        "predictions.png",
        "training_data.json",
        "validation.jsonl",
    ]
    assert plan["files"] == expected and sorted(p.name for p in release.iterdir()) == expected
    assert [op["op"] for op in plan["operations"]] == ["create_repo", "create_branch", "upload_folder"]
    assert plan["operations"][0]["private"] is True and plan["operations"][-1]["revision"] == "v1"
    assert plan["operations"][-1]["files"] == expected
    assert ScOT.from_pretrained(release).config.channel_names == ["rho", "u", "v", "p"]  # the release loads
    again = _cli("publish", str(run_dir), "--repo-id", "me/x", "--release-dir", str(release), "--dry-run")
    assert again.returncode == 2 and "refusing to overwrite" in again.stderr and "Traceback" not in again.stderr
    forced = _cli(
        "publish", str(run_dir), "--repo-id", "me/x", "--release-dir", str(release), "--dry-run", "--overwrite"
    )
    assert forced.returncode == 0 and [o["op"] for o in json.loads(forced.stdout)["operations"]] == [
        "create_repo",
        "upload_folder",
    ]


def test_render_of_an_unfinished_run_is_a_clear_error(tmp_path: Path):
    proc = _cli("render", str(tmp_path), "--repo-id", "me/x")
    assert proc.returncode == 2 and "not a finished run" in proc.stderr


def test_official_checkpoint_saved_in_our_format_loses_nothing(tmp_path: Path):
    from conftest import fixture_folder

    fixtures_dir = fixture_folder("scot-mini").parent
    official = ScOT.from_pretrained(fixtures_dir / "scot-mini").eval()
    official.save_pretrained(tmp_path / "ours")
    ours = ScOT.from_pretrained(tmp_path / "ours").eval()
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["model_type"] == "scot"
    reference = load_file(fixtures_dir / "scot-mini" / "model.safetensors")
    saved = load_file(tmp_path / "ours" / "model.safetensors")
    assert saved.keys() == reference.keys() and all(torch.equal(saved[k], reference[k]) for k in reference)
    assert ours.config.channel_names == ["rho", "u", "v", "p"] and ours.config.input_std[3] == 0.185
    io = load_file(fixtures_dir / "scot-mini" / "io.safetensors")
    with torch.no_grad():
        assert torch.equal(
            ours(pixel_values=io["input_32"], time=io["time_32"]).output,
            official(pixel_values=io["input_32"], time=io["time_32"]).output,
        )


def test_corrupt_weights_and_bad_statistics_name_the_file(tmp_path: Path):
    from conftest import fixture_folder

    source = fixture_folder("scot-mini")
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    shutil.copy(source / "config.json", truncated / "config.json")
    (truncated / "model.safetensors").write_bytes((source / "model.safetensors").read_bytes()[:100_000])
    with pytest.raises(ValueError, match=f"{truncated}: model.safetensors is truncated or corrupt"):
        ScOT.from_pretrained(truncated)
    stats = tmp_path / "stats"
    stats.mkdir()
    shutil.copy(source / "model.safetensors", stats / "model.safetensors")
    config = json.loads((source / "config.json").read_text())
    config["input_std"] = [0.3, 0.4, 0.4]
    (stats / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"stats/config.json: .*input_std has 3 entries, expected 4"):
        ScOT.from_pretrained(stats)
