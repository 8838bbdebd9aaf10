"""Training documents → typed sections: markdown syntax, native .dlm reader, adapter discovery."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlm_sway.core.doc_dlm import dlm_section_id, find_dlm_adapter, parse_dlm, resolve_base_model
from dlm_sway.core.doc_markdown import content_id, parse_markdown
from dlm_sway.core.documents import load_document
from dlm_sway.core.errors import SpecValidationError
from dlm_sway.core.sections import SectionPreference, SectionProbe

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).resolve().parent / "data"
DEMO_DOC = REPO / "src" / "dlm_sway" / "demo" / "data" / "document.md"
GUILD_NOTES = REPO / "examples" / "guild-notes.md"
GUILD_DLM = DATA / "guild.dlm"
DLM_ID = "01JZB7K3QWMR5T8VX2N4PA6HDE"

FRONT = f"---\ndlm_id: {DLM_ID}\nbase_model: smollm2-135m\n---\n"


def _md_error(text: str) -> str:
    with pytest.raises(SpecValidationError) as info:
        parse_markdown(text, source="doc.md")
    return str(info.value)


def _dlm_error(text: str) -> str:
    with pytest.raises(SpecValidationError) as info:
        parse_dlm(text, source="doc.dlm", find_adapter=False)
    return str(info.value)


# --- markdown ---------------------------------------------------------------------------------


def test_headings_split_sections_and_leading_text_is_untitled() -> None:
    doc = parse_markdown(
        "Intro text.\n\n# Title\n\nTop.\n\n## First\n\nOne.\n### Detail\nStill one.\n\n## Second\nTwo.\n"
    )
    assert [s.title for s in doc.sections] == ["", "Title", "First", "Second"]
    assert [s.kind for s in doc.sections] == ["prose"] * 4
    assert doc.sections[0].tag is None
    assert doc.sections[2].tag == "first"
    assert doc.sections[2].content == "One.\n### Detail\nStill one."  # ### is content
    assert doc.title == "Title"


def test_document_without_headings_is_one_prose_section() -> None:
    doc = parse_markdown("Just some text.\n\nAnother paragraph.\n")
    assert len(doc.sections) == 1
    only = doc.sections[0]
    assert (only.kind, only.title, only.content) == (
        "prose",
        "",
        "Just some text.\n\nAnother paragraph.",
    )
    assert doc.text == only.content


def test_headings_inside_code_blocks_and_empty_sections_are_ignored() -> None:
    doc = parse_markdown("# Empty\n\n## Code\n```\n# not a heading\n```\n")
    assert [s.title for s in doc.sections] == ["Code"]
    assert "# not a heading" in doc.sections[0].content


def test_colon_qa_pairs_make_an_instruction_section() -> None:
    doc = parse_markdown(
        "## Quiz\nSome intro.\n\nQ: First?\nA: One.\n\nQ: Second\ncontinued?\nA: Two,\n"
        "over lines.\n\nand a paragraph.\n"
    )
    (section,) = doc.sections
    assert section.kind == "instruction"
    assert section.probes == (
        SectionProbe("First?", "One."),
        SectionProbe("Second\ncontinued?", "Two,\nover lines.\n\nand a paragraph."),
    )
    assert section.content.startswith("Some intro.")


def test_hash_qa_subheadings_and_mixed_forms() -> None:
    doc = parse_markdown("## Quiz\n### Q\nWhat?\n\n### A\nThat.\n\nQ: Again?\nA: Yes.\n")
    assert doc.sections[0].probes == (
        SectionProbe("What?", "That."),
        SectionProbe("Again?", "Yes."),
    )


@pytest.mark.parametrize(
    "body",
    [
        "Prompt: P?\nChosen: Good.\nRejected: Bad.\n",
        "### Prompt\nP?\n\n### Chosen\nGood.\n\n### Rejected\nBad.\n",
    ],
)
def test_preference_triples_in_both_syntaxes(body: str) -> None:
    doc = parse_markdown("## Voice\n" + body)
    (section,) = doc.sections
    assert section.kind == "preference"
    assert section.preferences == (SectionPreference("P?", "Good.", "Bad."),)


def test_stray_answer_marker_in_prose_stays_prose() -> None:
    doc = parse_markdown("## Notes\nA: note that this is prose.\nChosen: also prose.\n")
    assert doc.sections[0].kind == "prose"


def test_markers_inside_code_blocks_are_content() -> None:
    doc = parse_markdown("## Ex\nQ: Show code?\nA: Here:\n```\nQ: not a marker\n```\n")
    assert doc.sections[0].probes == (
        SectionProbe("Show code?", "Here:\n```\nQ: not a marker\n```"),
    )


def test_ids_are_stable_under_reordering_and_depend_on_kind_and_content() -> None:
    a = "## Alpha\nFirst text.\n"
    b = "## Beta\nQ: Why?\nA: Because.\n"
    one = parse_markdown(a + b)
    two = parse_markdown(b + "\n" + a)
    assert {s.title: s.id for s in one.sections} == {s.title: s.id for s in two.sections}
    assert one.sections[0].id == content_id("prose", "First text.")
    assert len(one.sections[0].id) == 16
    # Trailing whitespace and blank edges do not change the id; the title is not hashed.
    assert parse_markdown("## Other\n\nFirst text.   \n\n").sections[0].id == one.sections[0].id
    assert parse_markdown("## Alpha\nFirst text!\n").sections[0].id != one.sections[0].id


def test_markdown_front_matter_goes_to_metadata() -> None:
    doc = parse_markdown("---\ntitle: Notes\nauthor: me\n---\n## A\ntext\n")
    assert doc.title == "Notes"
    assert doc.metadata["front_matter"] == {"title": "Notes", "author": "me"}
    assert [s.title for s in doc.sections] == ["A"]


def test_markdown_malformed_markers_name_file_line_and_fix() -> None:
    msg = _md_error("## S\n\nQ: Lonely question?\n")
    assert msg.startswith("doc.md:3:") and "'Q' has no 'A' after it" in msg
    msg = _md_error("## S\nQ: One?\nQ: Two?\nA: x\n")
    assert msg.startswith("doc.md:3:") and "'Q' must be followed by 'A', found 'Q'" in msg
    msg = _md_error("## S\nA: answer first\nQ: then?\nA: x\n")
    assert msg.startswith("doc.md:2:") and "'A' has no 'Q' before it" in msg
    msg = _md_error("## S\nQ:\nA: x\n")
    assert msg.startswith("doc.md:2:") and "'Q' has no text" in msg
    msg = _md_error("## S\nPrompt: p\nChosen: c\n")
    assert msg.startswith("doc.md:3:") and "'Chosen' has no 'Rejected' after it" in msg
    msg = _md_error("## S\nPrompt: p\nRejected: r\nChosen: c\n")
    assert "'Prompt' must be followed by 'Chosen', found 'Rejected'" in msg
    msg = _md_error("## Mixed\nQ: q\nA: a\nPrompt: p\nChosen: c\nRejected: r\n")
    assert msg.startswith("doc.md:1:") and "two separate headings" in msg
    msg = _md_error("---\nkey: [unclosed\n---\ntext\n")
    assert msg.startswith("doc.md:") and "not valid YAML" in msg


def test_demo_document_sections() -> None:
    doc = load_document(DEMO_DOC)
    assert doc.title == "The Keepers' Book of the Brinewick Lamp Guild"
    assert [s.title for s in doc.sections] == [
        "The Keepers' Book of the Brinewick Lamp Guild",
        "Origins of the Guild",
        "The Nine Lights",
        "Ranks of the Guild",
        "Rules of the Watch",
        "Signals and the Keeper's Calendar",
        "Customs of the Towers",
    ]
    assert all(s.kind == "prose" for s in doc.sections)
    assert doc.sections[5].tag == "signals-and-the-keepers-calendar"
    assert len({s.id for s in doc.sections}) == 7


def test_guild_notes_example_uses_every_syntax() -> None:
    doc = load_document(GUILD_NOTES)
    kinds = {s.title: s.kind for s in doc.sections}
    assert kinds["The Founding"] == "prose"
    assert kinds["Questions for the Apprentice"] == "instruction"
    assert kinds["How a Keeper Answers"] == "preference"
    qa = next(s for s in doc.sections if s.kind == "instruction")
    assert len(qa.probes) == 4
    assert qa.probes[1] == SectionProbe(
        "Which light of the Reach never flashes?",
        "The Widow's Candle on Harrow Rock. It burns steady red in memory of Ysolde Harrowgate.",
    )
    pref = next(s for s in doc.sections if s.kind == "preference")
    assert len(pref.preferences) == 2


# --- .dlm -------------------------------------------------------------------------------------


def test_dlm_ids_match_the_format_test_vectors() -> None:
    assert dlm_section_id("prose", "Hello prose.\n") == "16bfb043bc5d8fab"
    assert dlm_section_id("instruction", "### Q\nHi?\n### A\nHello.") == "a856a2da57d0dd0a"
    assert dlm_section_id("prose", "\ufeffhello") == "0c3a792e443908ce"


def test_realistic_dlm_document(tmp_path: Path) -> None:
    doc = parse_dlm(GUILD_DLM.read_text(), source=str(GUILD_DLM), home=tmp_path)
    assert [s.kind for s in doc.sections] == ["prose", "instruction", "preference", "prose"]
    prose, qa, pref, tail = doc.sections
    assert prose.title == "The Brinewick Lamp Guild" and prose.tag == "the-brinewick-lamp-guild"
    assert doc.title == "The Brinewick Lamp Guild"
    assert qa.probes == (
        SectionProbe(
            "Which light of the Reach never flashes?",
            "The Widow's Candle on Harrow Rock, which burns a steady red.",
        ),
        SectionProbe(
            "What is an apprentice of the Guild called?",
            "A wick. A wick serves three winters before standing a watch alone.",
        ),
    )
    # The provenance marker is lifted, the !probe flag is recorded and kept out of content.
    assert not qa.content.startswith("<!--") and "!probe" not in qa.content
    assert doc.metadata["probe_prompts"] == ["Which light of the Reach never flashes?"]
    assert pref.preferences[0].chosen.startswith("Ring the tower bell nine times")
    assert "::instruction::" in tail.content  # escaped by the code block
    # Ids follow dlm's definition over the raw section text.
    raw_qa = GUILD_DLM.read_text().split("::instruction::\n", 1)[1].split("\n::preference::")[0]
    raw_qa = raw_qa.split("\n", 1)[1]  # drop the lifted marker line
    assert qa.id == dlm_section_id("instruction", raw_qa)
    md = doc.metadata
    assert md["dlm_id"] == DLM_ID and md["dlm_version"] == 15
    assert md["training"] == {
        "lora_r": 8,
        "sequence_len": 1024,
        "learning_rate": "2e-4",  # YAML 1.1 reads it as a string, as dlm does
        "num_epochs": 2,
        "seed": 7,
    }
    assert md["system_prompt"] == "You are a senior keeper of the Brinewick Lamp Guild.\n"
    assert doc.base_model == "builtin:smollm2-135m-instruct"
    assert doc.adapter_path is None and "dlm train" in str(md["adapter_note"])


def test_dlm_format_worked_example_ids(tmp_path: Path) -> None:
    """The format reference's example: ids, routing and skipped media."""
    text = (
        "---\ndlm_id: 01JZ8Q4M7TAVB3K5N2XWY6D9RC\ndlm_version: 15\nbase_model: smollm2-135m\n"
        "training:\n  adapters:\n    mechanic:\n      lora_r: 8\n    voice:\n      lora_r: 4\n"
        "---\n\n# Chain care notes\n\nA chain wears by stretching at the pin joints. Once it has "
        "grown by\nabout half a percent it starts to chew the cassette teeth, so swapping\na "
        "cheap chain early protects the expensive parts.\n\n::instruction#mechanic::\n### Q !probe\n"
        "How often should I lube a road bike chain?\n\n### A\nAbout every 300 km, and always after "
        "a wet ride. Wipe the chain,\nput one drop on each roller, wait a minute, then wipe the "
        "excess.\n\n### Q\nWhich tool tells me the chain is worn out?\n\n### A\nA chain checker "
        "gauge. If the 0.5 tab drops in fully, replace the chain.\n\n::preference#voice::\n"
        "### Prompt\nMy gears skip when I climb. What should I do?\n\n### Chosen\nCheck chain wear "
        "first, then the cable tension at the barrel adjuster.\n\n### Rejected\nGears are "
        "complicated, so just take it to a shop.\n\n::prose::\nBack to shared prose. A literal "
        "fence line inside a code block is not\ntreated as a section boundary:\n\n```text\n"
        "::instruction::\n```\n\n"
        '::image path="figures/derailleur.png" alt="Rear derailleur, side view"::\n'
        "The two limit screws are marked H and L on the derailleur body.\n"
    )
    doc = parse_dlm(text, source="bike.dlm", home=tmp_path)
    assert [s.id for s in doc.sections] == [
        "fd98c71f8d4fb36e",
        "ab5c0245a39e04d3",
        "bfdd1e2fcec39c7c",
        "a7d981a1cf7af25d",
    ]
    assert doc.metadata["section_adapters"] == {
        "ab5c0245a39e04d3": "mechanic",
        "bfdd1e2fcec39c7c": "voice",
    }
    assert doc.metadata["skipped_media"] == [
        {
            "type": "image",
            "line": 51,  # the reference example minus its 10 extra front-matter lines
            "path": "figures/derailleur.png",
            "alt": "Rear derailleur, side view",
        }
    ]
    # CRLF + BOM gives the same ids (the reader normalises before hashing).
    crlf = parse_dlm("\ufeff" + text.replace("\n", "\r\n"), source="bike.dlm", home=tmp_path)
    assert [s.id for s in crlf.sections] == [s.id for s in doc.sections]


def test_base_model_mapping() -> None:
    assert resolve_base_model("smollm2-135m") == ("builtin:smollm2-135m-instruct", None)
    assert resolve_base_model("smollm2-135m-instruct")[0] == "builtin:smollm2-135m-instruct"
    assert resolve_base_model("hf:acme/tiny-lm") == ("acme/tiny-lm", None)
    assert resolve_base_model("qwen2.5-0.5b")[0] == "Qwen/Qwen2.5-0.5B-Instruct"
    model, note = resolve_base_model("mystery-7b")
    assert model is None and note is not None and "models.base" in note
    doc = parse_dlm(
        FRONT.replace("smollm2-135m", "mystery-7b") + "text\n", source="x.dlm", find_adapter=False
    )
    assert doc.base_model is None and "mystery-7b" in str(doc.metadata["base_model_note"])


def _fake_store(
    home: Path, pointer: str, *, versions: tuple[str, ...] = ("v0001", "v0002")
) -> Path:
    adapter = home / "store" / DLM_ID / "adapter"
    for v in versions:
        vdir = adapter / "versions" / v
        vdir.mkdir(parents=True)
        (vdir / "adapter_config.json").write_text("{}")
    (adapter / "current.txt").write_text(pointer)
    return adapter


def test_current_txt_is_relative_to_the_store_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter = _fake_store(tmp_path, "adapter/versions/v0002\n")
    dlm_file = tmp_path / "guild.dlm"
    dlm_file.write_text(GUILD_DLM.read_text())
    monkeypatch.setenv("DLM_HOME", str(tmp_path))
    doc = load_document(dlm_file)
    assert doc.adapter_path == str((adapter / "versions" / "v0002").resolve())
    assert find_dlm_adapter(doc, home=tmp_path) == (adapter / "versions" / "v0002").resolve()


def test_adapter_discovery_returns_none_without_a_usable_version(tmp_path: Path) -> None:
    doc = parse_dlm(FRONT + "text\n", source="x.dlm", find_adapter=False)
    assert find_dlm_adapter(doc, home=tmp_path) is None  # no store at all
    adapter = _fake_store(tmp_path, "  \n")
    assert find_dlm_adapter(doc, home=tmp_path) is None  # empty pointer: never trained
    (adapter / "current.txt").write_text("adapter/versions/v0009\n")
    assert find_dlm_adapter(doc, home=tmp_path) is None  # points at a missing version
    (adapter / "versions" / "v0003").mkdir()
    (adapter / "current.txt").write_text("adapter/versions/v0003\n")
    assert find_dlm_adapter(doc, home=tmp_path) is None  # no adapter_config.json
    (adapter / "current.txt").write_text("../../../elsewhere\n")
    with pytest.raises(SpecValidationError, match="outside the store"):
        find_dlm_adapter(doc, home=tmp_path)


def test_named_adapter_layout(tmp_path: Path) -> None:
    text = FRONT.replace("---\n", "---\ntraining:\n  adapters:\n    lore: {}\n    tone: {}\n", 1)
    doc = parse_dlm(text + "x\n", find_adapter=False)
    assert doc.metadata["declared_adapters"] == ["lore", "tone"]
    store = tmp_path / "store" / DLM_ID
    found: dict[str, Path] = {}
    for name in ("lore", "tone"):
        vdir = store / "adapter" / name / "versions" / "v0001"
        vdir.mkdir(parents=True)
        (vdir / "adapter_config.json").write_text("{}")
        (store / "adapter" / name / "current.txt").write_text(f"adapter/{name}/versions/v0001\n")
        found[name] = vdir.resolve()
    # No flat pointer: the first declared adapter is the default.
    assert find_dlm_adapter(doc, home=tmp_path) == found["lore"]
    assert find_dlm_adapter(doc, home=tmp_path, adapter_name="tone") == found["tone"]


@pytest.mark.parametrize(
    ("text", "line", "needle"),
    [
        ("no front matter\n", 1, "exactly '---'"),
        ("---\ndlm_id: x\n", 1, "never closed"),
        ("---\nok: 1\nkey: [oops\n---\n", 3, "not valid YAML"),
        ("---\n- a list\n---\n", 2, "must be a YAML mapping"),
        ("---\nbase_model: smollm2-135m\n---\n", 2, "dlm_id is required"),
        (f"---\ndlm_id: {DLM_ID}\n---\n", 2, "base_model is required"),
        ("---\ndlm_id: 01KTESTEXAMPLE000000000000\nbase_model: b\n---\n", 2, "26-character ULID"),
        (f"---\ndlm_id: {DLM_ID}\nbase_model: b\ndlm_version: 99\n---\n", 2, "newer"),
        (f"---\ndlm_id: {DLM_ID}\nbase_model: b\nmodel: x\n---\n", 2, "unknown key(s) ['model']"),
        (
            f"---\ndlm_id: {DLM_ID}\nbase_model: b\ntraining:\n---\n",
            2,
            "training must be a mapping",
        ),
        (FRONT + "text\n::note::\nmore\n", 6, "unknown section type 'note'"),
        (FRONT + "::instruction#Bad::\n", 5, "adapter name 'Bad'"),
        (FRONT + "::image::\n", 5, "needs attributes"),
        (FRONT + '::prose path="x"::\n', 5, "does not take attributes"),
        (FRONT + '::audio path="a.wav"::\n', 5, "missing ['transcript']"),
        (FRONT + "intro\n::prose::\nsome\n```python\nx = 1\n", 6, "never closed"),
        (FRONT + "::instruction::\n### Q\nWhy?\n", 6, "no '### A' after it"),
        (FRONT + "::instruction::\n### Q\nWhy?\n\n### Q\nAgain?\n", 9, "followed by '### A'"),
        (FRONT + "::instruction::\n### Q What?\n### A\nx\n", 6, "'### Q' alone"),
        (FRONT + "::instruction::\n### Q\n\n### A\nx\n", 6, "empty question"),
        (FRONT + "::instruction::\n### Q\nq\n### A\npara one\n\npara two\n", 11, "one paragraph"),
        (FRONT + "::instruction::\n\n", 5, "no '### Q' / '### A' pairs"),
        (FRONT + "::preference::\n### Prompt\np\n### Chosen\nc\n", 9, "'### Rejected', but"),
        (FRONT + "::preference::\n### Prompt\np\n### Rejected\nr\n", 8, "'### Chosen' alone"),
        (FRONT + "::preference::\n", 5, "no '### Prompt'"),
    ],
)
def test_dlm_malformed_input_errors(text: str, line: int, needle: str) -> None:
    msg = _dlm_error(text)
    assert msg.startswith(f"doc.dlm:{line}: "), msg
    assert needle in msg, msg


def test_dlm_edge_cases_that_parse() -> None:
    # Whitespace-only prose is dropped; a line with a trailing space is not a fence.
    doc = parse_dlm(FRONT + "\n   \n::prose::\n::instruction:: \n", find_adapter=False)
    assert [s.content for s in doc.sections] == ["::instruction:: "]
    assert parse_dlm(FRONT, find_adapter=False).sections == ()
    # dlm_version defaults to 1; a quoted digit-only id is fine.
    doc = parse_dlm(FRONT.replace(DLM_ID, "'01234567890123456789012345'"), find_adapter=False)
    assert doc.metadata["dlm_version"] == 1


# --- loading from disk ------------------------------------------------------------------------


def test_load_document_dispatches_and_reports_file_problems(tmp_path: Path) -> None:
    missing = tmp_path / "nope.md"
    with pytest.raises(SpecValidationError, match=r"nope\.md: training document not found"):
        load_document(missing)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9\n")
    with pytest.raises(SpecValidationError, match=r"bad\.txt: not valid UTF-8 .*offset 3"):
        load_document(bad)
    with pytest.raises(SpecValidationError, match="not a folder"):
        load_document(tmp_path)
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"\xef\xbb\xbf# Title\r\nLine one.\r\n")
    doc = load_document(notes)
    assert doc.sections[0].content == "Line one."
    assert doc.metadata["format"] == "markdown"
    assert doc.source == str(notes)
    broken = tmp_path / "broken.dlm"
    broken.write_text(FRONT + "::mystery::\n")
    with pytest.raises(SpecValidationError, match=r"broken\.dlm:5: unknown section type"):
        load_document(broken)
