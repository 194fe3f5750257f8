"""Evaluate a model on held-out trajectories: the numbers a paper table and a model card need.

    python -m finetune.evaluate --model runs/ft/model --datasets data/wave.h5 [--split test] [--out DIR]

`--model` is a model folder or Hub repo id (plain scOT, a Spectral-Refiner folder, or a LoRA adapter folder).
Errors are computed on de-normalised (physical) fields, in %:
- median and mean relative L1 and L2 per channel group, overall and per lead time, over all2all pairs;
- direct vs autoregressive rollouts from the first snapshot (one call per lead time vs one call per snapshot
  interval, fed back), per lead time;
- error by frequency band: radially binned energy spectra of truth, prediction and error, and the relative
  error per band (low / mid / high thirds of the resolved wavenumbers).
Writes `evaluation.json` and PNG plots (`samples.png`, `rollout.png`, `spectra.png`) into `--out`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

from foundation import ScOT
from foundation.data import All2AllPairs, DataError, Mixture, open_source
from foundation.metrics import relative_error_per_sample

from .refiner import HEAD_CONFIG, RefinedScOT


# ----------------------------------------------------------------------------------------------- loading
def load_model(path: str | Path):
    """A fine-tuned model from a folder or Hub repo id: scOT, scOT + spectral head, or scOT + LoRA adapters."""
    folder = Path(path)
    if not folder.exists():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(str(path)))
    if (folder / "adapter_config.json").exists():
        from .lora import load_adapter

        return load_adapter(folder, merge=True)
    if (folder / HEAD_CONFIG).exists():
        return RefinedScOT.from_pretrained(folder).eval()
    return ScOT.from_pretrained(folder).eval()


def pairs_for_model(config, source, split: str, **options) -> All2AllPairs:
    """All2all pairs of `source` normalised with the model's statistics (matched by channel name)."""
    info = source.info
    names, outputs = list(config.channel_names), list(config.output_channel_names)
    inputs = ([] if info.steady else list(info.channel_names)) + list(info.static_names)
    missing = [c for c in inputs if c not in names] + [c for c in info.channel_names if c not in outputs]
    if missing:
        raise DataError(f"{info.name}: channels {missing} are not in the model's inputs {names} / outputs {outputs}")

    def stats(c: str) -> tuple[float, float]:  # states normalise as the model's inputs (or outputs if steady)
        if c in names:
            return config.input_mean[names.index(c)], config.input_std[names.index(c)]
        return config.output_mean[outputs.index(c)], config.output_std[outputs.index(c)]

    source.info = dataclasses.replace(
        info,
        mean=[stats(c)[0] for c in info.channel_names],
        std=[stats(c)[1] for c in info.channel_names],
        static_mean=[stats(c)[0] for c in info.static_names] or info.static_mean,
        static_std=[stats(c)[1] for c in info.static_names] or info.static_std,
    )
    return All2AllPairs(source, split, **options)


# ----------------------------------------------------------------------------------------------- metrics
def _stats(errors: torch.Tensor, names: list[str], tag: str) -> dict[str, float]:
    out = {}
    for stat, fn in (("median", lambda e: torch.nanmedian(e)), ("mean", lambda e: torch.nanmean(e))):
        values = []
        for g, name in enumerate(names):
            column = errors[:, g]
            if torch.isnan(column).all():
                continue
            values.append(float(fn(column)))
            out[f"{stat}_rel_{tag}/{name}"] = values[-1]
        out[f"{stat}_rel_{tag}/mean"] = float(np.mean(values)) if values else float("nan")
    return out


def radial_spectrum(fields: torch.Tensor) -> torch.Tensor:
    """(..., K) energy in integer wavenumber shells |k| in [k - 1/2, k + 1/2) of (..., H, W) fields."""
    h, w = fields.shape[-2:]
    power = torch.fft.fft2(fields.double(), norm="forward").abs() ** 2
    ky = torch.fft.fftfreq(h, d=1.0 / h).double()
    kx = torch.fft.fftfreq(w, d=1.0 / w).double()
    shell = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2).round().long()
    kmax = min(h, w) // 2
    flat = power.flatten(-2)
    out = torch.zeros(*flat.shape[:-1], kmax + 1, dtype=torch.float64)
    keep = (shell <= kmax).flatten()
    out.index_add_(-1, shell.flatten()[keep], flat[..., keep])
    return out


@torch.no_grad()
def evaluate_model(
    model,
    sources: list,
    split: str = "test",
    out_dir: str | Path | None = None,
    max_pairs: int | None = 1024,
    rollout_trajectories: int = 8,
    batch_size: int = 32,
    stride: int = 1,
    max_snapshots: int | None = None,
    plots: bool = True,
) -> dict:
    """Metrics of `model` on `split` of `sources` (see the module docstring); JSON-ready dict."""
    config = model.config
    options = dict(stride=stride, max_snapshots=max_snapshots, include_identity=False)
    parts = [pairs_for_model(config, source, split, **options) for source in sources]
    data = Mixture(
        parts,
        config.channel_names,
        config.output_channel_names,
        input_mean=config.input_mean,
        input_std=config.input_std,
    )
    model.eval()
    groups = list(config.channel_slice_list_normalized_loss)
    names = config.output_channel_names
    group_names = ["+".join(names[a:b]) for a, b in zip(groups[:-1], groups[1:])]
    out_mean = torch.tensor(config.output_mean)[:, None, None]
    out_std = torch.tensor(config.output_std)[:, None, None]
    phys = lambda y: y.float() * out_std + out_mean  # noqa: E731

    picks = np.arange(len(data))
    if max_pairs is not None and len(data) > max_pairs:
        picks = np.linspace(0, len(data) - 1, max_pairs).round().astype(int)
    l1, l2, leads, spectra, samples = [], [], [], None, []
    for start in range(0, len(picks), batch_size):
        items = [data[int(k)] for k in picks[start : start + batch_size]]
        batch = {k: torch.stack([it[k] for it in items]) for k in ("pixel_values", "labels", "time", "channel_mask")}
        pred = phys(model(pixel_values=batch["pixel_values"], time=batch["time"]).output)
        truth = phys(batch["labels"])
        mask = batch["channel_mask"]
        l1.append(relative_error_per_sample(pred, truth, groups, p=1, channel_mask=mask))
        l2.append(relative_error_per_sample(pred, truth, groups, p=2, channel_mask=mask))
        leads.append(batch["time"])
        s = torch.stack([radial_spectrum(truth), radial_spectrum(pred), radial_spectrum(pred - truth)])  # (3,B,C,K)
        s = (s * mask[None, :, :, None]).sum(1)  # (3, C, K)
        spectra = s if spectra is None else spectra + s
        if len(samples) < 3:
            samples.append((batch["pixel_values"][0], truth[0], pred[0], float(batch["time"][0])))
    l1, l2, leads = torch.cat(l1), torch.cat(l2), torch.cat(leads)
    result: dict = {
        "split": split,
        "pairs": int(len(picks)),
        "datasets": [s.info.name for s in sources],
        "units": "physical (de-normalised), relative errors in %",
        **_stats(l1, group_names, "l1"),
        **_stats(l2, group_names, "l2"),
    }
    rounded = torch.round(leads * 1000) / 1000
    result["by_lead_time"] = {
        f"{float(t):.3f}": {
            **_stats(l1[rounded == t], group_names, "l1"),
            **_stats(l2[rounded == t], group_names, "l2"),
            "pairs": int((rounded == t).sum()),
        }
        for t in torch.unique(rounded)
    }
    truth_k, pred_k, err_k = spectra  # (C, K) each
    kmax = truth_k.shape[-1] - 1
    edges = [0, max(1, kmax // 3), max(2, 2 * kmax // 3), kmax]
    bands = {}
    for name, a, b in zip(("low", "mid", "high"), edges[:-1], edges[1:]):
        sl = slice(a if a == 0 else a + 1, b + 1)
        bands[f"k{sl.start}-{b}"] = {
            "band": name,
            "relative_error_%": {
                c: float(100 * torch.sqrt(err_k[i, sl].sum() / truth_k[i, sl].sum().clamp_min(1e-30)))
                for i, c in enumerate(names)
            },
        }
    result["by_frequency_band"] = bands
    result["spectra"] = {
        "wavenumber": list(range(kmax + 1)),
        **{
            f"{kind}/{c}": spectra[j, i].tolist()
            for j, kind in enumerate(("truth", "prediction", "error"))
            for i, c in enumerate(names)
        },
    }
    result["rollout"] = rollouts(model, data, rollout_trajectories, phys, groups)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if plots:
            result["plots"] = _plots(out, samples, result, config)
        (out / "evaluation.json").write_text(json.dumps(result, indent=2))
    return result


@torch.no_grad()
def rollouts(model, data: Mixture, trajectories: int, phys, groups: list[int]) -> dict:
    """Median relative L1 (% , mean over groups) per lead time of direct and autoregressive predictions."""
    config = model.config
    out_names, in_names = config.output_channel_names, config.channel_names
    if not all(c in in_names for c in out_names):
        return {}
    feed = torch.tensor([in_names.index(c) for c in out_names])
    direct: dict[float, list] = {}
    chained: dict[float, list] = {}
    for k, part in enumerate(data.parts):
        if part.source.info.steady or len(part.snapshots) < 3:
            continue
        pattern = {tuple(ab): p for p, ab in enumerate(part.pattern.tolist())}
        last = len(part.snapshots) - 1
        if not all((0, j) in pattern for j in range(1, last + 1)):
            continue
        for slot in range(min(trajectories, len(part.trajectories))):
            base = slot * len(part.pattern)
            first = data.item(k, base + pattern[(0, 1)])
            x = first["pixel_values"][None]
            mask = first["channel_mask"][None]
            for j in range(1, last + 1):
                target = data.item(k, base + pattern[(0, j)])
                step = data.item(k, base + pattern[(j - 1, j)])
                truth = phys(target["labels"][None])
                d = phys(model(pixel_values=target["pixel_values"][None], time=target["time"][None]).output)
                y = model(pixel_values=x, time=step["time"][None]).output
                x = x.clone()
                x[:, feed] = y.to(x.dtype)
                lead = round(float(target["time"]), 3)
                direct.setdefault(lead, []).append(
                    float(torch.nanmean(relative_error_per_sample(d, truth, groups, channel_mask=mask)))
                )
                chained.setdefault(lead, []).append(
                    float(torch.nanmean(relative_error_per_sample(phys(y), truth, groups, channel_mask=mask)))
                )
    return {
        f"{t:.3f}": {"direct": float(np.median(direct[t])), "autoregressive": float(np.median(chained[t]))}
        for t in sorted(direct)
    }


def _plots(out: Path, samples, result: dict, config) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from foundation.plots import field_rows

    written = []
    names = config.output_channel_names
    rows = []
    for x, truth, pred, lead in samples:
        for c, name in enumerate(names):
            ci = config.channel_names.index(name) if name in config.channel_names else 0
            panels = [x[ci], truth[c], pred[c], pred[c] - truth[c]]
            rows.append((name, panels, ["input (normalised)", f"truth (lead {lead:.2f})", "prediction", "error"]))
    field_rows(rows, out / "samples.png")
    written.append("samples.png")

    if result["rollout"]:
        leads = [float(t) for t in result["rollout"]]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for kind in ("direct", "autoregressive"):
            ax.plot(leads, [v[kind] for v in result["rollout"].values()], "o-", label=kind)
        ax.set_xlabel("lead time")
        ax.set_ylabel("median relative L1 (%)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "rollout.png", dpi=80)
        plt.close(fig)
        written.append("rollout.png")

    spectra = result["spectra"]
    k = spectra["wavenumber"][1:]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2), squeeze=False)
    for ax, c in zip(axes[0], names):
        for kind in ("truth", "prediction", "error"):
            ax.loglog(k, np.maximum(spectra[f"{kind}/{c}"][1:], 1e-30), label=kind)
        ax.set_title(c)
        ax.set_xlabel("|k|")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "spectra.png", dpi=80)
    plt.close(fig)
    written.append("spectra.png")
    return written


def evaluate_run(model_dir: Path, specs: list[str], data_args, split: str, out_dir: Path) -> dict:
    """Evaluation of a fine-tuning run's exported model (and of the model before refinement, if any) on `split`
    of the sources `specs`, with the run's stride and snapshot limit (`data_args`)."""
    kwargs = dict(split=split, stride=data_args.stride, max_snapshots=data_args.max_snapshots)
    sources = [open_source(spec, fill_stats=True) for spec in specs]
    result = evaluate_model(load_model(model_dir), sources, out_dir=out_dir, **kwargs)
    before = model_dir.with_name("model-before-refiner")
    headline = {k: v for k, v in result.items() if k.startswith(("median_rel", "mean_rel"))}
    if before.exists():
        sources = [open_source(spec, fill_stats=True) for spec in specs]
        previous = evaluate_model(load_model(before), sources, out_dir=out_dir / "before-refiner", **kwargs)
        headline["before_refiner"] = {k: v for k, v in previous.items() if k.startswith(("median_rel", "mean_rel"))}
    return headline


# ----------------------------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m finetune.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Model folder or Hub repo id.")
    parser.add_argument("--datasets", nargs="+", required=True, help="open_source specs (or pde: generators).")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"])
    parser.add_argument("--out", default=None, help="Folder for evaluation.json and plots (default: beside --model).")
    parser.add_argument("--max_pairs", type=int, default=1024)
    parser.add_argument("--rollout_trajectories", type=int, default=8)
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--max_snapshots", type=int, default=None)
    parser.add_argument("--no_plots", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.model).with_name("evaluation")
    try:
        from .data import resolve_specs

        specs = resolve_specs(args.datasets, out / "data")
        model = load_model(args.model)
        sources = [open_source(spec, fill_stats=True) for spec in specs]
        result = evaluate_model(
            model,
            sources,
            split=args.split,
            out_dir=out,
            max_pairs=args.max_pairs,
            rollout_trajectories=args.rollout_trajectories,
            stride=args.stride,
            max_snapshots=args.max_snapshots,
            plots=not args.no_plots,
        )
    except (DataError, ValueError, FileNotFoundError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    headline = {k: round(v, 3) for k, v in result.items() if k.startswith(("median_rel", "mean_rel"))}
    print(json.dumps({"evaluation": str(out / "evaluation.json"), **headline}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
