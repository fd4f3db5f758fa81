from pathlib import Path

import pytest

from flywheel.judge.policy import PolicyError, load_policy, parse_policy

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "policies" / "open_data_search.md"


def test_every_shipped_policy_loads():
    files = list((ROOT / "policies").glob("*.md"))
    assert files
    for f in files:
        if f.name == "README.md":
            continue
        p = load_policy(f)
        assert [g.grade for g in p.scale] == list(range(len(p.scale)))
        assert len(p.version) == 16


def test_version_changes_with_any_content_change():
    text = SHIPPED.read_text()
    base = parse_policy(text).version
    assert parse_policy(text.replace("Loosely relevant", "Somewhat relevant")).version != base
    assert parse_policy(text + "\nOne more sentence of guidance.").version != base
    assert parse_policy(text).version == base


def test_mistakes_are_reported_with_their_line_and_a_fix():
    lines = SHIPPED.read_text().splitlines()
    i = next(n for n, l in enumerate(lines) if l.strip().startswith("- grade: 2"))
    lines[i] = lines[i].replace("grade: 2", "grade: 5")          # a gap in the scale
    j = next(n for n, l in enumerate(lines) if l.startswith("owner:"))
    lines[j] = "ownr: search-relevance-pm"                       # misspelt field
    with pytest.raises(PolicyError) as exc:
        parse_policy("\n".join(lines), "p.md")
    msgs = dict(exc.value.problems)
    text = str(exc.value)
    assert "p.md:" in text
    assert any("owner" in m and "add this field" in m for m in msgs.values())
    assert any("ownr" in m and "remove it" in m for m in msgs.values())
    assert (j + 1) in msgs                                        # 1-based line of the misspelt key
    assert any("0,1,2" in m for m in msgs.values())


def test_header_errors():
    with pytest.raises(PolicyError, match="starts with a YAML header"):
        parse_policy("# no header")
    with pytest.raises(PolicyError, match="not closed"):
        parse_policy("---\nname: x\n")
    with pytest.raises(PolicyError, match=r"<policy>:\d+: invalid YAML"):
        parse_policy("---\nname: x\nscale: [\n---\n")


def test_policy_check_command_exit_codes(tmp_path):
    """`flywheel policy check` is what a product manager runs before publishing: 0 and the version when the file
    is good; 1 and every mistake at its line when it is not, or when the file is missing."""
    from typer.testing import CliRunner

    from flywheel.cli import app

    run = CliRunner().invoke
    ok = run(app, ["policy", "check", str(SHIPPED)])
    assert ok.exit_code == 0 and f"version {load_policy(SHIPPED).version}" in ok.output
    lines = SHIPPED.read_text().splitlines()
    j = next(n for n, line in enumerate(lines) if line.startswith("owner:"))
    lines[j] = "ownr: search-relevance-pm"
    bad = tmp_path / "bad.md"
    bad.write_text("\n".join(lines))
    out = run(app, ["policy", "check", str(bad)])
    assert out.exit_code == 1 and f"bad.md:{j + 1}" in out.output and "remove it" in out.output
    missing = run(app, ["policy", "check", str(tmp_path / "nowhere.md")])
    assert missing.exit_code == 1 and "nowhere.md" in missing.output


PASSAGES = """---
name: passages
domain: Web passages (no titles)
owner: pm
task: Grade how well a passage answers the question in the query.
document_fields: [text]
scale:
  - {grade: 0, label: "No", definition: Does not answer the question at all.}
  - {grade: 1, label: "Yes", definition: Answers the question fully and directly.}
dimensions:
  - {name: answer, description: Does the passage answer the question asked?}
examples:
  - query: boiling point of water
    text: At sea level water boils at 100 degrees Celsius.
    grade: 1
    why: It states the answer.
---
Judge the passage only.
"""


def test_a_policy_for_title_less_documents_is_written_without_titles():
    p = parse_policy(PASSAGES, "passages.md")
    assert p.document_fields == ["text"] and p.examples[0].fields() == ["text"]
    from flywheel.judge.prompt import system_prompt

    assert 'Dataset: "At sea level water boils at 100 degrees Celsius."' in system_prompt(p)


def test_examples_must_show_exactly_the_document_fields_at_their_line():
    lines = PASSAGES.splitlines()
    i = lines.index("    text: At sea level water boils at 100 degrees Celsius.")
    lines.insert(i, "    title: Water")                       # the judge never sees a title under this policy
    with pytest.raises(PolicyError) as exc:
        parse_policy("\n".join(lines), "p.md")
    [(line, msg)] = exc.value.problems
    assert line == i and "examples.0" in msg and "remove title" in msg     # the example's first line (1-based)
    only_title = PASSAGES.replace("document_fields: [text]", "document_fields: [title, text]")
    with pytest.raises(PolicyError) as exc:
        parse_policy(only_title, "p.md")
    assert "add a non-empty title" in exc.value.problems[0][1]


def test_unquoted_yes_no_labels_get_a_fix_that_names_quotes():
    with pytest.raises(PolicyError) as exc:
        parse_policy(PASSAGES.replace('"No"', "No"), "p.md")
    (line, msg), = exc.value.problems
    assert line == 8 and "scale.0.label" in msg and "quotes" in msg


def test_a_policy_with_thousands_of_examples_checks_in_reasonable_work():
    ex = "".join(f"  - query: question {i}\n    text: passage {i} answers question {i}.\n    grade: {i % 2}\n"
                 f"    why: Example number {i}.\n" for i in range(5000))
    p = parse_policy(PASSAGES.replace("examples:\n", "examples:\n" + ex), "big.md")
    assert len(p.examples) == 5001
    bad = PASSAGES.replace("examples:\n", "examples:\n" + ex.replace("grade: 1\n", "grade: 4\n", 1))
    with pytest.raises(PolicyError) as exc:
        parse_policy(bad, "big.md")
    assert exc.value.problems[0][0] == 19 and "examples.1.grade" in exc.value.problems[0][1]
