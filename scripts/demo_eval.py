"""The demo's evaluation of the equivariance probe in two views, and its results table.

    .venv/bin/python scripts/demo_eval.py RUN_DIR [eval.key=value ...]

Step 3 of `scripts/demo.sh`, after `equirecon eval --checkpoint RUN_DIR/checkpoints/latest` (every
task, as the run config says). For the final checkpoint of RUN_DIR this runs `equirecon eval`
(in this process, `equirecon.cli.main`; `eval.*` overrides as given) for

- the probe's floors, raw pixels and a random-init ViT of the same shape, in the run config's
  view (the demo: context): `evals/floor_<name>.json`;
- the model and both floors in the other view of context and full, on the transforms whose two
  views differ (those that move pixels out of the image: rotation, translation, SE(2); for
  color and blur both views are the same images), with a smaller probe (`SECOND_VIEW_PROBE`,
  said under the table): `evals/step_X.<tag>.json`, `floor_<name>.<tag>.json`, never over the
  first view's files (`evals.results`);

then prints the table: the first and last training losses; the equivariance R² of the model
beside its floors, one row per transform, for each view; the other eval metrics. `--table`
prints the table of a run's existing files only. A number that was not evaluated is shown as
"-". Exit code: the largest of the evals' (0 all ran, 1 a task failed, 2 or more: a user error
or a full disk, after which no further eval is started).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from equirecon.rundir import RESULT_FILE_RE
from evals.results import labelled_metrics, read_floor_results, read_step_results, result_probes

VIEWS = ("context", "full")  # the two views the demo shows (the run config's first)
FLOORS = (("pixels", "pixels"), ("random", "random ViT"))
VIEW_TEXT = {
    "context": "g on a larger image, centre crop: no fill, only the content tells θ",
    "full": "g on the image itself, its zero fill visible: the fill's shape gives θ away",
    "disk": "both images masked to the inscribed disk: no fill visible",
}
CELL = 11
# The second view's probe (`eval.equivariance.*`), where the run's is larger: it is there to show
# what the zero fill gives away, and adds well under a minute to the demo this way.
SECOND_VIEW_PROBE = {"train_images": 512, "epochs": 10, "hidden": 256}


def _cell(value: float | None) -> str:
    return f"{value:>{CELL}.4f}" if value is not None else f"{'-':>{CELL}}"


def train_table(run: Path) -> list[str]:
    """First and last step of the training losses, and the last step's throughput."""
    path = run / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not rows:
        return []
    first, last = rows[0], rows[-1]
    lines = [f"{'metric':<34} {'first step':>11} {'last step':>11}"]
    for k in ("train/loss_total", "train/loss_ssl", "train/loss_recon"):
        if k in last:
            lines.append(f"{k:<34} {first.get(k, float('nan')):>11.4f} {last[k]:>11.4f}")
    if "train/img_per_s" in last:
        speed = last["train/img_per_s"]
        lines.append(f"{'train/img_per_s (last step)':<34} {'':>11} {speed:>11.1f}")
    return lines


def _image_side(run: Path, configured: dict[str, Any]) -> int | None:
    side = (configured.get("eval") or {}).get("img_size")
    if side:
        return int(side)
    try:
        return int(yaml.safe_load((run / "config.yaml").read_text())["data"]["global_size"])
    except (OSError, KeyError, TypeError, ValueError):
        return None


def equivariance_table(run: Path) -> list[str]:
    """The equivariance R² of the last evaluated step and of the floors, per transform, in the
    run config's view and the other of `VIEWS`."""
    results = read_step_results(run)
    if not results:
        return ["(no evaluation results in " + str(run / "evals") + ")"]
    step = max(int(r["step"]) for r in results)
    at_step = [r for r in results if int(r["step"]) == step]
    configured = next(
        (r for r in at_step if RESULT_FILE_RE.match(Path(r["path"]).name).group(2) is None),
        at_step[-1],
    )
    label = result_probes(configured).get("equivariance")
    if label is None:
        return []
    view, rest = label.split("/", 1)
    features, _, subset = rest.partition("/")
    views = [view] + [v for v in VIEWS if v != view]
    model: dict[str, float] = {}
    for result in at_step:  # the configured eval last: its numbers win
        model.update(labelled_metrics(result))
    floors = read_floor_results(run)
    settings = (configured.get("eval") or {}).get("equivariance") or {}
    transforms = [t.strip() for t in str(settings.get("transforms", "")).split(",") if t.strip()]
    details = (configured.get("details") or {}).get("equivariance") or {}
    side = _image_side(run, configured)

    def r2(source: dict[str, float], v: str, transform: str) -> float | None:
        return source.get(f"eval/equivariance/{v}/{rest}/{transform}_r2")

    columns = [("model", model)] + [(title, floors.get(name, {})) for name, title in FLOORS]
    width = len(columns) * (CELL + 1)
    lines = [
        f"equivariance R² of step {step} beside its floors (raw pixels, a random-init ViT): h "
        f"reads θ off\n[f(I); f(g_θ I)], features {features}, on the {subset or 'natural'} images",
    ]
    lines += [f"  {v} view: {VIEW_TEXT.get(v, v)}" for v in views]
    lines.append(f"{'':<12}" + "".join(f"  {f' {v} view '.center(width - 1, '-')}" for v in views))
    lines.append(
        f"{'transform':<12}"
        + "".join("  " + " ".join(f"{t:>{CELL}}" for t, _ in columns) for _ in views)
    )
    same = []
    for transform in transforms:
        row = f"{transform:<12}"
        for v in views:
            cells = [r2(source, v, transform) for _, source in columns]
            no_fill = side is not None and details.get(transform, {}).get("source_size") == side
            if v != view and all(c is None for c in cells) and no_fill:
                row += "  " + f"{'= ' + view:>{width - 1}}"  # the same images in both views
                same.append(transform)
            else:
                row += "  " + " ".join(_cell(c) for c in cells)
        lines.append(row.rstrip())
    if same:
        lines.append(
            f"  (= {view}: no pixel leaves the image under {', '.join(same)}: both views are "
            "the same images, evaluated once)"
        )
    for v in views[1:]:  # a second view run with other probe sizes says so
        other = next(
            (r for r in at_step if result_probes(r).get("equivariance") == f"{v}/{rest}"), None
        )
        if other is None:
            continue
        theirs = (other.get("eval") or {}).get("equivariance") or {}
        sizes = ("train_images", "test_images", "views_per_image", "epochs", "hidden")
        changed = [
            f"{k} {theirs.get(k)} (not {settings.get(k)})"
            for k in sizes
            if theirs.get(k) != settings.get(k)
        ]
        if changed:
            lines.append(
                f"  ({v} view: a smaller probe, to keep the demo short: {', '.join(changed)})"
            )
    return lines


def other_metrics(run: Path) -> list[str]:
    """The last evaluated step's metrics of the tasks without a probe (kNN, linear, ...)."""
    results = [
        r
        for r in read_step_results(run)
        if RESULT_FILE_RE.match(Path(r["path"]).name).group(2) is None
    ]
    if not results:
        return []
    metrics = results[-1].get("metrics") or {}
    return [
        f"{k:<34} {'':>11} {v:>11.4f}"
        for k, v in metrics.items()
        if not k.startswith("eval/equivariance/")
    ]


def probe_plan(checkpoint: str, overrides: list[str]) -> tuple[str, str, list[str], list[str]]:
    """(the view of the eval settings, the other of `VIEWS`, the transforms whose two views
    differ, the probe sizes of the other view: `SECOND_VIEW_PROBE` where it is smaller) under the
    settings `equirecon eval` uses: the checkpoint's config, then `overrides`."""
    from data_pipeline.transforms import build_transform
    from equirecon.checks import split_names
    from evals.equivariance import context_size
    from evals.run import _apply_eval_settings, checkpoint_config, resolve_checkpoint

    cfg = checkpoint_config(resolve_checkpoint(checkpoint, verify=False))
    e = _apply_eval_settings(cfg.eval, None, overrides)
    side = e.img_size or cfg.data.global_size
    names = split_names(e.equivariance.transforms)
    moving = [n for n in names if context_size(build_transform(n, side), side) != side]
    view = e.equivariance.view
    sizes = [
        f"eval.equivariance.{key}={cap}"
        for key, cap in SECOND_VIEW_PROBE.items()
        if getattr(e.equivariance, key) > cap
    ]
    return view, next(v for v in VIEWS if v != view), moving, sizes


def evaluate(
    run: Path, overrides: list[str], checkpoint: str | None = None, floors: bool = True
) -> int:
    """The floors in the configured view, and the model and its floors in the other view (see
    the module docstring); the largest exit code of those evals. `checkpoint`: another one of
    the run's than `latest`; `floors`: False leaves the floors out (the model's second view
    only)."""
    from equirecon.cli import main as cli

    checkpoint = checkpoint or str(run / "checkpoints" / "latest")
    view, other, moving, sizes = probe_plan(checkpoint, overrides)
    base = ["eval", "--checkpoint", checkpoint, "--tasks", "equivariance", *overrides]
    second = [f"eval.equivariance.view={other}", f"eval.equivariance.transforms={','.join(moving)}"]
    second += sizes
    names = ("pixels", "random") if floors else ()
    jobs = [(f"floor {f}, {view} view", [*base, "--floor", f]) for f in names]
    if moving:
        jobs.append((f"model, {other} view", [*base, *second]))
        jobs += [(f"floor {f}, {other} view", [*base, "--floor", f, *second]) for f in names]
    codes, seconds = [], {}
    for what, argv in jobs:
        print(f"\n== equivariance probe: {what}", flush=True)
        t0 = time.perf_counter()
        codes.append(cli(argv))
        seconds[what] = time.perf_counter() - t0
        if codes[-1] >= 2:  # a user error (a path, a setting): the next evals would repeat it
            break
    total = {
        v: sum(t for w, t in seconds.items() if w.endswith(f"{v} view")) for v in (view, other)
    }
    first = f"{total[view]:.0f} s for the floors in the {view} view, " if floors else ""
    print(
        f"\nequivariance probe: {first}{total[other]:.0f} s for the model"
        f"{' and its floors' * floors} in the {other} view "
        f"({', '.join(moving) or 'no transform moves pixels out of the image'})"
    )
    return max(codes, default=0)


def print_table(run: Path) -> None:
    print(f"\n== results ({run})")
    print("\n".join(train_table(run)))
    print()
    print("\n".join(equivariance_table(run)))
    others = other_metrics(run)
    if others:
        print()
        print("\n".join(others))


def main(argv: list[str]) -> int:
    table_only = "--table" in argv
    args = [a for a in argv if a != "--table"]
    if not args or args[0].startswith("-") or "=" in args[0]:
        print("usage: " + __doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    run, overrides = Path(args[0]), args[1:]
    code = 0 if table_only else evaluate(run, overrides)
    print_table(run)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
