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
    for name in MODEL_FILES:
        if (run / "model" / name).exists():
            shutil.copy2(run / "model" / name, partial / name)
    for name in RUN_FILES:
        if (run / name).exists():
            shutil.copy2(run / name, partial / name)
    if (run / "evaluation").is_dir():
        (partial / "evaluation").mkdir()
        for name in EVALUATION_FILES:
            if (run / "evaluation" / name).exists():
                shutil.copy2(run / "evaluation" / name, partial / "evaluation" / name)
    if (run / "horizon" / "horizon.json").exists():  # rollouts past the training window, when evaluated
        (partial / "horizon").mkdir()
        for name in ("horizon.json", "horizon.png"):
            if (run / "horizon" / name).exists():
                shutil.copy2(run / "horizon" / name, partial / "horizon" / name)
    if (run / "adapter" / "adapter_config.json").exists():  # LoRA: the adapters too (the weights are merged)
        shutil.copytree(run / "adapter", partial / "adapter")
    if benchmark is not None:
        shutil.copy2(Path(benchmark) / "benchmark.json", partial / "benchmark.json")
    card.save(partial / "README.md")
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    return sorted(p.name for p in out.iterdir())


def plan_operations(
    release_dir: str | Path,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    message: str | None = None,
) -> list[dict[str, Any]]:
    """The Hub operations `publish` would perform, in order."""
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
    """Carry out `operations` on the Hub; refuses to write over an existing model at that revision."""
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
    return json.dumps({"files": files, "operations": operations}, indent=2)
