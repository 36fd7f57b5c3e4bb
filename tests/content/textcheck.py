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


_UNIT = re.compile(r"<(h1|h2|p|li)\b[^>]*>(.*?)</\1>", re.DOTALL | re.IGNORECASE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_VOWEL_GROUPS = re.compile(r"[aeiouy]+")


def syllables(word: str) -> int:
    """Syllables in one English word, by vowel groups (the usual readability-formula estimate)."""
    word = word.lower()
    count = len(_VOWEL_GROUPS.findall(word))
    # A final silent "e" ("give", "surface") is not a syllable; "-le" ("simple") and "-ee" ("agree") are.
    if count > 1 and word.endswith("e") and not word.endswith(("le", "ee")):
        count -= 1
    return max(count, 1)


def sentences_of_html(source: str) -> list[list[str]]:
    """The words of each sentence of an HTML body: every heading, paragraph and list item ends a sentence
    (a list item or heading has no full stop, but a reader takes it as one unit)."""
    result: list[list[str]] = []
    for _tag, inner in _UNIT.findall(source):
        text = _JINJA.sub(" name ", inner)
        for sentence in _SENTENCE_END.split(html.unescape(_HTML_TAG.sub(" ", text))):
            words = normalise(sentence)
            if words:
                result.append(words)
    return result


def reading_grade(source: str) -> float:
    """Flesch-Kincaid grade level of an HTML body: 0.39 words/sentence + 11.8 syllables/word - 15.59."""
    sentences = sentences_of_html(source)
    words = [word for sentence in sentences for word in sentence]
    if not words:
        raise ValueError("no text to grade")
    per_sentence = len(words) / len(sentences)
    per_word = sum(syllables(word) for word in words) / len(words)
    return round(0.39 * per_sentence + 11.8 * per_word - 15.59, 1)
