"""Side by side: a training step of the official DINOv2 code and of ours, same configuration.

The official implementation is imported from a checkout the user gives (``--dinov2 PATH`` or
``DINOV2_REPO``; e.g. ``git clone https://github.com/facebookresearch/dinov2``); nothing of it
is vendored here. Without a checkout the benchmark prints why it skipped and exits 0.

Each implementation lives in its own worker process (so each one's peak memory is its own),
built with the same seed and fed the same synthetic batches (`data_pipeline.synthetic`). After
warm-up the parent times rounds of steps, one implementation after the other, alternating the
order every round, so that a shared machine slows them alike. The ratio is the median of the
per-round ratios of process CPU time on a CPU device (wall time on a GPU).

A step, on both sides: zero_grad, teacher forward, student forward, losses (DINO CLS with
Sinkhorn-Knopp centering + iBOT masked-patch + KoLeo), backward, the non-finite check,
gradient clipping at 3, AdamW and the EMA update of the teacher.

- **dinov2**: `dinov2.train.ssl_meta_arch.SSLMetaArch.forward_backward` on a config built
  from the checkout's own ``ssl_default_config.yaml`` with the settings below; its optimizer
  is AdamW over `SSLMetaArch.get_params_groups()` (foreach, as its train loop), gradients are
  clipped per student module as its FSDP loop does, the EMA is its fused `_foreach` pair.
  Its training code needs xFormers and CUDA; to run it unchanged on a CPU (or a GPU without
  xFormers) the worker (1) registers a stand-in ``xformers.ops`` whose only member,
  ``fmha.BlockDiagonalMask``, concatenates the head inputs and splits the output (what
  DINOv2 uses it for in its single head call), so DINOv2's layers fall back to their own
  torch paths (SDPA attention, torch cross-entropy) exactly as its code does without
  xFormers; (2) runs the student's list forward (global crops, local crops) as one
  `forward_features` call per crop size, what the nested-tensor path computes with a
  block-diagonal mask; (3) on a CPU makes ``Tensor.cuda()`` a no-op in that process; (4)
  starts a 1-process gloo (nccl) world, as its iBOT loss all-reduces unconditionally.
  Its code imports omegaconf and fvcore: ``pip install 'equirecon[bench-dinov2]'``.
- **ours**: `benchmarks.train_step.StepBench` (the training loop's step through
  `pretrain.parallel.build_engine`, `train.strategy=single`), `recon.enabled=false`;
- **ours_recon**: the same with reconstruction (SE(2), K = 2).

Configuration (defaults = the performance issue's): ViT-S, patch 14, 2 global crops of 98 px
and 4 local crops of 42 px, batch 4, drop-path 0.3 (uniform over blocks, DINOv2's default;
``--drop-path-linear`` for the per-depth rule on both sides), one shared DINO/iBOT head with
65,536 prototypes (hidden 2048, bottleneck 256), KoLeo 0.1, iBOT masks on half of the global
crops with ratios 0.1-0.5, fp32. Differences that remain, by construction: DINOv2's ViT has
LayerScale (1e-5) and a trainable weight-norm gain, ours neither; DINOv2 runs its heads on
padded buffers of its collate's upper bound of masked patches.

Run: ``python benchmarks/vs_dinov2.py --dinov2 ~/src/dinov2 [--threads 2] [--rounds 6]``
(also ``equirecon bench vs-dinov2 …``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing as mp
import os
import resource
import statistics
import sys
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/vs_dinov2.py`: import the repo's packages
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import yaml

from benchmarks.train_step import round_ratios

SKIP_MESSAGE = (
    "vs-dinov2: skipped: no DINOv2 checkout given. Pass --dinov2 PATH (or set DINOV2_REPO) to "
    "a clone of https://github.com/facebookresearch/dinov2 (the folder that holds dinov2/)."
)
VARIANTS = ("dinov2", "ours", "ours_recon")


@dataclass(frozen=True)
class Setting:
    """The configuration both implementations are built with."""

    arch: str = "small"  # small | base | large
    patch: int = 14
    global_size: int = 98
    local_size: int = 42
    n_local: int = 4
    batch: int = 4
    drop_path: float = 0.3
    drop_path_uniform: bool = True
    prototypes: int = 65536
    head_hidden: int = 2048
    head_bottleneck: int = 256
    koleo: float = 0.1
    mask_prob: float = 0.5
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    clip_grad: float = 3.0
    momentum: float = 0.992
    teacher_temp: float = 0.07
    lr: float = 1e-4
    weight_decay: float = 0.04
    seed: int = 0


OUR_ARCHS = {"small": "vit_small_patch16", "base": "vit_base_patch16", "large": "vit_large_patch16"}


def find_checkout(path: str | None) -> Path | None:
    """The DINOv2 checkout root (holds ``dinov2/train/ssl_meta_arch.py``), None if not given.

    Raises:
        FileNotFoundError: a path was given but is not such a checkout.
    """
    path = path or os.environ.get("DINOV2_REPO")
    if not path:
        return None
    root = Path(path).expanduser().resolve()
    for candidate in (root, root.parent):
        if (candidate / "dinov2" / "train" / "ssl_meta_arch.py").is_file():
            return candidate
    raise FileNotFoundError(
        f"{root}: not a DINOv2 checkout (no dinov2/train/ssl_meta_arch.py under it); clone "
        "https://github.com/facebookresearch/dinov2 and pass the clone's folder"
    )


# ---- the synthetic batches both sides see --------------------------------------------------


def make_batches(setting: Setting, n: int) -> list[Any]:
    """`n` seeded multi-crop batches (our `Batch`), on the CPU."""
    from data_pipeline.synthetic import SyntheticLoader

    loader = SyntheticLoader(
        batch_size=setting.batch,
        seed=setting.seed,
        global_size=setting.global_size,
        local_size=setting.local_size,
        n_local=setting.n_local,
        patch_size=setting.patch,
        mask_prob=setting.mask_prob,
        mask_ratio=setting.mask_ratio,
    )
    return [loader.batch(i) for i in range(n)]


def dinov2_inputs(batch: Any, setting: Setting, device: torch.device) -> dict[str, Any]:
    """Our batch in the dict layout of DINOv2's collate (`collate_data_and_cast`)."""
    masks = batch.masks.flatten(0, 1)  # (2B, N): crop-major, as DINOv2 stacks them
    n_images, n_patches = masks.shape
    indices = masks.flatten().nonzero().flatten()
    weights = (1 / masks.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(masks)[masks]
    # DINOv2's collate sizes the head buffers with an upper bound of the masked patches: for
    # n_masked = int(n_images · p) images, Σ int(N · r_max(i)) over linspace ratio brackets.
    n_masked_images = int(n_images * setting.mask_prob)
    edges = torch.linspace(*setting.mask_ratio, n_masked_images + 1)
    upperbound = sum(int(n_patches * float(edges[i + 1])) for i in range(n_masked_images))
    return {
        "collated_global_crops": batch.global_crops.flatten(0, 1).to(device),
        "collated_local_crops": batch.local_crops.flatten(0, 1).to(device),
        "collated_masks": masks.to(device),
        "mask_indices_list": indices.to(device),
        "masks_weight": weights.to(device),
        "upperbound": max(upperbound, int(indices.numel())),
        "n_masked_patches": torch.full((1,), int(indices.numel()), dtype=torch.long).to(device),
    }


# ---- the DINOv2 side ----------------------------------------------------------------------


class _ConcatRows:
    """Stand-in for xFormers' `BlockDiagonalMask` where DINOv2 uses it around its head call:
    `from_tensor_list` concatenates (1, n_i, D) inputs along dim 1, `split` cuts the output
    back into the same pieces."""

    def __init__(self, sizes: list[int]) -> None:
        self.sizes = sizes

    @classmethod
    def from_tensor_list(cls, tensors: list[torch.Tensor]) -> tuple[_ConcatRows, torch.Tensor]:
        return cls([t.shape[1] for t in tensors]), torch.cat(tensors, dim=1)

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(x.split(self.sizes, dim=1))


def install_dinov2_shims() -> list[str]:
    """Register the stand-in modules DINOv2's training code imports; returns what was added."""
    added = []
    try:
        import xformers.ops  # noqa: F401  (a real xFormers: DINOv2 uses it as it is)
    except ImportError:
        package = types.ModuleType("xformers")
        ops = types.ModuleType("xformers.ops")
        ops.fmha = types.SimpleNamespace(BlockDiagonalMask=_ConcatRows)
        package.ops = ops
        sys.modules["xformers"], sys.modules["xformers.ops"] = package, ops
        added.append("xformers.ops.fmha (concat/split stand-in)")
    return added


def _namespace(value: Any) -> Any:
    """Nested dicts as attribute namespaces (what DINOv2's code reads from its OmegaConf)."""
    if isinstance(value, dict):
        return types.SimpleNamespace(**{k: _namespace(v) for k, v in value.items()})
    return value


def dinov2_config(root: Path, setting: Setting) -> Any:
    """DINOv2's own default config with the setting applied."""
    cfg = yaml.safe_load((root / "dinov2" / "configs" / "ssl_default_config.yaml").read_text())
    s = setting
    cfg["compute_precision"]["grad_scaler"] = False  # fp32
    cfg["student"].update(
        arch=f"vit_{s.arch}",
        patch_size=s.patch,
        drop_path_rate=s.drop_path,
        drop_path_uniform=s.drop_path_uniform,
    )
    cfg["crops"].update(
        global_crops_size=s.global_size, local_crops_size=s.local_size, local_crops_number=s.n_local
    )
    cfg["train"]["centering"] = "sinkhorn_knopp"
    cfg["train"]["seed"] = s.seed
    for head in ("dino", "ibot"):
        cfg[head].update(
            head_n_prototypes=s.prototypes,
            head_hidden_dim=s.head_hidden,
            head_bottleneck_dim=s.head_bottleneck,
        )
    cfg["dino"]["koleo_loss_weight"] = s.koleo
    cfg["ibot"].update(
        separate_head=False,
        mask_sample_probability=s.mask_prob,
        mask_ratio_min_max=list(s.mask_ratio),
    )
    cfg["optim"].update(clip_grad=s.clip_grad, weight_decay=s.weight_decay)
    return _namespace(cfg)


def _one_rank_world(device: torch.device) -> None:
    """A 1-process torch.distributed world (gloo on CPU, nccl on CUDA), as DINOv2 trains."""
    import tempfile

    import torch.distributed as dist

    if dist.is_initialized():
        return
    store = Path(tempfile.mkdtemp(prefix="vs_dinov2_")) / "store"
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"file://{store}", rank=0, world_size=1)


class DINOv2Step:
    """The official `SSLMetaArch` with its optimizer, clipping and EMA; `step()` = one update."""

    def __init__(self, root: Path, setting: Setting, device: torch.device) -> None:
        self.shims = install_dinov2_shims()
        sys.path.insert(0, str(root))
        if device.type == "cpu":
            torch.Tensor.cuda = lambda self, *args, **kwargs: self  # its code moves inputs
        try:
            from dinov2.train.ssl_meta_arch import SSLMetaArch
        except ModuleNotFoundError as e:
            raise ModuleNotFoundError(
                f"the DINOv2 checkout's training code needs {e.name!r}: pip install "
                "'equirecon[bench-dinov2]' (omegaconf, fvcore)"
            ) from e

        self.setting, self.device = setting, device
        _one_rank_world(device)  # its iBOT Sinkhorn all-reduces unconditionally
        torch.manual_seed(setting.seed)
        model = SSLMetaArch(dinov2_config(root, setting)).to(device)
        for name, module in model.student.items():  # as its prepare_for_distributed_training
            model.teacher[name].load_state_dict(module.state_dict())
        model.need_to_synchronize_fsdp_streams = False  # a CUDA-stream fix for FSDP only
        backbone = model.student.backbone

        def per_crop_size(x_list: list[torch.Tensor], masks_list: list[Any]) -> list[dict]:
            return [backbone.forward_features(x, m) for x, m in zip(x_list, masks_list)]

        backbone.forward_features_list = per_crop_size
        model.train()
        self.model = model
        self.optimizer = torch.optim.AdamW(
            model.get_params_groups(), betas=(0.9, 0.999)
        )  # its train loop's optimizer
        for group in self.optimizer.param_groups:
            group["lr"] = setting.lr * group["lr_multiplier"]
            group["weight_decay"] = setting.weight_decay * group["wd_multiplier"]
        self.student_params = [p for m in model.student.values() for p in m.parameters()]
        self.teacher_params = [p for m in model.teacher.values() for p in m.parameters()]

    def step(self, batch: Any) -> None:
        model, s = self.model, self.setting
        data = dinov2_inputs(batch, s, self.device)
        self.optimizer.zero_grad(set_to_none=True)
        losses = model.forward_backward(data, teacher_temp=s.teacher_temp)
        if not math.isfinite(float(sum(v.detach() for v in losses.values()))):
            raise FloatingPointError(f"dinov2: non-finite loss {losses}")
        for module in model.student.values():  # its loop clips each student module
            torch.nn.utils.clip_grad_norm_(module.parameters(), s.clip_grad)
        self.optimizer.step()
        with torch.no_grad():  # its update_teacher, on the unsharded parameters
            torch._foreach_mul_(self.teacher_params, s.momentum)
            torch._foreach_add_(self.teacher_params, self.student_params, alpha=1 - s.momentum)


# ---- our side -----------------------------------------------------------------------------


def our_overrides(setting: Setting, recon: bool) -> list[str]:
    """`key=value` overrides that build our method on the setting."""
    s = setting
    return [
        "method.name=dinov2",
        f"model.arch={OUR_ARCHS[s.arch]}",
        f"model.patch_size={s.patch}",
        f"model.drop_path={s.drop_path}",
        f"model.drop_path_uniform={str(s.drop_path_uniform).lower()}",
        f"data.global_size={s.global_size}",
        f"data.local_size={s.local_size}",
        f"data.n_local={s.n_local}",
        f"train.batch_size={s.batch}",
        f"train.seed={s.seed}",
        f"train.clip_grad={s.clip_grad}",
        f"train.momentum_teacher={s.momentum}",
        f"train.weight_decay={s.weight_decay}",
        f"method.head_out_dim={s.prototypes}",
        f"method.head_hidden_dim={s.head_hidden}",
        f"method.head_bottleneck_dim={s.head_bottleneck}",
        f"method.koleo_weight={s.koleo}",
        f"method.mask_prob={s.mask_prob}",
        f"method.mask_ratio=[{s.mask_ratio[0]},{s.mask_ratio[1]}]",
        f"method.teacher_temp={s.teacher_temp}",
        f"recon.enabled={str(recon).lower()}",
    ]


class OursStep:
    """Our training step (`benchmarks.train_step.StepBench`) on the same batches."""

    def __init__(self, setting: Setting, device: torch.device, recon: bool) -> None:
        from benchmarks.train_step import StepBench, bench_config

        cfg = bench_config(None, our_overrides(setting, recon))
        self.bench = StepBench(cfg, device, n_batches=1, name="ours_recon" if recon else "ours")
        self.bench.values.update(lr=setting.lr, teacher_temp=setting.teacher_temp)
        self.device = device

    def step(self, batch: Any) -> None:
        self.bench.batches = [batch.to(self.device)]
        self.bench.step()


# ---- worker processes ---------------------------------------------------------------------


def _peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _worker(name: str, setting: Setting, root: str | None, device: str, threads: int, conn) -> None:  # noqa: ANN001
    """Build one implementation, then serve ("steps", n) / ("peak",) / ("stop",) requests."""
    try:
        if threads:
            torch.set_num_threads(threads)
        dev = torch.device(device)
        if name == "dinov2":
            impl: Any = DINOv2Step(Path(root), setting, dev)
            note = ", ".join(impl.shims) or "no stand-ins needed"
        else:
            impl = OursStep(setting, dev, recon=name == "ours_recon")
            note = ""
        batches = make_batches(setting, 2)
        index = 0
        conn.send(("ready", note))
        while True:
            request = conn.recv()
            if request[0] == "stop":
                break
            if request[0] == "peak":
                conn.send(("peak", _peak_memory_gb(dev)))
                continue
            times = []
            for _ in range(request[1]):
                _synchronize(dev)
                t0, c0 = time.perf_counter(), time.process_time()
                impl.step(batches[index % len(batches)])
                _synchronize(dev)
                times.append((time.perf_counter() - t0, time.process_time() - c0))
                index += 1
            conn.send(("steps", times))
    except Exception as e:  # noqa: BLE001 - reported to the parent, which prints it
        conn.send(("error", f"{type(e).__name__}: {e}"))
    finally:
        conn.close()


@dataclass
class Timing:
    """One implementation's timings (field names as `train_step.VariantResult`, so that its
    `round_ratios` applies)."""

    name: str
    on_cpu: bool = True
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    round_s: list[float] = field(default_factory=list)  # mean wall seconds per step, per round
    round_cpu_s: list[float] = field(default_factory=list)  # the same in process CPU time
    peak_gb: float = float("nan")
    note: str = ""


class Worker:
    """One implementation in its own spawned process."""

    def __init__(self, name: str, setting: Setting, root: Path | None, args: argparse.Namespace):
        ctx = mp.get_context("spawn")
        self.name = name
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_worker,
            args=(name, setting, str(root) if root else None, args.device, args.threads, child),
            daemon=True,
        )
        self.process.start()
        child.close()

    def request(self, *message: Any) -> Any:
        self.conn.send(message)
        return self.receive()

    def receive(self) -> Any:
        try:
            kind, value = self.conn.recv()
        except EOFError as e:
            raise RuntimeError(f"{self.name}: the worker process died") from e
        if kind == "error":
            raise RuntimeError(f"{self.name}: {value}")
        return value

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.send(("stop",))
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()


def run(
    setting: Setting,
    root: Path,
    args: argparse.Namespace,
    progress: Callable[[str], None] = print,
) -> dict[str, Timing]:
    """Warm every implementation up, then time interleaved rounds; returns their timings."""
    names = [v for v in VARIANTS if v in args.variants]
    workers: dict[str, Worker] = {}
    timings = {name: Timing(name, on_cpu=args.device == "cpu") for name in names}
    try:
        for name in names:  # one at a time: building allocates the most
            workers[name] = Worker(name, setting, root, args)
            timings[name].note = workers[name].receive()
            workers[name].request("steps", args.warmup)
            progress(f"{name}: built and warmed up ({args.warmup} steps)")
        for r in range(args.rounds):
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                steps = workers[name].request("steps", args.steps)
                t = timings[name]
                t.wall += [w for w, _ in steps]
                t.cpu += [c for _, c in steps]
                t.round_s.append(statistics.mean(w for w, _ in steps))
                t.round_cpu_s.append(statistics.mean(c for _, c in steps))
            progress(f"round {r + 1}/{args.rounds} done")
        for name in names:
            timings[name].peak_gb = workers[name].request("peak")
    finally:
        for worker in workers.values():
            worker.close()
    return timings


def format_table(timings: dict[str, Timing], batch: int) -> str:
    """Markdown table with each implementation's ratio to DINOv2's step."""
    ref = timings.get("dinov2")
    lines = [
        "| implementation | img/s | step ms (median) | CPU ms/step | peak mem GB | step time vs "
        "dinov2 | peak mem vs dinov2 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, t in timings.items():
        step = statistics.median(t.wall)
        ratio = mem = "-"
        if ref is not None:
            ratio = f"{statistics.median(round_ratios(t, ref)):.3f}x"
            mem = f"{t.peak_gb / ref.peak_gb:.3f}x"
        lines.append(
            f"| {name} | {batch / step:.2f} | {1e3 * step:.0f} | "
            f"{1e3 * statistics.median(t.cpu):.0f} | {t.peak_gb:.2f} | {ratio} | {mem} |"
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="equirecon bench vs-dinov2",
        description="The official DINOv2 SSLMetaArch step vs ours on the same configuration, "
        "interleaved in one run (each in its own process).",
    )
    p.add_argument("--dinov2", default=None, help="DINOv2 checkout (default: $DINOV2_REPO)")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per worker")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=3, help="timed steps per implementation per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {VARIANTS}")
    p.add_argument("--arch", default="small", choices=sorted(OUR_ARCHS))
    p.add_argument("--patch", type=int, default=14)
    p.add_argument("--global-size", type=int, default=98)
    p.add_argument("--local-size", type=int, default=42)
    p.add_argument("--n-local", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--drop-path", type=float, default=0.3)
    p.add_argument(
        "--drop-path-linear",
        action="store_true",
        help="drop-path rising linearly over depth on both sides (default: uniform, DINOv2's)",
    )
    p.add_argument("--prototypes", type=int, default=65536)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        print(f"vs-dinov2: unknown variants {unknown}; choose from {VARIANTS}", file=sys.stderr)
        return 2
    try:
        root = find_checkout(args.dinov2)
    except FileNotFoundError as e:
        print(f"vs-dinov2: {e}", file=sys.stderr)
        return 2
    if root is None:
        print(SKIP_MESSAGE)
        return 0
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    setting = Setting(
        arch=args.arch,
        patch=args.patch,
        global_size=args.global_size,
        local_size=args.local_size,
        n_local=args.n_local,
        batch=args.batch,
        drop_path=args.drop_path,
        drop_path_uniform=not args.drop_path_linear,
        prototypes=args.prototypes,
    )
    from benchmarks.train_step import machine_line

    if args.threads:
        torch.set_num_threads(args.threads)
    print(machine_line(torch.device(args.device)))
    print(f"DINOv2 checkout: {root} ({_git_head(root)})")
    print(
        f"ViT-{args.arch[0].upper()}/{setting.patch}, batch {setting.batch}, crops 2x"
        f"{setting.global_size} + {setting.n_local}x{setting.local_size}, drop-path "
        f"{setting.drop_path} ({'uniform' if setting.drop_path_uniform else 'linear'}), "
        f"{setting.prototypes} prototypes, fp32; {args.rounds} rounds x {args.steps} steps after "
        f"{args.warmup} warm-up steps"
    )
    timings = run(setting, root, args, progress=lambda m: print(m, file=sys.stderr))
    on_cpu = args.device == "cpu"
    print(format_table(timings, setting.batch))
    if "dinov2" in timings:
        print(f"dinov2 worker stand-ins: {timings['dinov2'].note}")
        basis = "process CPU time" if on_cpu else "wall time"
        for name, t in timings.items():
            if name != "dinov2":
                per_round = ", ".join(f"{x:.3f}" for x in round_ratios(t, timings["dinov2"]))
                print(f"{name}/dinov2 per-round ratios of {basis}: {per_round}")
    ok = all(t.wall and all(math.isfinite(x) for x in t.wall) for t in timings.values())
    return 0 if ok else 1


def _git_head(root: Path) -> str:
    head = root / ".git" / "HEAD"
    with contextlib.suppress(OSError):
        ref = head.read_text().strip()
        if ref.startswith("ref: "):
            return (root / ".git" / ref[5:]).read_text().strip()[:12]
        return ref[:12]
    return "commit unknown"


if __name__ == "__main__":
    sys.exit(main())
