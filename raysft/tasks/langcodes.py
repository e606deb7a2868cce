"""Our language codes → the codes each published SFT source uses in its repository names.

raysft names languages as its data folders do: ISO 639-3 (``eng``, ``ind``, ``jav``, the NusaX codes) and the
AmericasNLI codes (``gn`` is Guaraní's ISO 639-1 code there). composable-sft's hub repos
(``cambridgeltl/xlmr-lang-sft-{code}-small``) use ISO 639-1 where their table gives one and their own code otherwise,
so ``{lang}`` in a ``hub:`` template must be translated before the repo is looked up.

Source: composable-sft's MODELS.md ("Language SFTs" table, the xlm-roberta-base column; github.com/cambridgeltl/
composable-sft, commit 0437d22). Note that it lists Javanese and Sundanese as ``jav`` and ``sun`` (not ``jv``/``su``),
English and Indonesian as ``en``/``id``. It publishes no XLM-R SFT for Aymara (``aym``), and none for Toba Batak,
Buginese and Ngaju (``bbc``, ``bug``, ``nij``: "no language adaptation was applied due to poor or non-existent
Wikipedia corpora", the same file): those map to ``None`` (the language is evaluated task-only and reported missing).
"""

from __future__ import annotations

from raysft.errors import RaysftError

# our code -> composable-sft's code (None: composable-sft publishes no XLM-R language SFT for it)
COMPOSABLE_SFT: dict[str, str | None] = {
    # source languages
    "eng": "en",
    "ind": "id",
    # NusaX (the 10 local languages)
    "ace": "ace",
    "ban": "ban",
    "bbc": None,
    "bjn": "bjn",
    "bug": None,
    "jav": "jav",
    "mad": "mad",
    "min": "min",
    "nij": None,
    "sun": "sun",
    # AmericasNLI
    "aym": None,
    "bzd": "bzd",
    "cni": "cni",
    "gn": "gn",
    "hch": "hch",
    "nah": "nah",
    "oto": "oto",
    "quy": "quy",
    "shp": "shp",
    "tar": "tar",
}

# A hub template is recognised as a source by its owner (also inside a local mirror's path: /mirror/cambridgeltl/…).
SOURCES: dict[str, tuple[str, dict[str, str | None]]] = {
    "cambridgeltl/": ("composable-sft", COMPOSABLE_SFT),
}


def hub_source(template: str) -> tuple[str, dict[str, str | None]] | None:
    """(source name, its code table) for a ``{lang}`` template of a known SFT source, else None."""
    for owner, source in SOURCES.items():
        if template.startswith(owner) or f"/{owner}" in template:
            return source
    return None


def hub_code(template: str, lang: str) -> str | None:
    """The code that fills ``{lang}`` in ``template`` for our language ``lang``; None when the source publishes no
    SFT for it. A template of no known source gets our code unchanged; a language missing from a known source's
    table is an error (the table, not a guess, decides)."""
    source = hub_source(template)
    if source is None:
        return lang
    name, table = source
    if lang not in table:
        raise RaysftError(
            f"language {lang!r} is not in raysft's table of {name} language codes: add it to "
            "raysft/tasks/langcodes.py (with the code its hub repos use, or None)"
        )
    return table[lang]


def hub_repo(template: str, lang: str) -> str | None:
    code = hub_code(template, lang)
    return None if code is None else template.format(lang=code)
