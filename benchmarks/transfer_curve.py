"""Transfer vs pretraining compute: the benchmark's fine-tuned cells for every checkpoint of one pretraining run.

    python benchmarks/transfer_curve.py --run runs/pretrain-corpus-cpu --out runs/transfer-curve \\
        -- --config launch/recipes/benchmark-cpu.yaml --n 8 --seeds 0

Each checkpoint (`<run>/checkpoints/step-*`) becomes a model folder (the run's exported config, the checkpoint's
weights), then `finetune.benchmark` fine-tunes it on the tasks with every flag after `--` (methods: finetuned only;
scratch, FNO and persistence do not depend on the checkpoint: run them once with the benchmark itself). Prints and
writes `transfer_curve.json`: per step, the pretraining samples seen and the test error per task and N.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def checkpoint_models(run: Path, out: Path) -> list[tuple[int, Path]]:
    """(step, model folder) for every checkpoint of `run`, built from the run's exported config."""
    from foundation import ScOT

    config = ScOT.from_pretrained(run / "model").config
    models = []
    for checkpoint in sorted((run / "checkpoints").glob("step-*")):
        step = int(checkpoint.name.split("-")[1])
        folder = out / "models" / checkpoint.name
        if not (folder / "model.safetensors").exists():
            folder.mkdir(parents=True, exist_ok=True)
            config.save_pretrained(folder)
            shutil.copy2(checkpoint / "model.safetensors", folder / "model.safetensors")
        ScOT.from_pretrained(folder)  # fails loudly if the checkpoint's weights do not match the config
        models.append((step, folder))
    return models


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="pretraining output_dir (checkpoints/, model/)")
    parser.add_argument("--out", type=Path, required=True)
    args, rest = parser.parse_known_args()
    rest = [a for a in rest if a != "--"]
    from finetune.benchmark import main as benchmark

    train = json.loads((args.run / "run_args.json").read_text())["train"]
    curve = {}
    for step, folder in checkpoint_models(args.run, args.out):
        root = args.out / folder.name
        argv = [*rest, "--init_from", str(folder), "--output_dir", str(root), "--methods", "finetuned"]
        if benchmark(argv) != 0:
            return 2
        report = json.loads((root / "benchmark.json").read_text())
        curve[step] = {
            "pretraining_samples": step * train["batch_size"],
            **{
                task: {n: row["test"] for n, row in data["methods"]["finetuned"].items()}
                for task, data in report["tasks"].items()
            },
        }
        (args.out / "transfer_curve.json").write_text(json.dumps(curve, indent=2))
    print(json.dumps(curve, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
