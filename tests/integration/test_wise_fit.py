"""`tlcli fit wise_ft=...`: WiSE-FT of the fit's best checkpoint once the fit is done, as `tlcli wise`
does it, into RUN_DIR/wise; in-process, on the tiny fits of test_averaging."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY, compose_fit, make_imagefolder
from tlcli import restore
from tlcli.cli import main
from tlcli.commands.fit import fit
from tlcli.data import ImageFolderDataModule

BEST = Path("checkpoints") / "best.ckpt"
TEMPERATURE = "task.temperature"


class OwnData(ImageFolderDataModule):
    """A data module of the user's own: fit takes it, a checkpoint naming it is not rebuilt."""


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("wise_fit") / "data")


@pytest.fixture(scope="module")
def searched(root, tmp_path_factory):
    """A fit with wise_ft=auto over three alphas: (its run dir, the metrics fit returned, its stdout)."""
    run = tmp_path_factory.mktemp("wise_fit") / "run"
    capture = pytest.MonkeyPatch()
    from rich.console import Console

    from tlcli import console

    out = Console(record=True, width=400)
    capture.setattr(console, "console", out)
    try:
        args = [*TINY, "data=imagefolder", f"data.root={root}", "wise_ft=auto", "wise_ft_alphas=[0,0.5,1]"]
        metrics = fit(compose_fit(args, run))
    finally:
        capture.undo()
    return run, metrics, out.export_text()


def test_fit_with_wise_ft_auto_writes_a_wise_run_dir_and_its_numbers(searched, tmp_path):
    run, returned, printed = searched
    wise = run / "wise"
    for name in ("checkpoints/best.ckpt", "metrics.json", "per_class.json", "report.html", "wise_ft.png"):
        assert (wise / name).is_file(), name
    fitted, interpolated = _read(run / "metrics.json"), _read(wise / "metrics.json")
    assert fitted == json.loads(json.dumps(returned))  # the file is what fit returned

    # the fit's metrics.json: its own test/* and, beside them, the WiSE-FT model's, as RUN_DIR/wise says
    assert 0 <= fitted["wise/alpha"] <= 1 and fitted["wise/alpha"] in (0.0, 0.5, 1.0)
    assert fitted["wise/alpha"] == interpolated["wise/alpha"]
    assert [g["alpha"] for g in interpolated["wise/grid"]] == [0.0, 0.5, 1.0]
    assert fitted["wise/selection"] == "best val/loss (min) on val over 3 alphas, ties to the larger"
    assert fitted["wise/test/acc"] == interpolated["test/acc"]
    tested = {k: v for k, v in interpolated.items() if k.startswith("test/")}
    assert {f"wise/{k}": v for k, v in tested.items()} == {
        k: v for k, v in fitted.items() if k.startswith("wise/test/")
    }
    assert {"test/acc", "test/loss", "wise/test/acc", "wise/test/loss"} <= set(fitted)
    # the fine-tuned model WiSE-FT started from is the fit's tested checkpoint (no TTA here)
    assert interpolated["wise/source"] == fitted["tested_checkpoint"]
    assert interpolated["finetuned/test/acc"] == pytest.approx(fitted["test/acc"], abs=1e-7)

    # one summary line with both numbers; the fit's report.html shows the search and links the run
    line = (
        f"WiSE-FT (alpha {fitted['wise/alpha']:g}, chosen on val): test acc {fitted['wise/test/acc']:.4f}, "
        f"fine-tuned {interpolated['finetuned/test/acc']:.4f}; run dir: {wise}"
    )
    assert line in printed.splitlines()
    page = (run / "report.html").read_text()
    assert "<h2>WiSE-FT: test split</h2>" in page and "<a href='wise/report.html'>wise/</a>" in page
    assert "alt='val score against alpha' src='data:image/png;base64," in page
    assert "<h2>Val score for each alpha</h2><table><tr><th>alpha</th>" in page

    # RUN_DIR/wise is a run like any: tlcli test reproduces its numbers
    assert main(["test", f"ckpt={wise}", "progress_bar=false", f"hydra.run.dir={tmp_path / 'test'}"]) == 0
    again = _read(tmp_path / "test" / "metrics.json")
    assert again["test/acc"] == fitted["wise/test/acc"]
    assert again["test/loss"] == pytest.approx(fitted["wise/test/loss"], rel=1e-6)


def test_fit_with_wise_ft_1_keeps_the_fine_tuned_model(root, tmp_path):
    run = tmp_path / "run"
    args = [*TINY, "data=imagefolder", f"data.root={root}", "trainer.max_epochs=1", "wise_ft=1.0"]
    fitted = fit(compose_fit(args, run))
    assert fitted["wise/alpha"] == 1.0 and fitted["wise/selection"] == "alpha=1 given (no search)"
    assert fitted["wise/test/acc"] == fitted["test/acc"]
    assert fitted["wise/test/loss"] == pytest.approx(fitted["test/loss"], rel=1e-6)
    assert not (run / "wise" / "wise_ft.png").exists()  # one alpha: nothing to draw
    # alpha = 1 is the fine-tuned weights bit for bit (torch.lerp is exact at the ends); the temperature
    # is fitted again to the same weights on the same val split
    tuned, kept = restore.read(run / BEST)["state_dict"], restore.read(run / "wise" / BEST)["state_dict"]
    assert kept.keys() == tuned.keys()
    assert all(torch.equal(v, tuned[k]) for k, v in kept.items() if k != TEMPERATURE)
    assert float(kept[TEMPERATURE]) == pytest.approx(float(tuned[TEMPERATURE]), rel=1e-5)


def _problems(capsys) -> list[str]:
    return [line[4:] for line in capsys.readouterr().err.splitlines() if line.startswith("  - ")]


@pytest.mark.parametrize("value", ["1.5", "-0.1", "abc", "true"])
def test_a_bad_wise_ft_stops_fit_before_any_training(value, root, tmp_path, capsys):
    run = tmp_path / "run"
    assert (
        main(["fit", *TINY, "data=imagefolder", f"data.root={root}", f"wise_ft={value}", f"hydra.run.dir={run}"]) == 2
    )
    assert _problems(capsys) == [
        f"wise_ft={value} must be null (off), auto (alpha chosen on val) or an alpha in [0, 1], e.g. wise_ft=auto"
    ]
    assert not run.exists()  # no run dir, no lock: nothing started


def test_wise_ft_refuses_before_training_what_tlcli_wise_would_refuse(root, tmp_path, capsys):
    run = tmp_path / "run"
    own = f"data._target_={__name__}.OwnData"
    assert (
        main(["fit", *TINY, "data=imagefolder", f"data.root={root}", "wise_ft=auto", own, f"hydra.run.dir={run}"]) == 2
    )
    assert _problems(capsys) == [
        f"wise_ft=auto: refused, `tlcli wise` rebuilds a checkpoint only from tlcli's own parts: data._target_: "
        f"'{__name__}.OwnData' is not one of tlcli's own data parts; use tlcli's own part, or wise_ft=null"
    ]
    assert not run.exists()

    no_ckpt = ["callbacks.model_checkpoint=null", "callbacks.last_checkpoint=null"]
    assert main(["cat", "wise_ft=0.5", *no_ckpt, "wise_ft_alphas=[]"]) == 2
    assert _problems(capsys) == [
        "wise_ft_alphas=[] must be a list of numbers in [0, 1], e.g. wise_ft_alphas=[0,0.25,0.5,0.75,1]",
        "wise_ft=0.5 interpolates the run's best checkpoint, but no callback keeps one: keep "
        "callbacks.model_checkpoint (e.g. callbacks=default), or set wise_ft=null",
    ]
    assert main(["cat", *no_ckpt]) == 0  # wise_ft=null (the default): no checkpoint needed


def test_wise_ft_is_off_by_default_and_searches_the_grid_tlcli_wise_searches():
    from omegaconf import OmegaConf

    from tlcli.config.paths import conf_dir

    fit_yaml, wise_yaml = OmegaConf.load(conf_dir() / "fit.yaml"), OmegaConf.load(conf_dir() / "wise.yaml")
    assert fit_yaml.wise_ft is None and fit_yaml.wise_ft_alphas == wise_yaml.alphas
