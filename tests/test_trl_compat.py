"""The TRL adapter's tests against the newest TRL checked (1.16, fused LM head), on the installed transformers.

A virtual environment layered on the running one replaces only ``trl``: it is made from the running interpreter
and adds this environment's site-packages as a site directory (a ``.pth`` calling ``site.addsitedir``, so that
their own ``.pth`` files, the editable install of this package among them, are processed too). A plain
``--system-site-packages`` venv would see the *base* interpreter's site-packages instead, not a parent venv's.
Needs PyPI; skipped when the wheel cannot be installed, or when the running TRL is that version already.
"""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
NEWEST_TRL = "1.16.0"


def layered_venv(folder: Path) -> str:
    """A venv whose own packages come first, then everything installed in the running environment."""
    subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
    python = folder / "bin" / "python"
    own = subprocess.run(
        [str(python), "-c", "import site; print(site.getsitepackages()[0])"], check=True, capture_output=True, text=True
    ).stdout.strip()
    parents = [path for path in site.getsitepackages() if path and Path(path).is_dir()]
    Path(own, "zz_parent_environment.pth").write_text(
        "import site; " + "; ".join(f"site.addsitedir({path!r})" for path in parents) + "\n"
    )
    return str(python)


def test_trl_adapter_tests_pass_on_newest_trl(tmp_path: Path) -> None:
    import trl

    if trl.__version__ == NEWEST_TRL:
        pytest.skip(f"trl {NEWEST_TRL} is the installed version: tests/test_trl.py already ran on it")
    python = layered_venv(tmp_path / "venv")
    install = [python, "-m", "pip", "install", "--quiet", "--no-deps", f"trl=={NEWEST_TRL}"]
    installed = subprocess.run(install, check=False, capture_output=True, text=True)
    if installed.returncode:
        pytest.skip(f"cannot install trl=={NEWEST_TRL}: {installed.stderr[-500:]}")
    version = subprocess.run(
        [python, "-c", "import trl, wit_plugin; print(trl.__version__)"], check=False, capture_output=True, text=True
    )
    assert version.returncode == 0, version.stderr[-2000:]
    assert version.stdout.strip() == NEWEST_TRL
    tests = [python, "-m", "pytest", "tests/test_trl.py", "-q", "-p", "no:cacheprovider"]
    result = subprocess.run(
        tests, check=False, cwd=REPO, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert result.returncode == 0, result.stdout[-4000:]
