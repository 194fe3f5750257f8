"""Will it fit? Memory per GPU of a pretraining run of scOT, before renting the GPUs.

    python -m pretrain.estimate --preset B --world_size 8 --zero_stage 2 --precision bf16 --memory_gib 80

Prints one JSON object: the parameter count, the bytes per rank of weights, gradients and optimizer state for the
ZeRO stage and world size (DeepSpeed's own accounting, see `model_states`), its gradient buckets, the activation
memory per sample *measured* by running the model once on the meta device (nothing is allocated, so L at 512^2
takes seconds) and counting the tensors autograd saves for backward, and the largest micro-batch that fits
`memory_gib` with `headroom` kept free (allocator fragmentation, CUDA context, kernel workspaces).

Rollout training (`--rollout_steps`, `--rollout_mode`, `--rollout_weight`) keeps the activations of several
forward passes per step (`forward_passes`): pushforward two (the pair's and the rollout's last step), unrolled K + 1.

What it does not see: temporaries that live only inside one operation (the attention scores of the softmax, the
FFT buffers of the Fourier resampling), the activation gradients of the backward (about one block's worth at a
time) and the communication library's own buffers; `benchmarks/memory_estimate.py` compares the estimate with
the peak memory of a real 2-process ZeRO-2 step. The saved tensors are those of the kernels of the meta device,
which are the explicit (CPU) attention's: fused GPU attention saves less, so on GPUs the estimate errs high; so
does plain data parallelism in bf16 (stage 0), whose autocast activations are counted as fp32.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch

from .config import Precision, Preset, check_choices, check_positive, check_range, parse_dataclasses

ZeroStage = Literal[0, 1, 2, 3]
GIB = 2**30


@dataclass
class EstimateArguments:
    """The run to size: geometry, grid, precision, parallelism and the card's memory."""

    preset: Preset = field(default="T", metadata={"help": "Geometry preset: tiny, T, B or L."})
    resolution: int | None = field(default=None, metadata={"help": "Model grid side (default: the preset's)."})
    channels: int = field(default=4, metadata={"help": "Input (= output) channels."})
    precision: Precision = field(
        default="bf16",
        metadata={"help": "fp32, or bf16 (DeepSpeed bf16: bf16 weights and activations, fp32 master weights)."},
    )
    zero_stage: int = field(default=2, metadata={"help": "0 (DDP: everything replicated), 1, 2 or 3."})
    world_size: int = field(default=1, metadata={"help": "Data-parallel ranks (GPUs in all)."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Recompute each block in backward."})
    reduce_bucket_size: float = field(
        default=2e8, metadata={"help": "ZeRO reduce bucket, elements (launch/deepspeed/zero*.json)."}
    )
    overlap_comm: bool = field(default=True, metadata={"help": "ZeRO overlap_comm (double gradient buckets)."})
    memory_gib: float = field(default=80.0, metadata={"help": "Memory of one GPU, GiB."})
    headroom: float = field(default=0.1, metadata={"help": "Fraction of memory_gib kept free."})
    micro_batch: int | None = field(default=None, metadata={"help": "Also report the total at this micro-batch."})
    rollout_steps: int = field(default=0, metadata={"help": "Rollout training's K (0: all2all pairs only)."})
    rollout_mode: str = field(
        default="pushforward", metadata={"help": "pushforward (one rollout step kept) or unrolled (all K kept)."}
    )
    rollout_weight: float = field(default=0.5, metadata={"help": "Rollout loss weight (1: no pair forward)."})

    def __post_init__(self):
        check_choices(self)
        if self.zero_stage not in (0, 1, 2, 3):
            raise ValueError(f"--zero_stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        check_positive(self, "channels", "world_size", "memory_gib", "reduce_bucket_size", "resolution")
        check_range(self, "headroom", high=0.9)
        check_range(self, "rollout_steps")
        check_range(self, "rollout_weight", high=1.0)
        if self.rollout_mode not in ("pushforward", "unrolled"):
            raise ValueError(f"--rollout_mode must be pushforward or unrolled, got {self.rollout_mode!r}")


def forward_passes(args: EstimateArguments) -> int:
    """Forward passes per step whose activations wait for the one backward (`pretrain.objectives.RolloutObjective`):
    the pair's (unless the rollout weight is 1), plus the rollout's last step (pushforward: the K - 1 before run
    without gradient) or all K (unrolled)."""
    if not args.rollout_steps:
        return 1
    rollout = 1 if args.rollout_mode == "pushforward" else args.rollout_steps
    return rollout + (1 if args.rollout_weight < 1 else 0)


def model_states(params: int, precision: str, zero_stage: int, world_size: int) -> dict[str, float]:
    """Bytes per rank of weights, gradients and optimizer state (AdamW), as DeepSpeed accounts them.

    bf16 (DeepSpeed): bf16 weights (2) and gradients (2), fp32 gradients (4), fp32 master weights (4), Adam's m
    and v (8) -- the 2 + 18/N of DeepSpeed's `estimate_zero2_model_states_mem_needs`. fp32: weights (4),
    gradients (4), master weights (4: ZeRO copies the partition it updates even in fp32), m and v (8). Stage 1
    partitions the optimizer state (master weights, m, v, fp32 gradients), stage 2 the gradients too, stage 3
    the weights too; stage 0 is plain data parallelism (nothing partitioned; in bf16 accelerate's autocast keeps
    fp32 weights and gradients, 16 bytes per parameter).
    """
    n = world_size if zero_stage else 1
    if not zero_stage:  # DDP: the torch optimizer on fp32 weights (accelerate's bf16 is autocast)
        weights, grads, optimizer = 4.0, 4.0, 8.0
    elif precision == "bf16":
        weights, grads, optimizer = 2.0, 2.0, 16.0  # optimizer: fp32 gradients + master weights + m + v
    else:
        weights, grads, optimizer = 4.0, 4.0, 12.0  # ZeRO keeps an fp32 master partition in fp32 runs too
    if zero_stage >= 1:
        optimizer /= n
    if zero_stage >= 2:
        grads /= n
    if zero_stage >= 3:
        weights /= n
    return {"weights": weights * params, "gradients": grads * params, "optimizer": optimizer * params}


def bucket_bytes(args: EstimateArguments, params: int) -> float:
    """ZeRO's contiguous gradient buckets (stage 1-2): one, or two with overlap_comm, of reduce_bucket_size."""
    if args.zero_stage not in (1, 2):
        return 0.0
    element = 2 if args.precision == "bf16" else 4
    return (2 if args.overlap_comm else 1) * args.reduce_bucket_size * element


def saved_bytes(model: torch.nn.Module, batch: int, channels: int, grid: int, dtype: torch.dtype) -> dict:
    """One training forward on the meta device: bytes autograd keeps for backward, in all and per block.

    Returns {"total", "blocks": [saved bytes of each transformer block], "block_inputs": [bytes of its input]}:
    what activation checkpointing keeps (block inputs) and recomputes (one block at a time).
    """
    from foundation.modeling_scot import _Stage

    counter = {"bytes": 0}
    blocks, inputs, starts = [], [], {}

    def pack(tensor):
        counter["bytes"] += tensor.numel() * tensor.element_size()
        return tensor

    def before(module, args):
        starts[id(module)] = counter["bytes"]
        inputs.append(args[0].numel() * args[0].element_size())

    def after(module, args, output):
        blocks.append(counter["bytes"] - starts[id(module)])

    every_block = [block for stage in model.modules() if isinstance(stage, _Stage) for block in stage.blocks]
    handles = [block.register_forward_pre_hook(before) for block in every_block]
    handles += [block.register_forward_hook(after) for block in every_block]
    try:
        x = torch.randn(batch, channels, grid, grid, device="meta", dtype=dtype)
        t = torch.rand(batch, device="meta", dtype=dtype)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            model(x, t, labels=x)
    finally:
        for handle in handles:
            handle.remove()
    return {"total": counter["bytes"], "blocks": blocks, "block_inputs": inputs}


def activation_bytes(saved: dict, checkpointing: bool, passes: int = 1) -> float:
    """Activation memory at the start of backward of `passes` forward passes: everything saved, or, with
    checkpointing, what is saved outside the blocks, each block's input, and one block recomputed."""
    if not checkpointing:
        return float(passes * saved["total"])
    outside = saved["total"] - sum(saved["blocks"])
    return float(passes * (outside + sum(saved["block_inputs"])) + max(saved["blocks"], default=0))


def estimate(args: EstimateArguments) -> dict:
    from foundation.configuration_scot import ScOTConfig
    from foundation.modeling_scot import ScOT

    overrides = {"num_channels": args.channels, "num_out_channels": args.channels}
    if args.resolution:
        overrides["image_size"] = args.resolution
    config = ScOTConfig.from_preset(args.preset, **overrides)
    grid = config.grid[0]
    dtype = torch.bfloat16 if args.precision == "bf16" and args.zero_stage else torch.float32
    with torch.device("meta"):
        model = ScOT(config).to(dtype)
    model.train()
    params = sum(p.numel() for p in model.parameters())
    # Two batch sizes separate what grows with the batch from what does not (position-bias tables, masks).
    one, two = (saved_bytes(model, b, args.channels, grid, dtype) for b in (1, 2))
    passes = forward_passes(args)
    act_one = activation_bytes(one, args.gradient_checkpointing, passes)
    per_sample = activation_bytes(two, args.gradient_checkpointing, passes) - act_one
    states = model_states(params, args.precision, args.zero_stage, args.world_size)
    fixed = sum(states.values()) + bucket_bytes(args, params) + (act_one - per_sample)
    budget = args.memory_gib * GIB * (1 - args.headroom)
    largest = max(0, math.floor((budget - fixed) / per_sample)) if per_sample > 0 else None
    report = {
        "arguments": asdict(args),
        "grid": grid,
        "parameters": params,
        "per_rank_gib": {name: value / GIB for name, value in states.items()},
        "gradient_buckets_gib": bucket_bytes(args, params) / GIB,
        "forward_passes_kept": passes,
        "activations_per_sample_gib": per_sample / GIB,
        "activations_fixed_gib": (act_one - per_sample) / GIB,
        "fixed_gib": fixed / GIB,
        "budget_gib": budget / GIB,
        "largest_micro_batch": largest,
    }
    if args.micro_batch:
        report["total_gib_at_micro_batch"] = (fixed + args.micro_batch * per_sample) / GIB
    return report


def main(argv: list[str] | None = None) -> int:
    (args, _parser) = parse_dataclasses((EstimateArguments,), argv, needs_datasets=False)
    print(json.dumps(estimate(args), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
