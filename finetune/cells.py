"""The cells of a benchmark (`finetune.benchmark`): one method on one task at one N, seed and learning rate, trained
through the fine-tuning loop (`finetune.trainer`) or a baseline that needs no training, evaluated on val and test.

Every cell is a run folder (`cell_folder`, named with its steps: a cell at the budget and one at twice it coexist)
with `cell.json`, written last: a finished cell is read back instead of run again, a cell cut short resumes from its
checkpoint, and a resumed benchmark must keep the budget (steps, batch, warm-up) and the pretrained weights
(`weights_fingerprint`) its finished cells were trained with.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foundation.data import open_source
from foundation.evaluation import HEADLINE, evaluate, headline, horizon, metric_key
from pretrain.config import DataArguments, ModelArguments, TrainArguments

from .config import FinetuneArguments
from .evaluate import run_evaluation_options

if TYPE_CHECKING:  # benchmark.py imports this module: the argument class only for the annotations
    from .benchmark import BenchmarkArguments

METHODS = ("finetuned", "finetuned-rollout", "scratch", "fno", "persistence")
TRAINED = ("finetuned", "finetuned-rollout", "scratch", "fno")
PRETRAINED = ("finetuned", "finetuned-rollout")  # start from --init_from


@dataclass
class RunArguments:
    """The argument sets of one fine-tuning run (`python -m finetune`): what every cell of a benchmark starts from
    and changes its own copy of (data, folder, learning rate, seed, method)."""

    model_args: ModelArguments
    data_args: DataArguments
    train_args: TrainArguments
    finetune_args: FinetuneArguments

    def copy(self) -> RunArguments:
        """A deep copy, for a cell to set its own options without touching the benchmark's."""
        return deepcopy(self)

    def budget(self) -> dict[str, int]:
        """The steps, batch and warm-up steps of a run: what a resumed benchmark must keep, per cell."""
        train = self.train_args
        return {"max_steps": train.max_steps, "batch_size": train.batch_size, "warmup_steps": train.warmup_steps}

    def scaled(self, factor: int, warmup_steps: int) -> RunArguments:
        """A copy trained `factor` times the steps with its own schedule: `warmup_steps` x `factor` steps of linear
        warm-up, then the cosine decay over all the steps (the same fractions of the run at every budget)."""
        run = self.copy()
        run.train_args.max_steps *= factor
        run.train_args.warmup_steps = warmup_steps * factor
        return run


def cell_folder(
    root: Path, task: str, method: str, n: int | None, seed: int | None, lr: float, steps: int | None = None
) -> Path:
    """The run folder of a cell: root/task/method/n8-seed0-lr0.0005-steps500 (no seed, rate nor steps for an
    untrained method)."""
    parts = [f"n{n}" if n is not None else "all"]
    if seed is not None:
        parts.append(f"seed{seed}")
    if lr:
        parts.append(f"lr{lr:g}")
    if steps is not None:
        parts.append(f"steps{steps}")
    return root / task / method / "-".join(parts)


def _evaluate(model: Any, spec: str, split: str, run: RunArguments, rollout: bool = True) -> dict:
    """`foundation.evaluation.evaluate` with the run's evaluation options (`--eval_max_pairs`, ...)."""
    options = run_evaluation_options(run.data_args, run.finetune_args)
    if not rollout:  # validation: only the choice of learning rate reads it
        options["rollout_trajectories"] = 0
    result, _ = evaluate(model, [open_source(spec, fill_stats=True)], split=split, **options)
    return result


def _horizon(model: Any, spec: str, run: RunArguments) -> dict | None:
    """Rollouts past the training window on the test split (`foundation.evaluation.horizon`, the model's default
    strategy) when the task's trajectories are longer than the window (`max_snapshots`); None otherwise."""
    data_args = run.data_args
    if data_args.max_snapshots is None:
        return None
    with open_source(spec) as source:
        stored = len(range(0, source.num_snapshots, data_args.stride))
        if source.info.steady or stored <= data_args.max_snapshots:
            return None
    sources = [open_source(spec, fill_stats=True)]
    trajectories = run.finetune_args.eval_rollout_trajectories
    result = horizon(model, sources, "test", trajectories=trajectories, stride=data_args.stride)
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
    folder: Path, method: str, spec: str, n: int, seed: int, lr: float, run: RunArguments, bench: BenchmarkArguments
) -> dict:
    """Train one method on the first `n` trajectories (the fine-tuning loop), exporting its lowest-validation
    weights, then evaluate them on val and test.

    Args:
        folder: The cell's run folder (checkpoints, evaluation, validation curve).
        method: One of `TRAINED`.
        spec: The task's data.
        n: Training trajectories (the first n of the training split).
        seed: The run's seed.
        lr: The run's learning rate.
        run: The cell's run arguments, its budget and schedule set (copied, not changed).
        bench: The benchmark's arguments (the rollout method's K).
    """
    from .loading import load_model
    from .trainer import Finetuner

    run = run.copy()
    data_args, train_args, finetune_args = run.data_args, run.train_args, run.finetune_args
    data_args.datasets = [spec]
    train_args.output_dir, train_args.learning_rate, train_args.seed = str(folder), lr, seed
    # the lowest-validation weights exported (Poseidon's rule); --eval_every 0 validates only the last step
    if train_args.eval_every:
        train_args.select_best = True
    # A steady task has one pair per trajectory: N = 8 of them cannot fill a batch of 16. Such a cell trains on
    # all its pairs per step instead (same steps; recorded in the cell as its batch).
    train_args.batch_size = min(train_args.batch_size, training_pairs(spec, n, data_args))
    finetune_args.train_trajectories, finetune_args.eval_split = n, "test"
    finetune_args.eval_plots = False  # a table of numbers: the cells' evaluation.json, not their figures
    finetune_args.strategy = {"scratch": "full", "fno": "fno"}.get(method, finetune_args.strategy)
    finetune_args.from_scratch = method == "scratch"
    if method == "finetuned-rollout":
        data_args.rollout_steps, data_args.rollout_lead_steps = bench.bench_rollout_steps, 0
    start = time.perf_counter()
    outcome = Finetuner(run.model_args, data_args, train_args, finetune_args).train()
    model = load_model(outcome["model"])
    val = _evaluate(model, spec, "val", run, rollout=False)
    test = json.loads((folder / "evaluation" / "evaluation.json").read_text())
    long = _horizon(model, spec, run)
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


def run_baseline_cell(spec: str, n: int, run: RunArguments) -> dict:
    """Persistence (time-dependent) or the training mean of the first `n` trajectories (steady), on val and test."""
    from pretrain.build import build_data

    from .baselines import Persistence, TrainingMean
    from .trainer import adapted_model

    run = run.copy()
    run.data_args.datasets = [spec]
    seed = run.train_args.seed
    data = build_data(run.data_args, seed, 0, 1, n)
    _, scot = adapted_model(run.model_args.init_from, data, seed)
    steady = data.sources[0].info.steady
    model = TrainingMean.fit(scot.config, data.train_set) if steady else Persistence(scot.config)
    val = _evaluate(model, spec, "val", run, rollout=False)
    test = _evaluate(model, spec, "test", run)
    kind = "training mean" if steady else "persistence"
    long = None if steady else _horizon(model, spec, run)
    out = {"val": val[HEADLINE], "test": test[HEADLINE], "test_metrics": headline(test), "baseline": kind}
    return {**out, "horizon": long} if long else out


@functools.lru_cache(maxsize=8)
def _weights_sha256(folder: str, stamp: tuple) -> str:
    # `stamp` (names, sizes, modification times) is only the cache key: a folder rewritten in place hashes again.
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


def _finished(done: Path, budget: dict, start: dict, init_from: str | None) -> dict:
    """A finished cell's record, refused if it ran with another budget (steps, batch, warm-up) or other pretrained
    weights."""
    record = json.loads(done.read_text())
    if record.get("budget", {}) != budget:
        raise ValueError(
            f"{done}: finished with budget {record.get('budget')}, this benchmark's is {budget}: "
            "a resumed benchmark must keep its budget (use another --output_dir)"
        )
    if start and record.get("init_weights", start["init_weights"]) != start["init_weights"]:
        raise ValueError(
            f"{done}: fine-tuned from other pretrained weights than --init_from {init_from}: a resumed "
            "benchmark must keep its pretrained model (use another --output_dir)"
        )
    return record


def cell(
    root: Path,
    task: str,
    method: str,
    spec: str,
    n: int,
    seed: int | None,
    lr: float,
    run: RunArguments,
    bench: BenchmarkArguments,
    log: Callable[[str], None],
    factor: int = 1,
) -> dict:
    """One finished cell: read back if done before (resume), else run and record. A trained cell runs `factor`
    times the budget (--max_steps) with its own schedule (`RunArguments.scaled`): warm-up --warmup_steps (scratch,
    FNO) or `--finetuned_warmup_steps` (fine-tuned) times `factor`, then the cosine to the end.

    Args:
        root: The benchmark's output folder.
        task: The task's name.
        method: One of `METHODS`.
        spec: The task's data.
        n: Training trajectories.
        seed: The seed of a trained method (None for the others).
        lr: The learning rate of a trained method (0 for the others).
        run: The benchmark's run arguments.
        bench: The benchmark's arguments.
        log: Where the one line per cell goes.
        factor: The multiple of the budget a trained cell runs (1 or 2).

    Returns:
        The cell's record (what `cell.json` holds): val and test error, validation curve, budget, ...
    """
    trained = method in TRAINED
    if trained:
        warmup = bench.finetuned_warmup_steps if method in PRETRAINED else run.train_args.warmup_steps
        run = run.scaled(factor, warmup)
    steps = run.train_args.max_steps if trained else None
    folder = cell_folder(root, task, method, n, seed if trained else None, lr, steps)
    done = folder / "cell.json"
    budget = run.budget() if trained else {}
    init_from = run.model_args.init_from
    start = {"init_weights": weights_fingerprint(init_from)} if method in PRETRAINED else {}
    name = f"[benchmark] {task} {method} N={n} seed={seed} lr={lr:g}" + (f" steps={steps}" if trained else "")
    if done.exists():
        record = _finished(done, budget, start, init_from)
        log(f"{name}: done before, skipped")
        return record
    if trained:
        result = run_trained_cell(folder, method, spec, n, seed, lr, run, bench)
    else:
        result = run_baseline_cell(spec, n, run)
    record = {"task": task, "method": method, "n": n, "seed": seed, "learning_rate": lr, "budget": budget}
    record.update(start, **result)
    folder.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(record, indent=2))  # last: a cell without it runs again (resuming its checkpoint)
    log(f"{name}: val {record['val']:.3f}, test {record['test']:.3f}")
    return record
