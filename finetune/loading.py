"""Loading whatever a fine-tuning run exports (`finetune.load_model`): the folder's marker files say which kind."""

from __future__ import annotations

from pathlib import Path

import torch

from foundation import ScOT

from .baselines import FNO_CONFIG, FNOBaseline
from .refiner import HEAD_CONFIG, RefinedScOT


def load_model(path: str | Path) -> torch.nn.Module:
    """A fine-tuned model from a folder or Hub repo id: scOT, scOT + spectral head, or scOT + LoRA adapters.

    Args:
        path: A local folder, else a Hub repo id (downloaded whole).

    Returns:
        The model in eval mode: a LoRA adapter folder merged into its base, a Spectral-Refiner folder as
        `RefinedScOT`, an FNO baseline folder as `FNOBaseline`, anything else as `ScOT`.
    """
    folder = Path(path)
    if not folder.exists():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(str(path)))
    if (folder / "adapter_config.json").exists():
        from .lora import load_adapter

        return load_adapter(folder, merge=True)
    if (folder / HEAD_CONFIG).exists():
        return RefinedScOT.from_pretrained(folder).eval()
    if (folder / FNO_CONFIG).exists():
        return FNOBaseline.from_pretrained(folder)
    return ScOT.from_pretrained(folder).eval()
