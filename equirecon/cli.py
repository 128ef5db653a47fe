"""The `equirecon` command line: `equirecon <verb> …` (also `python -m equirecon …`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys


def _cmd_data(args: argparse.Namespace) -> int:
    if args.data_cmd == "build-demo":
        from data_pipeline.demo import build_demo

        manifest = build_demo(args.out, seed=args.seed)
        counts = manifest.get("counts", {})
        print(f"demo shards in {args.out}: {json.dumps(counts)}")
        return 0
    raise SystemExit(f"unknown data command {args.data_cmd!r}")


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from equirecon.config import load_config
    from pretrain.train import pretrain

    cfg = load_config(args.config, args.overrides)
    last = pretrain(cfg)
    if last:
        print(json.dumps({k: round(v, 5) for k, v in last.items()}))
    return 0


def format_table(rows: dict[str, float]) -> str:
    width = max((len(k) for k in rows), default=10)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  --------"]
    lines += [f"{k:<{width}}  {v:8.4f}" for k, v in rows.items()]
    return "\n".join(lines)


def _cmd_eval(args: argparse.Namespace) -> int:
    from evals.run import evaluate_checkpoint

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    tasks = [t for t in args.tasks.split(",") if t] if args.tasks else None
    result = evaluate_checkpoint(
        args.checkpoint, tasks=tasks, data=args.data, overrides=args.overrides
    )
    print(f"checkpoint {result['checkpoint']} (step {result['step']}):")
    print(format_table(result["metrics"]))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from evals.run import resolve_checkpoint
    from pretrain.export import export_checkpoint

    out = export_checkpoint(resolve_checkpoint(args.checkpoint), args.out)
    print(f"exported backbone to {out} (model.safetensors + config.json)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="equirecon", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)

    data = verbs.add_parser("data", help="build WebDataset shards")
    data_cmds = data.add_subparsers(dest="data_cmd", required=True)
    demo = data_cmds.add_parser("build-demo", help="offline demo shards from bundled real images")
    demo.add_argument("--out", required=True)
    demo.add_argument("--seed", type=int, default=0)
    data.set_defaults(func=_cmd_data)

    pre = verbs.add_parser("pretrain", help="pretrain (single process, torchrun or Slurm)")
    pre.add_argument("--config", required=True, help="YAML delta over the defaults")
    pre.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=10")
    pre.set_defaults(func=_cmd_pretrain)

    ev = verbs.add_parser("eval", help="evaluate a checkpoint")
    ev.add_argument(
        "--checkpoint", required=True, help="RUN_DIR/checkpoints/step_X (or .../latest)"
    )
    ev.add_argument("--tasks", default="", help="comma-separated: equivariance,knn")
    ev.add_argument("--data", default=None, help="dataset root (default: the run's data.path)")
    ev.add_argument("overrides", nargs="*", help="key=value overrides of eval.* keys")
    ev.set_defaults(func=_cmd_eval)

    ex = verbs.add_parser("export", help="export a checkpoint's backbone (safetensors, timm)")
    ex.add_argument(
        "--checkpoint", required=True, help="RUN_DIR/checkpoints/step_X (or .../latest)"
    )
    ex.add_argument("--out", required=True)
    ex.set_defaults(func=_cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
