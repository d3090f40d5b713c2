"""`python -m tlcli.entry.predict OVERRIDES` == `tlcli predict OVERRIDES` (see fit.py)."""

import sys

from tlcli.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
