"""Checkpoint faults caused for real: a full filesystem and an injected ENOSPC in the middle of a save, a write cut
short by a kill, corrupt checkpoints (truncated, missing, garbled files; a missing ZeRO shard) when resuming, for
pretraining and fine-tuning. Every resume must continue the uninterrupted run's loss curve exactly."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import multiprocess, run_launch, zero2_pretrain

from foundation.pdes import generate
from pretrain.checkpoint import CorruptCheckpoint, check


class _Killed(Exception):
    """Raised to stop an in-process run where a kill would (nothing after it runs)."""


def _args(data: Path, out: Path, *extra: str) -> list[str]:
    """A tiny 6-step run on `data`, a checkpoint every 2 steps."""
    args = ["--preset", "tiny", "--datasets", str(data), "--channels", "rho", "u", "v", "p", "--output_dir", str(out)]
    args += ["--batch_size", "4", "--max_steps", "6", "--save_every", "2", "--eval_every", "0", "--eval_pairs", "4"]
    return args + ["--warmup_steps", "1", "--learning_rate", "1e-2", "--tracker", "none", *extra]


def _pretrain(argv: list[str], killed_after: int | None = None, callbacks=()) -> int:
    """`python -m pretrain ARGV` in this process; -9 when stopped (after step `killed_after`, or by a _Killed)."""
    from pretrain.__main__ import main

    def kill(state) -> None:
        if killed_after is not None and state.step >= killed_after:
            raise _Killed

    try:
        return main(argv, callbacks=[*callbacks, kill])
    except _Killed:
        return -9


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "losses.jsonl").read_text().splitlines()]


def _max_difference(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b) == 6
    return max(abs(x - y) for x, y in zip(a, b))


def _names(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    return generate("ns-sines", 6, 16, folder / "ns.h5", snapshots=4, seed=0, batch=6, progress=False)


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory) -> Path:
    """The uninterrupted run: 6 steps, checkpoints at 2, 4 and 6 (the last 2 kept)."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert _pretrain(_args(data, out)) == 0
    return out


@pytest.fixture(scope="module")
def killed(data, tmp_path_factory) -> Path:
    """A run killed after step 5: checkpoints step-0000002 and step-0000004 (both valid), losses of steps 1-5."""
    out = tmp_path_factory.mktemp("killed") / "run"
    assert _pretrain(_args(data, out), killed_after=5) == -9
    assert _names(out) == ["step-0000002", "step-0000004"]
    return out


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


# ----------------------------------------------------------------------------------------------- a failed write
def _fails_at_step_4_then_resumes(data, straight, out, capsys, make_room=None) -> None:
    """Run into a save that fails at step 4: one clear error, step-0000002 intact and still the latest, no partial
    folder; then (after `make_room`) the same command resumes from step 2 and gives the uninterrupted losses."""
    kept: dict[str, str] = {}

    def remember(state) -> None:
        if state.step == 2:
            kept.update(_digest(out / "checkpoints" / "step-0000002"))

    capsys.readouterr()
    assert _pretrain(_args(data, out), callbacks=[remember]) == 2
    err = capsys.readouterr().err
    assert "error: could not write checkpoint" in err and "step-0000004" in err and "Traceback" not in err
    assert "step-0000002 is intact" in err
    assert _names(out) == ["step-0000002"]  # the half-written .partial-step-0000004 was removed
    assert _digest(out / "checkpoints" / "step-0000002") == kept  # byte for byte what step 2 wrote
    check(out / "checkpoints" / "step-0000002")
    if make_room is not None:
        make_room()
    assert _pretrain(_args(data, out)) == 0
    assert "resumed from" in capsys.readouterr().out
    assert _max_difference(_losses(out), _losses(straight)) == 0.0
    assert _names(out) == ["step-0000004", "step-0000006"]


@pytest.fixture
def small_filesystem(tmp_path, straight):
    """A tmpfs that holds one checkpoint of the run and a half: the second fills it in the middle of its writes."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    one = sum(p.stat().st_size for p in (straight / "checkpoints" / "step-0000006").rglob("*") if p.is_file())
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={int(one * 1.5)}", "tmpfs", str(mount)], text=True, capture_output=True
    )
    if proc.returncode:
        pytest.skip(f"this sandbox refuses to mount a tmpfs: {proc.stderr.strip()}")

    def grow() -> None:  # the user frees space or gets a bigger quota
        subprocess.run(["mount", "-o", f"remount,size={one * 6}", str(mount)], check=True)

    yield mount, grow
    subprocess.run(["umount", str(mount)], check=False)


def test_a_full_filesystem_during_a_save_stops_keeps_the_previous_checkpoint_and_resumes_exactly(
    data, straight, small_filesystem, capsys
):
    mount, grow = small_filesystem
    _fails_at_step_4_then_resumes(data, straight, mount / "run", capsys, make_room=grow)


def test_enospc_in_the_middle_of_a_file_of_a_save_is_the_same_clear_stop(data, straight, tmp_path, capsys, monkeypatch):
    """Where no tmpfs can be mounted: the writer accelerate's save_state uses for the optimizer state writes half
    of optimizer.bin at step 4, then fails as a full disk does."""
    real = torch.save

    def full_disk(obj, f, *args, **kwargs):
        if ".partial-step-0000004" not in str(f):
            return real(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real(obj, buffer, *args, **kwargs)
        with open(f, "wb") as file:
            file.write(buffer.getvalue()[: buffer.tell() // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))

    monkeypatch.setattr(torch, "save", full_disk)
    out = tmp_path / "run"

    def restore() -> None:
        monkeypatch.setattr(torch, "save", real)

    _fails_at_step_4_then_resumes(data, straight, out, capsys, make_room=restore)


def test_a_save_cut_short_by_a_kill_is_never_resumed_from_and_is_removed(data, straight, tmp_path, capsys, monkeypatch):
    """A node lost in the middle of writing step 4: half of optimizer.bin on disk in .partial-step-0000004."""
    real = torch.save

    def dies(obj, f, *args, **kwargs):
        if ".partial-step-0000004" in str(f) and str(f).endswith("optimizer.bin"):
            buffer = io.BytesIO()
            real(obj, buffer, *args, **kwargs)
            Path(f).write_bytes(buffer.getvalue()[: buffer.tell() // 2])
            raise _Killed
        return real(obj, f, *args, **kwargs)

    out = tmp_path / "run"
    monkeypatch.setattr(torch, "save", dies)
    assert _pretrain(_args(data, out)) == -9
    monkeypatch.setattr(torch, "save", real)
    assert _names(out) == [".partial-step-0000004", "step-0000002"]
    capsys.readouterr()
    assert _pretrain(_args(data, out)) == 0
    captured = capsys.readouterr()
    assert "resumed from" in captured.out and "step-0000002" in captured.out
    assert "removed" in captured.err and ".partial-step-0000004" in captured.err
    assert _max_difference(_losses(out), _losses(straight)) == 0.0
    assert _names(out) == ["step-0000004", "step-0000006"]


# ----------------------------------------------------------------------------------------------- validation
def _flip_middle_byte(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def _drop_manifest(folder: Path) -> None:
    saved = json.loads((folder / "trainer_state.json").read_text())
    del saved["files"]
    (folder / "trainer_state.json").write_text(json.dumps(saved))


CORRUPTIONS = {
    "truncated-model": (lambda f: _truncate(f / "model.safetensors"), "model.safetensors"),
    "truncated-optimizer": (lambda f: _truncate(f / "optimizer.bin"), "optimizer.bin"),
    "garbled-optimizer": (lambda f: _flip_middle_byte(f / "optimizer.bin"), "optimizer.bin"),
    "missing-rng-state": (lambda f: (f / "random_states_0.pkl").unlink(), "random_states_0.pkl"),
    "garbage-scheduler": (lambda f: (f / "scheduler.bin").write_bytes(b"\0" * 1401), "scheduler.bin"),
    "unreadable-trainer-state": (lambda f: (f / "trainer_state.json").write_text('{"step": 4,'), "trainer_state"),
    # a checkpoint written before the manifest existed: the layout and format checks alone
    "old-truncated-model": (lambda f: (_drop_manifest(f), _truncate(f / "model.safetensors")), "model.safetensors"),
    "old-missing-optimizer": (lambda f: (_drop_manifest(f), (f / "optimizer.bin").unlink()), "optimizer.bin"),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=list(CORRUPTIONS))
def test_check_names_what_is_wrong_with_a_corrupt_checkpoint(killed, tmp_path, corruption):
    folder = shutil.copytree(killed / "checkpoints" / "step-0000004", tmp_path / "step-0000004")
    check(folder)  # the intact copy passes
    corrupt, culprit = CORRUPTIONS[corruption]
    corrupt(folder)
    with pytest.raises(CorruptCheckpoint, match=culprit):
        check(folder)


def test_resume_sets_a_corrupt_latest_checkpoint_aside_and_falls_back_exactly(data, straight, killed, tmp_path, capsys):
    out = _copy(killed, tmp_path / "run")
    _truncate(out / "checkpoints" / "step-0000004" / "optimizer.bin")
    truncated = _digest(out / "checkpoints" / "step-0000004")
    capsys.readouterr()
    assert _pretrain(_args(data, out)) == 0
    captured = capsys.readouterr()
    assert "warning: checkpoint" in captured.err and "step-0000004 is corrupt" in captured.err
    assert "optimizer.bin" in captured.err and "corrupt-step-0000004" in captured.err
    assert "resumed from" in captured.out and "step-0000002" in captured.out
    assert _max_difference(_losses(out), _losses(straight)) == 0.0
    # kept for the user as it was, out of the way of later saves and pruning
    assert _names(out) == ["corrupt-step-0000004", "step-0000004", "step-0000006"]
    assert _digest(out / "checkpoints" / "corrupt-step-0000004") == truncated


def test_only_corrupt_checkpoints_is_one_clear_error_and_resume_false_starts_over(data, killed, tmp_path, capsys):
    out = _copy(killed, tmp_path / "run")
    (out / "checkpoints" / "step-0000002" / "random_states_0.pkl").unlink()
    _truncate(out / "checkpoints" / "step-0000004" / "model.safetensors")
    capsys.readouterr()
    assert _pretrain(_args(data, out)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no usable checkpoint") and "Traceback" not in err
    assert "step-0000004: model.safetensors" in err and "step-0000002: random_states_0.pkl" in err
    assert "--resume false" in err
    assert _names(out) == ["step-0000002", "step-0000004"]  # nothing renamed, nothing deleted
    assert _pretrain(_args(data, out, "--resume", "false")) == 0  # what the message offers works


# ----------------------------------------------------------------------------------------------- fine-tuning
def test_finetuning_falls_back_past_a_corrupt_latest_checkpoint_exactly(base_dir, tmp_path, capsys):
    from finetune.__main__ import main

    ac = generate("allen-cahn", 8, 16, tmp_path / "ac.h5", snapshots=4, seed=3, progress=False, eps=0.08)

    def argv(out: Path) -> list[str]:
        return ["--init_from", str(base_dir), "--datasets", str(ac), "--strategy", "full", "--output_dir", str(out),
                "--max_steps", "6", "--save_every", "2", "--eval_every", "0", "--batch_size", "4",
                "--eval_pairs", "4", "--warmup_steps", "1", "--tracker", "none"]  # fmt: skip

    def kill(state) -> None:
        if state.step >= 5:
            raise _Killed

    straight, out = tmp_path / "straight", tmp_path / "run"
    assert main(argv(straight)) == 0
    with pytest.raises(_Killed):
        main(argv(out), callbacks=[kill])
    _truncate(out / "checkpoints" / "step-0000004" / "model.safetensors")
    capsys.readouterr()
    assert main(argv(out)) == 0
    captured = capsys.readouterr()
    assert "step-0000004 is corrupt" in captured.err and "model.safetensors" in captured.err
    assert "resumed from" in captured.out and "step-0000002" in captured.out
    assert _max_difference(_losses(out), _losses(straight)) == 0.0
    assert "corrupt-step-0000004" in _names(out)


# ----------------------------------------------------------------------------------------------- DeepSpeed ZeRO-2
@multiprocess
def test_zero2_missing_optimizer_shard_is_detected_and_resume_falls_back(zero2_reference, tmp_path):
    corpus, straight = zero2_reference  # the uninterrupted run: checkpoints at steps 12, 15 and 16
    out = tmp_path / "run"
    for step in ("step-0000012", "step-0000015"):  # as if killed after step 15
        shutil.copytree(straight / "checkpoints" / step, out / "checkpoints" / step)
    shutil.copy(straight / "losses.jsonl", out / "losses.jsonl")
    shard = out / "checkpoints" / "step-0000015" / "pytorch_model" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    shard.unlink()

    # without the manifest too (an older checkpoint): the layout rule finds the missing shard
    old = shutil.copytree(out / "checkpoints" / "step-0000015", tmp_path / "old" / "step-0000015")
    _drop_manifest(old)
    with pytest.raises(CorruptCheckpoint, match="ZeRO optimizer shard of rank 1"):
        check(old)
    check(out / "checkpoints" / "step-0000012")

    proc = run_launch(zero2_pretrain(corpus, out, "--save_every", "3", "--keep_last", "3"))
    assert "step-0000015 is corrupt" in proc.stderr and "zero_pp_rank_1" in proc.stderr
    assert "resumed from" in proc.stdout + proc.stderr and "step-0000012" in proc.stdout + proc.stderr
    resumed, reference = _losses(out), _losses(straight)
    assert len(resumed) == len(reference) == 16
    difference = max(abs(x - y) for x, y in zip(resumed, reference))
    print(f"ZeRO-2 resume: max |loss difference| = {difference}")
    assert difference == 0.0
    assert (out / "checkpoints" / "corrupt-step-0000015").is_dir()
