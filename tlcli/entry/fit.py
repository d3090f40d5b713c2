"""`python tlcli/entry/fit.py OVERRIDES` == `python -m tlcli.entry.fit OVERRIDES` == `tlcli fit OVERRIDES`.

Lightning's DDP launcher starts each extra process by re-running sys.argv[0] with
sys.argv[1:] (plus hydra.run.dir=...): sys.argv[0] must therefore be a runnable script
that knows its verb, which the `tlcli` console script is not. Started as a module (torchrun's
`-m tlcli.entry.fit`), Lightning re-runs the module instead, which knows its verb as well.
"""

import sys

from tlcli.cli import main

if __name__ == "__main__":
    sys.exit(main(["fit", *sys.argv[1:]]))
