"""Synthetic equivariance evaluation: how well θ can be read off frozen features (R²).

The paper's protocol (DESIGN §2): a frozen encoder f sees an image I and its transform g_θ(I);
a light MLP h regresses θ from [f(I); f(g_θ(I))]. R² = 1 - RSS/TSS on held-out images, per
parameter of g, averaged over the parameters. Only h trains; features are extracted once.

Our choices where the paper is silent: θ ~ U(ranges of the transform), targets are θ mapped to
[-1, 1] per parameter, input features are standardized with the train mean/std, no
normalization layers in h, `views_per_image` draws of θ per train image and one per test image.
Model selection: `val_fraction` of the train images (with all their views) is held out and h is
kept at the epoch with the best validation R² (epoch 0 = the untrained h is not a candidate), so
a small train set makes h stop early instead of overfitting into a negative test R².

Views (`view`, see `EQUIVARIANCE_VIEWS`): a geometric g_θ with zero fill leaves black corners
or strips whose shape alone gives θ away, so a probe on such images measures borders, not
features. By default ("context") g is applied to a larger image and the centre is cropped: I is
the centre crop of the source, g(I) the centre crop of g(source), both natural images without
any fill (the source side comes from `context_size`). "disk" multiplies I and g(I) by the
inscribed disk shrunk by `disk_margin(transform)` pixels: `DISK_MARGIN` (the rim would otherwise
carry the fill) plus g's largest shift, the same mask `recon.fill=disk` trains with; "full" is
the plain protocol with the fill visible.

Probe noise: `repeats` > 1 fits h that many times (seeds seed, seed+1, ...) on the same
features and θ draws and reports the mean R² and the std across fits.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from data_pipeline.transforms import EquiTransform
from data_pipeline.transforms.fill import hide_fill
from evals.features import FeatureFn, extract_features, to_cpu_features

EQUIVARIANCE_VIEWS = ("context", "disk", "full")
"""How I and g(I) are shown to the encoder: see the module docstring."""


def context_size(transform: EquiTransform, size: int) -> int:
    """Side of the source image whose centre `size` crop stays inside the source under any g_θ.

    A rotation by φ (|φ| <= 45°) of a `size` square needs a source of side size·(cos φ + sin φ);
    a translation t (per axis) adds 2·|t| (SE(2) in exponential coordinates moves the centre by
    at most |t|). Photometric transforms need no context (returns `size`).
    """
    names = transform.param_names
    ranges = dict(zip(names, transform.param_ranges))
    angle = max((abs(v) for v in ranges.get("angle_deg", (0.0, 0.0))), default=0.0)
    angle = math.radians(min(angle, 45.0))
    shift = max((abs(v) for n, r in ranges.items() if "shift" in n for v in r), default=0.0)
    if "angle_deg" not in ranges and shift == 0.0:
        return int(size)
    need = size * (math.cos(angle) + math.sin(angle)) + 2 * math.hypot(shift, shift)
    return int(math.ceil(need)) + 2  # +2: bilinear support at the crop border


def center_crop(images: Tensor, size: int) -> Tensor:
    """The centre size x size crop of (B, C, H, W) images (H, W >= size)."""
    h, w = images.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"cannot crop {size}x{size} from {h}x{w} images")
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top : top + size, left : left + size]


class ProbeView:
    """Makes the two images the probe compares, I and g_θ(I), from a batch of source images.

    Args:
        transform: the family g_θ (built for crops of `size`).
        view: one of `EQUIVARIANCE_VIEWS`.
        size: side of I and g(I) as the encoder sees them.
    """

    def __init__(self, transform: EquiTransform, view: str, size: int) -> None:
        if view not in EQUIVARIANCE_VIEWS:
            raise ValueError(
                f"unknown eval.equivariance.view {view!r}; choose one of {list(EQUIVARIANCE_VIEWS)}"
            )
        self.transform, self.view, self.size = transform, view, int(size)

    @property
    def source_size(self) -> int:
        """Side of the source images this view expects."""
        return context_size(self.transform, self.size) if self.view == "context" else self.size

    def _finish(self, images: Tensor) -> Tensor:
        if self.view == "context":
            return center_crop(images, self.size)
        if self.view == "disk":
            return hide_fill(self.transform, [images])[0]
        return images

    def plain(self, sources: Tensor) -> Tensor:
        """I: (B, 3, S, S) sources -> (B, 3, size, size)."""
        return self._finish(sources)

    def transformed(self, sources: Tensor, params: Tensor) -> Tensor:
        """g_θ(I): (B, 3, S, S) sources, (B, P) θ -> (B, 3, size, size)."""
        return self._finish(self.transform.apply(sources, params))


def equivariance_r2(
    feature_fn: FeatureFn,
    train_images: Tensor,
    test_images: Tensor,
    transform: EquiTransform,
    *,
    seed: int = 0,
    epochs: int = 30,
    hidden: int = 1024,
    lr: float = 1e-3,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    views_per_image: int = 2,
    val_fraction: float = 0.1,
    progress: bool = False,
    view: str = "full",
    repeats: int = 1,
) -> dict:
    """Fit h: [f(I); f(g_θ(I))] -> θ on train images and report R² on test images.

    Deterministic for a fixed seed (θ draws, initialization and shuffling all derive from it).

    Args:
        feature_fn: frozen encoder, (B, 3, H, W) normalized images -> (B, D) features.
        train_images: (N, 3, S, S) normalized source images for fitting h; S is
            `ProbeView(transform, view, H).source_size` (S = H unless view is "context").
        test_images: (M, 3, S, S) normalized held-out source images.
        transform: the family g_θ for crops of H (e.g. `build_transform("rotation", H)`).
        seed: seed of θ sampling, h's initialization and batch order.
        epochs: passes of Adam over the N * views_per_image train pairs.
        hidden: width of h's two hidden layers.
        lr: Adam learning rate.
        batch_size: batch size of feature extraction and of h's training.
        device: where the features are extracted, g applied and h trained.
        views_per_image: θ draws per train image (each test image gets one).
        val_fraction: share of train images held out to pick h's best epoch (0: last epoch).
        progress: show tqdm bars.
        view: how I and g(I) are made (`EQUIVARIANCE_VIEWS`; "full" keeps the fill visible).
        repeats: fits of h (seeds seed, seed+1, ...) on the same features; R² is their mean.

    Returns:
        {"r2": mean R² over parameters (and fits), "r2_std": std of that R² across fits (0.0
        for one fit), "r2_fits": [R² per fit], "r2_per_param": {name: R²}, "n_train": number of
        train pairs (N * views_per_image), "n_test": M, "view": view, "source_size": S}.
    """
    if views_per_image < 1 or epochs < 1 or batch_size < 1 or repeats < 1:
        raise ValueError("views_per_image, epochs, batch_size and repeats must be >= 1")
    size = transform.image_size
    probe_view = ProbeView(transform, view, size)
    for name, imgs in (("train", train_images), ("test", test_images)):
        if tuple(imgs.shape[-2:]) != (probe_view.source_size,) * 2:
            raise ValueError(
                f"{name} images are {tuple(imgs.shape[-2:])}; view {view!r} of {size}px crops "
                f"needs {probe_view.source_size}x{probe_view.source_size} sources"
            )
    generator = torch.Generator().manual_seed(seed)
    n_train, n_test = train_images.shape[0], test_images.shape[0]
    train_params = transform.sample(n_train * views_per_image, generator)  # (N*V, P), view-major
    test_params = transform.sample(n_test, generator)  # (M, P)

    def features(images: Tensor, params: Tensor, split: str) -> Tensor:
        plain = extract_features(
            lambda x: feature_fn(probe_view.plain(x)),
            images,
            batch_size,
            device,
            f"{split}: f(I)" if progress else None,
        )
        transformed = _transformed_features(
            feature_fn, images, params, probe_view, batch_size, device, split, progress
        )
        views = params.shape[0] // images.shape[0]
        return torch.cat([plain.repeat(views, 1), transformed], dim=1)  # (N*V, 2D)

    x_train = features(train_images, train_params, "train")
    x_test = features(test_images, test_params, "test")
    mean, std = x_train.mean(dim=0), x_train.std(dim=0, correction=0)
    # A column constant over the train images (a pixel that is always black) is only centred:
    # dividing by its ~0 std would blow up any test image that differs there.
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    y_train = transform.normalize_params(train_params)
    y_test = transform.normalize_params(test_params)

    # Validation rows: the views of the last `val_fraction` of the train images.
    n_val_images = int(round(n_train * val_fraction)) if n_train >= 10 else 0
    val_rows = torch.zeros(x_train.shape[0], dtype=torch.bool)
    if n_val_images:
        val_rows.view(views_per_image, n_train)[:, n_train - n_val_images :] = True
    val = (x_train[val_rows], y_train[val_rows]) if n_val_images else None
    x_fit, y_fit = x_train[~val_rows], y_train[~val_rows]

    fits = []
    for r in range(repeats):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + r)
            head = _regressor(x_train.shape[1], hidden, transform.num_params)
        order = generator if r == 0 else torch.Generator().manual_seed(seed + r)
        head = _fit(head, x_fit, y_fit, order, epochs, lr, batch_size, device, progress, val)
        with torch.no_grad():
            pred = torch.cat([head(x.to(device)).cpu() for x in x_test.split(batch_size)])
        fits.append(_r2(pred, y_test))  # (P,)
    per_param = torch.stack(fits).mean(dim=0)
    fit_r2 = [float(f.mean()) for f in fits]
    return {
        "r2": float(per_param.mean()),
        "r2_std": float(torch.tensor(fit_r2).std()) if repeats > 1 else 0.0,
        "r2_fits": fit_r2,
        "r2_per_param": {n: float(v) for n, v in zip(transform.param_names, per_param)},
        "n_train": x_train.shape[0],
        "n_test": n_test,
        "view": view,
        "source_size": probe_view.source_size,
    }


def _transformed_features(
    feature_fn: FeatureFn,
    images: Tensor,
    params: Tensor,
    probe_view: ProbeView,
    batch_size: int,
    device: torch.device | str,
    split: str,
    progress: bool,
) -> Tensor:
    """f(g_θ(I)) for every row of params (N*V, P), view-major over sources (N, 3, S, S) -> (N*V, D).

    The transformed images are made batch by batch on `device`, never all held at once.
    """
    n = images.shape[0]
    starts = [(v, s) for v in range(params.shape[0] // n) for s in range(0, n, batch_size)]
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"{split}: f(g(I))", unit="batch")
    chunks: list[Tensor] = []
    with torch.inference_mode():
        for view, start in starts:
            batch = images[start : start + batch_size].to(device, non_blocking=True)
            rows = params[view * n + start : view * n + start + batch.shape[0]].to(device)
            transformed = probe_view.transformed(batch, rows)
            chunks.append(to_cpu_features(feature_fn(transformed), batch.shape[0]))
    return torch.cat(chunks)


def _regressor(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """h: in_dim -> hidden -> ReLU -> hidden -> ReLU -> out_dim."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, out_dim),
    )


def _fit(
    head: nn.Module,
    x: Tensor,
    y: Tensor,
    generator: torch.Generator,
    epochs: int,
    lr: float,
    batch_size: int,
    device: torch.device | str,
    progress: bool,
    val: tuple[Tensor, Tensor] | None = None,
) -> nn.Module:
    """Train `head` on (x (n, F), y (n, P)) with Adam and MSE; returns it in eval mode.

    With `val`, the weights of the epoch with the best mean validation R² are returned, or a
    constant predictor of the train mean (R² ≈ 0) when no epoch beats it: the probe reports "no
    information" rather than the overfit of an h that never generalized.
    """
    head = head.to(device).train()
    x, y = x.to(device), y.to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr, foreach=True)
    best: tuple[float, dict[str, Tensor]] | None = None
    if val is not None:  # the first candidate: h that predicts the train mean of θ everywhere
        best = _constant_candidate(head, y, val[1])
    loop = range(epochs)
    if progress:
        from tqdm.auto import tqdm

        loop = tqdm(loop, desc="fit h", unit="epoch")
    for _ in loop:
        order = torch.randperm(x.shape[0], generator=generator).to(device)
        for idx in order.split(batch_size):
            loss = nn.functional.mse_loss(head(x[idx]), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if val is not None:
            with torch.no_grad():
                head.eval()
                score = float(_r2(head(val[0].to(device)).cpu(), val[1]).mean())
                head.train()
            if best is None or score > best[0]:
                best = (score, {k: v.detach().clone() for k, v in head.state_dict().items()})
    if best is not None:
        head.load_state_dict(best[1])
    return head.eval()


def _constant_candidate(
    head: nn.Module, y_fit: Tensor, y_val: Tensor
) -> tuple[float, dict[str, Tensor]]:
    """(validation R², state) of `head` with its last layer set to output mean(y_fit)."""
    state = {k: v.detach().clone() for k, v in head.state_dict().items()}
    last = [k for k in state if k.endswith(".weight")][-1]
    state[last].zero_()
    mean = y_fit.mean(dim=0)
    state[last[: -len("weight")] + "bias"].copy_(mean.to(state[last].device))
    score = float(_r2(mean.expand_as(y_val).cpu(), y_val.cpu()).mean())
    return score, state


def _r2(pred: Tensor, target: Tensor) -> Tensor:
    """Per-column R² = 1 - RSS/TSS, TSS around the target mean; (M, P), (M, P) -> (P,)."""
    rss = (target - pred).pow(2).sum(dim=0)
    tss = (target - target.mean(dim=0)).pow(2).sum(dim=0).clamp_min(1e-12)
    return 1 - rss / tss
