"""The method-effect study's table (issue #25): every arm and seed of a runs folder, both probe
views, floors, and the differences paired by seed.

    python benchmarks/study_table.py docs/results/study/round3/results \
        --out docs/results/study/round3/table.md

Reads what `benchmarks/study_arms.sh` writes: RUN = RUNS/ARM_sSEED, its final probes
RUN/evals/model_VIEW.json, kNN/linear RUN/evals/model_cls.json, the curve probes
RUN/evals/step_N_VIEW.json, and the floors RUNS/floors/evals/floor_{random,pixels}_{VIEW,cls}.json
(or those of any run, as written before the floors had their own folder). The final step comes
from RUN/checkpoints/latest, or RUN/final_step in an archive (study_arms.sh copies every run's
result files to OUT/results, which is committed, so seeds trained in different sessions meet in
one table). Several folders may be given: a run (ARM_sSEED) found in two of them is an error, and
the floors are those of the first folder that has them.
Paired differences: the reconstruction's own effect is (arm − lambda0) and the paper's claim
(arm − baseline), each taken within a seed; -disk arms are paired with lambda0-disk. Reported as
mean, sample std, n and mean/SE (SE = std/√n), and how many seeds have Δ > 0. With --plot, the
dose–response (R² against λ per view) lands beside the table as dose_response.png.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from collections import defaultdict
from pathlib import Path

TRANSFORMS = ("rotation", "se2")
VIEWS = ("full", "context", "disk")
CLASSIFIERS = (("knn", "eval/knn/top1"), ("linear", "eval/linear/top1"))
RUN_NAME = re.compile(r"^(?P<arm>.+)_s(?P<seed>\d+)$")
STEP_FILE = re.compile(r"^step_(?P<step>\d+)_(?P<view>[a-z]+)\.json$")
# Training losses summarized per run (TRAIN_LOSSES file in an archive, metrics.jsonl live).
LOSSES = (
    ("theta", "train/loss_theta_control"),
    ("recon", "train/loss_recon"),
    ("ssl", "train/loss_ssl"),
)
TRAIN_LOSSES = "train_losses.json"
# A probe on features other than `global`: TAG_VIEW-FEATURE.json (study_arms.sh probe_features).
FEATURE_FILE = re.compile(r"^(?P<tag>.+)_(?P<view>[a-z]+)-(?P<feature>[a-z]+\d*)\.json$")


def read_r2(path: Path) -> dict[str, float]:
    """{transform: R²} of one probe results file ({} when it is missing)."""
    if not path.is_file():
        return {}
    details = json.loads(path.read_text()).get("details", {}).get("equivariance", {})
    return {t: float(d["r2"]) for t, d in details.items() if t in TRANSFORMS}


def read_cls(path: Path) -> dict[str, float]:
    """{knn, linear: top-1 %} of one classification results file."""
    if not path.is_file():
        return {}
    metrics = json.loads(path.read_text()).get("metrics", {})
    return {name: float(metrics[key]) for name, key in CLASSIFIERS if key in metrics}


class DuplicateRunError(ValueError):
    """The same ARM_sSEED in two of the folders given."""


def collect(*folders: Path) -> dict:
    """{"runs": {(arm, seed): {metric: value}}, "floors": {...}, "curves": {...}} of every run
    in `folders`.

    Metric names: VIEW/TRANSFORM (R²), knn, linear; curves: (arm, VIEW/TRANSFORM) -> {step:
    [values over seeds]}."""
    table: dict[tuple[str, int], dict[str, float]] = {}
    floors: dict[str, dict[str, float]] = {}
    curves: dict[tuple[str, str], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    losses: dict[tuple[str, int], dict[str, float]] = {}
    seen: dict[str, Path] = {}
    for folder in folders:
        folder_floors: dict[str, dict[str, float]] = {}
        for run in sorted(p for p in folder.iterdir() if p.is_dir()):
            if run.name in seen and RUN_NAME.match(run.name):
                raise DuplicateRunError(
                    f"run {run.name} is in both {seen[run.name]} and {folder}: keep one"
                )
            seen[run.name] = folder
            _collect_run(run, table, folder_floors, curves)
            match = RUN_NAME.match(run.name)
            run_losses = read_losses(run)
            if match and run_losses:
                losses[(match["arm"], int(match["seed"]))] = run_losses
        for floor, values in folder_floors.items():
            if values:  # the first folder that has this floor gives it
                floors.setdefault(floor, values)
    floors = {k: v for k, v in floors.items() if v}
    return {"runs": table, "floors": floors, "curves": curves, "losses": losses}


def train_losses(metrics_jsonl: Path, window: int = 100) -> dict:
    """{name: {"last": mean over the last `window` logged steps, "every": [(step, window mean)]}}
    of the training losses in a run's metrics.jsonl (`LOSSES`; those the run logged)."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for line in metrics_jsonl.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        for name, key in LOSSES:
            if key in row and "step" in row:
                series[name].append((int(row["step"]), float(row[key])))
    out = {}
    for name, points in series.items():
        chunks = [points[i : i + window] for i in range(0, len(points), window)]
        out[name] = {
            "last": statistics.fmean(v for _, v in points[-window:]),
            "every": [(c[-1][0], round(statistics.fmean(v for _, v in c), 4)) for c in chunks],
        }
    return out


def read_losses(run: Path) -> dict[str, float]:
    """{name: last-window mean} of a run's training losses: the archive's file, else metrics.jsonl."""
    archived, live = run / TRAIN_LOSSES, run / "metrics.jsonl"
    if archived.is_file():
        data = json.loads(archived.read_text())
    elif live.is_file():
        data = train_losses(live)
    else:
        return {}
    return {name: float(d["last"]) for name, d in data.items()}


def _collect_run(run: Path, table: dict, floors: dict, curves: dict) -> None:
    match = RUN_NAME.match(run.name)
    if not match:
        if run.name == "floors":
            _read_floors(run / "evals", floors)
        return
    arm, seed, evals = match["arm"], int(match["seed"]), run / "evals"
    row: dict[str, float] = {}
    for view in VIEWS:
        for t, v in read_r2(evals / f"model_{view}.json").items():
            row[f"{view}/{t}"] = v
    row.update(read_features(evals, "model"))
    row.update(read_cls(evals / "model_cls.json"))
    _read_floors(evals, floors)
    for f in evals.glob("step_*_*.json") if evals.is_dir() else []:
        m = STEP_FILE.match(f.name)
        if m:
            for t, v in read_r2(f).items():
                curves[(arm, f"{m['view']}/{t}")][int(m["step"])].append(v)
    final_step = _final_step(run)
    for key, v in row.items():
        if "/" in key and final_step is not None:
            curves[(arm, key)][final_step].append(v)
    if row:
        table[(arm, seed)] = row


def read_features(evals: Path, tag: str) -> dict[str, float]:
    """{VIEW-FEATURE/TRANSFORM: R²} of the probes of `tag` on other features than global."""
    out: dict[str, float] = {}
    for f in sorted(evals.glob(f"{tag}_*-*.json")) if evals.is_dir() else []:
        m = FEATURE_FILE.match(f.name)
        if m and m["tag"] == tag and m["view"] in VIEWS:
            for t, v in read_r2(f).items():
                out[f"{m['view']}-{m['feature']}/{t}"] = v
    return out


def _read_floors(evals: Path, floors: dict[str, dict[str, float]]) -> None:
    for floor in ("random", "pixels"):
        for view in VIEWS:
            for t, v in read_r2(evals / f"floor_{floor}_{view}.json").items():
                floors.setdefault(floor, {})[f"{view}/{t}"] = v
        floors.setdefault(floor, {}).update(read_features(evals, f"floor_{floor}"))
        floors.setdefault(floor, {}).update(read_cls(evals / f"floor_{floor}_cls.json"))


def _final_step(run: Path) -> int | None:
    """The run's final step: its checkpoints/latest, or the archive's final_step file."""
    latest, archived = run / "checkpoints" / "latest", run / "final_step"
    if latest.is_file():
        m = re.search(r"step_(\d+)", latest.read_text())
        return int(m.group(1)) if m else None
    if archived.is_file():
        return int(archived.read_text().strip())
    return None


def summary(values: list[float]) -> tuple[float, float, int]:
    """(mean, sample std (0 for one value), n)."""
    n = len(values)
    mean = sum(values) / n
    return mean, statistics.stdev(values) if n > 1 else 0.0, n


def reference_arm(arm: str, reference: str) -> str:
    """The arm `arm` is paired with: `reference` with the same suffixes ('-disk' kept)."""
    suffixes = arm.split("-")[1:]
    fill = [s for s in suffixes if s == "disk"]
    return "-".join([reference, *fill]) if reference != "baseline" else "baseline"


def paired(runs: dict, arm: str, reference: str, metric: str) -> dict[int, float]:
    """{seed: value(arm) − value(reference)} over the seeds both have."""
    ref = reference_arm(arm, reference)
    out = {}
    for (a, seed), row in runs.items():
        if a == arm and (ref, seed) in runs and metric in row and metric in runs[(ref, seed)]:
            out[seed] = row[metric] - runs[(ref, seed)][metric]
    return out


def _fmt(v: float | None, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _mean_std(values: list[float], digits: int = 3) -> str:
    if not values:
        return "–"
    mean, std, n = summary(values)
    return f"{mean:.{digits}f}" if n == 1 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def metrics_of(runs: dict) -> list[str]:
    """The metrics any run has: global-feature R² by view, then other features, then top-1."""
    present = {k for row in runs.values() for k in row}
    order = [f"{v}/{t}" for v in VIEWS for t in TRANSFORMS]
    other = sorted(
        (m for m in present if "-" in m.split("/")[0]),
        key=lambda m: (
            VIEWS.index(m.split("-")[0]),
            m.split("/")[0],
            TRANSFORMS.index(m.split("/")[1]),
        ),
    )
    return [m for m in order if m in present] + other + [n for n, _ in CLASSIFIERS if n in present]


def render(data: dict) -> str:
    runs, floors, curves = data["runs"], data["floors"], data["curves"]
    metrics = metrics_of(runs)
    arms = sorted({a for a, _ in runs}, key=_arm_order)
    head = "| arm | seeds | " + " | ".join(_label(m) for m in metrics) + " |"
    lines = ["## Every arm (mean ± std over seeds)", "", head, "|---|---|" + "---:|" * len(metrics)]
    for arm in arms:
        seeds = sorted(s for a, s in runs if a == arm)
        cells = [
            _mean_std(
                [runs[(arm, s)][m] for s in seeds if m in runs[(arm, s)]],
                1 if m in ("knn", "linear") else 3,
            )
            for m in metrics
        ]
        lines.append(f"| {arm} | {','.join(map(str, seeds))} | " + " | ".join(cells) + " |")
    for floor in ("random", "pixels"):
        if floor in floors:
            cells = [
                _fmt(floors[floor].get(m), 1 if m in ("knn", "linear") else 3) for m in metrics
            ]
            lines.append(f"| floor: {floor} | – | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Paired differences by seed",
        "",
        "Δ = arm − reference within a seed; mean ± std, n, mean/SE, seeds with Δ > 0.",
        "",
        "| arm − reference | metric | Δ per seed | mean ± std | n | mean/SE | Δ > 0 |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for arm in arms:
        for reference in ("lambda0", "baseline"):
            base = arm.split("-")[0]
            if base in (reference, "baseline") or not base.startswith("lambda"):
                continue  # the controls (θ heads) are read on their own, not paired
            for m in metrics:
                diffs = paired(runs, arm, reference, m)
                if not diffs:
                    continue
                mean, std, n = summary(list(diffs.values()))
                digits = 1 if m in ("knn", "linear") else 3
                z = "–" if n < 2 or std == 0 else f"{mean / (std / math.sqrt(n)):.1f}"
                per_seed = ", ".join(f"s{s}: {d:+.{digits}f}" for s, d in sorted(diffs.items()))
                pos = sum(d > 0 for d in diffs.values())
                lines.append(
                    f"| {arm} − {reference_arm(arm, reference)} | {_label(m)} | {per_seed} | "
                    f"{mean:+.{digits}f} ± {std:.{digits}f} | {n} | {z} | {pos}/{n} |"
                )
    losses = data.get("losses", {})
    if losses:
        names = [n for n, _ in LOSSES if any(n in v for v in losses.values())]
        lines += [
            "",
            "## Training losses (mean of the last 100 logged steps; mean ± std over seeds)",
            "",
            "θ: the control head's MSE (predicting the mean: 0.333); recon: L_recon (λ = 0: its"
            " decoders are untrained); ssl: the base method's loss.",
            "",
            "| arm | seeds | " + " | ".join(names) + " |",
            "|---|---|" + "---:|" * len(names),
        ]
        for arm in sorted({a for a, _ in losses}, key=_arm_order):
            seeds = sorted(s for a, s in losses if a == arm)
            cells = [
                _mean_std([losses[(arm, s)][n] for s in seeds if n in losses[(arm, s)]])
                for n in names
            ]
            lines.append(f"| {arm} | {','.join(map(str, seeds))} | " + " | ".join(cells) + " |")
    if curves:
        steps = sorted({s for c in curves.values() for s in c})
        lines += [
            "",
            "## R² against steps (mean over seeds; n = seeds where a step has fewer than others)",
            "",
            "| arm | probe | " + " | ".join(str(s) for s in steps) + " |",
            "|---|---|" + "---:|" * len(steps),
        ]
        for (arm, m), by_step in sorted(
            curves.items(), key=lambda kv: (_arm_order(kv[0][0]), kv[0][1])
        ):
            counts = {len(v) for v in by_step.values() if v}
            cells = [
                _fmt(statistics.fmean(by_step[s]) if by_step.get(s) else None)
                # seeds differ between steps (curve probes of some seeds only): say how many
                + (f" (n={len(by_step[s])})" if by_step.get(s) and len(counts) > 1 else "")
                for s in steps
            ]
            lines.append(f"| {arm} | {_label(m)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _label(metric: str) -> str:
    if "/" not in metric:
        return {"knn": "kNN top-1 %", "linear": "linear top-1 %"}[metric]
    view, t = metric.split("/")
    view = view.replace("-", ", ")  # "full-grid2" (features other than global) -> "full, grid2"
    return f"{view}: {'rotation' if t == 'rotation' else 'SE(2)'} R²"


def _arm_order(arm: str) -> tuple:
    base = arm.split("-")[0]
    lam = re.match(r"lambda(\d+(?:\.\d+)?)$", base)
    rank = 0 if base == "baseline" else 1 if lam else 2
    return (len(arm.split("-")) > 1, rank, float(lam.group(1)) if lam else 0.0, arm)


def plot_dose_response(data: dict, path: Path) -> bool:
    """R² against λ (per view, rotation; mean ± std over seeds); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    runs = data["runs"]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5), sharey=True)
    for ax, view in zip(axes, ("full", "context"), strict=True):
        m = f"{view}/rotation"
        for fill in ("", "-disk"):
            by_lambda: dict[float, list[float]] = defaultdict(list)  # λ -> values over seeds
            for (arm, _), row in runs.items():
                lam = re.fullmatch(r"lambda(\d+(?:\.\d+)?)" + re.escape(fill), arm)
                if lam and m in row:
                    by_lambda[float(lam.group(1))].append(row[m])
            if not by_lambda:
                continue
            xs = sorted(by_lambda)
            ys = [summary(by_lambda[x]) for x in xs]
            ax.errorbar(
                [x + 0.5 for x in xs],
                [y[0] for y in ys],
                yerr=[y[1] for y in ys],
                marker="o",
                capsize=3,
                label=f"+recon{fill or ' (zero fill)'}",
            )
        baseline = [r[m] for (a, _), r in runs.items() if a == "baseline" and m in r]
        if baseline:
            ax.axhline(statistics.fmean(baseline), ls="--", color="k", label="baseline (g off)")
        for floor, style in (("random", ":"), ("pixels", "-.")):
            if m in data["floors"].get(floor, {}):
                ax.axhline(
                    data["floors"][floor][m], ls=style, color="grey", label=f"floor: {floor}"
                )
        ax.set_xscale("log")
        ax.set_xlabel("λ + 0.5")
        ax.set_title(f"rotation R², view {view}")
    axes[0].set_ylabel("R² (global [CLS; mean patch])")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "runs", type=Path, nargs="+", help="runs folders of benchmarks/study_arms.sh (or archives)"
    )
    parser.add_argument("--out", type=Path, help="write the table here (markdown)")
    parser.add_argument("--plot", action="store_true", help="also write dose_response.png")
    parser.add_argument(
        "--train-losses",
        action="store_true",
        help="print the training-loss summary (JSON) of the one run given, for the archive",
    )
    args = parser.parse_args(argv)
    for folder in args.runs:
        if not folder.is_dir():
            parser.error(f"no runs folder {folder}")
    if args.train_losses:
        metrics = args.runs[0] / "metrics.jsonl"
        if len(args.runs) != 1 or not metrics.is_file():
            parser.error(f"--train-losses reads one run's metrics.jsonl: {metrics} is not there")
        print(json.dumps(train_losses(metrics)))
        return 0
    try:
        data = collect(*args.runs)
    except DuplicateRunError as e:
        parser.error(str(e))
    text = render(data)
    print(text, end="")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        if args.plot and plot_dose_response(data, args.out.parent / "dose_response.png"):
            print(f"dose-response plot: {args.out.parent / 'dose_response.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
