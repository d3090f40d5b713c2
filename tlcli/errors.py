"""One error type for everything a user can fix, with the exit code scripts read.

Each problem is one line: what is wrong, which key, and how to fix it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_DATA = 3
EXIT_WEIGHTS = 4
EXIT_DIVERGED = 5


class TlcliError(Exception):
    """A user-fixable problem (or several, reported at once)."""

    exit_code = EXIT_CONFIG
    kind = "config error"

    def __init__(self, problems: str | Iterable[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class ConfigError(TlcliError):
    exit_code = EXIT_CONFIG
    kind = "config error"


class DataError(TlcliError):
    exit_code = EXIT_DATA
    kind = "data error"


class WeightsError(TlcliError):
    exit_code = EXIT_WEIGHTS
    kind = "checkpoint/weights error"


class DivergedError(TlcliError):
    exit_code = EXIT_DIVERGED
    kind = "training diverged"


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """' Did you mean: a, b?' for the closest choices, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.6)
    return f" Did you mean: {', '.join(close)}?" if close else ""


def find_tlcli_error(exc: BaseException | None) -> TlcliError | None:
    """Hydra wraps errors raised inside `_target_`s; dig the TlcliError out of the chain."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, TlcliError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def is_installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it (a missing parent package counts as missing)."""
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_package(what: str, package: str, extra: str, alone: str | None = None, instead: str | None = None) -> str:
    """The one line for an optional feature whose package is not installed: the extra (pyproject.toml) to install.

    alone: the package to pip install instead of the extra, where that alone is enough; instead: another choice."""
    line = f"{what} needs the {package} package, which is not installed: pip install 'tlcli[{extra}]'"
    if alone:
        line += f" (or pip install {alone})"
    if instead:
        line += f", or {instead}"
    return line
