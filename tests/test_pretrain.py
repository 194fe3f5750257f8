"""Pretraining runs for real: one process, and two processes with DeepSpeed ZeRO-2/3 on the CPU (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT, multiprocess

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
    """`python -m pretrain ARGV`, under `launcher` if given."""
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


class _Killed(Exception):
    """Raised by a callback to stop an in-process run after a step, as a kill would (no export, nothing flushed)."""


def _in_process(argv: list[str], killed_after: int | None = None) -> int:
    """`python -m pretrain ARGV` in this process (no interpreter start-up); optionally stopped after a step."""
    from pretrain.__main__ import main

    def kill(state) -> None:
        if killed_after is not None and state.step >= killed_after:
            raise _Killed

    try:
        return main(argv, callbacks=[kill])
    except _Killed:
        return -9


@pytest.mark.slow
def test_single_process_run_resumes_exactly_and_exports(corpus, tmp_path: Path, capsys):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert _in_process(_args(corpus, straight)) == 0
    assert _in_process(_args(corpus, killed), killed_after=5) == -9  # killed after step 5: last checkpoint step 3
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step-0000003"]
    capsys.readouterr()
    assert _in_process(_args(corpus, killed)) == 0
    assert "resumed from" in "".join(capsys.readouterr())
    reference, resumed = _losses(straight), _losses(killed)
    assert len(reference) == len(resumed) == 8
    assert resumed == reference  # the resumed loss curve is the uninterrupted one, bit for bit
    assert reference[-1] < reference[0]
    checkpoints = sorted(p.name for p in (straight / "checkpoints").iterdir())
    assert checkpoints == ["step-0000006", "step-0000008"]  # keep_last 2, no partial folders left
    model = ScOT.from_pretrained(straight / "model")
    assert model.config.channel_names == ["rho", "u", "v", "p"] and model.config.image_size == 16
    metrics = json.loads((straight / "metrics.json").read_text())
    assert metrics["step"] == 8 and 0 < metrics["median_rel_l1_normalised/mean"] < 1000
    final = metrics["rollout"][max(metrics["rollout"], key=float)]  # the last snapshot, from the first
    assert final["autoregressive"] > 0 and final["direct"] > 0
    assert {d["spec"] for d in json.loads((straight / "model" / "training_data.json").read_text())} == set(
        map(str, corpus)
    )


@multiprocess
def test_deepspeed_zero3_two_processes_train_resume_and_export(corpus, tmp_path: Path):
    """Two launches: an uninterrupted run, then a run resumed from the ZeRO-3 checkpoint the first one saved at step
    6 (sharded state, sampler position), which must continue the first run's loss curve."""
    import shutil

    launcher = _accelerate("cpu-2proc-zero3.yaml")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    proc = _run(_args(corpus, straight), launcher)  # 8 steps, checkpoints every 3, the last 2 kept: steps 6 and 8
    assert "2 process(es), DEEPSPEED" in proc.stdout + proc.stderr
    ckpt = straight / "checkpoints" / "step-0000008"
    assert any("zero" in p.name or "optim_states" in p.name for p in ckpt.rglob("*")), "sharded DeepSpeed state"
    shutil.copytree(straight / "checkpoints" / "step-0000006", resumed / "checkpoints" / "step-0000006")
    shutil.copy(straight / "losses.jsonl", resumed / "losses.jsonl")  # entries past the checkpoint are dropped
    proc = _run(_args(corpus, resumed), launcher)
    assert "resumed from" in proc.stdout + proc.stderr
    assert _losses(resumed) == pytest.approx(_losses(straight), rel=1e-6, abs=1e-7)
    model = ScOT.from_pretrained(straight / "model")  # consolidated from the shards (ZeRO-3) by the export
    assert all(torch.isfinite(p).all() for p in model.parameters())
    x = torch.randn(1, 4, 16, 16)
    assert model(pixel_values=x, time=torch.tensor([0.5])).output.shape == x.shape


@multiprocess
def test_two_process_ddp_rollout_training_resumes_exactly(corpus, tmp_path: Path):
    """Rollout (pushforward) training mixed with all2all pairs under DDP: the K-step curriculum (K = 1 then 2),
    input noise (the RNG state travels in the checkpoint) and the sampler continue exactly after a resume."""
    import shutil

    launcher = _accelerate("cpu-2proc-ddp.yaml")
    rollout = ["--rollout_steps", "2", "--rollout_curriculum_steps", "4", "--rollout_noise", "0.01"]
    rollout += ["--max_steps", "6", "--save_every", "2", "--eval_every", "0"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    proc = _run(_args(corpus, straight, *rollout), launcher)
    assert "2 process(es), MULTI_CPU" in proc.stdout + proc.stderr
    run_args = json.loads((straight / "run_args.json").read_text())
    assert run_args["data"]["rollout_steps"] == 2 and run_args["train"]["rollout_mode"] == "pushforward"
    shutil.copytree(straight / "checkpoints" / "step-0000004", resumed / "checkpoints" / "step-0000004")
    shutil.copy(straight / "losses.jsonl", resumed / "losses.jsonl")  # as if killed after step 4's checkpoint
    proc = _run(_args(corpus, resumed, *rollout), launcher)
    assert "resumed from" in proc.stdout + proc.stderr
    reference = _losses(straight)
    assert len(reference) == 6 and all(v is not None for v in reference)
    assert _losses(resumed) == pytest.approx(reference, rel=1e-6, abs=1e-7)


@multiprocess
def test_deepspeed_zero2_bf16_two_processes(corpus, tmp_path: Path):
    # With unrolled rollout training (two steps with gradients) next to the pairs: three forward passes with
    # gradients before each backward under ZeRO-2.
    rollout = ["--rollout_steps", "2", "--rollout_mode", "unrolled", "--rollout_weight", "0.5"]
    proc = _run(
        _args(corpus, tmp_path / "ds", "--precision", "bf16", "--max_steps", "3", "--save_every", "0", *rollout),
        _accelerate("cpu-2proc-zero2.yaml"),
    )
    assert (
        "2 process(es), DEEPSPEED" in proc.stdout + proc.stderr and "DeepSpeed bf16 engine" in proc.stdout + proc.stderr
    )
    losses = _losses(tmp_path / "ds")
    assert len(losses) == 3 and all(0 < v < 10 for v in losses)
    assert ScOT.from_pretrained(tmp_path / "ds" / "model").dtype == torch.float32  # exported in fp32


@pytest.mark.slow
def test_bf16_autocast_and_gradient_checkpointing_in_one_process(corpus, tmp_path: Path):
    single = tmp_path / "gc"
    extra = ["--precision", "bf16", "--gradient_checkpointing", "true", "--max_steps", "3"]
    assert _in_process(_args(corpus, single, *extra)) == 0
    assert all(0 < v < 10 for v in _losses(single))
    assert ScOT.from_pretrained(single / "model").dtype == torch.float32


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_every_recipe_parses_and_builds_at_tiny_size(recipe: Path):
    from pretrain.build import build_model
    from pretrain.prepared import cosine_with_warmup

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
    assert "argument --precision: invalid choice: 'fp8'" in capsys.readouterr().err


@pytest.mark.slow
def test_diverging_run_stops_with_a_clear_message_and_keeps_its_checkpoint(tmp_path: Path, capsys):
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
    assert _in_process(argv) == 3
    err = capsys.readouterr().err
    assert "2 non-finite losses in a row" in err and "Traceback" not in err
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000001"]
    assert (out / "checkpoints" / "step-0000001" / "trainer_state.json").exists()


def test_missing_dataset_is_a_one_line_error(tmp_path: Path, capsys):
    argv = ["--datasets", str(tmp_path / "nope.h5"), "--tracker", "none", "--output_dir", str(tmp_path / "run")]
    assert _in_process(argv) == 2
    err = capsys.readouterr().err
    assert "nope.h5: no such file" in err and "Traceback" not in err


def test_pretraining_generates_pde_specs_once_beside_the_run(tmp_path: Path, capsys):
    """`python -m pretrain --datasets pde:...` simulates the family into <output_dir>/../data, as fine-tuning does."""
    spec = "pde:wave-gauss:n=6,resolution=16,snapshots=3,seed=4,val=1,test=1"
    out = tmp_path / "run"
    argv = ["--preset", "tiny", "--datasets", spec, "--output_dir", str(out), "--batch_size", "4", "--max_steps", "2"]
    argv += ["--eval_pairs", "4", "--tracker", "none"]
    assert _in_process(argv) == 0, capsys.readouterr().err
    generated = tmp_path / "data" / "wave-gauss-n6-r16-s3-seed4-val1-test1.h5"
    with open_source(generated) as source:
        assert len(source.split("train")) == 4
    spec_of_data = json.loads((out / "model" / "training_data.json").read_text())[0]["spec"]
    assert spec_of_data == str(generated)  # the model records the file it trained on, not the generator string
    channels = source.info.channel_names + source.info.static_names
    assert ScOT.from_pretrained(out / "model").config.channel_names == channels


@pytest.mark.slow
def test_full_fine_tuning_of_a_published_checkpoint(tmp_path: Path):
    """`--init_from` a Poseidon-layout checkpoint continues training all weights on new data (same channels)."""
    from conftest import fixture_folder

    published = fixture_folder("scot-mini")  # the published layout, kept with the tests
    data = generate("ce-rp", 6, 32, tmp_path / "ce.h5", snapshots=4, seed=0, batch=6, progress=False)
    out = tmp_path / "ft"
    argv = ["--init_from", str(published), "--datasets", str(data), "--output_dir", str(out), "--max_steps", "3"]
    assert _in_process(argv + ["--batch_size", "4", "--tracker", "none", "--eval_pairs", "4"]) == 0
    tuned = ScOT.from_pretrained(out / "model")
    base = ScOT.from_pretrained(published)
    assert tuned.config.channel_names == base.config.channel_names == ["rho", "u", "v", "p"]
    changed = [k for k, v in base.state_dict().items() if not torch.equal(v, tuned.state_dict()[k])]
    assert len(changed) == len(base.state_dict())  # every tensor was trained
    stats = open_source(data).info  # the config now describes the data the weights were tuned on
    assert tuned.config.input_mean == pytest.approx(stats.mean) and tuned.config.time_scale == stats.time_scale


def test_no_host_sync_on_a_step_that_neither_logs_evaluates_nor_saves(corpus, tmp_path: Path):
    """Reading a tensor on the host (item, tolist, bool, float, ...) serialises a GPU pipeline: the loop may do it
    on logging, evaluation and checkpoint steps only. A TorchFunctionMode sees every such call the training code
    makes (the data pipeline, which reads numpy on the host by design, is left out)."""
    from torch.overrides import TorchFunctionMode

    from pretrain.config import DataArguments, ModelArguments, TrainArguments
    from pretrain.trainer import Pretrainer

    reads = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__}
    reads |= {torch.Tensor.__int__, torch.Tensor.__index__, torch.Tensor.cpu, torch.Tensor.numpy}

    class HostReads(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.step, self.seen = 1, []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func in reads:
                frame, data = sys._getframe(1), False
                while frame is not None and not data:
                    data = any(part in frame.f_code.co_filename for part in ("torch/utils/data", "foundation/data"))
                    frame = frame.f_back
                if not data:
                    self.seen.append((self.step, func.__name__))
            return func(*args, **(kwargs or {}))

    args = TrainArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=8,
        batch_size=4,
        log_every=4,
        eval_every=0,
        save_every=0,
        max_nonfinite_steps=100,
        warmup_steps=1,
        tracker="none",
    )
    trainer = Pretrainer(ModelArguments(preset="tiny"), DataArguments(datasets=[str(corpus[0])], eval_pairs=4), args)
    watch = HostReads()

    def next_step(state) -> None:
        watch.step = state.step + 1

    with watch:
        trainer.train(callbacks=[next_step])
    quiet_steps = {(step, name) for step, name in watch.seen if step % 4 and step <= 8}
    assert not quiet_steps, f"host reads on steps that neither log, evaluate nor save: {sorted(quiet_steps)}"
    assert {step for step, _ in watch.seen if step <= 8} == {4, 8}  # the logging steps do read: the watch works


def test_a_held_parameter_group_stays_at_zero_then_warms_up_into_the_schedule():
    from pretrain.prepared import cosine_with_warmup

    body, head = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    groups = [{"params": [body], "lr": 1.0, "hold_steps": 5}, {"params": [head], "lr": 2.0}]
    optimizer = torch.optim.SGD(groups, lr=1.0)
    scheduler = cosine_with_warmup(optimizer, warmup=2, total=20, min_ratio=0.0)
    rates = []
    for _ in range(20):
        rates.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    held, free = [r[0] for r in rates], [r[1] for r in rates]
    assert held[:5] == [0.0] * 5 and 0 < held[5] < held[6]  # held, then a fresh warm-up
    assert free[0] == 1.0 and free[1] == 2.0 and free[1] > free[10] > free[19]  # the other group: unchanged schedule
    assert held[6] == pytest.approx(free[6] / 2)  # after its warm-up, the held group is on the common schedule
