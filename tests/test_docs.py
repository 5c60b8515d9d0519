"""The docs' layout list names every module in gateway/ and nothing that is gone."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def layout_paths() -> list[str]:
    text = (ROOT / "docs" / "README.md").read_text()
    block = re.search(r"## Layout\n.*?```\n(.*?)```", text, re.S)
    assert block, "docs/README.md has no Layout code block"
    return [line.split()[0] for line in block.group(1).splitlines() if line.strip()]


def test_layout_lists_every_gateway_module() -> None:
    listed = set(layout_paths())
    modules = {
        f"gateway/{p.name}" for p in (ROOT / "gateway").glob("*.py") if p.name != "__init__.py"
    }
    assert modules - listed == set(), "modules missing from docs/README.md Layout"


def test_layout_names_only_what_exists() -> None:
    missing = [p for p in layout_paths() if not (ROOT / p).exists()]
    assert missing == []


def test_readme_is_short_and_links_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"
