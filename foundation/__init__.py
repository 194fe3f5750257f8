"""PDE foundation models: the scOT model, its config, losses, data and built-in solvers."""

from transformers import AutoConfig, AutoModel

from .configuration_scot import ScOTConfig
from .modeling_scot import ScOT, ScOTFeatures, ScOTOutput, fourier_resample

__version__ = "0.1.0"

# Our own checkpoints (model_type "scot") load through the Auto classes once this package is imported.
# The published Poseidon configs say "swinv2": they go through ScOT.from_pretrained, never through a
# hijacked "swinv2" entry of the Auto registry.
AutoConfig.register(ScOTConfig.model_type, ScOTConfig, exist_ok=True)
AutoModel.register(ScOTConfig, ScOT, exist_ok=True)

__all__ = ["ScOT", "ScOTConfig", "ScOTFeatures", "ScOTOutput", "fourier_resample", "__version__"]
