"""Mixtures of datasets mapped onto one model channel vocabulary by channel name.

A channel a dataset lacks is filled with its physical default (rho = 1, everything else 0, normalised with
the vocabulary's statistics) and masked out of the loss through `channel_mask`: no label-dependent pixel
mask is needed at inference. Each dataset keeps its own normalisation statistics.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .pairs import All2AllPairs
from .source import DataError

PHYSICAL_DEFAULTS = {"rho": 1.0}


class Mixture(Dataset):
    """Several `All2AllPairs` on one vocabulary, with per-dataset sampling weights.

    One epoch has as many pairs as the parts together; part k contributes a share proportional to its
    weight (repeating a small dataset or sub-sampling a large one, with an offset that moves every epoch).

    Args:
        parts: The datasets (same grid).
        input_names: The model's input channels (state channels, then static fields such as "c" or "f").
        target_names: The model's output channels.
        weights: Sampling weight per part (default: proportional to size, i.e. plain concatenation).
        input_mean, input_std: Vocabulary statistics used to normalise fill values (default 0 and 1).
        defaults: Physical fill value per channel name (default: rho = 1, everything else 0).
    """

    def __init__(
        self,
        parts: Sequence[All2AllPairs],
        input_names: Sequence[str],
        target_names: Sequence[str],
        weights: Sequence[float] | None = None,
        input_mean: Sequence[float] | None = None,
        input_std: Sequence[float] | None = None,
        defaults: dict[str, float] | None = None,
    ):
        if not parts:
            raise DataError("Mixture needs at least one dataset")
        self.parts = list(parts)
        self.input_names, self.target_names = list(input_names), list(target_names)
        grids = {part.source.grid for part in self.parts}
        if len(grids) > 1:
            raise DataError(
                f"Mixture: datasets have different grids {sorted(grids)}: "
                + ", ".join(f"{p.source.info.name} {p.source.grid}" for p in self.parts)
            )
        defaults = {**PHYSICAL_DEFAULTS, **(defaults or {})}
        mean = np.asarray(input_mean if input_mean is not None else [0.0] * len(self.input_names), np.float32)
        std = np.asarray(input_std if input_std is not None else [1.0] * len(self.input_names), np.float32)
        fill = np.asarray([defaults.get(name, 0.0) for name in self.input_names], np.float32)
        self.fill = (fill - mean) / std
        self.maps = []
        for part in self.parts:
            unknown = set(part.target_names) - set(self.target_names)
            unknown_in = set(part.input_names) - set(self.input_names)
            if unknown_in:
                raise DataError(
                    f"Mixture: {part.source.info.name} has input channels {sorted(unknown_in)} that "
                    f"the vocabulary {self.input_names} lacks"
                )
            if unknown and not set(part.target_names) & set(self.target_names):
                raise DataError(
                    f"Mixture: no target channel of {part.source.info.name} {part.target_names} "
                    f"is in the vocabulary {self.target_names}"
                )
            in_map = np.asarray([part.input_names.index(n) if n in part.input_names else -1 for n in self.input_names])
            out_map = np.asarray(
                [part.target_names.index(n) if n in part.target_names else -1 for n in self.target_names]
            )
            self.maps.append((in_map, out_map, torch.from_numpy((out_map >= 0).astype(np.float32))))
        sizes = np.asarray([len(p) for p in self.parts], dtype=np.float64)
        w = sizes if weights is None else np.asarray(weights, dtype=np.float64)
        if len(w) != len(self.parts) or (w < 0).any() or w.sum() <= 0:
            raise DataError(f"Mixture: weights {list(w)} must be one non-negative number per dataset, not all 0")
        virtual = np.floor(w / w.sum() * sizes.sum()).astype(np.int64)
        virtual[(w > 0) & (virtual == 0)] = 1
        self.virtual = virtual
        self.offsets = np.concatenate([[0], np.cumsum(virtual)])
        self.epoch = 0
        steps = {p.rollout_steps for p in self.parts if p.rollout_steps}
        if len(steps) > 1:
            raise DataError(f"Mixture: parts with different rollout lengths {sorted(steps)} cannot share a batch")
        self.rollout_steps = steps.pop() if steps else 0
        # a placeholder's step times: one per step when the sequences are split pairs, else one for all steps
        split = any(p.rollout_split for p in self.parts)
        self._rollout_time_shape = (self.rollout_steps,) if split else ()

    def set_epoch(self, epoch: int) -> None:
        """Move the sub-sampling offset of over-represented datasets (call once per epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """(part, index in the part) of mixture item `index`."""
        if not 0 <= index < len(self):
            raise IndexError(f"mixture item {index} outside [0, {len(self)})")
        k = int(np.searchsorted(self.offsets, index, side="right") - 1)
        local = index - int(self.offsets[k])
        size, virtual = len(self.parts[k]), int(self.virtual[k])
        return k, (local * size // virtual + self.epoch * 7919) % size if virtual < size else local % size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.item(*self.locate(int(index)))

    def item(self, k: int, local: int) -> dict[str, torch.Tensor]:
        """Pair `local` of dataset `k`, mapped onto the vocabulary (its rollout sequence too, if it has one)."""
        item = self.parts[k][local]
        in_map, out_map, mask = self.maps[k]
        out = {
            "pixel_values": self._inputs(item["pixel_values"], in_map),
            "labels": self._labels(item["labels"], out_map),
            "time": item["time"],
            "channel_mask": mask.clone(),
            "dataset": torch.tensor(k),
        }
        if "rollout_labels" in item:
            out["rollout_inputs"] = self._inputs(item["rollout_inputs"], in_map)
            out["rollout_labels"] = torch.stack([self._labels(y, out_map) for y in item["rollout_labels"]])
            out["rollout_time"] = item["rollout_time"]
            out["rollout_mask"] = torch.tensor(1.0)
        elif self.rollout_steps:  # a part without sequences (a steady problem) beside parts with them: the batch
            # needs the same keys; rollout_mask 0 keeps the placeholder out of the rollout loss
            out["rollout_inputs"] = out["pixel_values"].clone()
            out["rollout_labels"] = torch.zeros(self.rollout_steps, *out["labels"].shape)
            out["rollout_time"] = torch.zeros(self._rollout_time_shape)
            out["rollout_mask"] = torch.tensor(0.0)
        return out

    def _inputs(self, x: torch.Tensor, in_map: np.ndarray) -> torch.Tensor:
        inputs = torch.from_numpy(
            np.repeat(self.fill[:, None, None], x.shape[-2] * x.shape[-1], axis=1).reshape(
                len(self.input_names), *x.shape[-2:]
            )
        )
        present = torch.from_numpy(np.flatnonzero(in_map >= 0))
        inputs[present] = x[torch.from_numpy(in_map[in_map >= 0])]
        return inputs

    def _labels(self, y: torch.Tensor, out_map: np.ndarray) -> torch.Tensor:
        labels = torch.zeros(len(self.target_names), *y.shape[-2:])
        have = torch.from_numpy(np.flatnonzero(out_map >= 0))
        labels[have] = y[torch.from_numpy(out_map[out_map >= 0])]
        return labels
