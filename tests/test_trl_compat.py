"""The TRL adapter's tests against the newest TRL checked (1.16, fused LM head), next to the pinned 1.9.

A virtual environment layered on this one (``--system-site-packages``) replaces only ``trl``; TRL 1.16 runs on
the same transformers. Needs PyPI; skipped when the wheel cannot be installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
NEWEST_TRL = "1.16.0"


def test_trl_adapter_tests_pass_on_newest_trl(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    install = [python, "-m", "pip", "install", "--quiet", "--no-deps", f"trl=={NEWEST_TRL}"]
    installed = subprocess.run(install, check=False, capture_output=True, text=True)
    if installed.returncode:
        pytest.skip(f"cannot install trl=={NEWEST_TRL}: {installed.stderr[-500:]}")
    version = subprocess.run(
        [python, "-c", "import trl; print(trl.__version__)"], check=True, capture_output=True, text=True
    )
    assert version.stdout.strip() == NEWEST_TRL
    tests = [python, "-m", "pytest", "tests/test_trl.py", "-q", "-p", "no:cacheprovider"]
    result = subprocess.run(
        tests, check=False, cwd=REPO, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert result.returncode == 0, result.stdout[-4000:]
