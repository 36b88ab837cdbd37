"""Which settings a run may change when it resumes: where it writes, how it runs and what it logs, and how
long it trains. Everything else (the model, the data, the optimiser, the seed, the numerics of a step)
must equal what the checkpoint was trained with, or the resumed run would record one config and train
another."""

from __future__ import annotations

from moe_lab.config.experiment import flatten

# Keys (or key prefixes ending in '.') that may differ between a checkpoint's config and the resuming run's.
MAY_CHANGE_ON_RESUME = (
    "name",
    "output_dir",
    "version",
    "model_init",  # used only at step 0; a resumed run takes its weights from the checkpoint
    "upcycle.",  # the same: the dense model is read only when a run starts
    "monitor.",
    "data.num_workers",
    "data.cache_dir",
    "trainer.max_steps",
    "trainer.resume",
    "trainer.val_every_n_steps",
    "trainer.val_batches",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.expert_parallel",  # checkpoints hold full expert stacks (and optimizer state): any N loads them
    "trainer.threads",
    "trainer.compile",
    "trainer.activation_checkpointing",
    "trainer.checkpoint_every_n_steps",
    "trainer.keep_checkpoints",
    "trainer.progress_bar",
    "trainer.log_every_n_steps",
    "trainer.loggers",
)
SHOWN_CHANGES = 4  # keys named in the message; the rest are counted


def may_change(key: str) -> bool:
    return any(key == rule or (rule.endswith(".") and key.startswith(rule)) for rule in MAY_CHANGE_ON_RESUME)


def changes_on_resume(saved: dict, requested: dict) -> list[str]:
    """The keys, as 'key: <saved> in the checkpoint, <requested> now', where the requested config differs
    from the checkpoint's in a setting a resume must keep."""
    before, now = flatten(saved), flatten(requested)
    return [
        f"{key}: {before.get(key)!r} in the checkpoint, {now.get(key)!r} now"
        for key in sorted(set(before) | set(now))
        if not may_change(key) and before.get(key) != now.get(key)
    ]


def describe_changes(changes: list[str]) -> str:
    shown = "; ".join(changes[:SHOWN_CHANGES])
    return shown + (f"; and {len(changes) - SHOWN_CHANGES} more" if len(changes) > SHOWN_CHANGES else "")
