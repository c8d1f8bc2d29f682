"""docs/ci-recipe.md stays true: every deploybench command in its workflow and its local recipe
parses with the options deploybench has today."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from deploybench.cli import build_parser

RECIPE = Path(__file__).resolve().parents[1] / "docs" / "ci-recipe.md"


def recipe_commands() -> list[str]:
    blocks = re.findall(r"```(?:yaml|sh)\n(.*?)```", RECIPE.read_text(), flags=re.S)
    commands = []
    for line in "\n".join(blocks).replace("\\\n", " ").splitlines():
        found = re.search(r"\bdeploybench (compare|verdicts|merge|report|gate|run) .*", line)
        if found:
            command = found.group(0).split(" || ")[0].split(" # ")[0].split("#   ")[0]
            commands.append(re.sub(r"\s+", " ", command).strip())
    return commands


def test_the_recipe_gates_with_compare_and_joins_with_verdicts():
    commands = recipe_commands()
    assert any(c.startswith("deploybench compare") and "--shard" in c and "--json" in c for c in commands)
    assert any(c.startswith("deploybench verdicts") for c in commands)


@pytest.mark.parametrize("command", recipe_commands())
def test_every_command_of_the_recipe_parses(command):
    # shell variables and GitHub expressions stand for values: give them plain ones
    plain = re.sub(r"\$\{\{[^}]*\}\}", "1", command)
    plain = re.sub(r'"?\$(\w+)"?', lambda m: {"MODELS": "net.py:build", "BASE": "main"}.get(m.group(1), "x"), plain)
    argv = shlex.split(plain)[1:]
    build_parser().parse_args(argv)  # SystemExit (argparse's usage error) fails the test
