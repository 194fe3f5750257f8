"""foundation.evaluation: the one metric, summariser and rollout behind validation, evaluation, study and demo."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from foundation.data import ArraySource
from foundation.evaluation import (
    HEADLINE,
    ErrorTable,
    dataset_names,
    evaluate,
    held_out_pairs,
    metric_key,
    rollout,
    summarise,
)

RNG = np.random.default_rng(7)


class Persistence(torch.nn.Module):
    """Returns the input's copy of each output channel: every number it gets can be computed by hand."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.feed = [config.channel_names.index(c) for c in config.output_channel_names]

    def forward(self, pixel_values, time):
        return SimpleNamespace(output=pixel_values[:, self.feed] * 1.0)


def config(channels=("u", "v"), mean=(1.0, -2.0), std=(0.5, 3.0), groups=(0, 1, 2)):
    return SimpleNamespace(
        channel_names=list(channels),
        output_channel_names=list(channels),
        channel_slice_list_normalized_loss=list(groups),
        input_mean=list(mean),
        input_std=list(std),
        output_mean=list(mean),
        output_std=list(std),
    )


def source(n=10, t=5, name="<array>"):
    fields = (RNG.normal(size=(n, t, 2, 8, 8)) + np.array([3.0, -1.0])[None, None, :, None, None]).astype(np.float32)
    src = ArraySource(fields, channel_names=["u", "v"], splits={"train": (0, 4), "val": (4, 6), "test": (6, n)})
    src.info.name = name
    return src, fields


def test_keys_name_the_space_and_summaries_skip_absent_groups():
    assert metric_key() == HEADLINE == "median_rel_l1_physical/mean"
    assert metric_key("mean", 2, "normalised", "u+v") == "mean_rel_l2_normalised/u+v"
    with pytest.raises(ValueError, match="space 'phys'"):
        metric_key(space="phys")
    errors = torch.tensor([[1.0, float("nan")], [3.0, float("nan")], [5.0, float("nan")]])
    out = summarise(errors, ["a", "b"], "normalised", stats=("median", "mean"))
    # group b no sample has is omitted, and the over-groups mean is over the present groups only
    assert out == {
        "median_rel_l1_normalised/a": 3.0,
        "median_rel_l1_normalised/mean": 3.0,
        "mean_rel_l1_normalised/a": 3.0,
        "mean_rel_l1_normalised/mean": 3.0,
    }
    two = summarise(torch.tensor([[1.0, 10.0], [2.0, 30.0], [9.0, 20.0]]), ["a", "b"], "physical")
    assert two[HEADLINE] == pytest.approx((2.0 + 20.0) / 2)  # mean over groups of the medians (Poseidon's)


def test_error_table_survives_a_padded_gather_and_breaks_down_by_dataset_and_lead():
    table = ErrorTable(
        torch.tensor([[1.0], [2.0], [4.0]]),
        torch.tensor([[1.5], [2.5], [4.5]]),
        torch.tensor([0.0, 1.0, 1.0]),
        torch.tensor([0.25, 0.25, 0.5]),
    )
    padded = torch.cat([table.as_tensor(), torch.full((2, 4), float("nan"))])
    back = ErrorTable.from_tensor(padded, groups=1)
    assert torch.equal(back.as_tensor(), table.as_tensor())
    by_dataset = back.by_dataset(["u"], ["a", "b"], "normalised", stats=("median",))
    assert by_dataset["a"]["median_rel_l1_normalised/u"] == 1.0 and by_dataset["b"]["median_rel_l2_normalised/u"] == 3.5
    by_lead = back.by_lead_time(["u"], "normalised", decimals=2)
    assert by_lead["0.25"]["pairs"] == 2 and by_lead["0.50"]["median_rel_l1_normalised/u"] == 4.0


def test_dataset_names_come_from_metadata_and_never_collide():
    sources = [SimpleNamespace(info=SimpleNamespace(name=n)) for n in ("data/a.h5", "other/a.h5", "org/repo/", "b")]
    assert dataset_names(sources) == ["a", "a-1", "repo", "b"]


def test_evaluate_and_rollout_of_persistence_match_a_hand_computation():
    src, fields = source()
    cfg = config()
    model = Persistence(cfg)
    result, samples = evaluate(model, [src], split="test", max_pairs=None, rollout_trajectories=4)
    # all2all pairs i < j of the 4 test trajectories, prediction = the state at t_i, physical fields
    errors = {"u": [], "v": []}
    first = {}  # lead j -> errors of (0, j) per trajectory, mean over groups
    for traj in range(6, 10):
        for i in range(5):
            for j in range(i + 1, 5):
                per = []
                for c, name in enumerate("uv"):
                    truth, pred = fields[traj, j, c], fields[traj, i, c]
                    per.append(100 * np.abs(pred - truth).sum() / np.abs(truth).sum())
                    errors[name].append(per[-1])
                if i == 0:
                    first.setdefault(j, []).append(np.mean(per))
    assert result["pairs"] == 4 * 10 and result["space"] == "physical"
    for name in "uv":
        assert result[f"median_rel_l1_physical/{name}"] == pytest.approx(np.median(errors[name]), rel=1e-4)
        assert result[f"mean_rel_l1_physical/{name}"] == pytest.approx(np.mean(errors[name]), rel=1e-4)
    assert result["by_dataset"] == {"<array>": pytest.approx({k: v for k, v in result.items() if "_rel_l" in k})}
    assert set(result["by_lead_time"]) == {"0.250", "0.500", "0.750", "1.000"}
    assert len(samples) == 2  # the first pair of each batch of 32, for the plots
    # persistence fed back is still the first state: direct and autoregressive agree at every lead time
    for j, lead in enumerate(sorted(result["rollout"], key=float), start=1):
        row = result["rollout"][lead]
        assert row["direct"] == pytest.approx(row["autoregressive"], rel=1e-5)
        assert row["direct"] == pytest.approx(np.median(first[j]), rel=1e-4)


def test_rollout_needs_outputs_it_can_feed_back():
    src, _ = source()
    cfg = config()
    data = held_out_pairs(cfg, [src], "test")
    narrowed = SimpleNamespace(**{**vars(cfg), "channel_names": ["v"], "output_channel_names": ["u", "v"]})
    assert rollout(Persistence(cfg), data, 2, "physical", config=narrowed) == {}
    assert set(rollout(Persistence(cfg), data, 2, "normalised")) == {"0.250", "0.500", "0.750", "1.000"}


def test_held_out_pairs_follow_each_model_and_leave_the_source_alone():
    """One opened source evaluated for two models: each model's pairs carry that model's statistics, and the
    source keeps its own (what a training run normalises with), as if it had been opened afresh each time."""
    fields = np.random.default_rng(3).normal(2.0, 1.5, size=(6, 4, 2, 8, 8)).astype(np.float32)
    static = np.random.default_rng(4).normal(1.0, 0.5, size=(6, 1, 8, 8)).astype(np.float32)

    def opened() -> ArraySource:
        splits = {"train": (0, 3), "val": (3, 4), "test": (4, 6)}
        stats = dict(mean=[2.0, 2.0], std=[1.5, 1.5], static_mean=[1.0], static_std=[0.5])
        return ArraySource(fields, ["u", "v"], static=static, static_names=["c"], splits=splits, **stats)

    def model(mean: tuple[float, float, float], std: tuple[float, float, float]) -> SimpleNamespace:
        cfg = config(mean=mean[:2], std=std[:2])
        cfg.channel_names, cfg.input_mean, cfg.input_std = ["u", "v", "c"], list(mean), list(std)
        return cfg

    src = opened()
    own = (src.info.mean, src.info.std, src.info.static_mean, src.info.static_std)
    first, second = model((1.0, -2.0, 0.5), (0.5, 3.0, 2.0)), model((0.0, 1.0, -1.0), (2.0, 0.25, 4.0))
    pairs = [held_out_pairs(cfg, [src], "test") for cfg in (first, second)]
    assert (src.info.mean, src.info.std, src.info.static_mean, src.info.static_std) == own
    for cfg, data in zip((first, second), pairs):
        fresh = held_out_pairs(cfg, [opened()], "test")
        for k in range(len(fresh)):
            for key in ("pixel_values", "labels"):
                assert torch.equal(data[k][key], fresh[k][key])
    item, (traj, i, j, _) = pairs[1][0], pairs[1].parts[0].locate(0)
    mean, std = np.asarray(second.input_mean)[:, None, None], np.asarray(second.input_std)[:, None, None]
    inputs = np.concatenate([fields[traj, i], static[traj]])
    np.testing.assert_allclose(item["pixel_values"].numpy(), (inputs - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(item["labels"].numpy(), (fields[traj, j] - mean[:2]) / std[:2], rtol=1e-5, atol=1e-5)


def test_held_out_pairs_can_normalise_each_source_as_its_training_run_did():
    """`source_stats`: each source with its own statistics (what a run's training pairs use), not the model's."""
    fields = np.random.default_rng(5).normal(3.0, 2.0, size=(6, 3, 2, 8, 8)).astype(np.float32)
    splits = {"train": (0, 3), "val": (3, 4), "test": (4, 6)}
    src = ArraySource(fields, ["u", "v"], splits=splits, mean=[3.0, 2.5], std=[2.0, 1.0])
    cfg = config()
    own, model = (held_out_pairs(cfg, [src], "test", source_stats=flag) for flag in (True, False))
    traj, _, j, _ = own.parts[0].locate(0)
    mean, std = np.array([3.0, 2.5])[:, None, None], np.array([2.0, 1.0])[:, None, None]
    np.testing.assert_allclose(own[0]["labels"].numpy(), (fields[traj, j] - mean) / std, rtol=1e-5, atol=1e-5)
    mean, std = np.array(cfg.output_mean)[:, None, None], np.array(cfg.output_std)[:, None, None]
    np.testing.assert_allclose(model[0]["labels"].numpy(), (fields[traj, j] - mean) / std, rtol=1e-5, atol=1e-5)
