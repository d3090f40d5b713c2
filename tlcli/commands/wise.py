"""`tlcli wise ckpt=RUN_DIR`: WiSE-FT (Wortsman et al., CVPR 2022), the fine-tuned weights
interpolated with the pretrained start, theta(alpha) = (1 - alpha) theta_0 + alpha theta_ft.

theta_0 and the arithmetic: tlcli.training.averaging. alpha is chosen on the val split of the
run's own data (its saved config: same split, same seed) by the run's own selection rule
(monitor / monitor_mode), ties to the larger alpha; alpha=0.5 skips the search. The run dir is
a normal one: checkpoints/best.ckpt for test/predict/export/serve/push, metrics.json, the test
report, report.html and, with a search, wise_ft.png. One process (no DDP).

`tlcli fit wise_ft=auto|0.5` runs the same procedure (`interpolate_run`) on its own best
checkpoint once the fit is done, into RUN_DIR/wise (`after_fit`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from tlcli import build, restore, trust
from tlcli.evaluation import require
from tlcli.reporting import averaging as report
from tlcli.reporting import files
from tlcli.reporting.html import esc
from tlcli.training import averaging, tta

log = logging.getLogger(__name__)


def preflight(cfg: DictConfig) -> None:
    """Before Hydra creates the run dir: the checkpoint exists and the alphas are valid."""
    require(cfg)
    restore.resolve(cfg.ckpt)
    averaging.alpha_grid(cfg.alpha, cfg.alphas)
    tta.parse(cfg.tta)


def wise(cfg: DictConfig) -> dict[str, Any]:
    require(cfg)
    alphas = averaging.alpha_grid(cfg.alpha, cfg.alphas)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    return interpolate_run(cfg.ckpt, alphas, run_dir, cfg.accelerator, cfg.progress_bar, views=tta.parse(cfg.tta))


def interpolate_run(
    source: str | Path,
    alphas: list[float],
    run_dir: Path,
    accelerator: str = "auto",
    progress_bar: bool = False,
    announce: bool = True,
    views: tuple[str, ...] = (),
) -> dict[str, Any]:
    """WiSE-FT of the checkpoint `source` (a .ckpt or a run dir): each of `alphas` scored on val,
    the best written to `run_dir` as a run (its metrics returned). announce=False: no summary lines
    on the console (the fit prints its own). views: test-time augmentation of every test (tta=;
    alpha is chosen on plain val, as fit chooses its checkpoint)."""
    path = restore.resolve(source)
    ckpt = restore.read(path)
    run_dir.mkdir(parents=True, exist_ok=True)  # Hydra makes the verb's; another caller's may not exist yet
    module, config = restore.loaded(ckpt, f"ckpt={source}"), ckpt["tlcli"]["config"]
    tta.use(module, views)  # test only: validation scores the plain inputs
    finetuned = averaging.state_of(module)
    datamodule = build.data(dict(config["data"]), module.backbone.data_config(), "fit", make=trust.build)
    theta0, notes, before = averaging.starting_point(ckpt, f"ckpt={source}", finetuned, datamodule, module.task)

    evaluator = averaging.Evaluator(module, datamodule, run_dir, accelerator, progress_bar)
    monitor, mode = config["monitor"], config["monitor_mode"]
    grid = [{"alpha": a, **evaluator.val(averaging.interpolate(theta0, finetuned, a))} for a in alphas]
    chosen = grid[averaging.best_index([averaging.monitored(g, monitor) for g in grid], mode)]["alpha"]
    how = f"best {monitor} ({mode}) on val over {len(grid)} alphas, ties to the larger"
    log.info("WiSE-FT: alpha %g (%s)", chosen, how if len(grid) > 1 else "given")
    metrics: dict[str, Any] = {
        "wise/alpha": chosen,
        "wise/selection": how if len(grid) > 1 else f"alpha={chosen:g} given (no search)",
        "wise/source": str(path),
        **notes,
        "wise/grid": grid,
        # the frozen-features logistic regression theta_0's head comes from, on the test split
        **{f"wise/{k}": v for k, v in before.items() if k != "baseline/C"},
        **tta.record(views),
    }
    metrics.update({f"finetuned/{k}": v for k, v in evaluator.test(finetuned).items()})

    keys = report.wise_keys(grid, monitor, module.task.headline)
    figure = report.wise_figure(grid, keys, chosen)
    if figure is not None:
        files.write_png_atomic(run_dir / "wise_ft.png", figure)
    return averaging.write_run(
        run_dir,
        evaluator,
        averaging.interpolate(theta0, finetuned, chosen),
        ckpt["tlcli"],
        metrics,
        "tlcli wise: WiSE-FT",
        lambda m: report.wise_sections(m, keys, figure),
        announce=announce,
    )


def after_fit(
    cfg: DictConfig, ckpt: str | None, run_dir: Path, accelerator: str, headline
) -> tuple[dict[str, Any], list[str], str]:
    """fit's wise_ft: WiSE-FT of the fit's best checkpoint `ckpt` (None: the run dir's), written to
    RUN_DIR/wise, a run dir of its own. (What the fit's metrics.json gains: wise/alpha, wise/test/*;
    the sections of the fit's report.html: the WiSE-FT run's own, with a link to its page; the
    summary line.)"""
    out = run_dir / "wise"
    alphas = averaging.alpha_grid(cfg.wise_ft, cfg.wise_ft_alphas)
    wise = interpolate_run(ckpt or run_dir, alphas, out, accelerator, announce=False, views=tta.parse(cfg.tta))
    gained = {
        "wise/alpha": wise["wise/alpha"],
        "wise/selection": wise["wise/selection"],
        "wise/run_dir": str(out),
        **{f"wise/{k}": v for k, v in wise.items() if k.startswith("test/")},
    }
    keys = report.wise_keys(wise["wise/grid"], cfg.monitor, headline)
    figure = report.wise_figure(wise["wise/grid"], keys, wise["wise/alpha"])
    link = f"<p>WiSE-FT's own run dir: <a href='wise/report.html'>wise/</a> (tlcli test ckpt={esc(out)})</p>"
    sections = report.wise_sections(wise, keys, figure)
    return gained, [sections[0] + link, *sections[1:]], report.wise_line(wise, headline, out)
