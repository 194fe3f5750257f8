"""The scOT model: parity with the reference fixtures, checkpoint layout, grids, precision, compile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from foundation import ScOT, ScOTConfig, fourier_resample
from foundation.modeling_scot import _GEOMETRY_CACHE, _shift_mask, _WindowAttention


def tiny(**overrides) -> ScOT:
    return ScOT(ScOTConfig.from_preset("tiny", **overrides)).eval()


def batch(b=2, c=4, h=32, w=32):
    return torch.randn(b, c, h, w), torch.rand(b)


def _fixture_cases():
    from conftest import fixture_folder, fixture_names

    cases = []
    for name in fixture_names():
        for key in load_file(fixture_folder(name) / "io.safetensors").keys():
            if key.startswith("input_"):
                cases.append((name, key.split("_", 1)[1]))
    return cases or [("missing", "0")]


# ------------------------------------------------------------------------------------------ reference parity
@pytest.mark.parametrize("name,res", _fixture_cases())
def test_reproduces_reference_outputs(name: str, res: str):
    from conftest import fixture_folder

    folder = fixture_folder(name)
    model = ScOT.from_pretrained(folder).eval()
    io = load_file(folder / "io.safetensors")
    with torch.no_grad():
        out = model(pixel_values=io[f"input_{res}"], time=io[f"time_{res}"]).output
    expected = io[f"output_{res}"]
    assert out.shape == expected.shape
    assert (out - expected).abs().max().item() <= 1e-5


def test_published_config_gets_published_defaults():
    from conftest import fixture_folder

    config = ScOTConfig.from_pretrained(fixture_folder("scot-mini"))
    assert config.model_type == "scot"
    assert config.channel_names == ["rho", "u", "v", "p"]
    assert config.input_mean == [0.80, 0.0, 0.0, 0.0]
    assert config.input_std == [0.31, 0.391, 0.356, 0.185]
    assert config.time_scale == 1.0 and config.input_resampling == "fourier"
    assert config.channel_slice_list_normalized_loss == [0, 1, 3, 4]


def _reference_written_config(depths: list[int], **values) -> dict:
    """config.json as the reference's own `ScOT.save_pretrained` writes it (transformers 4.45, to_diff_dict).

    The reference's ScOTConfig keeps its per-stage defaults whatever the depth (pretrained_window_sizes is always
    4 entries) and names the architecture "ScOT"; every scOT-only key is written.
    """
    stages = len(depths)
    config = {
        "architectures": ["ScOT"],
        "model_type": "swinv2",
        "attention_probs_dropout_prob": 0.0,
        "channel_slice_list_normalized_loss": None,
        "depths": depths,
        "drop_path_rate": 0.1,
        "embed_dim": 8,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "hidden_size": 8 * 2 ** (stages - 1),
        "image_size": 32,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-05,
        "learn_residual": False,
        "mlp_ratio": 4.0,
        "num_channels": 3,
        "num_heads": [1, 2, 4, 8][:stages],
        "num_layers": stages,
        "num_out_channels": 1,
        "p": 1,
        "patch_size": 2,
        "pretrained_window_sizes": [0, 0, 0, 0],
        "qkv_bias": True,
        "residual_model": "convnext",
        "skip_connections": [True] * stages,
        "torch_dtype": "float32",
        "transformers_version": "4.45.2",
        "use_absolute_embeddings": False,
        "use_conditioning": True,
        "window_size": 4,
    }
    config.update(values)
    return config


@pytest.mark.parametrize("depths", [[1, 1], [1, 1, 2], [1, 1, 2, 1]])
def test_reference_written_configs_load_for_any_stage_count(tmp_path: Path, depths: list[int]):
    written = _reference_written_config(depths)
    (tmp_path / "config.json").write_text(json.dumps(written))
    config = ScOTConfig.from_pretrained(tmp_path)
    assert config.depths == depths and config.pretrained_window_sizes == [0] * len(depths)
    assert config.skip_connections == [1] * len(depths)  # True = one ConvNeXt block, as in the reference
    assert config.num_channels == 3 and config.num_out_channels == 1
    # Not 4 channels: generic names and identity statistics (the reference keeps them in its data code).
    assert config.channel_names == ["c0", "c1", "c2"] and config.output_channel_names == ["c0"]
    assert config.input_mean == [0.0] * 3 and config.output_std == [1.0]
    assert config.channel_slice_list_normalized_loss == [0, 1]  # None in the reference: one absolute loss
    # Weights in the reference layout (ours are key-for-key the same) load and run; AutoModel reads it too.
    model = ScOT(config).eval()
    model.save_pretrained(tmp_path / "ours")
    (tmp_path / "ours" / "config.json").write_text(json.dumps(written))
    again, info = ScOT.from_pretrained(tmp_path / "ours", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    x, t = batch(c=3)
    with torch.no_grad():
        assert torch.equal(again.eval()(pixel_values=x, time=t).output, model(pixel_values=x, time=t).output)


def test_reference_written_config_keeps_the_references_semantics(tmp_path: Path):
    # The reference drops learn_residual without conditioning (we refuse that pair in our own configs).
    (tmp_path / "config.json").write_text(
        json.dumps(_reference_written_config([1, 1, 2], use_conditioning=False, learn_residual=True))
    )
    config = ScOTConfig.from_pretrained(tmp_path)
    assert not config.use_conditioning and not config.learn_residual
    # A skip list that does not fit the stages cannot have come from a model the reference ran.
    (tmp_path / "config.json").write_text(json.dumps(_reference_written_config([1, 1, 2], skip_connections=[1, 1])))
    with pytest.raises(ValueError, match="skip_connections has 2 entries for 3 stages"):
        ScOTConfig.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------------ checkpoint layout
def _tsv(reference_dir: Path, size: str) -> dict[str, tuple[int, ...]]:
    rows = (reference_dir / f"poseidon-{size}-state-dict.tsv").read_text().splitlines()[1:]
    out = {}
    for row in rows:
        key, shape, _ = row.split("\t")
        out[key] = tuple(int(v) for v in shape.strip("()").split(",") if v.strip())
    return out


@pytest.mark.parametrize("size,params", [("T", 20_774_444), ("B", 157_729_988), ("L", 628_575_524)])
def test_presets_have_the_published_layout(reference_dir: Path, size: str, params: int):
    with torch.device("meta"):
        model = ScOT(ScOTConfig.from_preset(size))
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == _tsv(reference_dir, size)
    assert sum(p.numel() for p in model.parameters()) == params


# The published Poseidon-T config.json (reference/scot-architecture.md gives L's; T differs in depths and width).
POSEIDON_T_CONFIG = {
    "architectures": ["SwinForPDE"],
    "model_type": "swinv2",
    "attention_probs_dropout_prob": 0.0,
    "channel_slice_list_normalized_loss": [0, 1, 3, 4],
    "depths": [4, 4, 4, 4],
    "drop_path_rate": 0.0,
    "embed_dim": 48,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.0,
    "hidden_size": 384,
    "image_size": 128,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-05,
    "learn_residual": False,
    "mlp_ratio": 4.0,
    "num_channels": 4,
    "num_heads": [3, 6, 12, 24],
    "num_layers": 4,
    "num_out_channels": 4,
    "p": 1,
    "patch_size": 4,
    "pretrained_window_sizes": [0, 0, 0, 0],
    "qkv_bias": True,
    "residual_model": "convnext",
    "skip_connections": [2, 2, 2, 0],
    "torch_dtype": "float32",
    "transformers_version": "4.29.2",
    "use_absolute_embeddings": False,
    "use_conditioning": True,
    "window_size": 16,
}


def test_T_loads_a_state_dict_laid_out_as_published(reference_dir: Path, tmp_path: Path):
    layout = _tsv(reference_dir, "T")
    generator = torch.Generator().manual_seed(1)
    state = {k: torch.randn(shape, generator=generator) * 0.02 for k, shape in layout.items()}
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text(json.dumps(POSEIDON_T_CONFIG))
    model, info = ScOT.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_save_load_round_trip_is_exact(tmp_path: Path):
    model = tiny(input_resampling="none", time_scale=2.5)
    x, t = batch()
    with torch.no_grad():
        before = model(pixel_values=x, time=t).output
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and not (tmp_path / "pytorch_model.bin").exists()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model_type"] == "scot" and saved["channel_names"] == ["rho", "u", "v", "p"]
    again = ScOT.from_pretrained(tmp_path).eval()
    ours, theirs = again.config.to_dict(), model.config.to_dict()
    ours.pop("_name_or_path"), theirs.pop("_name_or_path")
    assert ours == theirs
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key
    with torch.no_grad():
        assert torch.equal(again(pixel_values=x, time=t).output, before)


def test_auto_classes_load_our_checkpoints(tmp_path: Path):
    from transformers import AutoConfig, AutoModel

    tiny().save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), ScOTConfig)
    assert isinstance(AutoModel.from_pretrained(tmp_path), ScOT)


def test_legacy_bin_checkpoint_loads(tmp_path: Path):
    from conftest import fixture_folder

    folder = fixture_folder("scot-mini")
    torch.save(load_file(folder / "model.safetensors"), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    io = load_file(folder / "io.safetensors")
    with torch.no_grad():
        out = ScOT.from_pretrained(tmp_path).eval()(pixel_values=io["input_32"], time=io["time_32"]).output
    assert (out - io["output_32"]).abs().max().item() <= 1e-5


class _Payload:
    """Unpickling this would create a file: a legacy .bin must never run it."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_legacy_bin_is_never_unpickled_unsafely(tmp_path: Path):
    marker = tmp_path / "executed"
    state = dict(tiny().state_dict())
    state["evil"] = _Payload(str(marker))
    torch.save(state, tmp_path / "pytorch_model.bin")
    tiny().config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not unpickled"):
        ScOT.from_pretrained(tmp_path)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ bad input
def test_bad_inputs_get_clear_errors():
    model = tiny()
    x, t = batch()
    with pytest.raises(ValueError, match="3 channels, the model expects 4"):
        model(pixel_values=x[:, :3], time=t)
    with pytest.raises(ValueError, match=r"\(batch, channels, H, W\)"):
        model(pixel_values=x[0], time=t)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        model(pixel_values=x, time=torch.rand(3))
    with pytest.raises(ValueError, match="time .* is required"):
        model(pixel_values=x)
    bad = x.clone()
    bad[1, 2, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        model(pixel_values=bad, time=t)
    with pytest.raises(ValueError, match="time contains NaN"):
        model(pixel_values=x, time=torch.tensor([0.1, float("inf")]))


def test_checkpoint_of_another_size_is_refused(tmp_path: Path):
    from conftest import fixture_folder

    (tmp_path / "model.safetensors").write_bytes((fixture_folder("scot-3stage") / "model.safetensors").read_bytes())
    (tmp_path / "config.json").write_text((fixture_folder("scot-mini") / "config.json").read_text())
    with pytest.raises(ValueError, match=r"do not fit the scOT config.*checkpoint \(\d+.*\) vs config \(\d+"):
        ScOT.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "config,match",
    [
        ({"model_type": "bert", "hidden_size": 8}, "model_type 'bert'"),
        ({"model_type": "swinv2", "embed_dim": 96}, "plain Swinv2"),
    ],
)
def test_config_of_another_architecture_is_refused(tmp_path: Path, config, match):
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=match):
        ScOT.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match=str(tmp_path)):
        ScOTConfig.from_pretrained(tmp_path)


# ------------------------------------------------------------------------------------------ grids and time
@pytest.mark.parametrize("shape", [(96, 64), (30, 50)])
@pytest.mark.parametrize("mode", ["fourier", "none"])
def test_rectangular_grids(shape, mode):
    model = tiny(input_resampling=mode)
    x, t = batch(h=shape[0], w=shape[1])
    x.requires_grad_(True)
    out = model(pixel_values=x, time=t).output
    assert out.shape == (2, 4, *shape) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.no_grad():  # samples do not mix through padding, windows or masks
        single = model(pixel_values=x[1:].detach(), time=t[1:]).output
    assert torch.allclose(single, out[1:].detach(), atol=1e-5)


def test_fourier_mode_runs_on_the_model_grid():
    """Fourier mode = resample to image_size, run natively there, resample back."""
    fourier, native = tiny(input_resampling="fourier"), tiny(input_resampling="none")
    native.load_state_dict(fourier.state_dict())
    x, t = batch(h=48, w=40)
    with torch.no_grad():
        a = fourier(pixel_values=x, time=t).output
        b = fourier_resample(native(pixel_values=fourier_resample(x, (32, 32)), time=t).output, (48, 40))
        same_grid = native(pixel_values=x[..., :32, :32].contiguous(), time=t).output
        reference = fourier(pixel_values=x[..., :32, :32].contiguous(), time=t).output
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.equal(same_grid, reference)


def test_fourier_resample_matches_the_reference_rule():
    x = torch.randn(2, 3, 16, 16)
    spec = torch.fft.fft2(x, norm="forward")
    freqs = torch.fft.fftfreq(16, 1 / 16)
    keep = (freqs >= -4) & (freqs <= 3)  # reference: keep [-t/2, t/2 - 1] for t = 8
    expected = torch.fft.ifft2(spec[..., keep, :][..., keep], norm="forward").real
    assert torch.allclose(fourier_resample(x, (8, 8)), expected, atol=1e-6)
    shifted = torch.fft.fftshift(torch.fft.fft2(x, norm="forward"), dim=(-2, -1))  # up: pad the centred spectrum
    padded = torch.nn.functional.pad(shifted, (4, 4, 4, 4))
    expected_up = torch.fft.ifft2(torch.fft.ifftshift(padded, dim=(-2, -1)), norm="forward").real
    assert torch.allclose(fourier_resample(x, (24, 24)), expected_up, atol=1e-6)


@pytest.mark.parametrize("n,m", [(15, 40), (16, 33), (9, 9)])
def test_fourier_resample_round_trip_of_band_limited_fields(n, m):
    low = fourier_resample(torch.randn(1, 1, 7, 7), (n, m))  # band-limited to 7 modes per axis
    assert torch.allclose(fourier_resample(fourier_resample(low, (2 * n + 1, 3 * m)), (n, m)), low, atol=1e-5)
    assert torch.allclose(fourier_resample(fourier_resample(low, (7, 7)), (n, m)), low, atol=1e-5)


def test_lead_times_are_per_sample():
    model = tiny()
    x, _ = batch()
    t = torch.tensor([0.1, 0.7])
    with torch.no_grad():
        both = model(pixel_values=x, time=t).output
        first = model(pixel_values=x[:1], time=0.1).output
        column = model(pixel_values=x, time=t[:, None]).output
    assert torch.allclose(both[:1], first, atol=1e-6)
    assert torch.equal(both, column)
    assert not torch.allclose(both[0], model(pixel_values=x, time=torch.tensor([0.7, 0.7])).output[0].detach())


def test_unconditioned_model_and_learn_residual():
    plain = tiny(use_conditioning=False)
    keys = plain.state_dict()
    assert keys["embeddings.norm.weight"].shape == (24,)
    x, _ = batch()
    assert plain(pixel_values=x).output.shape == x.shape
    residual = tiny(learn_residual=True)
    with torch.no_grad():
        for p in residual.patch_recovery.parameters():
            p.zero_()
        out = residual(pixel_values=x, time=torch.zeros(2)).output
    assert torch.allclose(out, x, atol=1e-6)  # zero recovery: the prediction is the input


def test_unsupported_reference_options_are_refused():
    with pytest.raises(ValueError, match="use_absolute_embeddings"):
        ScOTConfig.from_preset("tiny", use_absolute_embeddings=True)
    with pytest.raises(ValueError, match="residual_model"):
        ScOTConfig.from_preset("tiny", residual_model="resnet")
    with pytest.raises(ValueError, match="learn_residual"):
        ScOTConfig.from_preset("tiny", learn_residual=True, use_conditioning=False)
    with pytest.raises(ValueError, match="did you mean 'window_size'"):
        ScOTConfig.from_preset("tiny", window_sise=8)
    with pytest.raises(ValueError, match="input_resampling"):
        ScOTConfig.from_preset("tiny", input_resampling="bilinear")
    with pytest.raises(ValueError, match="num_heads"):
        ScOTConfig.from_preset("tiny", num_heads=[3, 6])


# ------------------------------------------------------------------------------------------ attention paths
def test_naive_attention_path_gives_the_same_outputs():
    model = tiny(input_resampling="none")
    x, t = batch(h=40, w=36)
    with torch.no_grad():
        fused = model(pixel_values=x, time=t).output
        model.config._attn_implementation = "eager"
        naive = model(pixel_values=x, time=t).output
    assert torch.allclose(fused, naive, atol=1e-5)
    model.train()
    loss = model(pixel_values=x, time=t).output.square().mean()  # explicit (training) path
    model.config._attn_implementation = "sdpa"
    loss_sdpa = model(pixel_values=x, time=t).output.square().mean()
    assert torch.allclose(loss, loss_sdpa, atol=1e-6)


@pytest.mark.parametrize("shifted", [False, True])
def test_training_attention_kernel_matches_autograd_and_makes_no_subnormals(shifted: bool):
    # The CPU training path's hand-written backward against autograd of softmax(q k^T + bias) v in float64,
    # with the shift mask's -100 (the case that made subnormal weights) and without.
    g = torch.Generator().manual_seed(0)
    b, nw, h, n, hd = 2, 4, 3, 16, 8
    q, k, v = (torch.nn.functional.normalize(torch.randn(b, nw, h, n, hd, generator=g), dim=-1) * 3 for _ in range(3))
    table = torch.rand(h, n, n, generator=g) * 16
    mask = _shift_mask(8, 8, 4, 4, 2, 2, device=torch.device("cpu"))[:, None] if shifted else torch.zeros(1, 1, n, n)
    grad = torch.randn(b, nw, h, n, hd, generator=g)

    def run(fn, dtype):
        leaves = [t.to(dtype, copy=True).requires_grad_() for t in (q, k, v, table)]
        bias = leaves[3] + mask.to(dtype) if shifted else leaves[3]
        out = fn(*leaves[:3], bias)
        out.backward(grad.to(dtype), retain_graph=True)  # keeps the saved probabilities readable
        return out, [out.detach()] + [t.grad for t in leaves]

    def reference(q, k, v, bias):
        return torch.softmax(q @ k.transpose(-2, -1) + bias, dim=-1) @ v

    out, got = run(_WindowAttention.apply, torch.float32)
    _, want = run(reference, torch.float64)
    for a, w in zip(got, want):  # output, dq, dk, dv, d(bias table)
        assert (a.double() - w).abs().max() <= 1e-5 * w.abs().max()
    probs = out.grad_fn.saved_tensors[3]
    nonzero = probs[probs != 0]
    assert nonzero.abs().min() >= torch.finfo(torch.float32).tiny  # no subnormal weight reaches the GEMMs
    if shifted:
        assert (probs == 0).any()  # the masked pairs' weights (< 2^-100) were flushed


def test_window_geometry_is_cached_per_grid_and_device():
    model = tiny(input_resampling="none")
    x, t = batch(h=44, w=28)
    _GEOMETRY_CACHE.clear()  # the cache is process-wide: earlier tests in this worker may have filled any grid
    with torch.no_grad():
        model(pixel_values=x, time=t)
        size = len(_GEOMETRY_CACHE)
        model(pixel_values=x, time=t)
        assert len(_GEOMETRY_CACHE) == size  # reused, not rebuilt
        model(pixel_values=x[..., :40, :], time=t)
        assert len(_GEOMETRY_CACHE) > size  # a new grid gets its own masks
    assert all(v.device == x.device and not v.requires_grad for v in _GEOMETRY_CACHE.values())


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny().train()
    x, t = batch()

    def grads():
        model.zero_grad()
        model(pixel_values=x, time=t).output.square().mean().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    model.activation_checkpointing_enable()
    assert all(stage.gradient_checkpointing for stage in model.encoder.layers)
    checkpointed = grads()
    assert all(torch.allclose(plain[n], checkpointed[n], atol=1e-7) for n in plain)


def test_bf16_parameters_run_with_fp32_statistics():
    model = tiny()
    x, t = batch()
    with torch.no_grad():
        ref = model(pixel_values=x, time=t).output
        out = model.to(torch.bfloat16)(pixel_values=x, time=t).output
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() / ref.abs().max() < 0.05


@pytest.mark.slow
def test_compiled_model_gives_the_eager_outputs():
    # Two stages keep every path of a stage (shifted windows, masks, skips, merging) at a quarter of the graph:
    # compile time grows with the number of blocks.
    model = tiny(input_resampling="none", depths=[2, 2], num_heads=[3, 6], skip_connections=[2, 0])
    x, t = batch(h=36, w=28)
    with torch.no_grad():
        eager = model(pixel_values=x, time=t).output
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)  # fullgraph: no graph breaks
    with torch.no_grad():
        out = compiled(pixel_values=x, time=t).output
    assert torch.allclose(out, eager, atol=1e-5)
    model.train()
    # The training-mode forward is captured whole too (dynamo's "eager" backend: the capture without AOT's joint
    # graph, a quarter of the time here), and gradients flow through it.
    training = torch.compile(model, backend="eager", fullgraph=True)
    training(pixel_values=x, time=t).output.mean().backward()
    assert model.embeddings.patch_embeddings.projection.weight.grad is not None


# ------------------------------------------------------------------------------------------ physical units
def test_normalize_denormalize_and_predict():
    model = tiny(time_scale=2.0)
    fields = torch.randn(2, 4, 32, 32) * torch.tensor([0.31, 0.391, 0.356, 0.185])[:, None, None] + 0.8
    normed = model.normalize(fields)
    assert torch.allclose(model.denormalize(normed), fields, atol=1e-6)
    assert torch.allclose(normed[:, 0].mean(), torch.tensor(0.0), atol=0.1)
    with torch.no_grad():
        direct = model.denormalize(model(pixel_values=normed, time=torch.full((2,), 0.25)).output)
    assert torch.allclose(model.predict(fields, 0.5), direct, atol=1e-6)  # 0.5 physical = 0.25 lead time
    with pytest.raises(ValueError, match="4, H, W"):
        model.normalize(fields[:, :3])


def test_loss_falls_on_a_fixed_batch():
    model = tiny().train()
    x, t = batch()
    y = 0.5 * x.roll(1, dims=-1)  # a transport: learnable, unlike noise
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = model(pixel_values=x, time=t, labels=y).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0]  # the reference init starts every branch near zero: slow start


def test_clamped_window_reads_the_built_windows_continuous_bias():
    """SwinV2 semantics: a window clamped at run time uses coordinates normalised by the built window."""
    from foundation.modeling_scot import _relative_coords_table

    full = _relative_coords_table(16, 16, 16, torch.device("cpu")).view(31, 31, 2)
    clamped = _relative_coords_table(4, 6, 16, torch.device("cpu")).view(7, 11, 2)
    assert torch.equal(clamped, full[15 - 3 : 15 + 4, 15 - 5 : 15 + 6])
    own = _relative_coords_table(4, 4, 4, torch.device("cpu")).view(7, 7, 2)
    assert own.abs().max() > clamped[:, 2:9].abs().max()  # normalised by its own window it would differ


# ------------------------------------------------------------------------------------------ encode / decode
@pytest.mark.parametrize("mode,shape", [("fourier", (24, 40)), ("none", (40, 36))])
def test_forward_is_decode_of_encode(mode, shape):
    import copy

    model = tiny(input_resampling=mode, learn_residual=True, num_channels=5, output_channel_names=["rho", "u"])
    x, t = batch(c=5, h=shape[0], w=shape[1])
    with torch.no_grad():
        features = model.encode(x, t)
        model_grid = (32, 32) if mode == "fourier" else shape
        assert features.model_grid == model_grid and features.size == shape
        assert features.grid == tuple(-(-g // 2) for g in model_grid)  # patch 2
        assert features.hidden.shape == (2, features.grid[0] * features.grid[1], 24)
        assert features.residual.shape == (2, 2, *model_grid)  # learn_residual: the first C_out inputs
        out = model(pixel_values=x, time=t).output
        assert torch.equal(model.decode(features), out)
        # a substitute recovery (what the refiner trains) is used in place of the model's own
        other = copy.deepcopy(model.patch_recovery)
        other.projection.bias.add_(1.0)
        assert not torch.allclose(model.decode(features, recovery=other), out)


def test_attention_implementation_switches_and_restores():
    model = tiny()
    x, t = batch()
    with torch.no_grad():
        fused = model(pixel_values=x, time=t).output
        with model.attention_implementation("eager"):
            assert model.config._attn_implementation == "eager"
            naive = model(pixel_values=x, time=t).output
    assert model.config._attn_implementation == "sdpa" and torch.allclose(fused, naive, atol=1e-5)
    with pytest.raises(ValueError, match="eager"):
        with model.attention_implementation("flash"):
            pass


def test_identity_norm_init_starts_every_conditioned_norm_as_a_plain_layer_norm(tmp_path: Path):
    import torch.nn.functional as F

    from foundation.modeling_scot import ConditionalLayerNorm

    model = tiny(norm_init="identity")
    norms = [m for m in model.modules() if isinstance(m, ConditionalLayerNorm)]
    assert norms and all(m.use_conditioning for m in norms)
    x = torch.randn(3, 5, norms[0].weight.out_features)
    for t in (torch.zeros(3), torch.tensor([0.1, 0.5, 1.0])):  # no dependence on the lead time
        torch.testing.assert_close(norms[0](x, t), F.layer_norm(x, x.shape[-1:], eps=norms[0].eps))
    # the reference init keeps the published rule: gains near 0.02 * t, the same draws as before this option
    torch.manual_seed(0)
    reference = tiny()
    gains = [m.weight for m in reference.modules() if isinstance(m, ConditionalLayerNorm)]
    assert all(float(g.bias.abs().max()) == 0.0 and 0 < float(g.weight.std()) < 0.05 for g in gains)
    # only a new model's start: loaded weights are what the file holds, whichever init the config names
    reference.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "norm_init": "identity"}))
    loaded = ScOT.from_pretrained(tmp_path)
    assert loaded.config.norm_init == "identity"
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    with pytest.raises(ValueError, match="norm_init"):
        tiny(norm_init="zeros")
