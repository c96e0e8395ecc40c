"""A package that exists nowhere but here: ``envserve-build-probe`` (``envserve_build_probe.triple``), as
a wheel, for tests of "a runtime with requirements of its own" (an image's requirements.txt, a model's
environment): a model that imports it can only work if the requirement was really installed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

__all__ = ["probe_wheel"]


def probe_wheel(root: Path, wheels: Path) -> Path:
    """Build the probe's wheel into ``wheels`` (its sources under ``root``); returns the wheel."""
    source = root / "probe"
    (source / "envserve_build_probe").mkdir(parents=True)
    (source / "envserve_build_probe" / "__init__.py").write_text(
        "def triple(values):\n    return [3 * v for v in values]\n"
    )
    (source / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools"]\nbuild-backend = "setuptools.build_meta"\n'
        '[project]\nname = "envserve-build-probe"\nversion = "1.0"\n'
    )
    wheels.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            wheels,
            source,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (wheel,) = wheels.glob("envserve_build_probe-*.whl")
    return wheel
