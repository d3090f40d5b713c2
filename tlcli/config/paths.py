"""The only place that knows where the config tree lives."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # tlcli/


def conf_dir() -> Path:
    """conf/ of the checkout (editable install) or the copy packaged inside the wheel."""
    for candidate in (PACKAGE_DIR.parent / "conf", PACKAGE_DIR / "conf"):
        if (candidate / "fit.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"tlcli config tree not found next to {PACKAGE_DIR}")
