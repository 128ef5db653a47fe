"""The trainer's checkpoint glue: what a checkpoint of a run holds, writing it, and resuming.

A checkpoint is the DCP state of the engine (model, teacher, optimizer: `Engine.state_to_save`,
plus the files of `Engine.save_extra`), each rank's RNG and data position, and the step;
`pretrain.checkpoint.Checkpointer` writes it atomically with the config and meta.json. Resuming
picks the newest intact checkpoint, checks the config changes it allows and reshards a
checkpoint of another world size where its strategy allows (`Strategy.same_world_size`,
`Strategy.own_checkpoint`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from equirecon.config import to_dict
from equirecon.errors import CheckpointError
from equirecon.resume_config import check_resume_config, format_changes, load_saved_config
from pretrain.checkpoint import read_meta, select_checkpoint_all_ranks
from pretrain.strategies import find_strategy, get_strategy, strategy_names

log = logging.getLogger("equirecon.pretrain")

# meta.json: the checkpoint was saved before the optimizer's first step (its state: DCP's init)
NO_OPTIMIZER_STATE = "no_optimizer_state"


def _resharding_strategies() -> str:
    """The strategies that run as themselves with several ranks and whose checkpoints reshard to
    any world size, as "ddp/fsdp2"."""
    return "/".join(
        name
        for name in strategy_names()
        if not get_strategy(name).same_world_size and not get_strategy(name).several_ranks
    )


class CheckpointMixin:
    """Checkpoints of a `pretrain.train.Trainer`: it provides `cfg`, `dist`, `run_dir`,
    `engine`, `optimizer`, `loader`, `checkpointer`, `tracker`, `step`, `init_record` and the
    resume bookkeeping that its `__init__` sets (`resume_from`, `damaged_checkpoints`,
    `resume_changes`, `_resume_used`)."""

    def _check_resume_config(self) -> dict[str, tuple[Any, Any]]:
        """Refuse a config that changes what the checkpoint holds; return the allowed changes."""
        if self.resume_from is None:
            return {}
        saved_path = self.resume_from / "config.yaml"
        if not saved_path.is_file():
            saved_path = self.run_dir / "config.yaml"
        if not saved_path.is_file():
            return {}
        saved_ws = read_meta(self.resume_from).get("world_size")
        changes = check_resume_config(
            load_saved_config(saved_path),
            self.cfg,
            self.run_dir,
            saved_world_size=saved_ws,
            world_size=self.dist.world_size,
        )
        if changes and self.dist.is_main:
            log.info("resuming with changed settings (allowed):\n%s", format_changes(changes))
        return changes

    def _report_resume(self) -> None:
        """Warn about damaged checkpoints passed over; tag the MLflow run with what happened."""
        tags: dict[str, str] = {}
        if self.damaged_checkpoints:
            damaged = "; ".join(f"{d.path.name}: {d.describe()}" for d in self.damaged_checkpoints)
            log.warning(
                "damaged checkpoint(s) skipped: %s. Resuming from %s instead (the damaged "
                "ones are replaced when training reaches their step again).",
                damaged,
                self.resume_from,
            )
            tags["checkpoint.damaged"] = damaged[:5000]
        if self.resume_from is not None:
            tags["checkpoint.resumed_from"] = self.resume_from.name
        if self.resume_changes:
            tags["resume.changed"] = ", ".join(
                f"{k}: {a!r} -> {b!r}" for k, (a, b) in self.resume_changes.items()
            )[:5000]
        if tags and self.tracker is not None:
            self.tracker.set_tags(tags)

    def _rank_state(self) -> dict[str, Any]:
        return {"torch_rng": torch.get_rng_state(), "data": json.dumps(self.loader.state_dict())}

    def _state(self, for_load: bool = False, saved_world_size: int | None = None) -> dict[str, Any]:
        """The DCP state: model/optimizer (from the engine), per-rank RNG + data position
        (under `rank{r}`: DCP keeps one copy per key), and the step."""
        engine_state = self.engine.state_to_load() if for_load else self.engine.state_to_save()
        own = self.dist.rank
        if saved_world_size is not None and own >= saved_world_size:
            own = 0  # resharded onto more ranks: the new ranks start from rank 0's values
        return {
            **engine_state,
            f"rank{own}": self._rank_state(),
            "trainer": {"step": torch.tensor(self.step)},
        }

    def save_checkpoint(self) -> Path:
        meta = {
            "world_size": self.dist.world_size,
            "arch": self.cfg.model.arch,
            "strategy": self.engine.name,
        }
        if self.tracker is not None and self.tracker.run_id:
            meta["mlflow_run_id"] = self.tracker.run_id
        if self.init_record is not None:  # model.init: where the run started
            meta["init"] = self.init_record
        # Before the first update (the starting model of a model.init run) the optimizer has no
        # state; DCP's optimizer state dict would create it by a zero-lr step (AdamW step count
        # 1), which the run must not keep: the first update would be bias-corrected as the
        # second. Saved as DCP made it, dropped again here and after a resume (`maybe_resume`).
        optimizer_state = getattr(self.optimizer, "state", None)
        if optimizer_state is not None and not optimizer_state:
            meta[NO_OPTIMIZER_STATE] = True
        import yaml

        path = self.checkpointer.save(
            self.step,
            self._state(),
            yaml.safe_dump(to_dict(self.cfg), sort_keys=False),
            meta,
            extra_writer=self.engine.save_extra,
        )
        if meta.get(NO_OPTIMIZER_STATE):
            optimizer_state.clear()
        return path

    def _check_strategy_can_resume(self, path: Path, meta: dict[str, Any], saved_ws: int) -> None:
        """Refuse a checkpoint that this run's strategy cannot read back (CheckpointError)."""
        strategy = get_strategy(self.engine.name)
        if saved_ws != self.dist.world_size and strategy.same_world_size:
            raise CheckpointError(
                f"{path} was written by {saved_ws} ranks with train.strategy={meta.get('strategy')}; "
                f"{strategy.same_world_size} (now {self.dist.world_size}). Resume with "
                f"{saved_ws} ranks, or use {_resharding_strategies()} (DCP checkpoints reshard "
                "to any world size)."
            )
        saved = find_strategy(meta.get("strategy"))
        if saved is not None and saved.own_checkpoint and saved.name != self.engine.name:
            raise CheckpointError(
                f"{path} holds {saved.own_checkpoint}; resume it with train.strategy={saved.name}"
            )

    def maybe_resume(self) -> bool:
        """Load the newest intact checkpoint (`checkpoints/latest` unless it is damaged) if
        there is one. A checkpoint written by another number of
        ranks is resharded (model, teacher and optimizer exactly; the data position restarts at
        the next epoch and the RNG is reseeded, since they were per rank)."""
        if self._resume_used:  # a second fit() of this Trainer: what is newest now
            self.resume_from, _ = select_checkpoint_all_ranks(self.run_dir / "checkpoints")
        self._resume_used = True
        path = self.resume_from
        if path is None:
            return False
        meta = read_meta(path)
        saved_ws = int(meta.get("world_size", self.dist.world_size))
        resharded = saved_ws != self.dist.world_size
        self._check_strategy_can_resume(path, meta, saved_ws)
        state = self._state(for_load=True, saved_world_size=saved_ws)
        self.checkpointer.load(path, state)
        self.engine.load_state(state, path)
        own = next(v for k, v in state.items() if k.startswith("rank"))
        self.step = int(state["trainer"]["step"])
        if resharded:
            torch.manual_seed(self.cfg.train.seed + 1_000 * self.dist.rank + self.step)
        else:
            torch.set_rng_state(own["torch_rng"])
        self.loader.load_state_dict(json.loads(own["data"]))
        if meta.get(NO_OPTIMIZER_STATE):  # saved before the first update (`save_checkpoint`)
            self.optimizer.state.clear()
        if self.dist.is_main:
            how = (
                f" (resharded from {saved_ws} to {self.dist.world_size} ranks)" if resharded else ""
            )
            log.info("resumed from %s at step %d%s", path, self.step, how)
        return True
