"""Ctrl-C at any moment of a command ends it with one line and exit status 130, never a traceback: while
Python is still importing lookalike, and when it lands inside a library's own import (which some libraries
turn into an ImportError)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

HOOK = """
import os, signal, sys

# Ctrl-C acts as a terminal's does, even where the tests run with SIGINT ignored (a shell's background job
# without job control ignores it, and Python then keeps it ignored: the signal below did nothing)
signal.signal(signal.SIGINT, signal.default_int_handler)

class CtrlC:
    # Ctrl-C, as the terminal sends it, at the moment Python first looks for the module MODULE
    def find_spec(self, name, path=None, target=None):
        if name == MODULE:
            sys.meta_path.remove(self)
            ACTION
        return None

sys.meta_path.insert(0, CtrlC())
"""


def run_interrupted(tmp_path, module: str, action: str, *args: str, launcher: str = "-m"):
    """`lookalike ARGS`, with Ctrl-C arriving when `module` is first imported (a sitecustomize installs the
    hook before anything else runs)."""
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HOOK.replace("MODULE", repr(module)).replace("ACTION", action))
    command = [sys.executable, "-m", "lookalike", *args]
    if launcher == "script":
        command = [sys.executable, "-c", "from lookalike.__main__ import run; run()", *args]
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hook), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)


@pytest.mark.parametrize("launcher", ["-m", "script"])
@pytest.mark.parametrize("module", ["typing", "numpy", "lookalike.index", "typer"])
def test_ctrl_c_while_lookalike_is_imported_says_so_in_one_line(tmp_path, module, launcher):
    """The bug: Ctrl-C in the first second of any command (Python importing numpy, typer, the index) printed
    a KeyboardInterrupt traceback."""
    result = run_interrupted(tmp_path, module, "os.kill(os.getpid(), signal.SIGINT)", "info", launcher=launcher)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 130 and result.stderr.strip().startswith("interrupted"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_ctrl_c_that_a_library_turns_into_an_import_error_is_an_interruption_not_a_bug(tmp_path):
    """The bug: Ctrl-C during the import of a compiled library that reports it as ImportError("initialization
    failed") from the KeyboardInterrupt (pybind11's modules do) was shown as "internal error: ImportError"."""
    action = textwrap.dedent("""raise ImportError("initialization failed") from KeyboardInterrupt()""")
    result = run_interrupted(tmp_path, "huggingface_hub", action, "models")  # imported by the command itself
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 130 and result.stderr.strip().startswith("interrupted"), result.stderr


def test_an_error_whose_chain_loops_is_reported_not_walked_for_ever():
    """The bug: looking for a KeyboardInterrupt behind an error walked its chain of causes and contexts until
    the end, and a chain that loops (pymilvus' connection error has one) has none: `lookalike info --index
    milvus://127.0.0.1:1/x` spun at full CPU for ever instead of saying it cannot reach Milvus."""
    code = textwrap.dedent("""
        from lookalike.cli import _from_ctrl_c
        a, b = ValueError("a"), ValueError("b")
        a.__context__, b.__context__ = b, a
        c = ValueError("c")
        c.__context__ = KeyboardInterrupt()
        print(_from_ctrl_c(a), _from_ctrl_c(c))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.split() == ["False", "True"], result.stderr
