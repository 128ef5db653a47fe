"""Training-step throughput of a method with and without reconstruction, in one process.

A *step* is what `pretrain.train.Trainer.train_step` does: g_θ views and targets on the device,
the method's losses (student + teacher forward), backward, the non-finite check, gradient
clipping, the optimizer step and the EMA update, through the engine of `train.strategy=single`
(`pretrain.parallel.build_engine`: same optimizer, same `train.compile` /
`train.activation_checkpointing` passes as training). Batches are synthetic, already on the device
(`data_pipeline.synthetic`), so no data loading is measured.

The variants (recon on, recon off = the plain base method, ...) are built once with the same seed,
warmed up, then timed in interleaved rounds (order alternating per round), so that a shared or
throttled machine slows all of them alike; the overhead is the median of the per-round ratios.

Run: ``python benchmarks/train_step.py [--config configs/demo_cpu.yaml] [key=value ...]``
(also ``equirecon bench train-step ...``). Imports only torch, timm, yaml and the torch-only
project modules, so it runs on a bare GPU box (see `benchmarks/gpu_suite.py`).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/train_step.py`: import the repo's packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from data_pipeline.synthetic import SyntheticLoader
from equirecon.config import Config, load_config
from pretrain.meters import device_peak_flops, ssl_step_flops
from pretrain.methods import build_method
from pretrain.models.backbone import set_drop_path_mode
from pretrain.parallel import build_engine

__all__ = [
    "StepBench",
    "VariantResult",
    "bench_config",
    "format_table",
    "run_interleaved",
    "synchronize",
]


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_config(config: str | None, overrides: list[str]) -> Config:
    """The run config of `config` (YAML delta, or the defaults) + `key=value` overrides."""
    return load_config(config, ["data.backend=synthetic", *overrides])


@dataclass
class VariantResult:
    """Timings of one variant: seconds per step (one entry per timed step)."""

    name: str
    batch_size: int
    step_s: list[float] = field(default_factory=list)
    round_s: list[float] = field(default_factory=list)  # mean step time of each round
    # CPU seconds of this process per step / per round (on a CPU device: insensitive to other
    # jobs on a shared machine, unlike wall time).
    cpu_s: list[float] = field(default_factory=list)
    round_cpu_s: list[float] = field(default_factory=list)
    on_cpu: bool = False
    peak_mem_gb: float = float("nan")
    flops_per_image: float = float("nan")
    peak_flops: float | None = None
    compile_s: float = 0.0  # first (warm-up) step time, includes torch.compile if on

    @property
    def median_step_s(self) -> float:
        return statistics.median(self.step_s)

    @property
    def img_per_s(self) -> float:
        return self.batch_size / self.median_step_s

    @property
    def mfu(self) -> float | None:
        if self.peak_flops is None:
            return None
        return self.flops_per_image * self.img_per_s / self.peak_flops


class StepBench:
    """One method + engine + fixed synthetic batches on `device`; `step()` runs one update."""

    def __init__(
        self,
        cfg: Config,
        device: torch.device,
        n_batches: int = 2,
        name: str = "",
        drop_path_mode: str | None = None,
    ) -> None:
        self.cfg, self.device, self.name = cfg, device, name or "run"
        mem_before = _allocated(device)
        torch.manual_seed(cfg.train.seed)
        self.method = build_method(cfg).to(device)
        if drop_path_mode is not None:  # before the engine: compile sees the final forward
            for module in (self.method.student, self.method.teacher):
                if module is not None:
                    set_drop_path_mode(module.encoder.backbone, drop_path_mode)
        self.engine = build_engine(self.method, cfg, device)
        self.method.train()
        backbone = self.method.backbone
        d = cfg.data
        loader = SyntheticLoader(
            batch_size=cfg.train.batch_size,
            seed=cfg.train.seed,
            global_size=d.global_size,
            local_size=d.local_size,
            n_local=d.n_local,
            patch_size=backbone.patch_size,
            mask_prob=cfg.method.mask_prob,
            mask_ratio=cfg.method.mask_ratio,
        )
        self.batches = [loader.batch(i).to(device) for i in range(n_batches)]
        self.step_index = 0
        b = cfg.train.batch_size
        self.values = {
            "lr": cfg.train.base_lr * b / 256,
            "weight_decay": cfg.train.weight_decay,
            "momentum": cfg.train.momentum_teacher,
            "teacher_temp": cfg.method.teacher_temp,
        }
        self.flops_per_image = ssl_step_flops(
            backbone.embed_dim,
            len(backbone.blocks),
            backbone.patch_size,
            d.global_size,
            d.local_size,
            d.n_local,
            backbone.num_prefix_tokens,
        )
        self.state_bytes = 0.0  # persistent memory (weights, teacher, optimizer), after step 1
        self._mem_before = mem_before

    def step(self) -> None:
        """One training update, as `Trainer.train_step` (schedules held fixed)."""
        cfg, engine = self.cfg, self.engine
        for group in engine.param_groups:
            group["lr"] = self.values["lr"]
            if group["apply_wd"]:
                group["weight_decay"] = self.values["weight_decay"]
        batch = self.batches[self.step_index % len(self.batches)]
        gen = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + self.step_index)
        self.step_index += 1
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if cfg.train.precision == "bf16"
            else contextlib.nullcontext()
        )
        with autocast:
            out = self.method.compute_losses(
                engine.student_fn, batch, self.values["teacher_temp"], gen
            )
        engine.zero_grad()
        if not bool(torch.isfinite(out.loss_total.detach())):  # the Trainer's host sync too
            return
        engine.backward(out.loss_total)
        max_norm = cfg.train.clip_grad if cfg.train.clip_grad > 0 else float("inf")
        engine.step(engine.clip_grad_norm(max_norm))
        engine.update_teacher(self.values["momentum"])

    def timed_step(self) -> tuple[float, float, float]:
        """(wall seconds, process CPU seconds, peak bytes above the persistent state) of one
        synchronized step."""
        synchronize(self.device)
        if self.device.type == "cuda":
            base = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        self.step()
        synchronize(self.device)
        dt, dc = time.perf_counter() - t0, time.process_time() - c0
        extra = 0.0
        if self.device.type == "cuda":
            extra = torch.cuda.max_memory_allocated(self.device) - base
        return dt, dc, extra

    def warm_up(self, steps: int) -> float:
        """Run `steps` untimed steps; returns the first one's seconds (compile, allocations)."""
        first = 0.0
        for i in range(max(steps, 1)):
            dt, _, _ = self.timed_step()
            if i == 0:
                first = dt
        self.state_bytes = _allocated(self.device) - self._mem_before
        return first

    def close(self) -> None:
        """Free the method, optimizer and batches."""
        del self.method, self.engine, self.batches
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _allocated(device: torch.device) -> float:
    return float(torch.cuda.memory_allocated(device)) if device.type == "cuda" else 0.0


def _cpu_peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_interleaved(
    benches: dict[str, StepBench],
    rounds: int,
    steps_per_round: int,
    warmup: int,
    budget_s: float | None = None,
) -> dict[str, VariantResult]:
    """Warm every bench up, then time `rounds` rounds of `steps_per_round` steps per bench,
    alternating the order each round. Stops early (after at least one round) past `budget_s`."""
    results: dict[str, VariantResult] = {}
    t_start = time.perf_counter()
    for name, bench in benches.items():
        results[name] = VariantResult(
            name,
            bench.cfg.train.batch_size,
            flops_per_image=bench.flops_per_image,
            peak_flops=device_peak_flops(bench.device),
            on_cpu=bench.device.type == "cpu",
        )
        results[name].compile_s = bench.warm_up(warmup)
    peak_extra = dict.fromkeys(benches, 0.0)
    names = list(benches)
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            times, cpu = [], []
            for _ in range(steps_per_round):
                dt, dc, extra = benches[name].timed_step()
                times.append(dt)
                cpu.append(dc)
                peak_extra[name] = max(peak_extra[name], extra)
            results[name].step_s += times
            results[name].cpu_s += cpu
            results[name].round_s.append(sum(times) / len(times))
            results[name].round_cpu_s.append(sum(cpu) / len(cpu))
        if budget_s is not None and time.perf_counter() - t_start > budget_s:
            break
    for name, bench in benches.items():
        if bench.device.type == "cuda":
            results[name].peak_mem_gb = (bench.state_bytes + peak_extra[name]) / 2**30
        else:
            results[name].peak_mem_gb = _cpu_peak_rss_gb()  # the whole process on CPU
    return results


def round_ratios(a: VariantResult, b: VariantResult) -> list[float]:
    """Per round, a's mean step time / b's: process CPU time on a CPU device (what a shared
    machine does not distort), wall time on an accelerator."""
    xs, ys = (a.round_cpu_s, b.round_cpu_s) if a.on_cpu else (a.round_s, b.round_s)
    return [x / y for x, y in zip(xs, ys) if y > 0]


def paired_ratio(a: VariantResult, b: VariantResult) -> float:
    """Median over rounds of `round_ratios` — robust to load that drifts between rounds."""
    pairs = round_ratios(a, b)
    return statistics.median(pairs) if pairs else float("nan")


def format_table(results: dict[str, VariantResult], reference: str | None = None) -> str:
    """Markdown table: img/s, step ms, peak memory, MFU and the step-time ratio to `reference`."""
    ref = results.get(reference) if reference else None
    lines = [
        "| variant | batch | img/s | step ms (median) | CPU ms/step | peak mem GB | MFU | step "
        f"time vs {reference or '-'} |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        mfu = f"{100 * r.mfu:.1f}%" if r.mfu is not None else "n/a"
        ratio = f"{paired_ratio(r, ref):.3f}x" if ref is not None else "-"
        lines.append(
            f"| {name} | {r.batch_size} | {r.img_per_s:.2f} | {1e3 * r.median_step_s:.1f} | "
            f"{1e3 * statistics.median(r.cpu_s):.1f} | {r.peak_mem_gb:.2f} | {mfu} | {ratio} |"
        )
    return "\n".join(lines)


BENCH_KEYS = ("bench.drop_path",)  # variant settings that are not config keys


def variant_configs(
    config: str | None, overrides: list[str], extra: dict[str, list[str]] | None = None
) -> dict[str, tuple[Config, dict[str, str]]]:
    """{"recon": cfg, "no_recon": cfg with recon.enabled=false, **extra variants}, each with its
    benchmark-only settings (`bench.drop_path=subset|mask`: `set_drop_path_mode`)."""
    variants = {"recon": [], "no_recon": ["recon.enabled=false"], **(extra or {})}
    out = {}
    for name, delta in variants.items():
        items = [*overrides, *delta]
        options = {}
        for item in items:
            key, _, value = item.partition("=")
            if key.startswith("bench."):
                if key not in BENCH_KEYS:
                    raise ValueError(f"unknown benchmark setting {key!r}; choose {BENCH_KEYS}")
                options[key.removeprefix("bench.")] = value
        cfg_items = [i for i in items if not i.startswith("bench.")]
        out[name] = (bench_config(config, cfg_items), options)
    return out


def machine_line(device: torch.device) -> str:
    """One line naming the device, the CPU and the library versions."""
    import timm

    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = f"CPU {_cpu_model()}, {torch.get_num_threads()} threads"
    return (
        f"{what}; Python {platform.python_version()}, torch {torch.__version__}, timm "
        f"{timm.__version__}"
    )


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def profile_steps(bench: StepBench, steps: int, out: Callable[[str], None] = print) -> None:
    """torch.profiler table of `steps` steps of `bench` (CPU ops; CUDA kernels on GPU)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if bench.device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            bench.timed_step()
    out(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="equirecon bench train-step",
        description="Full training steps of a method with recon on vs off (recon.enabled=false), "
        "interleaved after warm-up; synthetic batches on the device.",
    )
    p.add_argument("--config", default=None, help="YAML delta over the defaults")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:key=value,key=value",
        help="an extra variant (e.g. 'compiled:train.compile=true', 'timm_dp:bench.drop_path=mask'"
        "), timed with the others",
    )
    p.add_argument(
        "--profile", type=int, default=0, help="print a torch.profiler table of N recon steps"
    )
    p.add_argument("overrides", nargs="*", help="key=value overrides for every variant")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    extra = {}
    for spec in args.variant:
        name, _, deltas = spec.partition(":")
        extra[name] = [d for d in deltas.split(",") if d]
    cfgs = variant_configs(args.config, args.overrides, extra)
    benches = {
        name: StepBench(cfg, device, name=name, drop_path_mode=opts.get("drop_path"))
        for name, (cfg, opts) in cfgs.items()
    }
    cfg = cfgs["recon"][0]
    print(machine_line(device))
    print(
        f"arch {cfg.model.arch} (patch {benches['recon'].method.backbone.patch_size}), method "
        f"{cfg.method.name}, recon.transform {cfg.recon.transform}, batch {cfg.train.batch_size}, "
        f"crops 2x{cfg.data.global_size} + {cfg.data.n_local}x{cfg.data.local_size}, precision "
        f"{cfg.train.precision}; {args.rounds} rounds x {args.steps} steps after {args.warmup} "
        "warm-up steps"
    )
    results = run_interleaved(benches, args.rounds, args.steps, args.warmup)
    print(format_table(results, reference="no_recon"))
    for name in results:
        if name not in ("recon", "no_recon"):
            ratio = paired_ratio(results[name], results["recon"])
            print(f"{name}: step time {ratio:.3f}x of recon (median of per-round ratios)")
    overhead = paired_ratio(results["recon"], results["no_recon"]) - 1
    basis = "process CPU time" if device.type == "cpu" else "wall time"
    print(
        f"recon overhead: {100 * overhead:+.1f}% of the step time (median of per-round ratios "
        f"of {basis})"
    )
    pairs = round_ratios(results["recon"], results["no_recon"])
    print("per-round ratios recon/no_recon: " + ", ".join(f"{p:.3f}" for p in pairs))
    walls = [x / y for x, y in zip(results["recon"].round_s, results["no_recon"].round_s)]
    print("per-round wall-time ratios: " + ", ".join(f"{p:.3f}" for p in walls))
    if args.profile:
        profile_steps(benches["recon"], args.profile)
    ok = all(math.isfinite(r.img_per_s) and r.img_per_s > 0 for r in results.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
