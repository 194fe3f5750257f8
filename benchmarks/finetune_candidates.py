"""Fine-tuning choices measured, not assumed: each candidate is the benchmark's fine-tuned cell with a few flags
changed, on the same tasks, data, N, seeds, budget and one body learning rate.

    python benchmarks/finetune_candidates.py --config launch/recipes/benchmark-cpu.yaml --out runs/candidates \\
        --tasks allen-cahn ns-kf poisson-gauss -- --init_from runs/pretrain-corpus-cpu/model --n 8 --seeds 0

Candidates (flags of `python -m finetune`):
    default          the recipe as it is
    head-warmup      --head_warmup_steps 100: only embedding and recovery train first, the body is held
    head-lr-as-body  the embedding, recovery and time norms at the body's rate instead of their own
    one-step-pairs   --lead_steps 1: fine-tune on one-step pairs (evaluation stays all2all); time-dependent tasks
    u-from-tracer    --channel_map u=tracer: a scalar state called u starts from the passive tracer's rows, not from
                     the x-velocity's (tasks whose state is a scalar u)
    u-new            --channel_map u=: the scalar u as a new channel (zero embedding rows, fresh recovery)

Each candidate is one `finetune.benchmark` run (methods: finetuned) in `<out>/<candidate>`, sharing the generated
task data (`<out>/data`); finished cells are skipped on a rerun. Prints and writes `candidates.json` and
`candidates.md`: per task the test error of every candidate and its ratio to the default. A later run into the
same --out (e.g. a second seed for a few candidates) updates the entries of its candidates and keeps the others.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CANDIDATES: dict[str, list[str]] = {
    "default": [],
    "head-warmup": ["--head_warmup_steps", "100"],
    "head-lr-as-body": [],  # filled from the grid: --head_learning_rate and --norm_learning_rate = the body's
    "one-step-pairs": ["--lead_steps", "1"],
    "u-from-tracer": ["--channel_map", "u=tracer"],
    "u-new": ["--channel_map", "u="],
}


def applies(candidate: str, source) -> bool:
    """Whether a candidate means anything on a task (its data's description)."""
    info = source.info
    if candidate == "one-step-pairs":
        return not info.steady
    if candidate in ("u-from-tracer", "u-new"):  # a scalar state (or steady solution) named u
        return "u" in info.channel_names and "v" not in info.channel_names
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--tasks", nargs="+", required=True, help="task names of the recipe's benchmark.tasks")
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=list(CANDIDATES))
    parser.add_argument("--config", type=Path, required=True, help="the benchmark recipe")
    parser.add_argument(
        "--learning_rate",
        type=float,
        default=None,
        help="the body's rate of every candidate (default: the "
        "recipe's largest finetuned_learning_rates); one rate, so that head-lr-as-body is one run too",
    )
    args, rest = parser.parse_known_args()
    rest = [a for a in rest if a != "--"]
    from finetune.benchmark import BenchmarkArguments
    from finetune.benchmark import main as benchmark
    from foundation.data import open_source
    from foundation.pdes.specs import resolve_specs

    recipe = yaml.safe_load(args.config.read_text())
    known = dict(BenchmarkArguments(tasks=recipe["benchmark"]["tasks"]).task_list())
    missing = [t for t in args.tasks if t not in known]
    if missing:
        parser.error(f"--tasks {missing}: not in {args.config} (it has {', '.join(known)})")
    lr = args.learning_rate or max(recipe["benchmark"].get("finetuned_learning_rates", [5e-4]))
    args.out.mkdir(parents=True, exist_ok=True)
    previous = args.out / "candidates.json"  # runs with other flags (e.g. more seeds for a few candidates) add up
    report: dict = json.loads(previous.read_text()) if previous.exists() else {"recipe": str(args.config)}
    report.setdefault("candidates", {})
    report.setdefault("tasks", {})
    for candidate in args.candidates:
        flags = ["--finetuned_learning_rates", str(lr), *CANDIDATES[candidate]]
        if candidate == "head-lr-as-body":
            flags += ["--head_learning_rate", str(lr), "--norm_learning_rate", str(lr)]
        tasks = []
        for name in args.tasks:
            (path,) = resolve_specs([known[name]], args.out / "data")  # generated once, shared by every candidate
            with open_source(path) as source:
                if applies(candidate, source):
                    tasks.append(f"{name}={known[name]}")
        if not tasks:
            continue
        root = args.out / candidate
        (root / "data").parent.mkdir(parents=True, exist_ok=True)
        if not (root / "data").exists():
            (root / "data").symlink_to((args.out / "data").resolve(), target_is_directory=True)
        argv = ["--config", str(args.config), *rest, *flags, "--output_dir", str(root), "--methods", "finetuned"]
        if benchmark([*argv, "--tasks", *tasks]) != 0:
            return 2
        result = json.loads((root / "benchmark.json").read_text())
        report["candidates"][candidate] = [*rest, *flags]
        for name, task in result["tasks"].items():
            report["tasks"].setdefault(name, {})[candidate] = task["methods"]["finetuned"]
    (args.out / "candidates.json").write_text(json.dumps(report, indent=2))
    (args.out / "candidates.md").write_text(table(report))
    print(json.dumps(report, indent=2))
    return 0


def table(report: dict) -> str:
    lines = [
        "| task | N | candidate | test median rel L1 % [min-max] | / default | lr chosen |",
        "|---|---|---|---|---|---|",
    ]
    for name, by_candidate in report["tasks"].items():
        default = by_candidate.get("default", {})
        for candidate, rows in by_candidate.items():
            for n, row in rows.items():
                ratio = f"{row['test'] / default[n]['test']:.3f}" if n in default else "-"
                spread = f" [{row['test_min']:.2f}-{row['test_max']:.2f}]" if len(row["test_by_seed"]) > 1 else ""
                lines.append(
                    f"| {name} | {n} | {candidate} | {row['test']:.2f}{spread} | {ratio} | {row['learning_rate']:g} |"
                )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
