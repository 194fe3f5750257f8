"""PDEBench reader on real HDF5 files written here in each published 2-D layout.

The layouts follow PDEBench's writers and loaders (pdebench/data_gen/data_gen_NLE/Data_Merge.py for CFD and Darcy,
data_gen/src/data_io.py + sim_ns_incomp_2d.py for incompressible NS, gen_diff_react.py / sim_radial_dam_break.py
for the per-sample groups; pdebench/models/fno/utils.py for how they are read). Grids are X=16 by Y=12, not square,
so that a swapped axis cannot pass; every array is random, so a value read from the wrong channel, sample or
snapshot cannot pass either.
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from foundation.data import All2AllPairs, DataError, PDEBenchSource, open_source
from foundation.data.__main__ import main as data_main
from foundation.data.pdebench import name_parameters

N, T, X, Y = 5, 4, 16, 12
CFD_NAME = "2D_CFD_Rand_M0.1_Eta0.01_Zeta0.01_periodic_16_Train.hdf5"


def centres(lo: float, hi: float, n: int) -> np.ndarray:
    dx = (hi - lo) / n
    return (lo + dx * (np.arange(n) + 0.5)).astype(np.float32)


def rand(rng: np.random.Generator, *shape: int, offset: float = 0.0) -> np.ndarray:
    return (offset + rng.standard_normal(shape)).astype(np.float32)


def write_cfd(path: Path, seed: int = 0, n: int = N) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    # distinct offsets per stored dataset: a channel mix-up is visible even by eye
    data = {k: rand(rng, n, T, X, Y, offset=o) for k, o in (("density", 1), ("Vx", 10), ("Vy", 20), ("pressure", 30))}
    with h5py.File(path, "w") as f:
        for key, value in data.items():
            f[key] = value
        f["t-coordinate"] = (np.arange(T + 1) * 0.05).astype(np.float32)  # T + 1 entries, as the generator writes
        f["x-coordinate"], f["y-coordinate"] = centres(0, 1, X), centres(0, 1, Y)
    return data


def write_ns(path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    data = {
        "velocity": rand(rng, N, T, X, Y, 2),
        "particles": rand(rng, N, T, X, Y, 1, offset=5),
        "force": rand(rng, N, X, Y, 2, offset=-5),
    }
    with h5py.File(path, "w") as f:
        for key, value in data.items():
            f.create_dataset(key, data=value, chunks=(1, 1, *value.shape[2:]) if value.ndim == 5 else None)
        f["t"] = np.tile(np.arange(T) * 0.5, (N, 1)).astype(np.float32)  # [N, T], one row per trajectory
        f.attrs["config"] = "NU: 0.01\nDT: 5.0e-05\nframe_int: 100\ngrid_size: [16, 12]\n"
    return data


def write_groups(path: Path, channels: int, lo: float, hi: float, t_end: float) -> list[np.ndarray]:
    rng = np.random.default_rng(2 + channels)
    samples = []
    with h5py.File(path, "w") as f:
        for i in range(N):
            key = str(i).zfill(4)
            samples.append(rand(rng, T, X, Y, channels, offset=100 * i))
            f.create_dataset(f"{key}/data", data=samples[-1])
            f[f"{key}/grid/x"], f[f"{key}/grid/y"] = centres(lo, hi, X), centres(lo, hi, Y)
            f[f"{key}/grid/t"] = np.linspace(0, t_end, T).astype(np.float32)
            f[key].attrs["config"] = "sim:\n  Du: 0.001\n  Dv: 0.005\n  k: 0.005\n  gravity: 1.0\n"
    return samples


def write_darcy(path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(4)
    data = {"nu": rand(rng, N, X, Y, offset=3), "tensor": rand(rng, N, 1, X, Y)}
    with h5py.File(path, "w") as f:
        f["nu"], f["tensor"] = data["nu"], data["tensor"]
        f["x-coordinate"], f["y-coordinate"] = centres(0, 1, X), centres(0, 1, Y)
        f.attrs["beta"] = 0.1
    return data


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, tuple[Path, object]]:
    folder = tmp_path_factory.mktemp("pdebench")
    out = {}
    for name, filename, writer in (
        ("cfd", CFD_NAME, write_cfd),
        ("ns", "ns_incom_inhom_2d_16-0.h5", write_ns),
        ("diff-react", "2D_diff-react_NA_NA.h5", lambda p: write_groups(p, 2, -1.0, 1.0, 5.0)),
        ("rdb", "2D_rdb_NA_NA.h5", lambda p: write_groups(p, 1, -2.5, 2.5, 1.0)),
        ("darcy", "2D_DarcyFlow_beta0.1_Train.hdf5", write_darcy),
    ):
        out[name] = (folder / filename, writer(folder / filename))
    return out


def check_common(source: PDEBenchSource, channels: list[str], test_first: bool) -> None:
    assert source.shape == (N, 1 if source.info.steady else T, len(channels), X, Y)
    assert source.info.channel_names == channels
    assert source.info.mean is None and source.info.std is None  # PDEBench stores no statistics
    # 80/10/10 by stored order; the test trajectories are PDEBench's own (first 10 % single-file, last 10 % groups)
    expected = (
        {"test": (0, 1), "val": (1, 2), "train": (2, 5)}
        if test_first
        else {"train": (0, 3), "val": (3, 4), "test": (4, 5)}
    )
    assert source.info.splits == expected
    assert "splits_rule" in source.info.provenance


def test_cfd_channels_times_domain_and_name_parameters(files):
    path, data = files["cfd"]
    source = open_source(f"pdebench:{path}")
    assert isinstance(source, PDEBenchSource) and source.layout == "cfd"
    check_common(source, ["rho", "u", "v", "p"], test_first=True)
    for i, t in ((0, 0), (3, 2), (4, 3)):
        expected = np.stack([data[k][i, t] for k in ("density", "Vx", "Vy", "pressure")])
        np.testing.assert_array_equal(source.read(i, t), expected)  # H = X, W = Y, channels in our order
    info = source.info
    np.testing.assert_allclose(info.times, [0.0, 0.05, 0.1, 0.15], rtol=1e-6)  # the first T of T + 1 entries
    assert info.time_scale == pytest.approx(0.15)
    np.testing.assert_allclose(info.domain["extent"], [[0, 1], [0, 1]], atol=1e-6)  # box edges, not centres
    assert info.domain["periodic"] == [True, True]
    assert info.pde["family"] == "pdebench-cfd"
    assert (info.pde["M"], info.pde["eta"], info.pde["zeta"]) == (0.1, 0.01, 0.01)
    assert info.static_names == [] and source.read_static(0).shape == (0, X, Y)


def test_file_name_parameters_are_parsed_defensively():
    assert name_parameters("2D_CFD_Rand_M0.1_Eta0.01_Zeta0.01_periodic_128_Train") == {
        "initial_condition": "rand",
        "M": 0.1,
        "eta": 0.01,
        "zeta": 0.01,
        "boundary": "periodic",
        "resolution": 128,
    }
    assert name_parameters("2D_CFD_Turb_M1.0_Eta1e-08_Zeta1e-08_trans_512_Train")["eta"] == 1e-08
    assert name_parameters("2D_DarcyFlow_beta100.0_Train") == {"beta": 100.0}
    assert name_parameters("renamed-by-someone_M.x_Eta") == {}


def test_incompressible_ns_velocity_tracer_and_static_force(files):
    path, data = files["ns"]
    source = open_source(f"pdebench:{path}")
    assert source.layout == "ns-incom"
    check_common(source, ["u", "v", "tracer"], test_first=False)
    assert source.info.static_names == ["f_x", "f_y"]
    x = source.read(2, 3)
    np.testing.assert_array_equal(x[0], data["velocity"][2, 3, ..., 0])
    np.testing.assert_array_equal(x[1], data["velocity"][2, 3, ..., 1])
    np.testing.assert_array_equal(x[2], data["particles"][2, 3, ..., 0])
    np.testing.assert_array_equal(source.read_static(4), np.moveaxis(data["force"][4], -1, 0))
    np.testing.assert_allclose(source.info.times, [0.0, 0.5, 1.0, 1.5])
    assert source.info.time_scale == pytest.approx(1.5)
    assert source.info.domain["extent"] == [[0.0, 1.0], [0.0, 1.0]] and source.info.domain["periodic"] == [False] * 2
    assert source.info.pde["viscosity"] == 0.01  # from the generator's config attribute
    pairs = All2AllPairs(open_source(f"pdebench:{path}", fill_stats=True), "train")
    assert pairs.input_names == ["u", "v", "tracer", "f_x", "f_y"] and pairs[0]["pixel_values"].shape == (5, X, Y)


@pytest.mark.parametrize(
    ("name", "channels", "extent", "t_end"),
    [("diff-react", ["activator", "inhibitor"], 1.0, 5.0), ("rdb", ["h"], 2.5, 1.0)],
)
def test_per_sample_groups_are_trajectories_in_stored_order(files, name, channels, extent, t_end):
    path, samples = files[name]
    source = open_source(f"pdebench:{path}")
    assert source.layout == name
    check_common(source, channels, test_first=False)
    for i in range(N):
        np.testing.assert_array_equal(source.read(i, 1), np.moveaxis(samples[i][1], -1, 0))
    np.testing.assert_allclose(source.info.times, np.linspace(0, t_end, T), rtol=1e-6)
    assert source.info.time_scale == pytest.approx(t_end)
    np.testing.assert_allclose(source.info.domain["extent"], [[-extent, extent]] * 2, atol=1e-6)
    assert source.info.domain["periodic"] == [False, False]
    assert source.info.pde["family"] == f"pdebench-{name}"
    if name == "diff-react":
        assert (source.info.pde["Du"], source.info.pde["Dv"], source.info.pde["k"]) == (0.001, 0.005, 0.005)


def test_darcy_is_steady_coefficient_to_solution(files):
    path, data = files["darcy"]
    check_common(open_source(f"pdebench:{path}"), ["u"], test_first=True)
    source = open_source(f"pdebench:{path}", fill_stats=True)
    assert source.layout == "darcy" and source.info.steady
    assert source.info.static_names == ["a"] and source.info.static_mean is not None
    np.testing.assert_array_equal(source.read(3, 0), data["tensor"][3])
    np.testing.assert_array_equal(source.read_static(3), data["nu"][3][None])
    assert list(source.info.times) == [0.0] and source.info.time_scale == 1.0
    assert source.info.pde["beta"] == 0.1 and source.info.domain["periodic"] == [False, False]
    pairs = All2AllPairs(source, "train", normalize=False)
    item = pairs[0]  # trajectory 2 (the first training one): a in, u out, lead time 1
    assert len(pairs) == 3 and pairs.input_names == ["a"] and float(item["time"]) == 1.0
    np.testing.assert_array_equal(item["pixel_values"].numpy(), data["nu"][2][None])
    np.testing.assert_array_equal(item["labels"].numpy(), data["tensor"][2])


def test_layouts_are_detected_by_keys_without_prefix(files, tmp_path: Path):
    for name, (path, _) in files.items():
        anonymous = tmp_path / f"{name}-renamed.h5"  # nothing in the name gives the layout away
        anonymous.write_bytes(path.read_bytes())
        source = open_source(anonymous)
        assert isinstance(source, PDEBenchSource)
        assert source.layout == {"ns": "ns-incom"}.get(name, name)
        assert source.shape == open_source(f"pdebench:{path}").shape


def test_unknown_and_inconsistent_files_are_one_line_errors(files, tmp_path: Path):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["something"] = np.zeros((2, 3))
    for spec in (other, f"pdebench:{other}"):
        with pytest.raises(DataError) as error:
            open_source(spec)
        message = str(error.value)
        assert "\n" not in message and str(other) in message and "PDEBench" in message
    bad = tmp_path / "bad_cfd.hdf5"
    write_cfd(bad)
    with h5py.File(bad, "r+") as f:
        del f["Vy"]
        f["Vy"] = np.zeros((N, T, X, X), np.float32)
    with pytest.raises(DataError, match=r"bad_cfd.hdf5: 'Vy' has shape \(5, 4, 16, 16\)"):
        open_source(bad)
    one_d = tmp_path / "1D_CFD_Rand_Eta0.1_Zeta0.1_periodic_Train.hdf5"
    with h5py.File(one_d, "w") as f:
        for key in ("density", "Vx", "pressure"):
            f[key] = np.zeros((N, T, X), np.float32)
    with pytest.raises(DataError, match="1-D PDEBench CFD file"):
        open_source(one_d)
    groups = tmp_path / "ragged.h5"
    write_groups(groups, 1, 0.0, 1.0, 1.0)
    with h5py.File(groups, "r+") as f:
        del f["0003/data"]
        f["0003/data"] = np.zeros((T + 1, X, Y, 1), np.float32)
    with pytest.raises(DataError, match="ragged.h5: group '0003' holds data of shape"):
        open_source(groups)


def test_source_pickles_without_its_file_handle(files):
    path, data = files["cfd"]
    source = open_source(path)
    source.read(0, 0)  # the handle is open
    clone = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(clone.read(1, 2)[3], data["pressure"][1, 2])
    clone.close()
    groups = pickle.loads(pickle.dumps(open_source(files["rdb"][0])))
    np.testing.assert_array_equal(groups.read(4, 3)[0], files["rdb"][1][4][3, ..., 0])


def test_inspect_describes_a_pdebench_file(files, capsys):
    path, _ = files["cfd"]
    assert data_main(["inspect", f"pdebench:{path}"]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["source"] == "PDEBenchSource"
    assert described["shape"] == {"N": N, "T": T, "C": 4, "H": X, "W": Y}
    assert described["channel_names"] == ["rho", "u", "v", "p"]
    assert described["splits"] == {"test": [0, 1], "val": [1, 2], "train": [2, 5]}
    assert described["pde"]["family"] == "pdebench-cfd" and described["provenance"]["format"] == "pdebench"


@pytest.mark.slow
def test_pretraining_runs_on_a_pdebench_cfd_file(tmp_path: Path, monkeypatch, capsys):
    from pretrain.__main__ import main as pretrain_main

    path = tmp_path / CFD_NAME
    write_cfd(path, n=10)  # 8 train, 1 val, 1 test
    out = tmp_path / "run"
    argv = ["--preset", "tiny", "--datasets", f"pdebench:{path}", "--output_dir", str(out), "--batch_size", "4"]
    argv += ["--max_steps", "2", "--save_every", "0", "--eval_every", "0", "--eval_pairs", "4", "--warmup_steps", "1"]
    monkeypatch.setattr(sys, "argv", ["pretrain", *argv, "--tracker", "none"])
    assert pretrain_main() == 0, capsys.readouterr().err[-3000:]  # in-process, as test_finetune trains
    assert (out / "model" / "model.safetensors").exists()
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["channel_names"] == ["rho", "u", "v", "p"] and config["image_size"] == [X, Y]
    assert json.loads((out / "model" / "training_data.json").read_text())[0]["spec"] == f"pdebench:{path}"
