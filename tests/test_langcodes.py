"""Hub language codes: every language of the paper presets finds composable-sft's SFT under the repo name the hub
uses, offline, from a local folder laid out like the hub repos; a missing source-language SFT is an error."""

import dataclasses

import pytest
import torch

from raysft.config import load_config
from raysft.errors import RaysftError
from raysft.sft.groups import ParamSpace
from raysft.tasks.langcodes import COMPOSABLE_SFT, hub_code
from raysft.train import recipe
from tests.conftest import tiny_classifier

# The xlm-roberta-base column of composable-sft's MODELS.md ("Language SFTs" table): the codes of the repos that
# exist as cambridgeltl/xlmr-lang-sft-<code>-small. Written out here, independently of raysft's table.
PUBLISHED_XLMR = """ace amh ar cni ban bjn bzd bg zh en fr de el gn hau hi ibo id jav kin ko lug luo mad min nah pcm
oto quy tar ro ru shp es sun swa th tr ur vi hch wol yor""".split()
BIAS = "encoder.layer.0.output.dense.bias"


def _mirror(root, space, codes):
    """One folder per published repo, each with a composable-sft pytorch_diff.bin whose single value names its repo."""
    full = f"{space.prefix}.{BIAS}" if space.prefix else BIAS
    for i, code in enumerate(codes):
        repo = root / "cambridgeltl" / f"xlmr-lang-sft-{code}-small"
        repo.mkdir(parents=True)
        diff = {full: {"size": torch.Size([16]), "index_steps": torch.tensor([3]), "values": torch.tensor([float(i)])}}
        torch.save({"diffs": diff, "abs": {}}, repo / "pytorch_diff.bin")
    return f"{root}/cambridgeltl/xlmr-lang-sft-{{lang}}-small"


@pytest.fixture(scope="module")
def space():
    return ParamSpace(tiny_classifier(hidden=16))


@pytest.mark.parametrize("preset", ["sa", "nli"])
def test_every_preset_language_finds_its_hub_sft(preset, space, tmp_path):
    cfg = load_config(preset)
    assert cfg.lang_sfts.startswith("hub:cambridgeltl/") and cfg.lang_sfts_optional is False
    langs = cfg.data.target_langs + [cfg.data.source_lang]
    template = _mirror(tmp_path, space, PUBLISHED_XLMR)
    loaded = recipe.load_lang_sfts(f"hub:{template}", space, langs)
    # aym is the only preset language composable-sft publishes no XLM-R SFT for.
    assert set(loaded) == set(langs) - {"aym"}
    for lang, delta in loaded.items():
        code = PUBLISHED_XLMR.index(hub_code("cambridgeltl/x-{lang}", lang))
        assert delta.meta["base_model"] == template.format(lang=PUBLISHED_XLMR[code])
        idx, val = delta.diffs[BIAS]
        assert idx.tolist() == [3] and val.tolist() == [float(code)]  # the file of that repo, not another's
    assert recipe.load_lang_sfts(f"hub:{template}", space, langs)[cfg.data.source_lang].meta["base_model"].endswith(
        {"sa": "xlmr-lang-sft-id-small", "nli": "xlmr-lang-sft-en-small"}[preset]
    )


def test_table_covers_the_tasks_languages_and_only_published_codes():
    from raysft.tasks.nli import NliTask
    from raysft.tasks.sa import LOCAL_LANGS, SOURCE_LANGS

    nli_langs = ["aym", "bzd", "cni", "gn", "hch", "nah", "oto", "quy", "shp", "tar"]
    assert set(LOCAL_LANGS) | set(SOURCE_LANGS) | set(nli_langs) | {NliTask.source_lang} <= set(COMPOSABLE_SFT)
    assert {c for c in COMPOSABLE_SFT.values() if c} <= set(PUBLISHED_XLMR)
    assert hub_code("someone/sft-{lang}", "eng") == "eng"  # an unknown source keeps our code
    with pytest.raises(RaysftError, match="not in raysft's table"):
        hub_code("cambridgeltl/xlmr-lang-sft-{lang}-small", "xyz")


def _run(space, lang_sfts, optional):
    cfg = load_config("sa").model_copy(update={"lang_sfts": lang_sfts, "lang_sfts_optional": optional})
    return recipe.Run(cfg, None, None, None, None, None, space, 1, ["jav"], ["jav", "ind"], "ind")


def test_missing_source_sft_is_an_error_or_with_optional_a_warning(space, tmp_path):
    template = "hub:" + _mirror(tmp_path, space, ["jav"])  # the mirror lacks xlmr-lang-sft-id-small
    run = _run(space, template, optional=False)
    run.lang_sfts = recipe.load_lang_sfts(template, space, ["jav", "ind"], warn=[])
    assert set(run.lang_sfts) == {"jav"}
    with pytest.raises(RaysftError, match=r"xlmr-lang-sft-id-small \(the source language ind's SFT\)") as e:
        recipe.check_source_lang_sft(run, optional=False)
    assert "\n" not in str(e.value) and "lang_sfts_optional" in str(e.value)
    notes = recipe.check_source_lang_sft(dataclasses.replace(run, cfg=run.cfg.model_copy(
        update={"lang_sfts_optional": True})), optional=True)
    assert len(notes) == 1 and "xlmr-lang-sft-id-small" in notes[0]
    with pytest.raises(RaysftError, match="xlmr-lang-sft-id-small for ind does not exist"):
        recipe.load_lang_sfts(template, space, ["jav", "ind"])  # not optional: the lookup itself refuses
    # a folder / the store: the source SFT is used when someone trained it; no error without it
    assert recipe.check_source_lang_sft(_run(space, str(tmp_path), optional=False), optional=False) == []
