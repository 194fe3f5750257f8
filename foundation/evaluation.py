"""One evaluation for every consumer: pretraining validation, the held-out evaluation of a fine-tuned model, the
Spectral-Refiner's early stopping, the sample-efficiency study, the benchmark and the demo.

The metric is the reference's: the relative Lp error (in %) of each sample and channel group (`per_sample_errors`),
summarised as the median over samples per group and the mean of those medians over groups (the headline).
Errors are computed in one of two spaces, and the space is part of every key, so that numbers on normalised
tensors (what the loss sees) and on physical fields (what a paper reports) are never compared by mistake:

    median_rel_l1_physical/u+v      median over samples of group "u+v", physical fields
    median_rel_l1_normalised/mean   mean over groups of the per-group medians, normalised fields

`metric_key` writes them. Group names come from the model's config (`group_names`), dataset names from the
sources' own metadata (`dataset_names`), one rollout (`rollout`) serves validation and evaluation alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:  # foundation.data is imported where it is used: opening files is not every consumer's business
    from .data import Mixture, SourceInfo

SPACES = ("normalised", "physical")
HEADLINE = "median_rel_l1_physical/mean"


def metric_key(stat: str = "median", p: int = 1, space: str = "physical", group: str = "mean") -> str:
    """The key of one summary number, e.g. `median_rel_l1_physical/mean` (see the module docstring)."""
    if space not in SPACES:
        raise ValueError(f"space {space!r}: expected one of {SPACES}")
    return f"{stat}_rel_l{p}_{space}/{group}"


def group_names(config) -> list[str]:
    """ "u+v"-style names of the config's channel groups (its loss/metric slices)."""
    names = config.output_channel_names
    groups = list(config.channel_slice_list_normalized_loss)
    return ["+".join(names[a:b]) for a, b in zip(groups[:-1], groups[1:])]


def dataset_names(sources: Sequence) -> list[str]:
    """A short unique name per source from its metadata (file stem, folder or repo id); a repeated name gets its
    position appended, so two sources of one name never overwrite each other in a breakdown."""
    names: list[str] = []
    for source in sources:
        raw = str(source.info.name).rstrip("/")
        stem = Path(raw).stem or raw
        names.append(stem if stem not in names else f"{stem}-{len(names)}")
    return names


def to_physical(config) -> Callable[[Tensor], Tensor]:
    """Normalised model outputs -> physical fields, with the output statistics the model carries."""
    mean = torch.tensor(config.output_mean, dtype=torch.float32)[:, None, None]
    std = torch.tensor(config.output_std, dtype=torch.float32)[:, None, None]
    return lambda y: y.float() * std.to(y.device) + mean.to(y.device)


def relative_error_per_sample(
    pred: Tensor, target: Tensor, groups: list[int], p: int = 1, channel_mask: Tensor | None = None, eps: float = 1e-10
) -> Tensor:
    """(B, G) relative Lp error in % of each sample and channel group; NaN where a group is masked out.

    Args:
        pred, target: (B, C, H, W).
        groups: channel-group boundaries, e.g. [0, 1, 3, 4].
        p: 1 (the reference metric) or 2.
        channel_mask: (B, C) or (C,) 0/1: channels a sample does not have are left out of their group.
        eps: keeps all-zero targets finite.
    """
    diff = (pred.float() - target.float()).abs().pow(p).flatten(2).sum(-1)  # (B, C)
    ref = target.float().abs().pow(p).flatten(2).sum(-1)
    weight = torch.ones_like(diff) if channel_mask is None else channel_mask.float().to(diff.device).expand_as(diff)
    out = []
    for start, stop in zip(groups[:-1], groups[1:]):
        w = weight[:, start:stop]
        num, den = (diff[:, start:stop] * w).sum(-1), (ref[:, start:stop] * w).sum(-1)
        err = (num / (den + eps)).pow(1.0 / p) * 100.0
        out.append(torch.where(w.sum(-1) > 0, err, torch.full_like(err, float("nan"))))
    return torch.stack(out, dim=-1)


def per_sample_errors(pred: Tensor, truth: Tensor, config, channel_mask: Tensor | None = None, p: int = 1) -> Tensor:
    """(B, G) relative Lp error (%) per sample and channel group of the config; NaN where a group is absent."""
    return relative_error_per_sample(pred, truth, config.channel_slice_list_normalized_loss, p, channel_mask)


def summarise(
    errors: Tensor, names: Sequence[str], space: str, p: int = 1, stats: Sequence[str] = ("median",)
) -> dict[str, float]:
    """Per group and over groups (`/mean`): median (or mean) over samples of (N, G) per-sample errors; NaN rows
    (a group a sample lacks) are left out, groups no sample has are omitted."""
    out: dict[str, float] = {}
    # numpy's median: the mean of the two middle values of an even count (torch's nanmedian takes the lower one)
    reducers = {"median": lambda e: float(np.nanmedian(e.numpy())), "mean": lambda e: float(torch.nanmean(e))}
    for stat in stats:
        values = []
        for g, name in enumerate(names):
            column = errors[:, g].detach().double().cpu()
            if len(column) == 0 or bool(torch.isnan(column).all()):
                continue
            values.append(reducers[stat](column))
            out[metric_key(stat, p, space, name)] = values[-1]
        out[metric_key(stat, p, space)] = float(np.mean(values)) if values else float("nan")
    return out


@dataclass
class ErrorTable:
    """Per-sample errors of evaluated pairs: l1 and l2 (N, G), the dataset index and lead time of each row."""

    l1: Tensor
    l2: Tensor
    dataset: Tensor
    lead: Tensor

    @classmethod
    def empty(cls, groups: int) -> ErrorTable:
        return cls(torch.empty(0, groups), torch.empty(0, groups), torch.empty(0), torch.empty(0))

    def append(self, l1: Tensor, l2: Tensor, dataset: Tensor, lead: Tensor) -> ErrorTable:
        cat = lambda a, b: torch.cat([a, b.detach().float().cpu()])  # noqa: E731
        return ErrorTable(cat(self.l1, l1), cat(self.l2, l2), cat(self.dataset, dataset), cat(self.lead, lead))

    def as_tensor(self) -> Tensor:
        """(N, 2G + 2): l1 | l2 | dataset | lead, one tensor for a collective gather."""
        return torch.cat([self.l1, self.l2, self.dataset[:, None], self.lead[:, None]], dim=1)

    @classmethod
    def from_tensor(cls, rows: Tensor, groups: int) -> ErrorTable:
        """Inverse of `as_tensor`; rows that are NaN in every group (padding of a gather) are dropped."""
        rows = rows.float().cpu()
        rows = rows[~torch.isnan(rows[:, :groups]).all(dim=1)]
        return cls(rows[:, :groups], rows[:, groups : 2 * groups], rows[:, -2], rows[:, -1])

    def select(self, keep: Tensor) -> ErrorTable:
        return ErrorTable(self.l1[keep], self.l2[keep], self.dataset[keep], self.lead[keep])

    def summary(self, names: Sequence[str], space: str, stats: Sequence[str] = ("median", "mean")) -> dict[str, float]:
        return {**summarise(self.l1, names, space, 1, stats), **summarise(self.l2, names, space, 2, stats)}

    def by_dataset(self, names: Sequence[str], datasets: Sequence[str], space: str, **kw) -> dict[str, dict]:
        return {
            name: self.select(self.dataset == k).summary(names, space, **kw)
            for k, name in enumerate(datasets)
            if bool((self.dataset == k).any())
        }

    def by_lead_time(self, names: Sequence[str], space: str, decimals: int = 3, **kw) -> dict[str, dict]:
        leads = torch.round(self.lead * 10**decimals) / 10**decimals
        return {
            f"{float(t):.{decimals}f}": {
                **self.select(leads == t).summary(names, space, **kw),
                "pairs": int((leads == t).sum()),
            }
            for t in torch.unique(leads)
        }


@torch.no_grad()
def pair_errors(
    model,
    data,
    picks: Sequence[int],
    batch_size: int,
    space: str,
    device: torch.device | str = "cpu",
    on_batch: Callable[[dict, Tensor, Tensor], None] | None = None,
    config=None,
) -> ErrorTable:
    """Errors of `model` on the pairs `picks` of `data` (a Mixture: normalised items), in `space`.

    `on_batch(batch, prediction, truth)` (in `space`) sees every batch, e.g. to accumulate spectra or keep samples.
    `config` is the model's (default `model.config`; pass it for a wrapped model, e.g. under DDP).
    """
    config = config or model.config
    convert = to_physical(config) if space == "physical" else (lambda y: y.float())
    groups = len(config.channel_slice_list_normalized_loss) - 1
    table = ErrorTable.empty(groups)
    for start in range(0, len(picks), batch_size):
        items = [data[int(k)] for k in picks[start : start + batch_size]]
        batch = {k: torch.stack([it[k] for it in items]).to(device) for k in items[0]}
        pred = convert(model(pixel_values=batch["pixel_values"], time=batch["time"]).output)
        truth = convert(batch["labels"])
        mask = batch["channel_mask"]
        table = table.append(
            per_sample_errors(pred, truth, config, mask, p=1),
            per_sample_errors(pred, truth, config, mask, p=2),
            batch["dataset"].float() if "dataset" in batch else torch.zeros(len(items)),
            batch["time"].float(),
        )
        if on_batch is not None:
            on_batch(batch, pred, truth)
    return table


ROLLOUT_STRATEGIES = ("jump", "autoregressive")


def feedable(config) -> Tensor | None:
    """Input index of each output channel (what a rollout feeds back), or None when an output is not an input."""
    out_names, in_names = config.output_channel_names, config.channel_names
    if not all(c in in_names for c in out_names):
        return None
    return torch.tensor([in_names.index(c) for c in out_names])


def feed_back(x: Tensor, y: Tensor, feed: Tensor, mask: Tensor | None = None) -> Tensor:
    """The next input of a rollout: `x` with its evolving channels replaced by the prediction `y`.

    Static inputs (ns-kf's forcing, a wave speed) stay as they are, and so do the fills of channels a sample lacks
    (`mask`, (B, C_out), 0 where the channel is missing)."""
    x = x.clone()
    feed = feed.to(x.device)
    if mask is None:
        x[:, feed] = y.to(x.dtype)
    else:
        x[:, feed] = torch.where(mask[:, :, None, None] > 0, y.to(x.dtype), x[:, feed])
    return x


def held_state(config, x: Tensor) -> Tensor | None:
    """Persistence's prediction: the evolving channels of the normalised inputs `x` (B, C_in, H, W) as the output
    channels, in physical units (inputs and outputs may be normalised differently); None when an output is not an
    input."""
    feed = feedable(config)
    if feed is None:
        return None
    mean = torch.tensor(config.input_mean, dtype=x.dtype, device=x.device)[feed]
    std = torch.tensor(config.input_std, dtype=x.dtype, device=x.device)[feed]
    return x[:, feed.to(x.device)] * std[:, None, None] + mean[:, None, None]


def default_jump(config) -> float:
    """The lead time (model units) a "jump" rollout chains: the largest lead time of the model's training pairs
    (`max_lead_time`, recorded by our trainers), else 1 (all2all over whole trajectories). A rollout-trained model
    may do better chaining its training step (`config.rollout_lead_time`; measured both ways in
    benchmarks/results/long_horizon-*.json: better on Allen-Cahn, worse on ns-kf), passed as `max_lead`."""
    value = getattr(config, "max_lead_time", None)
    return float(value) if value else 1.0


@torch.no_grad()
def rollout_predictions(
    model,
    x: Tensor,
    lead_time: float,
    steps: int,
    strategy: str = "jump",
    max_lead: float | None = None,
    channel_mask: Tensor | None = None,
    config=None,
) -> Tensor:
    """Predictions at `lead_time` x 1..`steps` from the normalised inputs `x` (B, C_in, H, W), for any model that
    `finetune.load_model` returns (plain, refined, LoRA, an FNO baseline): (steps, B, C_out, H, W), normalised.

    Times are in the model's units (`config.time_scale` is 1). Strategies:
      jump            the default: to reach t, chain as many jumps of `max_lead` as fit and predict the remainder
                      directly from the last jump; inside the window it is one direct call. `max_lead` defaults
                      to `default_jump(config)`: the largest lead time the model was trained on (fewest calls fed
                      their own outputs).
      autoregressive  one call per `lead_time`, each fed the previous output.
    Only the evolving outputs are fed back (`feed_back`).
    """
    if strategy not in ROLLOUT_STRATEGIES:
        raise ValueError(f"rollout strategy must be one of {', '.join(ROLLOUT_STRATEGIES)}, got {strategy!r}")
    if not (lead_time > 0 and (max_lead is None or max_lead > 0) and steps >= 1):
        raise ValueError(f"need lead_time > 0, max_lead > 0 and steps >= 1, got {lead_time}, {max_lead}, {steps}")
    config = config or model.config
    feed = feedable(config)
    if feed is None:
        raise ValueError(
            f"outputs {config.output_channel_names} are not all inputs {config.channel_names}: nothing to feed back"
        )
    max_lead = default_jump(config) if max_lead is None else max_lead

    def call(state: Tensor, dt: float) -> Tensor:
        time = torch.full((state.shape[0],), dt, dtype=state.dtype, device=state.device)
        return model(pixel_values=state, time=time).output

    outputs = []
    if strategy == "autoregressive":
        state = x
        for _ in range(steps):
            y = call(state, lead_time)
            outputs.append(y)
            state = feed_back(state, y, feed, channel_mask)
        return torch.stack(outputs)
    states = [x]  # the input after i jumps of max_lead
    for k in range(1, steps + 1):
        t = k * lead_time
        chained = max(0, int(np.ceil(t / max_lead - 1e-9)) - 1)  # jumps before the last call (0 < its lead <= max)
        while len(states) <= chained:
            states.append(feed_back(states[-1], call(states[-1], max_lead), feed, channel_mask))
        outputs.append(call(states[chained], t - chained * max_lead))
    return torch.stack(outputs)


@torch.no_grad()
def rollout(
    model,
    data,
    trajectories: int,
    space: str,
    device: torch.device | str = "cpu",
    config=None,
    batch_size: int = 16,
) -> dict[str, dict[str, float]]:
    """Direct (one call per lead time) vs autoregressive (one call per snapshot interval, outputs fed back as
    inputs) predictions from the first snapshot of the first `trajectories` trajectories of each time-dependent
    part of `data`: median over trajectories of the mean-over-groups relative L1 (%), per lead time.

    Static inputs stay as they are; channels a sample lacks keep their fill. Empty when the outputs cannot be fed
    back (an output the model does not take as input), or no part has the (0, j) and (j-1, j) pairs it needs.
    `config` as in `pair_errors`. Trajectories roll out `batch_size` at a time.
    """
    config = config or model.config
    feed = feedable(config)
    if feed is None:
        return {}
    convert = to_physical(config) if space == "physical" else (lambda y: y.float())
    direct: dict[float, list[float]] = {}
    chained: dict[float, list[float]] = {}
    for k, part in enumerate(data.parts):
        if part.source.info.steady or len(part.snapshots) < 3:
            continue
        pattern = {tuple(ab): p for p, ab in enumerate(part.pattern.tolist())}
        last = len(part.snapshots) - 1
        if not all((0, j) in pattern and (j - 1, j) in pattern for j in range(1, last + 1)):
            continue
        for bases in _trajectory_batches(part, trajectories, batch_size):
            first = _pairs(data, k, [b + pattern[(0, 1)] for b in bases], device)
            x, mask = first["pixel_values"], first["channel_mask"]
            for j in range(1, last + 1):
                target = first if j == 1 else _pairs(data, k, [b + pattern[(0, j)] for b in bases], device)
                step = _pairs(data, k, [b + pattern[(j - 1, j)] for b in bases], device)
                once = model(pixel_values=target["pixel_values"], time=target["time"]).output
                y = model(pixel_values=x, time=step["time"]).output
                x = feed_back(x, y, feed, mask)
                lead = round(float(target["time"][0]), 3)
                truth = convert(target["labels"])
                for store, pred in ((direct, once), (chained, y)):
                    store.setdefault(lead, []).extend(
                        _per_sample(per_sample_errors(convert(pred), truth, config, mask))
                    )
    return {
        f"{t:.3f}": {"direct": float(np.median(direct[t])), "autoregressive": float(np.median(chained[t]))}
        for t in sorted(direct)
    }


Solver = Callable[[Tensor, float], Tensor]  # `evolve(fields, duration)` on physical fields (`_solver`)
PairReader = Callable[[int, int], dict[str, Tensor]]  # `read(i, j)`: a batch's stacked pairs of snapshots i -> j

# The Well's windows of rollout steps (its "6:12" and "13:30"), reported where the trajectories reach them.
HORIZON_WINDOWS = ((6, 12), (13, 30))


@torch.no_grad()
def horizon(
    model,
    sources: Sequence,
    split: str = "test",
    trajectories: int = 8,
    stride: int = 1,
    strategy: str = "jump",
    max_lead: float | None = None,
    device: torch.device | str = "cpu",
    solver: bool = False,
    batch_size: int = 16,
) -> dict:
    """Rollouts from the first snapshot to the end of each trajectory (past the training window), physical fields.

    Per step k (snapshot k * `stride`): the median over trajectories of the mean-over-groups relative L1 (%) and
    of the spectral energy drift (total energy of the prediction over that of the truth, minus 1; channels
    averaged); the mean of the median curve over The Well's step windows 6-12 and 13-30 where they exist; the
    last step. Lead times are the data's physical times over the model's `time_scale` (not the data's own scale:
    files twice as long as the training ones have twice the span). `strategy` and `max_lead` as in
    `rollout_predictions` (default: `default_jump(config)`).

    `final_from_truth` splits the last step's error: the same last call made from the true state at its input
    time (when that is a stored snapshot). Its error is the call's own; the gap to `final` is what feeding the
    model its own outputs cost, the most that rollout training could take away.

    `solver`: for files our solvers wrote (`foundation.pdes`, a family with `evolve`), also the true dynamics
    continued from the rollout's own state at that input time (`final_solver_from_model`): how far the input's
    error alone carries to the last step, i.e. what a last call that made no error of its own would still miss;
    the rollout's last step against that continuation (`final_call_on_own_state`): the last call's own error on
    the state it was fed, to set beside `final_from_truth` (the same call on the true state); rollout training is
    for the excess of the first over the second. And from the stored state (`final_solver_from_truth`, a check:
    about 0).

    `persistence`: the same error for the first snapshot held unchanged (the reference every forecast must beat:
    a model above it at a step has no skill there), per step, where the model's outputs are among its inputs.

    Trajectories roll out `batch_size` at a time (one batched call per step, as a GPU wants them).
    """
    config = model.config
    max_lead = default_jump(config) if max_lead is None else max_lead
    tally = _HorizonTally(model, config, strategy, max_lead, device)
    for source in sources:
        data = held_out_pairs(config, [source], split, stride=stride)
        part = data.parts[0]
        if part.source.info.steady or len(part.snapshots) < 2:
            continue
        times = _even_times(part)
        lead = float((times[1] - times[0]) / config.time_scale)
        pattern = {tuple(ab): p for p, ab in enumerate(part.pattern.tolist())}
        evolve = _solver(part.source, config) if solver else None
        for bases in _trajectory_batches(part, trajectories, batch_size):
            tally.add(_pair_reader(data, pattern, bases, device), times, lead, evolve)
    return tally.result() if tally.errors else {}


def _even_times(part) -> np.ndarray:
    """The physical times of the snapshots in use of `part`; refuses uneven ones (a rollout step is one lead)."""
    times = np.asarray(part.source.info.times, dtype=np.float64)[part.snapshots]
    spacing = np.diff(times)
    if not np.allclose(spacing, spacing[0], rtol=1e-4):
        raise ValueError(f"{part.source.info.name}: a horizon rollout needs evenly spaced snapshots")
    return times


def _pair_reader(data, pattern: dict, bases: list[int], device) -> PairReader:
    """`read(i, j)`: the stacked pairs (snapshot i -> j in use) of the trajectories whose pairs start at `bases`."""
    return lambda i, j: _pairs(data, 0, [b + pattern[(i, j)] for b in bases], device)


class _HorizonTally:
    """What `horizon` gathers, per rollout step, over the trajectory batches of every source.

    Each entry is a list of per-trajectory numbers (the mean over channel groups), in the order the batches come.
    """

    def __init__(self, model, config, strategy: str, max_lead: float, device: torch.device | str):
        self.model, self.config, self.strategy, self.max_lead, self.device = model, config, strategy, max_lead, device
        self.convert = to_physical(config)
        self.errors: dict[int, list[float]] = {}
        self.held: dict[int, list[float]] = {}  # persistence: the first snapshot held
        self.drift: dict[int, list[float]] = {}
        self.leads: dict[int, float] = {}
        self.restarts: dict[int, list[float]] = {}  # last step from the true input of its last call, by that step
        # The solver continued from the model's or the true state at the last call's input, vs the truth; and the
        # last call vs the first of these.
        self.continued: dict[str, dict[int, list[float]]] = {
            "solver_from_model": {},
            "solver_from_truth": {},
            "call_on_own_state": {},
        }

    def _errors(self, store: dict[int, list[float]], key: int, guess: Tensor, truth: Tensor, mask: Tensor) -> None:
        store.setdefault(key, []).extend(_per_sample(per_sample_errors(guess, truth, self.config, mask)))

    def add(self, pairs: PairReader, times: np.ndarray, lead: float, evolve: Solver | None) -> None:
        """One batch of trajectories: `pairs(i, j)` are its stacked pairs of snapshots (i, j) in use, `times` the
        physical times of those snapshots, `lead` their spacing in model units, `evolve` the solver or None."""
        last = len(times) - 1
        first = pairs(0, 1)
        mask = first["channel_mask"]
        present = (mask > 0).double()
        preds = rollout_predictions(
            self.model, first["pixel_values"], lead, last, self.strategy, self.max_lead, mask, self.config
        )
        initial = held_state(self.config, first["pixel_values"])
        labels = {1: first["labels"]}  # the other snapshots' truths, read once per batch
        labels.update({j: pairs(0, j)["labels"] for j in range(2, last + 1)})
        for j, pred in enumerate(preds, start=1):
            truth, guess = self.convert(labels[j]), self.convert(pred)
            self._errors(self.errors, j, guess, truth, mask)
            if initial is not None:
                self._errors(self.held, j, initial, truth, mask)
            energy = guess.double().square().sum((-2, -1)) / truth.double().square().sum((-2, -1)).clamp_min(1e-30)
            self.drift.setdefault(j, []).extend((((energy - 1) * present).sum(1) / present.sum(1)).tolist())
            self.leads[j] = j * lead
        start = _last_call_input(last, lead, self.strategy, self.max_lead)  # (rollout_predictions checked max_lead)
        if start is not None and 0 < start < last:
            self._add_last_call(pairs(start, last), start, last, lead, mask)
            if evolve is not None:
                self._add_continued(evolve, float(times[last] - times[start]), start, preds, labels, mask)

    def _add_last_call(self, restart: dict[str, Tensor], start: int, last: int, lead: float, mask: Tensor) -> None:
        """The rollout's last call made from the true state at its input step `start` (`final_from_truth`)."""
        time = torch.full((len(mask),), (last - start) * lead, device=self.device)  # the model's time scale
        pred = self.convert(self.model(pixel_values=restart["pixel_values"], time=time).output)
        self._errors(self.restarts, start, pred, self.convert(restart["labels"]), mask)

    def _add_continued(
        self, evolve: Solver, duration: float, start: int, preds: Tensor, labels: dict, mask: Tensor
    ) -> None:
        """The solver run on for `duration` from the rollout's and from the true state at step `start`."""
        own = evolve(self.convert(preds[start - 1]), duration)
        true = evolve(self.convert(labels[start]), duration)
        end = self.convert(labels[len(preds)])  # the truth at the last step
        pairs = {"solver_from_model": (own, end), "solver_from_truth": (true, end)}
        pairs["call_on_own_state"] = (self.convert(preds[-1]), own)
        for name, (guess, reference) in pairs.items():
            self._errors(self.continued[name], start, guess, reference, mask)

    def result(self) -> dict:
        """The medians over trajectories per step, the windows and the last step's splits (see `horizon`)."""
        config, errors, leads = self.config, self.errors, self.leads
        steps = sorted(errors)
        curve = [float(np.median(errors[j])) for j in steps]
        result = {
            "strategy": self.strategy,
            "max_lead": self.max_lead,
            "trained_max_lead": getattr(config, "max_lead_time", None),
            "trajectories": len(errors[steps[0]]),
            "steps": steps,
            "lead_time": [leads[j] for j in steps],
            "median_rel_l1_physical/mean": curve,
            "energy_drift": [float(np.median(self.drift[j])) for j in steps],
            "final": {"step": steps[-1], "lead_time": leads[steps[-1]], "median_rel_l1_physical/mean": curve[-1]},
            "windows": {},
        }
        if self.held:
            result["persistence"] = [float(np.median(self.held[j])) for j in steps]
            result["final"]["persistence"] = result["persistence"][-1]
        if len(self.restarts) == 1:  # one input step for every source (sources of one length and spacing)
            ((start, values),) = self.restarts.items()
            result["final_from_truth"] = {"input_step": start, "median_rel_l1_physical/mean": float(np.median(values))}
        for name, by_start in self.continued.items():
            if len(by_start) == 1 and len(next(iter(by_start.values()))) == len(errors[steps[-1]]):  # every one
                ((start, values),) = by_start.items()
                result[f"final_{name}"] = {"input_step": start, HEADLINE: float(np.median(values))}
        for first, end in HORIZON_WINDOWS:
            inside = [c for j, c in zip(steps, curve) if first <= j <= end]
            if steps[-1] >= first:
                result["windows"][f"{first}-{end}"] = float(np.mean(inside))
        return result


def _trajectory_batches(part, trajectories: int, batch_size: int) -> list[list[int]]:
    """Where the pairs of each of the first `trajectories` trajectories of `part` start, `batch_size` at a time."""
    bases = [slot * len(part.pattern) for slot in range(min(trajectories, len(part.trajectories)))]
    return [bases[i : i + batch_size] for i in range(0, len(bases), batch_size)]


def _pairs(data, part: int, rows: list[int], device) -> dict[str, Tensor]:
    """Items `rows` of `data`'s part `part`, stacked: inputs, labels, lead times and channel masks."""
    items = [data.item(part, row) for row in rows]
    keys = ("pixel_values", "labels", "time", "channel_mask")
    return {key: torch.stack([item[key] for item in items]).to(device) for key in keys}


def _per_sample(errors: Tensor) -> list[float]:
    """The mean over channel groups of (B, G) errors, per sample (groups a sample lacks left out)."""
    return torch.nanmean(errors, dim=1).tolist()


def _solver(source, config) -> Solver | None:
    """`evolve(fields, duration)`: the generating solver of a file `foundation.pdes` wrote, with the PDE
    parameters it recorded, on physical fields in the model's output channels; None for other files."""
    info = source.info
    if not str(info.provenance.get("solver", "")).startswith("foundation.pdes"):
        return None  # a published file: its solver and parameters are not ours to assume
    from .pdes import FAMILIES

    family = FAMILIES.get(info.pde.get("id"))
    if family is None or family.evolve is None:
        return None
    params = {k: v for k, v in info.pde.items() if k in family.params}  # not the span, burn-in or id
    index = [config.output_channel_names.index(c) for c in info.channel_names]

    def evolve(fields: Tensor, duration: float) -> Tensor:
        out = fields.clone()  # channels the file lacks keep the prediction (masked out of the error)
        out[:, index] = family.evolve(fields[:, index], duration, **params).to(fields.dtype)
        return out

    return evolve


def _last_call_input(last: int, lead: float, strategy: str, max_lead: float) -> int | None:
    """The step whose state the rollout's call for step `last` takes as input (None: not a stored step)."""
    if strategy == "autoregressive":
        return last - 1
    chained = max(0, int(np.ceil(last * lead / max_lead - 1e-9)) - 1)  # as rollout_predictions counts them
    step = chained * max_lead / lead
    return int(round(step)) if abs(step - round(step)) < 1e-6 else None


# ----------------------------------------------------------------------------------------------- spectra
def radial_spectrum(fields: Tensor) -> Tensor:
    """(..., K) energy in integer wavenumber shells |k| in [k - 1/2, k + 1/2) of (..., H, W) fields."""
    h, w = fields.shape[-2:]
    power = torch.fft.fft2(fields.double(), norm="forward").abs() ** 2
    ky = torch.fft.fftfreq(h, d=1.0 / h).double()
    kx = torch.fft.fftfreq(w, d=1.0 / w).double()
    shell = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2).round().long()
    kmax = min(h, w) // 2
    flat = power.flatten(-2)
    out = torch.zeros(*flat.shape[:-1], kmax + 1, dtype=torch.float64)
    keep = (shell <= kmax).flatten()
    out.index_add_(-1, shell.flatten()[keep], flat[..., keep])
    return out


def frequency_bands(spectra: Tensor, names: Sequence[str]) -> dict[str, dict]:
    """Relative error (%) per channel in the low / mid / high thirds of the resolved wavenumbers, from summed
    (3, C, K) spectra of truth, prediction and error."""
    truth_k, _, err_k = spectra
    kmax = truth_k.shape[-1] - 1
    edges = [0, max(1, kmax // 3), max(2, 2 * kmax // 3), kmax]
    bands = {}
    for name, a, b in zip(("low", "mid", "high"), edges[:-1], edges[1:]):
        sl = slice(a if a == 0 else a + 1, b + 1)
        bands[f"k{sl.start}-{b}"] = {
            "band": name,
            "relative_error_%": {
                c: float(100 * torch.sqrt(err_k[i, sl].sum() / truth_k[i, sl].sum().clamp_min(1e-30)))
                for i, c in enumerate(names)
            },
        }
    return bands


# ----------------------------------------------------------------------------------------------- held-out data
def _model_statistics(config, info: SourceInfo) -> dict[str, tuple[float, float]]:
    """(mean, std) by name of each state and static channel of a source as the model normalises it: its input
    statistics, or its output statistics for a channel that is only an output (a steady problem's solution)."""
    from .data import DataError

    names, outputs = list(config.channel_names), list(config.output_channel_names)
    inputs = ([] if info.steady else list(info.channel_names)) + list(info.static_names)
    missing = [c for c in inputs if c not in names] + [c for c in info.channel_names if c not in outputs]
    if missing:
        raise DataError(f"{info.name}: channels {missing} are not in the model's inputs {names} / outputs {outputs}")

    def stats(c: str) -> tuple[float, float]:
        if c in names:
            return config.input_mean[names.index(c)], config.input_std[names.index(c)]
        return config.output_mean[outputs.index(c)], config.output_std[outputs.index(c)]

    return {c: stats(c) for c in [*info.channel_names, *info.static_names]}


def held_out_pairs(config, sources: Sequence, split: str, source_stats: bool = False, **options) -> Mixture:
    """One Mixture of all2all pairs of `split` of `sources` on the model's channels, normalised with the model's
    statistics (matched by channel name); identity pairs are left out unless `options` (`All2AllPairs`') say so.

    The sources are never changed (the statistics go to `All2AllPairs`, not into `source.info`): one opened source
    serves any number of models, and its own statistics stay what a training run normalises with.

    Args:
        config: The model's config (channel names, input and output statistics).
        sources: Opened sources; every channel of each must be among the model's.
        split: "train", "val" or "test".
        source_stats: Normalise each source with its own statistics, as a training run's pairs are
            (`pretrain.build.build_data`): what the Spectral-Refiner fits on. The same numbers as the model's for a
            run on one dataset; where datasets share a channel, the config holds the first one's.
        **options: `All2AllPairs` options (stride, max_snapshots, include_identity, ...).
    """
    from .data import All2AllPairs, Mixture

    options = {"include_identity": False, **options}

    def pairs(source) -> All2AllPairs:
        stats = _model_statistics(config, source.info)  # refuses channels the model lacks, whichever statistics
        return All2AllPairs(source, split, stats=None if source_stats else stats, **options)

    mean, std = config.input_mean, config.input_std
    parts = [pairs(source) for source in sources]
    return Mixture(parts, config.channel_names, config.output_channel_names, input_mean=mean, input_std=std)


@torch.no_grad()
def evaluate(
    model,
    sources: Sequence,
    split: str = "test",
    max_pairs: int | None = 1024,
    rollout_trajectories: int = 8,
    batch_size: int = 32,
    stride: int = 1,
    max_snapshots: int | None = None,
    samples: int = 3,
) -> tuple[dict, list]:
    """Metrics of `model` on `split` of `sources`, physical fields: summary (median and mean, L1 and L2, per group
    and over groups), per dataset, per lead time, per frequency band, spectra and rollout. Returns the JSON-ready
    result and up to `samples` (input, truth, prediction, lead) tuples for plots."""
    config = model.config
    data = held_out_pairs(config, sources, split, stride=stride, max_snapshots=max_snapshots)
    model.eval()
    groups, outputs = group_names(config), list(config.output_channel_names)
    picks = np.arange(len(data))
    if max_pairs is not None and len(data) > max_pairs:
        picks = np.linspace(0, len(data) - 1, max_pairs).round().astype(int)
    kept: list = []
    summed: list[Tensor] = []  # (3, C, K) spectra of truth, prediction, error, summed over pairs

    def collect(batch: dict, pred: Tensor, truth: Tensor) -> None:
        s = torch.stack([radial_spectrum(truth), radial_spectrum(pred), radial_spectrum(pred - truth)])  # (3,B,C,K)
        s = (s * batch["channel_mask"][None, :, :, None]).sum(1)
        summed[:] = [summed[0] + s] if summed else [s]
        if len(kept) < samples:
            kept.append((batch["pixel_values"][0], truth[0], pred[0], float(batch["time"][0])))

    table = pair_errors(model, data, picks, batch_size, "physical", on_batch=collect)
    spectra = summed[0]
    datasets = dataset_names(sources)
    result: dict = {
        "split": split,
        "space": "physical",
        "pairs": int(len(picks)),
        "datasets": datasets,
        "units": "relative errors in %, on de-normalised (physical) fields",
        **table.summary(groups, "physical"),
        "by_dataset": table.by_dataset(groups, datasets, "physical"),
        "by_lead_time": table.by_lead_time(groups, "physical"),
        "by_frequency_band": frequency_bands(spectra, outputs),
        "spectra": {
            "wavenumber": list(range(spectra.shape[-1])),
            **{
                f"{kind}/{c}": spectra[j, i].tolist()
                for j, kind in enumerate(("truth", "prediction", "error"))
                for i, c in enumerate(outputs)
            },
        },
        "rollout": rollout(model, data, rollout_trajectories, "physical"),
    }
    return result, kept


def headline(result: dict) -> dict[str, float]:
    """The summary numbers of a result (per group and over groups, every stat and norm), without breakdowns."""
    return {k: v for k, v in result.items() if isinstance(v, float) and "_rel_l" in k}
