"""The baselines a pretrained model must beat (`finetune.benchmark`):

- `FNOBaseline`: neuraloperator's FNO (a real dependency, the `[baselines]` extra), trained from scratch through the
  same loop as scOT (`--strategy fno`), the lead time given as one more constant input channel;
- `Persistence`: the evolving channels at t_i returned as the prediction for t_j (time-dependent tasks);
- `TrainingMean`: the mean target field of the training pairs (steady tasks).

Each carries the data description of the scOT config it was built from (channel names, statistics, channel
groups, time scale) as `config`, so that `foundation.evaluation` evaluates it exactly as it evaluates scOT.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from foundation import ScOTConfig
from foundation.evaluation import held_state
from foundation.losses import relative_lp_loss
from foundation.modeling_scot import ScOTOutput

FNO_CONFIG = "fno_config.json"  # beside config.json: marks a folder as an FNO baseline
WEIGHTS = "model.safetensors"
INSTALL_BASELINES = 'pip install -e ".[baselines]"'  # pyproject.toml's extra with neuraloperator


class MissingExtra(ModuleNotFoundError, ValueError):
    """An optional dependency is not installed. Still a ModuleNotFoundError (code that catches ImportError to fall
    back keeps working), and a ValueError so that the entry points (`foundation.cli.guarded`) end with its one-line
    message, which says what to install, instead of a traceback."""


def fno_class() -> type[nn.Module]:
    """neuraloperator's `FNO` class.

    Raises:
        MissingExtra: neuraloperator (or a module it imports) is missing: one line naming the extra to install.
    """
    try:
        from neuralop.models import FNO
    except ImportError as error:  # also a broken install: an incompatible version, a missing dependency of it
        raise MissingExtra(
            f"the FNO baseline needs neuraloperator, the [baselines] extra, which cannot be imported ({error}); "
            f"install it with {INSTALL_BASELINES} (from the repository root)",
            name=getattr(error, "name", None),
        ) from None
    return FNO


def _loss(config, out: Tensor, labels: Tensor | None, channel_mask: Tensor | None) -> Tensor | None:
    if labels is None:
        return None
    groups = config.channel_slice_list_normalized_loss
    return relative_lp_loss(out, labels, groups, p=config.p, channel_mask=channel_mask)


class _RealImag(nn.Module):
    """A complex spectral weight held as two real parameters. The loop's fused AdamW (its device-side skip of
    non-finite steps needs it) takes no complex parameters; torch's Adam treats a complex parameter as its real and
    imaginary parts anyway, so the optimisation is the same. Indexing returns the complex tensor, as
    neuraloperator's SpectralConv expects of its weight."""

    def __init__(self, weight: Tensor):
        super().__init__()
        self.real = nn.Parameter(weight.real.detach().clone())
        self.imag = nn.Parameter(weight.imag.detach().clone())

    @property
    def shape(self) -> torch.Size:
        return self.real.shape

    def __getitem__(self, index) -> Tensor:
        return torch.complex(self.real, self.imag)[index]


class FNOBaseline(nn.Module):
    """neuraloperator's FNO on normalised fields: inputs + a lead-time channel -> outputs, scOT's loss and output."""

    def __init__(self, config: ScOTConfig, modes: int = 12, width: int = 32, layers: int = 4):
        FNO = fno_class()  # the class, named as neuraloperator names it
        super().__init__()
        self.config = config
        self.fno_settings = {"modes": modes, "width": width, "layers": layers}
        self.fno = FNO(
            n_modes=(modes, modes),
            in_channels=config.num_channels + 1,  # + the lead time, as a constant field
            out_channels=config.num_out_channels,
            hidden_channels=width,
            n_layers=layers,
        )
        for conv in self.fno.fno_blocks.convs:
            conv.weight = _RealImag(conv.weight.to_tensor())

    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        for key in [k for k, v in state.items() if not isinstance(v, Tensor)]:
            del state[key]  # neuraloperator's version metadata (a dict): checkpoints and safetensors hold tensors
        return state

    def forward(self, pixel_values: Tensor, time: Tensor, labels=None, channel_mask=None, **_) -> ScOTOutput:
        lead = time.to(pixel_values.dtype).view(-1, 1, 1, 1).expand(-1, 1, *pixel_values.shape[-2:])
        out = self.fno(torch.cat([pixel_values, lead], dim=1))
        return ScOTOutput(loss=_loss(self.config, out, labels, channel_mask), output=out)

    def save_pretrained(self, folder: str | Path, safe_serialization: bool = True) -> None:
        """config.json (the data description), fno_config.json and model.safetensors."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(folder)
        (folder / FNO_CONFIG).write_text(json.dumps({"library": "neuraloperator", **self.fno_settings}, indent=2))
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}, folder / WEIGHTS)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> FNOBaseline:
        folder = Path(folder)
        settings = json.loads((folder / FNO_CONFIG).read_text())
        settings.pop("library", None)
        model = cls(ScOTConfig.from_pretrained(folder), **settings)
        model.load_state_dict(load_file(folder / WEIGHTS))
        return model.eval()


class Persistence(nn.Module):
    """Predicts that nothing changes: each output channel is its input at t_i (the floor any model must beat)."""

    def __init__(self, config: ScOTConfig):
        super().__init__()
        self.config = config
        missing = [c for c in config.output_channel_names if c not in config.channel_names]
        if missing:
            raise ValueError(f"persistence needs every output among the inputs; {missing} are not")
        self.register_buffer("out_mean", torch.tensor(config.output_mean)[:, None, None], persistent=False)
        self.register_buffer("out_std", torch.tensor(config.output_std)[:, None, None], persistent=False)

    def forward(self, pixel_values: Tensor, time: Tensor, labels=None, channel_mask=None, **_) -> ScOTOutput:
        physical = held_state(self.config, pixel_values.float())  # through physical units: stats may differ
        out = (physical - self.out_mean) / self.out_std
        return ScOTOutput(loss=_loss(self.config, out, labels, channel_mask), output=out)


class TrainingMean(nn.Module):
    """Predicts the mean normalised target field of the training pairs, whatever the input."""

    def __init__(self, config: ScOTConfig, mean_field: Tensor):
        super().__init__()
        self.config = config
        self.register_buffer("mean_field", mean_field.float(), persistent=False)

    @classmethod
    def fit(cls, config: ScOTConfig, train_set) -> TrainingMean:
        total = None
        for k in range(len(train_set)):
            labels = train_set[k]["labels"].double()
            total = labels if total is None else total + labels
        return cls(config, total / max(len(train_set), 1))

    def forward(self, pixel_values: Tensor, time: Tensor, labels=None, channel_mask=None, **_) -> ScOTOutput:
        out = self.mean_field.to(pixel_values.device).expand(len(pixel_values), *self.mean_field.shape)
        return ScOTOutput(loss=_loss(self.config, out, labels, channel_mask), output=out)
