"""The README's Python quick start, copied as it stands into a fresh interpreter, and the
example notebook executed by a Jupyter kernel (nbclient, a dev extra)."""
import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_quick_start_runs_as_pasted(tmp_path):
    text = open(os.path.join(ROOT, "README.md")).read()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert "fastdm.condense(" in block and "fastdm.evaluate(" in block
    done = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "% test accuracy" in done.stdout
    assert "fastdm: condensing digits" in done.stderr  # the library logger, shown by default
    assert os.listdir(tmp_path) == []  # no files unless asked


def test_example_notebook_executes(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(os.path.join(ROOT, "examples", "quickstart.ipynb"), as_version=4)
    nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "% test accuracy" in text
    assert "condensing digits" in text  # the logger shows in the notebook
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the grid
