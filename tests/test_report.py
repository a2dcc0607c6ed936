"""The static report (gadlib.report, `make report`): pages, rewritten links, broken links, offline pages."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from typer.testing import CliRunner

from gadlib.cli import app
from gadlib.report import COURSE, FRONT, Page, build_report, render_markdown, slugify


def test_slugify_matches_githubs_anchors():
    assert slugify("Baselines: the bar every trained method must clear") == \
        "baselines-the-bar-every-trained-method-must-clear"
    assert slugify("The study in one table") == "the-study-in-one-table"
    assert slugify("VOD: value-order decomposition") == "vod-value-order-decomposition"


def test_markdown_renders_tables_anchors_and_keeps_markers():
    text = render_markdown("## Two commands\n\n<!-- x:start -->\n| a | b |\n|---|---|\n| 1 | 2 |\n<!-- x:end -->\n")
    assert '<h2 id="two-commands">Two commands</h2>' in text
    assert "<table>" in text and "<td>1</td>" in text and "<!-- x:start -->" in text


def _tiny_repo(root: Path) -> None:
    (root / "docs").mkdir(parents=True)
    (root / "results" / "study").mkdir(parents=True)
    (root / "results" / "study" / "fig.png").write_bytes(b"\x89PNG fake")
    (root / "results" / "study" / "table.md").write_text("| a |\n|---|\n| 1 |\n")
    (root / "README.md").write_text("# Front\n\nRead [the study](docs/study.md#findings) and "
                                    "[a gone page](docs/gone.md).\n\n![figure](results/study/fig.png)\n")
    (root / "docs" / "study.md").write_text("# Study\n\n## Findings\n\nBack to the [front](../README.md), "
                                            "the [table](../results/study/table.md), [web](https://example.org).\n")
    (root / "docs" / "later.md").write_text("# Later\n")
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("See [the figure](fig.png)."),
        nbformat.v4.new_code_cell("print(1)", outputs=[nbformat.v4.new_output("stream", text="1\n")])])
    nbformat.write(notebook, root / "results" / "study" / "study.ipynb")


def test_report_rewrites_links_copies_assets_and_reports_what_is_missing(tmp_path):
    _tiny_repo(tmp_path / "repo")
    course = [Page("study", "The study", "docs/study.md", "results/study/study.ipynb"),
              Page("later", "Not run", "docs/later.md", "results/later/later.ipynb")]
    report = build_report(tmp_path / "out", root=tmp_path / "repo", course=course, front=FRONT)
    assert report.pages == ["index.html", "study_notebook.html", "study.html", "later.html"]
    assert report.broken == ["README.md: docs/gone.md"]
    assert report.missing_notebooks == ["results/later/later.ipynb"]
    index = (tmp_path / "out" / "index.html").read_text()
    assert 'href="study.html#findings"' in index and 'src="assets/results/study/fig.png"' in index
    assert (tmp_path / "out" / "assets" / "results" / "study" / "fig.png").read_bytes() == b"\x89PNG fake"
    study = (tmp_path / "out" / "study.html").read_text()
    assert 'href="index.html"' in study and 'href="assets/results/study/table.md"' in study
    assert 'href="https://example.org"' in study and 'href="study_notebook.html"' in study
    notebook = (tmp_path / "out" / "study_notebook.html").read_text()
    assert "<nav" in notebook and 'href="assets/results/study/fig.png"' in notebook
    assert not re.search(r'src="https?://', notebook)                  # works offline
    assert "not in the results yet" in (tmp_path / "out" / "later.html").read_text()


def test_the_committed_report_builds_without_a_broken_link(tmp_path):
    report = build_report(tmp_path / "report")
    assert report.broken == []
    assert {f"{page.slug}.html" for page in (FRONT, *COURSE)} <= set(report.pages)
    index = (tmp_path / "report" / "index.html").read_text()
    for page in COURSE:                                                # every page is one click from the front
        assert f'href="{page.slug}.html"' in index
    for name in report.pages:
        text = (tmp_path / "report" / name).read_text()
        for target in re.findall(r'(?:src|href)="([^"#:]+)(?:#[^"]*)?"', text):     # local: no scheme (data:, https:)
            assert (tmp_path / "report" / target).exists(), f"{name}: {target}"


def test_report_command_fails_on_a_broken_link(tmp_path, monkeypatch):
    _tiny_repo(tmp_path / "repo")
    import gadlib.report as report_module

    monkeypatch.setattr(report_module, "COURSE", (Page("study", "The study", "docs/study.md"),))
    result = CliRunner().invoke(app, ["report", "--out", str(tmp_path / "out"), "--root", str(tmp_path / "repo")])
    assert result.exit_code == 1 and "docs/gone.md" in result.output
