"""Which operator learns a task from scratch best at CPU scale: scOT geometries and settings against neuraloperator's
FNO, every candidate with the same data, steps, batch and schedule, side by side in one run (issue 29).

    python benchmarks/operator_sweep.py --out benchmarks/results/operator_sweep-ac.json \
        --candidates tiny tiny:lr=3e-3 "tiny:learn_residual=true" fno:lr=3e-3 --steps 500

A candidate is `KIND[:key=value,...]`: KIND a preset of `foundation.configuration_scot.PRESETS` or `fno`; keys are
config fields (`learn_residual=true`, `patch_size=1`, `depths=2-2-2-2`, ...), the FNO's `modes`/`width`/`layers`,
and the training settings `lr`, `warmup` (a fraction of the steps), `wd` (weight decay), `layer_scale` (the
ConvNeXt skips' initial layer scale) and `augment=shift` (every pair rolled by a random periodic shift: for
translation-invariant PDEs on a periodic box). `norm_init=identity` (a config field) starts the time-conditioned
norms as plain LayerNorms instead of the reference's normal(0.02) gain.

Training is a plain AdamW loop (weight decay 1e-6, gradient clipping at 5, as Poseidon), linear warm-up and cosine
decay to zero over `--steps`, on the all2all pairs of the first `--n` training trajectories (normalised as the
trainers normalise them); validated every `--eval_every` steps on the val split, and tested at the lowest
validation error (Poseidon's rule) with `foundation.evaluation.evaluate` on the test split: the headline
(median relative L1 %, physical fields), per lead time and per frequency band, and the error spectrum. Prints one
JSON line per candidate and writes them all to --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch

from foundation.configuration_scot import PRESETS, ScOTConfig
from foundation.data import open_source
from foundation.evaluation import HEADLINE, evaluate, pair_errors
from foundation.modeling_scot import ConvNeXtBlock, ScOT
from foundation.pdes.specs import resolve_specs
from pretrain.build import build_data
from pretrain.config import DataArguments
from pretrain.prepared import cosine_with_warmup

ALLEN_CAHN = "pde:allen-cahn:n=72,resolution=32,snapshots=11,seed=12,val=8,test=32,eps=0.04"
TRAINING_KEYS = ("lr", "warmup", "augment", "layer_scale", "wd")
FNO_KEYS = ("modes", "width", "layers")


def parse_candidate(text: str) -> tuple[str, dict, dict]:
    """('tiny', {config overrides}, {training settings}) of `tiny:learn_residual=true,lr=3e-3`."""
    kind, _, rest = text.partition(":")
    if kind not in PRESETS and kind != "fno":
        raise SystemExit(f"{text}: unknown kind {kind!r}; expected fno or one of {sorted(PRESETS)}")
    overrides, training = {}, {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        parsed: object = value
        if value.lower() in ("true", "false"):
            parsed = value.lower() == "true"
        elif "-" in value and all(p.isdigit() for p in value.split("-")):
            parsed = [int(p) for p in value.split("-")]
        else:
            try:
                parsed = int(value) if value.isdigit() else float(value)
            except ValueError:
                pass
        (training if key in TRAINING_KEYS else overrides)[key] = parsed
    return kind, overrides, training


def build(kind: str, overrides: dict, training: dict, data, grid: int) -> torch.nn.Module:
    stats = data.stats
    config = ScOTConfig.from_preset(
        "tiny" if kind == "fno" else kind,
        channel_names=data.vocabulary,
        output_channel_names=data.targets,
        image_size=grid,
        input_mean=[stats[c][0] for c in data.vocabulary],
        input_std=[stats[c][1] for c in data.vocabulary],
        output_mean=[stats[c][0] for c in data.targets],
        output_std=[stats[c][1] for c in data.targets],
        **({} if kind == "fno" else overrides),
    )
    if kind == "fno":
        from finetune.baselines import FNOBaseline

        return FNOBaseline(config, **{k: int(v) for k, v in overrides.items() if k in FNO_KEYS})
    model = ScOT(config)
    if "layer_scale" in training:  # the ConvNeXt skips' layer scale (upstream ConvNeXt starts it at 1e-6)
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, ConvNeXtBlock):
                    module.weight.fill_(float(training["layer_scale"]))
    return model


def random_shifts(batch: dict, generator: torch.Generator) -> dict:
    """Every sample's input and target rolled by one random periodic shift (a translation-invariant PDE on a
    periodic box maps shifted inputs to shifted targets)."""
    x, y = batch["pixel_values"].clone(), batch["labels"].clone()
    h, w = x.shape[-2:]
    offsets = torch.randint(0, h * w, (x.shape[0],), generator=generator).tolist()
    for i, k in enumerate(offsets):
        x[i] = torch.roll(x[i], (k // w, k % w), dims=(-2, -1))
        y[i] = torch.roll(y[i], (k // w, k % w), dims=(-2, -1))
    return {**batch, "pixel_values": x, "labels": y}


def val_error(model, data, picks) -> float:
    model.eval()
    with torch.no_grad():
        table = pair_errors(model, data.val_set, picks, 64, "normalised")
    model.train()
    groups = [str(g) for g in range(table.l1.shape[1])]
    return float(table.summary(groups, "normalised")["median_rel_l1_normalised/mean"])


def train_candidate(text: str, data, spec: str, args) -> dict:
    kind, overrides, training = parse_candidate(text)
    torch.manual_seed(args.seed)
    model = build(kind, overrides, training, data, args.resolution)
    params = [p for p in model.parameters() if p.requires_grad]
    lr = float(training.get("lr", args.lr))
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=float(training.get("wd", 1e-6)))
    warmup = int(round(float(training.get("warmup", args.warmup)) * args.steps))
    schedule = cosine_with_warmup(optimizer, warmup, args.steps, 0.0)
    generator = torch.Generator().manual_seed(args.seed)
    loader = torch.utils.data.DataLoader(
        data.train_set, batch_size=args.batch, shuffle=True, drop_last=True, generator=generator
    )
    val_picks = torch.linspace(0, len(data.val_set) - 1, min(args.val_pairs, len(data.val_set))).round().long().tolist()
    best, best_step, best_state, curve = math.inf, 0, None, []
    step, start, model_s = 0, time.perf_counter(), 0.0
    model.train()
    while step < args.steps:
        for batch in loader:
            t0 = time.perf_counter()
            if training.get("augment") == "shift":
                batch = random_shifts(batch, generator)
            out = model(
                pixel_values=batch["pixel_values"],
                time=batch["time"],
                labels=batch["labels"],
                channel_mask=batch["channel_mask"],
            )
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            optimizer.step()
            schedule.step()
            model_s += time.perf_counter() - t0
            step += 1
            if step % args.eval_every == 0 or step == args.steps:
                err = val_error(model, data, val_picks)
                curve.append([step, round(err, 4), round(float(out.loss.detach()), 5)])
                if err < best:
                    best, best_step, best_state = err, step, copy.deepcopy(model.state_dict())
            if step >= args.steps:
                break
    model.load_state_dict(best_state)
    sources = [open_source(spec, fill_stats=True)]
    result, _ = evaluate(model, sources, split="test", max_pairs=1024, rollout_trajectories=0)
    return {
        "candidate": text,
        "test": round(result[HEADLINE], 4),
        "best_val": round(best, 4),
        "best_step": best_step,
        "final_val": curve[-1][1],
        "by_lead_time": result["by_lead_time"],
        "by_frequency_band": result["by_frequency_band"],
        "error_spectrum": {k: v for k, v in result["spectra"].items() if k.startswith("error/")},
        "parameters": sum(p.numel() for p in params),
        "s_per_step": round(model_s / args.steps, 4),
        "wall_s": round(time.perf_counter() - start, 1),
        "val_curve": curve,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default=ALLEN_CAHN, help="A pde: spec or open_source spec.")
    parser.add_argument("--n", type=int, default=32, help="Training trajectories (the first n of train).")
    parser.add_argument("--candidates", nargs="+", default=["tiny", "fno:lr=3e-3"])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=float, default=0.05, help="Warm-up as a fraction of the steps.")
    parser.add_argument("--eval_every", type=int, default=50)
    parser.add_argument("--val_pairs", type=int, default=256)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", default="runs/sweep-data")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    (spec,) = resolve_specs([args.task], Path(args.cache))
    data = build_data(DataArguments(datasets=[spec]), args.seed, 0, 1, args.n)
    rows = []
    out = Path(args.out)
    for text in args.candidates:
        row = {"task": args.task, "n": args.n, "steps": args.steps, "batch": args.batch, "seed": args.seed}
        row.update(train_candidate(text, data, spec, args))
        rows.append(row)
        brief = {k: row[k] for k in ("candidate", "test", "best_val", "best_step", "s_per_step", "parameters")}
        print(json.dumps(brief), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
