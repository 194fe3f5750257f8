"""scOT: the scalable multiscale operator transformer behind Poseidon, in one file.

Reads top to bottom: resampling, time-conditioned norm, windows and their cached geometry, attention,
transformer block, encoder stage, decoder stage, ConvNeXt skip block, embedding and recovery, model.
Parameter names equal those of the published Poseidon checkpoints (no renaming on load); the exact
forward pass is documented in shared/reference/scot-architecture.md.

The model is single-device and dtype-agnostic (fp32 or bf16 parameters); FFTs and norm statistics run
in fp32 inside it. Parallelism, precision and compilation are decided by the training code.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput
from transformers.utils import logging as transformers_logging_module

from .configuration_scot import ScOTConfig

# A Spectral-Refiner folder (finetune/refiner.py) is a model folder plus this file and the head's weights.
SPECTRAL_HEAD_CONFIG = "spectral_head.json"


# ----------------------------------------------------------------------------------------------- resampling
def fourier_resample(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Resample (..., H, W) to `size` by truncating or zero-padding the centred spectrum, per axis.

    Amplitude-preserving (`norm="forward"`). Equals the reference for even sizes: going down keeps the
    modes k in [-floor(t/2), ceil(t/2) - 1]; going up pads t//2 - n//2 zeros before the centred spectrum.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    dtype = x.dtype
    spec = torch.fft.fft2(x.float(), norm="forward")  # (..., H, W) complex64
    for axis, target in ((-2, size[0]), (-1, size[1])):
        n = spec.shape[axis]
        if n == target:
            continue
        spec = torch.fft.fftshift(spec, dim=axis)  # zero frequency now at index n // 2
        if target < n:
            start = n // 2 - target // 2
            spec = spec.narrow(axis, start, target)
        else:
            before = target // 2 - n // 2
            pad = [0, 0] * 2
            pad[0 if axis == -1 else 2] = before
            pad[1 if axis == -1 else 3] = target - n - before
            spec = F.pad(spec, pad)
        spec = torch.fft.ifftshift(spec, dim=axis)
    return torch.fft.ifft2(spec, norm="forward").real.to(dtype)


# ----------------------------------------------------------------------------------------------- norms
class ConditionalLayerNorm(nn.Module):
    """LayerNorm whose gain and bias are affine functions of the lead time t (`use_conditioning`).

    Keys `weight.weight` (d, 1), `weight.bias` (d,), `bias.weight`, `bias.bias` as in the checkpoints.
    Without conditioning it is a plain LayerNorm with keys `weight`, `bias`. Statistics in fp32.
    """

    def __init__(self, dim: int, eps: float, use_conditioning: bool):
        super().__init__()
        self.eps = eps
        self.use_conditioning = use_conditioning
        if use_conditioning:
            self.weight = nn.Linear(1, dim)
            self.bias = nn.Linear(1, dim)
            self.weight.norm_role, self.bias.norm_role = "gain", "shift"  # for `ScOTConfig.norm_init`
        else:
            self.weight = nn.Parameter(torch.ones(dim))
            self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor, time: Tensor | None) -> Tensor:
        normed = F.layer_norm(x.float(), x.shape[-1:], eps=self.eps)
        if not self.use_conditioning:
            return (normed * self.weight.float() + self.bias.float()).to(x.dtype)
        # Gain and bias in fp32 as well: a bf16 lead time would round 0.7 to 0.6992.
        t = time.reshape(-1, 1).float()  # (B, 1)
        shape = (t.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)  # broadcast over tokens / pixels
        gain = F.linear(t, self.weight.weight.float(), self.weight.bias.float()).reshape(shape)
        bias = F.linear(t, self.bias.weight.float(), self.bias.bias.float()).reshape(shape)
        return (normed * gain + bias).to(x.dtype)


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample while training."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


# ----------------------------------------------------------------------------------------------- window geometry
# Parameter-free tensors derived from (grid, window, shift, device) are built once and kept on the device.
# They are never registered as buffers: checkpoints never held them, and DeepSpeed/bf16 casting of buffers
# would only get in the way. The "eager" attention path rebuilds them on every call (the naive baseline).
# Under torch.compile they are built inside the graph instead: reading a global dict would add guards on
# its contents and a recompile whenever it fills, for tensors that cost microseconds to build.
_GEOMETRY_CACHE: dict[tuple, Tensor] = {}


def _geometry(kind: str, build, *key, device: torch.device, cache: bool = True) -> Tensor:
    if not cache or torch.compiler.is_compiling() or torch.device(device).type == "meta":  # meta: FLOP counting
        return build(*key, device=device)
    full_key = (kind, *key, device)
    value = _GEOMETRY_CACHE.get(full_key)
    if value is None:
        value = build(*key, device=device)
        _GEOMETRY_CACHE[full_key] = value
    return value


def _relative_coords_table(win_h: int, win_w: int, norm: int, device: torch.device) -> Tensor:
    """Log-spaced relative coordinates ((2wh-1)*(2ww-1), 2), normalised by the built window `norm`."""
    dh = torch.arange(-(win_h - 1), win_h, dtype=torch.float32, device=device)
    dw = torch.arange(-(win_w - 1), win_w, dtype=torch.float32, device=device)
    table = torch.stack(torch.meshgrid(dh, dw, indexing="ij"), dim=-1)  # (2wh-1, 2ww-1, 2) as (dh, dw)
    if norm > 1:
        table = table / (norm - 1)
    table = table * 8
    table = torch.sign(table) * torch.log2(table.abs() + 1.0) / math.log2(8)
    return table.reshape(-1, 2)


def _relative_position_index(win_h: int, win_w: int, device: torch.device) -> Tensor:
    """(wh*ww, wh*ww) index into the coordinate table for every (query, key) pair of a window."""
    coords = torch.stack(
        torch.meshgrid(torch.arange(win_h, device=device), torch.arange(win_w, device=device), indexing="ij")
    ).flatten(1)  # (2, N)
    rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N)
    return (rel[0] + win_h - 1) * (2 * win_w - 1) + (rel[1] + win_w - 1)


def _shift_mask(
    pad_h: int, pad_w: int, win_h: int, win_w: int, shift_h: int, shift_w: int, device: torch.device
) -> Tensor:
    """(nW, N, N) additive mask keeping shifted windows from mixing regions that are not neighbours."""
    labels = torch.zeros(pad_h, pad_w, device=device)

    def slices(win: int, shift: int) -> list[slice]:
        return [slice(0, -win), slice(-win, -shift), slice(-shift, None)] if shift > 0 else [slice(0, None)]

    region = 0
    for hs in slices(win_h, shift_h):
        for ws in slices(win_w, shift_w):
            labels[hs, ws] = region
            region += 1
    windows = window_partition(labels[None, :, :, None], win_h, win_w).squeeze(-1).squeeze(0)  # (nW, N)
    different = windows[:, :, None] != windows[:, None, :]
    return different.float() * -100.0


def window_partition(x: Tensor, win_h: int, win_w: int) -> Tensor:
    """(B, H, W, d) -> (B, nW, wh*ww, d), windows row-major, tokens row-major inside a window."""
    b, h, w, d = x.shape
    x = x.view(b, h // win_h, win_h, w // win_w, win_w, d).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // win_h) * (w // win_w), win_h * win_w, d)


def window_reverse(x: Tensor, win_h: int, win_w: int, h: int, w: int) -> Tensor:
    """(B, nW, wh*ww, d) -> (B, H, W, d)."""
    b, d = x.shape[0], x.shape[-1]
    x = x.view(b, h // win_h, w // win_w, win_h, win_w, d).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, d)


@dataclass(frozen=True)
class WindowPlan:
    """Window and shift of one block on one grid."""

    win_h: int
    win_w: int
    shift_h: int
    shift_w: int


def plan_windows(grid: tuple[int, int], built_window: int, shifted: bool) -> WindowPlan:
    """Clamp the window to the grid per axis; an axis that fits in one window is never shifted.

    On square grids this is the reference rule (window := grid when grid <= window, then no shift).
    """
    win_h, win_w = min(built_window, grid[0]), min(built_window, grid[1])
    shift_h = built_window // 2 if shifted and grid[0] > built_window else 0
    shift_w = built_window // 2 if shifted and grid[1] > built_window else 0
    return WindowPlan(win_h, win_w, shift_h, shift_w)


# ----------------------------------------------------------------------------------------------- attention
class _WindowAttention(torch.autograd.Function):
    """softmax(q k^T + bias) v with a hand-written backward: the CPU training path.

    Profiling a T step (batch 4, 128^2, 2 threads) found two costs the plain autograd graph cannot avoid.
    (1) Subnormal floats: the shift mask adds -100 to logits, so exp() lands in the subnormal range for the
    masked pairs and every op that touches those weights (softmax, P v, the backward's products) takes a
    microcode assist per element; the softmax of a shifted stage-0 block ran 26x slower than an unmasked one.
    Logits more than 80 below their row's maximum are raised to max - 80 before the softmax and weights
    under 2^-100 are set to zero after it: both change a weight by < 1e-30 (while the largest weight of
    a row is >= 1/N), far below fp32 resolution, and no subnormal is produced on either pass.
    (2) Fresh (B, nW, h, N, N) buffers for every intermediate: here the logits, the mask sum and the
    probabilities share one buffer, and so do dP and dS in the backward.
    Saves what autograd would (q, k, v, P). No dropout and no forward-mode AD: callers fall back then.
    """

    FLOOR = 80.0
    TINY = 2.0**-100

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
        s = torch.matmul(q, k.transpose(-2, -1))  # (B, nW, h, N, N)
        s += bias
        torch.maximum(s, s.amax(-1, keepdim=True) - _WindowAttention.FLOOR, out=s)
        p = torch.ops.aten._softmax.out(s, -1, False, out=s)
        torch.threshold_(p, _WindowAttention.TINY, 0.0)
        ctx.save_for_backward(q, k, v, p)
        ctx.bias_dims = bias.dim()
        return torch.matmul(p, v)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        q, k, v, p = ctx.saved_tensors
        grad = grad.contiguous()
        dv = torch.matmul(p.transpose(-2, -1), grad)
        dp = torch.matmul(grad, v.transpose(-2, -1))
        ds = torch.ops.aten._softmax_backward_data.out(dp, p, -1, p.dtype, grad_input=dp)  # in place
        dq = torch.matmul(ds, k)
        dk = torch.matmul(ds.transpose(-2, -1), q)
        dbias = None
        if ctx.needs_input_grad[3]:  # the bias broadcasts over the leading (batch, window) dims
            dbias = ds.sum(dim=tuple(range(ds.dim() - ctx.bias_dims)))
        return dq, dk, dv, dbias


class ScOTSelfAttention(nn.Module):
    """SwinV2 cosine attention with a continuous position bias, through scaled_dot_product_attention."""

    def __init__(self, config: ScOTConfig, dim: int, num_heads: int, built_window: int, pretrained_window: int):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        # Coordinates are normalised by the window the stage was built (or pretrained) with, as SwinV2's
        # pretrained_window_size does, so a clamped window at run time reads the same continuous bias.
        self.coord_norm = pretrained_window if pretrained_window > 0 else built_window
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(num_heads, 1, 1)))
        self.continuous_position_bias_mlp = nn.Sequential(
            nn.Linear(2, 512, bias=True), nn.ReLU(inplace=True), nn.Linear(512, num_heads, bias=False)
        )
        self.query = nn.Linear(dim, dim, bias=config.qkv_bias)
        self.key = nn.Linear(dim, dim, bias=False)
        self.value = nn.Linear(dim, dim, bias=config.qkv_bias)
        self.dropout = config.attention_probs_dropout_prob

    def position_bias(self, win_h: int, win_w: int, device: torch.device, naive: bool = False) -> Tensor:
        """(heads, N, N) bias; the tables are cached, the MLP is evaluated every call (it trains).

        `naive` (the yardstick path) rebuilds the tables and applies the sigmoid after the gather, as the
        reference does."""
        table = _geometry(
            "table", _relative_coords_table, win_h, win_w, self.coord_norm, device=device, cache=not naive
        )
        index = _geometry("index", _relative_position_index, win_h, win_w, device=device, cache=not naive)
        first = self.continuous_position_bias_mlp[0]
        bias = self.continuous_position_bias_mlp(table.to(first.weight.dtype)).t()  # (heads, (2wh-1)(2ww-1))
        n = win_h * win_w
        if naive:
            return 16 * torch.sigmoid(torch.index_select(bias, 1, index.reshape(-1)).reshape(self.num_heads, n, n))
        # 16 sigmoid(.) on the table, before the gather: elementwise maps commute with it, and the table is
        # N^2 / ((2wh-1)(2ww-1)) ~ 68x smaller than the (heads, N, N) bias at a 16x16 window.
        # index_select backpropagates through index_add, several times cheaper than advanced indexing.
        bias = 16 * torch.sigmoid(bias)
        return torch.index_select(bias, 1, index.reshape(-1)).reshape(self.num_heads, n, n)

    def forward(self, x: Tensor, plan: WindowPlan, mask: Tensor | None) -> Tensor:
        b, nw, n, d = x.shape  # (B, nW, N, d)

        def heads(t: Tensor) -> Tensor:
            return t.view(b, nw, n, self.num_heads, self.head_dim).transpose(2, 3)  # (B, nW, h, N, hd)

        q, k, v = heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        scale = torch.clamp(self.logit_scale, max=math.log(100.0)).exp()  # (h, 1, 1)
        # Cosine logits: unit-norm q and k, with the per-head temperature folded into q (one multiply, no divide).
        q = q * (scale.to(q.dtype) * torch.rsqrt(q.square().sum(-1, keepdim=True).clamp_min(1e-24)))
        k = k * torch.rsqrt(k.square().sum(-1, keepdim=True).clamp_min(1e-24))
        naive = self.config._attn_implementation == "eager"
        bias = self.position_bias(plan.win_h, plan.win_w, x.device, naive=naive).to(q.dtype)  # (h, N, N)
        if mask is not None:
            bias = bias + mask.to(q.dtype)[:, None]  # (nW, h, N, N)
        dropout = self.dropout if self.training else 0.0
        # The fused kernels take no gradient for a trainable bias on the CPU and fall back to a math path
        # that is slower than the explicit one (it re-checks for fully masked rows), so train explicitly there.
        explicit = naive or (x.device.type == "cpu" and torch.is_grad_enabled() and bias.requires_grad)
        # Compiled graphs take the plain formulation: the hand-written backward's out= kernels break the capture,
        # and the compiler fuses those ops itself.
        if explicit and not naive and dropout == 0.0 and not torch.compiler.is_compiling():
            out = _WindowAttention.apply(q, k, v, bias)
        elif explicit:  # the naive yardstick, attention dropout, compiled graphs
            probs = torch.softmax(q @ k.transpose(-2, -1) + bias, dim=-1)  # (B, nW, h, N, N)
            out = F.dropout(probs, dropout, self.training) @ v
        else:
            # Fused kernels want 4-D inputs: fold windows into the batch, the bias/mask per (window, head).
            bias = bias.expand(b, nw, self.num_heads, n, n).reshape(b * nw, self.num_heads, n, n)
            fold = (b * nw, self.num_heads, n, self.head_dim)
            out = F.scaled_dot_product_attention(
                q.reshape(fold), k.reshape(fold), v.reshape(fold), attn_mask=bias, dropout_p=dropout, scale=1.0
            ).view(b, nw, self.num_heads, n, -1)
        return out.transpose(2, 3).reshape(b, nw, n, d)


class ScOTSelfOutput(nn.Module):
    def __init__(self, config: ScOTConfig, dim: int):
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.dense(x))


class ScOTAttention(nn.Module):
    def __init__(self, config: ScOTConfig, dim: int, num_heads: int, built_window: int, pretrained_window: int):
        super().__init__()
        self.self = ScOTSelfAttention(config, dim, num_heads, built_window, pretrained_window)
        self.output = ScOTSelfOutput(config, dim)

    def forward(self, x: Tensor, plan: WindowPlan, mask: Tensor | None) -> Tensor:
        return self.output(self.self(x, plan, mask))


class ScOTIntermediate(nn.Module):
    def __init__(self, config: ScOTConfig, dim: int):
        super().__init__()
        self.dense = nn.Linear(dim, int(config.mlp_ratio * dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))


class ScOTOutputMLP(nn.Module):
    def __init__(self, config: ScOTConfig, dim: int):
        super().__init__()
        self.dense = nn.Linear(int(config.mlp_ratio * dim), dim)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.dense(x))


# ----------------------------------------------------------------------------------------------- block
class ScOTBlock(nn.Module):
    """Post-norm SwinV2 block with time-conditioned norms: x += LN(attn(x), t); x += LN(mlp(x), t)."""

    def __init__(
        self,
        config: ScOTConfig,
        dim: int,
        num_heads: int,
        built_window: int,
        pretrained_window: int,
        shifted: bool,
        drop_path: float,
    ):
        super().__init__()
        self.config = config
        self.built_window = built_window
        self.shifted = shifted
        eps, cond = config.layer_norm_eps, config.use_conditioning
        self.attention = ScOTAttention(config, dim, num_heads, built_window, pretrained_window)
        self.layernorm_before = ConditionalLayerNorm(dim, eps, cond)
        self.drop_path = DropPath(drop_path)
        self.intermediate = ScOTIntermediate(config, dim)
        self.output = ScOTOutputMLP(config, dim)
        self.layernorm_after = ConditionalLayerNorm(dim, eps, cond)

    def forward(self, x: Tensor, grid: tuple[int, int], time: Tensor | None) -> Tensor:
        b, _, d = x.shape  # (B, h*w, d)
        h, w = grid
        plan = plan_windows(grid, self.built_window, self.shifted)
        win_h, win_w = plan.win_h, plan.win_w
        pad_h, pad_w = (win_h - h % win_h) % win_h, (win_w - w % win_w) % win_w
        windows = F.pad(x.view(b, h, w, d), (0, 0, 0, pad_w, 0, pad_h))  # (B, Hp, Wp, d), padding attended
        hp, wp = h + pad_h, w + pad_w
        shifted = plan.shift_h > 0 or plan.shift_w > 0
        mask = None
        if shifted:
            windows = torch.roll(windows, shifts=(-plan.shift_h, -plan.shift_w), dims=(1, 2))
            naive = self.config._attn_implementation == "eager"
            mask = _geometry(
                "mask", _shift_mask, hp, wp, win_h, win_w, plan.shift_h, plan.shift_w, device=x.device, cache=not naive
            )  # (nW, N, N)
        windows = window_partition(windows, win_h, win_w)  # (B, nW, N, d)
        attended = window_reverse(self.attention(windows, plan, mask), win_h, win_w, hp, wp)  # (B, Hp, Wp, d)
        if shifted:
            attended = torch.roll(attended, shifts=(plan.shift_h, plan.shift_w), dims=(1, 2))
        attended = attended[:, :h, :w, :].reshape(b, h * w, d)
        x = x + self.drop_path(self.layernorm_before(attended, time))
        x = x + self.drop_path(self.layernorm_after(self.output(self.intermediate(x)), time))
        return x


# ----------------------------------------------------------------------------------------------- stages
class ScOTPatchMerging(nn.Module):
    """Downsample 2x: gather 2x2 neighbours into 4d channels, reduce to 2d, time-conditioned norm."""

    def __init__(self, config: ScOTConfig, dim: int):
        super().__init__()
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = ConditionalLayerNorm(2 * dim, config.layer_norm_eps, config.use_conditioning)

    def forward(self, x: Tensor, grid: tuple[int, int], time: Tensor | None) -> Tensor:
        b, _, d = x.shape
        h, w = grid
        x = F.pad(x.view(b, h, w, d), (0, 0, 0, w % 2, 0, h % 2))  # odd sides get a zero row / column
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        x = x.reshape(b, -1, 4 * d)  # (B, ceil(h/2)*ceil(w/2), 4d)
        return self.norm(self.reduction(x), time)


class ScOTPatchUnmerging(nn.Module):
    """Upsample 2x: expand to 2d channels, unfold to a 2x2 neighbourhood of d/2, crop, norm, mix."""

    def __init__(self, config: ScOTConfig, dim: int):
        super().__init__()
        self.upsample = nn.Linear(dim, 2 * dim, bias=False)
        self.mixup = nn.Linear(dim // 2, dim // 2, bias=False)
        self.norm = ConditionalLayerNorm(dim // 2, config.layer_norm_eps, config.use_conditioning)

    def forward(self, x: Tensor, grid: tuple[int, int], target: tuple[int, int], time: Tensor | None) -> Tensor:
        b, _, d = x.shape
        h, w = grid
        x = self.upsample(x).view(b, h, w, 2, 2, d // 2).permute(0, 1, 3, 2, 4, 5).reshape(b, 2 * h, 2 * w, d // 2)
        x = x[:, : target[0], : target[1]].reshape(b, target[0] * target[1], d // 2)
        return self.mixup(self.norm(x, time))


class _Stage(nn.Module):
    """Blocks of one resolution; runs them under activation checkpointing when enabled."""

    gradient_checkpointing = False

    def run_blocks(self, x: Tensor, grid: tuple[int, int], time: Tensor | None) -> Tensor:
        for block in self.blocks:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = self._gradient_checkpointing_func(block.__call__, x, grid, time)
            else:
                x = block(x, grid, time)
        return x


def _built_window(config: ScOTConfig, stage: int) -> int:
    """Window of stage `stage` on the config's grid: clamped to the grid when the grid is not larger."""
    grid = config.grid
    h, w = math.ceil(grid[0] / config.patch_size), math.ceil(grid[1] / config.patch_size)
    for _ in range(stage):
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return min(config.window_size, h, w)


class ScOTEncoderStage(_Stage):
    def __init__(self, config: ScOTConfig, stage: int, drop_paths: list[float]):
        super().__init__()
        dim, heads = config.embed_dim * 2**stage, config.num_heads[stage]
        window, pretrained = _built_window(config, stage), config.pretrained_window_sizes[stage]
        self.blocks = nn.ModuleList(
            ScOTBlock(config, dim, heads, window, pretrained, shifted=b % 2 == 1, drop_path=drop_paths[b])
            for b in range(config.depths[stage])
        )
        last = stage == len(config.depths) - 1
        self.downsample = None if last else ScOTPatchMerging(config, dim)

    def forward(self, x: Tensor, grid: tuple[int, int], time: Tensor | None) -> tuple[Tensor, Tensor]:
        """Returns (skip, next stage input); the skip is the block output without the stage input."""
        skip = self.run_blocks(x, grid, time)
        if self.downsample is None:
            return skip, skip
        return skip, self.downsample(skip + x, grid, time)  # stage-level residual, unlike HF Swin


class ScOTDecoderStage(_Stage):
    def __init__(self, config: ScOTConfig, layer: int, drop_paths: list[float]):
        super().__init__()
        stage = len(config.depths) - 1 - layer  # mirrored encoder stage
        dim, heads, depth = config.embed_dim * 2**stage, config.num_heads[stage], config.depths[stage]
        window, pretrained = _built_window(config, stage), config.pretrained_window_sizes[stage]
        # Built in reverse as in the reference: block b is shifted when (depth - 1 - b) is odd.
        self.blocks = nn.ModuleList(
            ScOTBlock(config, dim, heads, window, pretrained, shifted=(depth - 1 - b) % 2 == 1, drop_path=drop_paths[b])
            for b in range(depth)
        )
        self.upsample = ScOTPatchUnmerging(config, dim) if stage > 0 else None

    def forward(self, x: Tensor, grid: tuple[int, int], target: tuple[int, int] | None, time: Tensor | None) -> Tensor:
        x = self.run_blocks(x, grid, time)
        return x if self.upsample is None else self.upsample(x, grid, target, time)


class ScOTEncoder(nn.Module):
    def __init__(self, config: ScOTConfig, drop_paths: list[list[float]]):
        super().__init__()
        self.layers = nn.ModuleList(ScOTEncoderStage(config, s, drop_paths[s]) for s in range(len(config.depths)))


class ScOTDecoder(nn.Module):
    def __init__(self, config: ScOTConfig, drop_paths: list[list[float]]):
        super().__init__()
        n = len(config.depths)
        self.layers = nn.ModuleList(ScOTDecoderStage(config, k, drop_paths[n - 1 - k][::-1]) for k in range(n))


# ----------------------------------------------------------------------------------------------- skips
class ConvNeXtBlock(nn.Module):
    """ConvNeXt block on tokens: depthwise 7x7, conditioned norm, MLP, layer scale `weight`, residual."""

    def __init__(self, config: ScOTConfig, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = ConditionalLayerNorm(dim, config.layer_norm_eps, config.use_conditioning)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.weight = nn.Parameter(torch.full((dim,), 1e-6))  # layer scale (upstream ConvNeXt's gamma)

    def forward(self, x: Tensor, grid: tuple[int, int], time: Tensor | None) -> Tensor:
        b, _, d = x.shape
        h, w = grid
        y = self.dwconv(x.view(b, h, w, d).permute(0, 3, 1, 2))  # (B, d, h, w)
        y = self.norm(y.permute(0, 2, 3, 1), time)  # (B, h, w, d)
        y = self.pwconv2(F.gelu(self.pwconv1(y))) * self.weight
        return x + y.reshape(b, h * w, d)


class ScOTSkipBlocks(nn.Sequential):
    """`skip_connections[s]` ConvNeXt blocks on skip s (no parameters, an identity, when 0)."""

    def forward(self, x: Tensor, grid: tuple[int, int], time: Tensor | None) -> Tensor:
        for block in self:
            x = block(x, grid, time)
        return x


# ----------------------------------------------------------------------------------------------- embedding, recovery
class ScOTPatchEmbeddingsProjection(nn.Module):
    def __init__(self, config: ScOTConfig):
        super().__init__()
        p = config.patch_size
        self.projection = nn.Conv2d(config.num_channels, config.embed_dim, kernel_size=p, stride=p)


class ScOTEmbeddings(nn.Module):
    def __init__(self, config: ScOTConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.patch_embeddings = ScOTPatchEmbeddingsProjection(config)
        self.norm = ConditionalLayerNorm(config.embed_dim, 1e-5, config.use_conditioning)  # eps fixed, as reference
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: Tensor, time: Tensor | None) -> tuple[Tensor, tuple[int, int]]:
        p = self.patch_size
        h, w = x.shape[-2:]
        x = F.pad(x, (0, (p - w % p) % p, 0, (p - h % p) % p))
        x = self.patch_embeddings.projection(x)  # (B, E, h/p, w/p)
        grid = (x.shape[-2], x.shape[-1])
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, E), row-major
        return self.dropout(self.norm(x, time)), grid


class ScOTPatchRecovery(nn.Module):
    def __init__(self, config: ScOTConfig):
        super().__init__()
        p, c = config.patch_size, config.num_out_channels
        self.projection = nn.ConvTranspose2d(config.embed_dim, c, kernel_size=p, stride=p)
        self.mixup = nn.Conv2d(c, c, kernel_size=5, padding=2, bias=False)

    def forward(self, x: Tensor, grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
        b, _, d = x.shape
        x = x.transpose(1, 2).reshape(b, d, grid[0], grid[1])  # (B, E, h, w)
        x = self.projection(x)[:, :, : size[0], : size[1]]  # (B, C_out, H, W)
        return self.mixup(x)


# ----------------------------------------------------------------------------------------------- model
@dataclass
class ScOTOutput(ModelOutput):
    """Output of `ScOT`: `output` (B, C_out, H, W), normalised; `loss` when labels were given."""

    loss: Tensor | None = None
    output: Tensor | None = None


@dataclass
class ScOTFeatures:
    """What `ScOT.encode` hands to `ScOT.decode`: the body's last tokens and what the tail needs.

    Whoever works on intermediate features (the Spectral-Refiner caches `hidden` once and trains a copy of the
    patch recovery on it) goes through these two public methods, never through hooks or a copy of `forward`.
    """

    hidden: Tensor  # (B, h*w, E) the last decoder stage's tokens: the input of the patch recovery
    grid: tuple[int, int]  # (h, w) patch grid of `hidden`
    model_grid: tuple[int, int]  # the grid the model ran on (its own, or the input's in native mode)
    size: tuple[int, int]  # the input's grid: the output is resampled back to it
    residual: Tensor | None = None  # (B, C_out, *model_grid) the resampled input added when learn_residual


def decode_features(features: ScOTFeatures, recovery: nn.Module) -> Tensor:
    """The model's tail on `features` with a given patch recovery: recovery, learned residual, resampling back
    to the input's grid. `ScOT.decode` is this with the model's own recovery; the Spectral-Refiner trains a copy.
    """
    out = recovery(features.hidden, features.grid, features.model_grid)  # (B, C_out, *model_grid)
    if features.residual is not None:
        out = out + features.residual.to(out.dtype)
    return fourier_resample(out, features.size)  # (B, C_out, *size)


class ScOTPreTrainedModel(PreTrainedModel):
    config_class = ScOTConfig
    base_model_prefix = "scot"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["ScOTBlock", "ConvNeXtBlock"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        role = getattr(module, "norm_role", None)  # a Linear of a time-conditioned norm: "gain" or "shift"
        if role is not None and self.config.norm_init == "identity":
            # The norm's own Linears, not the norm: transformers marks a parent initialised once its children are.
            module.weight.zero_()
            module.bias.fill_(1.0 if role == "gain" else 0.0)
        elif isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            module.weight.normal_(0.0, std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, ConditionalLayerNorm) and not module.use_conditioning:
            module.weight.fill_(1.0)
            module.bias.zero_()
        elif isinstance(module, ScOTSelfAttention):
            module.logit_scale.fill_(math.log(10.0))
        elif isinstance(module, ConvNeXtBlock):
            module.weight.fill_(1e-6)


def _refuse_refined_folder(name_or_path, kwargs: dict) -> None:
    """Raise if `name_or_path` (folder or Hub repo id) is a Spectral-Refiner folder."""
    from transformers.utils import cached_file

    hub_options = ("revision", "cache_dir", "token", "local_files_only", "subfolder", "force_download", "proxies")
    found = cached_file(
        name_or_path,
        SPECTRAL_HEAD_CONFIG,
        **{k: kwargs[k] for k in hub_options if k in kwargs},
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )
    if found is not None:
        raise ValueError(
            f"{name_or_path}: a Spectral-Refiner model (it has {SPECTRAL_HEAD_CONFIG}); ScOT.from_pretrained would "
            f"drop its spectral head and change its predictions. Load it with finetune.load_model("
            f"'{name_or_path}') (or pass ignore_spectral_head=True for the scOT underneath)"
        )


class ScOT(ScOTPreTrainedModel):
    """The scOT operator: (normalised fields at t0, lead time) -> normalised fields at t0 + lead time.

    Loads the published Poseidon checkpoints unchanged (`ScOT.from_pretrained("camlab-ethz/Poseidon-B")`).

    Example:
        >>> model = ScOT(ScOTConfig.from_preset("tiny"))
        >>> y = model(pixel_values=torch.randn(2, 4, 32, 32), time=torch.tensor([0.1, 0.5])).output
    """

    def __init__(self, config: ScOTConfig):
        super().__init__(config)
        config.check()
        n = len(config.depths)
        total = sum(config.depths)
        rates = [config.drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # linear, as Swin
        drop_paths = [rates[sum(config.depths[:s]) : sum(config.depths[: s + 1])] for s in range(n)]
        self.embeddings = ScOTEmbeddings(config)
        self.encoder = ScOTEncoder(config, drop_paths)
        self.decoder = ScOTDecoder(config, drop_paths)
        self.residual_blocks = nn.ModuleList(
            ScOTSkipBlocks(*(ConvNeXtBlock(config, config.embed_dim * 2**s) for _ in range(config.skip_connections[s])))
            for s in range(n)
        )
        self.patch_recovery = ScOTPatchRecovery(config)
        self.post_init()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load our checkpoints or the published Poseidon ones (folder or Hub repo id, any revision).

        A checkpoint that does not fit its config (missing or unexpected tensors, other shapes) raises a
        `ValueError` naming the first differences, instead of loading half-initialised weights. Pass
        `ignore_mismatched_sizes=True` to re-initialise tensors whose shapes differ (head surgery).

        A Spectral-Refiner folder is refused: this class would return it without its spectral head, so its
        predictions would silently change. `finetune.load_model` loads it whole; `ignore_spectral_head=True`
        loads the scOT underneath on purpose.
        """
        allow_mismatch = kwargs.pop("ignore_mismatched_sizes", False)
        want_info = kwargs.pop("output_loading_info", False)
        if not kwargs.pop("ignore_spectral_head", False):
            _refuse_refined_folder(pretrained_model_name_or_path, kwargs)
        hf_logging = transformers_logging_module
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # our own error below replaces transformers' long loading report
        try:
            model, info = super().from_pretrained(
                pretrained_model_name_or_path, *args, ignore_mismatched_sizes=True, output_loading_info=True, **kwargs
            )
        except SafetensorError as error:  # truncated or corrupt weights: name the file, not a Rust header parser
            raise ValueError(
                f"{pretrained_model_name_or_path}: model.safetensors is truncated or corrupt ({error})"
            ) from error
        except OSError as error:  # transformers' messages do not always say which repo or folder failed
            if str(pretrained_model_name_or_path) in str(error):
                raise
            raise OSError(f"{pretrained_model_name_or_path}: {error}") from error
        except pickle.UnpicklingError as error:  # a legacy .bin is read with weights_only=True, never unpickled
            raise ValueError(
                f"{pretrained_model_name_or_path}: the legacy pytorch_model.bin holds objects other than tensors; "
                f"it is not unpickled (weights_only=True). Convert a checkpoint you trust to safetensors."
            ) from error
        finally:
            hf_logging.set_verbosity(verbosity)
        problems = []
        if not allow_mismatch:
            mismatched = sorted(info["mismatched_keys"])
            problems += [f"{k}: checkpoint {tuple(a)} vs config {tuple(b)}" for k, a, b in mismatched]
        problems += [f"missing {k}" for k in sorted(info["missing_keys"])]
        problems += [f"unexpected {k}" for k in sorted(info["unexpected_keys"])]
        if problems:
            shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} in all)" if len(problems) > 5 else "")
            raise ValueError(
                f"{pretrained_model_name_or_path}: the weights do not fit the scOT config "
                f"(another architecture or size?): {shown}"
            )
        return (model, info) if want_info else model

    # ------------------------------------------------------------------ input checks
    def _check_inputs(self, x: Tensor, time: Tensor | float | None) -> Tensor | None:
        """Validate shapes (always) and values (eager, not training), return the lead times as (B,)."""
        if not isinstance(x, Tensor) or x.dim() != 4:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"pixel_values must be (batch, channels, H, W), got shape {got}")
        if x.shape[1] != self.config.num_channels:
            raise ValueError(
                f"pixel_values has {x.shape[1]} channels, the model expects {self.config.num_channels} "
                f"({', '.join(self.config.channel_names)})"
            )
        # Values are checked in eval mode (a user's call); in training the data pipeline checked them when it read
        # them, and a check here would read the device on every step (a host sync serialising a GPU pipeline).
        check_values = not self.training and not torch.compiler.is_compiling() and x.device.type != "meta"
        if check_values and not torch.isfinite(x).all():
            raise ValueError("pixel_values contains NaN or Inf")
        if not self.config.use_conditioning:
            return None
        if time is None:
            raise ValueError("time (lead time per sample) is required: the model uses time-conditioned norms")
        t = torch.as_tensor(time, device=x.device, dtype=torch.float32)
        if t.dim() == 0:
            t = t.expand(x.shape[0])
        elif t.dim() == 2 and t.shape[1] == 1:
            t = t[:, 0]
        if t.dim() != 1 or t.shape[0] != x.shape[0]:
            raise ValueError(f"time must be a scalar or of shape ({x.shape[0]},), one per sample; got {tuple(t.shape)}")
        if check_values and not torch.isfinite(t).all():
            raise ValueError("time contains NaN or Inf")
        return t

    # ------------------------------------------------------------------ forward
    def encode(self, pixel_values: Tensor, time: Tensor | float | None = None) -> ScOTFeatures:
        """Everything up to the patch recovery: embedding, encoder stages, skips and decoder stages.

        Args:
            pixel_values: (B, C_in, H, W) normalised input fields; any H x W.
            time: lead time per sample, (B,) or a scalar, in units of `config.time_scale`.
        """
        t = self._check_inputs(pixel_values, time)
        size = tuple(pixel_values.shape[-2:])
        # The grid the model runs on: its own (reference behaviour) or the input's (native mode).
        model_grid = self.config.grid if self.config.input_resampling == "fourier" else size
        x = fourier_resample(pixel_values, model_grid)
        residual = x[:, : self.config.num_out_channels] if self.config.learn_residual else None
        x = x.to(self.embeddings.patch_embeddings.projection.weight.dtype)

        x, grid = self.embeddings(x, t)  # (B, h*w, E)
        grids, skips = [], []
        for stage in self.encoder.layers:
            skip, x = stage(x, grid, t)
            grids.append(grid)
            skips.append(skip)
            grid = (math.ceil(grid[0] / 2), math.ceil(grid[1] / 2))

        n = len(self.decoder.layers)
        x = self.residual_blocks[n - 1](skips[n - 1], grids[n - 1], t)  # processed bottleneck
        for k, layer in enumerate(self.decoder.layers):
            s = n - 1 - k
            if k > 0:
                x = x + self.residual_blocks[s](skips[s], grids[s], t)
            x = layer(x, grids[s], grids[s - 1] if s > 0 else None, t)  # (B, h_s*w_s, E_s)
        return ScOTFeatures(hidden=x, grid=grids[0], model_grid=model_grid, size=size, residual=residual)

    def decode(self, features: ScOTFeatures, recovery: nn.Module | None = None) -> Tensor:
        """The tail: patch recovery, the learned residual, and the resampling back to the input's grid.

        Args:
            features: What `encode` returned.
            recovery: A module to use instead of `self.patch_recovery` (the Spectral-Refiner trains a copy).
        Returns:
            (B, C_out, H, W) normalised prediction.
        """
        return decode_features(features, self.patch_recovery if recovery is None else recovery)

    def forward(
        self,
        pixel_values: Tensor,
        time: Tensor | float | None = None,
        labels: Tensor | None = None,
        channel_mask: Tensor | None = None,
        return_dict: bool | None = None,
    ) -> ScOTOutput | tuple:
        """Predict normalised fields at lead time `time`: `decode(encode(pixel_values, time))`.

        Args:
            pixel_values: (B, C_in, H, W) normalised input fields; any H x W.
            time: lead time per sample, (B,) or a scalar, in units of `config.time_scale`.
            labels: optional (B, C_out, H, W) normalised targets; the relative Lp loss is returned.
            channel_mask: optional (B, C_out) or (C_out,) 0/1 mask of the output channels that count in the loss.
            return_dict: return a tuple instead of `ScOTOutput` when False.
        """
        out = self.decode(self.encode(pixel_values, time))  # (B, C_out, H, W)
        loss = None
        if labels is not None:
            from .losses import relative_lp_loss

            loss = relative_lp_loss(
                out, labels, self.config.channel_slice_list_normalized_loss, p=self.config.p, channel_mask=channel_mask
            )
        if return_dict is False:
            return (loss, out) if loss is not None else (out,)
        return ScOTOutput(loss=loss, output=out)

    @contextmanager
    def attention_implementation(self, name: str) -> Iterator[None]:
        """Run a block of code with another attention path, then restore the configured one.

        "eager" is the explicit softmax(QK^T + B)V, which forward-mode AD (`torch.func.jvp`) needs: the fused
        kernels have no forward-mode rule. "sdpa" uses the fused kernels where they apply. (transformers'
        `set_attn_implementation` refuses models without its AttentionInterface, hence this method.)
        """
        if name not in ("eager", "sdpa"):
            raise ValueError(f"attention implementation must be 'eager' or 'sdpa', got {name!r}")
        before = self.config._attn_implementation
        self.config._attn_implementation = name
        try:
            yield
        finally:
            self.config._attn_implementation = before

    # ------------------------------------------------------------------ physical units
    def _stats(self, which: str, x: Tensor) -> tuple[Tensor, Tensor]:
        mean = torch.tensor(getattr(self.config, f"{which}_mean"), dtype=torch.float32, device=x.device)
        std = torch.tensor(getattr(self.config, f"{which}_std"), dtype=torch.float32, device=x.device)
        if x.dim() < 3 or x.shape[-3] != mean.shape[0]:
            raise ValueError(
                f"expected (..., {mean.shape[0]}, H, W) fields for the {which} statistics, got shape {tuple(x.shape)}"
            )
        return mean[:, None, None], std[:, None, None]

    def normalize(self, x: Tensor) -> Tensor:
        """Physical input fields (..., C_in, H, W) -> the model's normalised inputs."""
        mean, std = self._stats("input", x)
        return ((x.float() - mean) / std).to(x.dtype)

    def denormalize(self, y: Tensor) -> Tensor:
        """The model's normalised outputs (..., C_out, H, W) -> physical fields."""
        mean, std = self._stats("output", y)
        return (y.float() * std + mean).to(y.dtype)

    @torch.no_grad()
    def predict(self, fields: Tensor, lead_time: Tensor | float) -> Tensor:
        """Physical fields in, physical fields out; `lead_time` in physical time (divided by time_scale)."""
        t = torch.as_tensor(lead_time, dtype=torch.float32, device=fields.device) / self.config.time_scale
        return self.denormalize(self(pixel_values=self.normalize(fields), time=t).output)

    @torch.no_grad()
    def rollout(self, fields: Tensor, steps: int, lead_time: float, strategy: str = "jump") -> Tensor:
        """Physical fields (B, C_in, H, W) in; physical predictions at `lead_time` x 1..`steps` out (steps, B, C_out,
        H, W), also past the training window. `lead_time` in physical time, as in `predict`. Only the evolving
        outputs are fed back; static inputs stay. `strategy`: "jump" (default: chains of the largest trained lead
        time, the remainder predicted directly) or "autoregressive" (one call per `lead_time`); see
        `foundation.evaluation.rollout_predictions`, which serves any model."""
        from .evaluation import rollout_predictions

        lead = float(lead_time) / self.config.time_scale
        out = rollout_predictions(self, self.normalize(fields), lead, steps, strategy=strategy)
        return self.denormalize(out)
