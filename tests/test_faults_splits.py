"""Splits and set-up faults a user meets with real downloads (issue 28, item 7), on files laid out as the upstream
writers lay them (The Well: tests/test_data_well_hub.py's writer; PDEBench: tests/test_data_pdebench.py's).

a. an empty evaluation split (a Well download of train + valid only) is refused before training;
b. training data only (one Well file, a data/train/ folder) is split automatically as The Well splits;
c. a PDEBench set stored as one file per seed is one source whose val and test are whole files;
d. an axis-length mismatch says the likely cause (axes stored y first);
e. --strategy fno without the [baselines] extra is one line saying what to install.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from conftest import REPO_ROOT
from test_data_pdebench import write_cfd, write_ns
from test_data_well_hub import STATS, write_well_file

from foundation.data import All2AllPairs, DataError, H5TrajectoryWriter, PDEBenchSource, open_source
from foundation.data.splits import require_splits
from foundation.data.well import WellSource


def well_download(root: Path, splits: dict[str, int]) -> Path:
    """<root>/data/<folder>/<name>.hdf5 (one file per split, `n` trajectories) and stats.yaml, as The Well ships."""
    for seed, (folder, n) in enumerate(splits.items()):
        write_well_file(root / "data" / folder / "test_flow_Re_100.hdf5", n, seed=seed)
    (root / "stats.yaml").write_text(yaml.safe_dump(STATS))
    return root


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------------------------- a. empty splits
def test_empty_eval_split_is_refused_naming_source_split_and_flag(tmp_path):
    root = well_download(tmp_path / "test_flow", {"train": 4, "valid": 2})  # no data/test/
    with pytest.raises(DataError) as error:
        require_splits([f"well:{root}"], {"train", "val", "test"}, {"test": "--eval_split"})
    message = one_line(error)
    assert message.startswith(f"{root}: the 'test' split is empty (trajectories: train 4, val 2, test 0)")
    assert "--eval_split test" in message and "pass --eval_split val" in message and "data/test/" in message
    require_splits([f"well:{root}"], ["train", "val", "val"], {"val": "--eval_split"})  # as offered: --eval_split val
    # Opened sources are checked as they are; the validation split is named with what needs it.
    no_valid = WellSource(well_download(tmp_path / "no_valid", {"train": 2, "test": 1}))
    with pytest.raises(DataError, match=r"'val' split is empty .* validation during training .*data/valid/"):
        require_splits(no_valid, ["train", "val", "test"], {"test": "--eval_split"})


def test_finetune_refuses_an_empty_eval_split_before_training(base_dir, tmp_path, capsys):
    from finetune.__main__ import main as finetune_main

    root = well_download(tmp_path / "test_flow", {"train": 4, "valid": 2})
    out = tmp_path / "run"
    argv = ["--init_from", str(base_dir), "--datasets", f"well:{root}", "--strategy", "head", "--max_steps", "50"]
    argv += ["--batch_size", "4", "--output_dir", str(out), "--tracker", "none", "--eval_pairs", "8"]
    assert finetune_main(argv) == 2
    err = capsys.readouterr().err
    assert "'test' split is empty" in err and "pass --eval_split val" in err and "Traceback" not in err
    assert not (out / "model").exists()  # refused before training, not after it


# ----------------------------------------------------------------------------------------------- b. one split only
def test_training_data_only_is_split_as_the_well_splits(tmp_path):
    lone = tmp_path / "lone.hdf5"
    data = write_well_file(lone, 10, seed=1)
    source = open_source(f"well:{lone}")
    assert source.info.splits == {"train": (0, 8), "val": (8, 9), "test": (9, 10)}  # was all train: no val, no test
    assert source.info.provenance["splits_rule"].startswith("automatic")
    np.testing.assert_array_equal(source.read(9, 2)[0], data["density"][9, 2])
    for split in ("val", "test"):
        assert len(All2AllPairs(source, split, normalize=False)) > 0
    assert WellSource(lone, auto_split=False).info.splits["train"] == (0, 10)  # the old behaviour, on request

    # A data/train/ folder: each file (one parameter set) split on its own, so every set is trained on and the
    # held-out trajectories are new initial conditions of seen parameters.
    root = tmp_path / "ds"
    a = write_well_file(root / "data" / "train" / "a.hdf5", 10, seed=2)
    b = write_well_file(root / "data" / "train" / "b.hdf5", 5, seed=3)
    source = WellSource(root)
    assert source.info.splits == {"train": (0, 11), "val": (11, 13), "test": (13, 15)}  # a: 8/1/1, b: 3/1/1
    fa, fb = root / "data" / "train" / "a.hdf5", root / "data" / "train" / "b.hdf5"
    located = [source.locate(i) for i in (0, 7, 8, 10, 11, 12, 13, 14)]
    assert located == [(fa, 0), (fa, 7), (fb, 0), (fb, 2), (fa, 8), (fb, 3), (fa, 9), (fb, 4)]
    np.testing.assert_array_equal(source.read(12, 1)[1], b["pressure"][3, 1])
    np.testing.assert_array_equal(source.read(13, 1)[1], a["pressure"][9, 1])
    assert source.trajectory_parameters(14)["seed"] == 3.0 + 4  # per-trajectory scalars follow the reordering

    # Files of under 3 trajectories: whole files held out (3 files or more), else all train, said in provenance.
    few = tmp_path / "few" / "train"
    for k in range(10):
        write_well_file(few / f"f{k}.hdf5", 1, seed=10 + k)
    source = WellSource(few)
    assert source.info.splits == {"train": (0, 8), "val": (8, 9), "test": (9, 10)}
    assert source.locate(9) == (few / "f9.hdf5", 0) and "whole files" in source.info.provenance["splits_rule"]
    pair = tmp_path / "pair.hdf5"
    write_well_file(pair, 2, seed=0)
    assert WellSource(pair).info.splits["train"] == (0, 2)
    assert "too few" in WellSource(pair).info.provenance["splits_rule"]
    # Which split is still missing then is one line before any training (see a.).
    with pytest.raises(DataError, match=r"pair.hdf5: the 'val' split is empty"):
        require_splits(f"well:{pair}", ["train", "val"])


# ----------------------------------------------------------------------------------------------- c. per-seed files
def test_pdebench_folder_of_per_seed_files_holds_out_whole_files(tmp_path):
    folder = tmp_path / "ns_incom"
    folder.mkdir()
    stored = {}
    for k in range(12):  # names sort -0, -1, -10, -11, -2, ... as text: the reader orders them as numbers
        stored[k] = write_ns(folder / f"ns_incom_inhom_2d_16-{k}.h5")
    source = open_source(f"pdebench:{folder}")  # was: "not a readable PDEBench HDF5 file (... Is a directory)"
    assert isinstance(source, PDEBenchSource) and source.layout == "ns-incom" and source.shape[:2] == (60, 4)
    # 12 files: 10 train, 1 val, 1 test, whole files (write_ns puts 5 trajectories in each)
    assert source.info.splits == {"train": (0, 50), "val": (50, 55), "test": (55, 60)}
    assert source.info.provenance["files"][-2:] == ["ns_incom_inhom_2d_16-10.h5", "ns_incom_inhom_2d_16-11.h5"]
    assert "whole files" in source.info.provenance["splits_rule"]
    test_file = folder / "ns_incom_inhom_2d_16-11.h5"
    assert source._where(57) == f"file {test_file}, trajectory 2 of that file"
    np.testing.assert_array_equal(source.read(57, 3)[2], stored[11]["particles"][2, 3, ..., 0])
    np.testing.assert_array_equal(source.read_static(12)[0], stored[2]["force"][2, ..., 0])
    # A folder of hundreds of files keeps a bounded number open; a pickled copy reads the same.
    small = PDEBenchSource(folder, max_open_files=2)
    for index in (0, 20, 40, 59):
        small.read(index, 0)
    assert sum(part._h5._file is not None for part in small._parts) <= 2
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(small)).read(33, 1), source.read(33, 1))

    # CFD (PDEBench's loader takes the first 10 % as test): the first file is the test file.
    cfd = tmp_path / "cfd"
    cfd.mkdir()
    for k in range(3):
        write_cfd(cfd / f"2D_CFD_Rand_M0.1_Eta0.01_Zeta0.01_periodic_16_seed{k}.hdf5", seed=k, n=2)
    assert open_source(f"pdebench:{cfd}").info.splits == {"test": (0, 2), "val": (2, 4), "train": (4, 6)}
    # A file of another set is named, not silently concatenated.
    write_cfd(folder / "ns_incom_inhom_2d_16-12.h5", n=5)
    with pytest.raises(DataError) as error:
        open_source(f"pdebench:{folder}")
    assert "ns_incom_inhom_2d_16-12.h5" in one_line(error) and "cfd file among ns-incom files" in str(error.value)


# ----------------------------------------------------------------------------------------------- d. axis order
def test_axis_length_mismatch_names_axes_stored_y_first(tmp_path):
    # PDEBench CFD written [N, T, Y, X] (an image-style writer) with its x coordinates of X entries.
    cfd = tmp_path / "2D_CFD_yfirst.hdf5"
    write_cfd(cfd)
    with h5py.File(cfd, "r+") as f:
        for key in ("density", "Vx", "Vy", "pressure"):
            data = f[key][...]
            del f[key]
            f[key] = np.swapaxes(data, -1, -2)
    with pytest.raises(DataError) as error:
        open_source(cfd)
    message = one_line(error)
    assert "'x-coordinate' has 16 entries for an axis of 12 cells" in message and "stored y first" in message
    # One dataset of a CFD file transposed against 'density'.
    one = tmp_path / "2D_CFD_one.hdf5"
    write_cfd(one)
    with h5py.File(one, "r+") as f:
        data = f["Vx"][...]
        del f["Vx"]
        f["Vx"] = np.swapaxes(data, -1, -2)
    with pytest.raises(DataError, match=r"'Vx' has shape \(5, 4, 12, 16\).*axes 2 and 3 .*stored y first"):
        open_source(one)

    # The Well: a field stored [n, T, Y, X] on an x (16) by y (12) grid.
    well = tmp_path / "well.hdf5"
    write_well_file(well, 2, seed=0)
    with h5py.File(well, "r+") as f:
        del f["dimensions/y"]
        f["dimensions/y"] = np.linspace(0, 1, 12, endpoint=False)
        density = f["t0_fields/density"][...]
        del f["t0_fields/density"]
        f["t0_fields/density"] = density[:, :, :12, :]  # [n, T, 12, 16]: y first
        f["t0_fields/density"].attrs.update(time_varying=True, sample_varying=True, dim_varying=[True, True])
    with pytest.raises(DataError) as error:
        WellSource(well)
    message = one_line(error)
    assert "t0_fields/density has shape (2, 5, 12, 16)" in message and "stored y first" in message

    # Our schema: 'static' written [N, S, W, H].
    ours = tmp_path / "ours.h5"
    with H5TrajectoryWriter(ours, 3, np.arange(2.0), ["u"], (8, 6), static_names=["a"]) as out:
        out.write(slice(0, 3), np.ones((3, 2, 1, 8, 6)), static=np.ones((3, 1, 8, 6)))
    with h5py.File(ours, "r+") as f:
        del f["static"]
        f["static"] = np.ones((3, 1, 6, 8), np.float32)
    with pytest.raises(DataError, match=r"'static' has shape \(3, 1, 6, 8\), expected \(3, 1, 8, 6\).*y first"):
        open_source(ours)
    # A mismatch that is no swap says nothing of the axis order.
    other = tmp_path / "2D_CFD_other.hdf5"
    write_cfd(other)
    with h5py.File(other, "r+") as f:
        del f["Vy"]
        f["Vy"] = np.zeros((5, 4, 16, 16), np.float32)
    with pytest.raises(DataError) as error:
        open_source(other)
    assert "y first" not in one_line(error)


# ----------------------------------------------------------------------------------------------- e. missing extra
def test_fno_without_the_baselines_extra_is_one_line(base_dir, tmp_path):
    data = tmp_path / "2D_CFD_Rand_M0.1_Eta0.01_Zeta0.01_periodic_16_Train.hdf5"
    write_cfd(data, n=5)
    out = tmp_path / "run"
    argv = ["--init_from", str(base_dir), "--datasets", f"pdebench:{data}", "--strategy", "fno", "--max_steps", "2"]
    argv += ["--output_dir", str(out), "--tracker", "none", "--eval_pairs", "4"]
    # A real failed import: None in sys.modules makes `import neuralop` raise ModuleNotFoundError, as without it.
    code = (
        "import sys; sys.modules['neuralop'] = None\n"
        "from finetune.__main__ import main\n"
        f"raise SystemExit(main({argv!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and len(errors) == 1
    assert "neuraloperator" in errors[0] and 'pip install -e ".[baselines]"' in errors[0]
    assert not (out / "model").exists()


# ----------------------------------------------------------------------------------------------- end to end
def test_a_single_well_file_and_a_folder_of_pdebench_seeds_pretrain_to_a_model(tmp_path, capsys):
    """b. and c. as a user meets them: `python -m pretrain` on the download as it is ends in an exported model."""
    from pretrain.__main__ import main

    lone = tmp_path / "lone.hdf5"
    write_well_file(lone, 10, seed=1)
    folder = tmp_path / "ns_incom"
    folder.mkdir()
    for k in range(4):
        write_ns(folder / f"ns_incom_inhom_2d_16-{k}.h5")
    for spec, name in ((f"well:{lone}", "well"), (f"pdebench:{folder}", "pdebench")):
        out = tmp_path / name
        argv = ["--preset", "tiny", "--datasets", spec, "--output_dir", str(out), "--batch_size", "2"]
        argv += ["--max_steps", "2", "--eval_pairs", "4", "--tracker", "none"]
        assert main(argv) == 0, capsys.readouterr().err[-3000:]
        assert (out / "model" / "model.safetensors").exists()
        assert json.loads((out / "metrics.json").read_text())["step"] == 2  # validated on the held-out split
