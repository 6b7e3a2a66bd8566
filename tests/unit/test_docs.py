"""The docs stay true: every setting is documented, the README opens with the two commands."""

from __future__ import annotations

import re

import pytest

from infra.settings import Settings
from tests.support import ROOT

pytestmark = pytest.mark.static

README = (ROOT / "README.md").read_text()
ENV_EXAMPLE = (ROOT / ".env.example").read_text()


def _configuration_table() -> str:
    start = README.index("## Configuration")
    return README[start : README.index("\n## ", start + 1)]


@pytest.mark.parametrize("field", sorted(Settings.model_fields))
def test_every_setting_is_in_the_readme_table_and_env_example(field: str) -> None:
    variable = field.upper()
    assert f"`{variable}`" in _configuration_table(), f"{variable} missing from README's Configuration"
    assert re.search(rf"^#?\s*{variable}=", ENV_EXAMPLE, re.MULTILINE), (
        f"{variable} missing from .env.example"
    )


def test_readme_opens_with_the_run_and_test_commands() -> None:
    first_block = README.split("```")[1]
    commands = [line.split("#")[0].strip() for line in first_block.splitlines()[1:] if line.strip()]
    assert commands == ["make run", "make test"]


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.MULTILINE)
