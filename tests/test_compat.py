"""The private attributes of other libraries in foundation.compat still exist and still do what we rely on."""

from __future__ import annotations

import pytest
import torch

from foundation import compat


def test_fused_adamw_skips_a_flagged_step_on_the_device_and_counts_it_not():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8))
    optimizer = compat.fused_adamw([w], lr=0.1, weight_decay=0.01)
    w.grad = torch.ones(8)
    compat.skip_optimizer_step(optimizer, torch.tensor(0.0))
    optimizer.step()
    after_one = w.detach().clone()
    state = {k: v.clone() for k, v in optimizer.state[w].items()}
    w.grad = torch.full((8,), float("nan"))  # what a non-finite loss leaves behind
    compat.skip_optimizer_step(optimizer, torch.tensor(1.0))
    optimizer.step()
    assert torch.equal(w.detach(), after_one), "torch's fused AdamW no longer skips on found_inf"
    assert all(torch.equal(optimizer.state[w][k], v) for k, v in state.items())  # moments and step count too
    compat.skip_optimizer_step(optimizer, torch.tensor(0.0))
    w.grad = torch.ones(8)
    optimizer.step()
    assert not torch.equal(w.detach(), after_one) and float(optimizer.state[w]["step"]) == 2.0


def test_skipping_needs_a_fused_optimizer():
    plain = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))])
    with pytest.raises(ValueError, match="fused"):
        compat.skip_optimizer_step(plain, torch.tensor(1.0))


def test_transformers_keeps_its_deepspeed_config_reference():
    from transformers.integrations import deepspeed as hf_deepspeed

    assert hasattr(hf_deepspeed, "_hf_deepspeed_config_weak_ref")
    assert callable(hf_deepspeed.set_hf_deepspeed_config) and callable(hf_deepspeed.unset_hf_deepspeed_config)
    with compat.whole_weights_under_zero3():  # no DeepSpeed config active: a no-op
        pass


def test_deepspeed_keeps_its_compatible_ops_table():
    import deepspeed.ops

    assert "deepspeed_shm_comm" in deepspeed.ops.__compatible_ops__
    compat.skip_deepspeed_shm_comm()
    assert deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] is False
