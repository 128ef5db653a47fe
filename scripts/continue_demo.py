"""The evaluation and the results page of `scripts/continue_demo.sh` (issue #26 at demo scale).

    .venv/bin/python scripts/continue_demo.py eval OUT_DIR FINAL_STEP [eval.key=value ...]
    .venv/bin/python scripts/continue_demo.py table OUT_DIR DOC.md [key=value ...]

OUT_DIR holds the runs `baseline`, `continue_recon` and `continue_plain`.

`eval`: step 0 (a `model.init` run's starting model) and FINAL_STEP of both continued runs, each
on every task of its run config (`equirecon eval`: the context view of the equivariance probe),
then in the probe's full view (`scripts/demo_eval.py`: the transforms that move pixels out, a
smaller probe); the probe's floors (raw pixels, a random-init ViT) once, in both views.
Resumable: a checkpoint evaluated before (OUT_DIR/.done/eval-RUN-STEP) is skipped.

`table`: `equirecon report` of both runs (OUT_DIR/report), and the page DOC.md: the starting model
(step 0: the baseline's export, loaded) beside the two continued models on every task, the
equivariance R² in both views beside the floors, the training losses, and the reconstructions
of the +recon run (its `recon_grid.png` copied next to DOC.md). `key=value` pairs after DOC.md are
listed under "Setup".
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from equirecon.rundir import RESULT_FILE_RE
from evals.results import labelled_metrics, read_floor_results, read_step_results, result_probes

SCRIPTS = Path(__file__).resolve().parent
RUNS = (("continue_plain", "continued −recon"), ("continue_recon", "continued +recon"))
TASK_METRICS = (
    ("eval/knn/top1", "kNN top-1 (%)"),
    ("eval/linear/top1", "linear top-1 (%)"),
    ("eval/homography/mce", "homography MCE (px, ↓)"),
    ("eval/segmentation/miou", "segmentation mIoU"),
    ("eval/depth/rmse", "depth RMSE (m, ↓)"),
)
VIEWS = ("context", "full")
FLOORS = (("pixels", "pixels floor"), ("random", "random-ViT floor"))


def evaluate(out: Path, final_step: int, overrides: list[str]) -> int:
    """Step 0 (the starting model) and `final_step` of both continued runs, each on every task of
    the run config and then in the probe's second view; the floors once (they depend on the
    backbone's shape only). Each finished checkpoint leaves OUT/.done/eval-RUN-STEP and is
    skipped by a rerun. Returns the largest exit code (2 or more: a user error or a full disk,
    after which nothing further is started)."""
    sys.path.insert(0, str(SCRIPTS))
    import demo_eval

    from equirecon.cli import main as cli

    jobs = [(name, step) for step in (0, final_step) for name, _ in reversed(RUNS)]
    codes = [0]
    for i, (name, step) in enumerate(jobs, 1):
        run, done = out / name, out / ".done" / f"eval-{name}-{step}"
        what = f"[eval {i}/{len(jobs)}] {name} step {step}" + " (the starting model)" * (step == 0)
        if done.is_file():
            print(f"\n== {what}: done before, skipped", flush=True)
            continue
        print(
            f"\n== {what}: every task of the run config, then the probe's second view", flush=True
        )
        t0 = time.perf_counter()
        checkpoint = str(run / "checkpoints" / f"step_{step:08d}")
        codes.append(cli(["eval", "--checkpoint", checkpoint, *overrides]))
        if codes[-1] < 2:
            floors = i == 1
            codes.append(demo_eval.evaluate(run, overrides, checkpoint=checkpoint, floors=floors))
        if max(codes) >= 2:
            break
        if codes[-1] == 0 and codes[-2] == 0:
            done.parent.mkdir(parents=True, exist_ok=True)
            done.touch()
        print(f"== {what}: {time.perf_counter() - t0:.0f} s", flush=True)
    return max(codes)


# ---- the page ---------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def step_metrics(run: Path) -> dict[int, dict[str, float]]:
    """{step: its labelled metrics, every probe's file merged (the configured eval last)}."""
    out: dict[int, dict[str, float]] = {}
    for result in read_step_results(run):
        out.setdefault(int(result["step"]), {}).update(labelled_metrics(result))
    return out


def configured_probe(run: Path) -> str | None:
    """The equivariance probe label of the run config's own eval (context/global/segmentation)."""
    for result in read_step_results(run):
        if RESULT_FILE_RE.match(Path(result["path"]).name).group(2) is None:
            return result_probes(result).get("equivariance")
    return None


def losses(run: Path) -> dict[int, dict[str, float]]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {int(r["step"]): r for r in rows}


def _config(run: Path) -> dict[str, Any]:
    path = run / "config.yaml"
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def page(out: Path, doc: Path, setup: dict[str, str]) -> str:
    runs = {name: out / name for name, _ in RUNS}
    metrics = {name: step_metrics(run) for name, run in runs.items()}
    final = {name: max(m) if m else None for name, m in metrics.items()}
    start = metrics["continue_recon"].get(0) or metrics["continue_plain"].get(0) or {}
    columns = [("starting model (step 0)", start)] + [
        (f"{title} (step {final[name]})", metrics[name].get(final[name], {}))
        for name, title in RUNS
    ]
    cfg = _config(runs["continue_recon"])
    init = (cfg.get("model") or {}).get("init", "?")
    lines = [
        "# Continued pretraining at demo scale (issue #26)",
        "",
        f"Written by `scripts/continue_demo.sh` on {time.strftime('%Y-%m-%d %H:%M')}; every "
        "number below is read from the runs' `evals/*.json` and `metrics.jsonl` under "
        f"`{out}`.",
        "",
        "## Setup",
        "",
        "- baseline: `configs/demo_cpu.yaml` with `recon.enabled=false` (plain DINOv2), exported "
        "with `equirecon export`;",
        f"- two continuations from the export (`model.init={init}`), the same steps and recipe, "
        "SE(2) reconstruction on (+recon) and off (−recon);",
        "- the starting model is step 0 of the continued runs: the loaded export, before the "
        "first update (`equirecon report` shows it as `RUN [starting model: FILE]`).",
    ]
    lines += [f"- {key}: {value}" for key, value in setup.items()]
    starts = [metrics[name].get(0, {}).get("eval/knn/top1") for name, _ in RUNS]
    if None not in starts and starts[0] != starts[1]:
        lines.append(f"- note: step 0 of the two runs differs in kNN ({starts}): check the runs")

    lines += ["", "## Frozen-feature evaluations", ""]
    lines.append("| task | " + " | ".join(title for title, _ in columns) + " |")
    lines.append("|---|" + "---|" * len(columns))
    for key, title in TASK_METRICS:
        cells = [_fmt(values.get(key), 2 if "top1" in key else 3) for _, values in columns]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")

    probe = configured_probe(runs["continue_recon"])
    if probe is not None:
        view, rest = probe.split("/", 1)
        floors = read_floor_results(runs["continue_recon"])
        transforms = _transforms(runs["continue_recon"])
        lines += [
            "",
            f"## Equivariance R² (probe on [f(I); f(g I)], features/subset `{rest}`)",
            "",
            "context view: g on a larger image, centre crop (no fill); full view: g on the image "
            "itself, its zero fill visible. The full view is evaluated only for the transforms "
            "that move pixels out, with a smaller probe (`scripts/demo_eval.py`).",
            "",
        ]
        header = [title for title, _ in columns] + [title for _, title in FLOORS]
        lines.append("| transform | view | " + " | ".join(header) + " |")
        lines.append("|---|---|" + "---|" * len(header))
        for transform in transforms:
            for v in [view] + [x for x in VIEWS if x != view]:
                name = f"eval/equivariance/{v}/{rest}/{transform}_r2"
                cells = [values.get(name) for _, values in columns]
                cells += [floors.get(floor, {}).get(name) for floor, _ in FLOORS]
                if all(c is None for c in cells):
                    continue
                lines.append(f"| {transform} | {v} | " + " | ".join(_fmt(c) for c in cells) + " |")

    lines += ["", "## Training losses", ""]
    lines.append("| run | step | L_total | L_SSL | L_recon |")
    lines.append("|---|---|---|---|---|")
    freeze = int((cfg.get("train") or {}).get("freeze_backbone_steps") or 0)
    for name, title in (("baseline", "baseline"), *RUNS):
        rows = losses(out / name)
        if not rows:
            continue
        steps = {min(rows), max(rows)}
        if name != "baseline" and freeze in rows:
            steps.add(freeze)
        for step in sorted(steps):
            r = rows[step]
            where = " (unfreeze)" if name != "baseline" and step == freeze and freeze else ""
            lines.append(
                f"| {title} | {step}{where} | {_fmt(r.get('train/loss_total'))} | "
                f"{_fmt(r.get('train/loss_ssl'))} | {_fmt(r.get('train/loss_recon'))} |"
            )

    grid = runs["continue_recon"] / "recon_grid.png"
    if grid.is_file():
        images = doc.parent / doc.stem
        images.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(grid, images / "recon_grid.png")
        lines += [
            "",
            "## Reconstructions (+recon run, last step)",
            "",
            "Rows: u, v2 = g_θ(u), then for each k the target u_k = g_{kθ/(K+1)}(u) and its "
            "reconstruction û_k, one column per image (the run's `recon_grid.png`; the starting "
            "model has no trained decoders).",
            "",
            f"![reconstructions]({doc.stem}/recon_grid.png)",
        ]
    return "\n".join(lines) + "\n"


def _transforms(run: Path) -> list[str]:
    settings = ((_config(run).get("eval") or {}).get("equivariance") or {}).get("transforms", "")
    return [t.strip() for t in str(settings).split(",") if t.strip()]


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "eval":
        return evaluate(Path(argv[1]), int(argv[2]), argv[3:])
    if len(argv) >= 3 and argv[0] == "table":
        from evals.report import build_report

        out, doc = Path(argv[1]), Path(argv[2])
        report = build_report([out / name for name, _ in reversed(RUNS)], out=out / "report")
        print(f"report of both runs (`equirecon report`): {report['out']}/table.md")
        setup = dict(a.split("=", 1) for a in argv[3:] if "=" in a)
        setup["report"] = f"{report['out']}/table.md (`equirecon report` of both runs)"
        doc.parent.mkdir(parents=True, exist_ok=True)
        doc.write_text(page(out, doc, setup))
        print(f"wrote {doc}")
        return 0
    usage = __doc__.strip().splitlines()[2:4]
    print("usage:\n" + "\n".join(usage), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
