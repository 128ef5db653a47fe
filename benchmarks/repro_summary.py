"""Mean ± std over seeds of baseline vs +recon runs, and their paired difference (issue #9).

    python benchmarks/repro_summary.py RUN_DIR [RUN_DIR ...] [--times TSV] [--out FILE]

Runs are grouped by their `recon.enabled` flag (config.yaml); the latest eval of each run is
used. Seeds are paired by `train.seed` for the difference column. Floors (`evals/floor_*.json`)
of any run are listed once. Wall times come from the TSV written by benchmarks/repro_small.sh.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path
from typing import Any

import yaml

from evals.report import load_run, probe_metrics

METRICS = (
    ("eval/equivariance/rotation_r2", "rotation R²", True),
    ("eval/equivariance/translation_r2", "translation R²", True),
    ("eval/equivariance/se2_r2", "SE(2) R²", True),
    ("eval/equivariance/color_r2", "color R²", True),
    ("eval/equivariance/blur_r2", "blur R²", True),
    ("eval/knn/top1", "kNN top-1 (%)", True),
    ("eval/linear/top1", "linear top-1 (%)", True),
    ("eval/homography/mce", "homography MCE (px)", False),
    ("eval/segmentation/miou", "segmentation mIoU", True),
)


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}"


def _clear(deltas: list[float], higher: bool) -> str:
    """ "better"/"worse" when every paired Δ has that sign and |mean| > 2·std, else "no"."""
    if len(deltas) < 2:
        return "–"
    mean, std = statistics.fmean(deltas), statistics.stdev(deltas)
    sign = 1 if higher else -1
    if abs(mean) <= 2 * std:
        return "no"
    if all(sign * v > 0 for v in deltas):
        return "better"
    if all(sign * v < 0 for v in deltas):
        return "worse"
    return "no"


def _seed(run_dir: Path) -> int:
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    return int((cfg.get("train") or {}).get("seed", 0))


def summarize(run_dirs: list[Path], times: Path | None = None) -> str:
    """The markdown summary of `run_dirs` (and of the wall times in `times`)."""
    groups: dict[str, dict[int, dict[str, float]]] = {"off": {}, "on": {}}
    floors: dict[str, dict[str, float]] = {}
    probes = set()
    for run_dir in run_dirs:
        run: dict[str, Any] = load_run(run_dir)
        flag = run["flags"]["recon"]
        probe = run["probes"]  # the R² of the run's configured probe (view/features) only
        probes.add(probe.get("equivariance", "?"))
        if flag in groups:
            groups[flag][_seed(run_dir)] = probe_metrics(run["latest"], probe)
        floors.update({name: probe_metrics(m, probe) for name, m in run["floors"].items()})
    base, recon = groups["off"], groups["on"]
    paired = sorted(set(base) & set(recon))
    lines = [
        f"Seeds: baseline {sorted(base)}, +recon {sorted(recon)}; mean ± sample std over seeds;",
        'Δ = +recon − baseline, paired by seed. ↑/↓: higher/lower is better. "clear": Δ on',
        "the better side in every seed and |mean Δ| > 2 · std(Δ) (issue #14's criterion).",
        f"Equivariance probe (view/features) of the runs' configs: {', '.join(sorted(probes))}"
        + (" (they differ: the R² rows mix probes)" if len(probes) > 1 else "")
        + ".",
        "",
        "| "
        + " | ".join(
            [
                "metric",
                "baseline",
                "+recon",
                "Δ (paired)",
                "Δ per seed",
                "clear?",
                *(f"{f} floor" for f in floors),
            ]
        )
        + " |",
        "|---|---|---|---|---|---|" + "---|" * len(floors),
    ]
    for key, label, higher in METRICS:
        b = [base[s][key] for s in sorted(base) if key in base[s]]
        r = [recon[s][key] for s in sorted(recon) if key in recon[s]]
        d = [recon[s][key] - base[s][key] for s in paired if key in recon[s] and key in base[s]]
        floor_cells = [f"{floors[f][key]:.3f}" if key in floors[f] else "–" for f in floors]
        arrow = "↑" if higher else "↓"
        per_seed = ", ".join(f"{v:+.3f}" for v in d) or "–"
        cells = [
            f"{label} {arrow}",
            _mean_std(b),
            _mean_std(r),
            _mean_std(d),
            per_seed,
            _clear(d, higher),
            *floor_cells,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if times is not None and times.is_file():
        with times.open() as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        lines += [
            "",
            "Wall times (s) on this machine:",
            "",
            "| run | phase | seconds |",
            "|---|---|---|",
        ]
        lines += [f"| {Path(r['run']).name} | {r['phase']} | {r['seconds']} |" for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--times", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    text = summarize(args.runs, args.times)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text, end="")


if __name__ == "__main__":
    main()
