"""The README demo: embedded data -> all2all pairs -> pretraining the tiny scOT on CPU -> evaluation and plots.

1. Generates two small corpora with the built-in solvers (incompressible NS-Sines: u, v; compressible
   CE-RP: rho, u, v, p) in the toolkit's HDF5 schema.
2. Pretrains the tiny scOT on their mixture (all2all pairs, channels mapped by name onto rho, u, v, p;
   what NS lacks is filled and masked out of the loss) with the same trainer as `python -m pretrain`.
3. Writes the model folder (safetensors + config with channels, grid, normalisation, time scale), the
   metrics JSON (median relative L1 per channel group on the validation pairs, before and after) and a PNG
   of predictions against ground truth.

It needs nothing but this repository (no Hub, no shared fixtures). Fine-tuning joins it with the fine-tuning
issue. About 3 minutes on a 2-core CPU.

    python launch/demo.py --out runs/demo [--steps 1000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from foundation import ScOT
from foundation.pdes import generate
from pretrain.config import DataArguments, ModelArguments, TrainArguments
from pretrain.trainer import Pretrainer


def plot_predictions(model: ScOT, val_set, path: Path) -> None:
    """One validation pair per dataset: input, truth, prediction and error for every channel it has."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks, seen = [], set()
    for k in range(len(val_set)):
        part, _ = val_set.locate(k)
        item = val_set[k]
        if part not in seen and item["time"].item() > 0.3:
            picks.append(item)
            seen.add(part)
    rows = [(item, c) for item in picks for c in range(item["labels"].shape[0]) if item["channel_mask"][c] > 0]
    fig, axes = plt.subplots(len(rows), 4, figsize=(10, 2.3 * len(rows)), squeeze=False)
    names = model.config.output_channel_names
    with torch.no_grad():
        preds = [model(pixel_values=it["pixel_values"][None], time=it["time"][None]).output[0] for it in picks]
    for r, (item, c) in enumerate(rows):
        pred = preds[next(i for i, it in enumerate(picks) if it is item)]
        panels = [item["pixel_values"][c], item["labels"][c], pred[c], pred[c] - item["labels"][c]]
        titles = ["input", f"truth (lead {item['time'].item():.2f})", "prediction", "error"]
        for ax, panel, title in zip(axes[r], panels, titles):
            image = ax.imshow(panel.numpy(), cmap="RdBu_r" if title == "error" else "viridis")
            ax.set_title(f"{names[c]}: {title}", fontsize=8)
            ax.axis("off")
            fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--trajectories", type=int, default=32)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    data_dir = args.out / "data"
    timings = {}

    start = time.perf_counter()
    corpora = [
        generate(
            pde,
            args.trajectories,
            args.resolution,
            data_dir / f"{pde}.h5",
            snapshots=11,
            seed=args.seed + k,
            batch=8,
            overwrite=True,
            progress=False,
        )
        for k, pde in enumerate(["ns-sines", "ce-rp"])
    ]
    timings["generate_s"] = round(time.perf_counter() - start, 1)

    model_args = ModelArguments(preset="tiny")
    data_args = DataArguments(datasets=[str(p) for p in corpora], channels=["rho", "u", "v", "p"], eval_pairs=256)
    train_args = TrainArguments(
        output_dir=str(args.out / "pretrain"),
        max_steps=args.steps,
        batch_size=16,
        learning_rate=2e-3,
        warmup_steps=30,
        eval_every=0,
        save_every=args.steps,
        keep_last=1,
        tracker="tensorboard",
        resume=False,
        seed=args.seed,
    )
    trainer = Pretrainer(model_args, data_args, train_args)
    before = trainer.evaluate()
    start = time.perf_counter()
    result = trainer.train()
    timings["pretrain_s"] = round(time.perf_counter() - start, 1)

    model = ScOT.from_pretrained(result["model"]).eval()
    plot_path = args.out / "pretrain" / "predictions.png"  # in the run folder, where the card finds it
    plot_predictions(model, trainer.val_set, plot_path)
    losses = [json.loads(line)["loss"] for line in (args.out / "pretrain" / "losses.jsonl").read_text().splitlines()]
    summary = {
        "corpora": [str(p) for p in corpora],
        "pairs": {"train": len(trainer.train_set), "val": len(trainer.val_set)},
        "model": result["model"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": result["step"],
        "loss_first_10": round(float(np.mean(losses[:10])), 4),
        "loss_last_10": round(float(np.mean(losses[-10:])), 4),
        "val_before": {k: round(v, 2) for k, v in before.items()},
        "val_after": {k: round(v, 2) for k, v in result["metrics"].items() if isinstance(v, float)},
        "val_by_dataset": {d: round(m["median_rel_l1/mean"], 2) for d, m in result["metrics"]["by_dataset"].items()},
        "samples_per_s": result.get("samples_per_s_per_process"),
        "mfu": result.get("mfu"),
        "plot": str(plot_path),
        **timings,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    if not summary["val_after"]["median_rel_l1/mean"] < summary["val_before"]["median_rel_l1/mean"]:
        raise SystemExit("demo failed: pretraining did not improve the validation error")


if __name__ == "__main__":
    main()
