"""`equirecon report RUN_DIR …`: the eval metrics of several runs as a table and plots.

Writes to OUT (default `reports/<timestamp>`):
- `table.md` and `table.csv`: one row per run (its method and reconstruction flags from
  `config.yaml`, the step of its latest eval) with the latest value of every eval metric, plus
  one row per floor (`evals/floor_<name>.json`) where a run has them; a run continued from a
  released backbone (`model.init`) gets a row `RUN [starting model: FILE]` before its own, step
  0: the loaded backbone, evaluated as the run's first checkpoint;
- `plots/<metric>.png`: the metric against the checkpoint step, one line per run (floors as
  dashed horizontal lines, a starting model as a star at step 0);
and logs the folder as the artifacts of a new MLflow run named "report" in the runs' experiment.

Probe settings (`equirecon.eval_tasks`). Every equivariance number is shown with the probe it
came from: the column `eval/equivariance/rotation_r2 (full, global)` holds only numbers of view
full, features global (`(?)`: a result that does not record its probe). The results of every
probe are read: the run's configured eval (`step_X.json`) and the other probes' files
(`step_X.<tag>.json`, floors alike), so evals of one checkpoint in two views give two labelled
columns, never one mixed one.
"""

from __future__ import annotations

import csv
import math
import re
import time
from pathlib import Path
from typing import Any

import yaml

from equirecon.eval_tasks import UNKNOWN_PROBE, split_qualified_metric
from evals.results import (
    labelled_metrics,
    read_floor_results,
    read_step_results,
    result_probes,
    starting_model,
)

FLAG_COLUMNS = ("method", "recon", "transform", "lambda")


def _run_flags(run_dir: Path) -> dict[str, Any]:
    """method / recon flags (strings) of a run from its resolved config ("?" where unknown)."""
    path = run_dir / "config.yaml"
    cfg = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    method, recon = cfg.get("method") or {}, cfg.get("recon") or {}
    enabled = recon.get("enabled")
    return {
        "method": method.get("name", "?"),
        "recon": "?" if enabled is None else ("on" if enabled else "off"),
        "transform": recon.get("transform", "?") if enabled else "-",
        "lambda": str(recon.get("lambda", "?")) if enabled else "-",
        "tracking": cfg.get("tracking") or {},
        "probes": result_probes({"eval": cfg.get("eval") or {}}),
    }


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """A run's flags, eval history {metric: [(step, value)]}, latest values and floors; the
    metrics of tasks with a probe under their probe-qualified names
    (`evals.results.labelled_metrics`), "probes" the run config's {task: probe label}; "start"
    the `model.init` file of an evaluated starting model (step 0, else None) and
    "start_metrics" its metrics."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    points: dict[str, dict[int, float]] = {}
    start = None  # the model.init file of the run's starting model (its step 0), if evaluated
    for result in read_step_results(run_dir):  # within a step, the configured eval's file last
        start = starting_model(result) or start
        for name, value in labelled_metrics(result).items():
            points.setdefault(name, {})[int(result["step"])] = float(value)
    history = {name: sorted(by_step.items()) for name, by_step in points.items()}
    latest = {name: values[-1][1] for name, values in history.items()}
    steps = [p[0] for values in history.values() for p in values]
    flags = _run_flags(run_dir)
    return {
        "dir": run_dir,
        "name": run_dir.name,
        "flags": flags,
        "probes": flags["probes"],
        "history": history,
        "latest": latest,
        "step": max(steps) if steps else None,
        "floors": read_floor_results(run_dir),
        "start": start,
        "start_metrics": (
            {name: by_step[0] for name, by_step in points.items() if 0 in by_step} if start else {}
        ),
    }


def metric_label(metric: str) -> str:
    """How the report names a metric: `eval/equivariance/full/global/rotation_r2` ->
    `eval/equivariance/rotation_r2 (full, global)` (a probe-qualified name: its settings in
    brackets); other names as they are."""
    split = split_qualified_metric(metric)
    if split is None:
        return metric
    probe, name = split
    return f"{name} ({probe.replace('/', ', ')})"


def probe_metrics(metrics: dict[str, float], probes: dict[str, str]) -> dict[str, float]:
    """Labelled `metrics` as seen through one probe per task ({task: label}, e.g. a run's
    "probes"): its numbers under the interface names (`eval/equivariance/<name>`), the other
    probes' left out ("?" for a task missing from `probes`: the results that record none), the
    other metrics as they are (for summaries keyed by the interface names, e.g.
    benchmarks/repro_summary.py)."""
    out = {}
    for name, value in metrics.items():
        split = split_qualified_metric(name)
        if split is None:
            out[name] = value
        elif probes.get(split[1].split("/")[1], UNKNOWN_PROBE) == split[0]:
            out[split[1]] = value
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return "" if value is None else str(value)


def _safe_name(metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", metric).strip("_")


def _unique_names(runs: list[dict[str, Any]]) -> None:
    names = [r["name"] for r in runs]
    for run in runs:
        if names.count(run["name"]) > 1:
            run["name"] = str(run["dir"])


def _labelled(values: dict[str, float]) -> dict[str, float]:
    return {metric_label(name): value for name, value in values.items()}


def build_table(runs: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows): run, flags, step, then every metric seen, by its label (`metric_label`:
    equivariance numbers with their probe settings), sorted."""
    metrics = {m for r in runs for m in r["latest"]} | {
        m for r in runs for f in r["floors"].values() for m in f
    }
    columns = ["run", *FLAG_COLUMNS, "step", *sorted({metric_label(m) for m in metrics})]
    rows = []
    for run in runs:
        flags = {k: run["flags"][k] for k in FLAG_COLUMNS}
        if run["start"] is not None:  # a model.init run: what it started from, at step 0
            blank = dict.fromkeys(FLAG_COLUMNS, "-")  # not trained by this run's method
            start_row = {"run": f"{run['name']} [starting model: {run['start']}]", **blank}
            rows.append({**start_row, "step": 0, **_labelled(run["start_metrics"])})
        latest = _labelled(run["latest"])
        rows.append({"run": run["name"], **flags, "step": run["step"], **latest})
        for floor, values in run["floors"].items():
            blank = dict.fromkeys(FLAG_COLUMNS, "-")
            floor_row = {"run": f"{run['name']} [{floor} floor]", **blank, "step": None}
            rows.append({**floor_row, **_labelled(values)})
    return columns, rows


def to_markdown(columns: list[str], rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def plot_metrics(runs: list[dict[str, Any]], out: Path) -> list[Path]:
    """One PNG per metric: value vs step, a line per run, floors dashed. Returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    metrics = sorted({m for r in runs for m in r["history"]}, key=metric_label)
    paths = []
    for metric in metrics:
        fig, ax = plt.subplots(figsize=(6, 4))
        for i, run in enumerate(runs):
            colour = f"C{i % 10}"
            points = run["history"].get(metric)
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, marker="o", color=colour, label=run["name"])
            if metric in run["start_metrics"]:
                ax.plot(
                    [0],
                    [run["start_metrics"][metric]],
                    marker="*",
                    markersize=14,
                    linestyle="none",
                    color=colour,
                    label=f"{run['name']} [starting model]",
                )
            for j, (floor, values) in enumerate(sorted(run["floors"].items())):
                if metric in values:
                    ax.axhline(
                        values[metric],
                        color=colour,
                        linestyle=("--", ":", "-.")[j % 3],
                        linewidth=1,
                        label=f"{run['name']} [{floor} floor]",
                    )
        ax.set_xlabel("step")
        ax.set_ylabel(metric_label(metric))
        ax.set_title(metric_label(metric))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{_safe_name(metric)}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def _log_report_run(runs: list[dict[str, Any]], out: Path) -> str | None:
    """A new MLflow run "report" (in the first tracked run's experiment) with `out` as artifacts."""
    from equirecon.tracking import RUN_ID_FILE, mlflow_client, run_tracking_uri

    first = runs[0]
    tracking = first["flags"]["tracking"]
    if tracking.get("enabled") is False:
        return None
    client = mlflow_client(run_tracking_uri(first["dir"], tracking.get("uri") or ""))
    experiment_id = None
    for run in runs:
        id_file = run["dir"] / RUN_ID_FILE
        if id_file.is_file():
            try:
                experiment_id = client.get_run(id_file.read_text().strip()).info.experiment_id
                break
            except Exception:  # noqa: BLE001 - a run id from another tracking server
                continue
    if experiment_id is None:
        name = tracking.get("experiment") or "equirecon"
        exp = client.get_experiment_by_name(name)
        experiment_id = exp.experiment_id if exp else client.create_experiment(name)
    report = client.create_run(
        experiment_id,
        run_name="report",
        tags={"equirecon.report": "true", "equirecon.runs": ",".join(r["name"] for r in runs)},
    )
    client.log_artifacts(report.info.run_id, str(out))
    client.set_terminated(report.info.run_id)
    return report.info.run_id


def build_report(
    run_dirs: list[str | Path], out: str | Path | None = None, log_mlflow: bool = True
) -> dict[str, Any]:
    """Write the table (markdown + csv) and plots of `run_dirs` to `out`; log them to MLflow.

    Returns:
        {"out": folder, "columns", "rows", "markdown", "plots": [png paths], "mlflow_run_id"}.
    """
    if not run_dirs:
        raise ValueError("report needs at least one run directory")
    runs = [load_run(d) for d in run_dirs]
    _unique_names(runs)
    out = Path(out) if out is not None else Path("reports") / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    columns, rows = build_table(runs)
    markdown = to_markdown(columns, rows)
    (out / "table.md").write_text(markdown)
    with (out / "table.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") if row.get(c) is not None else "" for c in columns})
    plots = plot_metrics(runs, out / "plots")
    run_id = _log_report_run(runs, out) if log_mlflow else None
    return {
        "out": str(out),
        "columns": columns,
        "rows": rows,
        "markdown": markdown,
        "plots": [str(p) for p in plots],
        "mlflow_run_id": run_id,
    }
