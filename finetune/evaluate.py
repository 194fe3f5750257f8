"""Evaluate a model on held-out trajectories: the numbers a paper table and a model card need.

    python -m finetune.evaluate --model runs/ft/model --datasets data/wave.h5 [--split test] [--out DIR]

`--model` is a model folder or Hub repo id (plain scOT, a Spectral-Refiner folder, or a LoRA adapter folder).
The metrics are `foundation.evaluation.evaluate`'s, on de-normalised (physical) fields, in %:
- median and mean relative L1 and L2 per channel group, overall, per dataset and per lead time, over all2all pairs;
- direct vs autoregressive rollouts from the first snapshot, per lead time;
- error by frequency band (low / mid / high thirds of the resolved wavenumbers) and the radial spectra.
Writes `evaluation.json` and PNG plots (`samples.png`, `rollout.png`, `spectra.png`) into `--out`.

    python -m finetune.evaluate --model runs/ft/model --datasets long.h5 --horizon [--strategy jump] [--max_lead T]
        [--solver]

`--horizon` trains and evaluates nothing else: it rolls the model out from the first snapshot to the end of each
trajectory (longer than the training window, e.g. files of twice the span) and writes `horizon.json` and
`horizon.png`: error and spectral energy drift against step beside persistence (the first snapshot held: a model
above it has no skill), The Well's windows (steps 6-12, 13-30), the last step and its split (the last call from
the true state). `--solver`, for files our solvers wrote: also the true dynamics
continued from the rollout's own state at the last call's input, and the last call's error against it: is the
long-horizon error the model's compounding (what rollout training can take away) or the physics carrying an
early error?
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from foundation.cli import fail, guarded
from foundation.data import open_source
from foundation.evaluation import ROLLOUT_STRATEGIES, evaluate, headline, horizon
from foundation.plots import evaluation_plots, horizon_plot

from .loading import load_model


def evaluate_model(model, sources: list, out_dir: str | Path | None = None, plots: bool = True, **options) -> dict:
    """`foundation.evaluation.evaluate`, with evaluation.json (and plots) written into `out_dir`."""
    result, samples = evaluate(model, sources, **options)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        if plots:
            result["plots"] = evaluation_plots(out, samples, result, model.config)
        (out / "evaluation.json").write_text(json.dumps(result, indent=2))
    return result


def run_evaluation_options(data_args, finetune_args) -> dict:
    """The options of `foundation.evaluation.evaluate` a fine-tuning run sets: its stride and snapshot limit
    (`data_args`), its `--eval_max_pairs` and `--eval_rollout_trajectories` (`finetune_args`). The run's own
    evaluation and every benchmark cell evaluate with these."""
    return dict(
        stride=data_args.stride,
        max_snapshots=data_args.max_snapshots,
        max_pairs=finetune_args.eval_max_pairs,
        rollout_trajectories=finetune_args.eval_rollout_trajectories,
    )


def evaluate_run(model_dir: Path, specs: list[str], data_args, finetune_args, out_dir: Path) -> dict:
    """Evaluation of a fine-tuning run's exported model (and of the model before refinement, if any) on the
    `finetune_args.eval_split` of the sources `specs`, with the run's options (`run_evaluation_options`) and plots if
    `finetune_args.eval_plots`."""
    kwargs = dict(
        split=finetune_args.eval_split,
        plots=finetune_args.eval_plots,
        **run_evaluation_options(data_args, finetune_args),
    )
    # Opened once for both models: the evaluation normalises with each model's statistics without touching them.
    sources = [open_source(spec, fill_stats=True) for spec in specs]
    result = evaluate_model(load_model(model_dir), sources, out_dir=out_dir, **kwargs)
    before = model_dir.with_name("model-before-refiner")
    summary = headline(result)
    if before.exists():
        previous = evaluate_model(load_model(before), sources, out_dir=out_dir / "before-refiner", **kwargs)
        summary["before_refiner"] = headline(previous)
    return summary


# ----------------------------------------------------------------------------------------------- CLI
def _model_and_sources(args: argparse.Namespace, out: Path) -> tuple[torch.nn.Module, list]:
    """The model of `--model` and the opened sources of `--datasets` (generator specs write their files into
    `out/data`)."""
    from foundation.pdes.specs import resolve_specs

    specs = resolve_specs(args.datasets, out / "data")
    model = load_model(args.model)
    return model, [open_source(spec, fill_stats=True) for spec in specs]


def _horizon_main(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path(args.model).with_name("horizon")
    model, sources = _model_and_sources(args, out)
    options = dict(
        trajectories=args.rollout_trajectories, stride=args.stride, strategy=args.strategy, solver=args.solver
    )
    result = horizon(model, sources, split=args.split, max_lead=args.max_lead, **options)
    if not result:
        return fail("no time-dependent trajectory to roll out in --datasets")
    out.mkdir(parents=True, exist_ok=True)
    (out / "horizon.json").write_text(json.dumps(result, indent=2))
    if not args.no_plots:
        horizon_plot({args.model: result}, out / "horizon.png")
    summary = {"horizon": str(out / "horizon.json"), "final": result["final"], "windows": result["windows"]}
    for key in ("final_from_truth", "final_solver_from_model", "final_call_on_own_state", "final_solver_from_truth"):
        if key in result:
            summary[key] = result[key]
    print(json.dumps(summary, indent=2))
    return 0


def _evaluation_main(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else Path(args.model).with_name("evaluation")
    model, sources = _model_and_sources(args, out)
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
    summary = {k: round(v, 3) for k, v in headline(result).items()}
    print(json.dumps({"evaluation": str(out / "evaluation.json"), **summary}, indent=2))
    return 0


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
    parser.add_argument("--horizon", action="store_true", help="Rollouts past the training window only.")
    parser.add_argument("--strategy", default="jump", choices=list(ROLLOUT_STRATEGIES), help="With --horizon.")
    parser.add_argument(
        "--max_lead", type=float, default=None, help="With --horizon: the jump, in model units (default: trained)."
    )
    parser.add_argument(
        "--solver",
        action="store_true",
        help="With --horizon, files of foundation.pdes: the true dynamics continued from the rollout's own state.",
    )
    args = parser.parse_args(argv)
    return guarded(lambda: _horizon_main(args) if args.horizon else _evaluation_main(args))


if __name__ == "__main__":
    raise SystemExit(main())
