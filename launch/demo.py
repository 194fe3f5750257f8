"""The README demo: embedded data -> all2all pairs -> scOT, save and reload.

1. Generates a small incompressible Navier-Stokes corpus with the built-in spectral solver (our HDF5 schema).
2. Opens it as a trajectory source and expands it into all2all pairs (every i <= j snapshot pair).
3. Builds the tiny scOT on the corpus's channels and statistics, predicts a batch of pairs, reports the
   relative L1 loss of the untrained model, and predicts physical fields on a rectangular grid.
4. Saves the model (safetensors + config with channels, grid, normalisation, time scale) and reloads it.

It needs nothing but this repository (no Hub, no shared fixtures). Pretraining and fine-tuning join the demo
as they land (see the issues).

    python launch/demo.py --out runs/demo
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from foundation import ScOT, ScOTConfig
from foundation.data import All2AllPairs, open_source
from foundation.pdes import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--trajectories", type=int, default=8)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    timings = {}

    start = time.perf_counter()
    corpus = generate(
        "ns-sines",
        args.trajectories,
        args.resolution,
        args.out / "ns-sines.h5",
        snapshots=11,
        seed=args.seed,
        batch=4,
        overwrite=True,
        progress=False,
    )
    timings["generate_s"] = round(time.perf_counter() - start, 2)
    source = open_source(corpus)
    pairs = All2AllPairs(source, "train")

    info = source.info
    config = ScOTConfig.from_preset(
        "tiny",
        channel_names=info.channel_names,
        output_channel_names=info.channel_names,
        input_mean=info.mean,
        input_std=info.std,
        output_mean=info.mean,
        output_std=info.std,
        time_scale=info.time_scale,
        image_size=args.resolution,
        input_resampling="fourier",
    )
    model = ScOT(config).eval()
    batch = next(iter(torch.utils.data.DataLoader(pairs, batch_size=8, shuffle=True)))
    start = time.perf_counter()
    with torch.no_grad():
        loss = model(**batch).loss.item()
    timings["forward_batch_s"] = round(time.perf_counter() - start, 3)

    fields = torch.from_numpy(source.read(0, 0))[None]  # physical (u, v) at t = 0
    rectangular = torch.nn.functional.interpolate(fields, size=(48, 40), mode="bilinear")
    prediction = model.predict(rectangular, lead_time=0.5)  # Fourier-resampled to 32x32 and back

    folder = args.out / "model"
    model.save_pretrained(folder)
    again = ScOT.from_pretrained(folder).eval().predict(rectangular, lead_time=0.5)

    summary = {
        "corpus": str(corpus),
        "corpus_shape": dict(zip("NTCHW", source.shape)),
        "channels": info.channel_names,
        "pairs_per_trajectory": pairs.pairs_per_trajectory,
        "training_pairs": len(pairs),
        "model": "scOT tiny (untrained)",
        "parameters": sum(p.numel() for p in model.parameters()),
        "untrained_relative_l1_loss": round(loss, 4),
        "prediction_shape": list(prediction.shape),
        "prediction_finite": bool(torch.isfinite(prediction).all()),
        "saved_to": str(folder),
        "files": sorted(p.name for p in folder.iterdir()),
        "reload_max_abs_difference": float((again - prediction).abs().max()),
        **timings,
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    if summary["reload_max_abs_difference"] != 0.0 or not summary["prediction_finite"]:
        raise SystemExit("demo failed: the reloaded model does not reproduce the prediction")


if __name__ == "__main__":
    main()
