"""Weight averaging: WiSE-FT (Wortsman et al., CVPR 2022) and model soups (Wortsman et al., ICML 2022).

Both average the weights of networks of one architecture that started from one pretrained
network. WiSE-FT interpolates between the start, theta_0, and the fine-tuned theta_ft:
theta(alpha) = (1 - alpha) theta_0 + alpha theta_ft. A soup averages the best checkpoints of
several runs of one sweep. Every floating-point tensor of the state_dict is averaged (BatchNorm's
running statistics included); integer buffers (num_batches_tracked) are taken as they are.

theta_0 is rebuilt from the checkpoint's own config (restore.rebuild(pretrained=True)): the
backbone with the weights its config names, and, for a head that is one linear layer, the
frozen-features logistic regression of the same train split mapped onto it (the non-CLIP analogue
of WiSE-FT's zero-shot head; the fit's "baseline", tlcli.training.baseline). Any other head stays
the fine-tuned one: only the backbone is interpolated, and metrics.json says so.

Choices are made on the validation split by the run's own selection rule (`monitor`,
`monitor_mode`), scored by the model's own validation_step, so a val/ number here is the number
fit logged. One process: the grids are small and a val pass is cheap; no DDP.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from tlcli import restore
from tlcli.errors import ConfigError
from tlcli.training import baseline, head_init

log = logging.getLogger(__name__)

State = dict[str, torch.Tensor]
ROUND = 12  # digits a val score is compared at: a tie must not hinge on summation order


# ---------------------------------------------------------------- state dict arithmetic
def state_of(module: torch.nn.Module) -> State:
    """A detached CPU copy of the module's state_dict."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def _check_alike(a: State, b: State) -> None:
    if a.keys() != b.keys():
        diff = sorted(set(a) ^ set(b))
        raise ConfigError(f"the state dicts hold different tensors ({', '.join(diff[:4])}): average one architecture")
    shapes = [k for k in a if a[k].shape != b[k].shape]
    if shapes:
        raise ConfigError(f"the state dicts differ in shape at {', '.join(shapes[:4])}: average one architecture")


def interpolate(theta0: State, theta1: State, alpha: float) -> State:
    """(1 - alpha) theta0 + alpha theta1 for every floating-point tensor; the others from theta1.
    torch.lerp is exact at the ends: alpha=0 gives theta0 and alpha=1 theta1, bit for bit."""
    _check_alike(theta0, theta1)
    return {
        k: torch.lerp(theta0[k], v, float(alpha)) if v.is_floating_point() else v.clone() for k, v in theta1.items()
    }


class Sum:
    """A running sum of state dicts (float64, so the mean is exact to the dtype's rounding); the
    non-float tensors are the first state's."""

    def __init__(self) -> None:
        self.total: State = {}
        self.first: State = {}
        self.n = 0

    def add(self, state: State) -> Sum:
        if not self.n:
            self.first = {k: v.clone() for k, v in state.items()}
            self.total = {k: v.double() for k, v in state.items() if v.is_floating_point()}
        else:
            _check_alike(self.first, state)
            for k in self.total:
                self.total[k] += state[k].double()
        self.n += 1
        return self

    def mean(self, extra: State | None = None) -> State:
        """The mean of the states added (and of `extra`, without adding it)."""
        n = self.n + (extra is not None)
        if extra is not None:
            _check_alike(self.first, extra)
        out = {}
        for k, v in self.first.items():
            if k not in self.total:
                out[k] = v.clone()
                continue
            total = self.total[k] + extra[k].double() if extra is not None else self.total[k]
            out[k] = (total / n).to(v.dtype)
        return out


def average(states: Iterable[State]) -> State:
    """The uniform mean of state dicts (a uniform soup)."""
    acc = Sum()
    for s in states:
        acc.add(s)
    if not acc.n:
        raise ConfigError("nothing to average: no state dicts given")
    return acc.mean()


def best_index(scores: list[float], mode: str) -> int:
    """The index of the best score (mode max or min); a tie goes to the later entry (WiSE-FT: the
    larger alpha, nearer the fine-tuned model)."""
    sign = 1.0 if mode == "max" else -1.0
    keyed = [sign * round(float(s), ROUND) for s in scores]
    return max(range(len(keyed)), key=lambda i: (keyed[i], i))


def not_worse(new: float, old: float, mode: str) -> bool:
    """The greedy-soup rule: keep an ingredient when the soup's val score does not get worse."""
    new, old = round(float(new), ROUND), round(float(old), ROUND)
    return new >= old if mode == "max" else new <= old


def greedy_soup(order: list[int], load, score, mode: str, first: float, monitor: str) -> tuple[State, list[dict]]:
    """The greedy soup (Wortsman et al., ICML 2022): ingredients best first (order: job numbers;
    load(job) -> its state; score(state) -> the soup's val score; first: the best one's), each
    added only when the soup's val score does not get worse. (the soup, one step per ingredient)."""
    acc = Sum().add(load(order[0]))
    best, steps = first, [{"job": order[0], monitor: first, "kept": True, "soup_size": 1}]
    for job in order[1:]:
        state = load(job)
        value = score(acc.mean(state))
        kept = not_worse(value, best, mode)
        if kept:
            acc.add(state)
            best = value
        steps.append({"job": job, monitor: value, "kept": kept, "soup_size": acc.n})
        log.info(
            "greedy soup: job %d %s (soup %s %.6g, %d ingredients)",
            job,
            "kept" if kept else "left out",
            monitor,
            value,
            acc.n,
        )
    return acc.mean(), steps


# ---------------------------------------------------------------- theta_0 of WiSE-FT
def starting_point(
    ckpt: dict[str, Any], source: str, finetuned: State, datamodule, task
) -> tuple[State, dict[str, Any], dict[str, Any]]:
    """(theta_0 with theta_ft's keys, wise/theta0/* notes, the baseline/* metrics of its head).

    Backbone: rebuilt with its config's weights (backbone.weights=none: the random init the fit
    drew, from the run's seed). Head: the frozen-features logistic regression on the train split
    (C by cross-validation, the fit's baseline) when the head is one linear layer and the task has
    one; else the fine-tuned head. LoRA: the adapters' A from theta_ft, B zero, so the merged
    weight is W + alpha BA. The task's buffers (target scaling) are theta_ft's.
    """
    config = ckpt["tlcli"]["config"]
    weights = str(config["backbone"].get("weights"))
    torch.manual_seed(int(config["seed"]))  # what fit's seed_everything did before it built the backbone
    start = restore.rebuild(ckpt, source, pretrained=True).eval()
    linear = head_init.linear_layer(start.head) is not None
    before = (
        baseline.before_fine_tuning(start.backbone, datamodule, int(config["seed"]), task, head=True) if linear else {}
    )
    before.pop("baseline/seconds", None)
    regression = before.pop("baseline/head", None)
    theta0 = {k: v.clone() for k, v in finetuned.items()}
    for k, v in state_of(start.backbone).items():
        key = f"backbone.{k}"
        if "lora_" in k:  # adapters off: B = 0 (lora_B, lora_embedding_B), A as fine-tuned
            theta0[key] = torch.zeros_like(finetuned[key]) if "_B" in k else finetuned[key].clone()
        else:
            theta0[key] = v
    notes = {"wise/theta0/backbone": f"pretrained (backbone.weights={weights})"}
    if weights == "none":
        notes["wise/theta0/backbone"] = f"random init (backbone.weights=none), seed {config['seed']} as the fit's"
        log.warning("backbone.weights=none: theta_0 is a random initialisation, not a pretrained network")
    if regression is not None and head_init.load(start.head, regression):
        theta0.update({f"head.{k}": v for k, v in state_of(start.head).items()})
        notes["wise/theta0/head"] = f"frozen-features logistic regression on train (C={before['baseline/C']:.3g})"
    else:
        why = (
            "the head is not one linear layer"
            if not linear
            else f"no frozen-features logistic regression for {type(task).__name__} on this data (see the log)"
        )
        notes["wise/theta0/head"] = f"the fine-tuned head: only the backbone is interpolated ({why})"
        log.warning("WiSE-FT interpolates the backbone only: %s", why)
    return theta0, notes, before


def alpha_grid(alpha: Any, alphas: Any) -> list[float]:
    """The alphas to score on val: `alphas` (sorted, unique) for alpha=auto, else [alpha]."""
    if alpha != "auto":
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
            raise ConfigError(f"alpha={alpha} must be auto or a number in [0, 1], e.g. alpha=0.5")
        return [float(alpha)]
    values = list(alphas) if isinstance(alphas, Iterable) and not isinstance(alphas, str) else None
    if not values or any(isinstance(a, bool) or not isinstance(a, int | float) or not 0 <= a <= 1 for a in values):
        raise ConfigError(f"alphas={alphas} must be a list of numbers in [0, 1], e.g. alphas=[0,0.25,0.5,0.75,1]")
    return sorted({float(a) for a in values})


# ---------------------------------------------------------------- evaluation
class Evaluator:
    """Scores state dicts on the val or test split with the model's own val/test steps (the
    task's loss and metrics), one process; the last `test` leaves its outputs for the report."""

    def __init__(self, module, datamodule, run_dir: Path, accelerator: str = "auto", progress_bar: bool = False):
        import lightning as L

        from tlcli.evaluation import device

        self.module, self.datamodule = module, datamodule
        self.trainer = L.Trainer(
            accelerator="gpu" if device(accelerator).type == "cuda" else "cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=progress_bar,
            enable_model_summary=False,
            default_root_dir=str(run_dir),
        )

    def val(self, state: State) -> dict[str, float]:
        self.module.load_state_dict(state)
        out = self.trainer.validate(self.module, dataloaders=self.datamodule.val_dataloader(), verbose=False)
        return {k: float(v) for k, v in out[0].items()}

    def test(self, state: State) -> dict[str, float]:
        """test/* as `tlcli test` reports them: the logged metrics and the task's split numbers (test/ece)."""
        from tlcli.evaluation import split_metrics

        self.module.load_state_dict(state)
        out = self.trainer.test(self.module, dataloaders=self.datamodule.test_dataloader(), verbose=False)
        return {**{k: float(v) for k, v in out[0].items()}, **split_metrics(self.module)}

    def calibrated(self, state: State, config: dict[str, Any]) -> tuple[State, dict[str, Any]]:
        """`state` with the task's calibration fitted to these very weights on val, as fit does for
        each checkpoint when the run calibrated (its `calibrate`), else reset; and calibration/*.
        An average carries no valid temperature: its ingredients' were fitted to other weights."""
        from tlcli.training.calibrate import validation_logits

        task = self.module.task
        if not task.calibrates:
            return state, {}
        self.module.load_state_dict(state)
        task.reset_calibration()
        fitted: dict[str, Any] = {}
        if config.get("calibrate", False):  # .get: a checkpoint from before calibration has no key (off)
            logits = validation_logits(self.trainer, self.module, self.datamodule, None)
            fitted = task.calibrate(*logits) if logits is not None and len(logits[1]) else {}
        task_state = {f"task.{k}": v.detach().cpu().clone() for k, v in task.state_dict().items()}
        return {**state, **task_state}, {f"calibration/{k}": v for k, v in fitted.items()}


def monitored(scores: dict[str, float], monitor: str) -> float:
    if monitor not in scores:
        raise ConfigError(
            f"monitor={monitor} (the run's selection rule) is not among the val metrics "
            f"({', '.join(sorted(scores))}): fit the run again with a val/ metric as monitor"
        )
    return scores[monitor]


# ---------------------------------------------------------------- the run dir
def write_run(
    run_dir: Path,
    evaluator: Evaluator,
    state: State,
    saved: dict[str, Any],
    metrics: dict[str, Any],
    title: str,
    sections: Callable[[dict[str, Any]], list[str]] = lambda metrics: [],
    announce: bool = True,
) -> dict[str, Any]:
    """Calibrate `state` on val as the run did (Evaluator.calibrated) and test it, then write
    checkpoints/best.ckpt (the saved tlcli config, no optimizer state), the test report,
    metrics.json and report.html (with `sections(metrics)`): a run dir test/predict/export/serve/push
    accept. announce=False: nothing on the console (inside a fit, which prints its own summary)."""
    from tlcli import console
    from tlcli.evaluation import write_test_report
    from tlcli.reporting import files
    from tlcli.reporting import html as html_report
    from tlcli.training import calibrate
    from tlcli.training.callbacks import SafeCheckpointIO

    state, calibration = evaluator.calibrated(state, saved["config"])
    metrics.update(calibration)
    metrics.update(evaluator.test(state))
    module, split = evaluator.module, evaluator.datamodule.test_split
    path = run_dir / "checkpoints" / "best.ckpt"
    metrics.update(test_split=split, tested_checkpoint=str(path))
    tlcli = {k: saved[k] for k in ("config", "class_names", "label_counts")}
    tlcli["averaging"] = {k: v for k, v in metrics.items() if k.startswith(("wise/", "soup/")) and _plain(v)}
    SafeCheckpointIO().save_checkpoint({"state_dict": state, "tlcli": tlcli}, path)  # atomic
    write_test_report(run_dir, module, split, show=announce)
    files.write_json_atomic(run_dir / "metrics.json", metrics)
    html_report.write_html(run_dir, module, evaluator.datamodule, metrics, title=title, sections=sections(metrics))
    for line in (calibrate.console_line(metrics), f"run dir: {run_dir}") if announce else ():
        if line:
            console.console.print(line)
    return metrics


def _plain(value: Any) -> bool:
    """Weights-only loading reads str/number/bool and lists/dicts of them."""
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return value is None or isinstance(value, str | int | float | bool)
