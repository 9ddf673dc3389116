"""The README's commands are the ones CI runs, and the documented surface matches the code."""

from __future__ import annotations

import re

from skr.errors import _HTTP_STATUS
from skr.shell.config import SETTINGS
from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def _shell_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", README, re.S)


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    match = re.search(r"# --- README test command \(verbatim\) ---\n(.*?)\n# --- end ---", ci, re.S)
    assert match is not None
    command = match.group(1).strip()
    assert command in [block.strip() for block in _shell_blocks()]
    assert "pytest" in command and "mypy" in command and "ruff check" in command


def test_every_error_code_is_documented() -> None:
    for code in _HTTP_STATUS:
        if code in ("internal_error", "config_error", "verification_failed", "invalid_report", "validation_failed"):
            continue
        assert f"`{code}`" in README, code


def test_configuration_table_lists_every_setting() -> None:
    assert "SkrSideCarArgs" in README
    for setting in SETTINGS:
        assert f"| `{setting.env}` | `{setting.flag}` |" in README, setting.env
