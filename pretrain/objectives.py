"""Rollout training: the objective that adds K-step rollouts to the pair loss, and the lead times a run trains."""

from __future__ import annotations

import torch

from foundation.evaluation import feedable
from foundation.losses import unrolled_loss

from .config import TrainArguments


def trained_leads(parts, rollout_weight: float = 0.0) -> tuple[float, float | None]:
    """(largest lead time the model is trained to predict in one call, the rollout-training step or None), model
    units. The pairs' largest lead, unless the rollout weight is 1 and no pair is trained: then the longest step
    of the rollout sequences (a model trained so never saw the pairs' longer leads; jumping by them would be
    extrapolating)."""
    rollout = [p for p in parts if p.rollout_steps]
    if rollout and rollout_weight >= 1 and len(rollout) < len(parts):
        names = [p.source.info.name for p in parts if p not in rollout]
        raise ValueError(
            f"--rollout_weight {rollout_weight:g} trains no pair, so {names} (no rollouts) would not train"
        )
    steps = [p.rollout_time for p in rollout if p.rollout_time is not None]
    step = float(max(steps)) if steps else None
    if rollout and rollout_weight >= 1:
        return float(max(p.rollout_max_step for p in rollout)), step
    return float(max(p.lead_times.max() for p in parts)), step


class RolloutObjective:
    """The training loss with rollout sequences in the batch: (1 - w) * pair loss + w * K-step rollout loss.

    K follows the curriculum of `TrainArguments.rollout_length` (a function of the step only, so a resumed run
    trains the same K); the pair loss is skipped at w = 1. Activations: pushforward keeps those of two forward
    passes (the pair's and the rollout's last step; the K - 1 steps before run without gradient), unrolled those
    of K + 1. Under DDP or DeepSpeed all forward passes of a step go through the wrapped model before its one
    backward, as gradient accumulation's do.
    """

    KEYS = ("rollout_inputs", "rollout_labels", "rollout_time")
    MASK = "rollout_mask"  # per sample, 0 for a steady problem's placeholder (foundation.data.Mixture)

    def __init__(self, config, train_args: TrainArguments, steps: int):
        if feedable(config) is None:  # now, not at the first step of a launched run
            raise ValueError(
                f"--rollout_steps {steps}: the model's outputs {config.output_channel_names} are not all among its "
                f"inputs {config.channel_names}, so a rollout cannot feed them back"
            )
        self.config, self.args, self.steps = config, train_args, steps

    def __call__(self, model: torch.nn.Module, batch: dict, step: int) -> torch.Tensor:
        batch = dict(batch)
        inputs, labels, lead = (batch.pop(k) for k in self.KEYS)
        keep = batch.pop(self.MASK, None)
        mask = batch.get("channel_mask")
        if keep is not None:
            mask = (torch.ones_like(labels[:, 0, :, 0, 0]) if mask is None else mask) * keep[:, None].to(labels.dtype)
        length = self.args.rollout_length(step, self.steps)
        lead = lead[:, :length] if lead.dim() == 2 else lead  # split sequences: one lead time per step
        loss = unrolled_loss(
            model,
            inputs,
            labels[:, :length],
            lead,
            mode=self.args.rollout_mode,
            noise_std=self.args.rollout_noise,
            channel_mask=mask,
            config=self.config,
        )
        w = self.args.rollout_weight
        return loss if w >= 1 else (1 - w) * model(**batch).loss + w * loss
