"""Better models from the same runs: EMA, WiSE-FT, model soups and temperature scaling, measured on
finished suite runs against the plain default.

    .venv/bin/python -m bench.averaging --results-name suite_improve     # after bench.suite ran
        --variants defaults ema (--extra-variant ema@image='ema_decay=0.999')
    .venv/bin/python -m bench.averaging --calibrate outputs/suite/ag_news/defaults/seed2 ...
    .venv/bin/python -m bench.averaging --results-name suite_lr --plain lr3e4 --other randaug --out averaging_lr


For every set and seed of outputs/<results-name>/ that has a finished `--plain` run (`defaults`:
the defaults) and an `--other` run (`ema`: the same fit with ema_decay=0.999; any variant of the
same seed serves, e.g. another augmentation):

- **defaults** / **<other>**: the runs' own test accuracy; their metrics.json also hold the test ECE
  before and after the temperature fit calibrates on val (`test/ece_uncalibrated`, `test/ece`).
- **wise**: `tlcli wise ckpt=<plain run>` (alpha chosen on val from 0, 0.1, ..., 1) in
  outputs/<results-name>/<set>/wise/seed<k>.
- **soup**: `tlcli soup` (greedy) over the plain and other runs of that seed (one pretrained start,
  one data split, two hyperparameter settings) in outputs/<results-name>/<set>/soup/seed<k>.

`--calibrate RUN_DIR ...` instead fits the temperature on val to the best checkpoint of each run
given (runs that predate `calibrate`, e.g. the text sets' suite runs) and scores the test split
before and after, in this process; rows go to bench/results/calibration_runs.csv.

Rows: bench/results/<out>.csv, summary bench/results/<out>.md (--out averaging); finished steps are
not run again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.suite import RESULTS, ROOT, SETS, mean_sd, read_rows, tlcli_commit, write_csv

COLUMNS = ["set", "seed", "method", "test_acc", "test_ece_uncalibrated", "test_ece", "alpha", "note", "wall_s"]


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def tlcli(args: list[str], run_dir: Path) -> float:
    """Run one tlcli verb into a fresh run_dir; its wall seconds (raises with the stderr tail on failure)."""
    shutil.rmtree(run_dir, ignore_errors=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [str(ROOT / ".venv" / "bin" / "tlcli"), *args, "progress_bar=false", f"hydra.run.dir={run_dir}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0 or not (run_dir / "metrics.json").is_file():
        raise RuntimeError(f"{' '.join(cmd)}: exit {proc.returncode}\n{(proc.stderr or proc.stdout)[-2000:]}")
    return time.perf_counter() - start


def row(set_name: str, seed: int, method: str, m: dict, wall: float | str = "", note: str = "") -> dict:
    return {
        "set": set_name,
        "seed": seed,
        "method": method,
        "test_acc": m["test/acc"],
        # no uncalibrated figure: T stayed 1 (a separable val split), so the scores were not changed
        "test_ece_uncalibrated": m.get("test/ece_uncalibrated", m.get("test/ece", "")),
        "test_ece": m.get("test/ece", ""),
        "alpha": m.get("wise/alpha", ""),
        "note": note,
        "wall_s": round(wall, 1) if isinstance(wall, float) else wall,
    }


def measure(
    results: Path,
    set_name: str,
    seed: int,
    done: set[tuple],
    plain_v: str,
    other_v: str,
    verbs: tuple[str, ...] = ("wise", "soup"),
) -> list[dict]:
    """The two fits' own rows, then a row per verb run on them (those in `verbs` not yet done)."""
    base = results / set_name
    plain, ema = base / plain_v / f"seed{seed}", base / other_v / f"seed{seed}"
    out = []
    for method, run in (("defaults", plain), (other_v, ema)):
        if (run / "metrics.json").is_file():
            out.append(row(set_name, seed, method, metrics(run)))
    if not (plain / "metrics.json").is_file():
        return out
    wise = base / "wise" / f"seed{seed}"
    if "wise" in verbs and (set_name, str(seed), "wise") not in done:
        wall = tlcli(["wise", f"ckpt={plain}"], wise)
        m = metrics(wise)
        out.append(row(set_name, seed, "wise", m, wall, f"finetuned acc {m.get('finetuned/test/acc', '')}"))
    if "soup" in verbs and (ema / "metrics.json").is_file() and (set_name, str(seed), "soup") not in done:
        sweep = Path(tempfile.mkdtemp(prefix=f"soup-{set_name}-{seed}-"))
        (sweep / "0").symlink_to(plain.resolve())
        (sweep / "1").symlink_to(ema.resolve())
        soup = base / "soup" / f"seed{seed}"
        wall = tlcli(["soup", str(sweep)], soup)
        m = metrics(soup)
        kept = [i.get("job") for i in m.get("soup/ingredients", []) if i.get("in_soup")]
        out.append(row(set_name, seed, "soup", m, wall, f"ingredients in the soup: {kept}"))
        shutil.rmtree(sweep, ignore_errors=True)
    return out


def calibrate_runs(run_dirs: list[Path]) -> list[dict]:
    """Temperature fitted on val to each run's best checkpoint (as fit does with calibrate=true),
    test scored before and after, in this process."""
    from tlcli import build, restore, trust
    from tlcli.training import averaging

    rows = []
    for run in run_dirs:
        module, config = restore.load_module(run)
        dm = build.data(dict(config["data"]), module.backbone.data_config(), "fit", make=trust.build)
        with tempfile.TemporaryDirectory() as tmp:
            ev = averaging.Evaluator(module, dm, Path(tmp), "cpu")
            state = averaging.state_of(module)
            start = time.perf_counter()
            calibrated, fitted = ev.calibrated(state, {**config, "calibrate": True})
            m = ev.test(calibrated)
        set_name = run.parent.parent.name
        note = f"temperature {fitted.get('calibration/temperature', 1.0):.4g}"
        rows.append(row(set_name, int(config["seed"]), "defaults", m, time.perf_counter() - start, note))
    return rows


def summary(rows: list[dict], methods: tuple[str, ...]) -> list[str]:
    """Per set: each method's mean ± std over seeds, and the paired gain over defaults."""
    lines = [
        "| set | method | seeds | test acc (mean ± std) | Δ acc vs defaults (paired) "
        "| test ECE before T | test ECE after T | alpha |",
        "|---|---|---|---|---|---|---|---|",
    ]
    gains: dict[str, list[float]] = {}
    for set_name in [s for s in SETS if any(r["set"] == s for r in rows)]:
        mine = [r for r in rows if r["set"] == set_name]
        base = {str(r["seed"]): float(r["test_acc"]) for r in mine if r["method"] == "defaults"}
        for method in methods:
            rs = [r for r in rows if r["set"] == set_name and r["method"] == method]
            if not rs:
                continue
            accs = [float(r["test_acc"]) for r in rs]
            deltas = [float(r["test_acc"]) - base[str(r["seed"])] for r in rs if str(r["seed"]) in base]
            if method != "defaults":
                gains.setdefault(method, []).append(statistics.mean(deltas) if deltas else float("nan"))
            eces = [(float(r["test_ece_uncalibrated"]), float(r["test_ece"])) for r in rs if r["test_ece"] != ""]
            alphas = [str(r["alpha"]) for r in rs if r["alpha"] != ""]
            lines.append(
                f"| {set_name} | {method} | {len(rs)} | {mean_sd(accs)} | "
                f"{'' if method == 'defaults' else f'{statistics.mean(deltas):+.3f}' if deltas else ''} | "
                f"{mean_sd([e[0] for e in eces]) if eces else ''} | {mean_sd([e[1] for e in eces]) if eces else ''} | "
                f"{', '.join(alphas)} |"
            )
    lines += ["", "Mean paired gain over the sets (each set's mean over seeds, then the mean over sets):", ""]
    lines += [f"- **{m}**: {statistics.mean(g):+.4f} on {len(g)} sets" for m, g in gains.items()]
    return lines


def write_md(rows: list[dict], calib: list[dict], path: Path, commands: list[str], other: str = "ema") -> None:
    what = {"ema": "+ `ema_decay=0.999`", "randaug": "+ `data.augment=randaug`"}.get(other, "another suite variant")
    out = [
        "# Weight averaging and calibration on the real suite",
        "",
        "Every row is a finished run of the suite harness (bench/suite.py) or a tlcli verb on one;",
        "test accuracy on each set's test split, ECE with 15 equal-width bins (torchmetrics, l1).",
        "**defaults**: `tlcli fit` with only backbone, data, seed (calibrate=true is a default: its",
        f"metrics.json has test ECE before and after the temperature). **{other}**: {what}.",
        "**wise**: `tlcli wise ckpt=<defaults run>` (alpha on val). **soup**: `tlcli soup` (greedy)",
        f"over the defaults and {other} runs of one seed (same start and data split).",
        "",
        *summary(rows, ("defaults", other, "wise", "soup")),
        "",
    ]
    if calib:
        out += [
            "## Temperature scaling on runs that predate `calibrate`",
            "",
            "The best checkpoint of each run, temperature fitted on its val split in this process",
            "(`python -m bench.averaging --calibrate RUN_DIR ...`).",
            "",
            "| set | seed | test acc | test ECE before T | test ECE after T | note |",
            "|---|---|---|---|---|---|",
        ]
        out += [
            f"| {r['set']} | {r['seed']} | {float(r['test_acc']):.3f} | {float(r['test_ece_uncalibrated']):.4f} | "
            f"{float(r['test_ece']):.4f} | {r['note']} |"
            for r in calib
        ]
        out.append("")
    out += [f"tlcli commit: {tlcli_commit()}", "", "## Commands", "", *[f"    {c}" for c in commands], ""]
    path.write_text("\n".join(out))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results-name", default="suite_improve", help="outputs/<name>/<set>/{defaults,ema}/seed<k>")
    p.add_argument("--sets", nargs="+", default=list(SETS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--calibrate", type=Path, nargs="+", default=None, help="run dirs to calibrate in-process")
    p.add_argument("--plain", default="defaults", help="the suite variant that is the defaults")
    p.add_argument("--other", default="ema", help="the variant souped with it")
    p.add_argument("--out", default="averaging", help="bench/results/<out>.csv/.md")
    p.add_argument(
        "--verbs", nargs="*", default=["wise", "soup"], help="verbs to run (none: only the fits' own rows, e.g. ECE)"
    )
    args = p.parse_args(argv)
    command = "python -m bench.averaging " + " ".join(argv if argv is not None else sys.argv[1:])
    csv_path, calib_path = RESULTS / f"{args.out}.csv", RESULTS / "calibration_runs.csv"
    rows = read_rows(csv_path)
    calib = read_rows(calib_path) if args.out == "averaging" else []  # in-process calibration: averaging.md
    md = RESULTS / f"{args.out}.md"
    commands = [c for c in _commands(md) if c != command] + [command]
    if args.calibrate:
        new = calibrate_runs(args.calibrate)
        keep = {(r["set"], str(r["seed"])) for r in new}
        calib = [r for r in calib if (r["set"], str(r["seed"])) not in keep] + new
        write_csv(calib, calib_path, COLUMNS)
    else:
        results = ROOT / "outputs" / args.results_name
        for seed in args.seeds:
            for set_name in args.sets:
                done = {(r["set"], str(r["seed"]), r["method"]) for r in rows}
                new = measure(results, set_name, seed, done, args.plain, args.other, tuple(args.verbs))
                fresh = {(r["set"], str(r["seed"]), r["method"]) for r in new}
                rows = [r for r in rows if (r["set"], str(r["seed"]), r["method"]) not in fresh] + new
                write_csv(rows, csv_path, COLUMNS)
                write_md(rows, calib, md, commands, args.other)
                print(f"{set_name} seed {seed}: {[(r['method'], r['test_acc']) for r in new]}", flush=True)
    write_md(rows, calib, md, commands, args.other)


def _commands(md: Path) -> list[str]:
    if not md.is_file():
        return []
    text = md.read_text().split("## Commands", 1)
    return [line.strip() for line in text[1].splitlines() if line.strip()] if len(text) > 1 else []


if __name__ == "__main__":
    main()
