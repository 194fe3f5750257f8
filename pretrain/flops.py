"""FLOPs of a training sample and the FLOP/s they are measured against: the MFU that logs and benchmarks report."""

from __future__ import annotations

import json
import time

import torch

from foundation import ScOT, ScOTConfig

_FLOPS: dict[tuple, float] = {}  # by geometry: a study or benchmark runs many models of one geometry per process


def train_flops_per_sample(config: ScOTConfig, grid: tuple[int, int]) -> float:
    """Forward + backward FLOPs of one sample, counted once per geometry on the meta device (no memory, no
    compute; ~1.7 s for the tiny model, hence the cache)."""
    fields = ("image_size", "patch_size", "num_channels", "num_out_channels", "embed_dim", "depths", "num_heads")
    fields += ("skip_connections", "window_size", "mlp_ratio", "use_conditioning", "learn_residual", "input_resampling")
    key = (tuple(grid), *(json.dumps(getattr(config, f)) for f in fields))
    if key not in _FLOPS:
        _FLOPS[key] = _count_train_flops(config, grid)
    return _FLOPS[key]


def _count_train_flops(config: ScOTConfig, grid: tuple[int, int]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = ScOT(config)
        x, t = torch.zeros(1, config.num_channels, *grid), torch.zeros(1)
    with FlopCounterMode(display=False) as counter:
        model(pixel_values=x, time=t).output.sum().backward()
    return float(counter.get_total_flops())


def module_train_flops(model: torch.nn.Module, channels: int, grid: tuple[int, int]) -> float:
    """Forward + backward FLOPs of one sample through `model` (run once on a zero input; FFTs are not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    x, t = torch.zeros(1, channels, *grid, device=device), torch.zeros(1, device=device)
    with FlopCounterMode(display=False) as counter:
        model(pixel_values=x, time=t).output.sum().backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def peak_flops(device: torch.device, precision: str, datasheet_tflops: float | None) -> tuple[float, str]:
    """FLOP/s the MFU is relative to: a datasheet figure if given, else a large matmul measured here."""
    if datasheet_tflops:
        return datasheet_tflops * 1e12, "datasheet"
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, reps = time.perf_counter(), 5
    for _ in range(reps):
        a @ b
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start), f"measured ({n}x{n} {precision} matmul)"
