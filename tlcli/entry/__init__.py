"""Per-verb script entries for the verbs that can run on several processes (fit, test, predict).

`torchrun --nproc_per_node=N -m tlcli.entry.fit OVERRIDES` starts N ranks of `tlcli fit`, and
Lightning's own DDP launcher re-runs the entry file of the running verb for each extra rank.
"""
