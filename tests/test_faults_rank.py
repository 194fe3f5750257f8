"""A dead rank is detected: kill -9 of one real worker of a 2-process DeepSpeed ZeRO-2 run (gloo, CPU).

The survivor must exit within a bounded time with one line naming the lost rank, the last complete checkpoint
must be intact, and rerunning the same command must continue the uninterrupted run's loss curve exactly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import LAUNCH_ENV, REPO_ROOT, multiprocess, zero2_pretrain

from pretrain.config import parse_args
from pretrain.peers import PeerWatch


def _command(corpus: list[Path], out: Path) -> list[str]:
    return zero2_pretrain(corpus, out, "--save_every", "3", "--peer_timeout_s", "20")


def _env() -> dict[str, str]:
    return LAUNCH_ENV


def _workers(launcher: int) -> dict[int, int]:
    """{rank: pid} of the launcher's worker processes, read from their environment (RANK)."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent != launcher:
                continue
            env = dict(kv.split("=", 1) for kv in (entry / "environ").read_text().split("\0") if "=" in kv)
        except (OSError, ValueError, IndexError):
            continue  # not a process, or one that ended meanwhile
        if "RANK" in env:
            found[int(env["RANK"])] = int(entry.name)
    return found


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "losses.jsonl").read_text().splitlines()]


@multiprocess
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the workers through /proc")
def test_killed_rank_is_named_within_seconds_and_the_rerun_resumes_exactly(zero2_reference, tmp_path: Path):
    corpus, straight = zero2_reference  # the uninterrupted run
    killed = tmp_path / "killed"
    command = _command(corpus, killed)
    log = (tmp_path / "killed.log").open("w+")
    launcher = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=_env())
    try:
        first = killed / "checkpoints" / "step-0000003" / "trainer_state.json"
        deadline = time.monotonic() + 240
        while not first.exists():
            assert launcher.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no checkpoint in 240 s"
            time.sleep(0.05)
        workers = _workers(launcher.pid)
        assert sorted(workers) == [0, 1], workers
        os.kill(workers[1], signal.SIGKILL)  # the worker, mid-run; not the launcher
        killed_at = time.monotonic()
        code = launcher.wait(timeout=60)  # bounded: the survivor does not wait in a collective
        detected = time.monotonic() - killed_at
    finally:
        if launcher.poll() is None:
            launcher.kill()
            for pid in _workers(launcher.pid).values():
                os.kill(pid, signal.SIGKILL)
    log.seek(0)
    output = log.read()
    assert code != 0 and detected < 30, (code, detected, output[-3000:])
    lines = [line for line in output.splitlines() if line.startswith("error: rank 1 of 2 lost")]
    assert len(lines) == 1, output[-4000:]
    assert f"pid {workers[1]}" in lines[0] and "rank 0 exits" in lines[0]
    assert "step-0000016" not in os.listdir(killed / "checkpoints"), "killed before the end"

    # The same command again resumes from the last complete checkpoint; the uninterrupted run is the reference.
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env=_env())
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-4000:]
    assert "resumed from" in rerun.stdout + rerun.stderr
    resumed, expected = _losses(killed), _losses(straight)
    assert len(expected) == 16
    assert max(abs(a - b) for a, b in zip(resumed, expected, strict=True)) == 0.0


class _Store:
    """A dict as a torch.distributed store (the calls PeerWatch makes)."""

    def __init__(self):
        self.data: dict[str, bytes] = {}

    def set(self, key: str, value: str) -> None:
        self.data[key] = value.encode()

    def get(self, key: str) -> bytes:
        return self.data[key]

    def check(self, keys: list[str]) -> bool:
        return all(k in self.data for k in keys)

    def add(self, key: str, amount: int) -> int:
        value = int(self.data.get(key, b"0")) + amount
        self.data[key] = str(value).encode()
        return value


def test_a_silent_rank_is_named_a_finished_one_is_not():
    store = _Store()
    watch = PeerWatch(store, rank=0, world=3, patience=0.2, interval=0.05)
    PeerWatch(store, rank=1, world=3, patience=0.2)  # ranks 1 and 2 register; rank 1 then leaves normally
    PeerWatch(store, rank=2, world=3, patience=0.2)
    assert watch.check() is None
    store.set("exit/1", "finished")
    time.sleep(0.3)
    store.add("beat/2", 1)  # rank 2 beats on time
    assert watch.check() is None and watch.watched == [2]  # rank 1 finished: no longer watched
    time.sleep(0.3)
    line = watch.check()
    assert line is not None and line.startswith("rank 2 of 3 lost (pid ") and "--peer_timeout_s 0.2" in line
    assert store.get("lost").decode() == line  # what every other rank prints


def test_timeouts_are_options():
    _, _, train = parse_args(["--datasets", "x.h5", "--peer_timeout_s", "0", "--collective_timeout_s", "90"])
    assert (train.peer_timeout_s, train.collective_timeout_s) == (0, 90)
    with pytest.raises(SystemExit):
        parse_args(["--datasets", "x.h5", "--collective_timeout_s", "0"])
