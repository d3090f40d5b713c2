"""What `tlcli wise` and `tlcli soup` add to report.html: WiSE-FT's val score against alpha (also
wise_ft.png), a soup's ingredients and the greedy steps. Every string goes through html.esc."""

from __future__ import annotations

from typing import Any

from tlcli.reporting.html import esc, png_data_uri, table


def _cell(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    return f"{v:.4f}" if isinstance(v, float) else esc(v)


def wise_keys(grid: list[dict[str, Any]], monitor: str, headline) -> list[str]:
    """The val metrics drawn against alpha: the task's first headline metric, then the monitor."""
    first = f"val/{headline[0][0]}" if headline else monitor
    return [k for k in dict.fromkeys([first, monitor]) if grid and k in grid[0]]


def wise_figure(grid: list[dict[str, Any]], keys: list[str], chosen: float):
    """One panel per key: its val value at each alpha, the chosen alpha marked; None with < 2 alphas."""
    from matplotlib.figure import Figure  # no pyplot: headless-safe

    if len(grid) < 2 or not keys:
        return None
    fig = Figure(figsize=(4.6 * len(keys), 3.4), layout="constrained")
    for ax, key in zip(fig.subplots(1, len(keys), squeeze=False)[0], keys):
        ax.plot([g["alpha"] for g in grid], [g[key] for g in grid], marker="o", markersize=4)
        ax.axvline(chosen, color="#999", linestyle=":", label=f"chosen alpha = {chosen:g}")
        ax.set_xlabel("alpha (0: pretrained start, 1: fine-tuned)")
        ax.set_title(key, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def wise_sections(metrics: dict[str, Any], keys: list[str], figure) -> list[str]:
    grid = metrics["wise/grid"]
    baseline = any(k.startswith("wise/baseline/test/") for k in metrics)
    cols = [k for k in grid[0] if k != "alpha"]
    rows = [[f"{g['alpha']:g}"] + [_cell(g[k]) for k in cols] for g in grid]
    chosen = [("<b>" if g["alpha"] == metrics["wise/alpha"] else "") for g in grid]
    rows = [[f"{c}{r[0]}{'</b>' if c else ''}", *r[1:]] for c, r in zip(chosen, rows)]
    models = [("before: frozen features + logistic regression", "wise/baseline/test/")] if baseline else []
    models += [(f"WiSE-FT (alpha = {metrics['wise/alpha']:g})", "test/"), ("fine-tuned (alpha = 1)", "finetuned/test/")]
    compare = [[esc(label)] + [_cell(metrics.get(prefix + k[4:], "–")) for k in keys] for label, prefix in models]
    out = [
        f"<h2>WiSE-FT: {esc(metrics['test_split'])} split</h2>"
        + table(["", *(f"test/{k[4:]}" for k in keys)], compare)
        + f"<p>{esc(metrics['wise/selection'])}</p>"
        + f"<p>theta_0: backbone {esc(metrics['wise/theta0/backbone'])}; head {esc(metrics['wise/theta0/head'])}</p>"
    ]
    if figure is not None:
        out.append(f"<img class=plot alt='val score against alpha' src='{png_data_uri(figure)}'>")
    out.append("<h2>Val score for each alpha</h2>" + table(["alpha", *cols], rows))
    return out


def wise_line(metrics: dict[str, Any], headline, run_dir) -> str:
    """The fit's summary line: 'WiSE-FT (alpha 0.7, chosen on val): test acc 0.9100, fine-tuned 0.8900;
    run dir: RUN_DIR/wise' for the task's first headline metric (both without TTA)."""
    key = headline[0][0] if headline else "loss"
    how = "chosen on val" if len(metrics["wise/grid"]) > 1 else "given"
    wise, tuned = metrics.get(f"test/{key}"), metrics.get(f"finetuned/test/{key}")
    line = f"WiSE-FT (alpha {metrics['wise/alpha']:g}, {how})"
    if wise is not None and tuned is not None:
        line += f": {metrics['test_split']} {key} {wise:.4f}, fine-tuned {tuned:.4f}"
    return f"{line}; run dir: {run_dir}"


def soup_sections(metrics: dict[str, Any], monitor: str, headline) -> list[str]:
    keys = [f"test/{k}" for k, _ in headline] or [k for k in metrics if k.startswith("test/")][:2]
    compare = [
        [f"{esc(metrics['soup/method'])} soup of {metrics['soup/size']}"] + [_cell(metrics.get(k, "")) for k in keys],
        [f"best ingredient (job {metrics['best_ingredient/job']})"]
        + [_cell(metrics.get(f"best_ingredient/{k}", "")) for k in keys],
    ]
    ingredients = [
        [esc(i["job"]), esc(i["overrides"]), _cell(i[monitor]), _cell(i["in_soup"])]
        for i in metrics["soup/ingredients"]
    ]
    steps = [[esc(s["job"]), _cell(s[monitor]), _cell(s["kept"]), esc(s["soup_size"])] for s in metrics["soup/steps"]]
    out = [
        f"<h2>Model soup: {esc(metrics['test_split'])} split</h2>" + table(["", *keys], compare),
        "<h2>Ingredients (best first)</h2>"
        + table(["job", "overrides", monitor, "in the soup"], ingredients, numeric=False),
        "<h2>Steps</h2>" + table(["job added", f"soup {monitor}", "kept", "soup size"], steps),
    ]
    if metrics["soup/left_out"]:
        out.append("<h2>Left out</h2><ul>" + "".join(f"<li>{esc(r)}</li>" for r in metrics["soup/left_out"]) + "</ul>")
    return out
