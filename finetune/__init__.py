"""Fine-tuning scOT on new PDEs (in progress: channel surgery is here; strategies and the CLI follow)."""

from .surgery import adapt_channels

__all__ = ["adapt_channels"]
