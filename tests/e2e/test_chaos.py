"""A short chaos run (``bench/chaos.py``): processes killed at random and PostgreSQL restarted under
load; every accepted job ends exactly once, none stuck, none that is not retry-safe run twice."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.postgres

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_a_short_chaos_run_keeps_every_promise() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--duration", "20", "--clients", "3"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.stdout.strip(), done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0 and figures["ok"], figures
    assert figures["accepted"] > 50 and figures["kills"] >= 3 and figures["postgres_restarts"] == 1, figures
    assert figures["terminal"] == figures["in_store"] >= figures["accepted"], figures
