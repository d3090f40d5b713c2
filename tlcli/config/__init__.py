"""The config tree: where it lives, composing overrides, recipes, resolvers, and validating the result.

Light on purpose: `tlcli --help`, `ls` and `cat` import this package and must not pay for torch.
"""
