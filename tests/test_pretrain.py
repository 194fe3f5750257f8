"""Pretraining runs for real: one process, and two processes with DeepSpeed ZeRO-2/3 on the CPU (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT

from foundation import ScOT
from foundation.data import open_source
from foundation.pdes import generate
from pretrain.config import parse_args

RECIPES = sorted((REPO_ROOT / "launch" / "recipes").glob("pretrain-*.yaml"))  # finetune-*: test_finetune


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("corpus")
    ns = generate("ns-sines", 6, 16, folder / "ns.h5", snapshots=4, seed=0, batch=6, progress=False)
    ce = generate("ce-rp", 6, 16, folder / "ce.h5", snapshots=4, seed=1, batch=6, progress=False)
    return [ns, ce]


def _args(corpus, out: Path, *extra: str) -> list[str]:
    return [
        "--preset",
        "tiny",
        "--datasets",
        *map(str, corpus),
        "--channels",
        "rho",
        "u",
        "v",
        "p",
        "--output_dir",
        str(out),
        "--batch_size",
        "4",
        "--max_steps",
        "8",
        "--save_every",
        "3",
        "--eval_every",
        "4",
        "--eval_pairs",
        "8",
        "--warmup_steps",
        "2",
        "--learning_rate",
        "1e-2",
        "--tracker",
        "none",
        *extra,
    ]


def _run(argv: list[str], launcher: list[str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO_ROOT)}
    cmd = (launcher or [sys.executable]) + ["-m", "pretrain", *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "losses.jsonl").read_text().splitlines()]


def _accelerate(config: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO_ROOT / "launch" / "accelerate" / config),
    ]


def test_single_process_run_resumes_exactly_and_exports(corpus, tmp_path: Path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _run(_args(corpus, straight))
    _run(_args(corpus, killed, "--stop_after", "5"))  # "killed" after step 5: last checkpoint is step 3
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step-0000003"]
    proc = _run(_args(corpus, killed))
    assert "resumed from" in proc.stdout + proc.stderr
    reference, resumed = _losses(straight), _losses(killed)
    assert len(reference) == len(resumed) == 8
    assert resumed == reference  # the resumed loss curve is the uninterrupted one, bit for bit
    assert reference[-1] < reference[0]
    checkpoints = sorted(p.name for p in (straight / "checkpoints").iterdir())
    assert checkpoints == ["step-0000006", "step-0000008"]  # keep_last 2, no partial folders left
    model = ScOT.from_pretrained(straight / "model")
    assert model.config.channel_names == ["rho", "u", "v", "p"] and model.config.image_size == 16
    metrics = json.loads((straight / "metrics.json").read_text())
    assert metrics["step"] == 8 and 0 < metrics["median_rel_l1/mean"] < 1000
    assert metrics["rollout/rollout_final_median_rel_l1"] > 0 and metrics["rollout/direct_final_median_rel_l1"] > 0
    assert {d["spec"] for d in json.loads((straight / "model" / "training_data.json").read_text())} == set(
        map(str, corpus)
    )


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_two_processes_train_resume_and_export(corpus, tmp_path: Path, stage: int):
    launcher = _accelerate(f"cpu-2proc-zero{stage}.yaml")
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    proc = _run(_args(corpus, straight), launcher)
    assert "2 process(es), DEEPSPEED" in proc.stdout + proc.stderr
    ckpt = straight / "checkpoints" / "step-0000008"
    assert any("zero" in p.name or "optim_states" in p.name for p in ckpt.rglob("*")), "sharded DeepSpeed state"
    _run(_args(corpus, killed, "--stop_after", "4"), launcher)
    _run(_args(corpus, killed), launcher)
    assert _losses(killed) == pytest.approx(_losses(straight), rel=1e-6, abs=1e-7)
    model = ScOT.from_pretrained(straight / "model")  # consolidated from the shards (ZeRO-3) by the export
    assert all(torch.isfinite(p).all() for p in model.parameters())
    x = torch.randn(1, 4, 16, 16)
    assert model(pixel_values=x, time=torch.tensor([0.5])).output.shape == x.shape


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_every_recipe_parses_and_builds_at_tiny_size(recipe: Path):
    from pretrain.trainer import build_model, cosine_with_warmup

    model_args, data_args, train_args = parse_args(["--config", str(recipe)])
    assert data_args.datasets and train_args.max_steps > 0
    model_args.preset = "tiny"
    channels = data_args.channels or ["u", "v"]
    model = build_model(model_args, channels, channels, {c: (0.0, 1.0) for c in channels}, (32, 32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_args.learning_rate, weight_decay=train_args.weight_decay)
    cosine_with_warmup(optimizer, train_args.warmup_steps, train_args.max_steps, train_args.min_lr_ratio)


def test_recipe_typos_and_bad_values_are_refused(tmp_path: Path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_stpes: 10\ndata:\n  datasets: [x.h5]\n")
    with pytest.raises(SystemExit):
        parse_args(["--config", str(bad)])
    assert "--max_stpes (did you mean --max_steps?)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--datasets", "x.h5", "--precision", "fp8"])
    assert "--precision must be fp32 or bf16" in capsys.readouterr().err


def test_diverging_run_stops_with_a_clear_message_and_keeps_its_checkpoint(tmp_path: Path):
    folder = tmp_path / "data"
    ns = generate("ns-sines", 6, 16, folder / "ns.h5", snapshots=4, seed=0, batch=6, progress=False)
    out = tmp_path / "run"
    argv = [
        "--preset",
        "tiny",
        "--datasets",
        str(ns),
        "--output_dir",
        str(out),
        "--max_steps",
        "10",
        "--save_every",
        "1",
        "--batch_size",
        "4",
        "--learning_rate",
        "1e12",
        "--warmup_steps",
        "0",
        "--max_grad_norm",
        "0",
        "--tracker",
        "none",
        "--max_nonfinite_steps",
        "2",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "pretrain", *argv], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env=env
    )
    assert proc.returncode == 3 and "2 non-finite losses in a row" in proc.stderr and "Traceback" not in proc.stderr
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000001"]
    assert (out / "checkpoints" / "step-0000001" / "trainer_state.json").exists()


def test_missing_dataset_is_a_one_line_error(tmp_path: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pretrain",
            "--datasets",
            str(tmp_path / "nope.h5"),
            "--tracker",
            "none",
            "--output_dir",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
        env=env,
    )
    assert proc.returncode == 2 and "nope.h5: no such file" in proc.stderr and "Traceback" not in proc.stderr


def test_ddp_two_cpu_processes_are_synchronised(corpus, tmp_path: Path):
    out = tmp_path / "ddp"
    proc = _run(_args(corpus, out, "--stop_after", "3"), _accelerate("cpu-2proc-ddp.yaml"))
    assert "2 process(es), MULTI_CPU" in proc.stdout + proc.stderr
    assert json.loads((out / "result.json").read_text())["processes"] == 2


def test_bf16_deepspeed_and_gradient_checkpointing_runs(corpus, tmp_path: Path):
    proc = _run(
        _args(corpus, tmp_path / "ds", "--precision", "bf16", "--max_steps", "3", "--save_every", "0"),
        _accelerate("cpu-2proc-zero2.yaml"),
    )
    assert "DeepSpeed bf16 engine" in proc.stdout + proc.stderr
    losses = _losses(tmp_path / "ds")
    assert len(losses) == 3 and all(0 < v < 10 for v in losses)
    assert ScOT.from_pretrained(tmp_path / "ds" / "model").dtype == torch.float32
    single = tmp_path / "gc"
    _run(_args(corpus, single, "--precision", "bf16", "--gradient_checkpointing", "true", "--max_steps", "3"))
    model = ScOT.from_pretrained(single / "model")
    assert model.dtype == torch.float32  # exported in fp32 whatever the training precision


def test_full_fine_tuning_of_a_published_checkpoint(fixtures_dir: Path, tmp_path: Path):
    """`--init_from` a Poseidon-layout checkpoint continues training all weights on new data (same channels)."""
    data = generate("ce-rp", 6, 32, tmp_path / "ce.h5", snapshots=4, seed=0, batch=6, progress=False)
    out = tmp_path / "ft"
    _run(
        [
            "--init_from",
            str(fixtures_dir / "scot-tiny"),
            "--datasets",
            str(data),
            "--output_dir",
            str(out),
            "--max_steps",
            "3",
            "--batch_size",
            "4",
            "--tracker",
            "none",
            "--eval_pairs",
            "4",
        ]
    )
    tuned = ScOT.from_pretrained(out / "model")
    base = ScOT.from_pretrained(fixtures_dir / "scot-tiny")
    assert tuned.config.channel_names == base.config.channel_names == ["rho", "u", "v", "p"]
    changed = [k for k, v in base.state_dict().items() if not torch.equal(v, tuned.state_dict()[k])]
    assert len(changed) == len(base.state_dict())  # every tensor was trained
    stats = open_source(data).info  # the config now describes the data the weights were tuned on
    assert tuned.config.input_mean == pytest.approx(stats.mean) and tuned.config.time_scale == stats.time_scale
