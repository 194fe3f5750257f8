"""The rollout API: `ScOT.rollout` and `foundation.evaluation.rollout_predictions` (long-horizon issue, Build 2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from foundation import ScOT, ScOTConfig
from foundation.evaluation import feed_back, rollout_predictions


def _model(**overrides) -> ScOT:
    torch.manual_seed(0)
    config = ScOTConfig.from_preset("tiny", image_size=16, time_scale=2.0, **overrides)
    model = ScOT(config).eval()
    with torch.no_grad():  # away from the near-zero initialisation: every call changes the state
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_a_rollout_of_one_direct_lead_time_is_one_call():
    model = _model(channel_names=["u", "v"], output_channel_names=["u", "v"])
    x = torch.randn(2, 2, 16, 16)
    (once,) = model.rollout(x, steps=1, lead_time=1.3)
    assert torch.equal(once, model.predict(x, 1.3))


def test_autoregressive_is_k_calls_fed_their_outputs():
    model = _model(channel_names=["u", "v"], output_channel_names=["u", "v"])
    x = torch.randn(2, 2, 16, 16)
    out = model.rollout(x, steps=3, lead_time=0.5, strategy="autoregressive")
    state = x
    for k in range(3):
        state = model.predict(state, 0.5)
        torch.testing.assert_close(out[k], state, rtol=1e-5, atol=1e-5)  # renormalising the state: rounding only


def test_jump_chains_the_largest_trained_lead_and_predicts_the_rest_directly():
    model = _model(channel_names=["u", "v"], output_channel_names=["u", "v"])
    x = model.normalize(torch.randn(1, 2, 16, 16))
    out = rollout_predictions(model, x, lead_time=0.4, steps=5)  # t = 0.4, 0.8, 1.2, 1.6, 2.0 (window: 1.0)

    def call(state, t):
        return model(pixel_values=state, time=torch.tensor([t])).output

    feed = torch.tensor([0, 1])
    after_one = feed_back(x, call(x, 1.0), feed)
    expected = [call(x, 0.4), call(x, 0.8), call(after_one, 0.2), call(after_one, 0.6), call(after_one, 1.0)]
    for k, want in enumerate(expected):
        torch.testing.assert_close(out[k], want, rtol=1e-5, atol=1e-6)


def test_static_inputs_stay_fixed_and_missing_channels_keep_their_fill():
    model = _model(channel_names=["u", "v", "forcing"], output_channel_names=["u", "v"])
    x = torch.randn(2, 3, 16, 16)
    seen = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["pixel_values"]), with_kwargs=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # the second sample lacks v: its fill stays
    rollout_predictions(model, x, lead_time=0.7, steps=4, strategy="autoregressive", channel_mask=mask)
    assert len(seen) == 4
    for inputs in seen:
        assert torch.equal(inputs[:, 2], x[:, 2])  # the forcing
        assert torch.equal(inputs[1, 1], x[1, 1])  # the missing v's fill
    assert not torch.equal(seen[-1][0, 1], x[0, 1])  # what evolves is fed back


def test_bad_rollouts_are_clear_errors():
    model = _model(channel_names=["u", "v"], output_channel_names=["u", "v"])
    x = torch.randn(1, 2, 16, 16)
    with pytest.raises(ValueError, match="strategy must be one of jump, autoregressive"):
        model.rollout(x, steps=2, lead_time=0.5, strategy="leap")
    with pytest.raises(ValueError, match="steps >= 1"):
        model.rollout(x, steps=0, lead_time=0.5)
    steady = _model(channel_names=["f"], output_channel_names=["u"])
    with pytest.raises(ValueError, match="nothing to feed back"):
        steady.rollout(torch.randn(1, 1, 16, 16), steps=2, lead_time=0.5)


def test_a_refined_models_rollout_goes_through_its_spectral_head():
    from finetune.refiner import RefinedScOT, SpectralHead

    model = _model(channel_names=["u", "v"], output_channel_names=["u", "v"])
    head = SpectralHead(2, (16, 16))
    with torch.no_grad():
        head.weight.normal_(0, 0.1)
    refined = RefinedScOT(model, head).eval()
    x = model.normalize(torch.randn(1, 2, 16, 16))
    out = rollout_predictions(refined, x, lead_time=0.5, steps=3, strategy="autoregressive")
    state = x
    with torch.no_grad():
        for k in range(3):
            y = head(model(pixel_values=state, time=torch.tensor([0.5])).output)  # the head on every step
            torch.testing.assert_close(out[k], y, rtol=1e-5, atol=1e-6)
            state = feed_back(state, y, torch.tensor([0, 1]))
    plain = rollout_predictions(model, x, lead_time=0.5, steps=3, strategy="autoregressive")
    assert not torch.allclose(out[-1], plain[-1], atol=1e-4)


def test_the_unrolled_loss_is_k_sequential_calls_and_pushforward_trains_the_last_step_only():
    from foundation.losses import relative_lp_loss, unrolled_loss

    model = _model(channel_names=["u", "v", "forcing"], output_channel_names=["u", "v"])
    model.train()
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    targets = torch.randn(2, 3, 2, 16, 16)
    t = torch.full((2,), 0.3)
    feed = torch.tensor([0, 1])

    loss = unrolled_loss(model, x, targets, t, mode="unrolled")
    state, manual = x, []
    for k in range(3):  # K sequential forward calls, fed back by hand
        y = model(pixel_values=state, time=t).output
        manual.append(relative_lp_loss(y, targets[:, k]))
        state = feed_back(state, y, feed)
    torch.testing.assert_close(loss, torch.stack(manual).mean())
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # gradients through every step, down to the input

    x.grad = None
    model.zero_grad()
    pushed = unrolled_loss(model, x, targets, t, mode="pushforward")
    pushed.backward()
    assert x.grad is None  # nothing flows into the earlier steps (nor through them to the input)
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    with torch.no_grad():
        state = x
        for _ in range(2):
            state = feed_back(state, model(pixel_values=state, time=t).output, feed)
    last = relative_lp_loss(model(pixel_values=state, time=t).output, targets[:, 2])
    torch.testing.assert_close(pushed, last)
    last.backward()  # the same gradients as training one step from the model's own 2-step state
    for mine, theirs in zip(grads, [p.grad for p in model.parameters() if p.grad is not None]):
        torch.testing.assert_close(mine, theirs)


# ------------------------------------------------------------------------------------------ rollout training data
def test_pairs_bring_rollout_sequences_of_their_trajectory(tmp_path):
    import numpy as np

    from foundation.data import All2AllPairs, open_source
    from foundation.data.source import DataError
    from foundation.pdes import generate

    path = generate("ns-sines", 2, 16, tmp_path / "ns.h5", snapshots=7, seed=0, batch=2, progress=False)
    source = open_source(path, fill_stats=True)
    pairs = All2AllPairs(source, "train", max_snapshots=5, rollout_steps=2, rollout_lead_steps=1)
    plain = All2AllPairs(source, "train", max_snapshots=5)
    times = np.asarray(source.info.times)
    for index in (0, len(pairs) - 1):  # a pair at the start, and one whose rollout must start earlier
        item, base = pairs[index], plain[index]
        torch.testing.assert_close(item["pixel_values"], base["pixel_values"])  # the pair itself is unchanged
        traj, i, _, _ = pairs.locate(index)
        start = min(i, 4 - 2)  # snapshots in use 0..4: two steps must fit
        expect = [pairs._state(traj, s) for s in (start, start + 1, start + 2)]
        torch.testing.assert_close(item["rollout_inputs"], torch.from_numpy(expect[0]))
        torch.testing.assert_close(item["rollout_labels"], torch.from_numpy(np.stack(expect[1:])))
        assert item["rollout_time"].item() == pytest.approx((times[1] - times[0]) / source.info.time_scale)
    with pytest.raises(DataError, match="need 7 snapshots, 5 are in use"):
        All2AllPairs(source, "train", max_snapshots=5, rollout_steps=3, rollout_lead_steps=2)


def test_rollout_sequences_can_step_by_their_pairs_lead(tmp_path):
    from foundation.data import All2AllPairs, open_source
    from foundation.pdes import generate

    path = generate("ns-sines", 2, 16, tmp_path / "ns.h5", snapshots=9, seed=0, batch=2, progress=False)
    source = open_source(path, fill_stats=True)
    pairs = All2AllPairs(source, "train", max_snapshots=9, rollout_steps=2, rollout_lead_steps=0)
    dt = (source.info.times[1] - source.info.times[0]) / source.info.time_scale
    assert pairs.rollout_time == pytest.approx(4 * dt)  # the largest step that two steps fit in 9 snapshots
    starts = set()
    for index in range(pairs.pairs_per_trajectory):
        item = pairs[index]
        traj, i, j, _ = pairs.locate(index)
        step = min(max(j - i, 1), 4)  # the pair's lead, at least 1, at most what fits
        start = min(i, 8 - 2 * step)
        starts.add((start, step))
        assert item["rollout_time"].item() == pytest.approx(step * dt)
        torch.testing.assert_close(item["rollout_inputs"], torch.from_numpy(pairs._state(traj, start)))
        want = np.stack([pairs._state(traj, start + step), pairs._state(traj, start + 2 * step)])
        torch.testing.assert_close(item["rollout_labels"], torch.from_numpy(want))
    # Many distinct sequences per trajectory; a fixed step of 4 has a single one (all start at the first snapshot).
    assert len(starts) == 7 + 5 + 3 + 1
    fixed = All2AllPairs(source, "train", max_snapshots=9, rollout_steps=2, rollout_lead_steps=4)
    assert {fixed[k]["rollout_inputs"].sum().item() for k in range(fixed.pairs_per_trajectory)} == {
        fixed[0]["rollout_inputs"].sum().item()
    }


def test_split_sequences_cut_their_pair_into_steps_of_their_own_lead_times(tmp_path):
    from foundation.data import All2AllPairs, open_source
    from foundation.losses import relative_lp_loss, unrolled_loss
    from foundation.pdes import generate

    path = generate("ns-sines", 2, 16, tmp_path / "ns.h5", snapshots=9, seed=0, batch=2, progress=False)
    source = open_source(path, fill_stats=True)
    pairs = All2AllPairs(source, "train", max_snapshots=9, rollout_steps=3, rollout_split=True)
    times = np.asarray(source.info.times) / source.info.time_scale
    cuts = set()
    for index in range(pairs.pairs_per_trajectory):
        item = pairs[index]
        traj, i, j, _ = pairs.locate(index)
        span = max(j - i, 3)  # at least K snapshots
        start = min(i, 8 - span)
        lead = item["rollout_time"].numpy()
        assert (
            lead.shape == (3,) and (lead > 0).all() and lead.sum() == pytest.approx(times[start + span] - times[start])
        )
        points = np.round(np.cumsum(lead) / (times[1] - times[0])).astype(int) + start  # where each step lands
        assert points[-1] == start + span
        torch.testing.assert_close(item["rollout_inputs"], torch.from_numpy(pairs._state(traj, start)))
        want = np.stack([pairs._state(traj, int(m)) for m in points])
        torch.testing.assert_close(item["rollout_labels"], torch.from_numpy(want))
        torch.testing.assert_close(pairs[index]["rollout_time"], item["rollout_time"])  # the same every time
        cuts.add(tuple(points - start))
    assert len(cuts) > 5  # steps of many lengths

    # One lead time per step: the unrolled loss calls the model with each in turn.
    model = _model(channel_names=["u", "v"], output_channel_names=["u", "v"]).train()
    x, targets = torch.randn(2, 2, 16, 16), torch.randn(2, 2, 2, 16, 16)
    t = torch.tensor([[0.1, 0.4], [0.3, 0.2]])
    y1 = model(pixel_values=x, time=t[:, 0]).output
    y2 = model(pixel_values=feed_back(x, y1, torch.tensor([0, 1])), time=t[:, 1]).output
    want = (relative_lp_loss(y1, targets[:, 0]) + relative_lp_loss(y2, targets[:, 1])) / 2
    torch.testing.assert_close(unrolled_loss(model, x, targets, t, mode="unrolled"), want)


def test_the_recorded_window_is_what_the_model_was_trained_to_predict(tmp_path):
    from foundation.data import All2AllPairs, open_source
    from foundation.pdes import generate
    from pretrain.objectives import trained_leads

    path = generate("ns-sines", 2, 16, tmp_path / "ns.h5", snapshots=9, seed=0, batch=2, progress=False)
    source = open_source(path, fill_stats=True)
    dt = (source.info.times[1] - source.info.times[0]) / source.info.time_scale

    def parts(**rollout):
        return [All2AllPairs(source, "train", max_snapshots=9, rollout_steps=2, **rollout)]

    assert trained_leads([All2AllPairs(source, "train", max_snapshots=9)]) == (pytest.approx(8 * dt), None)
    assert trained_leads(parts(rollout_lead_steps=0), 0.5) == (pytest.approx(8 * dt), pytest.approx(4 * dt))
    # rollout only (w = 1): no pair trains, the longest rollout step is the window
    assert trained_leads(parts(rollout_lead_steps=0), 1.0) == (pytest.approx(4 * dt), pytest.approx(4 * dt))
    assert trained_leads(parts(rollout_lead_steps=3), 1.0)[0] == pytest.approx(3 * dt)
    assert trained_leads(parts(rollout_split=True), 1.0) == (pytest.approx(7 * dt), None)  # 8 snapshots, 2 steps


def test_rollout_objective_mixes_the_pair_and_rollout_losses_with_a_curriculum():
    from foundation.losses import unrolled_loss
    from pretrain.config import TrainArguments
    from pretrain.objectives import RolloutObjective

    model = _model(channel_names=["u", "v"], output_channel_names=["u", "v"]).train()
    batch = {
        "pixel_values": torch.randn(2, 2, 16, 16),
        "labels": torch.randn(2, 2, 16, 16),
        "time": torch.tensor([0.3, 0.6]),
        "channel_mask": torch.ones(2, 2),
        "rollout_inputs": torch.randn(2, 2, 16, 16),
        "rollout_labels": torch.randn(2, 3, 2, 16, 16),
        "rollout_time": torch.tensor([0.2, 0.2]),
    }
    args = TrainArguments(rollout_weight=0.25, rollout_curriculum_steps=10)
    assert [args.rollout_length(s, 3) for s in (0, 4, 5, 9, 10, 50)] == [1, 1, 2, 2, 3, 3]
    objective = RolloutObjective(model.config, args, steps=3)
    got = objective(model, batch, step=5)  # K = 2 of the 3 stored steps
    pair = model(**{k: batch[k] for k in ("pixel_values", "labels", "time", "channel_mask")}).loss
    rollout = unrolled_loss(
        model,
        batch["rollout_inputs"],
        batch["rollout_labels"][:, :2],
        batch["rollout_time"],
        channel_mask=batch["channel_mask"],
    )
    torch.testing.assert_close(got, 0.75 * pair + 0.25 * rollout)
    assert "rollout_labels" in batch  # the caller's batch is left as it was
    only = RolloutObjective(model.config, TrainArguments(rollout_weight=1.0), steps=3)(model, batch, step=0)
    full = unrolled_loss(
        model,
        batch["rollout_inputs"],
        batch["rollout_labels"],
        batch["rollout_time"],
        channel_mask=batch["channel_mask"],
    )
    torch.testing.assert_close(only, full)


def test_steady_problems_beside_time_dependent_ones_train_on_pairs_only(tmp_path):
    from foundation.data.source import DataError
    from foundation.losses import unrolled_loss
    from foundation.pdes import generate
    from pretrain.build import build_data
    from pretrain.config import DataArguments, TrainArguments
    from pretrain.objectives import RolloutObjective

    ns = generate("ns-sines", 3, 16, tmp_path / "ns.h5", snapshots=5, seed=0, batch=3, progress=False)
    poisson = generate("poisson-gauss", 3, 16, tmp_path / "poisson.h5", seed=0, batch=3, progress=False)
    data = build_data(DataArguments(datasets=[str(ns), str(poisson)], rollout_steps=2), seed=0, rank=0, world=1)
    mixture = data.train_set
    moving, steady = mixture.item(0, 3), mixture.item(1, 0)
    assert set(moving) == set(steady)  # one batch can hold both
    assert moving["rollout_mask"].item() == 1 and steady["rollout_mask"].item() == 0
    batch = {k: torch.stack([moving[k], steady[k]]) for k in moving if k != "dataset"}
    model = _model(channel_names=mixture.input_names, output_channel_names=mixture.target_names).train()
    got = RolloutObjective(model.config, TrainArguments(rollout_weight=1.0), steps=2)(model, batch, step=0)
    alone = unrolled_loss(  # the time-dependent sample by itself: the steady placeholder adds nothing
        model,
        moving["rollout_inputs"][None],
        moving["rollout_labels"][None],
        moving["rollout_time"][None],
        channel_mask=moving["channel_mask"][None],
    )
    torch.testing.assert_close(got, alone)
    from pretrain.objectives import trained_leads

    with pytest.raises(ValueError, match="trains no pair, so .*poisson.* would not train"):  # rollouts only: nothing
        trained_leads(mixture.parts, rollout_weight=1.0)
    split = build_data(
        DataArguments(datasets=[str(ns), str(poisson)], rollout_steps=2, rollout_split=True), seed=0, rank=0, world=1
    ).train_set
    assert split.item(1, 0)["rollout_time"].shape == split.item(0, 3)["rollout_time"].shape == (2,)
    with pytest.raises(DataError, match="steady problem has no trajectory to roll out"):  # a steady one alone
        build_data(DataArguments(datasets=[str(poisson)], rollout_steps=2), seed=0, rank=0, world=1)


# ------------------------------------------------------------------------------------------ evaluation past the window
def test_horizon_evaluation_rolls_past_the_window_and_writes_its_curve(tmp_path):
    import json

    from finetune.evaluate import main

    torch.manual_seed(0)
    config = ScOTConfig.from_preset(
        "tiny",
        image_size=16,
        channel_names=["u", "v", "f"],
        output_channel_names=["u", "v"],
        input_mean=[0.0, 0.0, 0.0],
        input_std=[1.0, 1.0, 0.1],
        output_mean=[0.0, 0.0],
        output_std=[1.0, 1.0],
        time_scale=1.0,
        max_lead_time=0.5,  # trained on half the span of these files: rollouts chain jumps of 0.5
    )
    ScOT(config).save_pretrained(tmp_path / "model")
    out = tmp_path / "horizon"
    spec = "pde:ns-kf:n=4,resolution=16,snapshots=9,seed=0,val=1,test=2,t_end=2.0"
    argv = ["--model", str(tmp_path / "model"), "--datasets", spec, "--horizon", "--out", str(out)]
    assert main(argv + ["--rollout_trajectories", "2", "--solver"]) == 0
    result = json.loads((out / "horizon.json").read_text())
    assert result["final_solver_from_model"]["input_step"] == 6  # the last call's input: 3 jumps of 2 steps
    assert result["final_solver_from_truth"]["median_rel_l1_physical/mean"] < 0.01  # the file's own dynamics (%)
    assert result["steps"] == list(range(1, 9)) and result["max_lead"] == 0.5 and result["trajectories"] == 2
    assert result["lead_time"] == pytest.approx([0.25 * j for j in range(1, 9)])  # physical time / time_scale
    assert len(result["energy_drift"]) == 8 and all(v > -1 for v in result["energy_drift"])
    assert set(result["windows"]) == {"6-12"}  # 8 steps: The Well's first window only
    assert result["windows"]["6-12"] == pytest.approx(np.mean(result["median_rel_l1_physical/mean"][5:]))
    assert result["final"]["step"] == 8 and (out / "horizon.png").exists()
    assert main(argv + ["--max_lead", "0"]) == 2  # a bad jump is one error line


def test_horizon_splits_the_last_error_into_the_last_calls_own_and_what_feeding_back_cost(tmp_path):
    from foundation.data import open_source
    from foundation.evaluation import horizon, per_sample_errors, to_physical
    from foundation.pdes import generate

    path = generate("ns-sines", 3, 16, tmp_path / "ns.h5", snapshots=9, seed=0, batch=3, progress=False)
    source = open_source(path, fill_stats=True)
    dt = (source.info.times[1] - source.info.times[0]) / 2.0  # model units: the model's time_scale is 2
    model = _model(channel_names=["u", "v"], output_channel_names=["u", "v"], max_lead_time=4 * dt)
    convert = to_physical(model.config)
    for strategy, start in (("jump", 4), ("autoregressive", 7)):  # 8 steps: jumps of 4 steps; or one at a time
        result = horizon(model, [source], "train", trajectories=2, strategy=strategy)
        assert result["final_from_truth"]["input_step"] == start
        errors = []
        for traj in source.split("train")[:2]:
            x = model.normalize(torch.from_numpy(source.read(traj, start))[None])
            pred = model(pixel_values=x, time=torch.tensor([(8 - start) * dt])).output
            truth = torch.from_numpy(source.read(traj, 8))[None]
            errors.append(float(per_sample_errors(convert(pred.detach()), truth, model.config).mean()))
        own = result["final_from_truth"]["median_rel_l1_physical/mean"]
        assert own == pytest.approx(np.median(errors), rel=1e-4)
        assert own != result["final"]["median_rel_l1_physical/mean"]  # the rollout's input was not the truth

    # persistence: the first snapshot held, against every later one (in physical units, whatever the scaling)
    def read(traj: int, k: int) -> torch.Tensor:
        return torch.from_numpy(source.read(traj, k))[None]

    trajectories = source.split("train")[:2]
    held = [
        np.median([float(per_sample_errors(read(t, 0), read(t, j), model.config).mean()) for t in trajectories])
        for j in range(1, 9)
    ]
    assert result["persistence"] == pytest.approx(held, rel=1e-4)
    assert result["final"]["persistence"] == result["persistence"][-1]


def test_horizon_continues_the_true_dynamics_from_the_rollouts_own_state(tmp_path):
    import shutil

    import h5py

    from foundation.data import open_source
    from foundation.evaluation import HEADLINE, horizon, per_sample_errors, to_physical
    from foundation.pdes import FAMILIES, generate

    # 32^2: at 16^2 the stored velocities drop vorticity at the Nyquist modes, and continuing them misses ~1 %.
    path = generate("ns-sines", 3, 32, tmp_path / "ns.h5", snapshots=9, seed=0, batch=3, progress=False)
    source = open_source(path, fill_stats=True)
    dt = (source.info.times[1] - source.info.times[0]) / 2.0  # model units: the model's time_scale is 2
    model = _model(channel_names=["u", "v"], output_channel_names=["u", "v"], max_lead_time=4 * dt)
    result = horizon(model, [source], "train", trajectories=2, solver=True)
    assert result["final_solver_from_model"]["input_step"] == result["final_from_truth"]["input_step"] == 4
    assert result["final_solver_from_truth"][HEADLINE] < 0.01  # the solver continues the file's own states (%)
    convert, errors, calls = to_physical(model.config), [], []
    for traj in source.split("train")[:2]:  # independently: the model's state at step 4, the solver to step 8
        x = model.normalize(torch.from_numpy(source.read(traj, 0))[None])
        state = model(pixel_values=x, time=torch.tensor([4 * dt])).output.detach()
        later = FAMILIES["ns-sines"].evolve(convert(state), 4 * 2.0 * dt, **source.info.pde)
        truth = torch.from_numpy(source.read(traj, 8))[None]
        errors.append(float(per_sample_errors(later, truth, model.config).mean()))
        last = model(pixel_values=state, time=torch.tensor([4 * dt])).output.detach()  # the rollout's last call
        calls.append(float(per_sample_errors(convert(last), later, model.config).mean()))
    assert result["final_solver_from_model"][HEADLINE] == pytest.approx(np.median(errors), rel=1e-4)
    assert result["final_solver_from_model"][HEADLINE] > 1.0  # an untrained model's state is far off
    assert result["final_call_on_own_state"][HEADLINE] == pytest.approx(np.median(calls), rel=1e-4)
    assert "final_solver_from_model" not in horizon(model, [source], "train", trajectories=2)  # only when asked
    shutil.copy(path, tmp_path / "published.h5")  # a file our solvers did not write: no solver is assumed
    with h5py.File(tmp_path / "published.h5", "r+") as file:
        file.attrs["provenance"] = "{}"
    published = open_source(tmp_path / "published.h5", fill_stats=True)
    assert "final_solver_from_model" not in horizon(model, [published], "train", trajectories=2, solver=True)


def test_rollout_training_of_a_model_that_cannot_feed_its_outputs_back_is_refused():
    from pretrain.config import TrainArguments
    from pretrain.objectives import RolloutObjective

    steady = _model(channel_names=["f"], output_channel_names=["u"])  # Poisson-like: f in, u out
    with pytest.raises(ValueError, match="--rollout_steps 2: the model's outputs \\['u'\\] are not all among"):
        RolloutObjective(steady.config, TrainArguments(), steps=2)


def test_long_horizon_benchmark_compares_two_runs_and_splits_their_last_steps(base_dir, tmp_path, monkeypatch):
    import importlib.util
    import json
    import sys

    from conftest import REPO_ROOT

    from finetune.__main__ import main as finetune_main

    spec = "pde:allen-cahn:n=8,resolution=16,snapshots=9,seed=0,val=1,test=2,t_end=2.0,eps=0.08"
    common = ["--init_from", str(base_dir), "--datasets", spec, "--max_snapshots", "5", "--max_steps", "3"]
    common += ["--batch_size", "4", "--tracker", "none", "--eval_pairs", "8"]
    assert finetune_main(common + ["--output_dir", str(tmp_path / "a")]) == 0
    rollout = ["--rollout_steps", "2", "--rollout_lead_steps", "1"]  # chains of one snapshot: 0.125 model units
    assert finetune_main(common + rollout + ["--output_dir", str(tmp_path / "r")]) == 0
    (data,) = (tmp_path / "data").glob("*.h5")

    loader = importlib.util.spec_from_file_location("long_horizon", REPO_ROOT / "benchmarks" / "long_horizon.py")
    script = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(script)
    argv = ["--all2all", str(tmp_path / "a"), "--rollout", str(tmp_path / "r"), "--datasets", str(data)]
    argv += ["--trajectories", "2", "--jumps", "0.125", "0.25", "--out", str(tmp_path / "lh.json")]
    monkeypatch.setattr(sys, "argv", ["long_horizon.py", *argv])
    script.main()
    out = json.loads((tmp_path / "lh.json").read_text())

    def final(result):
        return result["final"]["median_rel_l1_physical/mean"]

    a2a, rolled = out["all2all"]["horizon_default"], out["rollout"]["horizon_default"]
    assert a2a["max_lead"] == 0.5 and a2a["final"]["step"] == 8  # trained on half the span: two jumps
    assert out["ratios"]["final_step_rollout_vs_all2all_default"] == pytest.approx(final(rolled) / final(a2a))
    splits = out["last_step_split"]
    assert {"all2all", "rollout", "rollout_own_step", "all2all_jump_0.125"} <= set(splits)
    assert splits["all2all"]["rolled_out"] == final(a2a) and splits["all2all"]["from_truth"] > 0
    assert out["persistence_last_step"] == a2a["final"]["persistence"] == rolled["final"]["persistence"] > 0
    for part in splits.values():  # the solver continues the file's own states; the models' are off
        assert part["solver_from_truth"] < 0.01 and part["solver_from_model"] > 0.01 and part["call_on_own_state"] > 0
    assert out["own_step_rollout_vs_all2all_same_jump"] == pytest.approx(
        final(out["rollout"]["horizon_own_step"]) / final(out["all2all"]["horizon_by_jump"]["0.125"])
    )
    assert (tmp_path / "lh.png").exists()
