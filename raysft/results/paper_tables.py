"""The SC-SFT report's result tables as data, to print beside an experiment's own (`raysft report`).

Source: Sharma & Chauhan, *Parameter Efficient Approach for Zero-shot Cross Lingual Transfer* (CMU report; its text in
``../shared/papers/``), Tables 1–4, copied digit for digit (their rounding varies: 0.516 and 0.5747 in one column).
Its setup (§4.1): XLM-R base, K = 14.1M (5.1 %), lr 2e-5; language SFTs are composable-sft's published ones except in
Table 4. The MAD-X and BitFit columns of Table 1 are the LT-SFT paper's (Ansell et al. 2022), as the report says.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PaperTable:
    key: str  # what `raysft report --paper` takes
    caption: str  # where it comes from, for the printed table
    task: str  # raysft's task name
    metric: str  # raysft's metric name of the scores
    model: str  # the base model the paper's numbers are for
    columns: dict[str, str]  # column title → the raysft method it reports ("" for none)
    scores: dict[str, dict[str, float]]  # column title → language code → score
    average: dict[str, float]  # column title → the table's own average row

    def method_column(self, method: str) -> str | None:
        return next((title for title, m in self.columns.items() if m == method), None)


def _table(rows: str, titles: list[str]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    scores: dict[str, dict[str, float]] = {t: {} for t in titles}
    average: dict[str, float] = {}
    for line in rows.strip().splitlines():
        lang, *vals = line.split()
        for title, v in zip(titles, vals):
            if lang == "avg":
                average[title] = float(v)
            else:
                scores[title][lang] = float(v)
    return scores, average


_T1 = ["LT-SFT", "SC-SFT", "Ada-SFT", "MAD-X", "BitFit"]
_T1_SCORES, _T1_AVG = _table("""
aym 0.5747 0.5653 0.5517 0.516 0.408
cni 0.4600 0.4947 0.4694 0.4760 0.345
bzd 0.424 0.448 0.409 0.4400 0.367
gn 0.6280 0.6373 0.6086 0.5880 0.464
nah 0.5108 0.5176 0.5191 0.537 0.388
oto 0.3930 0.4693 0.4182 0.4680 0.398
quy 0.6093 0.6053 0.6106 0.5830 0.345
tar 0.4173 0.4307 0.4098 0.4390 0.367
shp 0.4960 0.4840 0.4764 0.4890 0.388
hch 0.4053 0.4493 0.3982 0.415 0.363
avg 0.4918 0.5102 0.4870 0.495 0.383
""", _T1)

_T2 = ["LT-SFT", "SC-SFT", "Rand-SFT"]
_T2_SCORES, _T2_AVG = _table("""
ace 0.7839 0.7852 0.7821
ban 0.8308 0.8344 0.8044
bjn 0.8248 0.811 0.8012
mad 0.7921 0.7851 0.6655
min 0.8353 0.8378 0.7980
jav 0.8427 0.8376 0.8507
sun 0.8500 0.8493 0.8364
avg 0.8228 0.8201 0.7912
""", _T2)

_T3 = ["Rand-SFT", "Rand-SFT (no embeddings)", "Rand-SFT (100x fewer)"]
_T3_SCORES, _T3_AVG = _table("""
ace 0.7821 0.7675 0.7028
ban 0.8044 0.8147 0.7732
bjn 0.8012 0.7905 0.8068
mad 0.6655 0.7794 0.4873
min 0.798 0.7983 0.811
jav 0.8507 0.8436 0.8441
sun 0.8364 0.8489 0.8356
avg 0.7912 0.8061 0.7515
""", _T3)

_T4 = ["Lang+Task LT-SFT", "Lang+Task SC-SFT"]
_T4_SCORES, _T4_AVG = _table("""
aym 0.58 0.572
bzd 0.432 0.4053
cni 0.472 0.4067
hch 0.3973 0.4027
oto 0.4358 0.4037
avg 0.463 0.4381
""", _T4)

XLMR = "xlm-roberta-base"
TABLES: dict[str, PaperTable] = {
    t.key: t
    for t in (
        PaperTable("table1", "the SC-SFT report, Table 1 (AmericasNLI test accuracy; MAD-X and BitFit from Ansell et al. "
                   "2022)", "nli", "acc", XLMR,
                   dict(zip(_T1, ["lt-sft", "sc-sft", "ada-sft", "mad-x", "bitfit"])), _T1_SCORES, _T1_AVG),
        PaperTable("table2", "the SC-SFT report, Table 2 (NusaX-Senti test F1)", "sa", "f1", XLMR,
                   dict(zip(_T2, ["lt-sft", "sc-sft", "rand-sft"])), _T2_SCORES, _T2_AVG),
        PaperTable("table3", "the SC-SFT report, Table 3 (NusaX-Senti test F1, Rand-SFT variants)", "sa", "f1", XLMR,
                   dict(zip(_T3, ["rand-sft", "", ""])), _T3_SCORES, _T3_AVG),
        PaperTable("table4", "the SC-SFT report, Table 4 (AmericasNLI test accuracy, its own language SFTs)", "nli",
                   "acc", XLMR, dict(zip(_T4, ["lt-sft", "sc-sft"])), _T4_SCORES, _T4_AVG),
    )
}


def table_for(task: str, model: str) -> PaperTable | None:
    """The table an experiment reproduces: the report's main table of its task, when its base model is the report's."""
    if model != XLMR:
        return None
    return {"nli": TABLES["table1"], "sa": TABLES["table2"]}.get(task)
