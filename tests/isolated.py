"""Run Python code in a fresh interpreter that cannot import this repository's packages.

`python -I -S` drops the working directory, PYTHONPATH and the `.pth` hooks (the editable install's
finder among them); site-packages is then put back by hand, so transformers & co. still import.
This is how a user without `maple` installed loads a checkpoint with `trust_remote_code=True`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap

# Top-level packages of this project: an isolated interpreter must not be able to import any of them.
PROJECT_PACKAGES = ("modeling_maple", "trainer", "dataset_builders", "evaluation", "metrics", "model_cards", "maple")


def isolated_command(code: str) -> list[str]:
    """The argv of an isolated interpreter running `code`; it first asserts that no project package is visible."""
    prelude = (
        "import importlib.util, sys\n"
        f"sys.path.append({sysconfig.get_paths()['purelib']!r})\n"
        f"visible = [p for p in {PROJECT_PACKAGES!r} if importlib.util.find_spec(p) is not None]\n"
        "assert not visible, f'isolated interpreter can import {visible}'\n"
    )
    return [sys.executable, "-I", "-S", "-c", prelude + textwrap.dedent(code)]


def run_isolated(code: str, cwd: str, env: dict[str, str] | None = None, timeout: float = 300) -> str:
    """Run `code` in an isolated interpreter inside `cwd`; returns stdout, raises with stderr on failure."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    result = subprocess.run(isolated_command(code), cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(f"isolated run failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result.stdout
