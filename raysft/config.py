"""Run configuration: a search-space YAML (`search_spaces/<name>.yaml`), validated by pydantic before anything runs."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raysft.errors import RaysftError
from raysft.sft.methods import METHODS, method_class
from raysft.space_schema import TuneConfig, parse_space

SPACES_DIR = Path(__file__).resolve().parent.parent / "search_spaces"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    dir: str | None = None  # None: $RAYSFT_DATA_DIR or ../shared/data
    # auto: the local data folder when there is one, else the Hugging Face datasets (raysft/tasks/hub.py); local; hub
    source: Literal["auto", "local", "hub"] = "auto"
    source_lang: str | None = None  # None: the task's default (eng)
    target_langs: list[str] | None = None  # None: every target language the data has
    max_train_examples: int | None = Field(None, ge=1)
    max_eval_examples: int | None = Field(None, ge=1)  # per language and split: the first n rows
    max_seq_len: int = Field(128, ge=8, le=512)
    use_all_source: bool = False  # nli: train on both local MNLI parts


class SFTConfig(_Strict):
    k: int | None = Field(None, ge=1)  # the budget: entries in the SFT
    density: float | None = Field(None, gt=0, le=1)  # or K as a fraction of the maskable entries
    freeze_embeddings: bool = False

    @model_validator(mode="after")
    def _one_budget(self):
        if (self.k is None) == (self.density is None):
            raise ValueError("give exactly one of sft.k and sft.density")
        return self

    def resolve_k(self, n: int) -> int:
        k = self.k if self.k is not None else max(1, round(self.density * n))
        if k > n:
            raise RaysftError(f"K={k} is larger than the {n} maskable entries of this model: lower sft.k")
        return k


class PhaseConfig(_Strict):
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)  # caps the phase (quick runs, tests)
    # at least this many steps, the data repeated (composable-sft's *_min_steps_per_iteration); max_steps still caps
    min_steps: int | None = Field(None, ge=1)
    lr: float = Field(2e-5, gt=0)
    batch_size: int = Field(32, ge=1)
    weight_decay: float = Field(0.0, ge=0)  # sparse phase: decay toward θ0
    # L1 toward θ0 on the SFT's entries, dense and sparse phases: composable-sft's full_l1_reg / sparse_l1_reg (its
    # trainer adds l1 · Σ|θ − θ0| / N to the loss, N the model's parameter count; the head is not regularised here,
    # as with its --apply_reg_to_sparse_only)
    l1: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    head_lr: float | None = Field(None, gt=0)  # None: lr
    # bf16: forward and backward under torch.autocast(bfloat16) on the run's device; the weights, gradients, the
    # sparse δ and every optimizer state stay float32, so a saved delta still reproduces the model bitwise.
    precision: Literal["fp32", "bf16"] = "fp32"
    # Recompute each layer's activations in backward instead of keeping them (raysft train): a lower memory peak for
    # more compute, bitwise the same weights (bench/memory.py --lean measures the peak with and without).
    checkpoint_activations: bool = False
    # A task SFT's word embedding by the rows its training data contains (raysft.train.rows), bitwise the same result
    # where it applies: the dense phase trains a table of those rows (without weight decay; the whole matrix's
    # gradient and AdamW moments go: bench/embedding_rows.py, bench/memory.py), the sparse phase builds the embedding's
    # gradient for those rows only (bench/sparse_step.py).
    embedding_rows: bool = True


class EvalConfig(_Strict):
    batch_size: int = Field(64, ge=1)
    splits: list[Literal["dev", "test"]] = ["dev", "test"]


# composable-sft's language-SFT recipe (examples/language-modeling/train_mlm.sh): batch 4 x gradient accumulation 2,
# lr 5e-5, full_l1_reg = sparse_l1_reg = 0.1, 10,000 to 100,000 steps and at most 100 epochs per phase
# (*_min/max_steps_per_iteration, *_max_epochs_per_iteration). Departure: it keeps the best checkpoint on a 5 %
# validation split (load_best_model_at_end); raysft keeps the last, and reports the held-out loss before and after.
MLM_PHASE = {"epochs": 100.0, "min_steps": 10_000, "max_steps": 100_000, "lr": 5e-5, "batch_size": 8, "l1": 0.1}


class LangConfig(_Strict):
    """Language SFTs (`raysft lang`): masked-language modelling of a language's unlabeled text. The defaults are
    composable-sft's recipe (:data:`MLM_PHASE`), which takes days on a CPU: the CPU presets set their own."""

    method: str = "lt-sft"  # any selector; lt-sft as in composable-sft
    # composable-sft's "small" language SFTs (MODELS.md: ~7.6M, ft_params_num 7667712); k and density both null: the
    # task SFT's budget (sft.k / sft.density)
    k: int | None = Field(7_667_712, ge=1)
    density: float | None = Field(None, gt=0, le=1)
    max_train_lines: int | None = Field(None, ge=1)  # a seeded sample of the training lines
    max_heldout_lines: int = Field(200, ge=1)  # of the held-out lines (the last 5 %), for the MLM loss before/after
    max_seq_len: int = Field(256, ge=8, le=512)  # train_mlm.sh's max_seq_length
    mlm_probability: float = Field(0.15, gt=0, lt=1)
    # A base without an MLM head (e5) gets a fresh one: fit it on θ0 first, so that "before" is θ0 with a fitted head
    # and the dense phase does not bend the encoder toward a random head.
    head_warmup_steps: int = Field(100, ge=0)
    head_warmup_lr: float = Field(1e-3, gt=0)
    dense: PhaseConfig = PhaseConfig(**MLM_PHASE)
    sparse: PhaseConfig = PhaseConfig(**MLM_PHASE)
    cpus_per_job: float = Field(1, gt=0)  # each language is one Ray job with these CPUs
    gpus_per_job: float = Field(0, ge=0)

    @field_validator("method")
    @classmethod
    def _known_method(cls, v):
        method_class(v)
        return v

    @model_validator(mode="before")
    @classmethod
    def _density_replaces_the_default_k(cls, data):
        # `lang: {density: 0.05}` means that density, not both: the default K gives way to a density given alone
        if isinstance(data, dict) and data.get("density") is not None and "k" not in data:
            data = {**data, "k": None}
        return data

    @model_validator(mode="after")
    def _one_budget(self):
        if self.k is not None and self.density is not None:
            raise ValueError("give at most one of lang.k and lang.density")
        return self

    def resolve_k(self, task_sft: SFTConfig, n: int) -> int:
        if self.k is None and self.density is None:
            return task_sft.resolve_k(n)
        return SFTConfig(k=self.k, density=self.density).resolve_k(n)


class Config(_Strict):
    name: str
    task: str  # a labeled task of the registry (raysft.tasks.TASKS): nli, sa
    model: str
    seed: int = 0
    method: str = "lt-sft"  # what `raysft train` runs when --method is not given
    data: DataConfig = DataConfig()
    sft: SFTConfig
    dense: PhaseConfig = PhaseConfig()
    sparse: PhaseConfig = PhaseConfig()
    mask_phase: PhaseConfig = PhaseConfig(epochs=1.0, lr=2e-5)  # Ada-SFT's phase 1 (its score lr is per method)
    eval: EvalConfig = EvalConfig()
    # Where the language SFTs composed at evaluation come from: "store" (raysft lang's store for this model), a folder
    # of <lang>.safetensors, or "hub:<repo with {lang}>" (composable-sft's, e.g. hub:cambridgeltl/xlmr-lang-sft-{lang}-small).
    lang_sfts: str | None = None
    # A language SFT that a hub source publishes (per raysft/tasks/langcodes.py) but that cannot be found, the source
    # language's included, is an error; true: a warning (printed, and logged as lang_sft_warnings) and the run goes on.
    lang_sfts_optional: bool = False
    lang: LangConfig = LangConfig()
    methods: dict[str, dict[str, Any]] = {}  # per method: its settings, and under `space:` what a sweep searches
    tune: TuneConfig = TuneConfig()

    @field_validator("task")
    @classmethod
    def _known_task(cls, v):
        from raysft.tasks.registry import TASKS  # datasets: a heavy import, only when a config is validated

        known = [name for name, task in TASKS.items() if task.labels]  # a task SFT's tasks (not mlm)
        if v not in known:
            raise RaysftError(f"unknown task {v!r}: known tasks are {', '.join(known)}")
        return v

    @field_validator("method")
    @classmethod
    def _known_method(cls, v):
        method_class(v)
        return v

    @field_validator("methods")
    @classmethod
    def _known_settings(cls, v):
        for name, block in v.items():
            block = dict(block or {})
            parse_space(name, block.pop("space", None))
            method_class(name).Settings.model_validate(block)
        return v

    @field_validator("lang_sfts")
    @classmethod
    def _lang_sft_source(cls, v):
        if v and v.startswith("hub:") and "{lang}" not in v:
            raise ValueError(f"{v} has no {{lang}}: write e.g. hub:cambridgeltl/xlmr-lang-sft-{{lang}}-small")
        return v

    @field_validator("tune")
    @classmethod
    def _known_tune_methods(cls, v):
        for name in v.methods:
            method_class(name)
        return v

    def method_settings(self, name: str, **updates):
        block = {k: v for k, v in (self.methods.get(name) or {}).items() if k != "space"}
        return method_class(name).Settings.model_validate({**block, **updates})

    def method_space(self, name: str) -> dict:
        return parse_space(name, (self.methods.get(name) or {}).get("space"))


def find_space(space: str) -> Path:
    """A space name under search_spaces/ (the working directory's, then the repo's), or a path to a YAML file."""
    candidates = [Path(space)] if space.endswith((".yaml", ".yml")) or "/" in space else []
    candidates += [Path.cwd() / "search_spaces" / f"{space}.yaml", SPACES_DIR / f"{space}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    known = sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))
    raise RaysftError(f"unknown space '{space}': give a YAML path or one of {', '.join(known)}")


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`--set a.b.c=value`: the value is parsed as YAML (numbers, lists, booleans); missing levels are created and
    the whole config is validated afterwards, so a misspelled key is refused by name."""
    for item in overrides:
        if "=" not in item:
            raise RaysftError(f"--set '{item}' is not key=value: write e.g. --set dense.lr=3e-5")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        node = raw
        for p in parts[:-1]:
            child = node.get(p)
            if child is None:
                child = node[p] = {}
            if not isinstance(child, dict):
                raise RaysftError(f"--set {key}: '{p}' is a value, not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(value)
    return raw


def _one_line(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(x) for x in e["loc"])
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        return f"unknown config key '{loc}': check its spelling against the space file's keys"
    return f"invalid config value at '{loc}': {msg}" if loc else f"invalid config: {msg}"


def load_config(space: str, overrides: list[str] | None = None) -> Config:
    path = find_space(space)
    try:
        raw = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as e:
        raise RaysftError(f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}): "
                          "save it as UTF-8 YAML, or give another space") from None
    except OSError as e:
        raise RaysftError(f"cannot read {path} ({e.strerror or e}): check that it is a readable file") from None
    except yaml.YAMLError as e:
        raise RaysftError(f"{path} is not valid YAML ({str(e).splitlines()[0]}): fix the file") from None
    if not isinstance(raw, dict):
        raise RaysftError(f"{path} holds a YAML {type(raw).__name__}, not a mapping of config keys: write it as "
                          "'key: value' lines, like search_spaces/smoke.yaml")
    raw = apply_overrides(raw, overrides or [])
    try:
        return pin_paths(Config.model_validate(raw))
    except ValidationError as e:
        raise RaysftError(f"{path.name}: {_one_line(e)}") from None
    except RaysftError as e:
        raise RaysftError(f"{path.name}: {e}") from None


def pin_paths(cfg: Config) -> Config:
    """Make the data folder and language-SFT folder absolute, as seen from here: Ray workers run in another
    working directory, so a relative path (or the ../shared/data default) must be resolved by the driver."""
    from raysft.tasks.base import data_dir

    data = cfg.data
    if data.dir is None:
        try:
            data = data.model_copy(update={"dir": str(data_dir())})
        except RaysftError:
            pass  # reported with its fix when the run prepares its data
    else:
        data = data.model_copy(update={"dir": str(Path(data.dir).expanduser().resolve())})
    return cfg.model_copy(update={"data": data, "lang_sfts": pin_lang_sfts(cfg.lang_sfts, cfg.model)})


def pin_lang_sfts(source: str | None, model: str) -> str | None:
    """``store`` becomes ``store:<the store's absolute folder for model>``; a folder becomes absolute; ``hub:…``
    stays."""
    from raysft.store import lang_store_dir

    if not source or source.startswith(("hub:", "store:")):
        return source
    if source == "store":  # pinned with its prefix: a store with no SFT for this model yet is simply empty
        return f"store:{lang_store_dir(model)}"
    return str(Path(source).expanduser().resolve())


def trial_config(base: dict, sampled: dict) -> Config:
    """The base config (``Config.model_dump(mode="json")``) with one trial's sampled values applied: ``sampled`` is
    ``{"method": m, "settings": {...}, "overrides": {"sparse.lr": ...}}`` (:func:`raysft.sweep.space.sample`). Validated
    again: a sampled value can be invalid. ``base`` is never changed (a deep copy: the tracking callback reuses one
    base for every trial)."""
    raw = apply_overrides(copy.deepcopy(base), [])
    for key, value in sampled["overrides"].items():
        node = raw
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    methods = dict(raw.get("methods") or {})
    methods[sampled["method"]] = {**(methods.get(sampled["method"]) or {}), **sampled["settings"]}
    raw["methods"] = methods
    raw["method"] = sampled["method"]
    return Config.model_validate(raw)


def steps_for(phase: PhaseConfig, n_examples: int) -> int:
    per_epoch = math.ceil(n_examples / phase.batch_size)
    steps = max(1, math.ceil(phase.epochs * per_epoch), phase.min_steps or 1)
    return min(steps, phase.max_steps) if phase.max_steps else steps


__all__ = ["Config", "METHODS", "load_config", "find_space", "steps_for", "trial_config"]
