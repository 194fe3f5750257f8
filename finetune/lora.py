"""LoRA adapters (peft) on scOT's attention and MLP projections; the model file is never edited.

An adapter folder is what peft writes (`adapter_config.json`, `adapter_model.safetensors`) plus the fine-tuned
model's `config.json` (channels, normalisation, time scale after channel surgery) and `base_model.json`
naming the pretrained model. `load_adapter` rebuilds base -> channel surgery -> adapters; `merge=True` folds
the adapters into plain scOT weights. The embedding and recovery, trained fully, ride in the adapter as
peft's `modules_to_save`.
"""

from __future__ import annotations

import json
from pathlib import Path

from foundation import ScOT, ScOTConfig

from .surgery import adapt_channels

HEAD_MODULES = ["embeddings.patch_embeddings.projection", "patch_recovery.projection", "patch_recovery.mixup"]


def lora_config(rank: int, alpha: float, dropout: float, targets: list[str], train_head: bool):
    from peft import LoraConfig

    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(targets),
        modules_to_save=list(HEAD_MODULES) if train_head else None,
        bias="none",
    )


def wrap(model: ScOT, config) -> ScOT:
    """The model with adapters (a peft `PeftModel`): only the adapters (and the head, if asked) train."""
    from peft import get_peft_model

    names = {name for name, _ in model.named_modules()}
    for target in config.target_modules:
        if not any(n == target or n.endswith("." + target) for n in names):
            raise ValueError(f"--lora_targets: no module of scOT is named {target!r} (e.g. query, intermediate.dense)")
    return get_peft_model(model, config)


def save_adapter(peft_model, folder: str | Path, base: str) -> Path:
    """Adapters + the fine-tuned config + the base model's name, into `folder`."""
    folder = Path(folder)
    peft_model.save_pretrained(folder)
    peft_model.get_base_model().config.save_pretrained(folder)
    (folder / "base_model.json").write_text(json.dumps({"base_model": str(base)}, indent=2))
    return folder


def load_adapter(folder: str | Path, base: str | None = None, merge: bool = False):
    """The fine-tuned model from an adapter folder: base (folder or repo id) -> surgery -> adapters."""
    from peft import PeftModel

    folder = Path(folder)
    for name in ("adapter_config.json", "config.json"):
        if not (folder / name).exists():
            raise ValueError(f"{folder}: not a LoRA adapter folder of this toolkit ({name} missing)")
    base = base or json.loads((folder / "base_model.json").read_text())["base_model"]
    config = ScOTConfig.from_pretrained(folder)
    pretrained = ScOT.from_pretrained(base)
    model = adapt_channels(pretrained, config.channel_names, config.output_channel_names)
    for key in ("input_mean", "input_std", "output_mean", "output_std", "time_scale"):
        setattr(model.config, key, getattr(config, key))
    model.config.channel_slice_list_normalized_loss = config.channel_slice_list_normalized_loss
    peft_model = PeftModel.from_pretrained(model, folder)
    if merge:
        return peft_model.merge_and_unload().eval()
    return peft_model.eval()
