"""A `generate` request split over processes: the same file as one process, resumable, and it trains."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import REPO_ROOT

from foundation.pdes import FAMILIES, generate
from foundation.pdes.shards import batches_of_rank, generate_sharded, merge_shards, shard_folder

REQUEST = dict(snapshots=3, seed=5, batch=3, progress=False)  # 10 trajectories: batches of 3, 3, 3 and 1
AC = {**REQUEST, "eps": 0.08}  # an interface resolved at 16^2


def _same_file(a, b) -> None:
    with h5py.File(a, "r") as x, h5py.File(b, "r") as y:
        for name in ("fields", "static", "times"):
            assert (name in x) == (name in y)
            if name in x:
                assert np.array_equal(x[name][()], y[name][()]), name  # bit-identical
        for key in ("stats", "splits", "channel_names", "time_scale", "pde"):
            assert json.loads(x.attrs[key]) == json.loads(y.attrs[key]), key


def test_the_rank_comes_from_the_launcher(monkeypatch):
    from foundation.pdes.shards import distributed_rank

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "SLURM_STEP_NUM_TASKS", "SLURM_PROCID", "SLURM_LOCALID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_NTASKS", "8")  # an sbatch script's own shell: one process, not rank 0 of 8
    assert distributed_rank() == (0, 1, 0)
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "8")  # a task of srun
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert distributed_rank() == (5, 8, 1)
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun / accelerate launch win
    monkeypatch.setenv("RANK", "1")
    assert distributed_rank() == (1, 2, 0)


def test_batches_are_dealt_round_robin():
    assert [batches_of_rank(10, 3, r, 3) for r in range(3)] == [[0, 3], [1], [2]]
    assert sorted(sum((batches_of_rank(100, 7, r, 4) for r in range(4)), [])) == list(range(15))


@pytest.mark.slow
@pytest.mark.xdist_group("multiprocess")
def test_two_processes_under_torchrun_write_the_file_of_one_process(tmp_path):
    one = generate("ns-kf", 10, 16, tmp_path / "one.h5", **REQUEST)  # static forcing too
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += ["-m", "foundation.pdes", "generate", "--pde", "ns-kf", "--trajectories", "10", "--resolution", "16"]
    cmd += ["--snapshots", "3", "--seed", "5", "--batch", "3", "--no-progress", "--out", str(tmp_path / "two.h5")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _same_file(one, tmp_path / "two.h5")
    with h5py.File(tmp_path / "two.h5", "r") as f:
        assert json.loads(f.attrs["provenance"])["ranks"] == 2
    assert not shard_folder(tmp_path / "two.h5").exists()  # joined, then removed


def test_an_interrupted_request_keeps_finished_shards_and_refuses_stale_ones(tmp_path, monkeypatch):
    out = tmp_path / "ac.h5"
    # rank 1 of 3 finished before the interruption; ranks 0 and 2 did not
    shard = generate_sharded("allen-cahn", 10, 16, out, rank=1, world_size=3, merge=False, **AC)
    stamp = shard.stat().st_mtime_ns
    family = FAMILIES["allen-cahn"]
    calls = []
    simulate = family.simulate
    counted = dataclasses.replace(family, simulate=lambda *a, **k: calls.append(a[0]) or simulate(*a, **k))
    monkeypatch.setitem(FAMILIES, "allen-cahn", counted)  # counts the trajectories simulated
    generate_sharded("allen-cahn", 10, 16, out, rank=2, world_size=3, merge=False, **AC)
    generate_sharded("allen-cahn", 10, 16, out, rank=1, world_size=3, merge=False, **AC)  # rerun: kept
    assert calls == [3] and shard.stat().st_mtime_ns == stamp  # only rank 2's batch 2 was simulated
    with pytest.raises(ValueError, match="shards .* are missing"):
        merge_shards(out)  # rank 0 never ran: nothing half-joined
    assert not out.exists()
    merged = generate_sharded("allen-cahn", 10, 16, out, rank=0, world_size=3, **AC)  # waits, then joins
    _same_file(generate("allen-cahn", 10, 16, tmp_path / "one.h5", **AC), merged)
    # a shard left by another request (here another seed) is refused, not mixed in
    generate_sharded("allen-cahn", 10, 16, tmp_path / "b.h5", rank=1, world_size=2, merge=False, **AC)
    with pytest.raises(ValueError, match="answers another request"):
        generate_sharded("allen-cahn", 10, 16, tmp_path / "b.h5", rank=1, world_size=2, **{**AC, "seed": 6})


def test_a_merged_corpus_trains_through_pretrain(tmp_path, capsys):
    from pretrain.__main__ import main

    out = tmp_path / "ns.h5"
    for rank in (1, 0):
        generate_sharded("ns-sines", 8, 16, out, rank=rank, world_size=2, merge=rank == 0, **REQUEST)
    argv = ["--preset", "tiny", "--datasets", str(out), "--max_steps", "2", "--batch_size", "4", "--eval_every", "0"]
    argv += ["--save_every", "0", "--tracker", "none", "--output_dir", str(tmp_path / "run"), "--warmup_steps", "0"]
    assert main(argv) == 0
    assert json.loads((tmp_path / "run" / "result.json").read_text())["step"] == 2
