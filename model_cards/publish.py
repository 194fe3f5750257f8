"""Release folders and Hub uploads: everything up to the network call is ours and tested; the call is
huggingface_hub's. The token comes from `huggingface-cli login` or HF_TOKEN and is never printed or written."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from .render import collect_run, render_model_card

MODEL_FILES = (
    "model.safetensors",
    "config.json",
    "training_data.json",
    "spectral_head.safetensors",
    "spectral_head.json",
)
RUN_FILES = ("metrics.json", "predictions.png", "validation.jsonl")
EVALUATION_FILES = ("evaluation.json", "samples.png", "rollout.png", "spectra.png")  # fine-tuning runs


def prepare_release(
    run_dir: str | Path,
    release_dir: str | Path,
    repo_id: str,
    overwrite: bool = False,
    license: str = "apache-2.0",
    base_model: str | None = None,
    benchmark: str | Path | None = None,
) -> list[str]:
    """Write the release folder (weights, config, card, metrics, plots; the downstream benchmark's JSON when
    `benchmark` names a `finetune.benchmark` folder) and return its file names.

    Refuses an existing folder unless `overwrite`; the folder appears complete or not at all.

    Args:
        run_dir: The finished run (`model_cards.render.collect_run` reads it).
        release_dir: The folder to write.
        repo_id: The Hub repository the card is for.
        overwrite: Replace an existing `release_dir`.
        license: The card's license identifier.
        base_model: The card's base model (default: the run's `init_from` when it is a Hub repo id, not a path).
        benchmark: A `finetune.benchmark` output folder whose table goes in the card.

    Returns:
        The names of the release folder's entries, sorted.

    Raises:
        FileExistsError: `release_dir` exists and `overwrite` is off.
        FileNotFoundError: `run_dir` has no exported model, or `benchmark` is not a benchmark folder.
    """
    run, out = Path(run_dir), Path(release_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; refusing to overwrite it (pass --overwrite)")
    meta = collect_run(run, benchmark)
    init_from = (meta["args"].get("model") or {}).get("init_from")  # a fine-tuning run's base model
    if not base_model and init_from and not Path(init_from).exists():  # the Hub's base_model is a repo id, not a path
        base_model = init_from
    card = render_model_card(meta, repo_id, license=license, base_model=base_model)
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    _copy_run_files(run, partial, benchmark)
    card.save(partial / "README.md")
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    return sorted(p.name for p in out.iterdir())


def _copy_run_files(run: Path, release: Path, benchmark: str | Path | None) -> None:
    """Copy what a release holds besides its card from the run (and the benchmark folder) into `release`."""
    for name in MODEL_FILES:
        if (run / "model" / name).exists():
            shutil.copy2(run / "model" / name, release / name)
    for name in RUN_FILES:
        if (run / name).exists():
            shutil.copy2(run / name, release / name)
    if (run / "evaluation").is_dir():
        (release / "evaluation").mkdir()
        for name in EVALUATION_FILES:
            if (run / "evaluation" / name).exists():
                shutil.copy2(run / "evaluation" / name, release / "evaluation" / name)
    if (run / "horizon" / "horizon.json").exists():  # rollouts past the training window, when evaluated
        (release / "horizon").mkdir()
        for name in ("horizon.json", "horizon.png"):
            if (run / "horizon" / name).exists():
                shutil.copy2(run / "horizon" / name, release / "horizon" / name)
    if (run / "adapter" / "adapter_config.json").exists():  # LoRA: the adapters too (the weights are merged)
        shutil.copytree(run / "adapter", release / "adapter")
    if benchmark is not None:
        shutil.copy2(Path(benchmark) / "benchmark.json", release / "benchmark.json")


def plan_operations(
    release_dir: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    message: str | None = None,
) -> list[dict[str, Any]]:
    """The Hub operations `publish` would perform, in order.

    Args:
        release_dir: The folder `prepare_release` wrote.
        repo_id: The Hub model repository.
        private: Create the repository private.
        revision: The branch to upload to (created if missing; default main).
        message: The commit message (default: "Upload <name> with pde-foundation").

    Returns:
        create_repo, create_branch (off main only) and upload_folder, as plain dicts.
    """
    release = Path(release_dir)
    branch = revision or "main"
    ops: list[dict[str, Any]] = [{"op": "create_repo", "repo_id": repo_id, "repo_type": "model", "private": private}]
    if branch != "main":
        ops.append({"op": "create_branch", "repo_id": repo_id, "branch": branch})
    ops.append(
        {
            "op": "upload_folder",
            "repo_id": repo_id,
            "revision": branch,
            "folder": str(release),
            "files": sorted(p.name for p in release.iterdir()),
            "commit_message": message or f"Upload {repo_id.split('/')[-1]} with pde-foundation",
        }
    )
    return ops


def publish(operations: list[dict[str, Any]], overwrite: bool = False, token: str | None = None) -> str:
    """Carry out `operations` on the Hub; refuses to write over an existing model at that revision.

    Args:
        operations: What `plan_operations` planned (the last one the upload).
        overwrite: Upload even where the revision already holds a model.
        token: A Hub token (default: the stored login or HF_TOKEN).

    Returns:
        The URL of the upload's commit.

    Raises:
        FileExistsError: The revision already holds a model and `overwrite` is off.
        ValueError: No upload_folder operation was planned.
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)  # None: the stored login or HF_TOKEN, never echoed
    upload = operations[-1]
    repo_id, revision = upload["repo_id"], upload["revision"]
    if (
        not overwrite
        and api.repo_exists(repo_id)
        and api.revision_exists(repo_id, revision)
        and api.file_exists(repo_id, "model.safetensors", revision=revision)
    ):
        raise FileExistsError(f"{repo_id}@{revision} already holds a model; refusing to overwrite (pass --overwrite)")
    for op in operations:
        if op["op"] == "create_repo":
            api.create_repo(repo_id, repo_type="model", private=op["private"], exist_ok=True)
        elif op["op"] == "create_branch":
            api.create_branch(repo_id, branch=op["branch"], exist_ok=True)
        elif op["op"] == "upload_folder":
            info = api.upload_folder(
                folder_path=op["folder"], repo_id=repo_id, revision=revision, commit_message=op["commit_message"]
            )
            return str(getattr(info, "commit_url", info))
    raise ValueError("no upload_folder operation planned")


def describe(files: list[str], operations: list[dict[str, Any]]) -> str:
    """The release's files and planned operations as indented JSON (what `publish --dry-run` prints).

    Args:
        files: The release folder's file names (`prepare_release`).
        operations: The planned Hub operations (`plan_operations`).
    """
    return json.dumps({"files": files, "operations": operations}, indent=2)
