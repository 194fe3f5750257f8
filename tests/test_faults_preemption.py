"""Preemption for real: SIGTERM (what SLURM sends before it kills a job) to a running `python -m pretrain`, in one
process and to the `accelerate launch` of a 2-process DeepSpeed ZeRO-2 run; the run checkpoints at the next
synchronised step, exits with PREEMPTED_EXIT, and the same command resumes the uninterrupted run's losses exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import LAUNCH_ENV, REPO_ROOT, multiprocess, run_launch, zero2_pretrain

from foundation.pdes import generate
from pretrain.loop import PREEMPTED_EXIT, Preemption

ENV = LAUNCH_ENV


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    return generate("ns-sines", 8, 16, folder / "ns.h5", snapshots=4, seed=0, batch=8, progress=False)


def _argv(corpus: Path, out: Path, steps: int) -> list[str]:
    # log_every 3 and max_nonfinite_steps 5 (the default): the ranks sync at steps 3, 5, 6, 9, 10, ...; no periodic
    # checkpoint before the end, so every step a preempted run keeps is kept by its preemption checkpoint.
    argv = ["--preset", "tiny", "--datasets", str(corpus), "--output_dir", str(out), "--batch_size", "4"]
    argv += ["--max_steps", str(steps), "--save_every", "0", "--eval_every", "0", "--log_every", "3"]
    return argv + ["--eval_pairs", "4", "--tracker", "none", "--learning_rate", "1e-2", "--warmup_steps", "2"]


def _command(argv: list[str]) -> list[str]:
    return [sys.executable, "-m", "pretrain", *argv]


def _preempt(command: list[str], out: Path, after_step: int = 3):
    """Start `command`, send SIGTERM to its first process once step `after_step` is logged; (returncode, stderr)."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO_ROOT, env=ENV)
    losses, deadline = out / "losses.jsonl", time.monotonic() + 300
    while not (losses.exists() and _steps(losses) and _steps(losses)[-1] >= after_step):
        assert proc.poll() is None, proc.communicate()[1][-4000:]
        assert time.monotonic() < deadline, "the run logged no step in 300 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def _steps(losses: Path) -> list[int]:
    return [json.loads(line)["step"] for line in losses.read_text().splitlines() if line.strip()]


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "losses.jsonl").read_text().splitlines()]


def _checkpoints(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def test_preemption_signals_are_handled_and_restored():
    """In-process: the handler only records the signal; the previous handler comes back afterwards."""
    before = signal.getsignal(signal.SIGUSR1)
    preemption = Preemption(["SIGUSR1"])
    assert float(preemption.requested("cpu")) == 0.0
    os.kill(os.getpid(), signal.SIGUSR1)  # delivered to this (main) thread before kill returns
    assert preemption.received == "SIGUSR1" and float(preemption.requested("cpu")) == 1.0
    preemption.restore()
    assert signal.getsignal(signal.SIGUSR1) is before


@pytest.mark.slow
def test_sigterm_checkpoints_and_the_rerun_resumes_exactly(corpus, tmp_path: Path):
    straight, preempted = tmp_path / "straight", tmp_path / "preempted"
    run_launch(_command(_argv(corpus, straight, 40)))
    code, err = _preempt(_command(_argv(corpus, preempted, 40)), preempted)
    assert code == PREEMPTED_EXIT, err[-4000:]
    line = [text for text in err.splitlines() if text.startswith("error: preempted")]  # its own line, no bar
    assert len(line) == 1 and "SIGTERM" in line[0] and "rerun the same command" in line[0], err[-2000:]
    stopped = int(line[0].split(" at step ")[1].split(":")[0])
    assert stopped > 3 and (stopped % 3 == 0 or stopped % 5 == 0)  # the first synchronised step after the signal
    assert _checkpoints(preempted) == [f"step-{stopped:07d}"]  # written by the preemption: no periodic one was due
    assert not (preempted / "model").exists()
    assert max(_steps(preempted / "losses.jsonl")) <= stopped  # nothing past the checkpoint
    proc = run_launch(_command(_argv(corpus, preempted, 40)))
    assert f"resumed from {preempted / 'checkpoints' / f'step-{stopped:07d}'}" in proc.stdout + proc.stderr
    reference, resumed = _losses(straight), _losses(preempted)
    assert len(reference) == len(resumed) == 40  # every step, written at the logging steps
    assert max(abs(a - b) for a, b in zip(reference, resumed)) == 0.0


@multiprocess
def test_sigterm_to_the_launcher_of_a_two_process_zero2_run(zero2_reference, tmp_path: Path):
    """SIGTERM to `accelerate launch`: its agent forwards it to both ranks, which stop at one step after one
    checkpoint (complete: every rank's shard); the relaunch continues the uninterrupted 2-process run exactly."""
    corpus, straight = zero2_reference
    preempted = tmp_path / "preempted"
    command = zero2_pretrain(corpus, preempted, "--save_every", "0", "--log_every", "3")
    code, err = _preempt(command, preempted)
    assert code != 0, err[-4000:]
    lines = [text for text in err.splitlines() if "error: preempted" in text]
    assert lines, err[-4000:]
    (checkpoint,) = _checkpoints(preempted)
    stopped = int(checkpoint.split("-")[1])
    assert 3 < stopped < 16 and all(f"at step {stopped}:" in text for text in lines)  # every rank: that step
    assert (preempted / "checkpoints" / checkpoint / "trainer_state.json").exists()
    proc = run_launch(command)
    assert "resumed from" in proc.stdout + proc.stderr
    reference, resumed = _losses(straight), _losses(preempted)
    assert len(reference) == len(resumed) == 16
    assert max(abs(a - b) for a, b in zip(reference, resumed)) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_a_preempted_fine_tune_checkpoints_and_resumes_exactly(base_dir, tmp_path: Path, capsys, strategy):
    """A real SIGTERM to this process in the middle of a fine-tuning run (sent from its step callback): exit 75
    after the checkpoint of the next synchronised step; the rerun continues the uninterrupted losses exactly."""
    from finetune.__main__ import main

    spec = "pde:wave-gauss:n=12,resolution=16,snapshots=4,seed=5"

    def argv(out: Path) -> list[str]:
        args = ["--init_from", str(base_dir), "--datasets", spec, "--strategy", strategy, "--max_steps", "12"]
        args += ["--batch_size", "4", "--output_dir", str(out), "--tracker", "none", "--eval_pairs", "8"]
        return args + ["--save_every", "0", "--log_every", "4", "--eval_max_pairs", "8", "--eval_plots", "false"]

    def preempt(state) -> None:
        if state.step == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # handled between bytecodes, like a signal from SLURM

    straight, preempted = tmp_path / "straight", tmp_path / "preempted"
    assert main(argv(straight)) == 0
    assert main(argv(preempted), callbacks=[preempt]) == PREEMPTED_EXIT
    assert "preempted (SIGTERM) at step 4:" in capsys.readouterr().err  # the next step that syncs: log_every 4
    assert _checkpoints(preempted) == ["step-0000004"] and not (preempted / "model").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with the run
    assert main(argv(preempted)) == 0
    reference, resumed = _losses(straight), _losses(preempted)
    assert len(reference) == len(resumed) == 12
    assert max(abs(a - b) for a, b in zip(reference, resumed)) == 0.0
