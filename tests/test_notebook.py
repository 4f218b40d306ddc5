"""notebooks/colab.ipynb is a valid notebook and every `python scripts/X.py ...` in it parses with that
script's real argument parser: renaming or removing a flag breaks this test, not a Colab session."""

from __future__ import annotations

import ast
import importlib.util
import re
import shlex
from functools import cache

import nbformat
import pytest
from conftest import REPO_ROOT

from tf_models import list_backbones
from tf_models.train.compare import parse_sweep
from tf_models.config import config_from_args

NOTEBOOK = REPO_ROOT / "notebooks" / "colab.ipynb"
COMMAND = re.compile(r"python\s+scripts/(\w+)\.py\b(.*)")
PLACEHOLDER = re.compile(r"\{(\w+)\}|\$\{(\w+)\}|\$(\w+)")
SHELL_OPERATORS = {"&&", "||", ";", "|", ">", ">>", "2>&1", "&"}


def _notebook() -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK, as_version=4)


def _code_cells() -> list[str]:
    return [cell.source for cell in _notebook().cells if cell.cell_type == "code"]


@cache
def _parser(script: str):
    path = REPO_ROOT / "scripts" / f"{script}.py"
    assert path.is_file(), f"the notebook runs scripts/{script}.py, which does not exist"
    spec = importlib.util.spec_from_file_location(f"notebook_{script}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert hasattr(module, "build_parser"), f"scripts/{script}.py must expose build_parser()"
    return module.build_parser()


def notebook_variables(cells: list[str]) -> dict[str, str]:
    """``NAME = value`` assignments of the notebook, as the text Colab substitutes for ``{NAME}``."""
    values: dict[str, str] = {}
    for source in cells:
        for line in source.splitlines():
            try:
                tree = ast.parse(line)
            except SyntaxError:
                continue
            for node in tree.body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    try:
                        values[node.targets[0].id] = str(ast.literal_eval(node.value))
                    except ValueError:  # an f-string or expression: some path
                        values[node.targets[0].id] = f"/content/{node.targets[0].id.lower()}"
    return values


def script_commands(cells: list[str]) -> list[tuple[str, list[str]]]:
    """(script name, argument list) for every ``python scripts/X.py ...`` in the cells.

    Joins backslash continuations, substitutes ``{VAR}`` / ``$VAR`` with the notebook's own
    variables (an undefined one fails: it would fail in Colab too) and stops at shell operators.
    """
    variables = notebook_variables(cells)
    commands = []
    for source in cells:
        for line in source.replace("\\\n", " ").splitlines():
            for match in COMMAND.finditer(line):
                def substitute(found: re.Match, line: str = line) -> str:
                    name = next(g for g in found.groups() if g)
                    assert name in variables, f"{{{name}}} is not set in the notebook: {line.strip()}"
                    return variables[name]

                tokens = []
                for token in shlex.split(PLACEHOLDER.sub(substitute, match.group(2))):
                    if token in SHELL_OPERATORS:
                        break
                    tokens.append(token)
                commands.append((match.group(1), tokens))
    return commands


def unknown_flags(script: str, arguments: list[str]) -> list[str]:
    """Flags the script's parser does not define exactly (argparse would accept a prefix of a renamed flag)."""
    known = _parser(script)._option_string_actions
    return [a.split("=", 1)[0] for a in arguments if a.startswith("--") and a.split("=", 1)[0] not in known]


def test_notebook_is_valid_nbformat_4():
    notebook = _notebook()
    nbformat.validate(notebook)
    assert notebook.nbformat == 4
    assert notebook.metadata.get("accelerator") == "GPU"


def test_notebook_sets_up_colab():
    cells = _code_cells()
    first = cells[0]
    assert re.search(r"^REPO_URL = \"", first, re.MULTILINE), "the first code cell sets the REPO_URL placeholder"
    text = "\n".join(cells)
    for needed in ("git clone", "{REPO_URL}", "pip install -q -r requirements.txt -e .", "drive.mount(",
                   "nvidia-smi", "list_physical_devices(\"GPU\")"):
        assert needed in text, needed


def test_every_script_command_parses_with_the_real_flags():
    commands = script_commands(_code_cells())
    assert {"train", "evaluate", "compare", "crossval"} <= {script for script, _ in commands}
    backbones = set(list_backbones())
    for script, arguments in commands:
        assert not unknown_flags(script, arguments), (script, unknown_flags(script, arguments))
        args = _parser(script).parse_args(arguments)  # a bad value or a missing required flag exits
        if hasattr(args, "backbone"):  # TrainConfig flags: the values must make a valid config
            config = config_from_args(args, None)
            assert config.backbone in backbones, config.backbone
        for name in getattr(args, "backbones", None) or []:
            assert name in backbones, name
        for sweep in getattr(args, "sweep", []):
            parse_sweep(sweep)
        if script in ("train", "compare", "crossval") and not getattr(args, "list_backbones", False):
            assert args.input_size == [218, 178] and args.weights == "imagenet"  # the GPU-sized config


def test_a_renamed_flag_is_caught():
    # The checker itself must be able to fail: an old or misspelt flag, a prefix argparse would accept.
    cells = ['!python scripts/train.py --data-dir {DATA} --epoch 3 \\\n    --learning-rate 0.1', 'DATA = "/d"']
    ((script, arguments),) = script_commands(cells)
    assert arguments[:2] == ["--data-dir", "/d"]
    assert unknown_flags(script, arguments) == ["--epoch", "--learning-rate"]
    with pytest.raises(AssertionError, match="MISSING"):
        script_commands(["!python scripts/train.py --out {MISSING}"])
