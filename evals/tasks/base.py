"""The registry of evaluation tasks (see `evals.tasks`) and what every task is handed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from equirecon.config import EvalConfig
from equirecon.errors import ConfigError
from evals.providers import FeatureProvider

TaskResult = tuple[dict[str, float], dict[str, Any]]
"""(metrics named as in DESIGN §5, details for the JSON file)."""


@dataclass
class EvalContext:
    """What every task needs: settings, data root, image side, device, and a per-run cache.

    `cfg` is the whole eval section: the shared keys (`cfg.seed`, `cfg.batch_size`, ...) and
    each task's own section (`cfg.knn.k`).
    """

    cfg: EvalConfig
    data: str
    img_size: int
    device: torch.device | str = "cpu"
    progress: bool = False
    cache: dict[Any, Any] = field(default_factory=dict)

    def images(
        self, subset: str, split: str, size: int, limit: int, labels: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`data_pipeline.reader.load_images` (limit 0: all), cached for the context's lifetime."""
        key = ("images", subset, split, size, limit, labels)
        if key not in self.cache:
            from data_pipeline.reader import load_images

            self.cache[key] = load_images(
                self.data, subset, split, size, with_labels=labels, max_images=limit or None
            )
        return self.cache[key]

    def labelled_features(self, provider: FeatureProvider) -> tuple[torch.Tensor, ...]:
        """(train feats, train labels, test feats, test labels) of the labelled subset
        (`eval.labelled_*_images`), cached: shared by the tasks on global features (kNN, linear).

        Images are decoded and passed through the model batch by batch (only features are kept),
        so the labelled set may be far larger than memory (ImageNet with `*_images: 0`).
        """
        key = ("labelled_features", id(provider))
        if key not in self.cache:
            from data_pipeline.reader import iter_images
            from evals.features import extract_features

            e = self.cfg
            out: list[torch.Tensor] = []
            for split, limit in (
                ("train", e.labelled_train_images),
                ("val", e.labelled_test_images),
            ):
                batches = iter_images(
                    self.data, "labelled", split, self.img_size, True, limit or None, e.batch_size
                )
                if self.progress:
                    from tqdm.auto import tqdm

                    batches = tqdm(batches, desc=f"labelled {split} features", unit="batch")
                feats, labels = [], []
                for images, y in batches:
                    feats.append(
                        extract_features(
                            provider.global_features, images, e.batch_size, self.device
                        )
                    )
                    labels.append(y)
                out += [torch.cat(feats), torch.cat(labels)]
            self.cache[key] = tuple(out)
        return self.cache[key]


TaskFn = Callable[[FeatureProvider, EvalContext], TaskResult]

_TASKS: dict[str, TaskFn] = {}


def register_task(name: str) -> Callable[[TaskFn], TaskFn]:
    """Decorator: the function evaluating `provider` on task `name` (an `eval.tasks` name; its
    settings section `eval.<name>` is declared by equirecon/eval_tasks/<name>.py).

    Raises:
        ValueError: `name` is registered already.
    """

    def add(fn: TaskFn) -> TaskFn:
        if name in _TASKS:
            raise ValueError(f"eval task {name!r} registered twice")
        _TASKS[name] = fn
        return fn

    return add


def registered_tasks() -> list[str]:
    """The names with an implementation, sorted."""
    return sorted(_TASKS)


def get_task(name: str) -> TaskFn:
    """The function of task `name`.

    Raises:
        ConfigError: no such task; the message names the choices.
    """
    if name not in _TASKS:
        raise ConfigError(f"unknown eval task {name!r}; available: {', '.join(_TASKS)}")
    return _TASKS[name]


__all__ = [
    "EvalContext",
    "TaskFn",
    "TaskResult",
    "get_task",
    "register_task",
    "registered_tasks",
]
