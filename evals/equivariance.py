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
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from data_pipeline.transforms import EquiTransform
from evals.features import FeatureFn, extract_features, to_cpu_features


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
) -> dict:
    """Fit h: [f(I); f(g_θ(I))] -> θ on train images and report R² on test images.

    Deterministic for a fixed seed (θ draws, initialization and shuffling all derive from it).

    Args:
        feature_fn: frozen encoder, (B, 3, H, W) normalized images -> (B, D) features.
        train_images: (N, 3, H, W) normalized images for fitting h.
        test_images: (M, 3, H, W) normalized held-out images.
        transform: the family g_θ (e.g. `build_transform("rotation", H)`).
        seed: seed of θ sampling, h's initialization and batch order.
        epochs: passes of Adam over the N * views_per_image train pairs.
        hidden: width of h's two hidden layers.
        lr: Adam learning rate.
        batch_size: batch size of feature extraction and of h's training.
        device: where the features are extracted, g applied and h trained.
        views_per_image: θ draws per train image (each test image gets one).
        val_fraction: share of train images held out to pick h's best epoch (0: last epoch).
        progress: show tqdm bars.

    Returns:
        {"r2": mean R² over parameters, "r2_per_param": {name: R²}, "n_train": number of train
        pairs (N * views_per_image), "n_test": M}.
    """
    if views_per_image < 1 or epochs < 1 or batch_size < 1:
        raise ValueError("views_per_image, epochs and batch_size must be >= 1")
    generator = torch.Generator().manual_seed(seed)
    n_train, n_test = train_images.shape[0], test_images.shape[0]
    train_params = transform.sample(n_train * views_per_image, generator)  # (N*V, P), view-major
    test_params = transform.sample(n_test, generator)  # (M, P)

    def features(images: Tensor, params: Tensor, split: str) -> Tensor:
        plain = extract_features(
            feature_fn, images, batch_size, device, f"{split}: f(I)" if progress else None
        )
        transformed = _transformed_features(
            feature_fn, images, params, transform, batch_size, device, split, progress
        )
        views = params.shape[0] // images.shape[0]
        return torch.cat([plain.repeat(views, 1), transformed], dim=1)  # (N*V, 2D)

    x_train = features(train_images, train_params, "train")
    x_test = features(test_images, test_params, "test")
    mean, std = x_train.mean(dim=0), x_train.std(dim=0, correction=0).clamp_min(1e-6)
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

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = _regressor(x_train.shape[1], hidden, transform.num_params)
    head = _fit(head, x_fit, y_fit, generator, epochs, lr, batch_size, device, progress, val)
    with torch.no_grad():
        pred = torch.cat([head(x.to(device)).cpu() for x in x_test.split(batch_size)])  # (M, P)
    per_param = _r2(pred, y_test)
    return {
        "r2": float(per_param.mean()),
        "r2_per_param": {n: float(v) for n, v in zip(transform.param_names, per_param)},
        "n_train": x_train.shape[0],
        "n_test": n_test,
    }


def _transformed_features(
    feature_fn: FeatureFn,
    images: Tensor,
    params: Tensor,
    transform: EquiTransform,
    batch_size: int,
    device: torch.device | str,
    split: str,
    progress: bool,
) -> Tensor:
    """f(g_θ(I)) for every row of params (N*V, P), view-major over images (N, 3, H, W) -> (N*V, D).

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
            chunks.append(to_cpu_features(feature_fn(transform.apply(batch, rows)), batch.shape[0]))
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

    With `val`, the weights of the epoch with the best mean validation R² are returned.
    """
    head = head.to(device).train()
    x, y = x.to(device), y.to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr, foreach=True)
    best: tuple[float, dict[str, Tensor]] | None = None
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


def _r2(pred: Tensor, target: Tensor) -> Tensor:
    """Per-column R² = 1 - RSS/TSS, TSS around the target mean; (M, P), (M, P) -> (P,)."""
    rss = (target - pred).pow(2).sum(dim=0)
    tss = (target - target.mean(dim=0)).pow(2).sum(dim=0).clamp_min(1e-12)
    return 1 - rss / tss
