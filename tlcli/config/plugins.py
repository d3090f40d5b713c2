"""Hydra sweeper/launcher plugins ship as tlcli extras: what to install when a config picks a missing one.

Without its plugin, Hydra does not know the option at all ("Could not find 'hydra/sweeper/optuna'")
and stops with exit 1 before tlcli runs. tlcli turns that into one config error (exit 2) that names
the extra, for every way a plugin gets picked: hydra/sweeper=optuna, hparams_search=optuna,
hydra/launcher=slurm, an experiment file.
"""

from __future__ import annotations

import re

from tlcli.errors import ConfigError, is_installed, missing_package

# Hydra option (group/name) -> (pip distribution, import name, tlcli extra)
PLUGINS = {
    "hydra/sweeper/optuna": ("hydra-optuna-sweeper", "hydra_plugins.hydra_optuna_sweeper", "optuna"),
    "hydra/launcher/joblib": ("hydra-joblib-launcher", "hydra_plugins.hydra_joblib_launcher", "joblib"),
    "hydra/launcher/submitit_slurm": ("hydra-submitit-launcher", "hydra_plugins.hydra_submitit_launcher", "slurm"),
    "hydra/launcher/submitit_local": ("hydra-submitit-launcher", "hydra_plugins.hydra_submitit_launcher", "slurm"),
}
# Hydra's words for an option it cannot find, and for the option of ours that asked for it (slurm)
_NOT_FOUND = re.compile(r"Could not (?:find|load) '(hydra/(?:sweeper|launcher)/[^']+)'")
_ASKED_BY = re.compile(r"In '(hydra/(?:sweeper|launcher)/[^']+)'")


def all_installed() -> bool:
    return all(is_installed(module) for _, module, _ in PLUGINS.values())


def problem(hydra_message: str) -> str | None:
    """The line to show for a Hydra composition error caused by a missing plugin, else None."""
    found = _NOT_FOUND.search(hydra_message)
    if found is None or found.group(1) not in PLUGINS:
        return None
    package, module, extra = PLUGINS[found.group(1)]
    if is_installed(module):
        return None
    asked = _ASKED_BY.search(hydra_message)
    option = (asked or found).group(1)
    group, name = option.rsplit("/", 1)
    return missing_package(f"{group}={name}", package, extra)


def check(config_name: str, overrides: list[str]) -> None:
    """For -m runs, which tlcli does not compose beforehand: compose once (sweep values left out) when a
    plugin is missing, and raise the ConfigError naming its extra if the config picks it.

    Other composition errors are left to Hydra, as before; with every plugin installed this costs nothing."""
    if all_installed():
        return
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from tlcli.config.paths import conf_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3", job_name="tlcli"):
        try:
            parsed = OverridesParser.create().parse_overrides(overrides)
            plain = [o.input_line for o in parsed if not o.is_sweep_override()]
            compose(config_name=config_name, overrides=plain, return_hydra_config=True)
        except HydraException as exc:
            line = problem(str(exc))
            if line is not None:
                raise ConfigError(line) from None
