"""The parts every run is built from: the process set-up, the Accelerator, the data and the model.

`python -m pretrain` and `python -m finetune` build the same parts here and hand them to `pretrain.prepared.PreparedRun`
and the loop (`pretrain.loop.run`). Parallelism and precision come from the launcher (`accelerate launch
--config_file launch/accelerate/...`); they are decided here, in one place, and logged with the reason. The data
pipeline shards itself (`RandomPairSampler` per rank), so the DataLoader is not handed to accelerate.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from foundation import ScOT, ScOTConfig
from foundation.compat import skip_deepspeed_shm_comm
from foundation.data import All2AllPairs, DataError, Mixture, RandomPairSampler, open_source
from foundation.data.check import STATIC, Problem, places, refusal, scan
from foundation.data.memory import keep_freed_memory
from foundation.data.splits import require_splits
from foundation.data.stats import RunningStats
from foundation.evaluation import dataset_names

from .config import DataArguments, ModelArguments, TrainArguments
from .selection import refuse_partitioned

# ----------------------------------------------------------------------------------------------- process set-up
REPO_ROOT = Path(__file__).resolve().parents[1]  # launch/ (accelerate and DeepSpeed configs) lives here


def resolve_deepspeed_config_file() -> None:
    """Let `launch/accelerate/*.yaml` name their DeepSpeed JSON relative to the repository, from any directory.

    `accelerate launch` hands `deepspeed_config_file` to the processes unchanged (ACCELERATE_DEEPSPEED_CONFIG_FILE)
    and the DeepSpeed plugin opens it relative to the working directory when the Accelerator is built; a path that
    is not there but is in the repository (`launch/deepspeed/zero2.json`) is made absolute first.
    """
    path = os.environ.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if not path or path == "none" or Path(path).is_absolute() or Path(path).exists():
        return
    if (REPO_ROOT / path).is_file():
        os.environ["ACCELERATE_DEEPSPEED_CONFIG_FILE"] = str(REPO_ROOT / path)
        return
    # accelerate's own message names neither the accelerate config nor where it looked
    raise FileNotFoundError(
        f"DeepSpeed config {path} (deepspeed_config_file of the accelerate config): no such file in {Path.cwd()} "
        f"or {REPO_ROOT}"
    )


def setup_runtime() -> None:
    """Process-wide set-up, once, by the entry points (`python -m pretrain`, `python -m finetune`, the demo).

    Batches reuse freed memory instead of page-faulting fresh mmaps every step; on a machine without CUDA,
    DeepSpeed runs on the CPU without JIT-compiling its shared-memory comm op (~40 s at every start); the
    DeepSpeed JSON an accelerate config names is found from any directory.
    """
    keep_freed_memory()
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        skip_deepspeed_shm_comm()
    resolve_deepspeed_config_file()


def build_accelerator(train: TrainArguments, tag: str = "pretrain"):
    """The Accelerator, with the choices the launcher leaves to us made explicit and logged."""
    from datetime import timedelta

    import torch.distributed.distributed_c10d as c10d
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, InitProcessGroupKwargs

    from .peers import start_peer_watch

    handlers = []
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # --collective_timeout_s bounds every wait on a rank. The default group gets it through accelerate (which
        # hands it to DeepSpeed's init_distributed too); groups made later (DeepSpeed's clone of the world, its
        # data-parallel groups) take torch's module defaults instead, hence those are set as well. On the GPU,
        # NCCL's watchdog (TORCH_NCCL_ASYNC_ERROR_HANDLING, on by default since torch 2.2: keep it unset or 3)
        # aborts a process whose collective outlives the timeout; with the default 600 s that is NCCL's own
        # behaviour, and --peer_timeout_s (30 s) names a dead or frozen peer long before.
        timeout = timedelta(seconds=train.collective_timeout_s)
        c10d.default_pg_timeout = c10d.default_pg_nccl_timeout = timeout
        # gloo is the CPU backend; accelerate would otherwise pick one DeepSpeed cannot use on the CPU.
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        handlers.append(InitProcessGroupKwargs(backend=backend, timeout=timeout))
    log_with = None if train.tracker == "none" else train.tracker
    deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    accelerator = Accelerator(
        # Without cpu=True a multi-process CPU launch trains unsynchronised copies; with it DeepSpeed is dropped.
        cpu=not torch.cuda.is_available() and not deepspeed,
        # bf16 without DeepSpeed is autocast over fp32 master weights (DeepSpeed's bf16 is set in its config).
        mixed_precision="bf16" if train.precision == "bf16" and not deepspeed else "no",
        gradient_accumulation_steps=train.gradient_accumulation_steps,
        log_with=log_with,
        project_dir=train.output_dir,
        kwargs_handlers=handlers,
    )
    plugin = accelerator.state.deepspeed_plugin
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        ds = plugin.deepspeed_config
        # We shard the data ourselves, so accelerate cannot read the micro-batch from a DataLoader.
        ds["train_micro_batch_size_per_gpu"] = train.batch_size
        ds["gradient_accumulation_steps"] = train.gradient_accumulation_steps
        ds["gradient_clipping"] = train.max_grad_norm if train.max_grad_norm > 0 else 0.0
        ds.setdefault(
            "train_batch_size", train.batch_size * train.gradient_accumulation_steps * accelerator.num_processes
        )
        refuse_partitioned(train.select_best, ds.get("zero_optimization", {}).get("stage"))
        if ds.get("zero_optimization", {}).get("stage") == 3:
            ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True  # export needs it
        if train.precision == "bf16":
            ds["bf16"] = {"enabled": True}
    accelerator.print(
        f"[{tag}] {accelerator.num_processes} process(es), {accelerator.distributed_type.value} on "
        f"{accelerator.device}; precision {train.precision} "
        + (
            "(DeepSpeed bf16 engine: bf16 weights and activations, fp32 master weights)"
            if plugin and train.precision == "bf16"
            else "(autocast: bf16 matmuls over fp32 master weights; FFTs and norm statistics in fp32)"
            if train.precision == "bf16"
            else "(fp32 everywhere)"
        )
    )
    # Started once every rank has joined the process group; a lost rank then ends the run with a line naming it.
    start_peer_watch(train.peer_timeout_s, accelerator.print)
    return accelerator


# ----------------------------------------------------------------------------------------------- data and model
@dataclass
class TrainData:
    """The data of a run: sources, all2all pairs as Mixtures on the channel vocabulary, this rank's sampler."""

    sources: list
    train_set: Mixture
    val_set: Mixture
    sampler: RandomPairSampler
    vocabulary: list[str]  # the model's input channels
    targets: list[str]  # the model's output channels
    stats: dict[str, tuple[float, float]]  # (mean, std) per channel name
    specs: list[str]  # what each source was opened from

    @property
    def names(self) -> list[str]:
        """A short unique name per dataset, from the source's own name (file stem, folder or repo id)."""
        return dataset_names(self.sources)


def build_data(
    data: DataArguments,
    seed: int,
    rank: int,
    world: int,
    max_trajectories: int | None = None,
    eval_splits: Sequence[str] = (),
) -> TrainData:
    """Sources -> all2all pairs -> one Mixture on the channel vocabulary; the train sampler of this rank.

    Unless `data.nonfinite` is "off", every snapshot in use and static field of the splits the run reads (train,
    val and `eval_splits`) is checked for NaN/Inf first, before any model, optimizer or output file exists:
    "refuse" raises a one-line `DataError` naming the file and the first bad place, "skip" drops the pairs that
    read one (recorded in `data.nonfinite_skipped`). Every rank checks its sources itself: each reads them anyway,
    the verdict is the same on every rank (same files), and no rank can wait at a barrier for one that failed.

    Args:
        data: The data options.
        seed: Seed of the train sampler.
        rank, world: This process's shard of the train sampler (rank 0 prints).
        max_trajectories: Keep only the first N training trajectories of each source (sample-efficiency studies).
        eval_splits: Further splits the run reads whole after training (fine-tuning's --eval_split).
    """
    check = data.nonfinite != "off"
    # Checked before the statistics are filled in: computed over the training split, they would read a bad
    # snapshot first (and refuse it without naming the field or the opt-out, or, under skip, refuse what it drops).
    sources = [open_source(spec, fill_stats=not check) for spec in data.datasets]
    # An empty split (a download without valid/ or test/ files) is refused now, naming the flag to pass, not by
    # the validation or evaluation that would first read it.
    require_splits(sources, {"train", "val", *eval_splits}, {split: "--eval_split" for split in eval_splits})
    found = [_finite_check(s, data, rank, max_trajectories, eval_splits) if check else [] for s in sources]
    options = dict(stride=data.stride, max_snapshots=data.max_snapshots, include_identity=data.include_identity)
    # Steady problems have no trajectory to roll out: beside time-dependent ones they train on pairs only (the
    # Mixture masks their placeholder sequences); alone, All2AllPairs refuses the rollout.
    only_steady = all(s.info.steady for s in sources)

    def rollouts(source) -> dict:
        steps = data.rollout_steps if only_steady or not source.info.steady else 0
        return dict(rollout_steps=steps, rollout_lead_steps=data.rollout_lead_steps, rollout_split=data.rollout_split)

    train_parts = [All2AllPairs(s, "train", lead_steps=data.lead_steps, **options, **rollouts(s)) for s in sources]
    if max_trajectories is not None:
        for part, source in zip(train_parts, sources):
            if max_trajectories > len(part.trajectories):
                raise ValueError(
                    f"{source.info.name}: {max_trajectories} training trajectories asked, the train split has "
                    f"{len(part.trajectories)}"
                )
            part.trajectories = part.trajectories[:max_trajectories]
    val_parts = [All2AllPairs(s, "val", **options) for s in sources]
    if data.nonfinite == "skip":
        data.nonfinite_skipped = [
            _skip(parts, problems, rank) for parts, problems in zip(zip(train_parts, val_parts), found)
        ]
    vocabulary = list(data.channels) if data.channels else []
    if not vocabulary:
        for part in train_parts:
            vocabulary += [c for c in part.input_names if c not in vocabulary]
    targets = [c for c in vocabulary if any(c in p.target_names for p in train_parts)]
    for part in train_parts:  # outputs that are no inputs: a steady problem's solution (static f -> u)
        targets += [c for c in part.target_names if c not in targets]
    stats = channel_statistics(sources, vocabulary + [c for c in targets if c not in vocabulary])
    mean, std = [stats[c][0] for c in vocabulary], [stats[c][1] for c in vocabulary]
    train_set = Mixture(train_parts, vocabulary, targets, weights=data.weights, input_mean=mean, input_std=std)
    val_set = Mixture(val_parts, vocabulary, targets, input_mean=mean, input_std=std)
    sampler = RandomPairSampler(len(train_set), seed=seed, rank=rank, world_size=world)
    return TrainData(sources, train_set, val_set, sampler, vocabulary, targets, stats, list(data.datasets))


NONFINITE_REMEDY = (
    "repair the file (python -m foundation.data check lists every place), or rerun with --nonfinite skip "
    "(drop the pairs that read them) or --nonfinite off (no check)"
)


def _finite_check(
    source, data: DataArguments, rank: int, max_trajectories: int | None, eval_splits: Sequence[str]
) -> list[Problem]:
    """The NaN/Inf places in what the run reads of `source` (one pass, `foundation.data.check.scan`); refuses them
    unless --nonfinite skip, and under skip refuses those of `eval_splits`, which the evaluation reads whole. With
    the statistics missing, every stored snapshot of the split they are computed over is read as well."""
    stored = list(range(0, source.num_snapshots, data.stride))[: data.max_snapshots]
    missing = source.info.mean is None or (bool(source.info.static_names) and source.info.static_mean is None)
    trajectories = {"train": list(source.split("train"))[:max_trajectories], "val": list(source.split("val"))}
    for name in eval_splits:  # read whole, beside a training subset of the same split
        trajectories[name] = sorted({*trajectories.get(name, []), *source.split(name)})
    start = time.perf_counter()
    problems = scan(
        source,
        trajectories,
        progress=rank == 0 and sys.stderr.isatty(),
        snapshots=None if missing else stored,
    )
    name = source.info.name
    if problems and data.nonfinite == "refuse":
        raise DataError(refusal(source, problems, NONFINITE_REMEDY))
    evaluated = {t for split in eval_splits for t in source.split(split)}
    late = [p for p in problems if p.trajectory in evaluated]
    if late:
        raise DataError(
            refusal(
                source,
                late,
                f"--nonfinite skip cannot drop them: the evaluation after training reads all of --eval_split "
                f"{', '.join(eval_splits)}; repair the file or evaluate on another split",
            )
        )
    bad = set(places(problems))
    if missing:
        _fill_statistics(source, bad)
    if rank == 0 and not problems:
        statics = " + static fields" if source.info.static_names else ""
        splits = ", ".join(trajectories)
        print(
            f"[data] check: {name}: {len({t for ts in trajectories.values() for t in ts})} trajectories ({splits}) x "
            f"{source.num_snapshots if missing else len(stored)} snapshots{statics}, no NaN/Inf "
            f"({time.perf_counter() - start:.2f} s; --nonfinite off skips this pass)"
        )
    return problems


def _fill_statistics(source, bad: set[tuple[int, int | str]]) -> None:
    """Missing statistics over the training split, as `open_source(fill_stats=True)` computes them, without the
    `bad` places (trajectory, snapshot or "static") that --nonfinite skip drops."""
    info = source.info
    state = RunningStats(source.shape[2])
    static = RunningStats(len(info.static_names)) if info.static_names else None
    for index in source.split("train"):
        for snapshot in range(source.num_snapshots):
            if (index, snapshot) not in bad:
                state.update(source.read(index, snapshot)[None])
        if static is not None and (index, STATIC) not in bad:
            static.update(source.read_static(index)[None])
    if info.mean is None or info.std is None:
        info.mean, info.std = state.result()
    if static is not None and (info.static_mean is None or info.static_std is None):
        info.static_mean, info.static_std = static.result()
    info.provenance = {**info.provenance, "stats": "computed over the training split by foundation.data"}


def _skip(parts: tuple[All2AllPairs, All2AllPairs], problems: list[Problem], rank: int) -> dict:
    """--nonfinite skip: drop the pairs of the (train, val) parts of one source that read a bad place; one line
    (rank 0) and the counts for run_args.json."""
    train, val = parts
    name, bad = train.source.info.name, list(places(problems))
    train_total, val_total, val_trajectories = len(train), len(val), len(val.trajectories)
    record = {
        "source": name,
        "bad_snapshots": sum(1 for _, s in bad if s != STATIC),
        "bad_static": sum(1 for _, s in bad if s == STATIC),
        "train_pairs": train_total,
        "train_pairs_dropped": train.exclude(bad),
        "val_pairs": val_total,
        # validation drops the trajectory: its rollouts read every snapshot of one (All2AllPairs.exclude)
        "val_pairs_dropped": val.exclude(bad, whole_trajectories=True),
        "val_trajectories_dropped": val_trajectories - len(val.trajectories),
    }
    for part, split in ((train, "train"), (val, "val")):
        if len(part) == 0:
            raise DataError(f"{name}: --nonfinite skip: every {split} pair reads NaN/Inf; nothing is left to {split}")
    if rank == 0 and bad:
        print(
            f"[data] --nonfinite skip: {name}: {record['bad_snapshots']} bad snapshot(s), {record['bad_static']} bad "
            f"static field(s): dropped {record['train_pairs_dropped']} of {train_total} train pairs, "
            f"{record['val_pairs_dropped']} of {val_total} val pairs ({record['val_trajectories_dropped']} "
            "trajectories)"
        )
    return record


def channel_statistics(sources, vocabulary: list[str]) -> dict[str, tuple[float, float]]:
    """Per vocabulary channel (mean, std) from the first dataset that has it (state or static field)."""
    stats: dict[str, tuple[float, float]] = {}
    for source in sources:
        info = source.info
        for name, m, s in zip(info.channel_names, info.mean, info.std):
            stats.setdefault(name, (float(m), float(s)))
        for name, m, s in zip(info.static_names, info.static_mean or [], info.static_std or []):
            stats.setdefault(name, (float(m), float(s)))
    return {c: stats.get(c, (0.0, 1.0)) for c in vocabulary}


def build_model(model_args: ModelArguments, vocabulary, targets, stats, grid, time_scale: float = 1.0) -> ScOT:
    """A new model of the preset, or `--init_from` a checkpoint; either way its config describes the data.

    The pairs are normalised with the datasets' statistics and their lead times divided by the datasets' time
    scales, so the config gets those (of the first dataset having each channel; every dataset's own values
    are exported in training_data.json) and `predict` on physical fields matches what training saw.
    """
    data_stats = dict(
        input_mean=[stats[c][0] for c in vocabulary],
        input_std=[stats[c][1] for c in vocabulary],
        output_mean=[stats[c][0] for c in targets],
        output_std=[stats[c][1] for c in targets],
        time_scale=time_scale,
    )
    if model_args.init_from:
        model = ScOT.from_pretrained(model_args.init_from)
        have, want = model.config.channel_names, list(vocabulary)
        if have != want or model.config.output_channel_names != list(targets):
            raise ValueError(
                f"--init_from {model_args.init_from} has channels {have} -> "
                f"{model.config.output_channel_names}; the data needs {want} -> {list(targets)} "
                f"(channel surgery is fine-tuning's job; pretraining continues a model as it is)"
            )
        for key, value in data_stats.items():
            setattr(model.config, key, value)
        return model
    config = ScOTConfig.from_preset(
        model_args.preset,
        channel_names=list(vocabulary),
        output_channel_names=list(targets),
        image_size=list(grid) if grid[0] != grid[1] else grid[0],
        input_resampling=model_args.input_resampling,
        **data_stats,
    )
    return ScOT(config)
