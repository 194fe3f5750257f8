"""The README demo: build the tiny scOT, predict physical fields, save it and load it back.

It needs nothing but this repository (no Hub, no shared fixtures). Later stages of the project grow it into
the full demo: generate a corpus with the built-in solvers, pretrain, fine-tune on an unseen PDE.

    python launch/demo.py --out runs/demo
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from foundation import ScOT, ScOTConfig


def initial_state(height: int, width: int) -> torch.Tensor:
    """A compressible-flow-like state (rho, u, v, p) on the unit square: a density bump in a shear layer."""
    y, x = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    rho = 1.0 + 0.5 * torch.exp(-((x - 0.5) ** 2 + (y - 0.5) ** 2) / 0.02)
    u = torch.tanh((y - 0.5) / 0.05)
    v = 0.05 * torch.sin(2 * math.pi * x)
    p = torch.full_like(x, 2.5)
    return torch.stack([rho, u, v, p])[None]  # (1, 4, H, W)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    config = ScOTConfig.from_preset("tiny", time_scale=2.0)  # Poseidon channels and statistics, 32x32 grid
    model = ScOT(config).eval()
    fields = initial_state(48, 64)  # another (rectangular) grid: resampled in Fourier space to 32x32 and back
    start = time.perf_counter()
    prediction = model.predict(fields, lead_time=0.5)  # physical time; 0.5 / time_scale = lead time 0.25
    seconds = time.perf_counter() - start

    folder = args.out / "model"
    model.save_pretrained(folder)
    reloaded = ScOT.from_pretrained(folder).eval()
    again = reloaded.predict(fields, lead_time=0.5)

    summary = {
        "model": "scOT tiny (untrained)",
        "parameters": sum(p.numel() for p in model.parameters()),
        "channels": config.channel_names,
        "input_shape": list(fields.shape),
        "prediction_shape": list(prediction.shape),
        "prediction_finite": bool(torch.isfinite(prediction).all()),
        "predict_seconds": round(seconds, 3),
        "saved_to": str(folder),
        "files": sorted(p.name for p in folder.iterdir()),
        "reload_max_abs_difference": float((again - prediction).abs().max()),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    if summary["reload_max_abs_difference"] != 0.0 or not summary["prediction_finite"]:
        raise SystemExit("demo failed: the reloaded model does not reproduce the prediction")


if __name__ == "__main__":
    main()
