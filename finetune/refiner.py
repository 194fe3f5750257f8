"""Spectral-Refiner fine-tuning of scOT (Cao et al., ICLR 2025), ported as `../shared/reference/spectral-refiner.md`
option A: freeze the body, cache its features once, and train only the last layer (the patch recovery) plus a
new full-frequency spectral head at the data's native resolution, on a negative Sobolev (H^-s) loss.

    features = body(x, t)                    frozen; computed once per sample and cached (fp32, CPU)
    base     = resample(recovery(features) [+ x], native)      the model's own last layer (trainable copy)
    output   = base + irfft2(W . rfft2(base)) + b              W: (C, C, H, W/2 + 1) complex, every mode kept

W and b start at zero, so step 0 reproduces the base model's prediction exactly. The output is affine in W
(and in the recovery weights), so the refinement is a small, well-conditioned problem that costs one forward
pass of the body per sample plus the head's gradient per step.

Two losses: `labels` (relative H^-s norm of prediction - target per channel) and `residual` (label-free: the
H^-1 norm of the incompressible Navier-Stokes vorticity residual w_t + u.grad w - nu lap w - f of the
de-normalised prediction, with viscosity, forcing and box from the dataset's metadata). Its time derivative
comes from the model itself: scOT is continuous in the lead time, so d(features)/dt is one forward-mode JVP
through the frozen body (cached beside the features) and the head, affine, maps it to d(output)/dt.
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from foundation import ScOT, ScOTFeatures, fourier_resample
from foundation.compat import whole_weights_under_zero3
from foundation.data.source import DataError, SourceInfo, box_lengths
from foundation.evaluation import group_names, metric_key, per_sample_errors, summarise
from foundation.losses import negative_sobolev_norm
from foundation.modeling_scot import SPECTRAL_HEAD_CONFIG, decode_features

if TYPE_CHECKING:
    from foundation.data import Mixture

    from .config import RefinerOptions

HEAD_WEIGHTS = "spectral_head.safetensors"
HEAD_CONFIG = SPECTRAL_HEAD_CONFIG


# ----------------------------------------------------------------------------------------------- the head
class SpectralHead(nn.Module):
    """y = x + irfft2(W . rfft2(x)) + b over every Fourier mode of an (H, W) grid; zero-initialised = identity.

    W mixes channels per mode (C_out x C_out complex per mode); FFTs run in fp32 whatever the input dtype.
    """

    def __init__(self, channels: int, size: tuple[int, int]):
        super().__init__()
        self.channels, self.size = channels, (int(size[0]), int(size[1]))
        modes = (self.size[0], self.size[1] // 2 + 1)
        self.weight = nn.Parameter(torch.zeros(channels, channels, *modes, 2))  # (real, imag)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor, tangent: bool = False) -> Tensor:
        """Refined fields; `tangent=True` applies the linear part only (for derivatives of x)."""
        if tuple(x.shape[-2:]) != self.size:
            raise ValueError(
                f"the spectral head was fitted at {self.size[0]}x{self.size[1]}; got fields of "
                f"{x.shape[-2]}x{x.shape[-1]} (refine again at this resolution)"
            )
        spec = torch.fft.rfft2(x.float(), norm="ortho")  # (B, C, H, W/2+1)
        mixed = torch.einsum("oihw,bihw->bohw", torch.view_as_complex(self.weight), spec)
        y = x.float() + torch.fft.irfft2(mixed, s=self.size, norm="ortho")
        if not tangent:
            y = y + self.bias[:, None, None]
        return y.to(x.dtype)


class RefinedScOT(nn.Module):
    """A scOT whose output goes through a fitted `SpectralHead` (native resolution); saved beside the model.

    The folder is a normal model folder (config.json + model.safetensors, with the refined recovery) plus
    `spectral_head.safetensors` and `spectral_head.json`; `finetune.load_model` reads it back.
    """

    def __init__(self, model: ScOT, head: SpectralHead):
        super().__init__()
        self.model, self.head = model, head

    @property
    def config(self):
        return self.model.config

    def forward(self, pixel_values: Tensor, time=None, labels: Tensor | None = None, channel_mask=None, **_):
        from foundation.losses import relative_lp_loss
        from foundation.modeling_scot import ScOTOutput

        out = self.head(self.model(pixel_values=pixel_values, time=time).output)
        loss = None
        if labels is not None:
            groups = self.config.channel_slice_list_normalized_loss
            loss = relative_lp_loss(out, labels, groups, p=self.config.p, channel_mask=channel_mask)
        return ScOTOutput(loss=loss, output=out)

    def save_pretrained(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        self.model.save_pretrained(folder, safe_serialization=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.head.state_dict().items()}, folder / HEAD_WEIGHTS)
        (folder / HEAD_CONFIG).write_text(json.dumps({"channels": self.head.channels, "size": list(self.head.size)}))

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> RefinedScOT:
        from safetensors.torch import load_file

        folder = Path(folder)
        spec = json.loads((folder / HEAD_CONFIG).read_text())
        head = SpectralHead(spec["channels"], tuple(spec["size"]))
        try:
            head.load_state_dict(load_file(folder / HEAD_WEIGHTS))
        except Exception as error:  # safetensors and load_state_dict raise their own error types
            raise ValueError(f"{folder / HEAD_WEIGHTS}: not a spectral head of {spec} ({error})") from error
        return cls(ScOT.from_pretrained(folder, ignore_spectral_head=True), head)


# ----------------------------------------------------------------------------------------------- features
@dataclass
class FeatureCache:
    """What the frozen body produced for a set of pairs; everything the head needs, on the CPU in fp32."""

    features: Tensor  # (N, h*w, E) the input of the patch recovery
    grid: tuple[int, int]  # (h, w) patch grid
    model_grid: tuple[int, int]  # the grid the model ran on
    inputs: Tensor  # (N, C_in, H, W) normalised inputs (learn_residual, forcing fields, rollouts)
    labels: Tensor  # (N, C_out, H, W)
    time: Tensor  # (N,)
    channel_mask: Tensor  # (N, C_out)
    tangents: Tensor | None = None  # (N, h*w, E) d features / d lead time (residual mode)

    def __len__(self) -> int:
        return len(self.time)


@torch.no_grad()
def cache_features(
    model: ScOT, dataset, indices, batch_size: int = 32, with_tangents: bool = False, device="cpu"
) -> FeatureCache:
    """Run the frozen body once over `dataset[indices]` and keep what `model.encode` returns (the patch
    recovery's inputs).

    With `with_tangents`, also d(features)/d(lead time) by forward-mode AD (torch.func.jvp); the fused attention
    kernels have no forward-mode rule, so the explicit attention runs for that pass.
    """
    feats, tangents, inputs, labels, times, masks = [], [], [], [], [], []
    model.eval()
    first = None
    for start in range(0, len(indices), batch_size):
        items = [dataset[int(k)] for k in indices[start : start + batch_size]]
        x = torch.stack([it["pixel_values"] for it in items]).to(device)
        t = torch.stack([it["time"] for it in items]).to(device)
        if with_tangents:
            with model.attention_implementation("eager"):
                f, df = torch.func.jvp(lambda tt, x=x: model.encode(x, tt).hidden, (t,), (torch.ones_like(t),))
            tangents.append(df.float().cpu())
        else:
            f = model.encode(x, t).hidden  # (B, h*w, E)
        if first is None:
            first = model.encode(x[:1], t[:1])  # the grids (cheap: one sample)
        feats.append(f.float().cpu())
        inputs.append(x.cpu())
        labels.append(torch.stack([it["labels"] for it in items]))
        times.append(t.cpu())
        masks.append(torch.stack([it["channel_mask"] for it in items]))
    return FeatureCache(
        features=torch.cat(feats),
        grid=tuple(first.grid),
        model_grid=tuple(first.model_grid),
        inputs=torch.cat(inputs),
        labels=torch.cat(labels),
        time=torch.cat(times),
        channel_mask=torch.cat(masks),
        tangents=torch.cat(tangents) if with_tangents else None,
    )


class RefinerHead(nn.Module):
    """The trainable end of the model: a copy of the patch recovery, decoded by the model's own tail
    (`ScOT.decode`: recovery, learned residual, resampling) to the native grid, then the spectral head.
    `head(features) == model(x, t).output` before any step."""

    def __init__(self, model: ScOT, native: tuple[int, int]):
        super().__init__()
        self.recovery = copy.deepcopy(model.patch_recovery).float()
        self.spectral = SpectralHead(model.config.num_out_channels, native)
        self.learn_residual = model.config.learn_residual
        self.out_channels = model.config.num_out_channels

    def forward(self, features: Tensor, cache: FeatureCache, rows: Tensor, tangent: bool = False) -> Tensor:
        residual = None
        if self.learn_residual and not tangent:  # a derivative in t does not see the (t-independent) input
            residual = fourier_resample(cache.inputs[rows], cache.model_grid)[:, : self.out_channels]

        def decode(hidden: Tensor, residual: Tensor | None = None) -> Tensor:
            encoded = ScOTFeatures(hidden, cache.grid, cache.model_grid, self.spectral.size, residual)
            return decode_features(encoded, self.recovery)  # the model's own tail, on the trainable recovery

        out = decode(features, residual)
        if tangent:  # the derivative of an affine map is its linear part: drop the recovery's bias
            out = out - decode(torch.zeros_like(features[:1]))
        return self.spectral(out, tangent=tangent)

    def param_groups(self, weight_lr: float, bias_lr: float, train_recovery: bool) -> list[dict]:
        """Weights at `weight_lr`; biases (recovery bias, spectral bias) at the larger `bias_lr`, as the recipe."""
        weights, biases = [self.spectral.weight], [self.spectral.bias]
        for p in self.recovery.parameters():
            p.requires_grad_(train_recovery)
        if train_recovery:
            weights += [self.recovery.projection.weight, self.recovery.mixup.weight]
            biases.append(self.recovery.projection.bias)
        return [{"params": weights, "lr": weight_lr}, {"params": biases, "lr": bias_lr}]


# ----------------------------------------------------------------------------------------------- losses
def relative_sobolev_loss(
    pred: Tensor, target: Tensor, mask: Tensor, s: float, alpha: float, lengths: tuple[float, float]
) -> Tensor:
    """Mean over samples and present channels of ||pred - y||^2_{H^-s} / ||y||^2_{H^-s} (FFTs in fp64)."""
    num = negative_sobolev_norm(pred - target, s=s, alpha=alpha, lengths=lengths)  # (B, C)
    den = negative_sobolev_norm(target, s=s, alpha=alpha, lengths=lengths).clamp_min(1e-20)
    ratio = (num / den) * mask.to(num.dtype)
    return (ratio.sum() / mask.sum().clamp_min(1)).float()


def _derivatives(field: Tensor, lengths: tuple[float, float]) -> tuple[Tensor, Tensor, Tensor]:
    """(d/dx, d/dy, laplacian) of periodic fields (..., H, W) spectrally; x along H, y along W (fp64)."""
    h, w = field.shape[-2:]
    kx = torch.fft.fftfreq(h, d=lengths[0] / h, dtype=torch.float64, device=field.device) * 2 * math.pi
    ky = torch.fft.fftfreq(w, d=lengths[1] / w, dtype=torch.float64, device=field.device) * 2 * math.pi
    spec = torch.fft.fft2(field.to(torch.float64))
    dx = torch.fft.ifft2(1j * kx[:, None] * spec).real
    dy = torch.fft.ifft2(1j * ky[None, :] * spec).real
    lap = torch.fft.ifft2(-(kx[:, None] ** 2 + ky[None, :] ** 2) * spec).real
    return dx, dy, lap


def vorticity_residual(
    u: Tensor, v: Tensor, u_t: Tensor, v_t: Tensor, viscosity: float, forcing: Tensor | None, lengths
) -> Tensor:
    """w_t + u dw/dx + v dw/dy - nu lap w - f for physical velocity fields (B, H, W) and their time derivatives.

    w = dv/dx - du/dy (x along the H axis, as the built-in solver stores it); f is the vorticity forcing.
    """
    vx, _, _ = _derivatives(v, lengths)
    _, uy, _ = _derivatives(u, lengths)
    w = vx - uy
    vtx, _, _ = _derivatives(v_t, lengths)
    _, uty, _ = _derivatives(u_t, lengths)
    w_t = vtx - uty
    wx, wy, lap = _derivatives(w, lengths)
    r = w_t + u.double() * wx + v.double() * wy - viscosity * lap
    if forcing is not None:
        r = r - forcing.double()
    return r


def residual_parameters(info, output_names: list[str]) -> tuple[float, tuple[float, float]]:
    """(viscosity, box side lengths) of `--refiner_loss residual` from a source's `SourceInfo`, checked.

    The fine-tuning run calls it before its first step, so that metadata only this mode needs fails the run at once
    rather than after the fine-tune that precedes the refinement.

    Raises:
        DataError: one line naming the file and the key, when the model outputs lack u or v, the metadata lacks a
            viscosity (pde.viscosity or pde.nu) >= 0, or the box is not periodic on both axes.
    """
    if "u" not in output_names or "v" not in output_names:
        raise DataError(
            f"{info.name}: channel_names: --refiner_loss residual needs velocity channels u and v; the model "
            f"outputs {list(output_names)}"
        )
    pde = info.pde or {}
    key = "viscosity" if "viscosity" in pde else "nu"
    viscosity = pde.get(key)
    if viscosity is None:
        raise DataError(
            f"{info.name}: pde.viscosity: --refiner_loss residual needs the viscosity in the dataset's metadata "
            f"(pde.viscosity or pde.nu); pde has {sorted(pde)}"
        )
    if not isinstance(viscosity, numbers.Real) or isinstance(viscosity, bool) or not 0 <= viscosity < math.inf:
        raise DataError(f"{info.name}: pde.{key}: the viscosity must be a number >= 0, got {viscosity!r}")
    periodic = (info.domain or {}).get("periodic", [True, True])  # absent: the built-in solvers' periodic box
    if not all(periodic):
        raise DataError(
            f"{info.name}: domain.periodic: the residual loss is exact only on a periodic box, got {periodic}"
        )
    return float(viscosity), box_lengths(info.domain, info.name)


class NavierStokesResidual:
    """Label-free loss: ||residual||^2_{H^-s} of the de-normalised prediction, relative to the base model's."""

    def __init__(self, config, info, s: float, alpha: float, input_names: list[str]):
        names = config.output_channel_names
        self.viscosity, self.lengths = residual_parameters(info, names)
        self.iu, self.iv = names.index("u"), names.index("v")
        self.out_mean = torch.tensor(config.output_mean, dtype=torch.float64)
        self.out_std = torch.tensor(config.output_std, dtype=torch.float64)
        self.forcing_index = input_names.index("f") if "f" in input_names else None
        self.in_mean, self.in_std = config.input_mean, config.input_std
        self.time_scale = float(config.time_scale)
        self.s, self.alpha = s, alpha
        self.scale: float | None = None

    def residual(self, out: Tensor, d_out: Tensor, inputs: Tensor) -> Tensor:
        m, sd = self.out_mean.to(out.device), self.out_std.to(out.device)
        u = out[:, self.iu].double() * sd[self.iu] + m[self.iu]
        v = out[:, self.iv].double() * sd[self.iv] + m[self.iv]
        # d/dt (physical) = d/d(lead time) / time_scale; the mean is constant in time
        u_t = d_out[:, self.iu].double() * sd[self.iu] / self.time_scale
        v_t = d_out[:, self.iv].double() * sd[self.iv] / self.time_scale
        forcing = None
        if self.forcing_index is not None:
            k = self.forcing_index
            forcing = inputs[:, k].double() * self.in_std[k] + self.in_mean[k]
        return vorticity_residual(u, v, u_t, v_t, self.viscosity, forcing, self.lengths)

    def __call__(self, out: Tensor, d_out: Tensor, inputs: Tensor) -> Tensor:
        norm = negative_sobolev_norm(
            self.residual(out, d_out, inputs), s=self.s, alpha=self.alpha, lengths=self.lengths
        )
        if self.scale is None:  # the first evaluation (the base model, step 0) sets the unit
            self.scale = float(norm.mean().detach().clamp_min(1e-30))
        return (norm.mean() / self.scale).float()


# ----------------------------------------------------------------------------------------------- the loop
def predict_cached(head: RefinerHead, cache: FeatureCache, batch_size: int = 64) -> Tensor:
    with torch.no_grad():
        outs = []
        for start in range(0, len(cache), batch_size):
            rows = torch.arange(start, min(start + batch_size, len(cache)))
            outs.append(head(cache.features[rows], cache, rows))
        return torch.cat(outs)


def validation_error(head: RefinerHead, cache: FeatureCache, config) -> float:
    """The headline metric (`foundation.evaluation`) on normalised fields: mean over channel groups of the median
    relative L1 error (%)."""
    errors = per_sample_errors(predict_cached(head, cache), cache.labels, config, cache.channel_mask)
    return summarise(errors, group_names(config), "normalised")[metric_key(space="normalised")]


def refine(
    model: ScOT,
    fit: FeatureCache,
    val: FeatureCache,
    *,
    steps: int,
    lr: float,
    bias_lr: float,
    batch_size: int,
    s: float,
    alpha: float,
    lengths: tuple[float, float],
    residual: NavierStokesResidual | None = None,
    train_recovery: bool = True,
    eval_every: int = 10,
    patience: int = 20,
    warmup: float = 0.2,
    seed: int = 0,
    log=print,
) -> tuple[RefinedScOT, dict]:
    """Fit the head on `fit` (labels or residual), early-stopped on the median relative L1 of `val`.

    Returns the refined model (the best head on validation, never worse than step 0) and a history.
    """
    native = tuple(fit.labels.shape[-2:])
    head = RefinerHead(model, native)
    optimizer = torch.optim.Adam(head.param_groups(lr, bias_lr, train_recovery))
    # Linear warm-up: Adam's first steps move every zero-initialised spectral weight by ~lr whatever its gradient;
    # without it the validation error spiked (10.2% -> 27.5% at step 25 on the demo's Allen-Cahn) before falling.
    warm = max(1, int(warmup * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda k: min(1.0, (k + 1) / warm))
    generator = torch.Generator().manual_seed(seed)
    best = validation_error(head, val, model.config)
    history = {"val_median_rel_l1": [(0, best)], "loss": []}
    best_state, best_step, waited = copy.deepcopy(head.state_dict()), 0, 0
    log(f"[refiner] step 0: validation median relative L1 {best:.3f}%")
    for step in range(1, steps + 1):
        rows = torch.randperm(len(fit), generator=generator)[:batch_size]
        out = head(fit.features[rows], fit, rows)
        if residual is None:
            loss = relative_sobolev_loss(out, fit.labels[rows], fit.channel_mask[rows], s, alpha, lengths)
        else:
            d_out = head(fit.tangents[rows], fit, rows, tangent=True)
            loss = residual(out, d_out, fit.inputs[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        history["loss"].append((step, loss.item()))
        if step % eval_every == 0 or step == steps:
            error = validation_error(head, val, model.config)
            history["val_median_rel_l1"].append((step, error))
            if error < best - 1e-6:
                best, best_state, best_step, waited = error, copy.deepcopy(head.state_dict()), step, 0
            else:
                waited += 1
            log(f"[refiner] step {step}: loss {loss.item():.4e}, validation {error:.3f}% (best {best:.3f}%)")
            if waited >= patience:
                log(f"[refiner] early stop at step {step}: no validation gain for {patience} evaluations")
                break
    head.load_state_dict(best_state)
    history.update(best_step=best_step, best_val_median_rel_l1=best, steps_run=step if steps else 0)
    refined = copy.deepcopy(model).float().eval()
    refined.patch_recovery.load_state_dict(head.recovery.state_dict())
    spectral = head.spectral
    for p in spectral.parameters():
        p.requires_grad_(False)
    return RefinedScOT(refined, spectral).eval(), history


def split_indices(n: int, limit: int | None = None) -> np.ndarray:
    """All indices, or `limit` of them evenly spaced (deterministic)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.linspace(0, n - 1, limit).round().astype(int)


# ----------------------------------------------------------------------------------------------- after fine-tuning
def refine_exported(
    model_dir: Path,
    fit_set: Mixture,
    val_set: Mixture,
    info: SourceInfo,
    options: RefinerOptions,
    val_pairs: int,
    out_dir: Path,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict:
    """Spectral-Refiner on the scOT exported in `model_dir` (`refine` on features cached from the pairs).

    The refined model takes the place of `model_dir`; the unrefined one moves to `model-before-refiner/` beside
    it; `out_dir/refiner_history.json` gets the history. Run it on one process: it loads whole weights.

    Args:
        model_dir: The exported model folder.
        fit_set: The pairs the head fits (labels, or inputs for the residual loss), normalised as the run trained.
        val_set: The pairs it is early-stopped on.
        info: The (first) dataset's metadata: its box and, for the residual loss, its viscosity.
        options: The run's `--refiner_*` and `--sobolev_*` options: what to fit and for how long.
        val_pairs: Validation pairs whose features are cached (evenly spaced; the run's `--eval_pairs`).
        out_dir: The run's folder.
        seed: Of the refinement's batches.
        log: Where progress lines go.

    Returns:
        The summary for result.json (pairs, timings, validation error before and after, steps, head size).
    """
    start = time.perf_counter()
    with whole_weights_under_zero3():
        model = ScOT.from_pretrained(model_dir).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    fit, val, residual = _cached(model, fit_set, val_set, info, options, val_pairs)
    cached_s = time.perf_counter() - start
    refined, history = refine(
        model,
        fit,
        val,
        steps=options.refiner_steps,
        lr=options.refiner_learning_rate,
        bias_lr=options.refiner_bias_learning_rate,
        batch_size=options.refiner_batch_size,
        s=options.sobolev_s,
        alpha=options.sobolev_alpha,
        lengths=box_lengths(info.domain),
        residual=residual,
        train_recovery=options.refiner_train_recovery,
        eval_every=options.refiner_eval_every,
        patience=options.refiner_patience,
        seed=seed,
        log=log,
    )
    before = _replace_exported(model_dir, refined)
    summary = {
        "loss": options.refiner_loss,
        "fit_pairs": len(fit),
        "val_pairs": len(val),
        "cache_s": round(cached_s, 2),
        "total_s": round(time.perf_counter() - start, 2),
        "val_median_rel_l1_before": history["val_median_rel_l1"][0][1],
        "val_median_rel_l1_after": history["best_val_median_rel_l1"],
        "best_step": history["best_step"],
        "steps_run": history["steps_run"],
        "model_before_refiner": str(before),
        "head_parameters": sum(p.numel() for p in refined.head.parameters())
        + sum(p.numel() for p in refined.model.patch_recovery.parameters()),
    }
    (out_dir / "refiner_history.json").write_text(json.dumps(history, indent=2))
    return summary


def _cached(
    model: ScOT, fit_set: Mixture, val_set: Mixture, info: SourceInfo, options: RefinerOptions, val_pairs: int
) -> tuple[FeatureCache, FeatureCache, NavierStokesResidual | None]:
    """The body's features of the fit and validation pairs (evenly spaced, as many as the options allow), with
    their tangents and the residual loss when the options ask for that loss."""
    residual_mode = options.refiner_loss == "residual"
    fit_rows = split_indices(len(fit_set), options.refiner_max_pairs)
    val_rows = split_indices(len(val_set), val_pairs)
    residual = None
    if residual_mode:
        s, alpha = options.sobolev_s, options.sobolev_alpha
        residual = NavierStokesResidual(model.config, info, s, alpha, fit_set.input_names)
    fit = cache_features(model, fit_set, fit_rows, with_tangents=residual_mode)
    val = cache_features(model, val_set, val_rows)
    return fit, val, residual


def _replace_exported(model_dir: Path, refined: RefinedScOT) -> Path:
    """Save `refined` in `model_dir` and return `model-before-refiner/` beside it, where the model that was there
    went (with its training_data.json copied to the refined one)."""
    before = model_dir.with_name("model-before-refiner")
    if before.exists():
        shutil.rmtree(before)
    os.replace(model_dir, before)  # the unrefined model stays available (and is evaluated too)
    refined.save_pretrained(model_dir)
    if (before / "training_data.json").exists():
        shutil.copy2(before / "training_data.json", model_dir / "training_data.json")
    return before
