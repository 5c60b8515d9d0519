"""One source for the configuration: ``config.SETTINGS`` holds every variable
with its default; ``from_env`` reads it and README.md's table lists the same."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from gateway.config import SETTINGS, Config, from_env

ROOT = Path(__file__).resolve().parent.parent


def readme_table() -> dict[str, str]:
    """README.md's configuration table: variable -> default as written (`unset` bare)."""
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Configuration\n(.*?)^## ", text, re.M | re.S)
    assert section, "README.md has no Configuration section"
    rows = re.findall(r"^\| `([^`]+)` \| (`[^`]*`|unset) \|", section.group(1), re.M)
    assert rows, "README.md's Configuration section has no table"
    return {var: default.strip("`") for var, default in rows}


def test_readme_lists_every_variable_with_its_default() -> None:
    expected = {s.var: "unset" if s.default is None else s.default for s in SETTINGS}
    assert readme_table() == expected


def test_every_config_field_comes_from_one_setting() -> None:
    attrs = [s.attr for s in SETTINGS if s.attr is not None]
    assert len(attrs) == len(set(attrs))
    fields = {f.name for f in dataclasses.fields(Config)}
    assert set(attrs) == fields - {"routes", "workers_reason", "config_path"}


def test_the_defaults_are_what_from_env_returns() -> None:
    """Each default, read as if the environment said it, is the value of an empty environment."""
    empty = from_env({})
    for s in SETTINGS:
        if s.attr is None or s.default is None:
            continue
        spelled = from_env({s.var: s.default})
        assert getattr(spelled, s.attr) == getattr(empty, s.attr), s.var
