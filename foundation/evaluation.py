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

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .metrics import relative_error_per_sample

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
    convert = to_physical(config)
    max_lead = default_jump(config) if max_lead is None else max_lead
    errors: dict[int, list[float]] = {}
    held: dict[int, list[float]] = {}  # persistence: the first snapshot held
    drift: dict[int, list[float]] = {}
    leads: dict[int, float] = {}
    restarts: dict[int, list[float]] = {}  # last step from the true input of its last call, by that input's step
    # The solver continued from the model's or the true state at the last call's input, vs the truth; and the
    # last call vs the first of these.
    continued: dict[str, dict[int, list[float]]] = {
        "solver_from_model": {},
        "solver_from_truth": {},
        "call_on_own_state": {},
    }
    for source in sources:
        data = held_out_pairs(config, [source], split, stride=stride)
        part = data.parts[0]
        if part.source.info.steady or len(part.snapshots) < 2:
            continue
        times = np.asarray(part.source.info.times, dtype=np.float64)[part.snapshots]
        spacing = np.diff(times)
        if not np.allclose(spacing, spacing[0], rtol=1e-4):
            raise ValueError(f"{part.source.info.name}: a horizon rollout needs evenly spaced snapshots")
        lead = float(spacing[0] / config.time_scale)
        pattern = {tuple(ab): p for p, ab in enumerate(part.pattern.tolist())}
        last = len(part.snapshots) - 1
        evolve = _solver(part.source, config) if solver else None
        for bases in _trajectory_batches(part, trajectories, batch_size):
            first = _pairs(data, 0, [b + pattern[(0, 1)] for b in bases], device)
            mask = first["channel_mask"]
            present = (mask > 0).double()
            preds = rollout_predictions(model, first["pixel_values"], lead, last, strategy, max_lead, mask, config)
            initial = held_state(config, first["pixel_values"])
            labels = {1: first["labels"]}  # the other snapshots' truths, read once per batch
            labels.update(
                {j: _pairs(data, 0, [b + pattern[(0, j)] for b in bases], device)["labels"] for j in range(2, last + 1)}
            )
            for j, pred in enumerate(preds, start=1):
                truth, guess = convert(labels[j]), convert(pred)
                errors.setdefault(j, []).extend(_per_sample(per_sample_errors(guess, truth, config, mask)))
                if initial is not None:
                    held.setdefault(j, []).extend(_per_sample(per_sample_errors(initial, truth, config, mask)))
                energy = guess.double().square().sum((-2, -1)) / truth.double().square().sum((-2, -1)).clamp_min(1e-30)
                drift.setdefault(j, []).extend((((energy - 1) * present).sum(1) / present.sum(1)).tolist())
                leads[j] = j * lead
            start = _last_call_input(last, lead, strategy, max_lead)  # (after rollout_predictions checked max_lead)
            if start is None or not 0 < start < last:
                continue
            restart = _pairs(data, 0, [b + pattern[(start, last)] for b in bases], device)
            time = torch.full((len(bases),), (last - start) * lead, device=device)  # the model's time scale, as above
            pred = convert(model(pixel_values=restart["pixel_values"], time=time).output)
            error = per_sample_errors(pred, convert(restart["labels"]), config, mask)
            restarts.setdefault(start, []).extend(_per_sample(error))
            if evolve is not None:
                duration = float(times[last] - times[start])
                own = evolve(convert(preds[start - 1]), duration)
                true = evolve(convert(labels[start]), duration)
                end = convert(labels[last])
                pairs = {"solver_from_model": (own, end), "solver_from_truth": (true, end)}
                pairs["call_on_own_state"] = (convert(preds[-1]), own)
                for name, (guess, reference) in pairs.items():
                    error = per_sample_errors(guess, reference, config, mask)
                    continued[name].setdefault(start, []).extend(_per_sample(error))
    if not errors:
        return {}
    steps = sorted(errors)
    curve = [float(np.median(errors[j])) for j in steps]
    result = {
        "strategy": strategy,
        "max_lead": max_lead,
        "trained_max_lead": getattr(config, "max_lead_time", None),
        "trajectories": len(errors[steps[0]]),
        "steps": steps,
        "lead_time": [leads[j] for j in steps],
        "median_rel_l1_physical/mean": curve,
        "energy_drift": [float(np.median(drift[j])) for j in steps],
        "final": {"step": steps[-1], "lead_time": leads[steps[-1]], "median_rel_l1_physical/mean": curve[-1]},
        "windows": {},
    }
    if held:
        result["persistence"] = [float(np.median(held[j])) for j in steps]
        result["final"]["persistence"] = result["persistence"][-1]
    if len(restarts) == 1:  # one input step for every source (sources of one length and spacing)
        ((start, values),) = restarts.items()
        result["final_from_truth"] = {"input_step": start, "median_rel_l1_physical/mean": float(np.median(values))}
    for name, by_start in continued.items():
        if len(by_start) == 1 and len(next(iter(by_start.values()))) == len(errors[steps[-1]]):  # every trajectory
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


def _solver(source, config) -> Callable[[Tensor, float], Tensor] | None:
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
def pairs_for_model(config, source, split: str, **options):
    """All2all pairs of `source` normalised with the model's statistics (matched by channel name)."""
    from .data import All2AllPairs, DataError

    info = source.info
    names, outputs = list(config.channel_names), list(config.output_channel_names)
    inputs = ([] if info.steady else list(info.channel_names)) + list(info.static_names)
    missing = [c for c in inputs if c not in names] + [c for c in info.channel_names if c not in outputs]
    if missing:
        raise DataError(f"{info.name}: channels {missing} are not in the model's inputs {names} / outputs {outputs}")

    def stats(c: str) -> tuple[float, float]:  # states normalise as the model's inputs (or outputs if steady)
        if c in names:
            return config.input_mean[names.index(c)], config.input_std[names.index(c)]
        return config.output_mean[outputs.index(c)], config.output_std[outputs.index(c)]

    source.info = dataclasses.replace(
        info,
        mean=[stats(c)[0] for c in info.channel_names],
        std=[stats(c)[1] for c in info.channel_names],
        static_mean=[stats(c)[0] for c in info.static_names] or info.static_mean,
        static_std=[stats(c)[1] for c in info.static_names] or info.static_std,
    )
    return All2AllPairs(source, split, **options)


def held_out_pairs(config, sources: Sequence, split: str, **options):
    """One Mixture of `split` of `sources`, normalised as the model expects (identity pairs left out)."""
    from .data import Mixture

    options = {"include_identity": False, **options}
    parts = [pairs_for_model(config, source, split, **options) for source in sources]
    mean, std = config.input_mean, config.input_std
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
