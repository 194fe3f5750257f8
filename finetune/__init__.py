"""Fine-tuning scOT on new PDEs: strategies full | head | lora | refiner (`python -m finetune`), channel surgery,
evaluation (`python -m finetune.evaluate`) and sample-efficiency studies (`python -m finetune.study`)."""

from .loading import load_model
from .surgery import adapt_channels

__all__ = ["adapt_channels", "load_model"]
