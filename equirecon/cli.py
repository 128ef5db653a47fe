"""The `equirecon` command line: `equirecon <verb> …` (also `python -m equirecon …`)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from equirecon.errors import ConfigError, MissingPathError, UserError


def _cmd_data(args: argparse.Namespace) -> int:
    if args.data_cmd == "build-demo":
        from data_pipeline.demo import build_demo

        manifest = build_demo(
            args.out,
            seed=args.seed,
            segmentation=not args.no_segmentation,
            depth=not args.no_depth,
        )
        counts = dict(manifest.get("counts", {}))
        for dense in ("segmentation", "depth"):
            if manifest.get(dense):
                counts[dense] = manifest[dense]["counts"]
        print(f"demo shards in {args.out}: {json.dumps(counts)}")
        return 0
    if args.data_cmd == "build" and args.format:
        return _convert_layout(args)
    if args.data_cmd == "build":
        from data_pipeline.builder.dataset import build_shards

        build_shards(
            args.src,
            args.out,
            labels=args.labels or "none",
            shard_size_mb=args.shard_size_mb,
            workers=args.workers,
            subset=args.subset or "natural",
            split=args.split or "train",
            seed=args.seed,
        )
        return 0  # a build without any readable image raises DataError
    raise SystemExit(f"unknown data command {args.data_cmd!r}")


def _convert_layout(args: argparse.Namespace) -> int:
    """`data build --format F`: a standard dataset layout -> shards of every split it has."""
    from data_pipeline.formats import convert

    given = [f"--{n}" for n in ("labels", "subset", "split") if getattr(args, n) is not None]
    if given:
        raise ConfigError(
            f"data build --format {args.format}: the layout sets labels, subsets and splits; "
            f"drop {' '.join(given)}",
            hint="--format writes every split of the layout with its own labels",
        )
    try:
        entries = convert(
            args.format,
            args.src,
            args.out,
            shard_size_mb=args.shard_size_mb,
            workers=args.workers,
            seed=args.seed,
        )
    except UserError:
        raise
    except FileNotFoundError as err:
        raise MissingPathError(f"data build --format {args.format}: {err}") from None
    except ValueError as err:  # LayoutError: --src lacks the layout
        raise ConfigError(
            f"data build --format {args.format}: {err}",
            hint=f"point --src at the root of a {args.format} dataset (layouts: README, "
            "data_pipeline/formats)",
        ) from None
    for name, entry in entries.items():
        print(
            f"{name}: {entry['num_samples']} samples, {entry['num_bad']} bad or unpaired files, "
            f"{len(entry['classes'])} classes"
        )
    return 0 if entries and all(e["num_samples"] > 0 for e in entries.values()) else 1


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from equirecon.config import load_config
    from launch.entry import pretrain

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


def _log_setup() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


def _cmd_eval(args: argparse.Namespace) -> int:
    from evals.results import starting_model
    from evals.run import evaluate_checkpoint, evaluate_export

    _log_setup()
    common = dict(
        tasks=args.tasks or None,
        overrides=args.overrides,
        floor=args.floor,
        out=args.out,
        device=args.device,
        config=args.config,
        progress=args.progress,
    )
    if args.export:
        if not args.data:
            raise ConfigError(
                "eval --export needs --data DIR (an export has no training config)",
                hint="add --data DATASET_ROOT",
            )
        result = evaluate_export(args.export, data=args.data, **common)
        what = f"export {result['export']}"
    else:
        result = evaluate_checkpoint(
            args.checkpoint, data=args.data, log_mlflow=not args.no_mlflow, **common
        )
        what = f"checkpoint {result['checkpoint']} (step {result['step']})"
        if (start := starting_model(result)) is not None:
            what += f", the starting model ({start})"
    floor = f", floor {args.floor}" if args.floor else ""
    print(f"{what}{floor}: {result['seconds']:.1f}s")
    print(format_table(result["metrics"]))
    print(
        "seconds per task: " + ", ".join(f"{k} {v:.1f}" for k, v in result["task_seconds"].items())
    )
    if result.get("skipped"):
        print(f"skipped (no data, see above): {', '.join(result['skipped'])}")
    for task, error in result.get("failed", {}).items():
        print(f"failed {task}: {error.splitlines()[0] if error else ''}")
    if result.get("path"):
        print(f"results: {result['path']}")
    return 1 if result.get("failed") else 0  # the others' results are written all the same


def _cmd_eval_watch(args: argparse.Namespace) -> int:
    from evals.watch import format_state, load_eval_fn, watch

    _log_setup()
    options = {
        "timeout_min": args.timeout_min,
        "partition": args.partition,
        "cpus_per_task": args.cpus_per_task,
        "gpus_per_node": args.gpus_per_node,
        "mem_gb": args.mem_gb,
        "account": args.account,
    }
    state = watch(
        args.run_dir,
        executor=args.executor,
        poll_seconds=args.poll_seconds,
        once=args.once,
        eval_fn=load_eval_fn(args.eval_fn) if args.eval_fn else None,
        handle_signals=True,
        overrides=args.overrides,
        config=args.config,
        max_attempts=args.max_attempts,
        max_parallel=args.max_parallel,
        executor_options=options,
        parent_pid=args.stop_with_parent,
    )
    print(format_state(state))
    failed = [n for n, e in state["checkpoints"].items() if e["state"] == "failed"]
    return 1 if failed else 0


def _cmd_report(args: argparse.Namespace) -> int:
    from evals.report import build_report

    _log_setup()
    report = build_report(args.run_dirs, out=args.out, log_mlflow=not args.no_mlflow)
    print(report["markdown"])
    print(f"report written to {report['out']} ({len(report['plots'])} plots)")
    if report.get("mlflow_run_id"):
        print(f"logged to MLflow run {report['mlflow_run_id']}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    """`equirecon bench NAME …`: the scripts of `benchmarks/` (in a source checkout)."""
    import importlib
    from pathlib import Path

    repo = str(Path(__file__).resolve().parents[1])
    if repo not in sys.path:
        sys.path.insert(0, repo)  # `benchmarks/` is not an installed package
    module = importlib.import_module(f"benchmarks.{BENCHMARKS[args.bench_name]}")
    return int(module.main(args.bench_args) or 0)


# `equirecon bench NAME` -> module of `benchmarks/` (each has `main(argv) -> int`).
BENCHMARKS = {
    "train-step": "train_step",
    "gpu-suite": "gpu_suite",
    "data-throughput": "data_throughput",
    "vs-dinov2": "vs_dinov2",
}


def _cmd_export(args: argparse.Namespace) -> int:
    from pretrain.export import export_checkpoint
    from pretrain.restore import resolve_checkpoint

    out = export_checkpoint(resolve_checkpoint(args.checkpoint), args.out)
    print(f"exported backbone to {out} (model.safetensors + config.json)")
    return 0


def _cmd_checkpoints(args: argparse.Namespace) -> int:
    """`checkpoints verify RUN_DIR`: the state of every checkpoint, newest first; exit 1 if any
    is damaged."""
    from pathlib import Path

    from pretrain.checkpoint import list_checkpoints, resume_candidates
    from pretrain.checkpoint_integrity import verify_checkpoint

    root = Path(args.run_dir)
    root = root if root.name == "checkpoints" else root / "checkpoints"
    found = list_checkpoints(root)
    if not found:
        raise MissingPathError(f"no complete checkpoint under {root}")
    states = {path: verify_checkpoint(path) for _, path in reversed(found)}
    order = resume_candidates(root)
    width = max(len(p.name) for p in states) + len(" (latest)")
    for path, state in states.items():
        name = path.name + (" (latest)" if path == order[0] else "")
        print(f"{name:<{width}}  {state.describe()}")
    resume = next((p for p in order if states[p].usable), None)
    print(
        f"a resume starts from: {resume.name if resume else 'nothing (every checkpoint is damaged)'}"
    )
    return 1 if any(not s.usable for s in states.values()) else 0


def _cmd_launch(args: argparse.Namespace) -> int:
    from launch.slurm import (
        SlurmOptions,
        describe,
        format_results,
        submit_pretraining,
        wait_for_job,
    )

    _log_setup()
    extra = {}
    for item in args.sbatch:
        key, sep, value = item.partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not key:
            raise ConfigError(
                f"--sbatch takes KEY=VALUE or KEY (an sbatch option), got {item!r}",
                hint="e.g. --sbatch constraint=a100 --sbatch exclusive",
            )
        extra[key] = value if sep else True  # KEY alone: a flag such as exclusive
    options = SlurmOptions(
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        tasks_per_node=args.tasks_per_node,
        partition=args.partition,
        time_min=args.time,
        cpus_per_task=args.cpus_per_task,
        mem_gb=args.mem_gb,
        account=args.account,
        job_name=args.job_name,
        signal_delay_s=args.signal_delay_s,
        max_timeouts=args.max_timeouts,
        extra=extra,
    )
    try:
        options.check()
    except ValueError as err:
        raise ConfigError(f"launch slurm: {err}", hint="fix the option named above") from None
    job, cfg = submit_pretraining(args.config, args.overrides, options, folder=args.folder)
    print(json.dumps(describe(job, cfg, options)), flush=True)
    if not args.wait:
        return 0
    results = wait_for_job(job)
    print(format_results(results))
    return 0 if all(not r.get("preempted") for r in results) else 1


def _method_help() -> str:
    """The `method.name` choices, one line each, from the method registry (equirecon.methods)."""
    from equirecon.methods import get_spec, method_names

    lines = [f"  {n:<8} {get_spec(n).summary}".rstrip() for n in method_names()]
    return "method.name (base method; recon.enabled=false: without reconstruction):\n" + "\n".join(
        lines
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="equirecon",
        description=__doc__,
        epilog="--debug (anywhere) or EQUIRECON_DEBUG=1: show the traceback of user errors.",
    )
    verbs = parser.add_subparsers(dest="verb", required=True)

    data = verbs.add_parser("data", help="build WebDataset shards")
    data_cmds = data.add_subparsers(dest="data_cmd", required=True)
    demo = data_cmds.add_parser("build-demo", help="offline demo shards from bundled real images")
    demo.add_argument("--out", required=True)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument(
        "--no-segmentation", action="store_true", help="skip the segmentation scenes subset"
    )
    demo.add_argument("--no-depth", action="store_true", help="skip the rendered depth subset")
    build = data_cmds.add_parser(
        "build", help="WebDataset shards + DALI indexes from image folders (resumable)"
    )
    build.add_argument(
        "--src",
        required=True,
        help="folder or glob of JPEG/PNG/WebP images; with --format: the dataset's root folder",
    )
    build.add_argument("--out", required=True, help="dataset root (manifest.json, shards)")
    build.add_argument(
        "--format",
        choices=("imagefolder", "ade20k", "voc", "nyu-depth", "images"),
        default=None,
        help="read a standard layout (ImageNet folders, ADE20K, Pascal VOC, NYU Depth v2, plain "
        "or COCO image folders) and write every split it has (see data_pipeline/formats)",
    )
    build.add_argument("--labels", choices=("folder", "none"), default=None, help="default: none")
    build.add_argument("--shard-size-mb", type=float, default=256.0)
    build.add_argument("--workers", type=int, default=1, help="parallel processes")
    build.add_argument("--subset", default=None, help="natural (pretraining, default) | labelled")
    build.add_argument("--split", default=None, help="default: train")
    build.add_argument("--seed", type=int, default=0, help="seed of the file order")
    data.set_defaults(func=_cmd_data)

    from data_pipeline.backends import backend_names, get_backend
    from pretrain.strategies import get_strategy, strategy_names

    backends = "\n".join(f"  {n:<9} {get_backend(n).help}".rstrip() for n in backend_names())
    strategies = "\n".join(f"  {n:<9} {get_strategy(n).help}".rstrip() for n in strategy_names())
    pre = verbs.add_parser(
        "pretrain",
        help="pretrain (single process, torchrun or Slurm)",
        epilog=f"{_method_help()}\n\ndata.backend (the data reader):\n{backends}\n\n"
        f"train.strategy (how ranks share the work):\n{strategies}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pre.add_argument("--config", required=True, help="YAML delta over the defaults")
    pre.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=10")
    pre.set_defaults(func=_cmd_pretrain)

    from equirecon.eval_tasks import get_task_spec, task_names

    tasks = "\n".join(f"  {n:<13} {get_task_spec(n).summary}".rstrip() for n in task_names())
    readers: dict[str, list[str]] = {}  # subset of the dataset root -> the tasks reading it
    for name in task_names():
        for subset in get_task_spec(name).data:
            readers.setdefault(subset, []).append(name)
    reads = "; ".join(f"{d}/ {', '.join(n)}" for d, n in readers.items())
    ev = verbs.add_parser(
        "eval",
        help="evaluate a checkpoint or an export (`eval watch RUN_DIR`: every checkpoint)",
        epilog=f"eval.tasks (each with its settings eval.<task>.*):\n{tasks}\n\n"
        f"The subsets of the dataset root they read (train and val shards):\n  {reads}\n"
        "(equivariance: the subset eval.equivariance.subset, natural by default)\n"
        "A task whose subset is missing is skipped with one line; one named in --tasks is an\n"
        "error instead.\n\n"
        "Equivariance R² are also named with their probe, eval/equivariance/<view>/<features>/\n"
        "<transform>_r2 (<view>/<features>/<subset>/ for a subset other than natural). An eval\n"
        "whose probe (eval.equivariance.view, .features, .grid, .subset) is not the run\n"
        "config's writes RUN_DIR/evals/step_X.<view>-<features>[-<subset>].json (not\n"
        "step_X.json) and logs only the qualified names to MLflow; --out still names the file.\n\n"
        "exit codes: 0 every task ran (or was skipped); 1 a task failed: the results of the\n"
        "others are written and logged all the same; 2 a user error (an option or path, the\n"
        "data of a task named in --tasks missing, no task with its data).\n\n"
        "`equirecon eval watch RUN_DIR …` evaluates each new checkpoint of a run "
        "(see `equirecon eval watch --help`).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = ev.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="RUN_DIR/checkpoints/step_X (or .../latest)")
    source.add_argument("--export", help="an `equirecon export` directory (needs --data)")
    ev.add_argument(
        "--tasks",
        default="",
        help=f"comma-separated, or all: {','.join(task_names())} (default: eval.tasks; "
        "tasks named here must have their data)",
    )
    ev.add_argument("--data", default=None, help="dataset root (default: the run's data.path)")
    ev.add_argument(
        "--floor",
        choices=["pixels", "random", "patchstats"],  # evals.providers.FLOORS (torch-free here)
        default=None,
        help="evaluate a floor instead: raw pixels, a random-init ViT of the same shape, or "
        "patchstats (pooled first and second moments of raw p×p patches: a positive control "
        "for pooled global vectors)",
    )
    ev.add_argument("--out", default=None, help="results JSON (default: RUN_DIR/evals/…)")
    ev.add_argument("--device", default=None, help="cpu, cuda, … (default: cuda if available)")
    ev.add_argument("--config", default=None, help="take eval.* settings from this YAML config")
    ev.add_argument("--no-mlflow", action="store_true", help="write the JSON file only")
    ev.add_argument("--progress", action="store_true", help="show progress bars")
    ev.add_argument("overrides", nargs="*", help="key=value overrides of eval.* keys")
    ev.set_defaults(func=_cmd_eval)

    # `equirecon eval watch …` is routed here by `main` (argparse cannot mix it with the
    # positional overrides of `eval`).
    wa = verbs.add_parser("eval-watch", prog="equirecon eval watch", help=argparse.SUPPRESS)
    wa.add_argument("run_dir", help="the run directory (holds checkpoints/)")
    wa.add_argument("--executor", choices=["local", "slurm"], default="local")
    wa.add_argument("--poll-seconds", type=float, default=30.0)
    wa.add_argument("--once", action="store_true", help="evaluate what is there, wait for it, exit")
    wa.add_argument("--max-attempts", type=int, default=2, help="tries per checkpoint")
    wa.add_argument(
        "--max-parallel", type=int, default=None, help="jobs at once (1 local, 8 slurm)"
    )
    wa.add_argument("--timeout-min", type=int, default=240, help="time limit per eval job")
    wa.add_argument("--partition", default=None, help="Slurm partition")
    wa.add_argument("--cpus-per-task", type=int, default=None, help="Slurm CPUs per eval job")
    wa.add_argument("--gpus-per-node", type=int, default=None, help="Slurm GPUs per eval job")
    wa.add_argument("--mem-gb", type=float, default=None, help="Slurm memory per eval job")
    wa.add_argument("--account", default=None, help="Slurm account")
    wa.add_argument(
        "--eval-fn", default=None, help="module:function evaluating one checkpoint path"
    )
    wa.add_argument(
        "--config",
        default=None,
        help="take eval.* settings from this YAML config (e.g. configs/eval/imagenet_linear.yaml)",
    )
    wa.add_argument("--stop-with-parent", type=int, default=None, help=argparse.SUPPRESS)
    wa.add_argument("overrides", nargs="*", help="eval.* overrides for every eval job")
    wa.set_defaults(func=_cmd_eval_watch)

    ex = verbs.add_parser("export", help="export a checkpoint's backbone (safetensors, timm)")
    ex.add_argument(
        "--checkpoint", required=True, help="RUN_DIR/checkpoints/step_X (or .../latest)"
    )
    ex.add_argument("--out", required=True)
    ex.set_defaults(func=_cmd_export)

    be = verbs.add_parser(
        "bench",
        help="benchmarks: train-step (recon on/off), vs-dinov2, gpu-suite, data-throughput",
        description="Run a benchmark of benchmarks/ (see docs/benchmarks.md); the arguments "
        "after NAME go to it (`equirecon bench train-step --help`).",
    )
    be.add_argument("bench_name", choices=sorted(BENCHMARKS), metavar="NAME")
    be.add_argument("bench_args", nargs=argparse.REMAINDER, help="the benchmark's arguments")
    be.set_defaults(func=_cmd_bench)

    rep = verbs.add_parser("report", help="tables and plots of the eval metrics of runs")
    rep.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    rep.add_argument("--out", default=None, help="output folder (default: reports/<timestamp>)")
    rep.add_argument("--no-mlflow", action="store_true", help="do not log a report run")
    rep.set_defaults(func=_cmd_report)
    ck = verbs.add_parser("checkpoints", help="inspect the checkpoints of a run")
    ck_cmds = ck.add_subparsers(dest="checkpoints_cmd", required=True)
    ver = ck_cmds.add_parser(
        "verify",
        help="check every checkpoint's files against its manifest (size + SHA-256)",
        description="List every checkpoint of RUN_DIR, newest first, with its state: ok, "
        "damaged (which files, how), or unverified (written before manifests existed). "
        "Exit code 1 when any is damaged.",
    )
    ver.add_argument("run_dir", metavar="RUN_DIR", help="the run directory (or its checkpoints/)")
    ver.set_defaults(func=_cmd_checkpoints)

    la = verbs.add_parser("launch", help="launch pretraining on a cluster (Slurm via submitit)")
    la_cmds = la.add_subparsers(dest="launch_cmd", required=True)
    sl = la_cmds.add_parser(
        "slurm",
        help="submit a pretraining job to Slurm: one task per GPU, requeued on time limit",
        description="Submit `pretrain` as one Slurm job through submitit: one task per GPU, "
        "torch.distributed from the Slurm environment, one shared run directory and MLflow run; "
        "on the time-limit signal (USR2) it checkpoints at a step boundary and requeues itself.",
    )
    sl.add_argument("--config", required=True, help="YAML delta over the defaults")
    sl.add_argument("--nodes", type=int, default=1)
    sl.add_argument(
        "--gpus-per-node", type=int, required=True, help="GPUs (= tasks) per node; 0: CPU nodes"
    )
    sl.add_argument(
        "--tasks-per-node", type=int, default=None, help="ranks per node (default: GPUs, or 1)"
    )
    sl.add_argument("--partition", default=None, help="Slurm partition (default: the cluster's)")
    sl.add_argument("--time", type=int, default=60, help="time limit per job, minutes")
    sl.add_argument("--cpus-per-task", type=int, default=None, help="CPUs per rank")
    sl.add_argument("--mem-gb", type=float, default=None, help="memory per node")
    sl.add_argument("--account", default=None, help="Slurm account")
    sl.add_argument("--job-name", default="equirecon-pretrain")
    sl.add_argument(
        "--signal-delay-s",
        type=int,
        default=120,
        help="USR2 this many seconds before the time limit (checkpoint + requeue)",
    )
    sl.add_argument("--max-timeouts", type=int, default=3, help="requeues after time limits")
    sl.add_argument(
        "--sbatch",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other sbatch option, e.g. --sbatch constraint=a100 --sbatch exclusive",
    )
    sl.add_argument("--folder", default=None, help="submitit logs (default: RUN_DIR/slurm)")
    sl.add_argument("--wait", action="store_true", help="wait for the job (through requeues)")
    sl.add_argument("overrides", nargs="*", help="key=value config overrides")
    sl.set_defaults(func=_cmd_launch)
    return parser


DEBUG_ENV = "EQUIRECON_DEBUG"


def _take_debug_flag(argv: list[str]) -> tuple[list[str], bool]:
    """Remove `--debug` (anywhere before a benchmark's own arguments); True if it was there."""
    limit = argv.index("bench") + 2 if "bench" in argv[:1] else len(argv)
    kept = [a for i, a in enumerate(argv) if not (a == "--debug" and i < limit)]
    return kept, len(kept) != len(argv)


def report_user_error(err: UserError) -> None:
    """The error as one line on stderr (plus a hint line), without a traceback."""
    print(f"equirecon: error: {err}", file=sys.stderr)
    if err.hint:
        print(f"hint: {err.hint} (--debug or {DEBUG_ENV}=1 shows the traceback)", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run one verb. A `UserError` exits with its code (2; 3 for a `StorageError`: disk full,
    read-only or not writable, also when raised as a plain `OSError`) and one line; `--debug` or
    `EQUIRECON_DEBUG=1` lets it propagate with its traceback instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    argv, debug = _take_debug_flag(argv)
    debug = debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    if argv[:2] == ["eval", "watch"]:
        argv = ["eval-watch", *argv[2:]]
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `key=value` overrides may come after options too (`eval watch RUN --executor slurm k=v`):
    # argparse stops collecting a positional list at the first option, so gather the rest here.
    if extra:
        stray = [a for a in extra if a.startswith("-") or "=" not in a]
        if stray or not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
        args.overrides = [*(args.overrides or []), *extra]
    try:
        return int(args.func(args) or 0)
    except UserError as err:
        if debug:
            raise
        report_user_error(err)
        return err.exit_code
    except OSError as err:  # a write no `guard_write` wrapped: still one line when it is a fault
        from equirecon.storage import as_storage_error

        fault = as_storage_error(err)
        if debug or fault is None:
            raise
        report_user_error(fault)
        return fault.exit_code


if __name__ == "__main__":
    sys.exit(main())
