"""Channel surgery keeps what the pretrained model knows, by name."""

from __future__ import annotations

import torch

from finetune import adapt_channels
from foundation import ScOT, ScOTConfig


def pretrained() -> ScOT:
    torch.manual_seed(0)
    model = ScOT(ScOTConfig.from_preset("tiny")).eval()
    with torch.no_grad():  # no branch near zero, non-trivial channel mixing: as a trained model
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def test_superset_of_channels_reproduces_the_known_outputs_exactly():
    base = pretrained()
    new = adapt_channels(
        base, ["rho", "u", "v", "p", "c"], ["rho", "u", "v", "p", "tracer"], input_stats={"c": (2.0, 0.5)}
    ).eval()
    assert new.config.input_mean[-1] == 2.0 and new.config.input_std[:4] == base.config.input_std
    x, t = torch.randn(2, 4, 32, 32), torch.rand(2)
    extra = torch.randn(2, 1, 32, 32) * 5  # whatever the new input holds
    with torch.no_grad():
        old = base(pixel_values=x, time=t).output
        out = new(pixel_values=torch.cat([x, extra], 1), time=t).output
    assert old.abs().mean() > 0.1  # a real signal to compare
    assert torch.allclose(out[:, :4], old, atol=1e-5)
    assert out[:, 4].abs().max() > 0  # the new output exists and is trainable


def test_subset_and_reordering_copy_rows_by_name():
    base = pretrained()
    new = adapt_channels(base, ["v", "u"], ["u"])
    w_old = base.embeddings.patch_embeddings.projection.weight
    w_new = new.embeddings.patch_embeddings.projection.weight
    assert torch.equal(w_new[:, 0], w_old[:, 2]) and torch.equal(w_new[:, 1], w_old[:, 1])
    r_old, r_new = base.patch_recovery.projection.weight, new.patch_recovery.projection.weight
    assert torch.equal(r_new[:, 0], r_old[:, 1])
    assert torch.equal(new.patch_recovery.mixup.weight[0, 0], base.patch_recovery.mixup.weight[1, 1])
    body = [k for k in base.state_dict() if not k.startswith(("embeddings.patch_embeddings", "patch_recovery"))]
    assert all(torch.equal(base.state_dict()[k], new.state_dict()[k]) for k in body)
    assert new.config.channel_names == ["v", "u"] and new.config.num_out_channels == 1


def test_unchanged_channels_keep_poseidons_groups():
    from conftest import fixture_folder

    base = ScOT.from_pretrained(fixture_folder("scot-mini"))  # the published Poseidon layout
    assert base.config.channel_slice_list_normalized_loss == [0, 1, 3, 4]  # rho | u, v | p
    same = adapt_channels(base, ["rho", "u", "v", "p"], ["rho", "u", "v", "p"])
    assert same.config.channel_slice_list_normalized_loss == [0, 1, 3, 4]
    # A static input added: outputs unchanged, so are the groups.
    assert adapt_channels(
        base, ["rho", "u", "v", "p", "c"], ["rho", "u", "v", "p"]
    ).config.channel_slice_list_normalized_loss == [0, 1, 3, 4]


def test_new_outputs_form_groups_of_their_own_and_groups_never_stretch():
    from finetune.surgery import keep_groups

    base = ScOTConfig.from_preset("tiny")  # rho | u, v | p
    assert keep_groups(base, ["rho", "u", "v", "p", "tracer", "E"]) == [0, 1, 3, 4, 5, 6]
    assert keep_groups(base, ["u", "v"]) == [0, 2]
    assert keep_groups(base, ["v", "u", "rho"]) == [0, 2, 3]  # reordered members stay one group
    assert keep_groups(base, ["u", "p", "v"]) == [0, 1, 2, 3]  # apart: one group per contiguous run
    assert keep_groups(base, ["a", "b"]) == [0, 1, 2]


def test_channel_map_starts_a_channel_from_another_name_or_from_nothing():
    base = pretrained()
    embed = base.embeddings.patch_embeddings.projection.weight
    recovery = base.patch_recovery.projection.weight
    mapped = adapt_channels(base, ["u", "c"], ["u"], aliases={"u": "rho"})  # e.g. a scalar u from a scalar's rows
    assert torch.equal(mapped.embeddings.patch_embeddings.projection.weight[:, 0], embed[:, 0])
    assert torch.equal(mapped.patch_recovery.projection.weight[:, 0], recovery[:, 0])
    assert torch.equal(mapped.patch_recovery.mixup.weight[0, 0], base.patch_recovery.mixup.weight[0, 0])
    new = adapt_channels(base, ["u"], ["u"], aliases={"u": None})  # a new channel: blind until it trains
    assert new.embeddings.patch_embeddings.projection.weight[:, 0].abs().max() == 0
    assert not torch.equal(new.patch_recovery.projection.weight[:, 0], recovery[:, 1])
    by_name = adapt_channels(base, ["u"], ["u"])  # without a map: the velocity's u, by name
    assert torch.equal(by_name.embeddings.patch_embeddings.projection.weight[:, 0], embed[:, 1])
    for aliases, culprit in (({"w": "rho"}, "'w' is not a channel of the data"), ({"u": "T"}, "'T' is not")):
        try:
            adapt_channels(base, ["u"], ["u"], aliases=aliases)
        except ValueError as error:
            assert culprit in str(error)
        else:
            raise AssertionError(f"{aliases} was accepted")
