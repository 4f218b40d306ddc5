"""notebooks/colab.ipynb runs top to bottom: its `parameters` cell is overridden with tiny CPU settings (the
bundled CelebA sample, one backbone, 32x32, one epoch, outputs under tmp_path, the shipped face weights: no
download) and every cell executes in a Jupyter kernel of this venv's Python. A failing cell, or a failing
`!python scripts/...` command inside one, fails the test with the cell's source, output and traceback.

What does not run here: the Colab-only steps (clone, pip install, Drive mount: ``ON_COLAB = False``) and the
TensorBoard server (``TENSORBOARD = False``: ``%tensorboard`` starts a server process that outlives the cell
and the kernel; the extension is still loaded).
"""

from __future__ import annotations

import ast
import json
import os
import re
import sys
import time
from pathlib import Path

import nbclient
import nbformat
import pytest
from conftest import CELEBA_SAMPLE, REPO_ROOT
from jupyter_client.kernelspec import KernelSpecManager  # jupyter_client comes with nbclient
from jupyter_client.manager import KernelManager

NOTEBOOK = REPO_ROOT / "notebooks" / "colab.ipynb"
KERNEL_NAME = "tf_models_test_venv"
CELL_TIMEOUT_S = 420

# Only used on Colab (the clone), or right as they are off Colab (REPO_DIR: the notebook's checkout).
KEPT_DEFAULTS = {"REPO_URL", "BRANCH", "REPO_DIR"}


def tiny_parameters(out: Path) -> dict[str, object]:
    """Every other parameter of the notebook, at a size a busy 2-core CPU trains in seconds."""
    return {
        "ON_COLAB": False,  # skips clone, pip install and the Drive mount
        "DRIVE_ROOT": str(out),
        "DATA_DIR": str(CELEBA_SAMPLE),
        "DATASET_NAME": "celeba_sample",
        "HELD_OUT": str(out / "no_held_out"),  # absent: the held-out evaluation is skipped, as on Colab
        "RUNS_DIR": str(out / "runs"),
        "RESULTS_DIR": str(out / "results"),
        "BACKBONE": "mobilenetv2",
        "BACKBONES": "mobilenetv2",
        "MODE": "transfer",
        "MODES": "transfer",
        "CV_MODE": "transfer",
        # Shipped in the package: no ImageNet download offline, and never random weights. (The comparison
        # runs face-weight rows at those weights' 112x112 whatever INPUT_SIZE says: compare.py's rule.)
        "WEIGHTS": "faces",
        "INPUT_SIZE": "32 32",
        "EPOCHS": 1,
        "FINETUNE_EPOCHS": 1,
        "BATCH_SIZE": 8,
        "SUBSET": 64,
        "CV_SUBSET": 64,
        "FOLDS": 2,
        "SWEEPS": "--sweep epochs=1",  # one sweep point, so the sweep table and plot are made and shown
        "TENSORBOARD": False,  # a TensorBoard server would outlive the test
    }


# Loaded by the test kernel before any cell (an IPython startup file). In a plain kernel (and on Colab) a
# `!command` only records its exit status in `_exit_code` and the cell carries on; here a failing one raises,
# so the cell fails. IPython's own switch (InteractiveShell.system_raise_on_error) exists only from IPython
# 9.11, which needs Python 3.11+; the suite supports 3.10. Same expansion ({NAME}, $NAME from the calling
# cell) and the same runner as ipykernel's own `system`.
RAISE_ON_SHELL_ERROR = '''
def _raise_on_shell_error(shell=get_ipython()):
    from subprocess import CalledProcessError
    from IPython.utils.process import system

    def system_or_raise(cmd):
        expanded = shell.var_expand(cmd, depth=1)
        exit_code = system(expanded)
        shell.user_ns["_exit_code"] = exit_code
        if exit_code != 0:
            raise CalledProcessError(exit_code, expanded)

    shell.system = system_or_raise

_raise_on_shell_error()
del _raise_on_shell_error
'''


def parameters_cell(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    tagged = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, "the notebook has exactly one cell tagged 'parameters'"
    first_code = next(cell for cell in notebook.cells if cell.cell_type == "code")
    assert tagged[0] is first_code, "the parameters cell is the first code cell"
    return tagged[0]


def parameter_names(cell: nbformat.NotebookNode) -> set[str]:
    return {target.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign)
            for target in node.targets if isinstance(target, ast.Name)}


def with_parameters(notebook: nbformat.NotebookNode, values: dict[str, object]) -> nbformat.NotebookNode:
    """The papermill convention: an ``injected-parameters`` cell right after the ``parameters`` cell."""
    notebook = nbformat.from_dict(json.loads(json.dumps(notebook)))
    cell = parameters_cell(notebook)
    source = "# injected by tests/test_notebook_runs.py\n" + "".join(
        f"{name} = {value!r}\n" for name, value in values.items())
    injected = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    notebook.cells.insert(notebook.cells.index(cell) + 1, injected)
    return notebook


def venv_kernel(home: Path) -> KernelManager:
    """A kernel of this very interpreter (the venv's), from a kernelspec written into ``home``: no user or
    system kernelspec, IPython profile or Jupyter config is consulted."""
    from ipykernel.kernelspec import write_kernel_spec

    kernels = home / "kernels"
    write_kernel_spec(kernels / KERNEL_NAME, overrides={"display_name": "tf_models test (venv)"})
    spec = json.loads((kernels / KERNEL_NAME / "kernel.json").read_text())
    assert Path(spec["argv"][0]) == Path(sys.executable), spec["argv"]
    startup = home / "ipython" / "profile_default" / "startup"
    startup.mkdir(parents=True)
    (startup / "00-raise-on-shell-error.py").write_text(RAISE_ON_SHELL_ERROR)
    specs = KernelSpecManager(kernel_dirs=[str(kernels)], ensure_native_kernel=False)
    return KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)


def kernel_environment(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        # `!python scripts/...` in the notebook is this venv's Python, as on Colab it is Colab's.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        "IPYTHONDIR": str(home / "ipython"),
        "JUPYTER_CONFIG_DIR": str(home / "jupyter_config"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "TF_MODELS_CACHE": str(home / "cache"),  # image scans: not the user's ~/.cache
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "KERAS_BACKEND": "tensorflow",
        "CUDA_VISIBLE_DEVICES": "",  # the CPU path, even on a machine with a GPU
        "MPLBACKEND": "Agg",
    })
    return env


def run_notebook(notebook: nbformat.NotebookNode, home: Path) -> nbformat.NotebookNode:
    """Executes every cell (cwd: notebooks/, as a local Jupyter starts); a failure names the cell."""
    kernel = venv_kernel(home)
    client = nbclient.NotebookClient(notebook, km=kernel, timeout=CELL_TIMEOUT_S,
                                     startup_timeout=120, allow_errors=False, record_timing=True)
    try:
        client.execute(cwd=str(NOTEBOOK.parent), env=kernel_environment(home))
    except (nbclient.exceptions.CellExecutionError, nbclient.exceptions.CellTimeoutError) as error:
        pytest.fail(describe_failure(notebook, error), pytrace=False)
    finally:  # nbclient leaves a kernel it was given running
        if kernel.has_kernel:
            kernel.shutdown_kernel(now=True)
    return notebook


def describe_failure(notebook: nbformat.NotebookNode, error: Exception) -> str:
    failed = [cell for cell in notebook.cells if cell.cell_type == "code"
              and any(out.output_type == "error" for out in cell.get("outputs", []))]
    if not failed:  # a timeout: the last cell that started
        failed = [cell for cell in notebook.cells if cell.cell_type == "code" and cell.get("execution_count")]
    cell = failed[-1] if failed else None
    if cell is None:
        return f"the notebook did not run: {error}"
    index = notebook.cells.index(cell)
    printed = "".join(out.get("text", "") for out in cell.outputs if out.output_type == "stream")
    message = (f"notebook cell {index} failed\n--- source ---\n{cell.source}\n"
               f"--- output (last 4000 characters) ---\n{printed[-4000:]}\n--- error ---\n{error}")
    return re.sub(r"\x1b\[[0-9;]*m", "", message)  # the kernel's traceback colours


def test_parameters_cell_comes_first_and_is_overridden_whole():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    names = parameter_names(parameters_cell(notebook))
    tiny = set(tiny_parameters(Path("/tmp")))
    assert not tiny - names, f"overrides of parameters the notebook no longer has: {sorted(tiny - names)}"
    assert not names - tiny - KEPT_DEFAULTS, (
        f"new notebook parameters need a tiny value in tiny_parameters(): {sorted(names - tiny - KEPT_DEFAULTS)}")
    for needed in ("ON_COLAB", "TENSORBOARD", "DATA_DIR", "RUNS_DIR", "RESULTS_DIR", "BACKBONES", "INPUT_SIZE",
                   "EPOCHS", "BATCH_SIZE", "WEIGHTS"):
        assert needed in names, needed


def test_colab_only_cells_are_guarded_by_the_flag():
    # The clone, the pip install and the Drive mount run only `if ON_COLAB:` (indented under it).
    sources = [cell.source for cell in nbformat.read(NOTEBOOK, as_version=4).cells if cell.cell_type == "code"]
    for needed in ("drive.mount(", "git clone", "!pip install", "!git pull"):
        lines = [(source, line) for source in sources for line in source.splitlines() if needed in line]
        assert lines, needed
        for source, line in lines:
            before = source[:source.index(line)]
            assert "if ON_COLAB:" in before and line.startswith((" ", "\t")), f"{needed!r} runs without ON_COLAB"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_notebook_runs_top_to_bottom_on_cpu(tmp_path):
    notebook = with_parameters(nbformat.read(NOTEBOOK, as_version=4), tiny_parameters(tmp_path / "drive"))
    started = time.perf_counter()
    run_notebook(notebook, tmp_path / "jupyter")
    print(f"notebook ran in {time.perf_counter() - started:.0f} s")

    out = tmp_path / "drive"
    run = out / "runs" / "gender_mobilenetv2_transfer"
    assert (run / "metrics.json").is_file() and (run / "model.keras").is_file(), "the train cell wrote no run"
    assert (out / "results" / "eval" / "gender_mobilenetv2_test.json").is_file()
    assert (out / "results" / "celeba_sample" / "comparison_gender.csv").is_file()
    assert (out / "results" / "celeba_sample" / "sweep_epochs.png").is_file()
    assert (out / "runs" / "cv_gender_mobilenetv2" / "cv_summary.md").is_file()
    images = [cell for cell in notebook.cells if cell.cell_type == "code"
              and any("image/png" in out.get("data", {}) for out in cell.outputs)]
    assert len(images) >= 2, "the evaluation and comparison cells show their plots"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_failing_shell_command_fails_the_run(tmp_path):
    # The runner itself must be able to fail: a `!` command that exits non-zero is a failed cell (a plain
    # kernel would only set _exit_code and carry on), reported with the cell's source and the command's output.
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell("X = 1"),
                      nbformat.v4.new_code_cell('!python -c "raise SystemExit({X} + 2)"'),
                      nbformat.v4.new_code_cell("raise AssertionError('never reached')")]
    with pytest.raises(pytest.fail.Exception) as failure:
        run_notebook(notebook, tmp_path)
    message = str(failure.value)
    assert "notebook cell 1 failed" in message and "SystemExit({X} + 2)" in message, message
    assert "CalledProcessError" in message and "SystemExit(1 + 2)" in message and "status 3" in message, message
    assert "never reached" not in message
