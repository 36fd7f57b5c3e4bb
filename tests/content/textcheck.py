"""Text helpers for content tests: find runs of words copied from a source text."""

from __future__ import annotations

import html
import re
import unicodedata

_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
_HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_HTML_BLOCK = re.compile(r"<(style|script|head)\b.*?</\1\s*>", re.DOTALL | re.IGNORECASE)
_HTML_TAG = re.compile(r"<[^>]*>")
_FOLD = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u2032": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u2033": '"',
        "\u2010": "-",
        "\u2011": "-",
        "\u2012": "-",
        "\u2013": "-",
        "\u2014": "-",
        "\u2015": "-",
        "\u2212": "-",
        "\u00a0": " ",
        "\u2007": " ",
        "\u202f": " ",
    }
)


def normalise(text: str) -> list[str]:
    """Words of ``text`` with markup, template syntax, case, quotes, dashes and punctuation removed.

    Jinja constructs and HTML tags become word breaks, entities are decoded, apostrophes vanish inside words
    ("haven't" -> "havent"), dashes and all other punctuation become spaces.
    """
    text = _JINJA.sub(" ", text)
    text = _HTML_COMMENT.sub(" ", text)
    text = _HTML_BLOCK.sub(" ", text)
    text = _HTML_TAG.sub(" ", text)
    text = html.unescape(text)
    text = unicodedata.normalize("NFKC", text).translate(_FOLD).lower()
    text = text.replace("'", "")
    text = re.sub(r"[\W_]+", " ", text)
    return text.split()


def copied_runs(text: str, source: str, n: int = 10) -> list[str]:
    """Every run of ``n`` consecutive words in ``text`` that also occurs in ``source`` (both normalised)."""
    if n < 1:
        raise ValueError("n must be at least 1")
    src = normalise(source)
    source_grams = {tuple(src[i : i + n]) for i in range(len(src) - n + 1)}
    words = normalise(text)
    runs: list[str] = []
    for i in range(len(words) - n + 1):
        gram = tuple(words[i : i + n])
        if gram in source_grams:
            runs.append(" ".join(gram))
    return runs


def longest_copied_run(text: str, source: str) -> int:
    """Length in words of the longest run of ``text`` that also occurs in ``source``."""
    n = 0
    while copied_runs(text, source, n + 1):
        n += 1
    return n
