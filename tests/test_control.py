"""The positive control of transfer: a corpus of one benchmark family at coefficients around its held-out task's
(`control_task`), pretrained on through `python -m pretrain`, fine-tuned by `finetune.benchmark` at the held-out
coefficient, beats the same architecture from scratch. And a corpus never holds the task itself."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT

from finetune.benchmark import BenchmarkArguments, run_benchmark
from finetune.config import FinetuneArguments
from foundation.data import open_source
from foundation.pdes.corpus import RecipeError, build_corpus, load_recipe
from foundation.pdes.specs import parse_generator_spec
from pretrain.config import DataArguments, ModelArguments, TrainArguments

RECIPES = REPO_ROOT / "launch" / "recipes"
# 16^2 resolves eps >= 1/16: pretrained at 0.07, 0.09 and 0.11, held out at 0.08
TASK = "pde:allen-cahn:n=24,resolution=16,snapshots=5,seed=50,val=4,test=8,eps=0.08"


def control_recipe(path: Path, *entries: str, control: str | None = TASK) -> Path:
    head = f'control_task: "{control}"\n' if control else ""
    path.write_text(head + "resolution: 16\nsnapshots: 5\nseed: 0\nfamilies:\n" + "".join(f"  {e}\n" for e in entries))
    return path


@pytest.mark.slow
def test_pretraining_near_the_held_out_coefficient_beats_scratch_there(tmp_path):
    from pretrain.__main__ import main

    eps = (0.07, 0.09, 0.11)
    recipe = control_recipe(
        tmp_path / "corpus.yaml", *(f"ac-{e}: {{family: allen-cahn, n: 16, eps: {e}}}" for e in eps)
    )
    entries = load_recipe(recipe)
    assert [(e.name, e.family, e.seed, e.params) for e in entries] == [
        (f"ac-{e}", "allen-cahn", k, {"eps": e}) for k, e in enumerate(eps)
    ]
    corpus = build_corpus(entries, tmp_path / "corpus", log=lambda line: None)
    assert [p.name for p in corpus] == [f"ac-{e}.h5" for e in eps]
    for path, e in zip(corpus, eps):
        with open_source(path) as source:
            assert source.info.pde["eps"] == e and source.shape[:2] == (16, 5)

    pretrained = tmp_path / "pretrain"
    argv = ["--preset", "tiny", "--datasets", *map(str, corpus), "--channels", "u", "--output_dir", str(pretrained)]
    argv += ["--batch_size", "16", "--max_steps", "200", "--warmup_steps", "10", "--learning_rate", "2e-3"]
    argv += ["--save_every", "0", "--eval_every", "0", "--eval_pairs", "8", "--tracker", "none"]
    assert main(argv) == 0

    report = run_benchmark(
        ModelArguments(init_from=str(pretrained / "model")),
        DataArguments(datasets=[], eval_pairs=8),
        TrainArguments(
            output_dir=str(tmp_path / "benchmark"),
            max_steps=60,
            batch_size=8,
            warmup_steps=2,
            eval_every=0,
            save_every=0,
            tracker="none",
        ),
        FinetuneArguments(strategy="full", eval_max_pairs=64, eval_rollout_trajectories=1),
        BenchmarkArguments(
            tasks=[f"allen-cahn-control={TASK}"],
            n=[4],
            seeds=[0],
            methods=["finetuned", "scratch"],
            finetuned_learning_rates=[5e-4],
            scratch_learning_rates=[2e-3],
            double_budget=False,
        ),
        log=lambda line: None,
    )
    rows = report["tasks"]["allen-cahn-control"]["methods"]
    finetuned, scratch = rows["finetuned"]["4"]["test"], rows["scratch"]["4"]["test"]
    # measured (corpus and pretraining seeds 0, 1, 2): fine-tuned / scratch 0.50, 0.43, 0.59
    assert 0 < finetuned < 0.8 * scratch, (finetuned, scratch)


def test_a_control_corpus_holds_its_task_family_at_other_coefficients_only(tmp_path):
    recipe = tmp_path / "corpus.yaml"
    near = "ac-near: {family: allen-cahn, n: 2, eps: 0.07}"
    # a plain corpus still refuses a benchmark family, under any name
    for entry in ("allen-cahn: {n: 2}", near):
        control_recipe(recipe, "ns-sines: {n: 2}", entry, control=None)
        with pytest.raises(RecipeError, match=r"families\.(allen-cahn|ac-near): reserved for the downstream benchmark"):
            load_recipe(recipe)
    # a control corpus: its task's family at other coefficients, the others families still refused
    entries = load_recipe(
        control_recipe(recipe, "ns-sines: {n: 2}", near, "ac-far: {family: allen-cahn, n: 2, eps: 0.1}")
    )
    assert [(e.name, e.seed, e.params) for e in entries] == [
        ("ns-sines", 0, {}),
        ("ac-near", 1, {"eps": 0.07}),
        ("ac-far", 2, {"eps": 0.1}),
    ]
    control_recipe(recipe, near, "wave-gauss: {n: 2}")
    with pytest.raises(RecipeError, match=r"families\.wave-gauss: reserved .* holds its task's family \(allen-cahn\)"):
        load_recipe(recipe)
    # the task's own coefficient (as written, as 8e-2, or as a params: mapping) is refused, naming the entry
    for task_eps in ("{family: allen-cahn, n: 2, eps: 0.08}", "{family: allen-cahn, n: 2, eps: 8e-2}"):
        control_recipe(recipe, near, f"ac-task: {task_eps}")
        with pytest.raises(
            RecipeError, match=r"families\.ac-task: the PDE parameters of the control task \(dt=0.001, eps=0.08\)"
        ):
            load_recipe(recipe)
    control_recipe(recipe, "ac-task: {family: allen-cahn, n: 2, params: {eps: 0.08}}")
    with pytest.raises(RecipeError, match=r"families\.ac-task: the PDE parameters of the control task"):
        load_recipe(recipe)
    # nor the task's family at its default coefficient when the task is at it too
    control_recipe(recipe, "allen-cahn: {n: 2}", control=TASK.replace(",eps=0.08", ""))
    with pytest.raises(RecipeError, match=r"families\.allen-cahn: the PDE parameters of the control task"):
        load_recipe(recipe)
    # nor the task's initial conditions (its seed), nor two entries of one seed
    control_recipe(recipe, "ac-near: {family: allen-cahn, n: 2, eps: 0.07, seed: 50}")
    with pytest.raises(RecipeError, match=r"families\.ac-near: seed 50 is the control task's"):
        load_recipe(recipe)
    control_recipe(recipe, near, "ac-far: {family: allen-cahn, n: 2, eps: 0.1, seed: 0}")
    with pytest.raises(RecipeError, match=r"families\.ac-far: seed 0 is also families\.ac-near's"):
        load_recipe(recipe)
    # a PDE parameter the family does not have is a typo, as an unknown key always was
    control_recipe(recipe, "ac-near: {family: allen-cahn, n: 2, esp: 0.07}")
    with pytest.raises(RecipeError, match=r"families\.ac-near: unknown keys \['esp'\]"):
        load_recipe(recipe)
    control_recipe(recipe, near, control="pde:ns-sines:n=8")
    with pytest.raises(RecipeError, match="control_task pde:ns-sines:n=8: not a benchmark family"):
        load_recipe(recipe)

    # resuming: a file of the entry's name at other coefficients is not the entry's
    (entry,) = load_recipe(control_recipe(recipe, near))
    build_corpus([entry], tmp_path / "corpus", log=lambda line: None)
    (moved,) = load_recipe(control_recipe(recipe, near.replace("0.07", "0.075")))
    with pytest.raises(RecipeError, match=r"ac-near.h5 exists with .*'eps': 0.07.* the recipe asks for .*'eps': 0.075"):
        build_corpus([moved], tmp_path / "corpus")


def test_the_control_recipes_hold_out_the_benchmark_task():
    corpus = yaml.safe_load((RECIPES / "corpus-control-cpu.yaml").read_text())
    entries = load_recipe(RECIPES / "corpus-control-cpu.yaml")
    assert [(e.family, e.params["eps"], e.n, e.resolution, e.snapshots) for e in entries] == [
        ("allen-cahn", eps, 128, 32, 11) for eps in (0.035, 0.05, 0.06)
    ]
    assert len({e.seed for e in entries}) == 3
    bench = yaml.safe_load((RECIPES / "benchmark-control-cpu.yaml").read_text())["benchmark"]
    (task,) = bench["tasks"]
    name, spec = task.split("=", 1)
    assert name == "allen-cahn-control" and spec == corpus["control_task"]
    family, settings, params = parse_generator_spec(spec)
    assert family == "allen-cahn" and params == {"eps": 0.04} and settings["seed"] not in {e.seed for e in entries}
    far = yaml.safe_load((RECIPES / "benchmark-cpu.yaml").read_text())["benchmark"]
    assert spec in far["tasks"]  # the far benchmark's allen-cahn task: one test set for both
    assert {k: v for k, v in bench.items() if k != "tasks"} == {k: v for k, v in far.items() if k != "tasks"}
    pretrain = yaml.safe_load((RECIPES / "pretrain-control-cpu.yaml").read_text())
    assert pretrain["data"]["datasets"] == [f"runs/corpus-control-cpu/{e.name}.h5" for e in entries]
    assert pretrain["train"]["max_steps"] == 2000 and pretrain["train"]["batch_size"] == 32
