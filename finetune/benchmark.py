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
on the validation split from its own small grid (median over seeds) at that budget, every trained cell exporting its
lowest-validation weights. Converged, not assumed (a flat validation tail under a cosine decayed to ~0 proves
nothing): every seed at the chosen rate is trained again at twice the budget (`--double_budget`), with its own
schedule (warm-up and cosine over the doubled steps); the 2x-budget test error is what a row reports (the seeds'
median and spread), next to the budget's (`test_at_budget`), their relative change `doubling_change` and
`converged` (|change| < `--converged_tolerance`). Scratch and FNO warm up for --warmup_steps, fine-tuned cells for
`--finetuned_warmup_steps` (0: Poseidon fine-tunes without), both times two at twice the budget.
Every (task, method, N, seed, learning rate, steps) is a run folder with `cell.json`; an interrupted benchmark
resumes and skips finished cells (a cell cut short resumes from its checkpoint).

Writes benchmark.json, benchmark.md and benchmark.png into --output_dir: the median test error per task x N x
method, and per task the accuracy gain (error ratio) and efficiency gain (trajectories a method needs for the
fine-tuned error, from a power-law fit of its curve; flagged where the fit extrapolates) against scratch and FNO, on
the 2x-budget errors.

Its parts: `finetune.cells` (one cell, its folder and resume checks), `finetune.gains` (fits, gains, curves) and
`finetune.report` (the files written); here the arguments, the loop over tasks, N and methods, and the entry point.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from foundation.cli import guarded
from foundation.data import open_source
from foundation.evaluation import HEADLINE
from pretrain.config import (
    DataArguments,
    ModelArguments,
    OptionError,
    TrainArguments,
    check_range,
    parse_dataclasses,
)

from .cells import METHODS, TRAINED, RunArguments, cell
from .config import FinetuneArguments, check
from .gains import baseline_gains, median_curve
from .report import table, write

DEFAULT_METHODS = ("finetuned", "scratch", "fno", "persistence")


@dataclass
class BenchmarkArguments:
    """What a benchmark compares: its tasks, training trajectory counts, methods, seeds and learning-rate grids."""

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
    double_budget: bool = field(
        default=True,
        metadata={
            "help": "Train every seed at the chosen rate again at twice --max_steps (own warm-up and cosine) and "
            "report that error, with whether doubling changed it (converged); False: the budget's error only."
        },
    )
    converged_tolerance: float = field(
        default=0.05,
        metadata={"help": "Converged: doubling the budget changed the median test error by less than this fraction."},
    )
    finetuned_warmup_steps: int = field(
        default=0,
        metadata={
            "help": "Warm-up steps of the fine-tuned cells at the budget (scratch and FNO: --warmup_steps); twice "
            "that at twice the budget."
        },
    )

    def __post_init__(self) -> None:
        check_range(self, "n", "search_seeds", "bench_rollout_steps", low=1)
        check_range(self, "converged_tolerance", "finetuned_warmup_steps")
        check_range(self, "finetuned_learning_rates", "scratch_learning_rates", "fno_learning_rates")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise OptionError("methods", f"must be among {', '.join(METHODS)}, got {unknown}")
        if not self.seeds:
            raise OptionError("seeds", "needs at least one seed")

    def learning_rates(self, method: str) -> list[float]:
        """The grid searched for `method`; [0.0] for an untrained one (persistence)."""
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


# ----------------------------------------------------------------------------------------------- the run
def run_benchmark(
    model_args: ModelArguments,
    data_args: DataArguments,
    train_args: TrainArguments,
    finetune_args: FinetuneArguments,
    bench: BenchmarkArguments,
    log: Callable[[str], None] = print,
) -> dict:
    """Every cell of the benchmark (finished ones read back), summarised per task, N and method; the report is
    written into --output_dir after each task (benchmark.json, benchmark.md) and at the end (and benchmark.png).

    Args:
        model_args: The pretrained model (`--init_from`) and its options.
        data_args: Data options every task is read with (no --datasets: the tasks are the data).
        train_args: The budget and output folder; seed and learning rate are set per cell.
        finetune_args: The fine-tuning options (full fine-tuning).
        bench: The tasks, N, methods, seeds and learning-rate grids.
        log: Where the one line per cell goes.

    Returns:
        The report, as benchmark.json holds it.
    """
    run = RunArguments(model_args, data_args, train_args, finetune_args)
    root = Path(train_args.output_dir)
    report: dict = {
        "metric": HEADLINE,
        "init_from": model_args.init_from,
        "budget": run.budget(),  # the base budget; trained cells also run at twice it with double_budget
        "finetuned_warmup_steps": bench.finetuned_warmup_steps,
        "double_budget": bench.double_budget,
        "converged_tolerance": bench.converged_tolerance,
        "n": list(bench.n),
        "seeds": list(bench.seeds),
        "methods": list(bench.methods),
        "learning_rate_grids": {m: bench.learning_rates(m) for m in bench.methods if m in TRAINED},
        "tasks": {},
    }
    for name, raw in bench.task_list():
        report["tasks"][name] = _task(root, name, raw, run, bench, log)
        write(report, root)  # after each task: an interrupted benchmark still leaves the finished tasks
    write(report, root, plot=True)
    return report


def _task(
    root: Path, name: str, raw: str, run: RunArguments, bench: BenchmarkArguments, log: Callable[[str], None]
) -> dict:
    """One task of the report: its data, a row per method and N, the gains."""
    from foundation.pdes.specs import resolve_specs

    (spec,) = resolve_specs([raw], root / "data")  # generated once: one test set for every N and method
    with open_source(spec) as source:
        steady = source.info.steady
    task: dict = {"spec": raw, "data": spec, "steady": steady, "methods": {}}
    for method in bench.methods:
        if method == "finetuned-rollout" and steady:  # nothing to roll out
            continue
        task["methods"][method] = {str(n): _row(root, name, method, spec, n, run, bench, log) for n in bench.n}
    if "finetuned" in task["methods"]:
        task["gains"] = baseline_gains(list(bench.n), task["methods"])
    return task


def _row(
    root: Path,
    task: str,
    method: str,
    spec: str,
    n: int,
    run: RunArguments,
    bench: BenchmarkArguments,
    log: Callable[[str], None],
) -> dict:
    """One method at one N: the learning rate of the lowest median validation error over the searched seeds at the
    budget; the test errors of every seed at that rate (median, min, max) at twice the budget with double_budget
    (else at the budget), the budget's median beside them and whether doubling changed it (converged); past the
    training window and the validation curve of the same cells."""

    def at(seed: int | None, lr: float, factor: int = 1) -> dict:
        return cell(root, task, method, spec, n, seed, lr, run, bench, log, factor=factor)

    trained = method in TRAINED
    seeds = bench.seeds if trained else [None]
    searched = seeds[: bench.search_seeds] if bench.search_seeds else seeds
    by_lr = {lr: [at(s, lr) for s in searched] for lr in bench.learning_rates(method)}
    val = {lr: float(np.median([c["val"] for c in cells])) for lr, cells in by_lr.items()}
    best = min(by_lr, key=lambda lr: val[lr])
    chosen = by_lr[best] + [at(s, best) for s in seeds[len(searched) :]]  # the others run at the chosen rate only
    doubled = trained and bench.double_budget
    reported = [at(s, best, factor=2) for s in seeds] if doubled else chosen
    tests = [c["test"] for c in reported]
    row = {
        "learning_rate": best,
        "test": float(np.median(tests)),
        "test_min": float(np.min(tests)),
        "test_max": float(np.max(tests)),
        "test_by_seed": tests,
        "val_by_learning_rate": {f"{lr:g}": v for lr, v in val.items()},
    }
    if trained:
        row["steps"] = run.train_args.max_steps * (2 if doubled else 1)
    if doubled:  # the budget's error at the chosen rate, and what doubling the budget changed
        base = [c["test"] for c in chosen]
        row["test_at_budget"] = float(np.median(base))
        row["test_at_budget_by_seed"] = base
        change = row["test"] - row["test_at_budget"]
        row["doubling_change"] = change / row["test_at_budget"] if row["test_at_budget"] else float(change != 0)
        row["converged"] = bool(abs(row["doubling_change"]) < bench.converged_tolerance)
    finals = [c["horizon"]["final"]["median_rel_l1_physical/mean"] for c in reported if c.get("horizon")]
    if finals:  # past the training window: the last step of the test trajectories
        row["horizon_final"] = float(np.median(finals))
        row["horizon_final_step"] = reported[0]["horizon"]["final"]["step"]
    curves = [c["val_curve"] for c in reported if c.get("val_curve")]
    if curves:
        row["val_curve"] = median_curve(curves)
    return row


def check_benchmark(
    model_args: ModelArguments,
    data_args: DataArguments,
    train_args: TrainArguments,
    finetune_args: FinetuneArguments,
    bench: BenchmarkArguments,
) -> None:
    """What a benchmark needs beyond a fine-tuning run's checks (`finetune.config.check`).

    Raises:
        OptionError: --datasets given (a benchmark's data are its tasks), no --tasks or two of one name, or a
            strategy other than full fine-tuning (the benchmark runs its scratch and FNO cells itself).
    """
    check(finetune_args, model_args, train_args)
    if data_args.datasets:
        raise OptionError("datasets", "is not for a benchmark: its data are the --tasks, one at a time")
    if not bench.tasks:
        raise OptionError("tasks", "needs at least one downstream task (SPEC or NAME=SPEC)")
    bench.task_list()
    if finetune_args.strategy != "full" or finetune_args.from_scratch:
        raise OptionError("strategy", "must be full in a benchmark (it trains its scratch and FNO runs itself)")


def cli(
    argv: list[str] | None,
    extra: type,
    section: str,
    check_all: Callable[..., None],
    run: Callable[..., dict],
    render: Callable[[dict], str],
    needs_datasets: bool = True,
) -> int:
    """The entry point of a comparison (this benchmark, `finetune.study`): parse, run, print the rendered report.

    Args:
        argv: The command line (None: `sys.argv`).
        extra: The comparison's own argument dataclass, parsed after the run's four.
        section: The recipe section `extra` is read from (besides `finetune`).
        check_all: Checks of all five parsed argument sets (bad input exits 2 while parsing).
        run: The comparison, called with the five; returns its report.
        render: The report as the text printed.
        needs_datasets: Whether --datasets is required.

    Returns:
        The exit code: 0, or 2 with one `error: ...` line on bad input (`foundation.cli.guarded`).
    """
    classes = (ModelArguments, DataArguments, TrainArguments, FinetuneArguments, extra)
    *parsed, _ = parse_dataclasses(
        classes, argv, sections=("finetune", section), check=check_all, needs_datasets=needs_datasets
    )
    reports: list[dict] = []

    def body() -> None:
        from pretrain.build import setup_runtime

        setup_runtime()
        reports.append(run(*parsed))

    code = guarded(body)
    if reports:  # rendered outside the guard: a fault there is a bug, with its traceback
        print(render(reports[0]))
    return code


def main(argv: list[str] | None = None) -> int:
    """`python -m finetune.benchmark`: the exit code."""
    return cli(argv, BenchmarkArguments, "benchmark", check_benchmark, run_benchmark, table, needs_datasets=False)


if __name__ == "__main__":
    raise SystemExit(main())
