"""Every GPU performance check in one run, one results table (run by `benchmarks/gpu_suite.sh`).

Checks (each a group of table rows):

- ``step``: full training steps of DINOv2 + SE(2) reconstruction (`configs/paper/
  dinov2_vitl16_100ep.yaml`: ViT-L/16, 2x224 + 8x96 crops, bf16 autocast, drop-path 0.3) and
  of the same config with ``recon.enabled=false``, interleaved: img/s per GPU, MFU (backbone
  FLOPs of `pretrain.meters` over the peak table there), peak memory, recon overhead;
- ``attention``: forward + backward of self-attention on the real shapes of that step (global
  and local crops), for the explicit softmax(QKᵀ)V (``model.attention=math``), torch SDPA with
  each kernel forced through `torch.nn.attention.sdpa_kernel` (math, flash, efficient, cudnn),
  and xformers when importable;
- ``transform``: device-side cost of g_θ and its K intermediates (`data_pipeline.transforms`)
  per image, for each registered transform, at the global crop size;
- ``drop_path``: the recon step with our batch-subset stochastic depth (the default: each
  block's branches run only on the kept samples) vs timm's 0/1 mask (computes every sample);
- ``compile``: the step with ``train.compile=true`` (each block compiled) vs eager.

Needs only torch + timm (+ PyYAML): imports `pretrain.models/losses/methods/meters/parallel`,
`data_pipeline.transforms/batch/masking/synthetic` and `equirecon.config`, none of which pulls
in mlflow, webdataset, DALI or deepspeed. ``--tiny`` runs every check with a tiny ViT on the
CPU in well under a minute (used by the tests); ``--budget-s`` skips what would not fit.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/gpu_suite.py`: import the repo's packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from benchmarks.train_step import (
    StepBench,
    VariantResult,
    bench_config,
    machine_line,
    paired_ratio,
    run_interleaved,
    synchronize,
)
from data_pipeline.transforms import build_transform, list_transforms
from equirecon.config import Config

REPO = Path(__file__).resolve().parents[1]
FULL_CONFIG = REPO / "configs" / "paper" / "dinov2_vitl16_100ep.yaml"
# The training config of the full run, minus what needs the cluster (one process, no shards).
FULL_OVERRIDES = ["train.strategy=single", "train.precision=bf16"]
# A ViT small enough that every check runs in seconds on 2 CPU cores.
TINY_OVERRIDES = [
    "data.global_size=32",
    "data.local_size=16",
    "data.n_local=2",
    "model.arch=vit_tiny",
    "model.patch_size=8",
    "model.embed_dim=64",
    "model.depth=2",
    "model.num_heads=2",
    "model.drop_path=0.1",
    "method.head_out_dim=256",
    "method.head_hidden_dim=64",
    "method.head_bottleneck_dim=32",
    "split.d_patch=96",
    "recon.d_equi=32",
    "recon.decoder_channels=16",
    "train.batch_size=4",
]

COLUMNS = ("check", "variant", "metric", "value", "unit", "note")


@dataclass
class Row:
    """One line of the results table; `value` None means skipped/unavailable (see `note`)."""

    check: str
    variant: str
    metric: str
    value: float | None
    unit: str
    note: str = ""


class Suite:
    """Collects rows and keeps to the time budget."""

    def __init__(self, budget_s: float) -> None:
        self.rows: list[Row] = []
        self.t0 = time.perf_counter()
        self.budget_s = budget_s

    def left_s(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def add(self, *args: object, **kwargs: object) -> None:
        row = Row(*args, **kwargs)  # type: ignore[arg-type]
        self.rows.append(row)
        value = "-" if row.value is None else f"{row.value:.4g}"
        print(
            f"  {row.check}/{row.variant}/{row.metric}: {value} {row.unit} {row.note}", flush=True
        )

    def table(self) -> str:
        lines = ["| " + " | ".join(COLUMNS) + " |", "|---|---|---|---:|---|---|"]
        for r in self.rows:
            value = "n/a" if r.value is None else f"{r.value:.4g}"
            lines.append(
                f"| {r.check} | {r.variant} | {r.metric} | {value} | {r.unit} | {r.note} |"
            )
        return "\n".join(lines)


# ---- step: recon on vs off, and compile on vs off ----------------------------------------------


def _step_rows(
    suite: Suite,
    check: str,
    results: dict[str, VariantResult],
    reference: str,
    device: torch.device,
) -> None:
    ref = results[reference]
    mem_note = "allocator peak" if device.type == "cuda" else "process peak RSS"
    for name, r in results.items():
        suite.add(check, name, "img/s", r.img_per_s, "img/s/device")
        suite.add(check, name, "step_time", 1e3 * r.median_step_s, "ms", f"batch {r.batch_size}")
        if r.mfu is not None:
            suite.add(check, name, "mfu", 100 * r.mfu, "%", "backbone FLOPs / bf16 peak")
        else:
            suite.add(check, name, "mfu", None, "%", "no peak FLOP/s for this device")
        suite.add(check, name, "peak_mem", r.peak_mem_gb, "GiB", mem_note)
        if name != reference:
            basis = "process CPU time" if device.type == "cpu" else "wall time"
            note = f"vs {reference}, median per-round ratio of {basis}"
            suite.add(check, name, "step_time_ratio", paired_ratio(r, ref), "x", note)


def _build_benches(
    configs: dict[str, Config], device: torch.device
) -> tuple[dict[str, StepBench], int]:
    """Benches for `configs`; on CUDA OOM halve every batch and retry (down to 1)."""
    while True:
        benches: dict[str, StepBench] = {}
        try:
            for name, cfg in configs.items():
                benches[name] = StepBench(cfg, device, name=name)
                benches[name].warm_up(1)
            return benches, next(iter(configs.values())).train.batch_size
        except torch.cuda.OutOfMemoryError:
            for bench in benches.values():
                bench.close()
            benches.clear()
            torch.cuda.empty_cache()
            b = next(iter(configs.values())).train.batch_size
            if b <= 1:
                raise
            print(f"  out of memory at batch {b}: retrying at {b // 2}", flush=True)
            for cfg in configs.values():
                cfg.train.batch_size = b // 2


def check_step(
    suite: Suite,
    config: str | None,
    overrides: list[str],
    device: torch.device,
    args: argparse.Namespace,
) -> float | None:
    """Recon on vs off, interleaved; returns the recon step's seconds per image."""
    configs = {
        "recon": bench_config(config, overrides),
        "no_recon": bench_config(config, [*overrides, "recon.enabled=false"]),
    }
    cfg = configs["recon"]
    print(
        f"step: {cfg.model.arch} {cfg.method.name}+{cfg.recon.transform}, batch "
        f"{cfg.train.batch_size}, 2x{cfg.data.global_size} + {cfg.data.n_local}x"
        f"{cfg.data.local_size}, {cfg.train.precision}",
        flush=True,
    )
    benches, batch = _build_benches(configs, device)
    results = run_interleaved(
        benches, args.rounds, args.steps, args.warmup, budget_s=max(suite.left_s() * 0.4, 1.0)
    )
    _step_rows(suite, "step", results, "no_recon", device)
    for bench in benches.values():
        bench.close()
    args.batch_used = batch
    return results["recon"].median_step_s / batch


def check_compile(
    suite: Suite,
    config: str | None,
    overrides: list[str],
    device: torch.device,
    args: argparse.Namespace,
) -> None:
    """`train.compile=true` vs eager (recon on), interleaved after the compiling warm-up."""
    if suite.left_s() < args.compile_min_s:
        suite.add("compile", "compiled", "img/s", None, "img/s/device", "skipped: time budget")
        return
    b = getattr(args, "batch_used", None)
    extra = [f"train.batch_size={b}"] if b else []
    configs = {
        "eager": bench_config(config, [*overrides, *extra]),
        "compiled": bench_config(config, [*overrides, *extra, "train.compile=true"]),
    }
    if args.compile_backend != "inductor":  # a cheaper dynamo backend (CPU tests)
        configs["compiled"].train.compile = False
    benches = {}
    try:
        for name, cfg in configs.items():
            benches[name] = StepBench(cfg, device, name=name)
        if args.compile_backend != "inductor":
            compile_blocks(benches["compiled"].method, args.compile_backend)
        results = run_interleaved(
            benches, args.rounds, args.steps, args.warmup, budget_s=max(suite.left_s() * 0.7, 1.0)
        )
    except Exception as e:  # noqa: BLE001 - report any compiler failure as a row, keep going
        suite.add("compile", "compiled", "img/s", None, "img/s/device", f"failed: {_short(e)}")
        return
    finally:
        for bench in benches.values():
            bench.close()
    _step_rows(suite, "compile", results, "eager", device)
    suite.add(
        "compile",
        "compiled",
        "first_step",
        results["compiled"].compile_s,
        "s",
        f"incl. compiling (backend {args.compile_backend})",
    )


def compile_blocks(method: torch.nn.Module, backend: str) -> None:
    """`torch.compile(backend=...)` of every transformer block of the student and teacher
    (what `train.compile=true` does with the default inductor backend)."""
    for module in (method.student, method.teacher):
        if module is not None:
            for block in module.encoder.backbone.blocks:
                block.compile(backend=backend)


def check_drop_path(
    suite: Suite,
    config: str | None,
    overrides: list[str],
    device: torch.device,
    args: argparse.Namespace,
) -> None:
    """Batch-subset stochastic depth (our default) vs timm's 0/1 mask, recon on, interleaved."""
    b = getattr(args, "batch_used", None)
    cfg = bench_config(config, [*overrides, *([f"train.batch_size={b}"] if b else [])])
    if cfg.model.drop_path <= 0:
        suite.add("drop_path", "subset", "img/s", None, "img/s/device", "model.drop_path=0")
        return
    if suite.left_s() < args.compile_min_s / 2:
        suite.add("drop_path", "subset", "img/s", None, "img/s/device", "skipped: time budget")
        return
    benches = {}
    try:
        for mode in ("subset", "mask"):
            benches[mode] = StepBench(cfg, device, name=mode, drop_path_mode=mode)
        results = run_interleaved(
            benches, args.rounds, args.steps, args.warmup, budget_s=max(suite.left_s() * 0.3, 1.0)
        )
    finally:
        for bench in benches.values():
            bench.close()
    _step_rows(suite, "drop_path", results, "mask", device)


# ---- attention backends ----------------------------------------------------------------------


def _explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(QKᵀ/√d)V written out (what `model.attention=math` runs in timm)."""
    attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    return attn.softmax(dim=-1) @ v


def _sdpa(backend: object) -> Callable[..., torch.Tensor]:
    from torch.nn.attention import sdpa_kernel

    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v)

    return run


def _xformers(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from xformers.ops import memory_efficient_attention

    # xformers takes (B, N, H, Dh).
    out = memory_efficient_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def attention_backends() -> dict[str, Callable[..., torch.Tensor] | str]:
    """name -> attention function, or the reason it cannot run here."""
    from torch.nn.attention import SDPBackend

    backends: dict[str, Callable[..., torch.Tensor] | str] = {
        "explicit (model.attention=math)": _explicit_attention,
        "sdpa auto (model.attention=sdpa)": F.scaled_dot_product_attention,
        "sdpa math": _sdpa(SDPBackend.MATH),
        "sdpa flash": _sdpa(SDPBackend.FLASH_ATTENTION),
        "sdpa efficient": _sdpa(SDPBackend.EFFICIENT_ATTENTION),
    }
    if hasattr(SDPBackend, "CUDNN_ATTENTION"):
        backends["sdpa cudnn"] = _sdpa(SDPBackend.CUDNN_ATTENTION)
    try:
        import xformers.ops  # noqa: F401

        backends["xformers"] = (
            _xformers if torch.cuda.is_available() else "xformers has no CPU kernels"
        )
    except Exception as e:  # noqa: BLE001 - any import failure means "not available"
        backends["xformers"] = f"not importable ({type(e).__name__})"
    return backends


def _time_fn(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    """Median seconds of `fn()` over `reps` synchronized calls, after one warm-up call."""
    fn()
    synchronize(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def check_attention(suite: Suite, cfg: Config, batch: int, device: torch.device, reps: int) -> None:
    """fwd + bwd of attention on the step's shapes: per block of one step (global + local)."""
    from pretrain.models.backbone import build_backbone

    bb = build_backbone(
        cfg.model.arch,
        img_size=cfg.data.global_size,
        patch_size=cfg.model.patch_size,
        embed_dim=cfg.model.embed_dim,
        depth=1,
        num_heads=cfg.model.num_heads,
    )
    heads, dim, p = bb.num_heads, bb.embed_dim, bb.patch_size
    prefix = bb.num_prefix_tokens
    del bb
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    shapes = {
        "global": (2 * batch, heads, (cfg.data.global_size // p) ** 2 + prefix, dim // heads),
        "local": (
            cfg.data.n_local * batch,
            heads,
            (cfg.data.local_size // p) ** 2 + prefix,
            dim // heads,
        ),
    }
    shape_note = ", ".join(f"{k} {tuple(v)}" for k, v in shapes.items())
    print(f"attention: {shape_note}, {dtype}", flush=True)
    gen = torch.Generator(device="cpu").manual_seed(0)
    tensors = {
        name: [
            torch.randn(shape, generator=gen).to(device, dtype).requires_grad_(True)
            for _ in range(3)
        ]
        for name, shape in shapes.items()
        if shape[0] > 0
    }
    reference_ms = None
    for name, fn in attention_backends().items():
        if isinstance(fn, str):
            suite.add("attention", name, "fwd_bwd", None, "ms/block", fn)
            continue
        if suite.left_s() < 5:
            suite.add("attention", name, "fwd_bwd", None, "ms/block", "skipped: time budget")
            continue

        def run(fn: Callable[..., torch.Tensor] = fn) -> None:
            for q, k, v in tensors.values():
                fn(q, k, v).float().sum().backward()

        try:
            ms = 1e3 * _time_fn(run, device, reps)
        except Exception as e:  # noqa: BLE001 - a kernel that does not support this device/shape
            suite.add("attention", name, "fwd_bwd", None, "ms/block", f"unavailable: {_short(e)}")
            continue
        if reference_ms is None:
            reference_ms = ms
        suite.add(
            "attention", name, "fwd_bwd", ms, "ms/block", f"{reference_ms / ms:.2f}x vs explicit"
        )


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:90]}".replace("|", "/")


# ---- device-side transforms ------------------------------------------------------------------


def check_transforms(
    suite: Suite,
    cfg: Config,
    batch: int,
    device: torch.device,
    reps: int,
    step_s_per_image: float | None,
) -> None:
    """g_θ(u) + K intermediates on (B, 3, S, S) on the device, per image (as `ReconBranch.views`)."""
    size, k = cfg.data.global_size, cfg.recon.k
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, size, size, generator=gen).to(device)
    for name in list_transforms():
        transform = build_transform(name, size)

        def run(transform: object = transform) -> None:
            theta = transform.sample(batch, generator=gen, device=device)
            transform.apply(images, theta)
            transform.intermediates(images, theta, k)

        ms = 1e3 * _time_fn(run, device, reps) / batch
        note = f"g + {k} intermediates at {size}px"
        if step_s_per_image and name == cfg.recon.transform:
            note += f"; {100 * ms / (1e3 * step_s_per_image):.2f}% of the recon step"
        suite.add("transform", name, "per_image", 1e3 * ms, "us/img", note)


# ---- main ------------------------------------------------------------------------------------


def _guarded(suite: Suite, check: str, run: Callable[[], object]) -> object:
    """Run one check; a failure becomes a row (the other checks still run)."""
    try:
        return run()
    except Exception as e:  # noqa: BLE001 - one GPU session: report and go on
        suite.add(check, "-", "error", None, "-", f"failed: {_short(e)}")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks/gpu_suite.sh", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--tiny", action="store_true", help="tiny ViT, CPU, few steps (for tests)")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--config", default=None, help=f"default: {FULL_CONFIG.relative_to(REPO)}")
    p.add_argument("--batch", type=int, default=None, help="per-device batch (default: config's)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per check")
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant per round")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per variant")
    p.add_argument("--budget-s", type=float, default=None, help="whole-suite time budget")
    p.add_argument(
        "--checks",
        default="step,drop_path,attention,transform,compile",
        help="comma-separated subset of step,drop_path,attention,transform,compile",
    )
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile check")
    p.add_argument(
        "--compile-backend",
        default=None,
        help="torch.compile backend of the compile check (default: inductor; --tiny: eager)",
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads (--tiny: 1)")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tiny = args.tiny
    device = torch.device(
        args.device or ("cuda" if torch.cuda.is_available() and not tiny else "cpu")
    )
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    defaults = (
        dict(rounds=2, steps=1, warmup=1, budget_s=120.0)
        if tiny
        else dict(rounds=5, steps=3, warmup=2, budget_s=450.0)
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.compile_min_s = 5.0 if tiny else 150.0
    args.compile_backend = args.compile_backend or ("eager" if tiny else "inductor")
    if args.threads or tiny:
        torch.set_num_threads(args.threads or 1)
    config = args.config or (None if tiny else str(FULL_CONFIG))
    overrides = [*FULL_OVERRIDES, *(TINY_OVERRIDES if tiny else [])]
    if args.batch:
        overrides.append(f"train.batch_size={args.batch}")
    overrides += args.overrides
    checks = {c.strip() for c in args.checks.split(",") if c.strip()}
    if args.no_compile:
        checks.discard("compile")
    suite = Suite(args.budget_s)
    print(machine_line(device), flush=True)
    cfg = bench_config(config, overrides)
    step_s_per_image = None
    reps = 5 if tiny else 10
    if "step" in checks:
        step_s_per_image = _guarded(
            suite, "step", lambda: check_step(suite, config, overrides, device, args)
        )
    batch = getattr(args, "batch_used", cfg.train.batch_size)
    runs: dict[str, Callable[[], object]] = {
        "drop_path": lambda: check_drop_path(suite, config, overrides, device, args),
        "attention": lambda: check_attention(suite, cfg, batch, device, reps),
        "transform": lambda: check_transforms(suite, cfg, batch, device, reps, step_s_per_image),
        "compile": lambda: check_compile(suite, config, overrides, device, args),
    }
    for name, run in runs.items():
        if name in checks:
            _guarded(suite, name, run)
    elapsed = time.perf_counter() - suite.t0
    print()
    print(f"## GPU suite results ({machine_line(device)}; {elapsed:.0f} s)")
    print()
    print(suite.table())
    return 1 if any(r.metric == "error" for r in suite.rows) else 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
