"""One module per verb, file = verb: each holds the function tlcli.cli's VERBS table points at."""
