"""The README stays short and keeps CI's test command; every relative link in
README.md and docs/ leads somewhere, and every file they name exists (the
layout is moving: a moved file must be renamed in the docs too); the benchmark
command's --write checks its folder first. (docs/benchmarks.md is what the
command writes: tests/reference/test_benchmark_table.py.)"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))
CI_MARKER = "<!-- .ci/run runs the next code block as the test command -->"
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# inline code that is just a path in the repository: `csrc/hooks.cpp`, `csrc/sae.*`
REPO_PATH = re.compile(r"`((?:tinymech|csrc|tests|benchmarks|tools|training|models|cmake|docs|\.ci)/[^`\s]*)`")


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where brackets are not links."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def _anchors(path: Path) -> set:
    """The anchors GitHub gives a Markdown file's headings."""
    headings = re.findall(r"^#+\s+(.*)$", _prose(path.read_text(encoding="utf-8")), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_readme_stays_short():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= 8.5 * 1024, f"README.md is {size} bytes; move the detail into docs/"


def test_readme_keeps_the_ci_test_command():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert CI_MARKER in lines, "the marker line .ci/run looks for is gone"
    after = lines[lines.index(CI_MARKER) + 1:]
    assert after[0].startswith("```"), "the marker must be followed by the test command's code block"
    command = after[1:after.index("```", 1)]
    assert any(line.strip() for line in command), "the test command's code block is empty"


@pytest.mark.parametrize("path", [ROOT / "README.md"] + DOCS, ids=lambda p: p.name)
def test_relative_links_lead_to_files_and_headings(path):
    broken = []
    for target in LINK.findall(_prose(path.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(target)
    assert not broken, f"{path.name}: broken links {broken}"


@pytest.mark.parametrize("path", [ROOT / "README.md"] + DOCS, ids=lambda p: p.name)
def test_named_files_exist(path):
    named = REPO_PATH.findall(path.read_text(encoding="utf-8"))
    missing = [p for p in named if not (any(ROOT.glob(p)) if "*" in p else (ROOT / p).exists())]
    assert not missing, f"{path.name} names files that are not in the repository: {missing}"


def test_every_doc_is_linked_from_the_readme():
    linked = {(ROOT / t.partition("#")[0]).resolve() for t in LINK.findall((ROOT / "README.md").read_text())}
    assert not [p.name for p in DOCS if p.resolve() not in linked]


def test_write_refuses_a_missing_folder_before_running(monkeypatch, tmp_path, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import run_all

    with pytest.raises(SystemExit):
        run_all.parse_args(["--write", str(tmp_path / "no" / "such.md")])
    assert "no such folder" in capsys.readouterr().err
