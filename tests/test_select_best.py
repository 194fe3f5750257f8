"""--select_best (Poseidon's rule: test the lowest-validation weights): on real tiny pretraining runs whose validation
curve goes up and down (a constant, high learning rate), the exported model is the curve's argmin step (the final
step included) and reproduces its value; without the flag the last step is exported; the option's errors; a run
killed after a best was saved resumes to the uninterrupted run's selection; the strictly-lower rule and the record
that survives a kill between its two writes; the FNO baseline through the fine-tuning strategy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from foundation import ScOT
from foundation.evaluation import pair_errors
from foundation.pdes import generate
from pretrain.config import DataArguments, ModelArguments, OptionError, TrainArguments
from pretrain.selection import SELECTION_METRIC, BestWeights, refuse_partitioned

STEPS = 9  # this seed's curve: lowest at step 8, up at step 9 (the restore is exercised)


class _Killed(Exception):
    """Raised by a callback to stop an in-process run after a step, as a kill would (no export)."""


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    return generate("ns-sines", 6, 16, folder / "ns.h5", snapshots=4, seed=0, batch=6, progress=False)


def _pretrainer(data: Path, out: Path, **train):
    """A tiny 9-step pretraining at a constant 3e-2 (its validation curve is not monotone), validated every step,
    a checkpoint every 4 steps."""
    from pretrain.trainer import Pretrainer

    options = dict(max_steps=STEPS, batch_size=4, learning_rate=3e-2, min_lr_ratio=1.0, warmup_steps=1)
    options |= dict(eval_every=1, save_every=4, tracker="none", select_best=True)
    args = TrainArguments(output_dir=str(out), **(options | train))
    return Pretrainer(ModelArguments(preset="tiny"), DataArguments(datasets=[str(data)], eval_pairs=8), args)


def _train(data: Path, out: Path, killed_after: int | None = None, **train):
    trainer = _pretrainer(data, out, **train)

    def kill(state) -> None:
        if killed_after is not None and state.step >= killed_after:
            raise _Killed

    try:
        trainer.train(callbacks=[kill])
    except _Killed:
        pass
    return trainer


def _curve(out: Path) -> dict[int, float]:
    lines = (out / "validation.jsonl").read_text().splitlines()
    return {e["step"]: e[SELECTION_METRIC] for e in map(json.loads, lines)}


def _exported_value(trainer, folder: Path) -> float:
    """The selection metric of the exported model, evaluated afresh on the run's validation pairs."""
    run = trainer.run
    model = ScOT.from_pretrained(folder).eval()
    val_set = run.data.val_set
    n = min(run.data_args.eval_pairs, len(val_set))
    picks = np.linspace(0, len(val_set) - 1, n).round().astype(int)
    with torch.no_grad():
        table = pair_errors(model, val_set, picks, run.args.batch_size, "normalised", config=model.config)
    return table.summary(run.group_names, "normalised", stats=("median",))[SELECTION_METRIC]


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """The uninterrupted --select_best run."""
    out = tmp_path_factory.mktemp("straight") / "run"
    return _train(data, out), out


@pytest.mark.slow
def test_the_exported_weights_are_the_curves_argmin_and_reproduce_its_value(straight):
    trainer, out = straight
    curve = _curve(out)
    assert sorted(curve) == list(range(1, STEPS + 1))  # every step, the final one (the last weights) included
    best = min(curve, key=curve.get)
    assert best < STEPS, f"the curve should rise after its minimum for this test to mean something: {curve}"
    metrics = json.loads((out / "metrics.json").read_text())
    result = json.loads((out / "result.json").read_text())
    assert metrics["step"] == STEPS and metrics["selected_step"] == best
    assert metrics["selected_by"] == f"lowest validation {SELECTION_METRIC}"
    assert (result["selected_step"], result["selected_by"]) == (best, metrics["selected_by"])
    assert json.loads((out / "best" / "best.json").read_text()) == {
        "step": best,
        "metric": SELECTION_METRIC,
        "value": curve[best],
    }
    assert math.isclose(metrics[SELECTION_METRIC], curve[best], rel_tol=1e-4)  # recomputed on the restored weights
    assert math.isclose(_exported_value(trainer, out / "model"), curve[best], rel_tol=1e-4)
    assert curve[STEPS] > curve[best]  # the curve's end is the last weights' validation, not the exported one's


@pytest.mark.slow
def test_without_the_flag_the_last_step_is_exported_and_training_is_unchanged(data, straight, tmp_path):
    _, selected = straight
    out = tmp_path / "run"
    _train(data, out, select_best=False)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["step"] == STEPS and "selected_step" not in metrics and "selected_by" not in metrics
    assert "selected_step" not in json.loads((out / "result.json").read_text())
    assert not (out / "best").exists()
    exported = load_file(out / "model" / "model.safetensors")
    last = load_file(out / "checkpoints" / f"step-{STEPS:07d}" / "model.safetensors")
    assert exported.keys() == last.keys() and all(torch.equal(exported[k], last[k]) for k in last)
    # the selection only watches: the same losses and the same validation curve as the --select_best run
    assert (out / "losses.jsonl").read_text() == (selected / "losses.jsonl").read_text()
    assert _curve(out) == _curve(selected)


def test_select_best_needs_validations_and_is_refused_under_zero3(tmp_path, capsys):
    with pytest.raises(OptionError, match=r"--select_best needs validations during training: set --eval_every > 0"):
        TrainArguments(select_best=True, eval_every=0)
    TrainArguments(select_best=True, eval_every=5)
    from pretrain.__main__ import main

    argv = ["--preset", "tiny", "--datasets", "x.h5", "--output_dir", str(tmp_path), "--select_best", "true"]
    with pytest.raises(SystemExit) as stopped:
        main([*argv, "--eval_every", "0"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --select_best needs validations") and "\n" not in err
    with pytest.raises(OptionError, match="--select_best is not supported under DeepSpeed ZeRO stage 3"):
        refuse_partitioned(True, 3)
    for stage in (None, 0, 1, 2):
        refuse_partitioned(True, stage)
    refuse_partitioned(False, 3)


@pytest.mark.slow
def test_a_run_killed_after_a_best_was_saved_resumes_to_the_same_selection(data, straight, tmp_path):
    _, reference = straight
    out = tmp_path / "run"
    _train(data, out, killed_after=6)  # checkpoint at step 4, a best saved after it (kept on resume)
    saved = json.loads((out / "best" / "best.json").read_text())
    assert saved["step"] in (5, 6) and not (out / "model").exists()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-0000004"]
    _train(data, out)  # the same run again: resumes from step 4
    assert _curve(out) == _curve(reference)
    for name in ("metrics.json", "best/best.json"):
        assert json.loads((out / name).read_text()) == json.loads((reference / name).read_text())
    a, b = load_file(out / "model" / "model.safetensors"), load_file(reference / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _OneProcess:
    """What `BestWeights` uses of an Accelerator, for one process and a plain module."""

    is_main_process = True

    def wait_for_everyone(self) -> None:
        pass

    def get_state_dict(self, model):
        return model.state_dict()

    def unwrap_model(self, model):
        return model


def test_only_a_strictly_lower_value_is_saved_and_a_kill_between_the_writes_is_recognised(tmp_path):
    model = torch.nn.Linear(2, 2)
    best = BestWeights(_OneProcess(), model, tmp_path / "best")
    best.start(None)
    weights = {}
    for step, value in [(1, 5.0), (2, 3.0), (3, 3.0), (4, float("nan")), (5, 4.0)]:
        with torch.no_grad():
            model.weight.fill_(step)
        weights[step] = model.state_dict()["weight"].clone()
        saved = best.observe(step, {SELECTION_METRIC: value})
        assert saved == (step in (1, 2))
    assert best.best == {"step": 2, "metric": SELECTION_METRIC, "value": 3.0}
    # a kill between the weights' rename and the record's: new weights, the previous best.json
    record = tmp_path / "best" / "best.json"
    record.write_text(json.dumps({"step": 1, "metric": SELECTION_METRIC, "value": 5.0}))
    resumed = BestWeights(_OneProcess(), model, tmp_path / "best")
    resumed.start(resumed_step=1)
    assert resumed.best["step"] == 2  # what the weights on disk are
    # the end: the last weights (step 5) validate at 4.0 > 3.0, so step 2's come back and are re-evaluated
    chosen = resumed.select({SELECTION_METRIC: 4.0}, 5, lambda: {SELECTION_METRIC: 3.0})
    assert chosen == {"selected_step": 2, "selected_by": f"lowest validation {SELECTION_METRIC}", SELECTION_METRIC: 3.0}
    assert torch.equal(model.weight, weights[2]) and resumed.last_metrics == {SELECTION_METRIC: 4.0}
    # a tie goes to the last step; a new run forgets the old best
    assert resumed.select({SELECTION_METRIC: 3.0}, 5, lambda: pytest.fail("no restore"))["selected_by"] == "last step"
    resumed.start(None)
    assert resumed.best is None and not (tmp_path / "best" / "model.safetensors").exists()


@pytest.mark.slow
def test_the_fno_baseline_exports_its_best_weights(base_dir, tmp_path):
    """--strategy fno through the fine-tuning trainer: its model is no ScOT, the selection is the same."""
    from finetune import load_model
    from finetune.config import FinetuneArguments
    from finetune.trainer import Finetuner

    data = generate("allen-cahn", 8, 16, tmp_path / "ac.h5", snapshots=4, seed=3, progress=False, eps=0.08)
    out = tmp_path / "run"
    train = TrainArguments(
        output_dir=str(out),
        max_steps=7,  # this seed's curve: lowest at step 3, up at step 7 (the restore is exercised)
        batch_size=4,
        learning_rate=1e-1,
        min_lr_ratio=1.0,
        warmup_steps=1,
        eval_every=1,
        save_every=0,
        tracker="none",
        select_best=True,
    )
    tune = FinetuneArguments(strategy="fno", fno_modes=4, fno_width=8, fno_layers=2)
    trainer = Finetuner(
        ModelArguments(init_from=str(base_dir)), DataArguments(datasets=[str(data)], eval_pairs=8), train, tune
    )
    result = trainer.train()
    curve = _curve(out)
    best = min(curve, key=curve.get)
    assert sorted(curve) == list(range(1, 8)) and best < 7, curve
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["selected_step"] == best == result["selected_step"]
    model = load_model(out / "model").eval()
    run = trainer.run
    n = min(run.data_args.eval_pairs, len(run.data.val_set))
    picks = np.linspace(0, len(run.data.val_set) - 1, n).round().astype(int)
    with torch.no_grad():
        table = pair_errors(model, run.data.val_set, picks, 4, "normalised", config=model.config)
    value = table.summary(run.group_names, "normalised", stats=("median",))[SELECTION_METRIC]
    assert math.isclose(value, curve[best], rel_tol=1e-4)
