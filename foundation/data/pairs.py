"""The semigroup ("all2all") expansion and a resumable, rank-sharded random sampler over it.

Every ordered pair (t_i, t_j), i <= j, of the snapshots in use of a trajectory is a training example with
lead time (t_j - t_i) / time_scale, where time_scale is the dataset's fixed scale (by default the span of the
whole stored trajectory, not of the snapshots in use). 11 snapshots give 66 pairs, 55 without identities.
The index is never materialised: pair k is trajectory k // P and the k % P-th (i, j) of one pattern.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .source import DataError, TrajectorySource


class All2AllPairs(Dataset):
    """Map-style dataset of (input, target, lead time, channel mask) over one source and split.

    Items are dicts named after the model's forward arguments: `pixel_values` [C + S, H, W] (state at t_i,
    then the static fields), `labels` [C, H, W] (state at t_j), `time` (lead time), `channel_mask` [C].
    For a steady source the input is the static fields alone and there is one pair of lead time 1.

    Args:
        source: The trajectories.
        split: "train", "val" or "test".
        stride: Use every `stride`-th stored snapshot (Poseidon pretraining: 2, of 21 stored).
        max_snapshots: Use at most this many snapshots (after the stride), counted from the first.
        include_identity: Keep the pairs i == j (lead time 0).
        lead_steps: Allowed values of j - i, in snapshots in use (None: all).
        normalize: Normalise with the source's statistics (state and static fields separately).
        check_finite: Refuse samples with NaN/Inf (names file and index).
        rollout_steps: K > 0 adds to every pair a rollout sequence of the same trajectory for rollout training
            (`foundation.losses.unrolled_loss`): `rollout_inputs` [C + S, H, W] at the pair's first snapshot
            (moved earlier when fewer than K steps follow it), `rollout_labels` [K, C, H, W] the K snapshots
            `rollout_lead_steps` apart after it, `rollout_time` the lead time of one step.
        rollout_lead_steps: Snapshots in use per rollout step; 0: the pair's own lead j - i (at least 1, at most
            what K steps fit in the window), so the sequences span every step size and start wherever they fit.
            A fixed step of K x step = the window leaves one sequence per trajectory (all start at the first
            snapshot), which a model memorises; stepping by the pair's lead gives many.
        rollout_split: Instead, each sequence spans its pair i -> j (at least K snapshots) in K steps of unequal
            length, cut at points drawn per pair (the same every epoch: resumes stay exact); `rollout_time` is then
            the (K,) lead times of the steps. The model learns to continue from its own predictions of every lead,
            long ones included (what a jump rollout feeds it), not only from chains of one step size.
        stats: (mean, std) per channel name to normalise with instead of the source's own statistics (a trained
            model's: `foundation.evaluation.held_out_pairs`); it must name every state and static channel. The
            source is left as it is, so that one opened source can serve several models.
    """

    def __init__(
        self,
        source: TrajectorySource,
        split: str = "train",
        stride: int = 1,
        max_snapshots: int | None = None,
        include_identity: bool = True,
        lead_steps: Sequence[int] | None = None,
        normalize: bool = True,
        check_finite: bool = True,
        rollout_steps: int = 0,
        rollout_lead_steps: int = 1,
        rollout_split: bool = False,
        stats: Mapping[str, tuple[float, float]] | None = None,
    ):
        self.source, self.split_name = source, split
        self.trajectories = source.split(split)
        info = source.info
        if stride < 1:
            raise DataError(f"{info.name}: stride must be >= 1, got {stride}")
        snapshots = list(range(0, source.num_snapshots, stride))
        if max_snapshots is not None:
            snapshots = snapshots[:max_snapshots]
        self.snapshots = snapshots
        if info.steady:
            pattern = [(0, 0)]
        else:
            steps = None if lead_steps is None else set(int(s) for s in lead_steps)
            pattern = [
                (a, b)
                for a in range(len(snapshots))
                for b in range(a, len(snapshots))
                if (include_identity or b > a) and (steps is None or b - a in steps)
            ]
        if not pattern:
            raise DataError(
                f"{info.name}: no pairs with {len(snapshots)} snapshots, include_identity="
                f"{include_identity}, lead_steps={lead_steps}"
            )
        self.pattern = np.asarray(pattern, dtype=np.int64)  # (P, 2) positions in `snapshots`
        times = np.asarray(info.times, dtype=np.float64)[snapshots]
        self.lead_times = (
            np.ones(1) if info.steady else (times[self.pattern[:, 1]] - times[self.pattern[:, 0]]) / info.time_scale
        ).astype(np.float32)
        self.rollout_steps, self.rollout_lead_steps = int(rollout_steps), int(rollout_lead_steps)
        self.rollout_split = bool(rollout_split) and self.rollout_steps > 0
        self._model_times = times / info.time_scale
        self.rollout_time = self._rollout_time(times) if self.rollout_steps else None
        self.normalize, self.check_finite = normalize, check_finite
        self.dropped, self._kept_before = 0, np.zeros(0, dtype=np.int64)  # pairs left out by `exclude`
        self._excluded = False
        channels, statics = len(info.channel_names), len(info.static_names)
        mean, std, static_mean, static_std = self._statistics(stats)
        if normalize and (mean is None or std is None):
            raise DataError(
                f"{info.name}: no normalisation statistics; compute them (foundation.data.compute_stats) "
                f"or pass normalize=False"
            )
        if normalize and statics and (static_mean is None or static_std is None):
            raise DataError(f"{info.name}: no statistics for the static fields {info.static_names}")
        self._mean = np.asarray(mean if normalize else [0.0] * channels, np.float32)[:, None, None]
        self._std = np.asarray(std if normalize else [1.0] * channels, np.float32)[:, None, None]
        self._smean = np.asarray(static_mean if normalize and statics else [0.0] * statics, np.float32)
        self._sstd = np.asarray(static_std if normalize and statics else [1.0] * statics, np.float32)
        self._smean, self._sstd = self._smean[:, None, None], self._sstd[:, None, None]
        self._inv_std, self._inv_sstd = 1.0 / self._std, 1.0 / self._sstd
        self.input_names = ([] if info.steady else list(info.channel_names)) + list(info.static_names)
        self.target_names = list(info.channel_names)

    def _statistics(self, stats: Mapping[str, tuple[float, float]] | None) -> tuple:
        """(mean, std, static mean, static std) to normalise with: the source's, or those of `stats` by name."""
        info = self.source.info
        if stats is None:
            return info.mean, info.std, info.static_mean, info.static_std
        missing = [c for c in info.channel_names + info.static_names if c not in stats]
        if missing:
            raise DataError(f"{info.name}: no statistics given for the channels {missing}")
        state, static = info.channel_names, info.static_names
        return (
            [stats[c][0] for c in state],
            [stats[c][1] for c in state],
            [stats[c][0] for c in static],
            [stats[c][1] for c in static],
        )

    def _rollout_time(self, times: np.ndarray) -> float:
        """The lead time of one rollout step (model units); refuses windows that do not fit or uneven spacing."""
        info, k, s = self.source.info, self.rollout_steps, self.rollout_lead_steps
        if info.steady:
            raise DataError(f"{info.name}: a steady problem has no trajectory to roll out (rollout_steps={k})")
        if k < 0 or s < 0:
            raise DataError(f"{info.name}: rollout_steps and rollout_lead_steps must be >= 0, got {k}, {s}")
        if self.rollout_split:  # steps of every length; their times come from the snapshots' own
            if k >= len(times):
                raise DataError(f"{info.name}: {k} rollout steps need {k + 1} snapshots, {len(times)} are in use")
            return None
        s = s or self._largest_step()  # the pair's own lead: every step up to the largest that fits
        if k * s >= len(times):
            raise DataError(
                f"{info.name}: {k} rollout steps of {s} snapshot(s) need {k * s + 1} snapshots, "
                f"{len(times)} are in use (max_snapshots / stride)"
            )
        even = 1 if self.rollout_lead_steps == 0 else s  # pair leads: every step size is used
        steps = times[even:] - times[:-even]
        if not np.allclose(steps, steps[0], rtol=1e-4, atol=0.0):
            raise DataError(
                f"{info.name}: rollout training needs evenly spaced snapshots; spacings of {even} snapshot(s) "
                f"range from {steps.min():g} to {steps.max():g}"
            )
        return float(steps[0] / even / info.time_scale) * s  # the largest step of the sequences

    def _largest_step(self) -> int:
        return max(1, (len(self.snapshots) - 1) // self.rollout_steps)

    @property
    def rollout_max_step(self) -> float:
        """The longest single step of the rollout sequences (model units): the fixed or largest pair-lead step, or,
        for split pairs, a whole-window span less one snapshot per other step."""
        if not self.rollout_steps:
            return 0.0
        if self.rollout_split:
            times = self._model_times
            span = len(times) - self.rollout_steps  # snapshots in the longest step
            return float(max(times[m + span] - times[m] for m in range(len(times) - span)))
        return float(self.rollout_time)

    @property
    def pairs_per_trajectory(self) -> int:
        return len(self.pattern)

    def __len__(self) -> int:
        return len(self.trajectories) * len(self.pattern) - self.dropped

    def locate(self, index: int) -> tuple[int, int, int, float]:
        """(trajectory, snapshot i, snapshot j, lead time) of pair `index`."""
        if not 0 <= index < len(self):
            raise IndexError(f"pair {index} outside [0, {len(self)})")
        if self.dropped:  # the index of the kept pairs: skip the dropped ones before it (O(log dropped))
            index += int(np.searchsorted(self._kept_before, index, side="right"))
        slot, p = divmod(index, len(self.pattern))
        a, b = self.pattern[p]
        return self.trajectories[slot], self.snapshots[a], self.snapshots[b], float(self.lead_times[p])

    def exclude(self, bad: Iterable[tuple[int, int | str]], whole_trajectories: bool = False) -> int:
        """Drop every pair that reads a bad place (its rollout sequence included); returns how many were dropped.

        Call it once, after any change to `trajectories`. The index stays lazy: only the dropped pairs are stored
        (a sorted array), and pair k of the rest is found by a binary search over them.

        Args:
            bad: (trajectory, snapshot) places holding NaN/Inf (or unreadable), snapshot "static" for a trajectory's
                static fields, which every pair of it reads. Other trajectories and snapshots not in use are ignored.
            whole_trajectories: Drop every pair of a trajectory with a bad place in use instead. Validation needs
                it: its rollouts (`foundation.evaluation.rollout`) read whole trajectories through the pair layout
                (trajectory slot x pattern), which dropping single pairs would shift.
        """
        if self._excluded:  # the dropped pairs' indices refer to the trajectories as they were then
            raise RuntimeError(f"{self.source.info.name}: pairs were excluded already")
        self._excluded = True
        position = {s: k for k, s in enumerate(self.snapshots)}
        hit: dict[int, set[int | str]] = {}
        for trajectory, snapshot in bad:
            if snapshot == "static" or snapshot in position:
                hit.setdefault(int(trajectory), set()).add("static" if snapshot == "static" else position[snapshot])
        if whole_trajectories:
            before = len(self)
            self.trajectories = [t for t in self.trajectories if t not in hit]
            return before - len(self)
        count, dropped = len(self.pattern), []
        for slot, trajectory in enumerate(self.trajectories):
            places = hit.get(trajectory)
            if not places:
                continue
            for p, (a, b) in enumerate(self.pattern.tolist()):
                if "static" in places or not places.isdisjoint(self._positions_read(trajectory, a, b)):
                    dropped.append(slot * count + p)
        # _kept_before[m]: how many kept pairs precede the m-th dropped one (what `locate` searches)
        self._kept_before = np.asarray(dropped, dtype=np.int64) - np.arange(len(dropped), dtype=np.int64)
        self.dropped = len(dropped)
        return self.dropped

    def _positions_read(self, trajectory: int, a: int, b: int) -> set[int]:
        """Positions (in the snapshots in use) that pair (a, b) of `trajectory` reads, its rollout's included."""
        if self.source.info.steady:
            return {b}  # the input is the static fields alone
        read = {a, b}
        if self.rollout_steps:
            read.update(self._rollout_points(trajectory, a, b - a))
        return read

    @staticmethod
    def _normalised(x: np.ndarray, mean: np.ndarray, inv_std: np.ndarray) -> np.ndarray:
        # In place only on a fresh array the read made for us (it owns its memory and is writeable); views of a
        # source's memory (memmaps, in-memory arrays) and read-only cached rows get a new array, so the tensors
        # we return never alias or modify the source. Saving the copy matters: it is a third of the work.
        if x.flags.owndata and x.flags.writeable and x.dtype == np.float32:
            out = x
            out -= mean
        else:
            out = np.subtract(x, mean, dtype=np.float32)
        out *= inv_std
        return out

    def _state(self, traj: int, snapshot: int) -> np.ndarray:
        return self._normalised(self.source.read(traj, snapshot, check=self.check_finite), self._mean, self._inv_std)

    def _static(self, traj: int) -> np.ndarray | None:
        if not self.source.info.static_names:
            return None
        return self._normalised(self.source.read_static(traj, check=self.check_finite), self._smean, self._inv_sstd)

    @staticmethod
    def _inputs(state: np.ndarray | None, static: np.ndarray | None) -> np.ndarray:
        parts = [p for p in (state, static) if p is not None]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        traj, i, j, lead = self.locate(int(index))
        target = self._state(traj, j)
        state = None
        if not self.source.info.steady:
            state = target.copy() if i == j else self._state(traj, i)
        static = self._static(traj)
        item = {
            "pixel_values": torch.from_numpy(self._inputs(state, static)),
            "labels": torch.from_numpy(target),
            "time": torch.tensor(lead, dtype=torch.float32),
            "channel_mask": torch.ones(len(self.target_names), dtype=torch.float32),
        }
        if self.rollout_steps:
            first, last = self.snapshots.index(i), self.snapshots.index(j)
            item.update(self._rollout(traj, first, last - first, static))
        return item

    def _rollout(self, traj: int, first: int, lead: int, static: np.ndarray | None) -> dict[str, torch.Tensor]:
        """The rollout sequence of the pair starting at position `first` of the snapshots in use, `lead` apart."""
        points = self._rollout_points(traj, first, lead)
        labels = np.stack([self._state(traj, self.snapshots[m]) for m in points[1:]])
        inputs = self._inputs(self._state(traj, self.snapshots[points[0]]), static)  # a new array: concatenated
        steps = np.diff(self._model_times[points]).astype(np.float32)
        return {
            "rollout_inputs": torch.from_numpy(inputs),
            "rollout_labels": torch.from_numpy(labels),
            # split pairs: one lead time per step; otherwise the steps are even: one for all
            "rollout_time": torch.from_numpy(steps) if self.rollout_split else torch.tensor(steps[0]),
        }

    def _rollout_points(self, traj: int, first: int, lead: int) -> list[int]:
        """Positions (in the snapshots in use) of a sequence's start and its K steps. Steps of
        `rollout_lead_steps` snapshots, or of the pair's `lead` (clipped to [1, largest]) when that is 0, from
        `first` (earlier if K steps do not fit); split pairs: the pair's span (at least K snapshots, moved earlier
        when it does not fit) cut at points drawn from the pair alone, the same sequence every epoch."""
        k, last = self.rollout_steps, len(self.snapshots) - 1
        if not self.rollout_split:
            s = self.rollout_lead_steps or min(max(lead, 1), self._largest_step())
            start = min(first, last - k * s)
            return [start + m * s for m in range(k + 1)]
        span = max(lead, k)
        start = min(first, last - span)
        rng = np.random.default_rng([traj, first, lead])
        cuts = np.sort(rng.choice(np.arange(1, span), size=k - 1, replace=False)) if k > 1 else np.zeros(0, int)
        return [start, *(start + int(c) for c in cuts), start + span]


# ----------------------------------------------------------------------------------------------- sampler
_MASK64 = (1 << 64) - 1


def _mix(x: np.ndarray, key: int) -> np.ndarray:
    """A 64-bit mixing function (splitmix64 finaliser) keyed by `key`, vectorised over uint64."""
    with np.errstate(over="ignore"):
        z = x + np.uint64((key * 0x9E3779B97F4A7C15) & _MASK64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def feistel_permutation(positions: np.ndarray, length: int, key: int, rounds: int = 4) -> np.ndarray:
    """A pseudo-random permutation of [0, length) evaluated at `positions`, in O(1) memory.

    A balanced Feistel network on the next even power of two, with cycle walking back into range: a bijection
    for any length, deterministic in `key`, without materialising a permutation of a 5M-pair corpus.
    """
    bits = max(2, int(length - 1).bit_length())
    bits += bits % 2
    half, mask = bits // 2, np.uint64((1 << (bits // 2)) - 1)
    x = np.asarray(positions, dtype=np.uint64)
    out = np.empty_like(x)
    todo = np.ones(len(x), dtype=bool)
    current = x.copy()
    while todo.any():
        v = current[todo]
        left, right = v >> np.uint64(half), v & mask
        for r in range(rounds):
            left, right = right, left ^ (_mix(right, key * 31 + r) & mask)
        v = (left << np.uint64(half)) | right
        current[todo] = v
        done = v < np.uint64(length)
        idx = np.flatnonzero(todo)
        out[idx[done]] = v[done]
        todo[idx[done]] = False
    return out.astype(np.int64)


class RandomPairSampler(Sampler[int]):
    """Random order over a (possibly huge) pair index, deterministic, resumable, sharded across ranks.

    Each epoch is a pseudo-random permutation of [0, length) (nothing materialised); rank r of w takes
    positions r, r + w, r + 2w, ... of it, so ranks never draw the same pair in an epoch. `state_dict()`
    records the epoch and how far this rank got; `load_state_dict()` continues from there exactly.

    Args:
        length: Size of the index (`len(dataset)`).
        seed: Base seed; the epoch's permutation depends on (seed, epoch) only.
        rank, world_size: This process's shard.
        shuffle: False walks the index in order (evaluation).
        drop_last: Give every rank the same number of samples (drop the remainder), as DDP needs.
    """

    def __init__(
        self,
        length: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        drop_last: bool = True,
    ):
        if length <= 0:
            raise DataError("RandomPairSampler: the pair index is empty")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world of {world_size}")
        self.length, self.seed, self.rank, self.world_size = length, seed, rank, world_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch, self.position = 0, 0

    def __len__(self) -> int:
        if self.drop_last:
            return self.length // self.world_size
        return -(-(self.length - self.rank) // self.world_size)

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def _global(self, positions: np.ndarray) -> np.ndarray:
        if not self.shuffle:
            return positions
        return feistel_permutation(positions, self.length, key=self.seed * 1_000_003 + self.epoch)

    def __iter__(self) -> Iterator[int]:
        total = len(self)
        chunk = 4096
        while self.position < total:
            local = np.arange(self.position, min(self.position + chunk, total), dtype=np.int64)
            for index in self._global(local * self.world_size + self.rank):
                self.position += 1
                yield int(index)
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self, consumed: int | None = None) -> dict[str, int]:
        """The sampler's place. A DataLoader draws indices ahead of the training loop (prefetching): pass
        `consumed`, the number of samples this rank has trained on in the current epoch, to resume exactly."""
        position = self.position if consumed is None else consumed
        return {
            "epoch": self.epoch,
            "position": position,
            "seed": self.seed,
            "length": self.length,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["length"] != self.length or state["seed"] != self.seed:
            raise ValueError(
                f"sampler state is for length {state['length']} / seed {state['seed']}, not {self.length} / {self.seed}"
            )
        if state.get("world_size", self.world_size) != self.world_size:
            raise ValueError(f"sampler state was saved with world size {state['world_size']}, now {self.world_size}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
