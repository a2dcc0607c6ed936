"""`make report`: the study as a static HTML site, built from the committed results (runs no notebook).

The README is the front page; each study has a page of findings (``docs/<study>.md``, where ``gad embed``
keeps the tables generated) followed by its executed notebook (``results/embedded/<study>/<notebook>``),
in the teaching order of :data:`COURSE`; the method and engine pages close it. Markdown is rendered with
mistune and notebooks with nbconvert, both installed with JupyterLab, so the report builds offline from
the repository alone. Why not jupyter-book, mkdocs-jupyter or quarto: each adds a site generator (and, for
quarto, a 100 MB binary outside PyPI) to render what is already one Markdown page and one executed notebook
per study; nbconvert is what JupyterLab itself uses to export a notebook, so a page looks as the notebook
did.

Every local link and image of a page is resolved against the file it came from, copied under
``assets/`` and rewritten; a link whose target is missing is reported (:attr:`Report.broken`), never
silently dropped.
"""
from __future__ import annotations

import html
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Page:
    """One page of the report: a Markdown source and, for a study, its executed notebook."""

    slug: str
    title: str
    source: str                       # Markdown, relative to the repository root
    notebook: str | None = None       # executed notebook, relative to the repository root
    command: str = "make study"       # the command that writes it


#: The teaching path: quickstart -> residual space -> explorer -> baselines -> the three studies -> scaling.
COURSE: tuple[Page, ...] = (
    Page("quickstart", "Quickstart: the nearest-normal baseline", "docs/quickstart.md",
         "results/embedded/quickstart/00_quickstart.ipynb"),
    Page("residual_space", "Residual space", "docs/residual_space.md",
         "results/embedded/residual_space/10_residual_space.ipynb"),
    Page("explorer", "Explorer: click a patch", "docs/explorer.md", "results/embedded/explorer/15_explorer.ipynb"),
    Page("baselines", "Baselines: the bar", "docs/baselines.md", "results/embedded/baselines/12_baselines.ipynb"),
    Page("cross_domain", "Cross-domain: ResAD", "docs/cross_domain.md",
         "results/embedded/cross_domain/20_cross_domain.ipynb"),
    Page("normal_abnormal", "Normal and abnormal references", "docs/normal_abnormal.md",
         "results/embedded/normal_abnormal/25_normal_abnormal.ipynb"),
    Page("three_gaps", "Three gaps and VOD", "docs/three_gaps.md", "results/embedded/three_gaps/30_three_gaps.ipynb"),
    Page("scaling", "Scaling: source or method?", "docs/scaling.md", "results/embedded/scaling/40_scaling.ipynb",
         "make study-extended"),
    Page("methods", "The methods as implemented", "docs/methods.md"),
    Page("reproduce", "Reproducing the papers", "docs/reproduce.md"),
    Page("engine", "Engine, speed and scale", "docs/engine.md"),
)
FRONT = Page("index", "gadlib", "README.md")

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 0 auto; padding: 0 1.5em 3em;
       line-height: 1.5; color: #222; }
nav { position: sticky; top: 0; background: #f6f6f6; border-bottom: 1px solid #ddd; padding: .5em 1em;
      margin: 0 -1.5em 1em; font-size: .9em; }
nav a { margin-right: .9em; text-decoration: none; } nav a.here { font-weight: bold; }
table { border-collapse: collapse; font-size: .85em; margin: 1em 0; display: block; overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: .25em .5em; } th { background: #f0f0f0; }
code { background: #f3f3f3; padding: 0 .2em; } pre { background: #f6f6f6; padding: .8em; overflow-x: auto; }
img { max-width: 100%; } blockquote { border-left: 4px solid #ccc; margin-left: 0; padding-left: 1em; color: #444; }
.pager { margin-top: 2em; display: flex; justify-content: space-between; }
figure { margin: 1.5em 0; } figcaption { font-size: .85em; color: #555; }
"""


@dataclass
class Report:
    """What :func:`build_report` wrote: the pages (file names) and every local link it could not resolve."""

    out: Path
    pages: list[str] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)
    missing_notebooks: list[str] = field(default_factory=list)


def slugify(text: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"<[^>]+>", "", html.unescape(text)).strip().lower()
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text))


def render_markdown(text: str) -> str:
    """Markdown (GitHub flavour: tables, fenced code, raw HTML) to HTML, headings with GitHub's anchors."""
    import mistune

    class Renderer(mistune.HTMLRenderer):
        def heading(self, text, level, **attrs):
            return f'<h{level} id="{slugify(text)}">{text}</h{level}>\n'

    return mistune.create_markdown(renderer=Renderer(escape=False), plugins=["table", "strikethrough", "url"])(text)


def notebook_html(path: Path) -> str:
    """The executed notebook as one HTML document (nbconvert's lab template, images inline).

    Its stderr streams (progress bars, library warnings: the study's terminal shows them) are left out.
    """
    import nbformat
    from nbconvert import HTMLExporter

    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.get("name") == "stderr")]
    exporter = HTMLExporter(template_name="lab")
    exporter.exclude_input_prompt = exporter.exclude_output_prompt = True
    body, _ = exporter.from_notebook_node(notebook)
    # MathJax and require.js from a CDN: the study's notebooks use neither, and the report must work offline.
    return re.sub(r'<script[^>]*\bsrc="https?://[^"]*"[^>]*>\s*</script>', "", body)


def _gallery(folder: Path, root: Path, shown: set[str]) -> str:
    """Every figure the study wrote (``folder/*.png``) that the findings page does not show already."""
    figures = [f for f in sorted(folder.glob("*.png")) if f.relative_to(root).as_posix() not in shown]
    if not figures:
        return ""
    items = "".join(f'<figure><img src="{html.escape(f.relative_to(folder).as_posix())}" alt="{html.escape(f.stem)}">'
                    f"<figcaption><code>{html.escape(f.name)}</code></figcaption></figure>\n" for f in figures)
    return f'\n<h2 id="all-figures">All figures of this study</h2>\n<div class="figures">\n{items}</div>\n'


def _page(title: str, body: str, nav: str, pager: str = "") -> str:
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head>\n<body>\n{nav}\n<main>\n{body}\n</main>\n{pager}\n</body></html>\n")


def _nav(pages: Iterable[Page], here: str) -> str:
    links = [f'<a href="{p.slug}.html"{" class=here" if p.slug == here else ""}>{html.escape(p.title)}</a>'
             for p in pages]
    return "<nav>" + " ".join(links) + "</nav>"


class _Links:
    """Rewrites a page's local links: known Markdown pages to their HTML, every other file to assets/."""

    def __init__(self, root: Path, out: Path, pages: dict[Path, str], report: Report):
        self.root, self.out, self.pages, self.report = root, out, pages, report

    def __call__(self, body: str, source: Path) -> str:
        def fix(match):
            attribute, target = match.group(1), html.unescape(match.group(2))
            if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#") or not target:
                return match.group(0)
            path, _, anchor = target.partition("#")
            resolved = (source.parent / path).resolve()
            if resolved in self.pages:
                new = self.pages[resolved] + (f"#{anchor}" if anchor else "")
            elif resolved.is_file() and self.root in resolved.parents:
                relative = resolved.relative_to(self.root)
                copy = self.out / "assets" / relative
                if not copy.is_file():
                    copy.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(resolved, copy)
                new = f"assets/{relative.as_posix()}" + (f"#{anchor}" if anchor else "")
            elif resolved.is_dir() and self.root in resolved.parents:
                return match.group(0).replace(match.group(2), "#")       # a folder: nothing to show in a browser
            else:
                self.report.broken.append(f"{source.relative_to(self.root)}: {target}")
                return match.group(0)
            return f'{attribute}="{html.escape(new)}"'

        return re.sub(r'\b(href|src)="([^"]*)"', fix, body)


def build_report(out: str | Path = "build/report", root: str | Path | None = None,
                 course: Iterable[Page] | None = None, front: Page = FRONT) -> Report:
    """Write the report into ``out`` (emptied first) and return what was written and what was not found.

    A study whose executed notebook is missing gets its findings page and a note instead of the notebook.
    """
    root, out = Path(root or REPO_ROOT).resolve(), Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    course = list(COURSE if course is None else course)
    report = Report(out)
    targets = {(root / p.source).resolve(): f"{p.slug}.html" for p in [front, *course]}
    links = _Links(root, out, targets, report)
    every = [front, *course]
    for i, page in enumerate(every):
        source = root / page.source
        body = links(render_markdown(source.read_text()), source)
        if page.notebook:
            notebook = root / page.notebook
            if notebook.is_file():
                shown = set(re.findall(r'src="assets/([^"]+)"', body))
                body += links(_gallery(notebook.parent, root, shown), notebook)
                name = f"{page.slug}_notebook.html"
                body += (f'\n<hr><p class="notebook"><a href="{name}">The notebook, executed</a>: '
                         f"<code>{page.notebook}</code> as <code>{page.command}</code> ran it; the tables and figures "
                         "on this page come from it or from the results folder they name.</p>\n")
                document = links(notebook_html(notebook), notebook)
                nav = _nav(every, page.slug).replace("<nav>", '<nav style="font-family: system-ui, sans-serif; '
                                                     'padding: .5em 1em; background: #f6f6f6">', 1)
                (out / name).write_text(re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + nav, document, count=1))
                report.pages.append(name)
            else:
                report.missing_notebooks.append(page.notebook)
                body += (f"\n<hr><p><em>{page.notebook} is not in the results yet: <code>{page.command}</code> "
                         "writes it.</em></p>\n")
        previous = (f'<a href="{every[i - 1].slug}.html">← {html.escape(every[i - 1].title)}</a>' if i
                    else "<span></span>")
        following = (f'<a href="{every[i + 1].slug}.html">{html.escape(every[i + 1].title)} →</a>'
                     if i + 1 < len(every) else "<span></span>")
        name = f"{page.slug}.html"
        (out / name).write_text(_page(page.title, body, _nav(every, page.slug),
                                      f'<div class="pager">{previous}{following}</div>'))
        report.pages.append(name)
    return report
