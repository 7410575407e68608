"""The baselines' own virtual environments under ``bench/.venvs/``, made with ``venv`` and pip.

Each is made once and reused while its requirements stay the same (a stamp file records them).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

VENVS = Path(__file__).resolve().parent / ".venvs"
REQUIREMENTS = {
    "celery": ["celery[redis]==5.7.0"],
    "arq": ["arq==0.28.0"],
    "plot": ["matplotlib==3.11.2"],
    "servers": ["granian==2.8.9", "uvicorn==0.54.0", "uvloop==0.23.0"],
}


def base_python() -> str:
    """The interpreter the dev venv was made from (a venv is best made from a base Python)."""
    return getattr(sys, "_base_executable", None) or sys.executable


def ensure(name: str, root: Path = VENVS) -> Path:
    """The Python of venv ``name``, made (or remade) if its requirements changed.

    Raises RuntimeError with pip's last lines if the install fails."""
    requirements = REQUIREMENTS[name]
    home = root / name
    python = home / "bin" / "python"
    stamp = home / "requirements.txt"
    wanted = "\n".join(requirements) + "\n"
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    shutil.rmtree(home, ignore_errors=True)
    home.parent.mkdir(parents=True, exist_ok=True)
    _run([base_python(), "-m", "venv", str(home)], f"python -m venv {home}")
    _run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements],
         f"pip install {' '.join(requirements)}")  # fmt: skip
    stamp.write_text(wanted)
    return python


def version_of(python: Path, package: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({package!r}))"
    done = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "?"


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise RuntimeError(f"{what} failed: {' / '.join(lines[-3:])}")
