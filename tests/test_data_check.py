"""`python -m foundation.data check`: every NaN/Inf place of a real HDF5 file of our schema, found and reported."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from foundation.data import H5TrajectoryWriter, open_source
from foundation.data.__main__ import main
from foundation.data.check import Problem, scan, summary

RNG = np.random.default_rng(0)
SPLITS = {"train": (0, 8), "val": (8, 9), "test": (9, 10)}


def write_file(path: Path, splits=SPLITS, n=10) -> Path:
    """N=10 trajectories, T=4 snapshots of u, v, p on 8 x 8, one static field c (the writer refuses NaN/Inf,
    so tests plant them afterwards through h5py, as corruption after writing would)."""
    with H5TrajectoryWriter(
        path,
        n=n,
        times=np.linspace(0.0, 1.0, 4),
        channel_names=["u", "v", "p"],
        grid=(8, 8),
        static_names=["c"],
        splits=splits,
    ) as out:
        for i in range(n):
            out.write(i, RNG.normal(size=(4, 3, 8, 8)).astype(np.float32), RNG.random((1, 8, 8)).astype(np.float32))
    return path


def plant(path: Path) -> None:
    with h5py.File(path, "r+") as f:
        f["fields"][8, 1, 1, 2, 3] = np.nan  # val trajectory 8, snapshot 1, v: 2 NaN
        f["fields"][8, 1, 1, 5, 5] = np.nan
        f["fields"][3, 2, 2, 0, 0] = np.inf  # train trajectory 3, snapshot 2, p: 2 Inf (either sign)
        f["fields"][3, 2, 2, 7, 7] = -np.inf
        f["static"][5, 0, 4, 4] = np.inf  # train trajectory 5, static field c: 1 Inf


def test_check_clean_file_exits_0(tmp_path: Path, capsys):
    path = write_file(tmp_path / "clean.h5")
    assert main(["check", str(path), "--json", str(tmp_path / "report.json")]) == 0
    out, err = capsys.readouterr()
    assert out.strip().splitlines() == [
        f"check: OK, 10 trajectories x 4 snapshots + static fields, no NaN/Inf in {path}"
    ]
    assert err == ""  # stderr is not a TTY here: no progress bar
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ok"] is True and report["problems"] == [] and report["trajectories"] == 10


def test_check_finds_every_planted_nan_and_inf(tmp_path: Path, capsys):
    path = write_file(tmp_path / "bad.h5")
    plant(path)
    assert main(["check", str(path), "--json", str(tmp_path / "report.json")]) == 2
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert lines[0].split() == ["split", "trajectory", "snapshot", "channel", "nan", "inf"]
    assert [line.split() for line in lines[1:-1]] == [
        ["train", "3", "2", "p", "0", "2"],
        ["train", "5", "static", "c", "0", "1"],
        ["val", "8", "1", "v", "2", "0"],
    ]
    assert lines[-1] == f"check: 3 bad snapshots (1 static) in 3 trajectories (train 2, val 1) of {path}"
    assert err == ""
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["ok"] is False and report["splits"] is None
    assert report["problems"] == [
        {"split": "train", "trajectory": 3, "snapshot": 2, "channel": "p", "nan": 0, "inf": 2, "error": None},
        {"split": "train", "trajectory": 5, "snapshot": "static", "channel": "c", "nan": 0, "inf": 1, "error": None},
        {"split": "val", "trajectory": 8, "snapshot": 1, "channel": "v", "nan": 2, "inf": 0, "error": None},
    ]


def test_check_split_val_finds_only_the_nan(tmp_path: Path, capsys):
    path = write_file(tmp_path / "bad.h5")
    plant(path)
    assert main(["check", str(path), "--split", "val", "--quiet"]) == 2
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split() for line in lines[1:-1]] == [["val", "8", "1", "v", "2", "0"]]
    assert lines[-1] == f"check: 1 bad snapshot in 1 trajectory (val 1) of {path}"
    assert main(["check", str(path), "--split", "test"]) == 0
    assert (
        capsys.readouterr().out.strip()
        == f"check: OK, 1 trajectory (test) x 4 snapshots + static fields, no NaN/Inf in {path}"
    )


def test_check_missing_file_is_one_error_line(tmp_path: Path, capsys):
    assert main(["check", str(tmp_path / "nope.h5")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [f"error: {tmp_path / 'nope.h5'}: no such file"]


def test_scan_reports_trajectories_outside_every_split_and_shows_progress(tmp_path: Path, capsys):
    path = write_file(tmp_path / "a.h5", splits={"train": (0, 6), "val": (6, 8), "test": (8, 9)})  # 9 in none
    with h5py.File(path, "r+") as f:
        f["fields"][9, 3, 0, 1, 1] = np.nan  # NaN and Inf in one channel: counted apart
        f["fields"][9, 3, 0, 1, 2] = np.inf
    with open_source(path) as source:
        problems = scan(source, progress=True)
        assert problems == [Problem(None, 9, 3, "u", nan=1, inf=1)]
        assert summary(source, problems) == f"check: 1 bad snapshot in 1 trajectory (no split 1) of {path}"
        assert scan(source, ["train", "val", "test"], progress=False) == []
    assert "check a.h5" in capsys.readouterr().err  # the tqdm bar, on stderr


def test_check_reports_unreadable_chunks_and_keeps_scanning(tmp_path: Path, capsys):
    path = write_file(tmp_path / "a.h5")
    with h5py.File(path, "r+") as f:  # the same data, gzip-compressed (as published files often are)
        fields = f["fields"][...]
        fields[8, 0, 0, 0, 0] = np.nan
        del f["fields"]
        d = f.create_dataset("fields", data=fields, chunks=(1, 1, 3, 8, 8), compression="gzip")
        info = d.id.get_chunk_info_by_coord((2, 1, 0, 0, 0))
    with open(path, "r+b") as raw:  # a damaged download: garbage in one compressed chunk
        raw.seek(info.byte_offset)
        raw.write(b"\xff" * info.size)
    assert main(["check", str(path), "--json", str(tmp_path / "r.json")]) == 2
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[1].split()[:6] == ["train", "2", "1", "-", "-", "-"] and "unreadable: OSError" in lines[1]
    assert lines[2].split() == ["val", "8", "0", "u", "1", "0"]
    assert lines[-1] == f"check: 2 bad snapshots (1 unreadable) in 2 trajectories (train 1, val 1) of {path}"
    problem = json.loads((tmp_path / "r.json").read_text())["problems"][0]
    assert problem["channel"] is None and problem["error"].startswith("OSError")
