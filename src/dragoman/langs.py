"""Language codes for matching nodes to jobs (PROTOCOL.md §9.2). Forwarded values are never rewritten."""

from __future__ import annotations

from collections.abc import Iterable

_ALIASES = {
    "zh-cn": "zh",
    "zh-tw": "zh",
    "zh-hans": "zh",
    "zh-hant": "zh",
    "pt-br": "pt",
    "en-us": "en",
    "in": "id",
    "iw": "he",
}


def normalize(code: str) -> str:
    code = code.strip().lower().replace("_", "-")
    return _ALIASES.get(code, code)


def node_pairs(asr_languages: Iterable[str], semantic_languages: Iterable[str]) -> list[str]:
    """Every directed pair "src:tgt" a node is eligible for: src recognised, tgt produced."""
    src = sorted({normalize(c) for c in asr_languages} - {"auto", ""})
    tgt = sorted({normalize(c) for c in semantic_languages} - {"auto", ""})
    return [f"{s}:{t}" for s in src for t in tgt]


def job_pairs(src_lang: str, tgt_lang: str, lang_a: str | None, lang_b: str | None) -> tuple[str, str]:
    """The pool a job is placed from, and the reverse pair a two-way job also needs ("" = none).

    ("", "") means no node can be eligible: an "auto" source without both two-way languages.
    """
    if normalize(src_lang) == "auto":
        if lang_a and lang_b:
            a, b = normalize(lang_a), normalize(lang_b)
            return f"{a}:{b}", f"{b}:{a}"
        return "", ""
    return f"{normalize(src_lang)}:{normalize(tgt_lang)}", ""


def room_job_pairs(src_lang: str, tgt_lang: str, lang_a: str | None, lang_b: str | None) -> tuple[str, str]:
    """The pools of a room job: a two-way speaker may speak either of its two languages, so the node must
    recognise both and produce the listener's language; a one-way speaker's job is placed as any other."""
    if normalize(src_lang) == "auto" and lang_a and lang_b:
        tgt = normalize(tgt_lang)
        return f"{normalize(lang_a)}:{tgt}", f"{normalize(lang_b)}:{tgt}"
    return job_pairs(src_lang, tgt_lang, lang_a, lang_b)
