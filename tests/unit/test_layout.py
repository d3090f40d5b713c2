"""The structure README's "Adding things" relies on: one assembly path, task logic inside tlcli/tasks/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "tlcli"
TASK_NAMES = ("Classification", "MultiLabel", "Regression", "Segmentation", "TokenClassification")


def sources(exclude: tuple[str, ...] = ()) -> dict[str, str]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).as_posix()
        if not rel.startswith(exclude):
            out[rel] = path.read_text()
    return out


def hits(pattern: str, exclude: tuple[str, ...] = ()) -> list[str]:
    rx = re.compile(pattern)
    return [
        f"{rel}:{n}: {line.strip()}"
        for rel, text in sources(exclude).items()
        for n, line in enumerate(text.splitlines(), start=1)
        if rx.search(line)
    ]


def test_only_build_assembles_the_lightning_module():
    assert hits(r"\bTransferModule\(", exclude=("tlcli/build.py", "tlcli/module.py")) == []


def test_data_modules_are_built_in_one_place():
    # a data module is instantiated with its backbone's input spec in build.data only
    rx = re.compile(r"(instantiate|trust\.build)\((?:[^()]|\([^()]*\))*data_config=", re.S)
    found = [rel for rel, text in sources(exclude=("tlcli/build.py",)).items() if rx.search(text)]
    assert found == []


@pytest.mark.parametrize("name", TASK_NAMES)
def test_no_task_dispatch_outside_the_task_package(name):
    # naming a task class to branch on it belongs in the task; trust.py lists them as allowed targets
    pattern = rf"__name__\s*[!=]=\s*[\"']{name}[\"']|isinstance\([^)]*\b{name}\b|[\"']{name}[\"']\s*:"
    assert hits(pattern, exclude=("tlcli/tasks/", "tlcli/trust.py")) == []


def test_no_multilabel_flag_outside_the_task_package():
    assert hits(r"\bmultilabel\b", exclude=("tlcli/tasks/",)) == []


def test_verbs_are_one_file_each():
    from tlcli.cli import VERBS

    files = {p.stem for p in (PKG / "commands").glob("*.py")} - {"__init__"}
    assert set(VERBS) <= files, sorted(set(VERBS) - files)
