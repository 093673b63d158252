"""Project-level promises: the README's commands are what CI runs, and the op library stays free of the model."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = readme.split("```")
    assert len(blocks) >= 3, "README.md must start with a fenced block holding the two set-up commands"
    commands = [line for line in blocks[1].splitlines()[1:] if line.strip() and not line.startswith("#")]
    assert len(commands) == 2, f"the first block must hold exactly two commands, got {commands}"
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci, f"the README's test command is not what .ci/run runs:\n{commands[1]}"


def test_op_library_does_not_import_transformers():
    code = "import sys, eagle_ops; print('transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"
