"""`python -m tlcli.entry.test OVERRIDES` == `tlcli test OVERRIDES` (see fit.py)."""

import sys

from tlcli.cli import main

if __name__ == "__main__":
    sys.exit(main(["test", *sys.argv[1:]]))
