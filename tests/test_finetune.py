"""Fine-tuning strategies on tiny models and real generated data: what trains, what stays frozen, that the loss
falls, that the refiner starts from the base prediction, that adapters round-trip, and the evaluation outputs."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, multiprocess
from safetensors.torch import load_file

from finetune import load_model
from finetune.config import FinetuneArguments, check
from finetune.refiner import (
    NavierStokesResidual,
    RefinerHead,
    cache_features,
    relative_sobolev_loss,
    vorticity_residual,
)
from finetune.strategies import parameter_roles
from finetune.surgery import predict_increments
from finetune.trainer import Finetuner
from foundation import ScOT, ScOTConfig
from foundation.data import All2AllPairs, open_source
from foundation.pdes import generate
from foundation.pdes.specs import parse_generator_spec
from pretrain.config import DataArguments, ModelArguments, TrainArguments


@pytest.fixture(scope="module")
def ac_file(tmp_path_factory):
    """A PDE the base never saw: Allen-Cahn (u), 20 trajectories of 5 snapshots at 16 x 16."""
    path = tmp_path_factory.mktemp("data") / "allen-cahn.h5"
    return generate("allen-cahn", 20, 16, path, snapshots=5, seed=3, progress=False, eps=0.08)


def arguments(base_dir, ac_file, out, strategy="full", steps=30, **tune):
    return (
        ModelArguments(init_from=str(base_dir)),
        DataArguments(datasets=[str(ac_file)], eval_pairs=32),
        TrainArguments(
            output_dir=str(out),
            max_steps=steps,
            batch_size=8,
            learning_rate=tune.pop("learning_rate", 5e-4),
            warmup_steps=2,
            eval_every=0,
            save_every=0,
            tracker="none",
            resume=False,
        ),
        FinetuneArguments(strategy=strategy, **tune),
    )


def run(base_dir, ac_file, out, strategy="full", steps=30, **tune):
    return Finetuner(*arguments(base_dir, ac_file, out, strategy, steps, **tune))


HEADS = ("base_model.model.embeddings.patch_embeddings", "base_model.model.patch_recovery")


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def losses(out) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "losses.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_full_strategy_uses_three_learning_rates_and_trains_everything(base_dir, ac_file, tmp_path, capsys):
    trainer = run(base_dir, ac_file, tmp_path, "full", steps=40, learning_rate=1e-3, head_learning_rate=3e-3)
    assert "parameters train (100.00%)" in capsys.readouterr().out
    groups = trainer.optimizer.param_groups
    assert [g["initial_lr"] for g in groups] == [1e-3, 3e-3, 5e-4]
    roles = parameter_roles(trainer.model)
    assert len(roles["time_norm"]) > 0 and len(roles["head"]) == 5  # embed w+b, recovery w+b, mixup w
    assert sum(len(g["params"]) for g in groups) == len(list(trainer.model.parameters()))
    # channel surgery: the data's u in and out; the rows of the base's u kept by name
    assert trainer.config.channel_names == ["u"] and trainer.config.output_channel_names == ["u"]
    base = ScOT.from_pretrained(base_dir)
    assert torch.equal(
        trainer.model.embeddings.patch_embeddings.projection.weight[:, 0],
        base.embeddings.patch_embeddings.projection.weight[:, 1],
    )
    before = snapshot(trainer.model)
    result = trainer.train()
    after = snapshot(trainer.model)
    # (the coarsest stages see a 1 x 1 token grid here: their q, k and position bias get no gradient at all)
    assert all(
        not torch.equal(before[k], after[k]) for k in before if k.startswith(("patch_recovery", "encoder.layers.0"))
    )
    curve = losses(tmp_path)
    assert np.mean(curve[-5:]) < 0.9 * np.mean(curve[:5])
    assert result["parameters"]["trainable"] == result["parameters"]["total"]
    evaluation = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert evaluation["split"] == "test" and evaluation["median_rel_l1_physical/u"] > 0


def test_learn_residual_starts_as_persistence_and_exports_a_model_that_keeps_it(base_dir, ac_file, tmp_path):
    trainer = run(base_dir, ac_file, tmp_path, "full", steps=30, learn_residual=True)
    model = trainer.model
    pairs = All2AllPairs(open_source(ac_file), "val")
    x = torch.stack([pairs[i]["pixel_values"] for i in range(4)])  # real fields (the model resamples them)
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    with torch.no_grad():  # step 0: the recovery's projection is zero, the output is the input's u
        torch.testing.assert_close(model(pixel_values=x, time=t).output, x[:, :1], atol=1e-5, rtol=0)
    assert model.config.learn_residual and not ScOT.from_pretrained(base_dir).config.learn_residual
    trainer.train()
    curve = losses(tmp_path)
    assert np.mean(curve[-5:]) < 0.9 * np.mean(curve[:5])
    exported = load_model(tmp_path / "model")
    assert exported.config.learn_residual
    with torch.no_grad():
        out = exported(pixel_values=x, time=t).output
        torch.testing.assert_close(out, trainer.model(pixel_values=x, time=t).output)
        assert (out - x[:, :1]).abs().amax() > 1e-4  # an increment (step 0 met persistence within 1e-5)
    assert exported.patch_recovery.projection.weight.abs().amax() > 0
    with pytest.raises(ValueError, match=r"first inputs must be the outputs"):
        names = dict(num_channels=2, num_out_channels=1, channel_names=["u", "v"], output_channel_names=["v"])
        predict_increments(ScOT(ScOTConfig.from_preset("tiny", image_size=16, **names)))
    with pytest.raises(ValueError, match="learn_residual is an scOT option"):
        check(FinetuneArguments(strategy="fno", learn_residual=True))


@pytest.mark.slow
def test_head_strategy_freezes_the_body(base_dir, ac_file, tmp_path):
    trainer = run(base_dir, ac_file, tmp_path, "head", steps=40, head_learning_rate=2e-2)
    before = snapshot(trainer.model)
    trainable = {k for k, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable == {
        "embeddings.patch_embeddings.projection.weight",
        "embeddings.patch_embeddings.projection.bias",
        "patch_recovery.projection.weight",
        "patch_recovery.projection.bias",
        "patch_recovery.mixup.weight",
    }
    result = trainer.train()
    after = snapshot(trainer.model)
    for k in before:
        assert torch.equal(before[k], after[k]) == (k not in trainable), k
    assert 0 < result["parameters"]["trainable_fraction"] < 0.01
    curve = losses(tmp_path)
    assert np.mean(curve[-5:]) < 0.9 * np.mean(curve[:5])


@pytest.mark.slow
def test_lora_trains_adapters_only_and_round_trips(base_dir, ac_file, tmp_path):
    trainer = run(base_dir, ac_file, tmp_path, "lora", steps=40, head_learning_rate=3e-3, lora_rank=4)
    base_names = {k for k, _ in ScOT.from_pretrained(base_dir).named_parameters()}
    frozen_before = {
        k: v for k, v in snapshot(trainer.model).items() if "lora_" not in k and "modules_to_save" not in k
    }
    trainable = [k for k, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in k or "modules_to_save" in k for k in trainable)
    assert any(".query.lora_A" in k for k in trainable) and any("intermediate.dense.lora_B" in k for k in trainable)
    result = trainer.train()
    assert 0 < result["parameters"]["trainable_fraction"] < 0.2
    for k, v in snapshot(trainer.model).items():
        if k in frozen_before:
            assert torch.equal(v, frozen_before[k]), k  # the pretrained weights never move
    curve = losses(tmp_path)
    assert np.mean(curve[-5:]) < 0.9 * np.mean(curve[:5])

    adapter = tmp_path / "adapter"
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
    saved = load_file(adapter / "adapter_model.safetensors")
    assert any("lora_A" in k for k in saved)
    body = [k for k in saved if k.split("base_model.model.")[-1] in base_names and not k.startswith(HEADS)]
    assert not body  # adapters and the fully trained embedding/recovery; never the frozen body
    x = torch.randn(3, 1, 16, 16)
    t = torch.tensor([0.25, 0.5, 1.0])
    with torch.no_grad():
        trained = trainer.model.eval()(pixel_values=x, time=t).output
        from_adapter = load_model(adapter)(pixel_values=x, time=t).output  # base -> surgery -> adapters, merged
        merged = ScOT.from_pretrained(tmp_path / "model")(pixel_values=x, time=t).output
    assert torch.allclose(from_adapter, trained, atol=1e-5)
    assert torch.allclose(merged, trained, atol=1e-5)

    from model_cards.publish import prepare_release

    files = prepare_release(tmp_path, tmp_path / "release", "org/allen-cahn-lora")
    assert "adapter" in files and (tmp_path / "release" / "adapter" / "adapter_model.safetensors").exists()
    card = (tmp_path / "release" / "README.md").read_text()
    assert f"| `{ac_file}` |" in card  # the training-data table: LoRA's export writes training_data.json too


def test_refiner_head_reproduces_the_base_prediction_at_step_zero(base_dir, ac_file):
    model = ScOT.from_pretrained(base_dir).eval()
    for learn_residual in (False, True):
        model.config.learn_residual = learn_residual
        source = open_source(str(ac_file))
        pairs = All2AllPairs(source, "train")
        x = torch.stack([pairs[k]["pixel_values"] for k in range(6)])
        x = torch.cat([x, x, x, x], 1)  # 4 channels, as the base expects
        t = torch.stack([pairs[k]["time"] for k in range(6)])
        data = [{"pixel_values": x[k], "time": t[k], "labels": x[k], "channel_mask": torch.ones(4)} for k in range(6)]
        for native in (16, 24):  # the model's grid, and a finer native grid (Fourier-resampled in and out)
            xs = torch.nn.functional.interpolate(x, size=(native, native), mode="bilinear") if native != 16 else x
            items = [{**d, "pixel_values": xs[k], "labels": xs[k]} for k, d in enumerate(data)]
            cache = cache_features(model, items, list(range(6)), batch_size=4)
            head = RefinerHead(model, (native, native))
            with torch.no_grad():
                ours = head(cache.features, cache, torch.arange(6))
                reference = model(pixel_values=xs, time=t).output
            assert ours.shape == reference.shape
            assert torch.allclose(ours, reference, atol=1e-5), (learn_residual, native)
    model.config.learn_residual = False


@pytest.mark.slow
def test_refiner_strategy_freezes_the_body_and_improves_validation(base_dir, ac_file, tmp_path):
    trainer = run(
        base_dir,
        ac_file,
        tmp_path,
        "refiner",
        steps=30,
        refiner_steps=60,
        refiner_eval_every=5,
        refiner_patience=20,
        refiner_learning_rate=3e-3,
        refiner_bias_learning_rate=3e-2,
    )
    result = trainer.train()
    summary = result["refiner"]
    assert summary["val_median_rel_l1_after"] < summary["val_median_rel_l1_before"]
    history = json.loads((tmp_path / "refiner_history.json").read_text())
    fit_loss = [v for _, v in history["loss"]]
    assert np.mean(fit_loss[-10:]) < np.mean(fit_loss[:10])
    refined = load_model(tmp_path / "model")
    before = ScOT.from_pretrained(tmp_path / "model-before-refiner")
    body = {k: v for k, v in before.state_dict().items() if not k.startswith("patch_recovery")}
    assert all(torch.equal(v, refined.model.state_dict()[k]) for k, v in body.items())  # the body is frozen
    assert summary["head_parameters"] < 0.01 * result["parameters"]["total"]
    assert "before_refiner" in result["evaluation"]
    assert (tmp_path / "evaluation" / "before-refiner" / "evaluation.json").exists()
    # the evaluation feeds the model card, and the release carries the head
    from model_cards.publish import prepare_release

    files = prepare_release(tmp_path, tmp_path / "release", "org/ac-refined")
    assert {"spectral_head.safetensors", "spectral_head.json", "evaluation", "README.md"} <= set(files)
    card = (tmp_path / "release" / "README.md").read_text()
    assert "Held-out evaluation (test split" in card and "Spectral-Refiner: median relative L1" in card
    assert 'finetune.load_model("org/ac-refined")' in card and "base_model:" not in card  # a local path is no id


def test_relative_sobolev_loss_is_zero_for_the_truth_and_weighs_low_modes_more():
    n = 32
    x = torch.arange(n) / n
    low = torch.sin(2 * math.pi * x)[:, None].expand(n, n)
    high = torch.sin(2 * math.pi * 8 * x)[:, None].expand(n, n)
    y = (low + high)[None, None]
    mask = torch.ones(1, 1)
    assert relative_sobolev_loss(y, y, mask, 1.0, 0.03, (1.0, 1.0)) == 0
    err_low = relative_sobolev_loss(y + 0.1 * low, y, mask, 1.0, 0.03, (1.0, 1.0))
    err_high = relative_sobolev_loss(y + 0.1 * high, y, mask, 1.0, 0.03, (1.0, 1.0))
    assert err_low > 30 * err_high  # (alpha + (2 pi 8)^2) / (alpha + (2 pi)^2) = 64


@pytest.fixture(scope="module")
def ns_file(tmp_path_factory):
    """Navier-Stokes with Kolmogorov forcing, snapshots close in time (finite differences resolve w_t)."""
    path = tmp_path_factory.mktemp("ns") / "ns.h5"
    return generate("ns-kf", 2, 32, path, snapshots=21, seed=0, progress=False, t_end=0.02)


def test_vorticity_residual_vanishes_on_solver_data_and_not_on_wrong_physics(ns_file):
    source = open_source(str(ns_file))
    info = source.info
    lengths = (1.0, 1.0)
    times = np.asarray(info.times)
    dt = times[11] - times[9]
    s = [torch.from_numpy(source.read(0, k)).double() for k in (9, 10, 11)]
    forcing = torch.from_numpy(source.read_static(0))[0].double()
    u, v = s[1][0][None], s[1][1][None]
    u_t, v_t = ((s[2][0] - s[0][0]) / dt)[None], ((s[2][1] - s[0][1]) / dt)[None]
    nu = info.pde["viscosity"]
    r = vorticity_residual(u, v, u_t, v_t, nu, forcing[None], lengths)
    r_no_forcing = vorticity_residual(u, v, u_t, v_t, nu, None, lengths)
    r_swapped = vorticity_residual(v, u, v_t, u_t, nu, forcing[None], lengths)  # wrong orientation
    rms = lambda a: a.square().mean().sqrt()  # noqa: E731
    # w_t and u.grad w are each ~50 here and cancel; the residual is what the time stepping left
    w_t = vorticity_residual(u, v, u_t, v_t, 0.0, None, lengths) - vorticity_residual(
        u, v, 0 * u_t, 0 * v_t, 0.0, None, lengths
    )
    size = rms(w_t)
    assert rms(r) < 2e-3 * size
    assert rms(r) < rms(r_no_forcing)  # the forcing from the static field is counted, with the right sign
    assert rms(r_swapped) > 0.5 * size


def test_time_derivative_through_the_lead_time_matches_finite_differences(base_dir):
    model = ScOT.from_pretrained(base_dir).eval()
    x = torch.randn(2, 4, 16, 16)
    t = torch.tensor([0.3, 0.7])
    items = [{"pixel_values": x[k], "time": t[k], "labels": x[k], "channel_mask": torch.ones(4)} for k in range(2)]
    cache = cache_features(model, items, [0, 1], with_tangents=True)
    head = RefinerHead(model, (16, 16))
    rows = torch.arange(2)
    with torch.no_grad():
        d_out = head(cache.tangents, cache, rows, tangent=True)
        eps = 1e-2
        fd = (model(pixel_values=x, time=t + eps).output - model(pixel_values=x, time=t - eps).output) / (2 * eps)
    assert (d_out - fd).abs().max() < 1e-2 * fd.abs().max()


def test_residual_mode_refines_without_labels(ns_file, tmp_path):
    torch.manual_seed(0)
    source = open_source(str(ns_file))
    config = ScOTConfig.from_preset(
        "tiny",
        image_size=32,
        channel_names=["u", "v", "f"],
        output_channel_names=["u", "v"],
        input_mean=list(source.info.mean) + list(source.info.static_mean),
        input_std=list(source.info.std) + list(source.info.static_std),
        output_mean=list(source.info.mean),
        output_std=list(source.info.std),
        time_scale=source.info.time_scale,
    )
    model = ScOT(config).eval()
    pairs = All2AllPairs(source, "train", lead_steps=[1, 2])
    cache = cache_features(model, pairs, list(range(0, len(pairs), 3)), with_tangents=True)
    loss_fn = NavierStokesResidual(config, source.info, 1.0, 10**-1.5, config.channel_names)
    head = RefinerHead(model, (32, 32))
    optimizer = torch.optim.Adam(head.param_groups(1e-3, 1e-2, True))
    rows = torch.arange(len(cache))
    values = []
    for _ in range(30):
        out = head(cache.features, cache, rows)
        d_out = head(cache.tangents, cache, rows, tangent=True)
        loss = loss_fn(out, d_out, cache.inputs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        values.append(loss.item())
    assert values[0] == pytest.approx(1.0)  # normalised by the base model's residual
    assert values[-1] < 0.5 * values[0]


def test_generator_specs_and_config_errors():
    family, settings, params = parse_generator_spec("pde:wave-gauss:n=8,resolution=16,seed=2,cfl=0.4")
    assert family == "wave-gauss" and settings["n"] == 8 and settings["seed"] == 2 and params == {"cfl": 0.4}
    with pytest.raises(ValueError, match="unknown PDE family 'wave-gaus'"):
        parse_generator_spec("pde:wave-gaus:n=8")
    from finetune.config import check

    with pytest.raises(ValueError, match="--strategy must be one of"):
        check(FinetuneArguments(strategy="lorra"))


@pytest.mark.slow
def test_cli_fine_tunes_evaluates_and_refuses_bad_input(base_dir, tmp_path):
    spec = "pde:wave-gauss:n=12,resolution=16,snapshots=4,seed=5"
    out = tmp_path / "run"
    from finetune.__main__ import main as finetune_main
    from finetune.evaluate import main as evaluate_main

    argv = ["--init_from", str(base_dir), "--datasets", spec, "--strategy", "head", "--max_steps", "5"]
    argv += ["--batch_size", "4", "--output_dir", str(out), "--tracker", "none", "--eval_pairs", "8"]
    assert finetune_main(argv) == 0  # in this process: the CLI's parse -> build -> run, without interpreter start-up
    assert (tmp_path / "data" / "wave-gauss-n12-r16-s4-seed5.h5").exists()  # generated once, beside the runs

    eval_out = tmp_path / "eval"
    argv = ["--model", str(out / "model"), "--datasets", spec, "--out", str(eval_out), "--max_pairs", "16"]
    assert evaluate_main(argv + ["--rollout_trajectories", "2"]) == 0
    result = json.loads((eval_out / "evaluation.json").read_text())
    for key in (
        "median_rel_l1_physical/u",
        "mean_rel_l1_physical/u",
        "median_rel_l2_physical/u",
        "mean_rel_l2_physical/u",
    ):
        assert 0 < result[key] < 1e4
    assert set(result["by_lead_time"]) == {"0.333", "0.667", "1.000"}
    assert result["rollout"]["1.000"]["direct"] > 0 and result["rollout"]["1.000"]["autoregressive"] > 0
    # one-step rollout is the direct prediction
    assert result["rollout"]["0.333"]["direct"] == pytest.approx(result["rollout"]["0.333"]["autoregressive"])
    assert [b["band"] for b in result["by_frequency_band"].values()] == ["low", "mid", "high"]
    for name in ("samples.png", "rollout.png", "spectra.png"):
        assert (eval_out / name).stat().st_size > 1000


def test_cli_bad_input_is_one_line(base_dir, tmp_path, capsys):
    from finetune.__main__ import main as finetune_main
    from finetune.evaluate import main as evaluate_main

    spec = "pde:wave-gauss:n=12,resolution=16,snapshots=4,seed=5"
    assert evaluate_main(["--model", str(tmp_path / "nope"), "--datasets", spec]) == 2  # offline: HF_HUB_OFFLINE=1
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as stop:
        finetune_main(["--init_from", str(base_dir), "--datasets", spec, "--strategie", "head"])
    assert stop.value.code == 2 and "did you mean --strategy" in capsys.readouterr().err


def test_recipes_parse():
    from finetune.config import parse_args as parse_finetune
    from finetune.study import StudyArguments

    for recipe in sorted((REPO_ROOT / "launch" / "recipes").glob("finetune-*.yaml")):
        model, data, train, tune = parse_finetune(["--config", str(recipe), "--init_from", "some/model"])
        assert model.init_from == "some/model" and data.datasets and tune.strategy in recipe.stem
    from pretrain.config import parse_dataclasses

    classes = (ModelArguments, DataArguments, TrainArguments, FinetuneArguments, StudyArguments)
    recipe = ["--config", str(REPO_ROOT / "launch" / "recipes" / "study.yaml")]
    *_, study, _ = parse_dataclasses(classes, recipe, sections=("finetune", "study"))
    assert study.n == [2, 4, 8, 16, 32]


def test_power_law_fit_and_gains_are_exact_on_synthetic_curves():
    from finetune.gains import fit_power_law, gains

    ns = [2, 4, 8, 16]
    scratch = [50.0 * n**-0.5 for n in ns]
    finetuned = [20.0 * n**-0.5 for n in ns]
    c, a = fit_power_law(ns, scratch)
    assert c == pytest.approx(50.0) and a == pytest.approx(0.5)
    rows = gains(ns, finetuned, scratch)
    assert all(r["accuracy_gain"] == pytest.approx(2.5) for r in rows)
    # scratch needs (50 / (20 n^-0.5))^2 = 6.25 n trajectories to match: efficiency gain 6.25
    assert all(r["efficiency_gain"] == pytest.approx(6.25) for r in rows)
    assert rows[0]["extrapolated"] is False and rows[-1]["extrapolated"] is True


@pytest.mark.slow
def test_study_runs_finetuned_and_scratch_per_n(base_dir, ac_file, tmp_path):
    from finetune.study import StudyArguments, run_study

    args = (
        ModelArguments(init_from=str(base_dir)),
        DataArguments(datasets=[str(ac_file)], eval_pairs=16),
        TrainArguments(
            output_dir=str(tmp_path),
            max_steps=4,
            batch_size=8,
            warmup_steps=2,
            eval_every=0,
            save_every=0,
            tracker="none",
            resume=False,
        ),
        FinetuneArguments(strategy="full", eval_max_pairs=16, eval_rollout_trajectories=1),
    )
    report = run_study(*args, StudyArguments(n=[2, 6]), log=lambda *_: None)
    assert report["n"] == [2, 6] and len(report["finetuned"]) == len(report["scratch"]) == 2
    assert set(report["fit"]) == {"finetuned", "scratch"} and len(report["gains"]) == 2
    # the study is the benchmark's task "allen-cahn" (the file's stem) with two methods: its cells are run folders
    scratch = tmp_path / "allen-cahn" / "scratch" / "n2-seed0-lr0.002-steps4"
    run_args = json.loads((scratch / "run_args.json").read_text())
    assert run_args["train"]["learning_rate"] == 2e-3 and run_args["train"]["max_steps"] == 4
    (cell,) = (tmp_path / "allen-cahn" / "finetuned").glob("n6-seed0-lr*")
    result = json.loads((cell / "result.json").read_text())
    assert (
        result["from_scratch"] is False
        and result["evaluation"]["median_rel_l1_physical/mean"] == report["finetuned"][1]
    )
    assert "| 2 |" in (tmp_path / "study.md").read_text() and (tmp_path / "study.png").stat().st_size > 1000


def _launch(args: list[str], accelerate_config: str | None = None, cwd=REPO_ROOT) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO_ROOT)}
    launcher = [sys.executable]
    if accelerate_config:
        config = str(REPO_ROOT / "launch" / "accelerate" / accelerate_config)
        launcher += ["-m", "accelerate.commands.launch", "--config_file", config]
    cmd = launcher + ["-m", "finetune", *args, "--tracker", "none", "--batch_size", "4", "--eval_pairs", "8"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@multiprocess
def test_two_process_refiner_under_accelerate(base_dir, ac_file, tmp_path):
    out = tmp_path / "ddp"
    args = ["--init_from", str(base_dir), "--datasets", str(ac_file), "--output_dir", str(out)]
    args += ["--strategy", "refiner", "--max_steps", "3", "--refiner_steps", "10", "--refiner_eval_every", "5"]
    proc = _launch(args, "cpu-2proc-ddp.yaml")
    assert "2 process(es), MULTI_CPU" in proc.stdout + proc.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["processes"] == 2 and result["refiner"]["steps_run"] == 10
    refined = load_model(out / "model")
    assert refined.head.size == (16, 16) and (out / "evaluation" / "evaluation.json").exists()


@pytest.mark.slow
def test_published_poseidon_layout_fine_tunes_onto_new_channels(tmp_path):
    """A checkpoint in the published Poseidon layout (rho, u, v, p) fine-tuned on waves (u and the static c)."""
    from conftest import fixture_folder

    from finetune.__main__ import main

    published = fixture_folder("scot-mini")  # the published layout, kept with the tests
    data = generate("wave-gauss", 10, 32, tmp_path / "wave.h5", snapshots=4, seed=0, progress=False)
    out = tmp_path / "ft"
    argv = ["--init_from", str(published), "--datasets", str(data), "--output_dir", str(out)]
    argv += ["--strategy", "head", "--max_steps", "3", "--tracker", "none", "--batch_size", "4", "--eval_pairs", "8"]
    assert main(argv) == 0
    tuned = ScOT.from_pretrained(out / "model")
    base = ScOT.from_pretrained(published)
    assert tuned.config.channel_names == ["u", "c"] and tuned.config.output_channel_names == ["u"]
    body = [k for k in base.state_dict() if not k.startswith(("embeddings.patch_embeddings", "patch_recovery"))]
    assert all(torch.equal(base.state_dict()[k], tuned.state_dict()[k]) for k in body)  # head-only: body intact


@pytest.mark.slow
def test_residual_refiner_through_the_finetuner(base_dir, tmp_path):
    data = generate("ns-kf", 10, 32, tmp_path / "nskf.h5", snapshots=4, seed=1, progress=False, t_end=0.1)
    trainer = Finetuner(
        ModelArguments(init_from=str(base_dir)),
        DataArguments(datasets=[str(data)], eval_pairs=8),
        TrainArguments(output_dir=str(tmp_path / "run"), max_steps=0, tracker="none", resume=False),
        FinetuneArguments(
            strategy="refiner",
            refiner_loss="residual",
            refiner_steps=20,
            refiner_batch_size=16,
            refiner_eval_every=5,
            refiner_patience=100,
        ),
    )
    assert trainer.config.channel_names == ["u", "v", "f"]  # the forcing is a static input
    result = trainer.train()
    history = json.loads((tmp_path / "run" / "refiner_history.json").read_text())
    assert result["refiner"]["loss"] == "residual" and history["loss"][0][1] == pytest.approx(1.0, rel=0.5)
    assert min(v for _, v in history["loss"]) < history["loss"][0][1]


@pytest.mark.slow
def test_steady_problem_is_one_step_of_lead_time_one(base_dir, tmp_path):
    """Poisson (static source f -> solution u): inputs are the static field, one pair per sample at lead time 1."""
    data = generate("poisson-gauss", 20, 16, tmp_path / "poisson.h5", seed=0, progress=False)
    trainer = run(base_dir, data, tmp_path / "run", "full", steps=5)
    assert trainer.config.channel_names == ["f"] and trainer.config.output_channel_names == ["u"]
    assert {float(trainer.train_set[k]["time"]) for k in range(len(trainer.train_set))} == {1.0}
    result = trainer.train()
    evaluation = json.loads((tmp_path / "run" / "evaluation" / "evaluation.json").read_text())
    assert set(evaluation["by_lead_time"]) == {"1.000"} and evaluation["rollout"] == {}
    assert result["evaluation"]["median_rel_l1_physical/u"] > 0


@multiprocess
def test_lora_under_deepspeed_zero3_two_processes(base_dir, ac_file, tmp_path):
    """ZeRO-3 partitions weights at load time: surgery, the adapter export and the one-rank evaluation must not.

    Launched from another directory than the repository (cwd = tmp_path, a relative --output_dir): the accelerate
    config names its DeepSpeed JSON relative to the repository, and that must not matter.
    """
    out = tmp_path / "z3"
    args = ["--init_from", str(base_dir), "--datasets", str(ac_file), "--output_dir", "z3"]
    proc = _launch(args + ["--strategy", "lora", "--max_steps", "3"], "cpu-2proc-zero3.yaml", cwd=tmp_path)
    assert "2 process(es), DEEPSPEED" in proc.stdout + proc.stderr
    result = json.loads((out / "result.json").read_text())
    assert 0 < result["parameters"]["trainable"] < result["parameters"]["total"]  # counted before partitioning
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([0.25, 1.0])
    with torch.no_grad():
        from_adapter = load_model(out / "adapter")(pixel_values=x, time=t).output
        merged = load_model(out / "model")(pixel_values=x, time=t).output
    assert torch.allclose(from_adapter, merged, atol=1e-5)


def test_head_warmup_holds_the_body_one_step_pairs_and_a_new_channel(base_dir, ac_file, tmp_path):
    """--head_warmup_steps holds body and time norms while the head trains; --lead_steps 1 trains on one-step
    pairs only; --channel_map u= starts u blind; the validation curve is written (validation.jsonl)."""
    args = arguments(base_dir, ac_file, tmp_path, "full", steps=4, head_warmup_steps=2, channel_map=["u="])
    args[1].lead_steps, args[2].eval_every = [1], 2
    trainer = Finetuner(*args)
    model = trainer.run.model
    assert model.embeddings.patch_embeddings.projection.weight[:, 0].abs().max() == 0  # u: a new channel
    pairs = trainer.run.data.train_set.parts[0]
    assert set((pairs.pattern[:, 1] - pairs.pattern[:, 0]).tolist()) == {1}
    start, seen = snapshot(model), {}

    def watch(state):
        seen[state.step] = snapshot(model)

    trainer.train(callbacks=[watch])
    roles = parameter_roles(model)
    body = [name for name, p in model.named_parameters() if any(p is q for q in roles["body"])]
    head = [name for name, p in model.named_parameters() if any(p is q for q in roles["head"])]
    assert all(torch.equal(seen[2][k], start[k]) for k in body)  # held for two steps
    assert any(not torch.equal(seen[2][k], start[k]) for k in head)
    assert any(not torch.equal(seen[4][k], start[k]) for k in body)  # then it trains
    curve = [json.loads(line) for line in (tmp_path / "validation.jsonl").read_text().splitlines()]
    assert [e["step"] for e in curve] == [2, 4] and all(e["median_rel_l1_normalised/mean"] > 0 for e in curve)
