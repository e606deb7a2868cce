"""A sweep's intermediate dev objective (what ASHA ranks trials on) is taken on the very model the final evaluation
scores, also when the task SFT trains on top of a source-language SFT."""

import dataclasses

import torch

from raysft.config import load_config
from raysft.distributed.train_workers import dev_scores, param_hash
from raysft.train.phases import delta_from_updater
from raysft.sft.delta import SparseDelta
from raysft.sft.sparse import SparseUpdater
from raysft.train import recipe
from tests.conftest import needs_data


def test_intermediate_and_final_dev_scores_come_from_the_same_model(monkeypatch, tmp_path):
    needs_data()
    cfg = load_config("smoke", ["data.max_eval_examples=8", "eval.splits=[dev]"])
    run = recipe.prepare(cfg)
    space = run.space
    g = torch.Generator().manual_seed(3)

    def random_delta(frac, scale):
        diffs = {}
        for p in space.maskable:
            idx = torch.randperm(p.numel, generator=g)[: max(1, int(frac * p.numel))].sort().values
            diffs[p.name] = (idx, torch.randn(idx.numel(), generator=g) * scale)
        return diffs

    # A source-language SFT (eng: the task SFT trains on top of it) and a target one (jav); sun has none.
    run.lang_sfts = {lang: SparseDelta(random_delta(0.2, 0.3), {}, {"kind": "lang"}) for lang in ("eng", "jav")}
    theta0, base = recipe.training_base(run)
    mask = {name: idx for name, (idx, _) in random_delta(0.05, 1.0).items()}
    updater = SparseUpdater(space, mask, lr=1e-3)
    with torch.no_grad():
        updater.delta.copy_(torch.randn(updater.k, generator=g) * 0.5)  # δ so far
    updater.write_back()
    training_hash = param_hash(run.model)  # θ0 + SFT_eng + δ: what the sparse phase trains

    def model_hash(*deltas):
        recipe.restore(space, theta0)
        handles = [d.apply(space, with_abs=False) for d in deltas]
        h = param_hash(run.model)
        for handle in reversed(handles):
            handle.revert()
        recipe.restore(space, base)
        updater.write_back()
        return h

    saved = tmp_path / "task.safetensors"
    delta_from_updater(updater, space, {"kind": "task"}).save(saved)
    task = SparseDelta.load(saved, space)
    expected = {"jav": model_hash(task, run.lang_sfts["jav"]), "sun": model_hash(task)}
    with run.lang_sfts["jav"].apply(space, with_abs=False):  # the old intermediate model: base + δ + SFT_jav
        wrong = param_hash(run.model)
    assert param_hash(run.model) == training_hash

    seen: list[str] = []
    real_predict = recipe.predict
    monkeypatch.setattr(recipe, "predict", lambda m, loader: (seen.append(param_hash(m)), real_predict(m, loader))[1])
    sub = dataclasses.replace(run, eval_langs=run.target_langs)
    loaders = recipe.eval_loaders(sub)
    scores = dev_scores(sub, updater, theta0, base, loaders)
    assert sorted(scores) == ["jav", "sun"] and all(0.0 <= v <= 1.0 for v in scores.values())
    assert seen == [expected["jav"], expected["sun"]] and wrong not in seen
    assert param_hash(run.model) == training_hash  # put back bitwise: training goes on from where it was

    # The final evaluation (what the trial reports) scores the same models, and gets the same numbers.
    seen.clear()
    final = recipe.evaluation_metrics(sub, recipe.evaluate(sub, task, theta0, loaders))
    assert expected["jav"] in seen and expected["sun"] in seen
    assert final["dev"]["jav"]["f1"] == scores["jav"] and final["dev"]["sun"]["f1"] == scores["sun"]
