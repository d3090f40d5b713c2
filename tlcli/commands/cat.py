"""`tlcli cat [overrides...]`: print the composed fit config for the given overrides, and validate it."""

from __future__ import annotations


def cat(args: list[str]) -> int:
    from omegaconf import OmegaConf

    from tlcli.cli import _overrides, _report
    from tlcli.config.compose import compose_checked
    from tlcli.errors import TlcliError

    try:
        cfg = compose_checked("fit", _overrides(args))
        from tlcli.config.validate import validate

        validate(cfg)
    except TlcliError as err:
        print(OmegaConf.to_yaml(cfg) if "cfg" in locals() else "", end="")
        return _report(err)
    print(OmegaConf.to_yaml(cfg), end="")
    return 0
