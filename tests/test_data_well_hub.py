"""The Well reader and the Hugging Face dataset reader and exporter, on real files written here.

The Well files follow its published layout (root attributes, dimensions, boundary_conditions, scalars,
t0/t1/t2_fields with time_varying / sample_varying / dim_varying attributes, stats.yaml beside data/). The Hub
datasets are real `datasets` folders (parquet and save_to_disk) and a real HF hub cache layout read offline.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import constants

from foundation.data.arrays import ArraySource
from foundation.data.hub import METADATA_FILE, METADATA_KEYS, HubDatasetSource
from foundation.data.hub_export import save_hub_dataset
from foundation.data.pairs import All2AllPairs
from foundation.data.source import DataError
from foundation.data.well import WellSource

T, H, W = 5, 16, 16
TIMES = np.linspace(0.0, 2.0, T)
CHANNELS = ["rho", "p", "forcing", "u", "v"]
STATICS = ["tracer_source", "mask"]


# ----------------------------------------------------------------------------------------------- Well files
def write_well_file(
    path: Path,
    n: int,
    seed: int,
    reynolds: float = 100.0,
    spatial_dims: int = 2,
    skip_group: str | None = None,
    nan_at: tuple[int, int] | None = None,
    grid: int = H,
) -> dict:
    """A Well-layout file with n trajectories; returns the arrays written (for comparisons)."""
    rng = np.random.default_rng(seed)
    data = {
        "density": 1.0 + 0.1 * rng.standard_normal((n, T, grid, grid)),
        "pressure": rng.standard_normal((n, T, grid, grid)),
        "forcing": rng.standard_normal((T, grid)),  # shared by all trajectories, constant along y
        "tracer_source": rng.standard_normal((n, grid, grid)),  # static, per trajectory
        "mask": (rng.random((grid, grid)) > 0.5).astype(np.float64),  # static, shared
        "velocity": rng.standard_normal((n, T, grid, grid, 2)),
    }
    data = {k: v.astype(np.float32) for k, v in data.items()}
    if nan_at is not None:
        data["pressure"][nan_at[0], nan_at[1], 3, 4] = np.nan
    path.parent.mkdir(parents=True, exist_ok=True)
    names = ["x", "y", "z"][:spatial_dims]
    with h5py.File(path, "w") as f:
        f.attrs.update(
            dataset_name="test_flow",
            grid_type="cartesian",
            n_spatial_dims=spatial_dims,
            n_trajectories=n,
            simulation_parameters=["Re"],
            Re=reynolds,
        )
        dims = f.create_group("dimensions")
        dims.attrs["spatial_dims"] = names
        dims.create_dataset("time", data=TIMES.astype(np.float32)).attrs["sample_varying"] = False
        for name in names:
            coord = dims.create_dataset(name, data=np.linspace(0, 1, grid, endpoint=False, dtype=np.float32))
            coord.attrs.update(sample_varying=False, time_varying=False)
        bcs = f.create_group("boundary_conditions")
        for key, dim, kind in (("x_periodic", "x", "PERIODIC"), ("y_wall", "y", "WALL")):
            group = bcs.create_group(key)
            group.attrs.update(
                associated_dims=[dim], associated_fields=[], bc_type=kind, sample_varying=False, time_varying=False
            )
            mask = np.zeros(grid, dtype=bool)
            mask[[0, -1]] = True
            group.create_dataset("mask", data=mask)
        scalars = f.create_group("scalars")
        scalars.attrs["field_names"] = ["Re", "seed"]
        scalars.create_dataset("Re", data=np.array([reynolds])).attrs.update(time_varying=False, sample_varying=False)
        seeds = scalars.create_dataset("seed", data=np.arange(n, dtype=np.float64) + seed)
        seeds.attrs.update(time_varying=False, sample_varying=True)

        def field(group, name, array, time_varying=True, sample_varying=True, dim_varying=(True, True)):
            ds = group.create_dataset(name, data=array)
            ds.attrs.update(time_varying=time_varying, sample_varying=sample_varying, dim_varying=list(dim_varying))

        if skip_group != "t0_fields":
            t0 = f.create_group("t0_fields")
            t0.attrs["field_names"] = ["density", "pressure", "forcing", "tracer_source", "mask"]
            field(t0, "density", data["density"])
            field(t0, "pressure", data["pressure"])
            field(t0, "forcing", data["forcing"], sample_varying=False, dim_varying=(True, False))
            field(t0, "tracer_source", data["tracer_source"], time_varying=False)
            field(t0, "mask", data["mask"], time_varying=False, sample_varying=False)
        if skip_group != "t1_fields":
            t1 = f.create_group("t1_fields")
            t1.attrs["field_names"] = ["velocity"]
            field(t1, "velocity", data["velocity"])
        f.create_group("t2_fields").attrs["field_names"] = []
    return data


def expected_snapshot(data: dict, i: int, t: int) -> np.ndarray:
    forcing = np.broadcast_to(data["forcing"][t][:, None], (H, W))
    return np.stack(
        [
            data["density"][i, t],
            data["pressure"][i, t],
            forcing,
            data["velocity"][i, t, ..., 0],
            data["velocity"][i, t, ..., 1],
        ]
    )


def expected_static(data: dict, i: int) -> np.ndarray:
    return np.stack([data["tracer_source"][i], data["mask"]])


STATS = {
    "mean": {
        "density": 1.0,
        "pressure": 0.1,
        "forcing": -0.2,
        "velocity": [0.3, -0.4],
        "tracer_source": 0.5,
        "mask": 0.6,
    },
    "std": {"density": 0.1, "pressure": 1.1, "forcing": 1.2, "velocity": [1.3, 1.4], "tracer_source": 1.5, "mask": 0.0},
    "mean_delta": {"density": 0.0},
}


@pytest.fixture(scope="module")
def well(tmp_path_factory) -> tuple[Path, list[dict]]:
    """<root>/data/{train: 2 files (2 + 1 trajectories), valid: 1, test: 1}, stats.yaml: 5 trajectories."""
    root = tmp_path_factory.mktemp("well") / "test_flow"
    parts = []
    for split, name, n, re in (
        ("train", "a", 2, 100.0),
        ("train", "b", 1, 200.0),
        ("valid", "c", 1, 300.0),
        ("test", "d", 1, 400.0),
    ):
        data = write_well_file(root / "data" / split / f"test_flow_Re_{name}.hdf5", n, seed=len(parts), reynolds=re)
        shared = ("forcing", "mask")  # not sample-varying: the same for every trajectory
        parts.extend({k: v if k in shared else v[j : j + 1] for k, v in data.items()} for j in range(n))
    (root / "stats.yaml").write_text(yaml.safe_dump(STATS))
    return root, parts


def test_well_folder_concatenates_splits_and_reads_back(well):
    root, parts = well
    source = WellSource(root)
    assert source.shape == (5, T, 5, H, W)
    assert source.info.channel_names == CHANNELS
    assert source.info.static_names == STATICS
    assert source.info.splits == {"train": (0, 3), "val": (3, 4), "test": (4, 5)}
    np.testing.assert_allclose(source.info.times, TIMES, rtol=1e-6)
    assert source.info.time_scale == pytest.approx(2.0)
    assert source.info.mean == pytest.approx([1.0, 0.1, -0.2, 0.3, -0.4])
    assert source.info.std == pytest.approx([0.1, 1.1, 1.2, 1.3, 1.4])
    assert source.info.static_mean == pytest.approx([0.5, 0.6])
    assert source.info.static_std == pytest.approx([1.5, 1.0])  # std 0 of a constant field -> 1
    for index in (0, 2, 3, 4):  # first file, second train file, valid, test
        data = parts[index]
        for t in (0, T - 1):
            np.testing.assert_array_equal(source.read(index, t), expected_snapshot(data, 0, t))
        np.testing.assert_array_equal(source.read_static(index), expected_static(data, 0))
    assert source.locate(2) == (root / "data" / "train" / "test_flow_Re_b.hdf5", 0)
    assert source.info.pde["id"] == "test_flow"
    assert source.info.pde["parameters"] == {"Re": [100.0, 200.0, 300.0, 400.0]}  # one value per file
    assert source.info.pde["scalars"] == {"Re": [100.0, 200.0, 300.0, 400.0]}
    assert source.trajectory_parameters(3) == {"Re": 300.0, "seed": 3.0}  # seed: a per-trajectory scalar
    assert source.info.domain["axes"] == ["x", "y"]
    assert source.info.domain["periodic"] == [True, False]
    assert source.info.domain["boundary_conditions"] == {"x": ["periodic"], "y": ["wall"]}
    assert len(source.info.provenance["files"]) == 4
    assert source.info.provenance["trajectories_per_file"] == [2, 1, 1, 1]
    assert source.info.provenance["well_channel_names"] == [
        "density",
        "pressure",
        "forcing",
        "velocity_x",
        "velocity_y",
    ]
    # Picklable for DataLoader workers: handles are dropped and reopened.
    clone = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(clone.read(4, 1), source.read(4, 1))
    source.close()
    pairs = All2AllPairs(source, "train")
    assert len(pairs) == 3 * 15
    item = pairs[7]
    assert item["pixel_values"].shape == (5 + 2, H, W) and item["labels"].shape == (5, H, W)


def test_well_single_file_and_split_folder(well, tmp_path):
    root, parts = well
    valid = WellSource(root / "data" / "valid" / "test_flow_Re_c.hdf5")
    assert valid.info.splits == {"train": (0, 0), "val": (0, 1), "test": (1, 1)}
    assert valid.info.mean is not None  # stats.yaml found two levels up
    np.testing.assert_array_equal(valid.read(0, 2), expected_snapshot(parts[3], 0, 2))
    train = WellSource(root / "data" / "train")
    assert train.shape[0] == 3 and train.info.splits["train"] == (0, 3)
    lone = tmp_path / "lone.hdf5"
    write_well_file(lone, 2, seed=9)
    source = WellSource(lone)
    assert source.info.splits["train"] == (0, 2) and source.info.mean is None and source.info.std is None
    chosen = WellSource(root, fields=["velocity", "density"])
    assert chosen.info.channel_names == ["u", "v", "rho"] and chosen.info.static_names == []
    assert chosen.info.mean == pytest.approx([0.3, -0.4, 1.0])
    subset = WellSource(
        root, split_files={"train": ["data/train/test_flow_Re_b.hdf5"], "test": ["data/test/test_flow_Re_d.hdf5"]}
    )
    assert subset.info.splits == {"train": (0, 1), "val": (1, 1), "test": (1, 2)}
    with pytest.raises(DataError, match="no field \\['vorticity'\\]"):
        WellSource(root, fields=["vorticity"])


@pytest.mark.parametrize("group", ["t0_fields", "t1_fields"])
def test_well_missing_group_is_named(tmp_path, group):
    path = tmp_path / "broken.hdf5"
    write_well_file(path, 1, seed=0, skip_group=group)
    with pytest.raises(DataError, match=f"{path}.*{group}"):
        WellSource(path)


def test_well_3d_dataset_is_refused(tmp_path):
    path = tmp_path / "cube.hdf5"
    with h5py.File(path, "w") as f:
        f.attrs.update(dataset_name="cube", n_spatial_dims=3, n_trajectories=1)
        f.create_group("dimensions").attrs["spatial_dims"] = ["x", "y", "z"]
    with pytest.raises(DataError, match=f"{path}.*3-D dataset"):
        WellSource(path)


def test_well_nan_names_file_and_trajectory(tmp_path):
    root = tmp_path / "ds"
    write_well_file(root / "data" / "train" / "a.hdf5", 2, seed=0)
    write_well_file(root / "data" / "train" / "b.hdf5", 2, seed=1, nan_at=(1, 3))
    source = WellSource(root)
    source.read(3, 2)  # other snapshots of the same trajectory are fine
    with pytest.raises(DataError, match=r"trajectory 3, snapshot 3 contains NaN.*b\.hdf5, trajectory 1 of that file"):
        source.read(3, 3)


def test_well_extent_is_the_box_not_the_first_and_last_coordinate(tmp_path):
    """x periodic, y a wall (see write_well_file); the box must hold all n cells, n * d long on a periodic axis."""
    path = tmp_path / "box.hdf5"
    write_well_file(path, 1, seed=0)
    d = 1.0 / H
    # Nodes 0, d, ..., 1 - d of a periodic axis (how The Well stores spectral grids): the box is [0, 1], not
    # [0, 1 - d]. The wall axis holds cell centres: half a cell beyond its first and last coordinate.
    extent = WellSource(path).info.domain["extent"]
    np.testing.assert_allclose(extent, [[0.0, 1.0], [-d / 2, 1.0 - d / 2]], atol=1e-6)
    assert extent[0][1] - extent[0][0] == pytest.approx(H * d)
    # Cell centres (k + 1/2) d of a periodic axis, and nodes of a box [-1, 1) (a whole number of spacings from 0).
    with h5py.File(path, "a") as f:
        f["dimensions/x"][...] = (np.arange(H) + 0.5) * d
        f["dimensions/y"][...] = -1.0 + np.arange(W) * 2.0 / W
        f["boundary_conditions/y_wall"].attrs["bc_type"] = "PERIODIC"
    extent = WellSource(path).info.domain["extent"]
    np.testing.assert_allclose(extent, [[0.0, 1.0], [-1.0, 1.0]], atol=1e-6)
    assert [hi - lo for lo, hi in extent] == pytest.approx([H * d, W * 2.0 / W])


def test_well_bad_shapes_and_inconsistent_files(tmp_path):
    path = tmp_path / "bad.hdf5"
    write_well_file(path, 2, seed=0)
    with h5py.File(path, "a") as f:
        del f["t1_fields/velocity"]
        f["t1_fields"].create_dataset("velocity", data=np.zeros((2, T, H, W), np.float32))  # no component axis
    with pytest.raises(DataError, match=f"{path}: t1_fields/velocity has shape"):
        WellSource(path)
    root = tmp_path / "mixed"
    write_well_file(root / "data" / "train" / "a.hdf5", 1, seed=0)
    write_well_file(root / "data" / "valid" / "b.hdf5", 1, seed=0, grid=8)
    with pytest.raises(DataError, match="b.hdf5.*grid"):
        WellSource(root)


# ----------------------------------------------------------------------------------------------- Hub datasets
@pytest.fixture(scope="module")
def exported(well, tmp_path_factory) -> dict[str, Path]:
    source = WellSource(well[0])
    out = tmp_path_factory.mktemp("hub")
    return {
        "parquet": save_hub_dataset(source, out / "parquet"),
        "arrow": save_hub_dataset(source, out / "arrow", format="arrow", num_shards=2),
    }


@pytest.mark.parametrize("layout", ["parquet", "arrow"])
def test_hub_folder_round_trip(well, exported, layout):
    source = WellSource(well[0])
    folder = exported[layout]
    hub = HubDatasetSource(folder, split="all")
    assert hub.shape == source.shape
    for key in [k for k in METADATA_KEYS if k not in ("times", "provenance")] + ["splits"]:  # those two: below
        assert getattr(hub.info, key) == getattr(source.info, key), key
    np.testing.assert_array_equal(hub.info.times, source.info.times)
    assert hub.info.provenance["exported_from"] == source.info.name
    for index in range(source.num_trajectories):
        np.testing.assert_array_equal(hub.read_static(index), source.read_static(index))
        for t in range(T):
            np.testing.assert_array_equal(hub.read(index, t), source.read(index, t))
    # One Hub split per split of ours; each can be opened alone.
    val = HubDatasetSource(folder, split="val")
    assert val.shape[0] == 1 and val.info.splits == {"val": (0, 1)}
    np.testing.assert_array_equal(val.read(0, 4), source.read(3, 4))
    pairs = All2AllPairs(HubDatasetSource(folder), "train")
    assert pairs.pairs_per_trajectory == 5 * 6 // 2 and len(pairs) == 3 * 15
    reference = All2AllPairs(source, "train")
    for k in (0, 16, 44):
        for key, value in pairs[k].items():
            torch.testing.assert_close(value, reference[k][key], rtol=0, atol=0)


def test_hub_reads_one_row_per_trajectory(exported):
    hub = HubDatasetSource(exported["parquet"])
    reads = []
    split, data = hub._splits[0]

    class Counting:  # instruments our own row access; the dataset underneath is the real one
        def __getitem__(self, row):
            reads.append(row)
            return data[row]

    hub._splits[0] = (split, Counting())
    for t in range(T):
        hub.read(1, t)
    hub.read_static(1)
    hub.read(2, 0)
    assert reads == [1, 2]


def test_hub_nested_lists_save_to_disk_with_keyword_metadata(tmp_path):
    import datasets

    rng = np.random.default_rng(0)
    fields = rng.standard_normal((3, T, 2, 4, 4)).astype(np.float32)
    datasets.Dataset.from_dict({"fields": [f.tolist() for f in fields]}).save_to_disk(str(tmp_path / "plain"))
    with pytest.raises(DataError, match="channel_names"):
        HubDatasetSource(tmp_path / "plain")
    hub = HubDatasetSource(tmp_path / "plain", channel_names=["u", "v"], times=list(TIMES))
    assert hub.shape == (3, T, 2, 4, 4) and hub.info.splits == {"train": (0, 3)} and hub.info.mean is None
    np.testing.assert_allclose(hub.read(2, 3), fields[2, 3], rtol=1e-6)
    nan = fields.copy()
    nan[1, 2, 0, 0, 0] = np.nan
    datasets.Dataset.from_dict({"fields": [f.tolist() for f in nan]}).save_to_disk(str(tmp_path / "nan"))
    with pytest.raises(DataError, match=r"trajectory 1, snapshot 2 contains NaN.*split 'train', row 1"):
        HubDatasetSource(tmp_path / "nan", channel_names=["u", "v"]).read(1, 2)
    with pytest.raises(DataError, match="no column \\['state'\\]"):
        HubDatasetSource(tmp_path / "plain", fields_column="state", channel_names=["u", "v"])


def lay_out_dataset_in_cache(folder: Path, repo_id: str, revision: str = "main") -> str:
    """Put `folder` into the HF hub cache as the snapshot of dataset repo `repo_id` (blobs + symlinks + refs)."""
    repo = Path(constants.HF_HUB_CACHE) / ("datasets--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copyfile(file, blob)
        link = snapshot / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            os.symlink(os.path.relpath(blob, link.parent), link)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return commit


def test_hub_repo_id_from_local_cache_offline(well, exported):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    commit = lay_out_dataset_in_cache(exported["parquet"], "camlab-test/well-flow")
    source = WellSource(well[0])
    for revision in (None, commit):
        hub = HubDatasetSource("camlab-test/well-flow", split="all", revision=revision)
        assert hub.info.channel_names == CHANNELS and hub.info.splits == source.info.splits
        np.testing.assert_array_equal(hub.read(4, 3), source.read(4, 3))
    with pytest.raises(DataError, match="nobody/nothing"):
        HubDatasetSource("nobody/nothing")


def test_hub_keeps_splits_that_are_not_consecutive(tmp_path):
    fields = np.random.default_rng(1).standard_normal((4, 3, 1, 4, 4)).astype(np.float32)
    splits = {"train": (2, 4), "val": (0, 1), "test": (1, 2)}  # not train-then-val-then-test
    source = ArraySource(fields, channel_names=["u"], splits=splits)
    hub = HubDatasetSource(save_hub_dataset(source, tmp_path / "out"))
    assert hub.info.splits == splits and hub.shape == source.shape
    np.testing.assert_array_equal(hub.read(3, 2), fields[3, 2])
    clone = pickle.loads(pickle.dumps(hub))  # DataLoader workers get a copy
    np.testing.assert_array_equal(clone.read(1, 0), fields[1, 0])


def test_save_hub_dataset_refuses_to_overwrite(well, exported):
    with pytest.raises(FileExistsError):
        save_hub_dataset(WellSource(well[0]), exported["parquet"])
    assert (exported["parquet"] / METADATA_FILE).is_file()


def test_open_source_dispatches_well_and_hub_specs(well, exported):
    from foundation.data import open_source

    folder, _ = well
    via_spec = open_source(f"well:{folder}")
    assert isinstance(via_spec, WellSource) and via_spec.shape == WellSource(folder).shape
    one_file = folder / "data" / "valid" / "test_flow_Re_c.hdf5"  # a bare .hdf5 path: recognised by its keys
    assert isinstance(open_source(one_file), WellSource)
    hub = open_source(f"hub:{exported['parquet']}")
    assert isinstance(hub, HubDatasetSource) and set(hub.info.splits) == {"train", "val", "test"}
    assert hub.shape == via_spec.shape
