"""The manual in docs/ builds without a warning and loads nothing from the internet; the README stays
a five-minute read whose links all lead somewhere; every decision page says what was asked, measured,
run and decided; the benchmark commands and the configuration reference name things that exist."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import REPO_ROOT

README = REPO_ROOT / "README.md"
DOCS = REPO_ROOT / "docs"
DECISIONS = sorted((DOCS / "decisions").glob("[0-9][0-9][0-9][0-9]-*.md"))
PAGES = sorted(DOCS.rglob("*.md"))
README_MAX_LINES = 250


# ----------------------------------------------------------------------------- the build


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The manual built with `mkdocs build --strict` into a scratch folder."""
    site_dir = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO_ROOT / "mkdocs.yml"),
         "--site-dir", str(site_dir)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{output}"
    # strict aborts on warnings; this also catches one printed without aborting
    assert "WARNING" not in output, output
    return site_dir


def test_the_manual_builds_strictly(site):
    assert (site / "index.html").is_file()
    assert (site / "decisions" / "index.html").is_file()


def test_the_manual_loads_nothing_from_the_internet(site):
    """An air-gapped machine reads the built manual as it is: no script or stylesheet from a CDN."""
    remote = re.compile(r"<(?:script|link)\b[^>]*\b(?:src|href)=\"(?:https?:)?//", re.I)
    offending = [str(page.relative_to(site)) for page in site.rglob("*.html") if remote.search(page.read_text())]
    assert not offending, f"pages that load from the internet: {offending}"


def test_every_page_is_in_the_nav():
    config = yaml.safe_load((REPO_ROOT / "mkdocs.yml").read_text())

    def listed(nav) -> set[str]:
        found: set[str] = set()
        for item in nav:
            if isinstance(item, str):
                found.add(item)
            elif isinstance(item, dict):
                for value in item.values():
                    found |= listed(value) if isinstance(value, list) else {value}
        return found

    pages = {page.relative_to(DOCS).as_posix() for page in PAGES}
    assert listed(config["nav"]) == pages


# ----------------------------------------------------------------------------- the README


def markdown_links(text: str) -> list[str]:
    """Targets of inline links and of reference definitions, outside code blocks."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    inline = re.findall(r"\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", text)
    references = re.findall(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", text, flags=re.M)
    return inline + references


def heading_ids(page: Path) -> set[str]:
    """The ids the page's headings get, as Python-Markdown (MkDocs) gives them."""
    import markdown

    html = markdown.markdown(page.read_text(), extensions=["toc", "attr_list", "tables", "fenced_code"])
    return set(re.findall(r"<h[1-6][^>]*\bid=\"([^\"]+)\"", html))


README_LINKS = sorted({link for link in markdown_links(README.read_text())
                       if not re.match(r"[a-z][a-z0-9+.-]*:", link) and not link.startswith("#")})


def test_the_readme_is_a_five_minute_read():
    lines = len(README.read_text().splitlines())
    assert lines < README_MAX_LINES, f"README.md has {lines} lines; move the detail into docs/"


def test_the_readme_links_into_the_manual():
    assert any(link.startswith("docs/") for link in README_LINKS)


@pytest.mark.parametrize("link", README_LINKS)
def test_a_readme_link_resolves(link):
    path, _, anchor = link.partition("#")
    target = (REPO_ROOT / path).resolve()
    assert target.exists(), f"README.md links to {link}, which does not exist"
    if anchor and target.suffix == ".md":
        assert anchor in heading_ids(target), f"README.md links to {link}: no heading has that id"


def test_the_readme_keeps_the_ci_test_command():
    """.ci/run runs the shell block after the marker: it must install the test tools and run pytest."""
    text = README.read_text()
    after = text.split("<!-- test-command -->", 1)[1]
    block = re.match(r"\s*```bash\n(.*?)```", after, flags=re.S)
    assert block, "README.md: no bash block right after <!-- test-command -->"
    command = block.group(1).strip()
    assert 'pip install -e ".[test]"' in command and command.endswith("pytest")


# ----------------------------------------------------------------------------- decision pages


def test_decisions_are_numbered_in_order_and_all_listed():
    numbers = [int(page.name[:4]) for page in DECISIONS]
    assert numbers == list(range(1, len(numbers) + 1)), f"decision numbers have gaps or repeats: {numbers}"
    index = (DOCS / "decisions" / "index.md").read_text()
    missing = [page.name for page in DECISIONS if f"({page.name})" not in index]
    assert not missing, f"docs/decisions/index.md does not list {missing}"


@pytest.mark.parametrize("page", DECISIONS, ids=lambda page: page.stem)
def test_a_decision_page_says_question_figures_command_decision(page):
    text = page.read_text()
    assert text.startswith(f"# {page.name[:4]}. "), f"{page.name}: the title starts with '# {page.name[:4]}. '"
    assert re.search(r"^- \*\*Date:\*\* \d{4}-\d\d-\d\d", text, flags=re.M), f"{page.name}: no dated line"
    assert re.search(r"^- \*\*Status:\*\* \S", text, flags=re.M), f"{page.name}: no status"
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    assert headings == ["Question", "Figures", "Command", "Decision"], f"{page.name}: sections {headings}"
    command = text.split("## Command", 1)[1].split("## Decision", 1)[0]
    assert "```bash" in command, f"{page.name}: the Command section has no command"


# ----------------------------------------------------------------------------- benchmark commands


def benchmark_commands(text: str) -> list[tuple[str, list[str]]]:
    """(module, flags) of every `python -m benchmarks.<module> ...` in a page, comments cut off."""
    text = text.replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        for module, rest in re.findall(r"python -m benchmarks\.(\w+)([^`\n]*)", line):
            rest = rest.split(" #")[0]
            found.append((module, re.findall(r"(?<!\S)(--[a-z][a-z0-9-]*)", rest)))
    return found


BENCHMARK_SOURCE = "\n".join(path.read_text() for path in sorted((REPO_ROOT / "benchmarks").rglob("*.py")))


def test_benchmark_commands_name_benchmarks_and_flags_that_exist():
    problems = []
    for page in [README, *PAGES]:
        text = page.read_text()
        if "python benchmarks/" in text:
            problems.append(f"{page.name}: write `python -m benchmarks.<name>`, not `python benchmarks/<name>.py`")
        for module, flags in benchmark_commands(text):
            folder = REPO_ROOT / "benchmarks"
            if not ((folder / f"{module}.py").is_file() or (folder / module / "__init__.py").is_file()):
                problems.append(f"{page.name}: no benchmark module benchmarks.{module}")
            problems += [f"{page.name}: benchmarks.{module} has no option {flag}" for flag in flags
                         if f'"{flag}"' not in BENCHMARK_SOURCE]
        for script in re.findall(r"\bbenchmarks/([\w.]+\.sh)\b", text):
            if not (REPO_ROOT / "benchmarks" / script).is_file():
                problems.append(f"{page.name}: no script benchmarks/{script}")
    assert not problems, "\n".join(problems)


def test_the_benchmark_command_reader_sees_continued_lines():
    text = "python -m benchmarks.open_world --seeds 42 \\\n    --heads fine   # a comment --not-a-flag\n"
    assert benchmark_commands(text) == [("open_world", ["--seeds", "--heads"])]


# ----------------------------------------------------------------------------- configuration reference


def parameter_keys() -> set[str]:
    """Every leaf key of conf/base/parameters*.yml, dotted (a list is a leaf)."""

    def leaves(tree: dict, prefix: str = "") -> set[str]:
        keys: set[str] = set()
        for key, value in tree.items():
            name = f"{prefix}{key}"
            keys |= leaves(value, f"{name}.") if isinstance(value, dict) and value else {name}
        return keys

    keys: set[str] = set()
    for path in sorted((REPO_ROOT / "conf" / "base").glob("parameters*.yml")):
        keys |= leaves(yaml.safe_load(path.read_text()) or {})
    return keys


def test_the_configuration_reference_lists_every_parameter():
    text = (DOCS / "configuration.md").read_text()
    documented = set(re.findall(r"^\| `([\w.]+)` \|", text, flags=re.M))
    keys = parameter_keys()
    assert not documented - keys, f"docs/configuration.md lists parameters that do not exist: {sorted(documented - keys)}"
    assert not keys - documented, f"docs/configuration.md does not list: {sorted(keys - documented)}"
