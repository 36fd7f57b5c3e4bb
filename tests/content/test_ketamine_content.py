"""Content checks for the ketamine-therapy sequence and the base email layout (reads the files directly)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.content.textcheck import copied_runs, normalise

PROJECT = Path(__file__).resolve().parents[2]
SOURCE_ARTICLE = Path(__file__).resolve().parents[3] / "shared/content/source-article.txt"
EMAIL_DIR = PROJECT / "templates" / "email"
BASE_DIR = EMAIL_DIR / "_base"
SEQUENCE_DIR = EMAIL_DIR / "ketamine-therapy"
SEQUENCE_FILE = PROJECT / "nurture" / "sequences" / "ketamine-therapy.yaml"
PARTS = ("subject.txt", "body.txt", "body.html")

# Step key -> words the email must cover, in both the text and the HTML part. A tuple means "any of these".
TOPICS: dict[str, list[str | tuple[str, ...]]] = {
    "welcome": [("anesthetic", "anaesthetic"), "depression", "anxiety", "PTSD"],
    "how-it-works": ["glutamate", "neuroplasticity", "new connections", "reset", "metaphor"],
    "what-to-expect": [
        "infusion",
        "esketamine",
        "2019",
        "nasal",
        ("oral", "tablet"),
        "40",
        "60",
        "dissociation",
        "recovery",
    ],
    "who-it-may-help": [
        "treatment-resistant",
        "PTSD",
        "anxiety",
        "bipolar",
        "chronic pain",
        "psychosis",
        "schizophrenia",
        "substance",
        "evaluation",
    ],
    "benefits": ["hours", "days", "weeks", "treatment", "neuroplasticity"],
    "risks-and-costs": ["dizziness", "nausea", "dissociation", "insurance", "cost", "not a cure", "sessions"],
    "is-it-right-for-you": ["professional", "vary", "long-term", "CBT"],
    "contact-us": ["contact", "evaluation"],
}
STEPS = list(TOPICS)
DELAYS = ["0", "2d", "2d", "3d", "3d", "4d", "4d", "3d"]
SEND_DAYS = [0, 2, 4, 7, 10, 14, 18, 21]

ACRONYMS = {"PTSD", "FDA", "CBT", "IV"}
JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
SUBJECT_BLOCK = re.compile(r"\{%-?\s*block subject\s*-?%\}(.*?)\{%-?\s*endblock", re.DOTALL)


def read(path: Path) -> str:
    assert path.is_file(), f"missing template file: {path.relative_to(PROJECT)}"
    return path.read_text(encoding="utf-8")


def words(text: str) -> str:
    """Normalised words of a template (markup and Jinja removed), joined with single spaces and padded."""
    return " " + " ".join(normalise(text)) + " "


def subject_text(step: str) -> str:
    source = read(SEQUENCE_DIR / step / "subject.txt")
    match = SUBJECT_BLOCK.search(source)
    assert match, f"{step}/subject.txt has no {{% block subject %}}"
    return match.group(1)


def block(source: str, name: str) -> str:
    match = re.search(r"\{%-?\s*block " + name + r"\s*-?%\}(.*?)\{%-?\s*endblock", source, re.DOTALL)
    return match.group(1).strip() if match else ""


@pytest.fixture(scope="module")
def source_article() -> str:
    if not SOURCE_ARTICLE.is_file():
        pytest.fail(f"source article not found at {SOURCE_ARTICLE}: the copy check cannot run without it")
    return SOURCE_ARTICLE.read_text(encoding="utf-8")


# --- originality ----------------------------------------------------------------------------------


@pytest.mark.parametrize("step", STEPS)
def test_no_ten_word_run_copied_from_the_article(step: str, source_article: str) -> None:
    for part in PARTS:
        runs = copied_runs(read(SEQUENCE_DIR / step / part), source_article, n=10)
        assert not runs, f"{step}/{part} copies the source article word for word: {runs}"


def test_copy_check_reports_a_lifted_sentence(source_article: str) -> None:
    # Lifted from the article with case, quotes, dashes and punctuation changed, wrapped in markup and Jinja.
    lifted = (
        "<p>{% if x %}{% endif %}KETAMINE therapy primarily targets the <strong>Brain&rsquo;s</strong>"
        " glutamate system -- which plays a significant role; in regulating Mood and cognitive function!</p>"
    )
    runs = copied_runs(lifted, source_article, n=10)
    assert "ketamine therapy primarily targets the brains glutamate system which plays" in runs
    assert len(runs) == 10  # 19 words lifted -> 10 overlapping ten-word windows
    assert copied_runs(
        "Unlike common antidepressants that can take weeks—or even months", source_article, n=8
    )


def test_copy_check_passes_a_paraphrase(source_article: str) -> None:
    paraphrase = (
        "Ketamine acts mainly on the glutamate system, which helps to regulate how we feel and think."
    )
    assert copied_runs(paraphrase, source_article, n=10) == []


# --- topics and sequence --------------------------------------------------------------------------


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("part", ["body.txt", "body.html"])
def test_step_covers_its_topic(step: str, part: str) -> None:
    text = words(read(SEQUENCE_DIR / step / part))
    for topic in TOPICS[step]:
        options = topic if isinstance(topic, tuple) else (topic,)
        assert any(words(option) in text for option in options), f"{step}/{part} does not mention {topic!r}"


def test_sequence_yaml_lists_the_steps_in_order() -> None:
    data = yaml.safe_load(read(SEQUENCE_FILE))
    assert data["slug"] == "ketamine-therapy"
    assert data["name"] == "Understanding ketamine therapy"
    assert data["timezone"] == "America/New_York"
    assert data["window"] == {"days": "mon-fri", "start": "09:00", "end": "11:30"}
    steps = data["steps"]
    assert [s["key"] for s in steps] == STEPS
    assert [s["template"] for s in steps] == [f"ketamine-therapy/{key}" for key in STEPS]
    assert [str(s["delay"]) for s in steps] == DELAYS
    days = [sum(int(str(d).rstrip("d")) for d in DELAYS[: i + 1]) for i in range(len(DELAYS))]
    assert days == SEND_DAYS


def test_every_step_folder_is_in_the_sequence() -> None:
    assert sorted(p.name for p in SEQUENCE_DIR.iterdir() if p.is_dir()) == sorted(STEPS)


@pytest.mark.parametrize("step", STEPS)
def test_step_templates_extend_the_base(step: str) -> None:
    folder = SEQUENCE_DIR / step
    for part in PARTS:
        assert read(folder / part).lstrip().startswith(f'{{% extends "_base/{part}" %}}'), f"{step}/{part}"
    html = read(folder / "body.html")
    title, preheader = block(html, "title"), block(html, "preheader")
    assert title and preheader, f"{step}/body.html needs a title and a preheader"
    assert preheader != subject_text(step).strip()
    assert JINJA.sub("", preheader).strip().endswith((".", "?"))


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("part", ["body.txt", "body.html"])
def test_step_greets_by_name_and_says_where_in_the_course_it_is(step: str, part: str) -> None:
    source = read(SEQUENCE_DIR / step / part)
    assert "Hello{{" in source and "first_name" in source, f"{step}/{part}: greeting must use first_name"
    assert re.search(r"email \{\{ step_number \}\} of \{\{ step_count \}\}", source), f"{step}/{part}"
    if part == "body.html":
        assert source.count("<h1") == 1, f"{step}/body.html must have exactly one h1"


@pytest.mark.parametrize("step", STEPS)
def test_step_text_part_length(step: str) -> None:
    content = block(read(SEQUENCE_DIR / step / "body.txt"), "content")
    count = len(JINJA.sub(" x ", content).split()) - content.count("\n---") - content.count("\n===")
    assert 200 <= count <= 350, f"{step}/body.txt has {count} words"


def test_contact_step_links_to_the_contact_page() -> None:
    html = read(SEQUENCE_DIR / "contact-us" / "body.html")
    # The button names no organisation, so it stays one line on a phone whatever the name (layout test).
    assert re.search(r'<a [^>]*href="\{\{ contact_url \}\}"[^>]*>Contact us about an evaluation</a>', html)
    assert "{{ contact_url }}" in read(SEQUENCE_DIR / "contact-us" / "body.txt")


def all_templates() -> list[Path]:
    return sorted([*BASE_DIR.glob("*.txt"), *BASE_DIR.glob("*.html"), *SEQUENCE_DIR.glob("*/*")])


@pytest.mark.parametrize("path", all_templates(), ids=lambda p: str(p.relative_to(EMAIL_DIR)))
def test_templates_hard_code_no_links_or_organisation(path: str | Path) -> None:
    source = read(Path(path))
    assert "http://" not in source
    assert not re.search(r"(href|src)=\"(?!\{\{)", source), "links must come from context variables"
    assert "click here" not in source.lower()
    assert "counseling center group" not in source.lower()


# --- subjects -------------------------------------------------------------------------------------


@pytest.mark.parametrize("step", STEPS)
def test_subject_rules(step: str) -> None:
    source = read(SEQUENCE_DIR / step / "subject.txt")
    assert len(source.strip().splitlines()) == 1, f"{step}/subject.txt must be a single line"
    subject = subject_text(step)
    assert subject == subject.strip() and subject
    if "{{" not in subject:
        assert len(subject) < 70, f"{step} subject is {len(subject)} characters"
    assert "!" not in subject
    assert not re.search(r"\bfree\b", subject, re.IGNORECASE)
    shouting = [w for w in re.findall(r"[A-Za-z]{3,}", JINJA.sub("", subject)) if w.isupper()]
    assert set(shouting) <= ACRONYMS, f"{step} subject has all-caps words {shouting}"


def test_subjects_are_distinct() -> None:
    subjects = [subject_text(step) for step in STEPS]
    assert len(set(subjects)) == len(subjects)


# --- base layout ----------------------------------------------------------------------------------


@pytest.mark.parametrize("part", ["body.txt", "body.html"])
def test_base_has_disclaimer_crisis_line_and_footer(part: str) -> None:
    source = read(BASE_DIR / part)
    text = words(source)
    assert words("not medical advice") in text
    assert words("licensed healthcare professional") in text
    assert words("If you are in crisis, call or text 988 in the US, or your local emergency number.") in text
    for variable in ("org_name", "postal_address", "sequence_name", "unsubscribe_url", "preferences_url"):
        assert "{{ " + variable + " }}" in source, f"_base/{part} lacks {variable}"
    assert re.search(r"\{%-?\s*block content\s*-?%\}", source)
    assert words("You are receiving this because you signed up for") in text
    if part == "body.txt":
        assert "Unsubscribe: {{ unsubscribe_url }}" in source
        assert "Preferences: {{ preferences_url }}" in source


def test_base_html_structure() -> None:
    html = read(BASE_DIR / "body.html")
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert '<html lang="en"' in html
    assert '<meta charset="utf-8">' in html
    assert 'name="viewport"' in html
    assert "<title>{% block title %}{% endblock %}</title>" in html
    assert 'role="presentation"' in html
    assert "{% if logo_url %}" in html and 'alt="{{ org_name }}"' in html
    preheader = re.search(r"<span[^>]*style=\"([^\"]*)\"[^>]*>\{% block preheader %\}\{% endblock %\}", html)
    assert preheader, "preheader block must sit in a hidden span"
    for rule in ("display:none", "max-height:0", "overflow:hidden", "mso-hide:all"):
        assert rule in preheader.group(1).replace(" ", "")
    assert '<a class="footer-link" href="{{ unsubscribe_url }}">Unsubscribe from these emails</a>' in html
    assert '<a class="footer-link" href="{{ preferences_url }}">Update your email preferences</a>' in html
    assert "{% block content %}{% endblock %}" in html
    assert "<h1" not in html, "the one h1 belongs to each step"
    assert len(html.encode()) < 20_000


def test_base_subject_is_one_block_on_one_line() -> None:
    assert read(BASE_DIR / "subject.txt").strip() == "{% block subject %}{% endblock %}"


def test_stylesheet_selectors_are_inlinable() -> None:
    css = re.sub(r"/\*.*?\*/", "", read(BASE_DIR / "email.css"), flags=re.DOTALL)
    assert "@" not in css, "media queries belong in the <style> element of _base/body.html"
    selectors = [s.strip() for group in re.findall(r"([^{}]+)\{[^{}]*\}", css) for s in group.split(",")]
    assert selectors
    simple = re.compile(r"^(?:[a-z][a-z0-9]*|[a-z][a-z0-9]*\.[a-z][\w-]*|\.[a-z][\w-]*)$")
    assert [s for s in selectors if not simple.match(s)] == []


TABLE_EDGE_BEFORE = re.compile(r"<(table|tbody|thead|tr)\b[^>]*>$|</(td|th|tr|tbody|thead)>$", re.IGNORECASE)
TABLE_EDGE_AFTER = re.compile(r"^<(tr|td|th|tbody|thead)\b|^</(tr|tbody|thead|table)>", re.IGNORECASE)


@pytest.mark.parametrize(
    "path",
    [BASE_DIR / "body.html", *sorted(SEQUENCE_DIR.glob("*/body.html"))],
    ids=lambda p: str(p.relative_to(EMAIL_DIR)),
)
def test_no_jinja_between_table_boundaries(path: Path) -> None:
    """The CSS inliner parses the source as HTML: text between table tags would be moved out of the table."""
    source = read(path)
    for match in JINJA.finditer(source):
        before, after = source[: match.start()], source[match.end() :]
        if before.rfind("<") > before.rfind(">"):
            continue  # inside a tag (an attribute value)
        assert not TABLE_EDGE_BEFORE.search(before.rstrip()), f"{match.group(0)} directly inside a table/row"
        assert not TABLE_EDGE_AFTER.search(after.lstrip()), f"{match.group(0)} directly before a row/cell"
