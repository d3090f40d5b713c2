"""`tlcli soup SWEEP_DIR [method=greedy|uniform]`: a model soup (Wortsman et al., ICML 2022) of
the finished runs of one `tlcli fit -m` sweep, the mean of their best checkpoints' weights.

uniform: every compatible run. greedy: the runs best first by their own val score (the runs'
`monitor`), each added only when the soup's val score does not get worse. Which runs can share a
soup: tlcli.training.ingredients; the arithmetic: tlcli.training.averaging. The run dir is a
normal one, like `tlcli wise`'s. One process (no DDP).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from tlcli.errors import ConfigError
from tlcli.evaluation import require
from tlcli.reporting import averaging as report
from tlcli.training import averaging, ingredients, tta

log = logging.getLogger(__name__)
METHODS = ("greedy", "uniform")


def preflight(cfg: DictConfig) -> None:
    """Before Hydra creates the run dir: a known method, and a sweep dir with job dirs."""
    require(cfg)
    if cfg.method not in METHODS:
        raise ConfigError(f"method={cfg.method} is not a soup: use method=greedy or method=uniform")
    ingredients.job_dirs(Path(str(cfg.sweep)).expanduser())
    tta.parse(cfg.tta)


def soup(cfg: DictConfig) -> dict[str, Any]:
    preflight(cfg)
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    found = ingredients.find(Path(str(cfg.sweep)).expanduser())
    runs = {r.job: r for r in found.runs}
    monitor, mode = found.runs[0].config["monitor"], found.runs[0].config["monitor_mode"]
    views = tta.parse(cfg.tta)  # test only: the soup is chosen on plain val
    tta.use(found.module, views)
    evaluator = averaging.Evaluator(found.module, found.datamodule, run_dir, cfg.accelerator, cfg.progress_bar)

    def score(state) -> float:
        return averaging.monitored(evaluator.val(state), monitor)

    scores = {job: score(r.state()) for job, r in runs.items()}
    sign = -1.0 if mode == "max" else 1.0
    order = sorted(runs, key=lambda job: (sign * scores[job], job))
    if cfg.method == "greedy":
        state, steps = averaging.greedy_soup(order, lambda j: runs[j].state(), score, mode, scores[order[0]], monitor)
    else:
        state = averaging.average(runs[j].state() for j in order)
        steps = [{"job": order, monitor: score(state), "kept": True, "soup_size": len(order)}]
    kept = set(order) if cfg.method == "uniform" else {s["job"] for s in steps if s["kept"]}
    log.info("%s soup of %d runs: jobs %s", cfg.method, len(kept), sorted(kept))
    metrics: dict[str, Any] = {
        "soup/method": cfg.method,
        "soup/sweep": str(Path(str(cfg.sweep)).expanduser().resolve()),
        "soup/selection": f"{monitor} ({mode}) on val",
        "soup/size": len(kept),
        "soup/ingredients": [
            {
                "job": j,
                "run_dir": str(runs[j].dir),
                "overrides": runs[j].overrides,
                monitor: scores[j],
                "in_soup": j in kept,
            }
            for j in order
        ],
        "soup/steps": steps,
        "soup/left_out": found.left_out,
        **evaluator.val(state),
        "best_ingredient/job": order[0],
        **tta.record(views),
    }
    best = evaluator.test(runs[order[0]].state())
    metrics.update({f"best_ingredient/{k}": v for k, v in best.items()})
    headline = found.module.task.headline
    return averaging.write_run(
        run_dir,
        evaluator,
        state,
        runs[order[0]].saved,  # the best ingredient's config: every ingredient shares its architecture and split
        metrics,
        f"tlcli soup: {cfg.method} soup of {len(kept)} runs",
        lambda m: report.soup_sections(m, monitor, headline),
    )
