"""`equirecon report RUN_DIR …`: the eval metrics of several runs as a table and plots.

Writes to OUT (default `reports/<timestamp>`):
- `table.md` and `table.csv`: one row per run (its method and reconstruction flags from
  `config.yaml`, the step of its latest eval) with the latest value of every eval metric, plus
  one row per floor (`evals/floor_<name>.json`) where a run has them;
- `plots/<metric>.png`: the metric against the checkpoint step, one line per run (floors as
  dashed horizontal lines);
and logs the folder as the artifacts of a new MLflow run named "report" in the runs' experiment.
"""

from __future__ import annotations

import csv
import json
import math
import re
import time
from pathlib import Path
from typing import Any

import yaml

from equirecon.rundir import EVALS_DIR
from evals.results import read_step_results

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
    }


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """A run's flags, eval history {metric: [(step, value)]}, latest values and floors."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    history: dict[str, list[tuple[int, float]]] = {}
    for result in read_step_results(run_dir):
        for name, value in (result.get("metrics") or {}).items():
            history.setdefault(name, []).append((int(result["step"]), float(value)))
    latest = {name: points[-1][1] for name, points in history.items()}
    floors = {}
    for path in sorted((run_dir / EVALS_DIR).glob("floor_*.json")):
        try:
            floors[path.stem[len("floor_") :]] = json.loads(path.read_text()).get("metrics", {})
        except (OSError, ValueError):
            continue
    steps = [p[0] for points in history.values() for p in points]
    return {
        "dir": run_dir,
        "name": run_dir.name,
        "flags": _run_flags(run_dir),
        "history": history,
        "latest": latest,
        "step": max(steps) if steps else None,
        "floors": floors,
    }


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


def build_table(runs: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows): run, flags, step, then every metric seen (sorted)."""
    metrics = sorted({m for r in runs for m in r["latest"]} | {
        m for r in runs for f in r["floors"].values() for m in f
    })  # fmt: skip
    columns = ["run", *FLAG_COLUMNS, "step", *metrics]
    rows = []
    for run in runs:
        flags = {k: run["flags"][k] for k in FLAG_COLUMNS}
        rows.append({"run": run["name"], **flags, "step": run["step"], **run["latest"]})
        for floor, values in run["floors"].items():
            blank = dict.fromkeys(FLAG_COLUMNS, "-")
            rows.append({"run": f"{run['name']} [{floor} floor]", **blank, "step": None, **values})
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
    metrics = sorted({m for r in runs for m in r["history"]})
    paths = []
    for metric in metrics:
        fig, ax = plt.subplots(figsize=(6, 4))
        for i, run in enumerate(runs):
            colour = f"C{i % 10}"
            points = run["history"].get(metric)
            if points:
                steps, values = zip(*points)
                ax.plot(steps, values, marker="o", color=colour, label=run["name"])
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
        ax.set_ylabel(metric)
        ax.set_title(metric)
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
