"""Does rollout training pay past the training window? All2all-only vs rollout-trained fine-tunes of one model.

The measurement of the long-horizon issue (ns-kf with its forcing at 64^2, files of twice the physical span, both
models trained on the first half of the same files with equal optimizer steps):

    python -c "from foundation.pdes.specs import resolve_specs; resolve_specs(['pde:ns-kf:n=56,resolution=64,\
snapshots=21,seed=21,val=8,test=16,t_end=2.0'], 'runs/horizon/data')"
    COMMON="--init_from runs/pretrain-corpus-cpu/model --datasets runs/horizon/data/ns-kf-n56-r64-s21-seed21-val8-\
test16-t_end2.0.h5 --max_snapshots 11 --strategy full --max_steps 500 --batch_size 16 --learning_rate 5e-4 \
--warmup_steps 25 --eval_every 100 --tracker none --seed 0"
    python -m finetune $COMMON --output_dir runs/horizon/all2all
    python -m finetune $COMMON --output_dir runs/horizon/rollout --rollout_steps 2 --rollout_lead_steps 5
    python benchmarks/long_horizon.py --all2all runs/horizon/all2all --rollout runs/horizon/rollout \
        --datasets runs/horizon/data/ns-kf-n56-r64-s21-seed21-val8-test16-t_end2.0.h5

Both models roll out from the first test snapshot to the end (`foundation.evaluation.horizon`) with the API's
default strategy (jumps of `default_jump`, the largest trained lead); the all2all model also with every jump of
`--jumps`, its best kept; the rollout model also chaining its own rollout-training step, against the all2all model
chained the same way (when that step is among `--jumps`). In-window direct errors are the runs' own held-out
evaluations (all2all pairs inside the window). `last_step_split`, for each of these rollouts: the last step's
error; that of its last call made from the true state (`from_truth`); and, for files of `foundation.pdes`, the
exact solver continued from the model's own state at that input time (`solver_from_model`: what a perfect last
call would still miss, the input's error carried by the true dynamics) and the last call against that
continuation (`call_on_own_state`: its own error on the state it was fed; rollout training is for its excess
over `from_truth`, the same call's error on the true state). `persistence_last_step`: the first snapshot held
(a model above it has no skill there). Prints and writes JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--all2all", required=True, help="Run folder of the all2all-only fine-tune.")
    parser.add_argument("--rollout", required=True, help="Run folder of the rollout-trained fine-tune.")
    parser.add_argument("--datasets", nargs="+", required=True, help="The long trajectories (test split used).")
    parser.add_argument("--trajectories", type=int, default=16)
    parser.add_argument("--jumps", type=float, nargs="+", default=[0.05, 0.1, 0.25, 0.5], help="Model units.")
    parser.add_argument("--out", default=None, help="JSON path (default: print only).")
    args = parser.parse_args()

    from finetune import load_model
    from foundation.data import open_source
    from foundation.evaluation import horizon
    from foundation.plots import horizon_plot

    def run_horizon(folder: str, jump: float | None, split: str = "test", solver: bool = False) -> dict:
        sources = [open_source(spec, fill_stats=True) for spec in args.datasets]
        model = load_model(Path(folder) / "model")
        return horizon(model, sources, split, trajectories=args.trajectories, max_lead=jump, solver=solver)

    def facts(folder: str) -> dict:
        result = json.loads((Path(folder) / "result.json").read_text())
        losses = [json.loads(line) for line in (Path(folder) / "losses.jsonl").read_text().splitlines()]
        return {
            "in_window_median_rel_l1_physical/mean": result["evaluation"]["median_rel_l1_physical/mean"],
            "steps": result["step"],
            "samples_per_s_per_process": result.get("samples_per_s_per_process"),
            "final_train_loss": losses[-1]["loss"],
            "run_args": json.loads((Path(folder) / "run_args.json").read_text()),
        }

    out = {"all2all": facts(args.all2all), "rollout": facts(args.rollout)}
    out["all2all"]["horizon_default"] = run_horizon(args.all2all, None, solver=True)
    out["rollout"]["horizon_default"] = run_horizon(args.rollout, None, solver=True)
    by_jump = {f"{j:g}": run_horizon(args.all2all, j, solver=True) for j in args.jumps}
    best = min(by_jump, key=lambda j: by_jump[j]["final"]["median_rel_l1_physical/mean"])
    out["all2all"]["horizon_by_jump"] = by_jump
    out["all2all"]["best_jump"] = float(best)

    step = load_model(Path(args.rollout) / "model").config.rollout_lead_time
    if step:  # what rollout training targets: chains of its own step
        own = out["rollout"]["horizon_own_step"] = run_horizon(args.rollout, step, solver=True)
        same = next((r for j, r in by_jump.items() if abs(float(j) - step) < 1e-6), None)
        if same is not None:
            out["own_step_rollout_vs_all2all_same_jump"] = _final(own) / _final(same)
        # The same chains on training trajectories: a rollout model better there and worse on held-out ones has
        # memorised its sequences (too few trajectories, or one sequence each).
        out["own_step_chain_last_step_train_vs_test"] = {
            name: {"train": _final(run_horizon(folder, step, "train")), "test": _final(test)}
            for name, folder, test in (("all2all", args.all2all, same), ("rollout", args.rollout, own))
            if test is not None
        }

    rollout_final = _final(out["rollout"]["horizon_default"])
    out["ratios"] = {
        "final_step_rollout_vs_all2all_default": rollout_final / _final(out["all2all"]["horizon_default"]),
        "final_step_rollout_vs_all2all_best_jump": rollout_final / _final(by_jump[best]),
        "in_window_rollout_vs_all2all": out["rollout"]["in_window_median_rel_l1_physical/mean"]
        / out["all2all"]["in_window_median_rel_l1_physical/mean"],
    }

    # Holding the first snapshot: the reference both models must beat before their ratio means anything.
    out["persistence_last_step"] = out["all2all"]["horizon_default"]["final"].get("persistence")
    out["last_step_split"] = _last_step_splits(out, by_jump, best, step)
    out["targets"] = {"final_step": "<= 0.7", "in_window": "<= 1.1"}
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        curves = {
            "all2all (default jump)": out["all2all"]["horizon_default"],
            f"all2all (jump {best})": by_jump[best],
            "rollout-trained (default jump)": out["rollout"]["horizon_default"],
        }
        horizon_plot(curves, Path(args.out).with_suffix(".png"))


def _final(result: dict) -> float:
    return result["final"]["median_rel_l1_physical/mean"]


def _last_step_splits(out: dict, by_jump: dict, best: str, step: float | None) -> dict:
    """The last step's error and its parts (module docstring) for the all2all model (default, its best jump and
    the rollout model's own step) and the rollout model (default and its own step)."""
    from foundation.evaluation import HEADLINE

    def split(result: dict) -> dict:
        keys = ("from_truth", "solver_from_model", "call_on_own_state", "solver_from_truth")
        return {"rolled_out": _final(result), **{key: result.get(f"final_{key}", {}).get(HEADLINE) for key in keys}}

    splits = {"all2all": split(out["all2all"]["horizon_default"])}
    shown = [best] + ([f"{step:g}"] if step and f"{step:g}" in by_jump and f"{step:g}" != best else [])
    for jump in shown:
        splits[f"all2all_jump_{jump}"] = split(by_jump[jump])
    splits["rollout"] = split(out["rollout"]["horizon_default"])
    if "horizon_own_step" in out["rollout"]:
        splits["rollout_own_step"] = split(out["rollout"]["horizon_own_step"])
    return splits


if __name__ == "__main__":
    main()
