"""The few private attributes of other libraries the toolkit relies on, in one place.

Each is used for a measured reason (said below) and checked by tests/test_compat.py, which fails loudly when a
release of torch, transformers or DeepSpeed moves it, instead of the toolkit silently losing the behaviour.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def fused_adamw(params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with the fused kernel, which can skip an update on the device (`skip_optimizer_step`).

    Fused AdamW runs on CPU and CUDA for fp32/bf16 parameters (torch >= 2.4); it is also the fastest AdamW there.
    """
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def skip_optimizer_step(optimizer: torch.optim.Optimizer, flag: torch.Tensor) -> None:
    """Make the optimizer's next update a no-op where `flag` (a 0-dim float tensor on the device) is > 0.

    torch's fused Adam/AdamW read `optimizer.found_inf` in `step()` (the protocol GradScaler uses with fused
    optimizers) and skip the parameter, moment and step-count updates on the device when it is non-zero: the loop
    never has to read the non-finite flag on the host to decide. Needs a fused optimizer (`fused_adamw`).
    """
    if not optimizer.defaults.get("fused"):
        raise ValueError("skip_optimizer_step needs a fused optimizer (foundation.compat.fused_adamw)")
    optimizer.found_inf = flag.to(torch.float32)


@contextmanager
def whole_weights_under_zero3() -> Iterator[None]:
    """Load whole tensors even under a ZeRO-3 launch, where transformers would partition them at load time.

    transformers keeps the active DeepSpeed config in a private weak reference (`_hf_deepspeed_config_weak_ref`)
    and partitions every `from_pretrained` under ZeRO-3 while it is set; channel surgery needs whole tensors, and
    one rank loading for export or evaluation must not enter collectives. It is unset here and restored after.
    """
    from transformers.integrations import deepspeed as hf_deepspeed

    reference = hf_deepspeed._hf_deepspeed_config_weak_ref
    config = reference() if reference is not None else None
    if config is None:
        yield
        return
    hf_deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_deepspeed.set_hf_deepspeed_config(config)


def skip_deepspeed_shm_comm() -> None:
    """Keep DeepSpeed from JIT-compiling its shared-memory comm op (~40 s) at every CPU distributed start.

    DeepSpeed decides from its private table `deepspeed.ops.__compatible_ops__`; gloo does the CPU collectives.
    """
    try:
        import deepspeed.ops
    except ImportError:
        return
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
