"""Configuration of the scalable multiscale operator transformer (scOT).

`ScOTConfig` is a transformers config (`model_type = "scot"`). It also reads configs in the reference
(Poseidon) layout as they are: the published checkpoints (`model_type: swinv2`, `architectures:
["SwinForPDE"]`) and what the reference's own `save_pretrained` writes (`architectures: ["ScOT"]`),
recognised by their scOT-only keys, with the reference's semantics and the published defaults for what
those configs do not say (channels, normalisation, time scale, resampling).
"""

from __future__ import annotations

import difflib
import logging
import os
from typing import Any, ClassVar

from transformers import PretrainedConfig

logger = logging.getLogger(__name__)

# What the published Poseidon checkpoints were trained on (the reference keeps this in its data code).
POSEIDON_CHANNELS = ["rho", "u", "v", "p"]
POSEIDON_MEAN = [0.80, 0.0, 0.0, 0.0]
POSEIDON_STD = [0.31, 0.391, 0.356, 0.185]

# Geometries. `tiny` is the geometry of the reference fixture `scot-tiny`; T, B, L are the published ones.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(image_size=32, patch_size=2, embed_dim=24, depths=[2, 2, 2, 2], window_size=4),
    "T": dict(image_size=128, patch_size=4, embed_dim=48, depths=[4, 4, 4, 4], window_size=16),
    "B": dict(image_size=128, patch_size=4, embed_dim=96, depths=[8, 8, 8, 8], window_size=16),
    "L": dict(image_size=128, patch_size=4, embed_dim=192, depths=[8, 8, 8, 8], window_size=16),
}

# Keys that configs written by the reference (or by transformers itself) carry and that are derived or
# informational here. They are accepted silently; any other unknown key is checked for typos.
_KNOWN_EXTRA_KEYS = {"hidden_size", "num_layers", "model_type", "torch_dtype", "_name_or_path", "name_or_path"}

_RESAMPLING_MODES = ("fourier", "none")
_NORM_INITS = ("reference", "identity")


def _as_list(value: Any) -> Any:
    return list(value) if isinstance(value, (tuple, list)) else value


class ScOTConfig(PretrainedConfig):
    """Configuration of `ScOT`.

    Geometry fields follow the reference (Poseidon) names so that published configs load unchanged.
    Fields beyond the reference's carry the metadata a checkpoint needs to be used on physical data.

    Args:
        image_size: Grid the model was built for, an int (square) or (H, W).
        patch_size: Side of the square patches of the patch embedding.
        num_channels: Number of input channels.
        num_out_channels: Number of output channels.
        embed_dim: Token width of the first stage; stage s has width embed_dim * 2**s.
        depths: Number of transformer blocks per stage.
        num_heads: Attention heads per stage.
        skip_connections: ConvNeXt blocks applied to each stage's skip (0 = identity).
        window_size: Side of the attention windows.
        pretrained_window_sizes: SwinV2 window used to normalise position coordinates (0 = the stage's own).
        mlp_ratio: Hidden width of the block MLPs relative to the token width.
        qkv_bias: Bias on the query and value projections (the key never has one, as in SwinV2).
        hidden_dropout_prob: Dropout after the attention output and the MLP.
        attention_probs_dropout_prob: Dropout on the attention probabilities.
        drop_path_rate: Stochastic depth rate, increasing linearly over the blocks.
        hidden_act: Activation of the MLPs; only the exact (erf) "gelu" is supported.
        use_absolute_embeddings: Not supported (the published models do not use them).
        initializer_range: Standard deviation of the normal initialisation of linear and conv weights.
        layer_norm_eps: Epsilon of the layer norms (the embedding norm always uses 1e-5, as the reference).
        use_conditioning: Time-conditioned layer norms (gain and bias affine in the lead time).
        learn_residual: Add the input to the prediction (needs use_conditioning, as in the reference).
        residual_model: Skip-block type; only "convnext" is supported.
        p: Norm of the training loss (1 or 2).
        channel_slice_list_normalized_loss: Channel-group boundaries of the relative loss, e.g. [0, 1, 3, 4].
        channel_names: Names of the input channels (the toolkit's channel vocabulary).
        output_channel_names: Names of the output channels (defaults to the first num_out_channels inputs).
        input_mean: Per input channel mean in physical units (normalisation).
        input_std: Per input channel standard deviation in physical units.
        output_mean: Per output channel mean in physical units.
        output_std: Per output channel standard deviation in physical units.
        time_scale: Physical time that maps to lead time 1.0.
        max_lead_time: The largest lead time (model units) of the training pairs, recorded by the trainers
            (None: not recorded; all2all over whole trajectories trains up to 1.0). Rollouts past it chain jumps.
        rollout_lead_time: The lead time of one step of rollout training (model units), when the model had it
            (the step whose chains that training stabilised; rollouts still jump by `max_lead_time` by default).
        norm_init: How a new model's time-conditioned norms start. "reference": every Linear normal(0,
            initializer_range), so each gain starts near 0.02 * t and every branch, and the output, near 0 (the
            reference's init; it costs the first few hundred steps of a small budget). "identity": gain 1 and bias
            0 at every lead time (a plain LayerNorm; the model learns the dependence on t). Loaded weights are
            unaffected either way.
        input_resampling: "fourier" resamples inputs of another grid to image_size (the reference
            behaviour); "none" runs natively on the given grid.
    """

    model_type: ClassVar[str] = "scot"
    attribute_map: ClassVar[dict[str, str]] = {"num_attention_heads": "num_heads"}

    image_size: int | list[int] | tuple[int, int] = 128
    patch_size: int = 4
    num_channels: int = 4
    num_out_channels: int = 4
    embed_dim: int = 48
    depths: list[int] | tuple[int, ...] = (4, 4, 4, 4)
    num_heads: list[int] | tuple[int, ...] = (3, 6, 12, 24)
    skip_connections: list[int] | tuple[int, ...] = (2, 2, 2, 0)
    window_size: int = 16
    pretrained_window_sizes: list[int] | tuple[int, ...] | None = None
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    drop_path_rate: float = 0.0
    hidden_act: str = "gelu"
    use_absolute_embeddings: bool = False
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    use_conditioning: bool = True
    learn_residual: bool = False
    residual_model: str = "convnext"
    p: int = 1
    channel_slice_list_normalized_loss: list[int] | tuple[int, ...] | None = None
    channel_names: list[str] | None = None
    output_channel_names: list[str] | None = None
    input_mean: list[float] | None = None
    input_std: list[float] | None = None
    output_mean: list[float] | None = None
    output_std: list[float] | None = None
    time_scale: float = 1.0
    max_lead_time: float | None = None
    rollout_lead_time: float | None = None
    input_resampling: str = "fourier"
    norm_init: str = "reference"

    def __post_init__(self, **kwargs: Any) -> None:
        self._check_unknown_keys(kwargs)
        for key in ("model_type", "hidden_size", "num_layers"):  # derived or fixed by the class
            kwargs.pop(key, None)
        for name in (
            "depths",
            "num_heads",
            "skip_connections",
            "pretrained_window_sizes",
            "image_size",
            "channel_slice_list_normalized_loss",
            "channel_names",
            "output_channel_names",
            "input_mean",
            "input_std",
            "output_mean",
            "output_std",
        ):
            setattr(self, name, _as_list(getattr(self, name)))
        if self.pretrained_window_sizes is None:
            self.pretrained_window_sizes = [0] * len(self.depths)
        if self.channel_names is None:
            self.channel_names = [f"c{i}" for i in range(self.num_channels)]
        if self.output_channel_names is None:
            known = self.channel_names[: self.num_out_channels]
            self.output_channel_names = known + [f"o{i}" for i in range(len(known), self.num_out_channels)]
        if self.channel_slice_list_normalized_loss is None:
            self.channel_slice_list_normalized_loss = list(range(self.num_out_channels + 1))
        self.input_mean = self.input_mean if self.input_mean is not None else [0.0] * self.num_channels
        self.input_std = self.input_std if self.input_std is not None else [1.0] * self.num_channels
        self.output_mean = self.output_mean if self.output_mean is not None else [0.0] * self.num_out_channels
        self.output_std = self.output_std if self.output_std is not None else [1.0] * self.num_out_channels
        # Derived, kept as attributes because the reference configs (and transformers) expect them.
        self.num_layers = len(self.depths)
        self.hidden_size = int(self.embed_dim * 2 ** (len(self.depths) - 1))
        super().__post_init__(**kwargs)
        self.check()

    @classmethod
    def _check_unknown_keys(cls, kwargs: dict[str, Any]) -> None:
        fields = set(cls.__dataclass_fields__)
        for key in kwargs:
            if key in _KNOWN_EXTRA_KEYS or key.startswith("_"):
                continue
            close = difflib.get_close_matches(key, sorted(fields), n=1, cutoff=0.8)
            if close:
                raise ValueError(f"ScOTConfig: unknown option {key!r}; did you mean {close[0]!r}?")
            logger.warning("ScOTConfig: unknown option %r is kept but not used by the model", key)

    # ------------------------------------------------------------------ validation
    @property
    def grid(self) -> tuple[int, int]:
        """The (H, W) grid the model was built for."""
        size = self.image_size
        return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def check(self) -> None:
        """Raise a `ValueError` naming the option when the configuration cannot build a model."""
        n = len(self.depths)

        def fail(message: str) -> None:
            raise ValueError(f"ScOTConfig: {message}")

        if isinstance(self.image_size, list) and len(self.image_size) != 2:
            fail(f"image_size must be an int or (H, W), got {self.image_size}")
        for name in ("num_heads", "skip_connections", "pretrained_window_sizes"):
            if len(getattr(self, name)) != n:
                fail(f"{name} has {len(getattr(self, name))} entries, expected {n} (one per stage, as depths)")
        for s, heads in enumerate(self.num_heads):
            dim = self.embed_dim * 2**s
            if dim % heads:
                fail(f"stage {s} width {dim} is not divisible by num_heads[{s}]={heads}")
        if self.use_absolute_embeddings:
            fail("use_absolute_embeddings=True is not supported (no published scOT uses it)")
        if self.residual_model != "convnext":
            fail(f"residual_model={self.residual_model!r} is not supported; only 'convnext'")
        if self.hidden_act != "gelu":
            fail(f"hidden_act={self.hidden_act!r} is not supported; only 'gelu' (exact erf)")
        if self.learn_residual and not self.use_conditioning:
            fail("learn_residual=True needs use_conditioning=True (as in the reference)")
        if self.p not in (1, 2):
            fail(f"p must be 1 or 2, got {self.p}")
        if self.input_resampling not in _RESAMPLING_MODES:
            fail(f"input_resampling={self.input_resampling!r}; expected one of {_RESAMPLING_MODES}")
        if self.norm_init not in _NORM_INITS:
            fail(f"norm_init={self.norm_init!r}; expected one of {_NORM_INITS}")
        if not self.time_scale > 0:
            fail(f"time_scale must be positive, got {self.time_scale}")
        for name, want in (
            ("channel_names", self.num_channels),
            ("input_mean", self.num_channels),
            ("input_std", self.num_channels),
            ("output_channel_names", self.num_out_channels),
            ("output_mean", self.num_out_channels),
            ("output_std", self.num_out_channels),
        ):
            got = len(getattr(self, name))
            if got != want:
                fail(f"{name} has {got} entries, expected {want}")
        if any(not s > 0 for s in self.input_std + self.output_std):
            fail("input_std and output_std must be positive")
        groups = self.channel_slice_list_normalized_loss
        if groups[0] != 0 or groups[-1] != self.num_out_channels or sorted(set(groups)) != groups:
            fail(f"channel_slice_list_normalized_loss={groups} must rise from 0 to num_out_channels")

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ScOTConfig:
        """A config of one of the geometries `tiny`, `T`, `B`, `L`.

        Without channel overrides it describes the published Poseidon inputs (rho, u, v, p with the
        published statistics), so that a preset model can load and be compared with Poseidon weights.
        """
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
        values: dict[str, Any] = dict(num_heads=[3, 6, 12, 24], skip_connections=[2, 2, 2, 0])
        values.update(PRESETS[name])
        if "channel_names" not in overrides and "num_channels" not in overrides:
            values.update(channel_names=POSEIDON_CHANNELS, input_mean=POSEIDON_MEAN, input_std=POSEIDON_STD)
            if "output_channel_names" not in overrides and "num_out_channels" not in overrides:
                values.update(
                    output_channel_names=POSEIDON_CHANNELS,
                    output_mean=POSEIDON_MEAN,
                    output_std=POSEIDON_STD,
                    channel_slice_list_normalized_loss=[0, 1, 3, 4],
                )
        values.update(overrides)
        if "channel_names" in overrides and "num_channels" not in overrides:
            values["num_channels"] = len(overrides["channel_names"])
        if "output_channel_names" in overrides and "num_out_channels" not in overrides:
            values["num_out_channels"] = len(overrides["output_channel_names"])
        return cls(**values)

    @classmethod
    def get_config_dict(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """Read a config.json, translating the published Poseidon layout into ours."""
        try:
            config_dict, kwargs = super().get_config_dict(pretrained_model_name_or_path, **kwargs)
        except OSError as error:  # name the repo or folder: transformers' offline message does not
            if str(pretrained_model_name_or_path) in str(error):
                raise
            raise OSError(f"{pretrained_model_name_or_path}: {error}") from error
        if not config_dict:  # transformers 5 falls back to the class defaults when config.json is missing
            raise OSError(
                f"{pretrained_model_name_or_path}: no config.json found; a scOT checkpoint needs its config "
                f"(geometry, channels, normalisation) and defaults are never guessed"
            )
        return translate_config_dict(config_dict, source=str(pretrained_model_name_or_path)), kwargs

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any):
        """As transformers', with invalid values reported against the config file they came from."""
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except ValueError as error:
            if str(pretrained_model_name_or_path) in str(error):
                raise
            raise ValueError(f"{pretrained_model_name_or_path}/config.json: {error}") from error

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        return super().from_dict(translate_config_dict(dict(config_dict), source="config dict"), **kwargs)


# Keys that only the reference's `ScOTConfig` writes (a plain transformers Swinv2Config has none of them).
# A `swinv2` config that carries them is a scOT checkpoint, whatever its `architectures` say: the published
# Hub configs name "SwinForPDE", the reference's own `save_pretrained` writes "ScOT".
SCOT_ONLY_KEYS = (
    "use_conditioning",
    "residual_model",
    "skip_connections",
    "num_out_channels",
    "learn_residual",
    "channel_slice_list_normalized_loss",
)

# The reference `ScOTConfig.__init__` defaults (camlab-ethz/poseidon, scOT/model.py), for keys a reference-layout
# config leaves out. The reference's save_pretrained writes every one of them; hand-written configs may not.
REFERENCE_DEFAULTS: dict[str, Any] = dict(
    image_size=224,
    patch_size=4,
    num_channels=3,
    num_out_channels=1,
    embed_dim=96,
    depths=[2, 2, 6, 2],
    num_heads=[3, 6, 12, 24],
    window_size=7,
    mlp_ratio=4.0,
    qkv_bias=True,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
    drop_path_rate=0.1,
    hidden_act="gelu",
    use_absolute_embeddings=False,
    initializer_range=0.02,
    layer_norm_eps=1e-5,
    p=1,
    residual_model="convnext",
    use_conditioning=False,
    learn_residual=False,
)


def is_poseidon_config(config_dict: dict[str, Any]) -> bool:
    """True for configs in the reference (Poseidon) layout: `model_type` swinv2 plus scOT-only keys.

    That covers the published Hub checkpoints (`architectures` ["SwinForPDE"]) and what the reference's own
    `save_pretrained` writes (`architectures` ["ScOT"]); a plain Swinv2 image model has none of these keys.
    """
    return config_dict.get("model_type") == "swinv2" and any(key in config_dict for key in SCOT_ONLY_KEYS)


def _translate_reference(config_dict: dict[str, Any], source: str) -> dict[str, Any]:
    """Our config dict for a reference-layout config, with the reference's own semantics."""
    out = {**REFERENCE_DEFAULTS, **config_dict}
    out["model_type"] = ScOTConfig.model_type
    out.pop("architectures", None)  # "SwinForPDE" / "ScOT": our class writes its own
    stages = len(out["depths"])
    # The reference's ScOTConfig ignores the stored value and always uses (0, 0, 0, 0), indexed per stage: a
    # 3-stage config keeps a 4-entry list, a 5-stage one would not even run there. 0 = the stage's own window.
    stored = out.get("pretrained_window_sizes")
    if stored is not None and any(stored):
        logger.warning("%s: pretrained_window_sizes=%s ignored, as the reference ignores it (uses 0)", source, stored)
    out["pretrained_window_sizes"] = [0] * stages
    # The reference builds one skip entry per stage from the list (True means one ConvNeXt block, False none).
    skips = out.get("skip_connections")
    if isinstance(skips, (list, tuple)):
        if len(skips) != stages:
            raise ValueError(
                f"{source}: skip_connections has {len(skips)} entries for {stages} stages; the reference model "
                f"needs one per stage (its default [True, True, True] only fits 3 stages)"
            )
        out["skip_connections"] = [int(v) for v in skips]
    # The reference silently drops learn_residual without conditioning; so do we (it never ran with it).
    if not out.get("use_conditioning", False):
        out["learn_residual"] = False
    # None means "one absolute loss over all channels" in the reference: one group.
    if out.get("channel_slice_list_normalized_loss") is None:
        out["channel_slice_list_normalized_loss"] = [0, out["num_out_channels"]]
    # The reference keeps channel names and statistics in its data code, not in the config. Four channels are
    # Poseidon's (rho, u, v, p with the published statistics); any other count gets generic names (c0.., o0..)
    # and identity statistics (mean 0, std 1): the caller's data must then be normalised as it was in training.
    n_in, n_out = out["num_channels"], out["num_out_channels"]
    if n_in == len(POSEIDON_CHANNELS):
        out.setdefault("channel_names", POSEIDON_CHANNELS)
        out.setdefault("input_mean", POSEIDON_MEAN)
        out.setdefault("input_std", POSEIDON_STD)
    if n_out == len(POSEIDON_CHANNELS):
        out.setdefault("output_channel_names", POSEIDON_CHANNELS)
        out.setdefault("output_mean", POSEIDON_MEAN)
        out.setdefault("output_std", POSEIDON_STD)
    out.setdefault("time_scale", 1.0)
    out.setdefault("input_resampling", "fourier")
    return out


def translate_config_dict(config_dict: dict[str, Any], source: str) -> dict[str, Any]:
    """Return our config dict for `config_dict`, or raise `ValueError` naming `source` if it is not scOT."""
    model_type = config_dict.get("model_type")
    if is_poseidon_config(config_dict):
        return _translate_reference(config_dict, source)
    if model_type in (None, ScOTConfig.model_type):
        return config_dict
    hint = " (a plain Swinv2 image model: it has none of the scOT-only keys)" if model_type == "swinv2" else ""
    raise ValueError(
        f"{source}: config has model_type {model_type!r}{hint}; expected 'scot' or a Poseidon/reference scOT "
        f"config (model_type 'swinv2' with scOT keys such as 'use_conditioning')"
    )
