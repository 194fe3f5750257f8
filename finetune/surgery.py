"""Channel surgery by name: a pretrained scOT adapted to a new PDE's input and output channels.

The reference re-initialises the whole embedding and recovery when the channel count changes. Here the
weights of channels the model knows are kept (matched by name), and new channels start where they cannot
disturb the known ones: new input channels with zero embedding weights, new output channels with fresh
recovery weights and no mixing into the known outputs. With the known channels a superset of the old ones,
the known outputs are exactly the pretrained model's at step 0 (`_keep_known_channels_exact`). Known outputs
keep their loss/metric channel groups (`keep_groups`); a new output is a group of its own. The body (everything
between embedding and recovery) is copied unchanged; fine-tuning wraps the model, it never edits the model file.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from foundation import ScOT, ScOTConfig


def keep_groups(old_config, output_channel_names: list[str]) -> list[int]:
    """Loss/metric channel-group boundaries for new outputs, keeping the old groups by name.

    A known output keeps the group it had (Poseidon's rho | u, v | p stay three groups when the channels are
    unchanged or reordered with the group members side by side); a new output forms a group of its own. Groups
    are contiguous slices, so members of one old group that end up apart (e.g. outputs u, p, v) form one group
    per contiguous run: a group is never stretched over a channel of another.
    """
    old_names, bounds = old_config.output_channel_names, old_config.channel_slice_list_normalized_loss
    old_group = {name: g for g in range(len(bounds) - 1) for name in old_names[bounds[g] : bounds[g + 1]]}
    labels = [old_group.get(name, ("new", name)) for name in output_channel_names]
    out = [0]
    for i in range(1, len(labels)):
        if labels[i] != labels[i - 1] or isinstance(labels[i], tuple):
            out.append(i)
    out.append(len(labels))
    return out


def adapt_channels(
    model: ScOT,
    channel_names: list[str],
    output_channel_names: list[str],
    input_stats: dict[str, tuple[float, float]] | None = None,
    output_stats: dict[str, tuple[float, float]] | None = None,
    seed: int = 0,
    aliases: dict[str, str | None] | None = None,
) -> ScOT:
    """A new ScOT with `channel_names` in and `output_channel_names` out, sharing every weight it can.

    With the known input channels a superset of the model's, the adapted model's known outputs are exactly the
    model's (`_keep_known_channels_exact`).

    Args:
        model: The pretrained model (left untouched).
        channel_names: The new PDE's input channels (state then static fields).
        output_channel_names: The new PDE's output channels.
        input_stats: (mean, std) per new input channel name; known channels keep the model's.
        output_stats: (mean, std) per new output channel name; known channels keep the model's.
        seed: Initialisation of the new output channels' recovery weights.
        aliases: {new channel: pretrained channel it starts from, or None for a new channel}: names alone can
            mislead (a scalar field called u would otherwise start from the x-velocity's rows).

    Returns:
        The adapted model.

    Raises:
        ValueError: An alias names a channel of neither the data nor the pretrained model.
    """
    old = model.config
    aliases = dict(aliases or {})
    _check_aliases(aliases, old, channel_names, output_channel_names)

    def known(name: str) -> str | None:
        """The pretrained channel whose weights `name` starts from (None: a new channel)."""
        return aliases[name] if name in aliases else name

    new = ScOT(_adapted_config(old, channel_names, output_channel_names, input_stats, output_stats, known))
    state = dict(model.state_dict())
    _copy_body(new, state)
    with torch.no_grad():
        _start_new_channels(new, old.initializer_range, seed)
        _keep_known_channels_exact(
            new,
            state,
            in_map=_index_map(channel_names, old.channel_names, known),
            out_map=_index_map(output_channel_names, old.output_channel_names, known),
        )
    return new


def _check_aliases(
    aliases: dict[str, str | None], old: ScOTConfig, channel_names: list[str], output_channel_names: list[str]
) -> None:
    """Refuse an alias from a channel the data lacks or to a channel the pretrained model lacks (a typo)."""
    for name, target in aliases.items():
        if name not in channel_names and name not in output_channel_names:
            raise ValueError(f"channel map: {name!r} is not a channel of the data ({', '.join(channel_names)})")
        if target is not None and target not in old.channel_names and target not in old.output_channel_names:
            raise ValueError(
                f"channel map: {target!r} is not a channel of the pretrained model ({', '.join(old.channel_names)})"
            )


def _channel_stats(
    names: list[str],
    old_names: list[str],
    old_mean: list[float],
    old_std: list[float],
    given: dict[str, tuple[float, float]] | None,
    known: Callable[[str], str | None],
) -> tuple[list[float], list[float]]:
    """(mean, std) per channel: given ones first, else the pretrained channel's it starts from, else (0, 1)."""
    mean, std = [], []
    for name in names:
        if given and name in given:
            m, s = given[name]
        elif known(name) in old_names:
            m, s = old_mean[old_names.index(known(name))], old_std[old_names.index(known(name))]
        else:
            m, s = 0.0, 1.0
        mean.append(float(m))
        std.append(float(s))
    return mean, std


def _adapted_config(
    old: ScOTConfig,
    channel_names: list[str],
    output_channel_names: list[str],
    input_stats: dict[str, tuple[float, float]] | None,
    output_stats: dict[str, tuple[float, float]] | None,
    known: Callable[[str], str | None],
) -> ScOTConfig:
    """The pretrained config with the new channels, their statistics and loss groups; geometry unchanged."""
    config = copy.deepcopy(old)
    config.channel_names, config.output_channel_names = list(channel_names), list(output_channel_names)
    config.num_channels, config.num_out_channels = len(channel_names), len(output_channel_names)
    config.input_mean, config.input_std = _channel_stats(
        channel_names, old.channel_names, old.input_mean, old.input_std, input_stats, known
    )
    config.output_mean, config.output_std = _channel_stats(
        output_channel_names, old.output_channel_names, old.output_mean, old.output_std, output_stats, known
    )
    config.channel_slice_list_normalized_loss = keep_groups(old, [known(n) or f"new:{n}" for n in output_channel_names])
    config.check()
    return config


def _index_map(names: list[str], old_names: list[str], known: Callable[[str], str | None]) -> list[tuple[int, int]]:
    """(new index, pretrained index) of each channel that starts from a pretrained one."""
    return [(i, old_names.index(known(n))) for i, n in enumerate(names) if known(n) in old_names]


def _copy_body(new: ScOT, state: dict[str, torch.Tensor]) -> None:
    """Load everything between the embedding and the recovery unchanged (their shapes do not depend on channels)."""
    own = new.state_dict()
    body = {
        k: v
        for k, v in state.items()
        if k in own and own[k].shape == v.shape and not k.startswith(("embeddings.patch_embeddings", "patch_recovery"))
    }
    new.load_state_dict(body, strict=False)


def _start_new_channels(new: ScOT, initializer_range: float, seed: int) -> None:
    """Every output channel's recovery as a new one's: fresh seeded weights, zero bias, unmixed (its own recovery
    only). `_keep_known_channels_exact` then overwrites the known outputs."""
    recovery, mixup = new.patch_recovery.projection, new.patch_recovery.mixup
    generator = torch.Generator().manual_seed(seed)
    recovery.weight.copy_(torch.randn(recovery.weight.shape, generator=generator) * initializer_range)
    recovery.bias.zero_()
    mixup.weight.zero_()
    for i in range(mixup.weight.shape[0]):
        mixup.weight[i, i, 2, 2] = 1.0  # the centre tap of the 5 x 5 kernel: the identity


def _keep_known_channels_exact(
    new: ScOT, state: dict[str, torch.Tensor], in_map: list[tuple[int, int]], out_map: list[tuple[int, int]]
) -> None:
    """The exactness guarantee: with the known inputs a superset of the pretrained ones, the known outputs of
    `new` are exactly those of the model `state` came from, whatever the new inputs hold.

    It holds layer by layer (the body in between is a copy, `_copy_body`):

    - embedding: a known input keeps its weights and the bias is kept; a new input gets zero weights, so it adds
      nothing to the tokens until fine-tuning moves it;
    - recovery projection: a known output keeps its weights and bias;
    - recovery mixup (it mixes the outputs): a known output mixes the known outputs with the pretrained weights
      and nothing of the new outputs, so fresh recovery weights of a new output cannot reach it.

    Args:
        new: The adapted model, its new channels already started (`_start_new_channels`).
        state: The pretrained model's state dict.
        in_map: (new index, pretrained index) of the known inputs.
        out_map: (new index, pretrained index) of the known outputs.
    """
    embed = new.embeddings.patch_embeddings.projection
    embed.weight.zero_()  # the columns of new inputs stay zero
    embed.bias.copy_(state["embeddings.patch_embeddings.projection.bias"])
    for i, j in in_map:
        embed.weight[:, i] = state["embeddings.patch_embeddings.projection.weight"][:, j]
    recovery, mixup = new.patch_recovery.projection, new.patch_recovery.mixup
    for i, j in out_map:
        recovery.weight[:, i] = state["patch_recovery.projection.weight"][:, j]
        recovery.bias[i] = state["patch_recovery.projection.bias"][j]
        mixup.weight[i] = 0.0  # no weight from a new output, whatever `_start_new_channels` put there
        for k, m in out_map:
            mixup.weight[i, k] = state["patch_recovery.mixup.weight"][j, m]


def predict_increments(model: ScOT) -> ScOT:
    """The model with the reference's `learn_residual` on: its output is the (resampled) input's evolving channels
    plus what the patch recovery makes, and the recovery's projection starts at zero, so at step 0 the model is
    persistence (u(t + dt) = u(t)) and fine-tuning learns the increment. The pretrained projection decoded whole
    fields, not their change over a lead time: kept, it would add a second copy of the state. A model that
    already learns the residual (a checkpoint fine-tuned this way) is returned as it is.
    """
    config = model.config
    if config.learn_residual:
        return model
    if not config.use_conditioning:
        raise ValueError("--learn_residual needs a model with time-conditioned norms (use_conditioning), as in scOT")
    ins, outs = config.channel_names[: config.num_out_channels], config.output_channel_names
    if list(ins) != list(outs):
        raise ValueError(
            f"--learn_residual adds input channels {list(ins)} to outputs {list(outs)}: the first inputs must be "
            "the outputs, in order"
        )
    if config.input_mean is not None and (
        list(config.input_mean[: len(outs)]) != list(config.output_mean)
        or list(config.input_std[: len(outs)]) != list(config.output_std)
    ):
        raise ValueError("--learn_residual needs the outputs normalised as the inputs they add to (same mean/std)")
    config.learn_residual = True
    with torch.no_grad():
        model.patch_recovery.projection.weight.zero_()
        model.patch_recovery.projection.bias.zero_()
    return model
