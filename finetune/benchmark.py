"""Does pretraining pay? Fine-tuned vs scratch vs FNO vs persistence on downstream tasks, per number of training
trajectories N (the table of the Poseidon paper, reproducible).

    python -m finetune.benchmark --config launch/recipes/benchmark-cpu.yaml --init_from runs/pretrain-corpus-cpu/model

For every task (a `pde:` generator spec or any `open_source` spec, optionally `name=SPEC`), every N and every
method it trains and evaluates, through the fine-tuning loop (`finetune.trainer`) and the evaluation module
(`foundation.evaluation`):

    finetuned    the pretrained model, fully fine-tuned (`--strategy full`)
    finetuned-rollout
                 the same with rollout training next to the pairs (`--bench_rollout_steps` K, steps of the pair's
                 lead; `--rollout_weight`, `--rollout_mode`, `--rollout_noise` as given): its rows sit beside the
                 plain fine-tune's in window and past it (time-dependent tasks only; not a default method)
    scratch      the same architecture and data description, randomly initialised
    fno          neuraloperator's FNO from scratch (`finetune.baselines.FNOBaseline`, `--strategy fno`)
    persistence  the state at t_i returned for t_j (time-dependent tasks); the mean training target (steady ones)

Fair by construction: one test split per task (generated once, shared by every N and method), nested training sets
(the first N trajectories), one step budget and batch for every trained method, each method's learning rate chosen
on the validation split from its own small grid (median over seeds), the seeds' median and spread reported on test.
Every (task, method, N, seed, learning rate) is a run folder with `cell.json`; an interrupted benchmark resumes
and skips finished cells (a cell cut short resumes from its checkpoint).

Writes benchmark.json, benchmark.md and benchmark.png into --output_dir: the median test error per task x N x
method, and per task the accuracy gain (error ratio) and efficiency gain (trajectories a method needs for the
fine-tuned error, from a power-law fit of its curve; flagged where the fit extrapolates) against scratch and FNO.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from foundation.data import DataError, open_source
from foundation.evaluation import HEADLINE, evaluate, headline, horizon, metric_key
from pretrain.config import (
    DataArguments,
    ModelArguments,
    OptionError,
    TrainArguments,
    check_range,
    parse_dataclasses,
)

from .config import FinetuneArguments, check

METHODS = ("finetuned", "finetuned-rollout", "scratch", "fno", "persistence")
TRAINED = ("finetuned", "finetuned-rollout", "scratch", "fno")
DEFAULT_METHODS = ("finetuned", "scratch", "fno", "persistence")
PRETRAINED = ("finetuned", "finetuned-rollout")  # start from --init_from


@dataclass
class BenchmarkArguments:
    tasks: list[str] = field(
        default_factory=list,
        metadata={"help": "Downstream tasks: SPEC or NAME=SPEC (pde: generator specs or open_source specs)."},
    )
    n: list[int] = field(default_factory=lambda: [8, 32], metadata={"help": "Training trajectory counts."})
    methods: list[str] = field(
        default_factory=lambda: list(DEFAULT_METHODS), metadata={"help": f"Of {', '.join(METHODS)}."}
    )
    bench_rollout_steps: int = field(
        default=2, metadata={"help": "K of the finetuned-rollout method (sequences step by their pair's lead)."}
    )
    seeds: list[int] = field(default_factory=lambda: [0, 1], metadata={"help": "Seeds of every trained cell."})
    finetuned_learning_rates: list[float] = field(
        default_factory=lambda: [2e-4, 5e-4], metadata={"help": "Grid of the fine-tuned body's learning rate."}
    )
    scratch_learning_rates: list[float] = field(
        default_factory=lambda: [1e-3, 2e-3], metadata={"help": "Grid of the scratch runs' learning rate."}
    )
    fno_learning_rates: list[float] = field(
        default_factory=lambda: [1e-3, 3e-3], metadata={"help": "Grid of the FNO's learning rate."}
    )
    search_seeds: int | None = field(
        default=None,
        metadata={
            "help": "The learning-rate grid is searched on the first k seeds; the other seeds run at the chosen "
            "rate only (None: every seed at every rate)."
        },
    )

    def __post_init__(self):
        check_range(self, "n", "search_seeds", "bench_rollout_steps", low=1)
        check_range(self, "finetuned_learning_rates", "scratch_learning_rates", "fno_learning_rates")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise OptionError("methods", f"must be among {', '.join(METHODS)}, got {unknown}")
        if not self.seeds:
            raise OptionError("seeds", "needs at least one seed")

    def learning_rates(self, method: str) -> list[float]:
        return {
            "finetuned": self.finetuned_learning_rates,
            "finetuned-rollout": self.finetuned_learning_rates,
            "scratch": self.scratch_learning_rates,
            "fno": self.fno_learning_rates,
        }.get(method, [0.0])

    def task_list(self) -> list[tuple[str, str]]:
        """(name, spec) per task; a name defaults to the family of a `pde:` spec or the file stem."""
        out = []
        for item in self.tasks:
            name, eq, spec = item.partition("=")
            if not eq or ":" in name or "/" in name:
                spec = item
                name = spec.split(":")[1] if spec.startswith("pde:") else Path(spec.split(":")[-1]).stem
            out.append((name, spec))
        names = [n for n, _ in out]
        if len(set(names)) != len(names):
            raise OptionError("tasks", f"task names must be unique, got {names} (name them: NAME=SPEC)")
        return out


# ----------------------------------------------------------------------------------------------- gains
def fit_power_law(n: list[float], error: list[float]) -> tuple[float, float]:
    """(C, a) of error = C N^-a, least squares on log error vs log N."""
    slope, intercept = np.polyfit(np.log(np.asarray(n, float)), np.log(np.asarray(error, float)), 1)
    return float(np.exp(intercept)), float(-slope)


def gains(ns: list[int], finetuned: list[float], baseline: list[float]) -> list[dict]:
    """Per N: accuracy gain (baseline error / fine-tuned error, measured) and efficiency gain (trajectories the
    baseline's power-law fit needs to reach the fine-tuned error, over N; flagged where it extrapolates)."""
    c, a = fit_power_law(ns, baseline)
    rows = []
    for n, e_ft, e_b in zip(ns, finetuned, baseline):
        needed = (c / e_ft) ** (1 / a) if a > 0 else float("inf")
        rows.append(
            {
                "n": n,
                "finetuned": e_ft,
                "baseline": e_b,
                "accuracy_gain": e_b / e_ft,
                "trajectories_needed": needed,
                "efficiency_gain": needed / n,
                "extrapolated": bool(needed > max(ns) or needed < min(ns)),
            }
        )
    return rows


def median_curve(curves: list[list[list[float]]]) -> list[list[float]]:
    """[[step, median over seeds of the validation error]] on the steps every curve has."""
    steps = sorted(set.intersection(*(set(step for step, _ in c) for c in curves)))
    values = [dict((step, v) for step, v in c) for c in curves]
    return [[step, float(np.median([v[step] for v in values]))] for step in steps]


def levelled_off(curve: list[list[float]], tail: float = 0.2) -> dict:
    """How much a validation curve still fell over the last `tail` of its steps: has the budget levelled it off?
    `improvement` = error at the start of the tail / final error - 1 (0.03: 3 % lower at the end)."""
    last_step = curve[-1][0]
    start = min(curve, key=lambda point: abs(point[0] - (1 - tail) * last_step))
    return {"from_step": start[0], "to_step": last_step, "improvement": start[1] / curve[-1][1] - 1}


# ----------------------------------------------------------------------------------------------- cells
def cell_folder(root: Path, task: str, method: str, n: int | None, seed: int | None, lr: float) -> Path:
    parts = [f"n{n}" if n is not None else "all"]
    if seed is not None:
        parts.append(f"seed{seed}")
    if lr:
        parts.append(f"lr{lr:g}")
    return root / task / method / "-".join(parts)


def _evaluate(model, spec: str, split: str, tune: FinetuneArguments, data_args, rollout: bool = True) -> dict:
    """`foundation.evaluation.evaluate` with the run's evaluation options (`--eval_max_pairs`, ...)."""
    source = open_source(spec, fill_stats=True)
    result, _ = evaluate(
        model,
        [source],
        split=split,
        max_pairs=tune.eval_max_pairs,
        rollout_trajectories=tune.eval_rollout_trajectories if rollout else 0,  # validation: only the choice
        stride=data_args.stride,
        max_snapshots=data_args.max_snapshots,
    )
    return result


def _horizon(model, spec: str, tune: FinetuneArguments, data_args) -> dict | None:
    """Rollouts past the training window on the test split (`foundation.evaluation.horizon`, the model's default
    strategy) when the task's trajectories are longer than the window (`max_snapshots`); None otherwise."""
    if data_args.max_snapshots is None:
        return None
    with open_source(spec) as source:
        stored = len(range(0, source.num_snapshots, data_args.stride))
        if source.info.steady or stored <= data_args.max_snapshots:
            return None
    sources = [open_source(spec, fill_stats=True)]
    result = horizon(model, sources, "test", trajectories=tune.eval_rollout_trajectories, stride=data_args.stride)
    if not result:
        return None
    return {"final": result["final"], "windows": result["windows"], "max_lead": result["max_lead"]}


def training_pairs(spec: str, n: int, data_args: DataArguments) -> int:
    """All2all training pairs of the first `n` training trajectories of `spec`."""
    from foundation.data import All2AllPairs

    options = dict(stride=data_args.stride, max_snapshots=data_args.max_snapshots, lead_steps=data_args.lead_steps)
    with open_source(spec) as source:
        pairs = All2AllPairs(source, "train", include_identity=data_args.include_identity, normalize=False, **options)
        return n * len(pairs.pattern)


def run_trained_cell(
    folder: Path, method: str, spec: str, n: int, seed: int, lr: float, args: tuple, bench: BenchmarkArguments
) -> dict:
    """Train one method on the first `n` trajectories (the fine-tuning loop), then evaluate it on val and test."""
    from .evaluate import load_model
    from .trainer import Finetuner

    model_args, data_args, train_args, tune = (copy.deepcopy(a) for a in args)
    data_args.datasets = [spec]
    train_args.output_dir, train_args.learning_rate, train_args.seed = str(folder), lr, seed
    # A steady task has one pair per trajectory: N = 8 of them cannot fill a batch of 16. Such a cell trains on
    # all its pairs per step instead (same steps; recorded in the cell as its batch).
    train_args.batch_size = min(train_args.batch_size, training_pairs(spec, n, data_args))
    tune.train_trajectories, tune.eval_split = n, "test"
    tune.eval_plots = False  # a table of numbers: the cells' evaluation.json, not their figures
    tune.strategy = {"scratch": "full", "fno": "fno"}.get(method, tune.strategy)
    tune.from_scratch = method == "scratch"
    if method == "finetuned-rollout":
        data_args.rollout_steps, data_args.rollout_lead_steps = bench.bench_rollout_steps, 0
    start = time.perf_counter()
    outcome = Finetuner(model_args, data_args, train_args, tune).train()
    model = load_model(outcome["model"])
    val = _evaluate(model, spec, "val", tune, data_args, rollout=False)
    test = json.loads((folder / "evaluation" / "evaluation.json").read_text())
    long = _horizon(model, spec, tune, data_args)
    curve_file, key = folder / "validation.jsonl", metric_key(space="normalised")
    lines = curve_file.read_text().splitlines() if curve_file.exists() else []
    return {
        "val": val[HEADLINE],
        "test": test[HEADLINE],
        "test_metrics": headline(test),
        "val_curve": [[e["step"], e[key]] for e in map(json.loads, lines) if key in e],  # during training
        "rollout": test.get("rollout", {}),
        "steps": outcome["step"],
        "batch_size": train_args.batch_size,
        "trainable_parameters": outcome["parameters"]["trainable"],
        "wall_s": round(time.perf_counter() - start, 1),
        **({"horizon": long} if long else {}),
    }


def run_baseline_cell(spec: str, n: int, args: tuple, bench: BenchmarkArguments) -> dict:
    """Persistence (time-dependent) or the training mean of the first `n` trajectories (steady), on val and test."""
    from pretrain.build import build_data

    from .baselines import Persistence, TrainingMean
    from .trainer import adapted_model

    model_args, data_args, train_args, tune = (copy.deepcopy(a) for a in args)
    data_args.datasets = [spec]
    data = build_data(data_args, train_args.seed, 0, 1, n)
    _, scot = adapted_model(model_args.init_from, data, train_args.seed)
    steady = data.sources[0].info.steady
    model = TrainingMean.fit(scot.config, data.train_set) if steady else Persistence(scot.config)
    val = _evaluate(model, spec, "val", tune, data_args, rollout=False)
    test = _evaluate(model, spec, "test", tune, data_args)
    kind = "training mean" if steady else "persistence"
    long = None if steady else _horizon(model, spec, tune, data_args)
    out = {"val": val[HEADLINE], "test": test[HEADLINE], "test_metrics": headline(test), "baseline": kind}
    return {**out, "horizon": long} if long else out


@functools.lru_cache(maxsize=8)
def _weights_sha256(folder: str, stamp: tuple) -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(folder).glob("*.safetensors")):
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                digest.update(block)
    return digest.hexdigest()


def weights_fingerprint(init_from: str | None) -> str | None:
    """What a fine-tuned cell started from: the sha256 of a local folder's safetensors, else the Hub id as given."""
    if init_from is None or not Path(init_from).is_dir():
        return init_from
    files = sorted(Path(init_from).glob("*.safetensors"))
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _weights_sha256(str(Path(init_from).resolve()), stamp) if files else init_from


def cell(root: Path, task: str, method: str, spec: str, n: int, seed: int, lr: float, args, bench, log) -> dict:
    """One finished cell: read back if done before (resume), else run and record."""
    folder = cell_folder(root, task, method, n, seed if method in TRAINED else None, lr)
    done = folder / "cell.json"
    budget = {"max_steps": args[2].max_steps, "batch_size": args[2].batch_size} if method in TRAINED else {}
    start = {"init_weights": weights_fingerprint(args[0].init_from)} if method in PRETRAINED else {}
    if done.exists():
        record = json.loads(done.read_text())
        if record.get("budget", {}) != budget:
            raise ValueError(
                f"{done}: finished with budget {record.get('budget')}, this benchmark's is {budget}: "
                "a resumed benchmark must keep its budget (use another --output_dir)"
            )
        if start and record.get("init_weights", start["init_weights"]) != start["init_weights"]:
            raise ValueError(
                f"{done}: fine-tuned from other pretrained weights than --init_from {args[0].init_from}: a resumed "
                "benchmark must keep its pretrained model (use another --output_dir)"
            )
        log(f"[benchmark] {task} {method} N={n} seed={seed} lr={lr:g}: done before, skipped")
        return record
    if method in TRAINED:
        result = run_trained_cell(folder, method, spec, n, seed, lr, args, bench)
    else:
        result = run_baseline_cell(spec, n, args, bench)
    record = {"task": task, "method": method, "n": n, "seed": seed, "learning_rate": lr, "budget": budget}
    record.update(start, **result)
    folder.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(record, indent=2))  # last: a cell without it runs again (resuming its checkpoint)
    log(f"[benchmark] {task} {method} N={n} seed={seed} lr={lr:g}: val {record['val']:.3f}, test {record['test']:.3f}")
    return record


# ----------------------------------------------------------------------------------------------- the run
def run_benchmark(model_args, data_args, train_args, tune, bench: BenchmarkArguments, log=print) -> dict:
    root = Path(train_args.output_dir)
    args = (model_args, data_args, train_args, tune)
    from foundation.pdes.specs import resolve_specs

    report: dict = {
        "metric": HEADLINE,
        "init_from": model_args.init_from,
        "budget": {"max_steps": train_args.max_steps, "batch_size": train_args.batch_size},
        "n": list(bench.n),
        "seeds": list(bench.seeds),
        "methods": list(bench.methods),
        "learning_rate_grids": {m: bench.learning_rates(m) for m in bench.methods if m in TRAINED},
        "tasks": {},
    }
    for name, raw in bench.task_list():
        (spec,) = resolve_specs([raw], root / "data")  # generated once: one test set for every N and method
        with open_source(spec) as source:
            steady = source.info.steady
        task: dict = {"spec": raw, "data": spec, "steady": steady, "methods": {}}
        for method in bench.methods:
            if method == "finetuned-rollout" and steady:  # nothing to roll out
                continue
            rows = {}
            for n in bench.n:
                seeds = bench.seeds if method in TRAINED else [None]
                searched = seeds[: bench.search_seeds] if bench.search_seeds else seeds
                by_lr = {}
                for lr in bench.learning_rates(method):
                    by_lr[lr] = [cell(root, name, method, spec, n, s, lr, args, bench, log) for s in searched]
                best = min(by_lr, key=lambda lr: float(np.median([c["val"] for c in by_lr[lr]])))
                rest = seeds[len(searched) :]  # the seeds that run at the chosen rate only
                chosen = by_lr[best] + [cell(root, name, method, spec, n, s, best, args, bench, log) for s in rest]
                tests = [c["test"] for c in chosen]
                rows[str(n)] = {
                    "learning_rate": best,
                    "test": float(np.median(tests)),
                    "test_min": float(np.min(tests)),
                    "test_max": float(np.max(tests)),
                    "test_by_seed": tests,
                    "val_by_learning_rate": {
                        f"{lr:g}": float(np.median([c["val"] for c in by_lr[lr]])) for lr in by_lr
                    },
                }
                finals = [c["horizon"]["final"]["median_rel_l1_physical/mean"] for c in chosen if c.get("horizon")]
                if finals:  # past the training window: the last step of the test trajectories
                    rows[str(n)]["horizon_final"] = float(np.median(finals))
                    rows[str(n)]["horizon_final_step"] = chosen[0]["horizon"]["final"]["step"]
                curves = [c["val_curve"] for c in chosen if c.get("val_curve")]
                if curves:
                    rows[str(n)]["val_curve"] = median_curve(curves)
            task["methods"][method] = rows
            if method == "scratch" and "val_curve" in rows[str(max(bench.n))]:
                task["scratch_levelled_off"] = levelled_off(rows[str(max(bench.n))]["val_curve"])
        ns = list(bench.n)
        if "finetuned" in task["methods"]:
            finetuned = [task["methods"]["finetuned"][str(n)]["test"] for n in ns]
            task["gains"] = {}
            for baseline in ("scratch", "fno", "persistence"):
                if baseline in task["methods"] and len(ns) >= 2:
                    errors = [task["methods"][baseline][str(n)]["test"] for n in ns]
                    if baseline == "persistence":  # no learning curve (the training mean barely moves with N)
                        task["gains"][baseline] = [{"n": n, "ratio": f / e} for n, f, e in zip(ns, finetuned, errors)]
                    else:
                        task["gains"][baseline] = gains(ns, finetuned, errors)
        report["tasks"][name] = task
        write(report, root)  # after each task: an interrupted benchmark still leaves the finished tasks
    write(report, root, plot=True)
    return report


def write(report: dict, root: Path, plot: bool = False) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "benchmark.json").write_text(json.dumps(report, indent=2))
    (root / "benchmark.md").write_text(table(report))
    if plot:
        figure(report, root / "benchmark.png")


def table(report: dict) -> str:
    methods = report["methods"]
    lines = [
        f"Test {report['metric']} (%), median over seeds {report['seeds']} [min-max]; every trained method "
        f"{report['budget']['max_steps']} steps x batch {report['budget']['batch_size']}, learning rate chosen on "
        "validation; persistence is the training mean on steady tasks. Pretrained model: "
        + str(report["init_from"])
        + "\n",
        "| task | N | "
        + " | ".join(methods)
        + " | fine-tuned / scratch | fine-tuned / FNO | fine-tuned / persistence |",
        "|---|---|" + "---|" * (len(methods) + 3),
    ]
    for name, task in report["tasks"].items():
        for n in report["n"]:
            cells, errors = [], {}
            for method in methods:
                row = task["methods"].get(method, {}).get(str(n))
                if row is None:
                    cells.append("-")
                    continue
                errors[method] = row["test"]
                spread = f" [{row['test_min']:.2f}-{row['test_max']:.2f}]" if len(row["test_by_seed"]) > 1 else ""
                cells.append(f"{row['test']:.2f}{spread}")
            ratios = [
                f"{errors['finetuned'] / errors[b]:.2f}" if "finetuned" in errors and b in errors else "-"
                for b in ("scratch", "fno", "persistence")
            ]
            lines.append(f"| {name} | {n} | " + " | ".join(cells + ratios) + " |")
    long = [
        (name, n, task)
        for name, task in report["tasks"].items()
        for n in report["n"]
        if any("horizon_final" in (task["methods"].get(m, {}).get(str(n)) or {}) for m in methods)
    ]
    if long:
        lines += [
            "\nPast the training window: the same models rolled out from the first test snapshot to the end of "
            "trajectories longer than the window (default strategy), median rel. L1 (%) at the last step\n",
            "| task | N | last step | " + " | ".join(methods) + " |",
            "|---|---|---|" + "---|" * len(methods),
        ]
        for name, n, task in long:
            rows = [task["methods"].get(m, {}).get(str(n)) or {} for m in methods]
            step = next(r["horizon_final_step"] for r in rows if "horizon_final_step" in r)
            cells = [f"{r['horizon_final']:.2f}" if "horizon_final" in r else "-" for r in rows]
            lines.append(f"| {name} | {n} | {step} | " + " | ".join(cells) + " |")
    for name, task in report["tasks"].items():
        if "scratch_levelled_off" in task:
            flat = task["scratch_levelled_off"]
            lines.append(
                f"\n{name}: scratch's validation error at N={max(report['n'])} fell "
                f"{100 * flat['improvement']:.1f} % from step {flat['from_step']} to {flat['to_step']} "
                "(levelled off when small)"
            )
        for baseline, rows in (task.get("gains") or {}).items():
            if rows and "efficiency_gain" in rows[0]:
                text = ", ".join(
                    f"N={r['n']}: AG {r['accuracy_gain']:.2f}, EG {r['efficiency_gain']:.3g}"
                    + (" (extrapolated)" if r["extrapolated"] else "")
                    for r in rows
                )
                lines.append(f"\n{name} vs {baseline}: {text}")
    return "\n".join(lines) + "\n"


def figure(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(report["tasks"].items())
    if not tasks:
        return
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    ns = np.asarray(report["n"], float)
    for ax, (name, task) in zip(axes[0], tasks):
        for method, rows in task["methods"].items():
            ys = [rows[str(n)]["test"] for n in report["n"]]
            lo = [rows[str(n)]["test"] - rows[str(n)]["test_min"] for n in report["n"]]
            hi = [rows[str(n)]["test_max"] - rows[str(n)]["test"] for n in report["n"]]
            ax.errorbar(ns, ys, yerr=[lo, hi], marker="o", capsize=3, label=method)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("training trajectories N")
        ax.set_ylabel("test median rel. L1 (%)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def check_benchmark(model_args, data_args, train_args, tune: FinetuneArguments, bench: BenchmarkArguments) -> None:
    check(tune, model_args, train_args)
    if data_args.datasets:
        raise OptionError("datasets", "is not for a benchmark: its data are the --tasks, one at a time")
    if not bench.tasks:
        raise OptionError("tasks", "needs at least one downstream task (SPEC or NAME=SPEC)")
    bench.task_list()
    if tune.strategy != "full" or tune.from_scratch:
        raise OptionError("strategy", "must be full in a benchmark (it trains its scratch and FNO runs itself)")


def cli(argv, extra: type, section: str, check_all, run, render, needs_datasets: bool = True) -> int:
    """The entry point of a comparison (this benchmark, `finetune.study`): parse the run's dataclasses plus `extra`
    (recipe section `section`), run, print `render(report)`; bad input ends in one error line and exit code 2."""
    classes = (ModelArguments, DataArguments, TrainArguments, FinetuneArguments, extra)
    *parsed, _ = parse_dataclasses(
        classes, argv, sections=("finetune", section), check=check_all, needs_datasets=needs_datasets
    )
    try:
        from pretrain.build import setup_runtime

        setup_runtime()
        report = run(*parsed)
    except (DataError, ValueError, FileNotFoundError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(render(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    return cli(argv, BenchmarkArguments, "benchmark", check_benchmark, run_benchmark, table, needs_datasets=False)


if __name__ == "__main__":
    raise SystemExit(main())
