"""Dataset metadata is validated when a source opens: on real HDF5 files of our schema, with bad values planted in
their root attributes. Every refusal is one line naming the file and the key; the domain's two extent forms open
to one box; a residual refinement without a viscosity fails before its first training step."""

from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from finetune import refiner
from finetune.__main__ import main as finetune_main
from foundation import ScOT, ScOTConfig
from foundation.data import DataError, H5TrajectoryWriter, open_source
from foundation.data.source import box_lengths

N, T, GRID = 4, 3, (8, 8)


def write(path: Path, channels=("u", "v"), static=(), **meta) -> Path:
    """A small valid file of our schema (N=4 trajectories, T=3 snapshots, 8 x 8), metadata from `meta`."""
    rng = np.random.default_rng(0)
    meta.setdefault("pde", {"id": "test", "nu": 1e-3})
    meta.setdefault("domain", {"extent": [[0.0, 1.0], [0.0, 1.0]], "periodic": [True, True]})
    with H5TrajectoryWriter(
        path,
        n=N,
        times=np.linspace(0.0, 1.0, T),
        channel_names=list(channels),
        grid=GRID,
        static_names=list(static),
        **meta,
    ) as out:
        for i in range(N):
            fields = rng.normal(size=(T, len(channels), *GRID)).astype(np.float32)
            out.write(i, fields, rng.normal(size=(len(static), *GRID)).astype(np.float32) if static else None)
    return path


def plant(path: Path, key: str, raw: str) -> None:
    """Overwrite root attribute `key` with the raw string `raw` (JSON or not), as a hand-written file might."""
    with h5py.File(path, "r+") as f:
        f.attrs[key] = raw


def refused(path: Path, key: str) -> str:
    """Open `path`, expect a one-line DataError that starts with the file and the key; return the message."""
    with pytest.raises(DataError) as caught:
        open_source(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert "\n" not in message
    return message


def test_both_extent_forms_open_to_the_same_box(tmp_path: Path):
    lengths = write(tmp_path / "lengths.h5", domain={"extent": [2.0, 0.5], "periodic": [True, True]})
    intervals = write(tmp_path / "intervals.h5", domain={"extent": [[0, 2], [0.0, 0.5]], "periodic": [True, True]})
    boxes = [open_source(p).info.domain for p in (lengths, intervals)]
    assert boxes[0] == boxes[1] == {"extent": [[0.0, 2.0], [0.0, 0.5]], "periodic": [True, True]}
    assert box_lengths(boxes[0]) == refiner.box_lengths(boxes[1]) == (2.0, 0.5)
    assert box_lengths({"extent": [2.0, 0.5]}) == (2.0, 0.5)  # the raw side-length form too
    shifted = write(tmp_path / "shifted.h5", domain={"extent": [[-1.0, 1.0], [3.0, 3.5]]})
    assert box_lengths(open_source(shifted).info.domain) == (2.0, 0.5)


@pytest.mark.parametrize(
    "extent, problem",
    [
        ([1.0], "expected one entry per spatial axis"),
        ([1.0, 1.0, 1.0], "expected one entry per spatial axis"),
        ({"x": 1.0, "y": 1.0}, "expected one entry per spatial axis"),
        ([[0.0, 1.0, 2.0], [0.0, 1.0]], "axis 0 interval [0.0, 1.0, 2.0] is not 2 numbers [lo, hi]"),
        ([1.0, [0.5]], "axis 1 interval [0.5] is not 2 numbers [lo, hi]"),
    ],
)
def test_extent_of_wrong_arity_is_refused(tmp_path: Path, extent, problem):
    path = write(tmp_path / "arity.h5", domain={"extent": extent})
    assert problem in refused(path, "domain.extent")


@pytest.mark.parametrize(
    "raw, problem",
    [
        ('["1.0", 1.0]', "axis 0: '1.0' is not a finite number"),
        ("[true, 1.0]", "axis 0: True is not a finite number"),
        ("[[0, null], [0, 1]]", "axis 0: None is not a finite number"),
        ("[[0, NaN], [0, 1]]", "axis 0: nan is not a finite number"),
        ("[1.0, Infinity]", "axis 1: inf is not a finite number"),
    ],
)
def test_extent_of_non_numbers_is_refused(tmp_path: Path, raw, problem):
    path = write(tmp_path / "numbers.h5")
    plant(path, "domain", f'{{"extent": {raw}, "periodic": [true, true]}}')
    assert problem in refused(path, "domain.extent")


@pytest.mark.parametrize(
    "extent, problem",
    [
        ([[0.0, 1.0], [1.0, 0.5]], "axis 1 interval [1.0, 0.5] has lo >= hi"),
        ([[2.0, 2.0], [0.0, 1.0]], "axis 0 interval [2.0, 2.0] has lo >= hi"),
        ([0.0, 1.0], "axis 0 side length 0.0 must be positive"),
        ([1.0, -1.0], "axis 1 side length -1.0 must be positive"),
    ],
)
def test_extent_with_lo_not_below_hi_is_refused(tmp_path: Path, extent, problem):
    path = write(tmp_path / "order.h5", domain={"extent": extent})
    assert refused(path, "domain.extent") == f"{path}: domain.extent: {problem}"


@pytest.mark.parametrize(
    "raw, problem",
    [
        ('{"id": "ns-kf", "viscosity": 1e-3', "not valid JSON"),
        ("ns-kf nu=1e-3", "not valid JSON"),
        ('["ns-kf", 0.001]', "expected a JSON object"),
        ("null", "expected a JSON object"),
    ],
)
def test_pde_that_is_not_a_json_object_is_refused_on_open(tmp_path: Path, raw, problem):
    path = write(tmp_path / "pde.h5")
    plant(path, "pde", raw)
    assert problem in refused(path, "pde")


@pytest.mark.parametrize(
    "key, raw, problem",
    [
        ("channel_names", '"uv"', "expected a list of non-empty strings"),
        ("channel_names", '["u", 1]', "expected a list of non-empty strings"),
        ("channel_names", '["u", "u"]', "['u'] named twice"),
        ("static_names", '{"f": 0}', "expected a list of non-empty strings"),
        ("time_scale", '"1.0"', "'1.0' is not a finite number"),
        ("time_scale", "-1.0", "must be positive"),
        ("splits", "[[0, 2], [2, 3]]", "expected an object"),
        ("splits.train", '{"train": [0, 2.5], "val": [2, 3], "test": [3, 4]}', "expected two integers"),
        ("splits.val", '{"train": [0, 2], "val": [2, 9], "test": [3, 4]}', "[2, 9) is outside the 4 trajectories"),
        ("stats", "[0.0, 1.0]", "expected an object"),
        ("stats.mean", '{"mean": [0.0], "std": [1.0, 1.0]}', "1 entries, expected 2"),
        ("stats.std", '{"mean": [0.0, 0.0], "std": [1.0, "1"]}', "'1' is not a finite number"),
        ("stats.std", '{"mean": [0.0, 0.0], "std": [1.0, 0.0]}', "must be positive"),
        ("steady", '"no"', "expected true or false"),
        ("provenance", '"solver x"', "expected a JSON object"),
        ("domain", "[1.0, 1.0]", "expected an object"),
        ("domain.periodic", '{"extent": [1.0, 1.0], "periodic": [1, 0]}', "one true/false per spatial axis"),
        ("domain.periodic", '{"extent": [1.0, 1.0], "periodic": [true]}', "one true/false per spatial axis"),
        ("schema_version", "99", "not a version this reader knows"),
    ],
)
def test_every_other_schema_attribute_is_checked_on_open(tmp_path: Path, key, raw, problem):
    path = write(tmp_path / "attrs.h5")
    plant(path, key.split(".")[0], raw)
    assert problem in refused(path, key)


def test_residual_refinement_without_viscosity_fails_before_the_first_step(tmp_path: Path, capsys):
    torch.manual_seed(0)
    names = ["rho", "u", "v", "p"]
    config = ScOTConfig.from_preset("tiny", image_size=16, channel_names=names, output_channel_names=names)
    ScOT(config).save_pretrained(tmp_path / "base")
    data = write(tmp_path / "ns.h5", static=("f",), pde={"id": "ns-kf"})  # NS-like: u, v, forcing f; no nu
    out = tmp_path / "run"
    args = ["--init_from", str(tmp_path / "base"), "--datasets", str(data), "--output_dir", str(out)]
    args += ["--strategy", "refiner", "--refiner_loss", "residual", "--max_steps", "5", "--tracker", "none"]
    assert finetune_main(args) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"error: {data}: pde.viscosity: ") and "\n" not in error, error
    assert not (out / "checkpoints").exists() and not (out / "losses.jsonl").exists() and not (out / "model").exists()
    # The same check the refiner's loss makes, and what passes it: `nu` is the other name of the viscosity.
    info = open_source(write(tmp_path / "nu.h5", static=("f",), pde={"id": "ns-kf", "nu": 1e-3})).info
    assert refiner.residual_parameters(info, ["u", "v"]) == (1e-3, (1.0, 1.0))
    info.domain["periodic"] = [True, False]
    with pytest.raises(DataError, match=f"^{re.escape(info.name)}: domain.periodic: "):
        refiner.residual_parameters(info, ["u", "v"])
    with pytest.raises(DataError, match=f"^{re.escape(str(data))}: channel_names: .*needs velocity channels u and v"):
        refiner.residual_parameters(open_source(data).info, ["u"])
