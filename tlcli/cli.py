"""`tlcli VERB [overrides...]`: peel the verb, hand the rest to Hydra.

Imports are lazy: `tlcli --help`, `tlcli ls` and `tlcli fit --cfg job` must not pay
for torch/lightning.
"""

from __future__ import annotations

import os
import sys

# verb -> (kind, target, one-line help). kind "hydra": target is "module:function(cfg)" run
# under @hydra.main with conf/<verb>.yaml (overrides, -m sweeps, --cfg); kind "plain":
# target is "module:function(args: list[str]) -> exit code" (no Hydra run dir).
VERBS: dict[str, tuple[str, str, str]] = {
    "fit": (
        "hydra",
        "tlcli.commands.fit:fit",
        "fine-tune a pretrained backbone, early-stop on val, test the best checkpoint",
    ),
    "test": (
        "hydra",
        "tlcli.commands.test:test",
        "evaluate a checkpoint on its own data or data=...: metrics + report",
    ),
    "predict": ("hydra", "tlcli.commands.predict:predict", "predict new images/texts (dir, file or CSV) to CSV/JSONL"),
    "export": (
        "hydra",
        "tlcli.commands.export:export",
        "export a checkpoint as safetensors, torchscript or onnx + preprocess",
    ),
    "serve": (
        "hydra",
        "tlcli.commands.serve:serve",
        "serve a checkpoint over HTTP: POST /predict, GET /health, GET /metadata",
    ),
    "push": (
        "hydra",
        "tlcli.commands.push:push",
        "package a run for the Hugging Face Hub (weights, config.json, model card) and upload it",
    ),
    "wise": (
        "hydra",
        "tlcli.commands.wise:wise",
        "WiSE-FT: interpolate a fine-tuned run with its pretrained start, alpha chosen on val",
    ),
    "soup": (
        "hydra",
        "tlcli.commands.soup:soup",
        "model soup of a sweep's runs (tlcli soup SWEEP_DIR [method=greedy|uniform])",
    ),
    "ls": (
        "plain",
        "tlcli.commands.ls:ls",
        "list config groups and options (tlcli ls [group]; ls backbones --pattern P)",
    ),
    "cat": ("plain", "tlcli.commands.cat:cat", "print the composed config for the given overrides, and validate it"),
    "rank": (
        "hydra",
        "tlcli.commands.rank:rank",
        "score candidate backbones on your data without fine-tuning (LogME, H-score, probe, LEEP, NCE)",
    ),
    "report": (
        "plain",
        "tlcli.commands.report:report",
        "leaderboard of a sweep dir (tlcli report DIR); exit 1 if a job failed",
    ),
    "check": (
        "plain",
        "tlcli.commands.check:check",
        "preflight for CI: config, data layout, images, weights; no training",
    ),
}
# hydra verbs whose first argument may be a bare value: `tlcli soup DIR` means `tlcli soup sweep=DIR`
POSITIONAL = {"soup": "sweep"}
EXAMPLES = """examples:
  tlcli fit                                   # embedded digits, offline EfficientNet-Lite0
  tlcli fit backbone=resnet50 task=cls data=imagefolder data.root=DIR
  tlcli fit -m finetune=full,linear_probe optimizer.lr=1e-3,3e-4
  tlcli fit --cfg job                         # print the composed config, do not train
  tlcli fit --help                            # config groups and options
"""


def usage() -> str:
    lines = ["usage: tlcli VERB [key=value ...] [hydra flags]", "", "verbs:"]
    lines += [f"  {name:8s}{help_}" for name, (_, _, help_) in VERBS.items()]
    return "\n".join(lines) + "\n\n" + EXAMPLES


def _load(target: str):
    import importlib

    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


HYDRA_FLAGS_WITH_VALUE = {
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--info",
    "--experimental-rerun",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        sys.stdout.write(usage())
        return 0
    verb, rest = argv[0], argv[1:]
    from tlcli.errors import ConfigError, TlcliError, did_you_mean

    if verb not in VERBS:
        return _report(
            ConfigError(f"unknown verb '{verb}'." + did_you_mean(verb, VERBS) + " Run `tlcli --help` for the list.")
        )
    kind, target, _ = VERBS[verb]
    if kind == "hydra":
        return _hydra_verb(verb, _positional(verb, rest))
    try:
        return _load(target)(rest)
    except TlcliError as err:
        return _report(err)


def _positional(verb: str, args: list[str]) -> list[str]:
    """`tlcli soup DIR ...` -> `tlcli soup sweep=DIR ...`: the first argument that is neither an
    override, a flag nor a flag's value."""
    if verb not in POSITIONAL:
        return args
    skip = False
    for i, a in enumerate(args):
        if skip:
            skip = False
        elif a in HYDRA_FLAGS_WITH_VALUE:
            skip = True
        elif "=" not in a and not a.startswith("-"):
            return [*args[:i], f"{POSITIONAL[verb]}={a}", *args[i + 1 :]]
    return args


def _overrides(args: list[str]) -> list[str]:
    """The key=value arguments among Hydra's own flags."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in HYDRA_FLAGS_WITH_VALUE:
            skip = True
        elif not a.startswith("-"):
            out.append(a)
    return out


def _hydra_verb(verb: str, args: list[str]) -> int:
    from tlcli.config.compose import _backbone_rewrite, compose_checked
    from tlcli.errors import TlcliError
    from tlcli.training import distributed

    multirun = any(a in ("-m", "--multirun") for a in args)
    passthrough = any(a in ("--help", "-h", "--hydra-help", "--info", "--shell-completion", "-sc") for a in args)
    locked = None
    try:
        args = _backbone_rewrite(_resume_rewrite(args))
        if multirun and not passthrough:
            from tlcli.config import plugins

            # a sweeper/launcher from an extra that is not installed: what to install, not Hydra's error
            plugins.check(verb, _overrides(args))
        if not passthrough:
            _check_writable(args, multirun)
            distributed.require_shared_run_dir(args, multirun)
            args = _other_rank(verb, args)
        if not multirun and not passthrough:
            # preflight: a typo in an override gets a clear message and exit 2 before anything starts
            cfg = compose_checked(verb, _overrides(args))
            if not _only_cfg_job(args):
                _preflight_values(verb, cfg, args)
            if _only_cfg_job(args):
                # `--cfg job` prints exactly this config: skip Hydra composing it a second time (latency)
                from omegaconf import OmegaConf

                print(OmegaConf.to_yaml(cfg), end="")
                return 0
        if not multirun and not passthrough and not _only_cfg_job(args):
            locked = _lock_run_dir(args)
    except TlcliError as err:
        return _report(err)
    try:
        return _run_hydra(verb, args)
    finally:
        if locked is not None:
            from tlcli import lock

            lock.release(locked)


def _run_hydra(verb: str, args: list[str]) -> int:
    import hydra

    from tlcli.config.paths import conf_dir
    from tlcli.config.resolvers import register

    register()

    @hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name=verb)
    def _run(cfg):
        return _call(verb, cfg)

    from tlcli.config.paths import PACKAGE_DIR

    # argv[0] must be re-runnable: Lightning's DDP launcher re-executes it for each extra process
    entry = PACKAGE_DIR / "entry" / f"{verb}.py"
    sys.argv = [str(entry) if entry.is_file() else f"tlcli {verb}", *args]
    _run()
    return 0


def _preflight_values(verb: str, cfg, args: list[str]) -> None:
    """Types and ranges of every value before any data or model work; fit checks its parts' arguments too."""
    from omegaconf import OmegaConf

    from tlcli.config.compose import compose_checked
    from tlcli.config.validate import validate_all
    from tlcli.config.values import range_problems
    from tlcli.errors import ConfigError

    if verb == "fit":
        hydra_node = compose_checked(verb, _overrides(args), return_hydra_config=True).hydra
        validate_all(cfg, choices=OmegaConf.to_container(hydra_node.runtime.choices))
        return
    problems = range_problems(cfg)
    if problems:
        raise ConfigError(problems)
    import importlib

    # a verb's own cheap checks (a path that must exist) before Hydra creates the run dir
    check = getattr(importlib.import_module(VERBS[verb][1].split(":")[0]), "preflight", None)
    if check is not None:
        check(cfg)


def _lock_run_dir(args: list[str]):
    """Lock an explicit hydra.run.dir before Hydra writes into it (.hydra/, logs); rank 0 only.

    Lightning's DDP launcher and torchrun start the other ranks with LOCAL_RANK/RANK set: they
    share rank 0's run dir on purpose. Dated default run dirs are locked by the verb itself.
    """
    given = [a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")]
    from tlcli import lock

    if not given or not lock.launched_rank_zero():
        return None
    lock.acquire(given[-1])
    return given[-1]


def _other_rank(verb: str, args: list[str]) -> list[str]:
    """A rank other than 0 started by torchrun or srun shares rank 0's run dir: only rank 0 writes
    .hydra/ and <verb>.log there (what Lightning's own launcher asks of the ranks it starts)."""
    from tlcli.training.distributed import launched_rank_zero

    if launched_rank_zero() or any(a.startswith("hydra.output_subdir=") for a in args):
        return args
    rank = os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or "N"
    return [*args, "hydra.output_subdir=null", f"hydra.job.name={verb}_rank{rank}"]


def _only_cfg_job(args: list[str]) -> bool:
    """`--cfg job` (or `-c job`) with overrides only: no --package, --resolve or other Hydra flag."""
    flags = [a for a in args if a.startswith("-")]
    if flags not in (["--cfg"], ["-c"]):
        return False
    i = args.index(flags[0])
    return i + 1 < len(args) and args[i + 1] == "job"


def _resume_rewrite(args: list[str]) -> list[str]:
    """`resume=RUN_DIR`: the run's own overrides, its dir, and its last checkpoint (nothing to repeat)."""
    resume = [a for a in args if a.startswith("resume=")]
    if not resume:
        return args
    from pathlib import Path

    import yaml

    from tlcli.errors import ConfigError, WeightsError

    run_dir = Path(resume[-1].split("=", 1)[1]).expanduser().resolve()
    saved_file = run_dir / ".hydra" / "overrides.yaml"
    if not saved_file.is_file():
        raise ConfigError(
            f"resume={run_dir} is not a tlcli run dir (no .hydra/overrides.yaml): pass the dir `tlcli fit` printed"
        )
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt.is_file():
        raise WeightsError(f"resume={run_dir} has no checkpoints/last.ckpt to resume from: start the run again instead")
    saved = [
        o for o in yaml.safe_load(saved_file.read_text()) or [] if not o.startswith(("hydra.run.dir=", "ckpt_path="))
    ]
    rest = [a for a in args if not a.startswith("resume=")]
    return [*saved, *rest, f"hydra.run.dir={run_dir}", f"ckpt_path={ckpt}"]


def _check_writable(args: list[str], multirun: bool) -> None:
    """Fail before anything starts when the output location cannot be written."""
    from pathlib import Path

    from tlcli.errors import ConfigError

    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = [a.split("=", 1)[1] for a in args if a.startswith(key + "=")]
    target = Path(given[-1] if given else "outputs").expanduser().absolute()
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"the output location {target} is not writable ({existing} is a file): set {key}=DIR")
    # a real probe: os.access says yes to root under /proc and /sys, where nothing can be created
    import tempfile

    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ConfigError(f"the output location {target} is not writable ({existing}: {why}): set {key}=DIR") from None


def _call(verb: str, cfg):
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from tlcli.errors import find_tlcli_error

    try:
        result = _load(VERBS[verb][1])(cfg)
        if verb == "fit" and isinstance(result, dict):
            # sweepers that optimise (Optuna) read the job's return value as the objective
            return result.get(f"best_val/{cfg.monitor}")
        return result
    except Exception as exc:  # noqa: BLE001 - user errors become a report + exit code
        err = find_tlcli_error(exc)
        if err is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # the job's own log keeps the reason; the sweep goes on and Hydra exits 1 at the end
            import logging

            logging.getLogger("tlcli").error("job failed (%s): %s", err.kind, " | ".join(err.problems))
            raise
        raise SystemExit(_report(err)) from None


def _report(err) -> int:
    from tlcli.console import print_error

    print_error(err.kind, err.problems)
    return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
