"""Trajectory sources on real files, the all2all index, the sampler, mixtures, statistics and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from foundation.data import (
    LAYOUTS,
    All2AllPairs,
    ArraySource,
    DataError,
    H5Source,
    H5TrajectoryWriter,
    Mixture,
    RandomPairSampler,
    compute_stats,
    open_source,
)
from foundation.data.pairs import feistel_permutation
from foundation.losses import relative_lp_loss

RNG = np.random.default_rng(0)


def write_ours(path: Path, n=10, t=11, channels=("u", "v"), grid=(8, 8), static=(), **kwargs) -> np.ndarray:
    fields = RNG.normal(size=(n, t, len(channels), *grid)).astype(np.float32) * 2 + 1
    statics = RNG.normal(size=(n, len(static), *grid)).astype(np.float32) if static else None
    with H5TrajectoryWriter(
        path,
        n=n,
        times=np.linspace(0.0, 2.0, t),
        channel_names=list(channels),
        grid=grid,
        static_names=list(static),
        pde={"id": "test", "nu": 1e-3},
        **kwargs,
    ) as out:
        for i in range(n):
            out.write(i, fields[i], None if statics is None else statics[i])
    return fields if statics is None else (fields, statics)


# ------------------------------------------------------------------------------------------ our schema
def test_our_schema_round_trip_metadata_and_stats(tmp_path: Path):
    fields = write_ours(tmp_path / "a.h5", provenance={"solver": "test"})
    source = open_source(tmp_path / "a.h5")
    assert isinstance(source, H5Source) and source.shape == (10, 11, 2, 8, 8)
    assert source.info.channel_names == ["u", "v"] and source.info.time_scale == 2.0
    assert source.info.splits == {"train": (0, 8), "val": (8, 9), "test": (9, 10)}
    assert source.info.pde == {"id": "test", "nu": 1e-3} and source.info.provenance["solver"] == "test"
    np.testing.assert_array_equal(source.read(3, 7), fields[3, 7])
    train = fields[:8].transpose(2, 0, 1, 3, 4).reshape(2, -1).astype(np.float64)
    np.testing.assert_allclose(source.info.mean, train.mean(1), rtol=1e-10)
    np.testing.assert_allclose(source.info.std, train.std(1), rtol=1e-10)
    streamed = compute_stats(source, "train")
    np.testing.assert_allclose(streamed["mean"], train.mean(1), rtol=1e-10)
    np.testing.assert_allclose(streamed["std"], train.std(1), rtol=1e-10)


def test_writer_never_writes_over_or_leaves_corrupt_files(tmp_path: Path):
    target = tmp_path / "data.h5"
    write_ours(target)
    before = target.read_bytes()
    with pytest.raises(FileExistsError):
        write_ours(target)
    with pytest.raises(RuntimeError):
        with H5TrajectoryWriter(target, n=2, times=[0, 1], channel_names=["u"], grid=(4, 4), overwrite=True) as out:
            out.write(0, np.zeros((2, 1, 4, 4)))
            raise RuntimeError("killed half way")
    assert target.read_bytes() == before  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["data.h5"]  # no partial file left behind
    with pytest.raises(DataError, match="NaN"):
        with H5TrajectoryWriter(tmp_path / "nan.h5", n=1, times=[0, 1], channel_names=["u"], grid=(4, 4)) as out:
            out.write(0, np.full((2, 1, 4, 4), np.nan))
    assert not (tmp_path / "nan.h5").exists()
    with pytest.raises(DataError, match=r"trajectories \[1\] were never written"):
        with H5TrajectoryWriter(tmp_path / "short.h5", n=2, times=[0, 1], channel_names=["u"], grid=(4, 4)) as out:
            out.write(0, np.zeros((2, 1, 4, 4)))
    assert not (tmp_path / "short.h5").exists()


def test_bad_files_get_clear_errors(tmp_path: Path):
    with pytest.raises(DataError, match="no such file"):
        open_source(tmp_path / "missing.h5")
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="junk.h5: not a readable HDF5"):
        open_source(tmp_path / "junk.h5")
    with h5py.File(tmp_path / "nofields.h5", "w") as f:
        f["times"] = np.arange(3.0)
    with pytest.raises(DataError, match="missing dataset 'fields'"):
        open_source(tmp_path / "nofields.h5")
    with h5py.File(tmp_path / "rank.h5", "w") as f:
        f["fields"], f["times"] = np.zeros((2, 3, 4, 4), np.float32), np.arange(3.0)
    with pytest.raises(DataError, match=r"\[N, T, C, H, W\]"):
        open_source(tmp_path / "rank.h5")
    write_ours(tmp_path / "ok.h5")
    with h5py.File(tmp_path / "ok.h5", "r+") as f:
        f.attrs["channel_names"] = json.dumps(["u", "v", "p"])
    with pytest.raises(DataError, match=r"3 channel names .* for 2 channels"):
        open_source(tmp_path / "ok.h5")
    write_ours(tmp_path / "empty.h5", n=2, splits={"train": (0, 2), "val": (2, 2), "test": (2, 2)})
    with pytest.raises(DataError, match="split 'val' is empty"):
        All2AllPairs(open_source(tmp_path / "empty.h5"), "val")


def test_nan_in_a_sample_names_file_and_index(tmp_path: Path):
    write_ours(tmp_path / "a.h5")
    with h5py.File(tmp_path / "a.h5", "r+") as f:
        f["fields"][4, 2, 1, 3, 3] = np.inf
    pairs = All2AllPairs(open_source(tmp_path / "a.h5"), "train")
    with pytest.raises(DataError, match=r"a.h5: trajectory 4, snapshot 2 contains NaN or Inf"):
        for k in range(4 * 66, 5 * 66):
            pairs[k]


# ------------------------------------------------------------------------------------------ all2all
def test_all2all_pair_counts_and_lead_times(tmp_path: Path):
    write_ours(tmp_path / "a.h5", n=5, t=21, splits={"train": (0, 3), "val": (3, 4), "test": (4, 5)})
    source = open_source(tmp_path / "a.h5")  # times 0..2 over 21 snapshots: time_scale 2 = the whole span
    pairs = All2AllPairs(source, "train", stride=2)  # 11 snapshots in use
    assert pairs.pairs_per_trajectory == 66 and len(pairs) == 3 * 66
    assert All2AllPairs(source, "train", stride=2, include_identity=False).pairs_per_trajectory == 55
    assert np.isclose(pairs.lead_times.max(), 1.0) and pairs.lead_times.min() == 0.0
    finetune = All2AllPairs(source, "train", stride=2, max_snapshots=8)  # reference fine-tuning: indices 0..14
    assert finetune.pairs_per_trajectory == 36 and np.isclose(finetune.lead_times.max(), 0.7)
    one_step = All2AllPairs(source, "train", stride=2, lead_steps=[1])
    assert one_step.pairs_per_trajectory == 10 and np.allclose(one_step.lead_times, 0.1)
    traj, i, j, lead = pairs.locate(66 + 12)  # second training trajectory
    assert traj == 1 and j >= i and np.isclose(lead, (j - i) / 20)
    val = All2AllPairs(source, "val", stride=2)
    assert {val.locate(k)[0] for k in range(len(val))} == {3}


def test_pair_items_are_normalised_model_inputs(tmp_path: Path):
    fields, statics = write_ours(tmp_path / "w.h5", channels=("u",), static=("c",))
    source = open_source(tmp_path / "w.h5")
    pairs = All2AllPairs(source, "train")
    traj, i, j, lead = pairs.locate(17)
    item = pairs[17]
    mean, std = np.asarray(source.info.mean)[:, None, None], np.asarray(source.info.std)[:, None, None]
    smean, sstd = np.asarray(source.info.static_mean)[:, None, None], np.asarray(source.info.static_std)[:, None, None]
    np.testing.assert_allclose(item["pixel_values"][:1], (fields[traj, i] - mean) / std, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(item["pixel_values"][1:], (statics[traj] - smean) / sstd, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(item["labels"], (fields[traj, j] - mean) / std, rtol=1e-5, atol=1e-6)
    assert item["time"].item() == pytest.approx(lead) and item["channel_mask"].tolist() == [1.0]
    batch = next(iter(torch.utils.data.DataLoader(pairs, batch_size=4)))
    assert batch["pixel_values"].shape == (4, 2, 8, 8) and batch["time"].shape == (4,)


def test_steady_problems_are_one_pair_of_lead_time_one(tmp_path: Path):
    source = ArraySource(
        RNG.normal(size=(6, 1, 1, 8, 8)).astype(np.float32),
        channel_names=["u"],
        static=RNG.normal(size=(6, 1, 8, 8)).astype(np.float32),
        static_names=["f"],
        steady=True,
        splits={"train": (0, 4), "val": (4, 5), "test": (5, 6)},
    )
    pairs = All2AllPairs(source, "train", normalize=False)
    assert len(pairs) == 4 and pairs.input_names == ["f"]
    item = pairs[2]
    np.testing.assert_array_equal(item["pixel_values"], source.static[2])
    np.testing.assert_array_equal(item["labels"], source.fields[2, 0])
    assert item["time"].item() == 1.0


# ------------------------------------------------------------------------------------------ sampler
def test_sampler_is_a_deterministic_permutation_and_resumes_exactly():
    full = list(RandomPairSampler(1000, seed=3))
    assert sorted(full) == list(range(1000)) and full != list(range(1000))
    assert full == list(RandomPairSampler(1000, seed=3)) and full != list(RandomPairSampler(1000, seed=4))
    sampler = RandomPairSampler(1000, seed=3)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert sorted(epoch1) == list(range(1000)) and epoch1 != full
    first = RandomPairSampler(1000, seed=3)
    it = iter(first)
    head = [next(it) for _ in range(357)]
    state = json.loads(json.dumps(first.state_dict()))  # survives a checkpoint file
    resumed = RandomPairSampler(1000, seed=3)
    resumed.load_state_dict(state)
    assert head + list(resumed) == full
    with pytest.raises(ValueError, match="seed"):
        RandomPairSampler(1000, seed=5).load_state_dict(state)


def test_sampler_shards_ranks_without_overlap():
    shards = [list(RandomPairSampler(1001, seed=1, rank=r, world_size=3)) for r in range(3)]
    assert all(len(s) == 333 for s in shards)  # drop_last: equal lengths for DDP
    union = set().union(*map(set, shards))
    assert sum(map(len, shards)) == len(union) == 999
    keep_all = [list(RandomPairSampler(1001, seed=1, rank=r, world_size=3, drop_last=False)) for r in range(3)]
    assert sorted(sum(keep_all, [])) == list(range(1001))


def test_sampler_draws_from_huge_indices_without_materialising_them():
    length = 77_840 * 66  # the published pretraining corpus
    draws = feistel_permutation(np.arange(20_000), length, key=7)
    assert draws.min() >= 0 and draws.max() < length and len(set(draws.tolist())) == 20_000
    assert abs(draws.mean() / length - 0.5) < 0.02  # spread over the whole index


def test_sampler_feeds_a_dataloader(tmp_path: Path):
    write_ours(tmp_path / "a.h5", n=4, t=3, splits={"train": (0, 2), "val": (2, 3), "test": (3, 4)})
    pairs = All2AllPairs(open_source(tmp_path / "a.h5"))
    loader = torch.utils.data.DataLoader(pairs, batch_size=3, sampler=RandomPairSampler(len(pairs), seed=0))
    seen = torch.cat([b["time"] for b in loader])
    assert len(seen) == len(pairs) == 12


# ------------------------------------------------------------------------------------------ mixtures
def test_mixture_maps_channels_by_name_and_masks_the_missing_ones(tmp_path: Path):
    write_ours(tmp_path / "ns.h5", channels=("u", "v"))
    write_ours(tmp_path / "ce.h5", channels=("rho", "u", "v", "p"))
    ns, ce = (All2AllPairs(open_source(tmp_path / f"{k}.h5"), stride=2) for k in ("ns", "ce"))
    vocab = ["rho", "u", "v", "p"]
    mix = Mixture([ns, ce], vocab, vocab, input_mean=[0.8, 0, 0, 0], input_std=[0.31, 0.391, 0.356, 0.185])
    assert len(mix) == len(ns) + len(ce)
    item = mix[5]
    assert item["dataset"].item() == 0 and item["channel_mask"].tolist() == [0.0, 1.0, 1.0, 0.0]
    assert torch.allclose(item["pixel_values"][0], torch.full((8, 8), (1.0 - 0.8) / 0.31))  # rho = 1, normalised
    assert torch.equal(item["pixel_values"][3], torch.zeros(8, 8)) and torch.equal(item["labels"][0], item["labels"][3])
    assert torch.equal(item["pixel_values"][1:3], ns[5]["pixel_values"])
    assert mix[len(ns) + 3]["channel_mask"].tolist() == [1.0, 1.0, 1.0, 1.0]
    # the loss ignores what the model predicts for channels the sample lacks
    batch = next(iter(torch.utils.data.DataLoader(mix, batch_size=4)))
    pred = torch.randn_like(batch["labels"])
    loss = relative_lp_loss(pred, batch["labels"], [0, 1, 3, 4], channel_mask=batch["channel_mask"])
    pred[:, 0] += 100.0
    pred[:, 3] -= 100.0
    assert loss == relative_lp_loss(pred, batch["labels"], [0, 1, 3, 4], channel_mask=batch["channel_mask"])


def test_mixture_weights_set_each_datasets_share(tmp_path: Path):
    write_ours(tmp_path / "a.h5", n=10)
    write_ours(tmp_path / "b.h5", n=20)
    a, b = All2AllPairs(open_source(tmp_path / "a.h5")), All2AllPairs(open_source(tmp_path / "b.h5"))
    mix = Mixture([a, b], ["u", "v"], ["u", "v"], weights=[3, 1])
    counts = np.bincount([mix.locate(k)[0] for k in range(len(mix))])
    assert counts[0] / counts.sum() == pytest.approx(0.75, abs=0.01)
    locals_a = {mix.locate(k)[1] for k in range(len(mix)) if mix.locate(k)[0] == 0}
    assert locals_a == set(range(len(a)))  # the over-weighted dataset is repeated, all of it
    with pytest.raises(DataError, match="different grids"):
        write_ours(tmp_path / "c.h5", grid=(4, 4))
        Mixture([a, All2AllPairs(open_source(tmp_path / "c.h5"))], ["u", "v"], ["u", "v"])
    with pytest.raises(DataError, match="lacks"):
        Mixture([a], ["u"], ["u", "v"])


# ------------------------------------------------------------------------------------------ arrays
def test_npy_and_npz_are_memory_mapped(tmp_path: Path):
    fields = RNG.normal(size=(5, 3, 2, 4, 4)).astype(np.float32)
    np.save(tmp_path / "f.npy", fields)
    np.savez(tmp_path / "f.npz", fields=fields, times=np.array([0.0, 0.5, 2.0]))
    npy = open_source(tmp_path / "f.npy", channel_names=["u", "v"])
    npz = open_source(tmp_path / "f.npz")
    assert isinstance(npy.fields, np.memmap) and isinstance(npz.fields, np.memmap)
    np.testing.assert_array_equal(npz.read(4, 2), fields[4, 2])
    assert npz.info.time_scale == 2.0 and npy.info.channel_names == ["u", "v"]
    np.savez_compressed(tmp_path / "c.npz", fields=fields)
    with pytest.raises(DataError, match="compressed"):
        open_source(tmp_path / "c.npz")


# ------------------------------------------------------------------------------------------ Poseidon layouts
def _write_layout(path: Path, name: str, t: int = 5, grid=(4, 6)) -> dict[str, np.ndarray]:
    """A small file in the published layout of `name` (the real trajectory counts: the splits are fixed)."""
    lay = LAYOUTS[name]
    n = lay.val + lay.test + 3
    h, w = grid
    solution_channels = {"CE-RM": 5, "GCE-RT": 6, "FNS-KF": 2, "SE-AF": 2}.get(name)
    stored = {"velocity": 3 if name == "NS-Tracer-PwC" else 2, "data": 5, "solution": solution_channels}
    out = {}
    with h5py.File(path, "w") as f:
        if name == "Helmholtz":
            for i in range(n):
                group = f.create_group(f"Sample_{i}")
                out[f"a{i}"], out[f"u{i}"] = RNG.random((h, w)) + 1, RNG.normal(size=(h, w))
                group["a"], group["u"], group["bc"] = out[f"a{i}"], out[f"u{i}"], np.float64(0.5 + i)
            return out
        if lay.steady:
            shape = (n, stored[lay.key], h, w) if lay.has_channel_dim else (n, h, w)
        else:
            shape = (n, t, stored[lay.key], h, w) if lay.has_channel_dim else (n, t, h, w)
        out["data"] = RNG.normal(size=shape).astype(np.float32)
        f[lay.key] = out["data"]
        if lay.static_key:
            out["static"] = RNG.normal(size=(n, h, w)).astype(np.float32)
            f[lay.static_key] = out["static"]
    return out


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_every_published_poseidon_layout_reads_as_stored(tmp_path: Path, name: str):
    lay = LAYOUTS[name]
    path = tmp_path / f"{name}.nc"
    stored = _write_layout(path, name)
    source = open_source(f"{name}:{path}", fill_stats=True)
    n = lay.val + lay.test + 3
    assert source.info.splits == {"train": (0, 3), "val": (3, 3 + lay.val), "test": (3 + lay.val, n)}
    assert source.info.channel_names == list(lay.channels) and source.info.steady == lay.steady
    if lay.mean is not None:
        assert source.info.mean == list(lay.mean) and source.info.std == list(lay.std)
    else:
        assert source.info.provenance["stats"].startswith("computed")
    h, w = (6, 4) if lay.transpose else (4, 6)
    assert source.grid == (h, w)
    sample = source.read(3, 0 if lay.steady else 2)
    if name == "Helmholtz":
        np.testing.assert_allclose(sample[0], stored["u3"], rtol=1e-6)
        np.testing.assert_allclose(source.read_static(3), np.stack([stored["a3"] - 1, np.full((4, 6), 3.5)]), rtol=1e-6)
        return
    data = stored["data"]
    if lay.steady:
        expected = data[3][list(lay.select)] if lay.has_channel_dim else data[3][None]
    else:
        expected = data[3, 2][list(lay.select)] if lay.has_channel_dim else data[3, 2][None]
    if lay.transpose:
        expected = np.swapaxes(expected, -1, -2)
    np.testing.assert_array_equal(sample, expected)
    if lay.static_key:
        np.testing.assert_array_equal(source.read_static(3)[0], stored["static"][3])
    if name == "SE-AF":
        np.testing.assert_array_equal(source.read_static(3)[0], data[3, 0])
    if not lay.steady:
        pairs = All2AllPairs(source, "train")
        assert pairs.pairs_per_trajectory == 15 and np.isclose(pairs.lead_times.max(), 1.0)  # (j - i) / 4


def test_poseidon_tracer_variant_and_wrong_layouts(tmp_path: Path):
    with h5py.File(tmp_path / "tracer.nc", "w") as f:
        f["velocity"] = np.zeros((363, 3, 3, 4, 4), np.float32)
    assert open_source(tmp_path / "tracer.nc", layout="NS-PwC").info.channel_names == ["u", "v", "tracer"]
    with pytest.raises(DataError, match="missing key 'data'"):
        open_source(tmp_path / "tracer.nc", layout="CE-RP")
    with pytest.raises(DataError, match="unknown layout 'CE-XX'"):
        open_source(tmp_path / "tracer.nc", layout="CE-XX")
    with h5py.File(tmp_path / "few.nc", "w") as f:
        f["data"] = np.zeros((30, 3, 5, 4, 4), np.float32)
    with pytest.raises(DataError, match="30 trajectories cannot hold"):
        open_source(tmp_path / "few.nc", layout="CE-RP")


# ------------------------------------------------------------------------------------------ CLI
def test_inspect_cli(tmp_path: Path, capsys):
    from foundation.data.__main__ import main

    write_ours(tmp_path / "a.h5", provenance={"solver": "unit-test"})
    assert main(["inspect", str(tmp_path / "a.h5")]) == 0
    described = json.loads(capsys.readouterr().out)
    assert described["shape"] == {"N": 10, "T": 11, "C": 2, "H": 8, "W": 8}
    assert described["channel_names"] == ["u", "v"] and described["splits"]["train"] == [0, 8]
    assert len(described["mean"]) == 2 and described["provenance"]["solver"] == "unit-test"
    assert len(described["times"]) == 11
    assert main(["inspect", str(tmp_path / "nope.h5")]) == 2
    err = capsys.readouterr().err
    assert "nope.h5: no such file" in err and "Traceback" not in err


def test_pairs_never_alias_or_modify_the_source(tmp_path: Path):
    fields = RNG.normal(size=(5, 3, 2, 4, 4)).astype(np.float32)
    original = fields.copy()
    source = ArraySource(fields, mean=[1.0, 2.0], std=[2.0, 4.0])
    pairs = All2AllPairs(source, "train")
    items = [pairs[k] for k in range(len(pairs))]
    np.testing.assert_array_equal(fields, original)
    pointers = {t.data_ptr() for item in items for t in (item["pixel_values"], item["labels"])}
    assert len(pointers) == 2 * len(items)


def test_worker_processes_reopen_their_own_files(tmp_path: Path):
    write_ours(tmp_path / "a.h5", n=6, t=3)
    with h5py.File(tmp_path / "p.nc", "w") as f:
        f["data"] = RNG.normal(size=(LAYOUTS["CE-RP"].val + LAYOUTS["CE-RP"].test + 2, 3, 5, 4, 4)).astype(np.float32)
    for source in (open_source(tmp_path / "a.h5"), open_source(f"CE-RP:{tmp_path / 'p.nc'}")):
        pairs = All2AllPairs(source, "train")
        source.read(0, 0)  # the parent has an open handle before the workers fork
        serial = torch.cat([b["labels"] for b in torch.utils.data.DataLoader(pairs, batch_size=5)])
        parallel = torch.cat([b["labels"] for b in torch.utils.data.DataLoader(pairs, batch_size=5, num_workers=2)])
        assert torch.equal(serial, parallel)


def test_chunks_never_written_read_as_fill_values(tmp_path: Path):
    write_ours(tmp_path / "a.h5", n=3, t=2)
    with h5py.File(tmp_path / "holes.h5", "w") as f:  # our schema written by another tool, with holes
        with h5py.File(tmp_path / "a.h5") as src:
            for key, value in src.attrs.items():
                f.attrs[key] = value
            f["times"] = src["times"][...]
        d = f.create_dataset("fields", (3, 2, 2, 8, 8), dtype="f4", chunks=(1, 1, 2, 8, 8))
        d[0, 0] = 1.0
    source = open_source(tmp_path / "holes.h5")
    assert source.read(0, 0).min() == 1.0 and source.read(2, 1).max() == 0.0


def test_keep_freed_memory_is_safe_to_call_twice():
    import sys as _sys

    from foundation.data.memory import keep_freed_memory

    first, second = keep_freed_memory(), keep_freed_memory()
    assert first == second
    if _sys.platform.startswith("linux"):
        assert first  # glibc accepted the thresholds
