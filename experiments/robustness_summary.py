"""The robustness grid's summary: per cell the mean and spread over seeds, per strategy the worst case.

A *setting* is (dataset, alpha, malicious fraction, clients, rounds, local epochs, lr);
a *cell* is one (setting, attack, strategy), over whatever seeds the CSV holds.

- :func:`aggregate`: per cell the mean final accuracy over seeds, its spread (sample
  standard deviation; 0 with one seed), the number of seeds, the mean curve, and the
  mean shares of malicious and honest client-rounds left out (strategies that record
  them).
- :func:`worst_case`: per setting and strategy the minimum over attacks of the cell
  means (the mean over seeds first, then the minimum: a single bad seed does not make
  the worst case, a consistently bad attack does).
- :func:`summarise`: prints both, plus each clean setting's honest-rejection rate (no
  attack: every rejection is a false positive), writes ``robustness_summary.csv`` (one
  row per cell) and draws the plots (accuracy per round per attack, the worst-case heat
  map).
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from statistics import mean, stdev
from typing import NamedTuple

from . import common

__all__ = ["Cell", "aggregate", "clean_rejections", "plot_heatmap", "plot_rounds", "summarise", "worst_case"]

SUMMARY_FIELDS = ("dataset", "alpha", "malicious_fraction", "num_clients", "rounds", "local_epochs", "lr", "attack",
                  "strategy", "seeds", "mean_final_accuracy", "spread", "min_seed", "max_seed",
                  "malicious_rejected", "honest_rejected")


class Cell(NamedTuple):
    """One (setting, attack, strategy) over its seeds."""

    mean: float  # mean final accuracy
    curve: list[float]  # mean accuracy per round
    spread: float  # sample standard deviation of the final accuracy (0 with one seed)
    seeds: int
    lowest: float  # worst seed's final accuracy
    highest: float
    malicious_rejected: float  # mean share left out (nan: the strategy does not record it)
    honest_rejected: float


def _setting(r: dict) -> tuple:
    """What a plot compares strategies in: (dataset, alpha, fraction, clients, rounds, epochs, lr)."""
    return (r["dataset"], float(r["alpha"]), float(r["malicious_fraction"]), int(r["num_clients"]),
            int(r["rounds"]), int(r.get("local_epochs") or 1), float(r.get("lr") or 0.05))


def _clean(s: tuple) -> tuple:
    return (s[0], s[1], 0.0, *s[3:])


def _label(s: tuple) -> str:
    dataset, alpha, fraction, clients, rounds, epochs, lr = s
    return f"{dataset} a={alpha:g} {fraction:.0%} ({clients}c,{rounds}r,{epochs}e,lr{lr:g})"


def _number(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _mean_of_finite(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return mean(finite) if finite else math.nan


def aggregate(rows: list[dict]) -> dict:
    """{setting: {attack: {strategy: Cell}}} over the seeds of each cell (a seed counted once)."""
    runs = defaultdict(lambda: defaultdict(lambda: defaultdict(dict)))
    for r in rows:  # a repeated seed (a re-run merged twice) counts once: the last row wins
        runs[_setting(r)][r["attack"]][r["strategy"]][int(float(r["seed"]))] = r
    out = {}
    for s, by_attack in runs.items():
        out[s] = {}
        for attack, by_strategy in by_attack.items():
            out[s][attack] = {}
            for strategy, by_seed in by_strategy.items():
                finals = [float(r["final_accuracy"]) for r in by_seed.values()]
                curves = [json.loads(r["accuracy_per_round"]) for r in by_seed.values()]
                n = min(len(c) for c in curves)
                out[s][attack][strategy] = Cell(
                    mean(finals), [mean(c[i] for c in curves) for i in range(n)],
                    stdev(finals) if len(finals) > 1 else 0.0, len(finals), min(finals), max(finals),
                    _mean_of_finite([_number(r.get("malicious_rejected")) for r in by_seed.values()]),
                    _mean_of_finite([_number(r.get("honest_rejected")) for r in by_seed.values()]))
    return out


def _order(strategies, order: tuple[str, ...]) -> list[str]:
    return sorted(strategies, key=lambda s: (order.index(s) if s in order else 99, s))


def worst_case(agg: dict) -> dict:
    """{setting: {strategy: (min over attacks of the cell mean, that attack, attacks seen, that Cell)}}."""
    out = {}
    for s, by_attack in agg.items():
        per = defaultdict(list)
        for attack, by_strategy in by_attack.items():
            for strategy, cell in by_strategy.items():
                per[strategy].append((cell.mean, attack, cell))
        out[s] = {}
        for k, v in per.items():
            final, attack, cell = min(v, key=lambda x: (x[0], x[1]))
            out[s][k] = (final, attack, len(v), cell)
    return out


def clean_rejections(agg: dict) -> dict:
    """{clean setting: {strategy: Cell}} of the no-attack cells whose strategy records rejections."""
    return {s: {k: c for k, c in by_attack["none"].items() if math.isfinite(c.honest_rejected)}
            for s, by_attack in agg.items() if s[2] == 0 and "none" in by_attack}


def plot_rounds(agg: dict, outdir: Path, attacks: tuple[str, ...], strategies: tuple[str, ...]) -> list[Path]:
    """One figure per attacked setting: a panel per attack, a line per strategy (mean over seeds)."""
    plt = common.plt()
    paths = []
    for s, by_attack in sorted(agg.items()):
        dataset, alpha, fraction, clients, rounds, epochs, lr = s
        shown = [a for a in attacks if a in by_attack] + sorted(set(by_attack) - set(attacks) - {"none"})
        if fraction == 0 or not shown:
            continue
        clean = agg.get(_clean(s), {}).get("none", {}).get("fedavg")
        cols = min(4, len(shown))
        rows_n = math.ceil(len(shown) / cols)
        fig, axes = plt.subplots(rows_n, cols, figsize=(3.6 * cols, 2.9 * rows_n), squeeze=False, sharey=True)
        for ax, attack in zip(axes.flat, shown):
            for strategy in _order(by_attack[attack], strategies):
                curve = by_attack[attack][strategy].curve
                ax.plot(range(1, len(curve) + 1), curve, marker="o", ms=2.5, lw=1.4 if strategy != "bcsfl" else 2.4,
                        label=strategy)
            if clean:
                ax.plot(range(1, len(clean.curve) + 1), clean.curve, "k--", lw=1, label="fedavg, no attack")
            ax.set_title(attack)
            ax.set_xlabel("round")
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
        for ax in axes.flat[len(shown):]:
            ax.axis("off")
        axes[0][0].set_ylabel("test accuracy")
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(10, len(labels)), fontsize=8, frameon=False)
        fig.suptitle(f"{dataset}, Dirichlet alpha {alpha:g}, {fraction:.0%} malicious, {clients} clients, "
                     f"{epochs} local epoch(s), lr {lr:g} (mean over seeds)", fontsize=10)
        fig.tight_layout(rect=(0, 0.07, 1, 1))
        path = outdir / f"robustness_rounds_{dataset}_a{alpha:g}_f{fraction:g}_n{clients}_r{rounds}_e{epochs}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_heatmap(worst: dict, outdir: Path, attacks: tuple[str, ...], strategies: tuple[str, ...]) -> Path | None:
    """Worst case (min over attacks of the mean over seeds) per strategy and setting; ± the spread of that cell."""
    if not worst:
        return None
    import numpy as np

    plt = common.plt()
    settings = sorted(worst)
    names = _order({k for w in worst.values() for k in w}, strategies)
    grid = np.full((len(names), len(settings)), np.nan)
    for j, s in enumerate(settings):
        for i, k in enumerate(names):
            if k in worst[s]:
                grid[i, j] = worst[s][k][0]
    fig, ax = plt.subplots(figsize=(max(5.0, 2.4 + 1.3 * len(settings)), 2.2 + 0.5 * len(names)))
    im = ax.imshow(np.ma.masked_invalid(grid), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i in range(len(names)):
        for j in range(len(settings)):
            if np.isnan(grid[i, j]):
                continue
            _, _, n, cell = worst[settings[j]][names[i]]
            text = f"{grid[i, j]:.2f}" + (f"±{cell.spread:.2f}" if cell.seeds > 1 else "")
            if settings[j][2] > 0 and n < len(attacks):
                text += f"\nof {n} attack{'s' if n > 1 else ''}"
            ax.text(j, i, text, ha="center", va="center", fontsize=6.5, color="white" if grid[i, j] < 0.6 else "black")
    ax.set_xticks(range(len(settings)), [_label(s).replace(" (", "\n(") for s in settings], rotation=45,
                  ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names)
    ax.set_title("worst-case final accuracy: min over attacks of the mean over seeds (± its seeds' std; "
                 "0%: no attack)", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.03)
    fig.tight_layout()
    path = outdir / "robustness_worstcase.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_summary(agg: dict, path: Path) -> Path:
    """One row per cell (mean, spread, seeds, rejection shares), rewritten whole from the grid's CSV."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(SUMMARY_FIELDS)
        for s in sorted(agg):
            for attack in sorted(agg[s]):
                for strategy, c in sorted(agg[s][attack].items()):
                    out.writerow([*s, attack, strategy, c.seeds, round(c.mean, 4), round(c.spread, 4),
                                  round(c.lowest, 4), round(c.highest, 4),
                                  *("" if math.isnan(v) else round(v, 4) for v in (c.malicious_rejected,
                                                                                     c.honest_rejected))])
    tmp.replace(path)
    return path


def summarise(rows: list[dict], outdir: Path, attacks: tuple[str, ...], strategies: tuple[str, ...]) -> None:
    """Print worst cases and clean honest-rejection rates per setting; write the summary CSV and the plots."""
    agg = aggregate(rows)
    worst = worst_case(agg)
    clean_rej = clean_rejections(agg)
    for s in sorted(worst):
        clean = agg.get(_clean(s), {}).get("none", {}).get("fedavg")
        ref = f"; clean fedavg {clean.mean:.4f} ± {clean.spread:.4f} ({clean.seeds} seed(s))" if clean else ""
        print(f"{_label(s)}{ref}")
        for k in _order(worst[s], strategies):
            acc, attack, n, cell = worst[s][k]
            print(f"  {k:14s} worst {acc:.4f} ± {cell.spread:.4f} ({attack}; {n} attack(s), {cell.seeds} seed(s))")
        if s in clean_rej and clean_rej[s]:
            rates = ", ".join(f"{k} {c.honest_rejected:.3f}" for k, c in
                              ((k, clean_rej[s][k]) for k in _order(clean_rej[s], strategies)))
            print(f"  honest client-rounds rejected with no attack: {rates}")
    path = write_summary(agg, outdir / "robustness_summary.csv")
    print(f"wrote {path.relative_to(common.REPO) if path.is_relative_to(common.REPO) else path}")
    try:
        paths = plot_rounds(agg, outdir, attacks, strategies) + [plot_heatmap(worst, outdir, attacks, strategies)]
    except ImportError as exc:  # a grid machine without matplotlib still gets its CSV
        print(f"no plots ({exc}); pip install matplotlib, then --plot-only")
        return
    for path in paths:
        if path:
            print(f"wrote {path.relative_to(common.REPO) if path.is_relative_to(common.REPO) else path}")
