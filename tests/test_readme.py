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


def _cli_rows() -> dict[str, str]:
    section = README.split("## Command line", 1)[1].split("\n## ", 1)[0]
    return {m.group(1): m.group(0) for m in re.finditer(r"^\| `skr (\w+)[^\n]*", section, re.M)}


def test_command_line_table_lists_every_subcommand_and_its_own_flags() -> None:
    """The settings flags are documented once, in the configuration table; the rest here."""
    import argparse

    from skr.shell.cli import build_parser

    setting_flags = {setting.flag for setting in SETTINGS}
    rows = _cli_rows()
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) == set(rows)
    for name, parser in subparsers.choices.items():
        for action in parser._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help" and flag not in setting_flags:
                    assert flag in rows[name], (name, flag)


def test_error_table_includes_the_routing_codes() -> None:
    for code in ("method_not_allowed", "not_found"):
        assert f"`{code}`" in README, code
