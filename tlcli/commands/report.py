"""`tlcli report SWEEP_DIR`: the leaderboard of a Hydra multirun (`tlcli fit -m ...`).

A sweep dir holds multirun.yaml and one N/ dir per job with .hydra/overrides.yaml and
.hydra/config.yaml, plus metrics.json when the job finished. One row per job: the
overrides that vary across jobs (the axes) and the final metrics, sorted by the jobs'
`monitor`/`monitor_mode`. With a `seed` or `data.fold` (k-fold) axis, rows that differ only
in those are also aggregated as mean ± std; the folds' out-of-fold predictions are joined
into oof_predictions.csv with their accuracy. Jobs without metrics.json are listed as failed,
with the end of their log. Writes leaderboard.md, leaderboard.csv and leaderboard.png into the sweep dir.

Exit code: 0 when every job finished, 1 when any failed (the leaderboard is still written).
"""

from __future__ import annotations

from pathlib import Path

from tlcli.errors import ConfigError
from tlcli.reporting.leaderboard import OOF_FILE, USAGE, build, out_of_fold, plot, print_tables, to_csv, to_markdown


def report(args: list[str]) -> int:
    if any(a in ("-h", "--help") for a in args):
        print(__doc__.strip() + "\n\n" + USAGE)
        return 0
    if len(args) != 1:
        raise ConfigError(f"tlcli report takes exactly one directory, got {len(args)} arguments. {USAGE}")
    from tlcli.reporting import files

    lb = build(Path(args[0]).expanduser())
    files.write_text_atomic(lb.sweep_dir / "leaderboard.md", to_markdown(lb))
    files.write_text_atomic(lb.sweep_dir / "leaderboard.csv", to_csv(lb))
    plot(lb, lb.sweep_dir / "leaderboard.png")
    oof = out_of_fold(lb)
    if oof:
        header, joined, _ = oof
        files.write_text_atomic(lb.sweep_dir / OOF_FILE, _csv(joined))
    print_tables(lb)
    return 1 if lb.failed else 0


def _csv(rows: list[dict[str, str]]) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
