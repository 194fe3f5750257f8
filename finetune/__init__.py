"""Fine-tuning scOT on new PDEs: strategies full | head | lora | refiner (`python -m finetune`), channel surgery,
evaluation (`python -m finetune.evaluate`) and sample-efficiency studies (`python -m finetune.study`)."""

from .surgery import adapt_channels

__all__ = ["adapt_channels", "load_model"]


def load_model(path):
    """A fine-tuned model from a folder or Hub repo id: scOT, scOT + spectral head, or scOT + LoRA adapters."""
    from .evaluate import load_model as _load

    return _load(path)
