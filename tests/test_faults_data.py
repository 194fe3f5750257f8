"""Non-finite data is refused by pretraining and fine-tuning before training (issue 28, item 1).

Real HDF5 files from the generators, with real NaN/Inf planted through h5py (as corruption after writing would);
real in-process runs of `python -m pretrain` and `python -m finetune`. The refusal comes before the model, any step
and any file in --output_dir; `--nonfinite skip` drops exactly the pairs that read a bad place, `off` reads nothing.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from foundation.data import All2AllPairs, DataError, open_source
from foundation.pdes import generate
from pretrain.config import DataArguments

SNAPSHOTS = 4  # 10 all2all pairs per trajectory (identities included); splits train 0-3, val 4, test 5


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> dict[str, Path]:
    """Clean files, generated once: ns-sines (u, v) and wave-gauss (u, static c), 6 trajectories of 16 x 16."""
    folder = tmp_path_factory.mktemp("clean")
    files = {}
    for family in ("ns-sines", "wave-gauss"):
        files[family] = folder / f"{family}.h5"
        generate(family, 6, 16, files[family], snapshots=SNAPSHOTS, seed=0, batch=6, progress=False)
    return files


def corrupt(clean: dict[str, Path], tmp_path: Path, family: str, *places: tuple) -> Path:
    """A copy of a clean file with `value` written at each (dataset, index, value), e.g. ("fields", (1, 2, 0, 3, 3),
    np.inf): trajectory 1, snapshot 2, channel 0."""
    path = tmp_path / f"bad-{family}.h5"
    shutil.copy(clean[family], path)
    with h5py.File(path, "r+") as f:
        for dataset, index, value in places:
            f[dataset][index] = value
    return path


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def existing_run(tmp_path: Path) -> Path:
    """An output folder holding a user's earlier run: a marker and a checkpoint that must survive a refusal."""
    out = tmp_path / "run"
    (out / "checkpoints" / "step-00000002").mkdir(parents=True)
    (out / "checkpoints" / "step-00000002" / "state.bin").write_bytes(b"\x00weights\x01" * 100)
    (out / "MARKER").write_text("the user's earlier run\n")
    return out


def pretrain(path: Path, out: Path, *flags: str, callbacks=()) -> int:
    from pretrain.__main__ import main

    argv = ["--preset", "tiny", "--datasets", str(path), "--output_dir", str(out), "--max_steps", "3"]
    return main([*argv, "--batch_size", "4", "--tracker", "none", "--eval_every", "0", *flags], callbacks=callbacks)


def refused_before_training(capsys, monkeypatch, run) -> str:
    """Run `run()` with model building and steps booby-trapped; it must exit 2 with one `error:` line: returned."""
    import finetune.trainer
    import pretrain.trainer

    def no_model(*args, **kwargs):
        raise AssertionError("the model was built: the data check came too late")

    monkeypatch.setattr(pretrain.trainer, "build_model", no_model)
    monkeypatch.setattr(finetune.trainer, "adapted_model", no_model)
    steps: list[int] = []
    assert run(lambda state: steps.append(state.step)) == 2
    assert steps == []
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err + out
    return lines[0]


def test_pretrain_refuses_inf_in_one_train_snapshot_and_leaves_the_output_folder(clean, tmp_path, capsys, monkeypatch):
    path = corrupt(clean, tmp_path, "ns-sines", ("fields", (1, 2, 0, 3, 3), np.inf))
    out = existing_run(tmp_path)
    before = tree(out)
    line = refused_before_training(capsys, monkeypatch, lambda cb: pretrain(path, out, callbacks=[cb]))
    assert line.startswith(f"error: {path}: NaN/Inf in split train, trajectory 1, snapshot 2, field u (1 Inf); ")
    assert "more bad place" not in line  # the only one
    assert "--nonfinite skip" in line and "--nonfinite off" in line
    assert tree(out) == before  # nothing written over (or beside) the user's run


def test_pretrain_refuses_nan_in_a_static_field_and_counts_the_other_places(clean, tmp_path, capsys, monkeypatch):
    path = corrupt(
        clean,
        tmp_path,
        "wave-gauss",
        ("static", (2, 0, 5, 5), np.nan),
        ("fields", (3, 1, 0, 0, 0), -np.inf),
        ("fields", (4, 3, 0, 1, 1), np.nan),  # val
        ("fields", (5, 3, 0, 1, 1), np.nan),  # test: pretraining never reads it, so it is not counted
    )
    out = tmp_path / "fresh"  # not there yet: the refusal must not create it either
    line = refused_before_training(capsys, monkeypatch, lambda cb: pretrain(path, out, callbacks=[cb]))
    assert f"{path}: NaN/Inf in split train, trajectory 2, static fields, field c (1 NaN), " in line
    assert "and 2 more bad places (train 1, val 1);" in line
    assert not out.exists()


def test_pretrain_refuses_nan_in_the_val_split(clean, tmp_path, capsys, monkeypatch):
    path = corrupt(
        clean, tmp_path, "ns-sines", ("fields", (4, 3, 1, 0, 0), np.nan), ("fields", (4, 3, 0, 0, 0), np.inf)
    )
    out = existing_run(tmp_path)
    before = tree(out)
    line = refused_before_training(capsys, monkeypatch, lambda cb: pretrain(path, out, callbacks=[cb]))
    # both channels of the one place are named
    assert f"{path}: NaN/Inf in split val, trajectory 4, snapshot 3, fields u (1 Inf), v (1 NaN); " in line
    assert tree(out) == before


def test_finetune_refuses_nan_in_the_evaluation_split_before_training(clean, base_dir, tmp_path, capsys, monkeypatch):
    from finetune.__main__ import main

    path = corrupt(clean, tmp_path, "wave-gauss", ("fields", (5, 2, 0, 7, 7), np.nan))  # test: only evaluation reads
    out = existing_run(tmp_path)
    before = tree(out)
    argv = ["--init_from", str(base_dir), "--datasets", str(path), "--output_dir", str(out), "--strategy", "head"]
    argv += ["--max_steps", "2", "--batch_size", "4", "--tracker", "none"]
    line = refused_before_training(capsys, monkeypatch, lambda cb: main(argv, callbacks=[cb]))
    assert f"{path}: NaN/Inf in split test, trajectory 5, snapshot 2, field u (1 NaN); " in line
    # skip cannot help: the evaluation after training reads the whole split
    line = refused_before_training(capsys, monkeypatch, lambda cb: main([*argv, "--nonfinite", "skip"], callbacks=[cb]))
    assert "--nonfinite skip cannot drop them" in line and "--eval_split test" in line
    assert tree(out) == before


def expected_drops(path: Path, split: tuple[int, int]) -> tuple[int, int]:
    """(pairs, bad pairs) of the all2all pairs i <= j of a split, counted from the file with h5py alone: a pair is
    bad when snapshot i or j or the trajectory's static fields hold NaN/Inf."""
    with h5py.File(path, "r") as f:
        fields = f["fields"][split[0] : split[1]]
        static = f["static"][split[0] : split[1]] if "static" in f else np.zeros((len(fields), 0))
    pairs = [(i, j) for i in range(SNAPSHOTS) for j in range(i, SNAPSHOTS)]
    bad = 0
    for trajectory, statics in zip(fields, static):
        good = np.isfinite(trajectory).reshape(SNAPSHOTS, -1).all(axis=1)
        bad += len(pairs) if not np.isfinite(statics).all() else sum(1 for i, j in pairs if not (good[i] and good[j]))
    return len(fields) * len(pairs), bad


def test_pretrain_skip_trains_and_drops_exactly_the_bad_pairs(clean, tmp_path, capsys):
    path = corrupt(
        clean,
        tmp_path,
        "wave-gauss",
        ("fields", (1, 2, 0, 3, 3), np.inf),
        ("fields", (1, 3, 0, 3, 3), np.nan),
        ("static", (3, 0, 0, 0), np.nan),
        ("fields", (4, 0, 0, 0, 0), np.inf),  # the one val trajectory... is the whole val split
    )
    assert pretrain(path, tmp_path / "no-val", "--nonfinite", "skip") == 2  # nothing left to validate on
    assert "every val pair reads NaN/Inf" in capsys.readouterr().err
    with h5py.File(path, "r+") as f:  # val clean again: the run trains
        f["fields"][4, 0, 0, 0, 0] = 0.0
    out = tmp_path / "run"
    assert pretrain(path, out, "--nonfinite", "skip") == 0
    total, bad = expected_drops(path, (0, 4))
    assert (total, bad) == (40, 7 + 10)  # trajectory 1: all but (0, 0), (0, 1), (1, 1); trajectory 3: all 10
    stdout = capsys.readouterr().out
    assert stdout.count("[data] --nonfinite skip:") == 1
    assert f"dropped {bad} of {total} train pairs, 0 of 10 val pairs" in stdout
    recorded = json.loads((out / "run_args.json").read_text())["data"]["nonfinite_skipped"]
    assert recorded == [
        {
            "source": str(path),
            "bad_snapshots": 2,
            "bad_static": 1,
            "train_pairs": total,
            "train_pairs_dropped": bad,
            "val_pairs": 10,
            "val_pairs_dropped": 0,
            "val_trajectories_dropped": 0,
        }
    ]


@pytest.mark.parametrize("rollout_steps", [0, 2])
def test_skip_leaves_every_pair_and_rollout_readable(clean, tmp_path, rollout_steps):
    """Every kept pair reads cleanly (the read-time check would raise otherwise), and the dropped count equals the
    number of pairs of the unfiltered index whose read fails: an independent count, rollout sequences included."""
    from pretrain.build import build_data

    path = corrupt(clean, tmp_path, "ns-sines", ("fields", (2, 1, 1, 0, 0), np.nan))
    args = DataArguments(datasets=[str(path)], nonfinite="skip", rollout_steps=rollout_steps)
    data = build_data(args, seed=0, rank=0, world=1)
    reference = All2AllPairs(open_source(path), "train", rollout_steps=rollout_steps)
    failing = 0
    for k in range(len(reference)):
        try:
            reference[k]
        except DataError:
            failing += 1
    assert failing > 0 and args.nonfinite_skipped[0]["train_pairs_dropped"] == failing
    assert len(data.train_set) == len(reference) - failing
    for k in range(len(data.train_set)):
        item = data.train_set[k]
        assert all(bool(v.isfinite().all()) for v in item.values() if v.is_floating_point())
    kept = {data.train_set.parts[0].locate(k)[:3] for k in range(len(data.train_set))}
    assert len(kept) == len(data.train_set)  # no pair twice
    assert args.nonfinite_skipped[0]["val_pairs_dropped"] == 0


def test_whole_trajectory_exclusion_keeps_the_pair_layout(clean):
    """Validation drops the trajectory: its rollouts index pairs as trajectory slot x pattern."""
    pairs = All2AllPairs(open_source(clean["ns-sines"]), "train", stride=2)
    # 3 pairs per trajectory on snapshots 0, 2: trajectory 2's bad snapshot 1 is not in use
    assert pairs.exclude([(1, 2), (2, 1), (3, "static")], whole_trajectories=True) == 2 * 3
    assert list(pairs.trajectories) == [0, 2] and len(pairs) == 6
    assert [pairs.locate(k)[0] for k in range(len(pairs))] == [0] * 3 + [2] * 3
    with pytest.raises(RuntimeError, match="excluded already"):
        pairs.exclude([(0, 0)])


def test_the_check_reads_only_what_the_run_uses(clean, tmp_path, capsys):
    from pretrain.build import build_data

    # snapshot 1 is not in use at stride 2 (0, 2), trajectory 3 not among the first 2 training trajectories
    path = corrupt(
        clean, tmp_path, "ns-sines", ("fields", (0, 1, 0, 0, 0), np.inf), ("fields", (3, 0, 0, 0, 0), np.nan)
    )
    data = build_data(DataArguments(datasets=[str(path)], stride=2), seed=0, rank=0, world=1, max_trajectories=2)
    assert len(data.train_set) == 2 * 3
    assert f"[data] check: {path}: 3 trajectories (train, val) x 2 snapshots, no NaN/Inf" in capsys.readouterr().out
    with pytest.raises(DataError, match=r"split train, trajectory 3, snapshot 0, field u \(1 NaN\)"):
        build_data(DataArguments(datasets=[str(path)], stride=2), seed=0, rank=0, world=1)


def test_nonfinite_off_does_not_scan(clean, tmp_path, capsys, monkeypatch):
    import pretrain.build
    from pretrain.build import build_data

    def no_scan(*args, **kwargs):
        raise AssertionError("--nonfinite off scanned")

    monkeypatch.setattr(pretrain.build, "scan", no_scan)
    path = corrupt(clean, tmp_path, "ns-sines", ("fields", (1, 2, 0, 3, 3), np.inf))
    data = build_data(DataArguments(datasets=[str(path)], nonfinite="off"), seed=0, rank=0, world=1)
    assert len(data.train_set) == 40  # nothing refused, nothing dropped
    assert "[data]" not in capsys.readouterr().out
    with pytest.raises(DataError, match="trajectory 1, snapshot 2 contains NaN or Inf"):  # only the read refuses
        data.train_set[1 * 10 + 2]  # pair (0, 2) of trajectory 1
    with pytest.raises(AssertionError, match="off scanned"):  # the trap is live: refuse does scan
        build_data(DataArguments(datasets=[str(path)]), seed=0, rank=0, world=1)


def test_missing_statistics_are_computed_after_the_check_without_the_skipped_places(clean, tmp_path):
    from foundation.data.stats import compute_stats
    from pretrain.build import build_data

    path = tmp_path / "no-stats.h5"
    shutil.copy(clean["ns-sines"], path)
    with h5py.File(path, "r+") as f:
        del f.attrs["stats"]
    with open_source(path) as source:
        want = compute_stats(source)
    data = build_data(DataArguments(datasets=[str(path)]), seed=0, rank=0, world=1)
    data.sources[0].close()
    assert data.stats["u"] == pytest.approx((want["mean"][0], want["std"][0]), rel=1e-12)
    with h5py.File(path, "r+") as f:
        f["fields"][0, 1, 0, 0, 0] = np.inf
    with pytest.raises(DataError, match="split train, trajectory 0, snapshot 1, field u"):
        build_data(DataArguments(datasets=[str(path)]), seed=0, rank=0, world=1)
    data = build_data(DataArguments(datasets=[str(path)], nonfinite="skip"), seed=0, rank=0, world=1)
    assert all(np.isfinite(data.stats[c]).all() for c in ("u", "v"))


def test_nonfinite_option_is_checked():
    from pretrain.config import OptionError

    with pytest.raises(OptionError, match="--nonfinite must be one of refuse, skip, off, got 'drop'"):
        DataArguments(nonfinite="drop")
