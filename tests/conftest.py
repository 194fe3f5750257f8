"""Hermetic test environment: one thread, offline Hub, a temporary HF cache, DeepSpeed on the CPU.

The environment is set before anything imports huggingface_hub or transformers, which read it at import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_HF_HOME = tempfile.mkdtemp(prefix="pde-foundation-hf-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_CACHE"] = os.path.join(_HF_HOME, "hub")
os.environ["HF_DATASETS_CACHE"] = os.path.join(_HF_HOME, "datasets")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ["DS_ACCELERATOR"] = "cpu"
os.environ["OMP_NUM_THREADS"] = "1"
os.environ.pop("HF_TOKEN", None)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # default threading costs seconds of warm-up per process on 2 cores

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = (REPO_ROOT / ".." / "shared").resolve()
FIXTURES = SHARED / "fixtures" / "poseidon-reference"
REFERENCE = SHARED / "reference"
# The small parity fixtures (scot-mini, scot-3stage) are kept with the tests: a clean clone runs them.
LOCAL_FIXTURES = REPO_ROOT / "tests" / "fixtures" / "poseidon-reference"
LOCAL_REFERENCE = REPO_ROOT / "tests" / "fixtures" / "reference"  # copies of the state-dict TSVs


def fixture_names() -> list[str]:
    """Names of every reference fixture, in ../shared or kept with the tests."""
    folders = [*FIXTURES.glob("*/io.safetensors"), *LOCAL_FIXTURES.glob("*/io.safetensors")]
    return sorted({folder.parent.name for folder in folders})


def fixture_folder(name: str) -> Path:
    """A reference fixture folder: the maintained copy in ../shared when present, else the one in tests/."""
    for root in (FIXTURES, LOCAL_FIXTURES):
        if (root / name / "io.safetensors").exists():
            return root / name
    return _require(FIXTURES / name)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_HF_HOME, ignore_errors=True)


def _require(path: Path) -> Path:
    """The shared reference material: CI must have it; elsewhere its absence skips with a message."""
    if path.exists():
        return path
    message = f"{path} is missing (tests look for ../shared beside the repository root)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return _require(FIXTURES)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The published state-dict layouts (poseidon-{T,B,L}-state-dict.tsv): ../shared, else the copies in tests/."""
    return REFERENCE if REFERENCE.exists() else LOCAL_REFERENCE


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _fresh_accelerator_state():
    """accelerate keeps its state (precision, distributed type) in process-wide singletons; in-process runs of
    the entry points each get a fresh one, as accelerate's own test cases do after every test."""
    yield
    if "accelerate.state" in sys.modules:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(True)
        GradientState._reset_state()


@pytest.fixture(scope="session")
def base_dir(tmp_path_factory) -> Path:
    """A 'pretrained' tiny model on rho, u, v, p (16 x 16), perturbed away from its near-zero init."""
    from foundation import ScOT, ScOTConfig

    torch.manual_seed(0)
    config = ScOTConfig.from_preset(
        "tiny", image_size=16, channel_names=["rho", "u", "v", "p"], output_channel_names=["rho", "u", "v", "p"]
    )
    model = ScOT(config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    folder = tmp_path_factory.mktemp("base") / "model"
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The README demo at a small size, run once per session."""
    out = tmp_path_factory.mktemp("demo")
    argv = [
        "--out",
        str(out),
        "--trajectories",
        "8",
        "--resolution",
        "16",
        "--steps",
        "60",
        "--finetune_steps",
        "10",
        "--refiner_steps",
        "40",
    ]
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "launch" / "demo.py"), *argv],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out, proc


# Tests that launch two processes share one pytest-xdist worker, one after the other: two of them at once would put
# four ranks on two cores. The other worker runs the single-process tests meanwhile.
def multiprocess(test):
    """Mark a test that launches two processes (slow; in the "multiprocess" xdist group)."""
    return pytest.mark.slow(pytest.mark.xdist_group("multiprocess")(test))


def pytest_collection_modifyitems(config, items):
    """Long tests first (the multi-process group, then the other slow ones): they start at once and the short
    tests fill the other worker, instead of two long tests ending the run side by side."""
    items.sort(
        key=lambda item: 0 if item.get_closest_marker("xdist_group") else 1 if item.get_closest_marker("slow") else 2
    )


# ----------------------------------------------------------------------------------------------- fault tests
ZERO2_LAUNCHER = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
ZERO2_LAUNCHER.append(str(REPO_ROOT / "launch" / "accelerate" / "cpu-2proc-zero2.yaml"))
LAUNCH_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONPATH": str(REPO_ROOT)}


def zero2_pretrain(corpus: list[Path], out: Path, *extra: str) -> list[str]:
    """The 2-process ZeRO-2 pretraining command of the fault tests (tiny, 16 steps on `corpus`). `extra` may set
    only what leaves the losses as they are (cadences, checkpoints kept, timeouts), so that every faulted run is
    compared with the one uninterrupted run of `zero2_reference`."""
    args = ["--preset", "tiny", "--datasets", *map(str, corpus), "--channels", "rho", "u", "v", "p"]
    args += ["--output_dir", str(out), "--batch_size", "4", "--max_steps", "16", "--eval_every", "0"]
    args += ["--eval_pairs", "8", "--warmup_steps", "2", "--learning_rate", "1e-2", "--tracker", "none", *extra]
    return [*ZERO2_LAUNCHER, "-m", "pretrain", *args]


def run_launch(command: list[str]) -> subprocess.CompletedProcess:
    """A launch that must succeed (its output's tail in the failure message)."""
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT, env=LAUNCH_ENV)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.fixture(scope="session")
def zero2_reference(tmp_path_factory) -> tuple[list[Path], Path]:
    """(corpus, run folder) of one uninterrupted `zero2_pretrain` run, checkpoints at steps 12, 15 and 16 kept:
    the reference of the preemption, dead-rank and corrupt-shard tests (one launch instead of one per test)."""
    from filelock import FileLock

    from foundation.pdes import generate

    # One run for the whole session, also when xdist puts the tests that use it on both workers (their
    # session fixtures are per worker): the first makes it under a lock in the shared base folder.
    base = tmp_path_factory.getbasetemp()  # under xdist: <session>/popen-gwN, so the session's folder is its parent
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "zero2-reference"
    corpus, out = [folder / "ns.h5", folder / "ce.h5"], folder / "straight"
    with FileLock(str(folder) + ".lock"):
        if not (out / "result.json").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            generate("ns-sines", 6, 16, corpus[0], snapshots=4, seed=0, batch=6, progress=False)
            generate("ce-rp", 6, 16, corpus[1], snapshots=4, seed=1, batch=6, progress=False)
            run_launch(zero2_pretrain(corpus, out, "--save_every", "3", "--keep_last", "3"))
    return corpus, out
