"""The will-it-fit estimate (`python -m pretrain.estimate`): its arithmetic, against DeepSpeed's own and itself."""

from __future__ import annotations

import math

import pytest
import torch

from pretrain.estimate import GIB, EstimateArguments, activation_bytes, estimate, main, model_states, saved_bytes


@pytest.mark.parametrize("world_size", [1, 2, 8])
def test_zero2_bf16_model_states_are_deepspeeds_accounting(world_size):
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    params = 157_729_988  # Poseidon-B
    _, gpu = estimate_zero2_model_states_mem_needs(params, num_gpus_per_node=world_size, cpu_offload=False)
    ours = sum(model_states(params, "bf16", 2, world_size).values())
    assert ours == pytest.approx(gpu, rel=1e-6)


def test_each_zero_stage_partitions_one_more_state():
    params, n = 1000, 4
    bytes_per_param = [sum(model_states(params, "fp32", stage, n).values()) / params for stage in range(4)]
    assert bytes_per_param == [16, 4 + 4 + 12 / n, 4 + (4 + 12) / n, 20 / n]
    assert sum(model_states(params, "bf16", 3, n).values()) / params == pytest.approx(20 / n)


def test_saved_activations_grow_linearly_with_the_batch_and_checkpointing_keeps_less():
    from foundation.configuration_scot import ScOTConfig
    from foundation.modeling_scot import ScOT

    with torch.device("meta"):
        model = ScOT(ScOTConfig.from_preset("tiny", num_channels=3, num_out_channels=3)).train()
    by_batch = {b: saved_bytes(model, b, 3, 32, torch.float32) for b in (1, 2, 3)}
    from foundation.modeling_scot import _Stage

    n_blocks = sum(len(stage.blocks) for stage in model.modules() if isinstance(stage, _Stage))
    assert len(by_batch[1]["blocks"]) == len(by_batch[1]["block_inputs"]) == n_blocks > 0
    per_sample = by_batch[2]["total"] - by_batch[1]["total"]
    assert per_sample > 0
    assert by_batch[3]["total"] == by_batch[1]["total"] + 2 * per_sample  # the linear model the estimate uses
    full, recomputed = (activation_bytes(by_batch[2], c) for c in (False, True))
    assert 0 < recomputed < full


@pytest.mark.parametrize(
    ("mode", "steps", "weight", "passes"),
    [("pushforward", 3, 0.5, 2), ("unrolled", 3, 0.5, 4), ("pushforward", 3, 1.0, 1), ("unrolled", 2, 1.0, 2)],
)
def test_rollout_training_keeps_the_activations_the_estimate_counts(mode, steps, weight, passes):
    """What the real objective saves for backward, against `forward_passes` x one pair forward."""
    from foundation.configuration_scot import ScOTConfig
    from foundation.modeling_scot import ScOT
    from pretrain.config import TrainArguments
    from pretrain.estimate import forward_passes
    from pretrain.objectives import RolloutObjective

    args = EstimateArguments(preset="tiny", rollout_steps=steps, rollout_mode=mode, rollout_weight=weight)
    assert forward_passes(args) == passes
    torch.manual_seed(0)
    model = ScOT(ScOTConfig.from_preset("tiny", image_size=16, num_channels=2, num_out_channels=2)).train()
    batch = {
        "pixel_values": torch.randn(2, 2, 16, 16),
        "labels": torch.randn(2, 2, 16, 16),
        "time": torch.rand(2),
        "rollout_inputs": torch.randn(2, 2, 16, 16),
        "rollout_labels": torch.randn(2, steps, 2, 16, 16),
        "rollout_time": torch.rand(2),
    }
    train = TrainArguments(rollout_weight=weight, rollout_mode=mode)
    objective = RolloutObjective(model.config, train, steps)

    def saved(call) -> int:
        counter = [0]

        def pack(tensor):
            counter[0] += tensor.numel() * tensor.element_size()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            call()
        return counter[0]

    one = saved(lambda: model(batch["pixel_values"], batch["time"], labels=batch["labels"]).loss)
    assert saved(lambda: objective(model, batch, step=0)) == pytest.approx(passes * one, rel=0.02)


def test_the_largest_micro_batch_is_the_last_that_fits():
    args = EstimateArguments(preset="tiny", world_size=2, zero_stage=2, precision="fp32", memory_gib=4.0)
    report = estimate(args)
    largest, per_sample = report["largest_micro_batch"], report["activations_per_sample_gib"]
    assert largest > 0
    assert report["fixed_gib"] + largest * per_sample <= report["budget_gib"]
    assert report["fixed_gib"] + (largest + 1) * per_sample > report["budget_gib"]
    from foundation.configuration_scot import ScOTConfig
    from foundation.modeling_scot import ScOT

    real = ScOT(ScOTConfig.from_preset("tiny", num_channels=4, num_out_channels=4))  # on the CPU, allocated
    assert report["parameters"] == sum(p.numel() for p in real.parameters())
    assert math.isclose(report["budget_gib"], 4.0 * 0.9)
    assert report["gradient_buckets_gib"] == pytest.approx(2 * 2e8 * 4 / GIB)


def test_bad_options_are_one_line_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--preset", "tiny", "--zero_stage", "5"])
    assert exit_info.value.code == 2
    assert "--zero_stage must be 0, 1, 2 or 3" in capsys.readouterr().err


def test_the_memory_presets_are_the_estimates_rule():
    """launch/presets.yaml: per model and card, the largest power of two <= half the largest micro-batch."""
    import yaml
    from conftest import REPO_ROOT

    presets = yaml.safe_load((REPO_ROOT / "launch/presets.yaml").read_text())
    assert set(presets) == {"T", "B", "L"} and all(set(cards) == {80, 141} for cards in presets.values())
    for preset, cards in presets.items():
        report = estimate(EstimateArguments(preset=preset, world_size=8, zero_stage=2, precision="bf16"))
        for memory, chosen in cards.items():
            assert chosen["zero_stage"] == 2 and chosen["precision"] == "bf16"
            largest = (memory * 0.9 - report["fixed_gib"]) / report["activations_per_sample_gib"]
            assert chosen["batch_size"] == 2 ** math.floor(math.log2(largest / 2)), (preset, memory)
