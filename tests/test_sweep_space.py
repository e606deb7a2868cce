"""Search spaces → Optuna define-by-run (no Ray needed)."""

import math

import optuna
import pytest

from raysft.config import load_config
from raysft.errors import RaysftError
from raysft.sweep.space import parse_space, sample

optuna.logging.set_verbosity(optuna.logging.WARNING)

SPACES = {
    "sc-sft": parse_space("sc-sft", {
        "budget": {"dist": "dirichlet", "layers": 4},
        "sparse.lr": {"dist": "float", "low": 1e-5, "high": 1e-3, "log": True},
    }),
    "deft-x": parse_space("deft-x", {
        "rank_strategy": {"dist": "categorical", "choices": ["energy", "uniform"]},
        "energy": {"dist": "float", "low": 0.5, "high": 0.99, "when": {"rank_strategy": "energy"}},
        "rank": {"dist": "int", "low": 2, "high": 64, "log": True, "when": {"rank_strategy": "uniform"}},
    }),
    "rand-sft": parse_space("rand-sft", {
        "sparse.lr": {"dist": "float", "low": 1e-4, "high": 1e-1, "log": True},
        "sft.density": {"dist": "float", "low": 0.001, "high": 0.1, "log": True},
    }),
}


def _samples(methods, n=30, spaces=SPACES):
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0, constant_liar=True))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append((trial, sample(trial, methods, spaces)))
        study.tell(trial, 0.5)
    return out


def test_dirichlet_budget_on_the_simplex_and_logged():
    for trial, s in _samples(["sc-sft"], 10):
        budget = s["settings"]["budget"]
        assert list(budget) == ["embeddings", "layer.0", "layer.1", "layer.2", "layer.3"]
        assert math.isclose(sum(budget.values()), 1.0) and min(budget.values()) >= 0
        assert trial.user_attrs["budget/layer.2"] == budget["layer.2"]
        assert 1e-5 <= s["overrides"]["sparse.lr"] <= 1e-3


def test_conditional_space_only_samples_what_applies():
    seen = set()
    for trial, s in _samples(["deft-x"], 30):
        strategy = s["settings"]["rank_strategy"]
        seen.add(strategy)
        if strategy == "energy":
            assert "rank" not in s["settings"] and 0.5 <= s["settings"]["energy"] <= 0.99
        else:
            assert "energy" not in s["settings"] and 2 <= s["settings"]["rank"] <= 64
    assert seen == {"energy", "uniform"}


def test_method_is_categorical_when_several():
    methods = {s["method"] for _, s in _samples(["sc-sft", "deft-x", "rand-sft"], 30)}
    assert methods == {"sc-sft", "deft-x", "rand-sft"}


def test_shape_and_fixed_budgets():
    spaces = {"sc-sft": parse_space("sc-sft", {"budget": {"dist": "shape", "layers": 12}})}
    for _, s in _samples(["sc-sft"], 5, spaces):
        b = s["settings"]["budget"]
        assert math.isclose(sum(b.values()), 1.0) and b["embeddings"] <= 0.1 and len(b) == 13
    seeds = {"seeds_nli": {"embeddings": 0.02, "layer.10": 0.02, "layer.11": 0.02, "layer.0-9": 0.94}}
    spaces = {"sc-sft": parse_space("sc-sft", {"budget": {"dist": "fixed", "choices": seeds}})}
    for _, s in _samples(["sc-sft"], 3, spaces):
        assert s["settings"]["budget"] == seeds["seeds_nli"]


@pytest.mark.parametrize("block,message", [
    ({"sparse.lr": {"dist": "float", "low": 1e-3, "high": 1e-5}}, "empty range"),
    ({"sparse.lr": {"dist": "gaussian", "low": 0, "high": 1}}, "sparse.lr"),
    ({"rank": {"dist": "int", "low": 0, "high": 8, "log": True}}, "log-scale"),
    ({"budget": {"dist": "dirichlet", "groups": ["embeddings", "decoder"]}}, "unknown group 'decoder'"),
    ({"choice": {"dist": "categorical", "choices": []}}, "choice"),
])
def test_invalid_spaces_are_refused_by_name(block, message):
    with pytest.raises(RaysftError, match=message):
        parse_space("sc-sft", block)


def test_spaces_in_yaml_are_validated_before_anything_runs():
    with pytest.raises(RaysftError, match="methods.sc-sft.space.sparse.lr"):
        load_config("smoke", ["methods.sc-sft.space={sparse.lr: {dist: float, low: 1, high: 0}}"])
    with pytest.raises(RaysftError, match="unknown method 'magic'"):
        load_config("smoke", ["tune.methods=[magic]"])
    cfg = load_config("smoke")
    assert cfg.method_settings("sc-sft").budget is not None
