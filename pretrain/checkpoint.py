"""Checkpoints of the training loop: full training states in `folder/step-NNNNNNN`, written atomically.

A checkpoint is `accelerator.save_state` (model, optimizer, scheduler and RNG states; sharded per rank under
DeepSpeed) plus `trainer_state.json` (step, sampler position, world size and a manifest of every file with its
size), written into a hidden `.partial-step-NNNNNNN` folder, flushed to disk and renamed into place once every rank
has finished. Only `step-NNNNNNN` folders holding `trainer_state.json` are checkpoints.

Faults:

* A failed write (disk full, quota, I/O error) stops the run with `CheckpointWriteError` (an OSError: `error: ...`
  and exit 2 through `foundation.cli.guarded`) naming the checkpoint, the cause and the free space; the previous
  checkpoint stays the latest, untouched, and the half-written folder is removed. A write cut short by a kill
  leaves a `.partial-*` folder that is never read and is removed by the next run.
* Resuming validates the latest checkpoint first (`check`). A corrupt one is renamed aside to
  `corrupt-step-NNNNNNN` (kept for the user to inspect, never deleted, never overwritten or pruned by later saves)
  with a warning on stderr, and the run falls back to the previous one. When no checkpoint is usable the run stops
  with `NoUsableCheckpoint` (a ValueError: exit 2), renaming nothing, saying what to do.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import sys
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .loop import TrainState

_STEP = re.compile(r"step-(\d+)")
# What a safetensors header's dtype takes per element (safetensors' own list).
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2}
_DTYPE_BYTES |= {"I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
_STATE_KEYS = ("step", "epoch", "consumed", "nonfinite", "world_size", "sampler")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the previous one is intact and the run resumes from it."""


class CorruptCheckpoint(ValueError):
    """A finished checkpoint folder that cannot be loaded: a file is missing, truncated or does not load."""


class NoUsableCheckpoint(ValueError):
    """Resuming found checkpoints, but every one of them is corrupt."""


class Checkpointer:
    """Full training states in `folder/step-NNNNNNN`, written atomically; the last `keep_last` are kept.

    Args:
        accelerator: The run's `accelerate.Accelerator` (`save_state` / `load_state`, the process group).
        folder: Where the checkpoints go (`<output_dir>/checkpoints`).
        keep_last: Finished checkpoints kept; older ones are deleted once a newer one is in place.
        sampler: The resumable sampler (`state_dict(consumed=...)` / `load_state_dict`).
    """

    def __init__(self, accelerator: Any, folder: Path, keep_last: int, sampler: Any):
        self.accelerator, self.folder, self.keep_last, self.sampler = accelerator, Path(folder), keep_last, sampler

    def complete(self) -> list[Path]:
        """Finished checkpoints, oldest first (a folder is finished once it holds trainer_state.json)."""
        if not self.folder.exists():
            return []
        done = [p for p in self.folder.iterdir() if _STEP.fullmatch(p.name) and (p / "trainer_state.json").exists()]
        return sorted(done, key=lambda p: int(p.name.split("-")[1]))

    def save(self, state: TrainState) -> Path:
        """Write the full training state at `state.step`; a collective call (every rank, same step).

        Raises:
            CheckpointWriteError: The write failed on this rank (disk full, quota, I/O error).
        """
        acc = self.accelerator
        final = self.folder / f"step-{state.step:07d}"
        partial = self.folder / f".partial-step-{state.step:07d}"
        if acc.is_main_process:
            self._remove_partials()  # this one's earlier try, or what a killed run left
            partial.mkdir(parents=True)
        acc.wait_for_everyone()
        # A failed write stops the run instead of training on with a warning. On a cluster, the disk or quota that
        # refused this checkpoint refuses the next ones and the final export too: a run carrying on would spend its
        # whole allocation and lose everything since this checkpoint when it ends or is preempted, with the warning
        # buried in a log. Stopping now costs at most `save_every` steps: free space, rerun, and it resumes exactly.
        # A rank that fails raises at once, without waiting for the others at a collective (they may be inside
        # DeepSpeed's barriers): the launcher then ends them, and the next run removes what they left.
        try:
            acc.save_state(str(partial))
        except _WRITE_ERRORS as error:
            raise self._write_error(final, partial, error) from error
        acc.wait_for_everyone()
        if acc.is_main_process:
            try:
                saved = {
                    "step": state.step,
                    "epoch": state.epoch,
                    "consumed": state.consumed,
                    "nonfinite": state.nonfinite,
                    "world_size": acc.num_processes,
                    "sampler": self.sampler.state_dict(consumed=state.consumed),
                    "files": _manifest(partial),  # resume checks every file is there, at its size
                }
                _write_synced(partial / "trainer_state.json", json.dumps(saved, indent=2))
                _sync_tree(partial)  # renamed only once its bytes are on disk, not just in the page cache
                shutil.rmtree(final, ignore_errors=True)
                os.replace(partial, final)  # readers see the previous checkpoints or this complete one
                _sync_dir(self.folder)
            except _WRITE_ERRORS as error:
                raise self._write_error(final, partial, error) from error
            for old in self.complete()[: -self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        acc.wait_for_everyone()
        return final

    def resume(self, state: TrainState, dataset: Any) -> Path | None:
        """Load the last usable checkpoint into the run and `state`; None when there is none.

        The main process validates the candidates, newest first (`check`), renames corrupt ones aside and tells
        every rank which one to load, so that all ranks load the same checkpoint.

        Raises:
            NoUsableCheckpoint: Every finished checkpoint is corrupt (nothing renamed).
            ValueError: The usable checkpoint was saved by another number of processes.
        """
        from accelerate.utils import broadcast_object_list

        acc = self.accelerator
        verdict: list[Any] = [None, None]  # (the checkpoint to load, why there is none to load)
        if acc.is_main_process:
            self._remove_partials(announce=True)
            verdict[:] = self._choose()
        broadcast_object_list(verdict)
        chosen, failure = verdict
        if failure is not None:
            raise NoUsableCheckpoint(failure)
        if chosen is None:
            return None
        last = Path(chosen)
        saved = json.loads((last / "trainer_state.json").read_text())
        if saved["world_size"] != acc.num_processes:
            raise ValueError(
                f"{last}: saved by {saved['world_size']} processes, resumed with "
                f"{acc.num_processes}; resume with the same world size"
            )
        acc.load_state(str(last))
        state.step, state.epoch, state.consumed = saved["step"], saved["epoch"], saved["consumed"]
        state.nonfinite = saved["nonfinite"]
        self.sampler.load_state_dict({**saved["sampler"], "epoch": state.epoch, "position": state.consumed})
        dataset.set_epoch(state.epoch)
        return last

    # ------------------------------------------------------------------------------------------- internals
    def _choose(self) -> tuple[str | None, str | None]:
        """(The newest valid checkpoint, None) or (None, why every one is corrupt); (None, None) when there is none."""
        done = self.complete()
        if not done:
            return None, None
        problems: list[tuple[Path, str]] = []
        for candidate in reversed(done):
            try:
                check(candidate)
            except CorruptCheckpoint as error:
                problems.append((candidate, str(error)))
                continue
            for corrupt, why in problems:  # only once a good one is found: an all-corrupt folder stays as it is
                print(
                    f"warning: checkpoint {corrupt} is corrupt ({why}); {_set_aside(corrupt)}; "
                    f"resuming from the previous one, {candidate.name}",
                    file=sys.stderr,
                )
            return str(candidate), None
        listed = "; ".join(f"{path.name}: {why}" for path, why in problems)
        return None, (
            f"no usable checkpoint in {self.folder} to resume from, every one is corrupt ({listed}). "
            f"Delete or move those folders, pass --resume false to train from step 0 (its checkpoints then replace "
            f"these), or choose another --output_dir"
        )

    def _remove_partials(self, announce: bool = False) -> None:
        """Remove the `.partial-*` folders of interrupted writes: never a checkpoint, only ever half of one."""
        if not self.folder.exists():
            return
        for partial in self.folder.glob(".partial-step-*"):
            shutil.rmtree(partial, ignore_errors=True)
            if announce:
                print(f"note: removed {partial}, a checkpoint write that never finished", file=sys.stderr)

    def _write_error(self, final: Path, partial: Path, error: BaseException) -> CheckpointWriteError:
        if self.accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)  # frees the space it took; other ranks may still write
        try:
            free = f"{shutil.disk_usage(self.folder).free / 2**20:.1f} MiB free there"
        except OSError:
            free = "free space unknown"
        previous = [p for p in self.complete() if p != final]
        kept = (
            f"the previous checkpoint {previous[-1].name} is intact and a rerun resumes from it"
            if previous
            else "there is no earlier checkpoint"
        )
        return CheckpointWriteError(
            f"could not write checkpoint {final} ({type(error).__name__}: {error}; {free}); {kept}. "
            "Free space (or raise the quota) and rerun the same command"
        )


def _write_error_types() -> tuple[type[BaseException], ...]:
    # torch.save reports a full disk as a RuntimeError ("unexpected pos ..."), safetensors as a SafetensorError:
    # neither is an OSError. Other exceptions are bugs and keep their traceback.
    kinds: list[type[BaseException]] = [OSError, RuntimeError]
    try:
        from safetensors import SafetensorError

        kinds.append(SafetensorError)
    except ImportError:  # older safetensors: its errors are then OSErrors or RuntimeErrors
        pass
    return tuple(kinds)


_WRITE_ERRORS = _write_error_types()


# ----------------------------------------------------------------------------------------------- validation
def check(folder: Path) -> None:
    """Validate a finished checkpoint folder without loading it into a model.

    Checks trainer_state.json; that every file of its manifest is present at its size; the layout
    `accelerator.save_state` writes (a model, the optimizer state, the RNG state of every rank; under DeepSpeed the
    `latest` tag and an optimizer shard of every rank); that every safetensors header parses and accounts for the
    file's size; and that every torch file's records match their CRC-32 and unpickle as accelerate or DeepSpeed
    will (memory-mapped: tensors are not read into memory).

    Args:
        folder: A `step-NNNNNNN` folder.
    Raises:
        CorruptCheckpoint: What is wrong, naming the file.
    """
    folder = Path(folder)
    try:
        saved = json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError) as error:
        raise CorruptCheckpoint(f"trainer_state.json does not read: {error}") from error
    missing = [key for key in _STATE_KEYS if not isinstance(saved, dict) or key not in saved]
    if missing:
        raise CorruptCheckpoint(f"trainer_state.json lacks {', '.join(missing)}")
    world = saved["world_size"]
    for name, size in (saved.get("files") or {}).items():
        path = folder / name
        if not path.is_file():
            raise CorruptCheckpoint(f"{name} is missing")
        if path.stat().st_size != size:
            raise CorruptCheckpoint(f"{name} has {path.stat().st_size} bytes, {size} were written")
    _check_layout(folder, world)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = str(path.relative_to(folder))
        try:
            if path.suffix == ".safetensors":
                _check_safetensors(path)
            elif path.suffix in (".bin", ".pkl", ".pt"):
                _check_torch(path, deepspeed=path.parent != folder)
        except CorruptCheckpoint as error:
            raise CorruptCheckpoint(f"{name}: {error}") from None


def _check_layout(folder: Path, world: int) -> None:
    """The files `accelerator.save_state` always writes (what an older checkpoint without a manifest must hold)."""
    for rank in range(world):
        if not (folder / f"random_states_{rank}.pkl").is_file():
            raise CorruptCheckpoint(f"random_states_{rank}.pkl (the RNG state of rank {rank}) is missing")
    if (folder / "latest").exists():  # DeepSpeed: <tag>/ holds the model states and one optimizer shard per rank
        tag = folder / (folder / "latest").read_text().strip()
        if not tag.is_dir() or not any(tag.glob("*model_states.pt")):
            raise CorruptCheckpoint(f"the DeepSpeed states {tag.name}/ named by 'latest' are missing")
        shards = list(tag.glob("*optim_states.pt"))
        if shards:  # ZeRO 1-3 shard the optimizer state over the ranks (stage 0 keeps it in the model states)
            for rank in range(world):
                if not any(f"zero_pp_rank_{rank}_" in p.name for p in shards):
                    raise CorruptCheckpoint(f"{tag.name}/: the ZeRO optimizer shard of rank {rank} is missing")
        return
    if not any((folder / name).is_file() for name in ("model.safetensors", "pytorch_model.bin")):
        raise CorruptCheckpoint("the model state (model.safetensors) is missing")
    if not (folder / "optimizer.bin").is_file():
        raise CorruptCheckpoint("the optimizer state (optimizer.bin) is missing")


def _check_safetensors(path: Path) -> None:
    """The header parses, its tensors tile the data exactly, and the file is as long as the header says."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise CorruptCheckpoint(f"{size} bytes, no safetensors header")
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            raise CorruptCheckpoint(f"truncated: a {length}-byte header in {size} bytes")
        try:
            header = json.loads(f.read(length))
        except ValueError as error:
            raise CorruptCheckpoint(f"the safetensors header does not parse ({error})") from None
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = info["data_offsets"]
            count = 1
            for dim in info["shape"]:
                count *= dim
            expected = count * _DTYPE_BYTES[info["dtype"]]
        except (KeyError, TypeError, ValueError) as error:
            raise CorruptCheckpoint(f"bad header entry {name!r} ({error!r})") from None
        if stop - begin != expected:
            raise CorruptCheckpoint(f"tensor {name!r}: {stop - begin} bytes for {expected}")
        end = max(end, stop)
    if 8 + length + end != size:
        raise CorruptCheckpoint(f"{size} bytes, the header accounts for {8 + length + end} (truncated?)")


def _check_torch(path: Path, deepspeed: bool) -> None:
    """A torch.save file: a zip whose records match their CRC-32 and that unpickles as its loader will."""
    import torch
    from accelerate.utils.other import load

    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every record (tensors are stored uncompressed: a plain read)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise CorruptCheckpoint(f"not a complete torch file ({error})") from None
    if bad is not None:
        raise CorruptCheckpoint(f"record {bad} fails its CRC-32")
    try:
        if deepspeed:  # DeepSpeed loads its states with weights_only=False
            torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        else:  # as accelerator.load_state will
            load(path, map_location="cpu", mmap=True)
    except Exception as error:  # whatever fails to unpickle here would fail load_state too
        raise CorruptCheckpoint(f"does not load ({type(error).__name__}: {error})") from None


# ----------------------------------------------------------------------------------------------- file system
def _manifest(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _sync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    for sub in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        _sync_dir(sub)


def _sync_dir(folder: Path) -> None:
    """Make a rename or new entries in `folder` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _set_aside(corrupt: Path) -> str:
    """Rename a corrupt checkpoint to corrupt-step-NNNNNNN[.k]: out of resume's and pruning's way, not deleted."""
    target = corrupt.with_name(f"corrupt-{corrupt.name}")
    k = 0
    while target.exists():
        k += 1
        target = corrupt.with_name(f"corrupt-{corrupt.name}.{k}")
    try:
        os.replace(corrupt, target)
    except OSError as error:
        return f"left in place (renaming it failed: {error})"
    return f"renamed to {target.name} (kept: delete it when it is no longer needed)"
