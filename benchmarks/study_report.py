"""Markdown tables of the study's mechanism checks (issue #14), from the files the scripts wrote.

    python benchmarks/study_report.py SETTING [--runs runs/study] [--out FILE]

Sections: reference levels of L_recon (recon_levels.json), L_recon of every +recon run at the
end of training (last 200 steps of metrics.jsonl), the backbone-gradient split per checkpoint
(grad_ratio_*.json), rotation R² of the other probe features (evals/rotation_*.json) and the
final metrics of the mechanism runs beside the study runs of seed 0.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

FINAL_KEYS = (
    ("eval/equivariance/rotation_r2", "rotation R²"),
    ("eval/equivariance/se2_r2", "SE(2) R²"),
    ("eval/equivariance/translation_r2", "translation R²"),
    ("eval/knn/top1", "kNN top-1"),
    ("eval/linear/top1", "linear top-1"),
)


def _num(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _json(path: Path) -> dict | list | None:
    return json.loads(path.read_text()) if path.is_file() else None


def levels_table(out_dir: Path) -> list[str]:
    data = _json(out_dir / "recon_levels.json")
    if not data:
        return ["(recon_levels.json missing)"]
    lines = ["| predictor of u_k | L_recon |", "|---|---|"]
    lines += [f"| {r['predictor']} | {r['l_recon']:.3f} |" for r in data["rows"]]
    return lines


def final_recon_losses(runs: Path, setting: str) -> list[str]:
    lines = ["| run | L_recon (mean of the last 200 steps) | L_SSL (same steps) |", "|---|---|---|"]
    for run in sorted(runs.glob(f"{setting}_*_s*")):
        path = run / "metrics.jsonl"
        if not run.is_dir() or not path.is_file():
            continue
        rows = [json.loads(line) for line in path.read_text().splitlines() if line]
        last = [r for r in rows if r["step"] > rows[-1]["step"] - 200]
        if not last or "train/loss_recon" not in last[-1]:
            continue
        rec = statistics.fmean(r["train/loss_recon"] for r in last)
        ssl = statistics.fmean(r["train/loss_ssl"] for r in last)
        lines.append(f"| {run.name} (step {rows[-1]['step']}) | {rec:.3f} | {ssl:.3f} |")
    return lines


def grad_table(out_dir: Path) -> list[str]:
    lines = [
        "| run | checkpoint | ‖∇L_SSL‖ | ‖∇λL_recon‖ | ratio | cosine |",
        "|---|---|---|---|---|---|",
    ]
    for path in sorted(out_dir.glob("grad_ratio_*.json")):
        data = _json(path)
        for r in data["rows"]:
            lines.append(
                f"| {Path(data['run']).name} | {r['checkpoint']} | {r['grad_ssl']:.3f} | "
                f"{r['grad_recon']:.3f} | {_num(r['ratio'], '.3f')} | {_num(r['cosine'], '+.3f')} |"
            )
    return lines


def feature_table(runs: Path, setting: str) -> list[str]:
    lines = ["| run | global (headline) | grid (CLS + 2×2) | equi (z_equi) |", "|---|---|---|---|"]
    for run in sorted(runs.glob(f"{setting}_*_s*")):
        if not run.is_dir():
            continue
        finals = sorted((run / "evals").glob("step_????????.json"))
        if not finals:
            continue
        cells = [_json(finals[-1])["metrics"].get("eval/equivariance/rotation_r2")]
        for kind in ("grid", "equi"):
            data = _json(run / "evals" / f"rotation_{kind}.json")
            cells.append(data["metrics"]["eval/equivariance/rotation_r2"] if data else None)
        text = " | ".join(f"{c:.3f}" if c is not None else "–" for c in cells)
        lines.append(f"| {run.name} | {text} |")
    return lines


def mechanism_table(runs: Path, setting: str, seed: int = 0) -> list[str]:
    head = " | ".join(label for _, label in FINAL_KEYS)
    lines = [f"| run (seed {seed}) | {head} |", "|---" * (len(FINAL_KEYS) + 1) + "|"]
    for run in sorted(runs.glob(f"{setting}_*_s{seed}")):
        finals = sorted((run / "evals").glob("step_????????.json")) if run.is_dir() else []
        if not finals:
            continue
        metrics = _json(finals[-1])["metrics"]
        cells = [f"{metrics[k]:.3f}" if k in metrics else "–" for k, _ in FINAL_KEYS]
        lines.append(f"| {run.name} | {' | '.join(cells)} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("setting")
    parser.add_argument("--runs", type=Path, default=Path("runs/study"))
    parser.add_argument("--results", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    out_dir = args.results or Path("docs/results/study") / args.setting
    sections = [
        ("Reference levels of L_recon", levels_table(out_dir)),
        ("L_recon reached by the runs", final_recon_losses(args.runs, args.setting)),
        ("Backbone gradients", grad_table(out_dir)),
        (
            "Rotation R² by probe features (final checkpoints)",
            feature_table(args.runs, args.setting),
        ),
        ("Mechanism runs beside the study runs", mechanism_table(args.runs, args.setting)),
    ]
    text = "\n".join(f"### {title}\n\n" + "\n".join(lines) + "\n" for title, lines in sections)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
