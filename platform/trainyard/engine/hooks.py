"""Training hooks: a closed set of events, fired by one dispatcher in a fixed order.

The loop, in the order events fire::

    on_train_begin(trainer, train_dataset, val_dataset)
    for epoch in 1..epochs:
        on_epoch_begin(trainer, epoch)
        for each batch:
            on_batch_begin(trainer, batch)
            on_step_end(trainer, step, metrics)        # when the batch ends an accumulation window: after
                                                       # its optimizer step; metrics: train/step_loss,
                                                       # train/grad_norm, train/learning_rate, time/step_ms
            on_batch_end(trainer, batch, outputs)      # outputs: {"loss", "logits", "model_output"}
            on_checkpoint(trainer, path)               # when checkpoint_every_n_steps is due
        on_validation_end(trainer, epoch, metrics)     # only with validation data
        on_checkpoint(trainer, path)                   # epoch-end checkpoint
        on_epoch_end(trainer, epoch, metrics)
    on_train_end(trainer, results)

Hooks observe. To change the run they use the handles the trainer gives them: today,
`trainer.request_stop(reason)`, which ends the run after the current batch with a
checkpoint of that exact position (so it can be resumed). What hooks may read:
`trainer.state` (epoch, global_step, batch_in_epoch), `trainer.step_metrics` (the last
optimizer step's loss, gradient norm and learning rate), `trainer.context` (rank, world
size, device), `trainer.model`, `trainer.training_config`. Epochs are numbered from 1.

The platform's own observers (the progress bar, the epoch log line, W&B, the export at the
end: `observers.py`) are hooks on the same dispatcher. For every event they fire first,
then the user's hooks in the order given, so a user's `on_train_end` already sees
`results["export_path"]`.
"""

from __future__ import annotations

import enum
import inspect
from typing import Any, Iterable, Sequence


class Event(str, enum.Enum):
    TRAIN_BEGIN = "on_train_begin"
    EPOCH_BEGIN = "on_epoch_begin"
    BATCH_BEGIN = "on_batch_begin"
    STEP_END = "on_step_end"
    BATCH_END = "on_batch_end"
    VALIDATION_END = "on_validation_end"
    CHECKPOINT = "on_checkpoint"
    EPOCH_END = "on_epoch_end"
    TRAIN_END = "on_train_end"


class TrainingHooks:
    """Subclass and override any subset of these methods."""

    def on_train_begin(self, trainer, train_dataset, val_dataset) -> None: ...

    def on_epoch_begin(self, trainer, epoch: int) -> None: ...

    def on_batch_begin(self, trainer, batch) -> None: ...

    def on_step_end(self, trainer, step: int, metrics: dict) -> None: ...

    def on_batch_end(self, trainer, batch, outputs) -> None: ...

    def on_validation_end(self, trainer, epoch: int, metrics: dict) -> None: ...

    def on_checkpoint(self, trainer, path: str) -> None: ...

    def on_epoch_end(self, trainer, epoch: int, metrics: dict) -> None: ...

    def on_train_end(self, trainer, results: dict) -> None: ...


_EVENT_NAMES = frozenset(e.value for e in Event)


class Observer(TrainingHooks):
    """A built-in hook that may hold an outside resource (a W&B run, a progress bar):
    `close()` releases it when the run ends, whether it succeeded or raised."""

    def close(self) -> None: ...


class HookDispatcher:
    """Calls every hook for an event: the built-in observers, then the user's hooks in
    the order they were given. This is the one place that decides dispatch order."""

    def __init__(self, hooks: TrainingHooks | Sequence[TrainingHooks] | None, observers: Sequence[Observer] = ()):
        if hooks is None:
            hooks = []
        elif isinstance(hooks, TrainingHooks):
            hooks = [hooks]
        self.hooks = list(hooks)  # the user's: what travels to Ray workers
        self.observers = list(observers)  # rebuilt from the TrainingConfig wherever the loop runs
        for hook in (*self.observers, *self.hooks):
            _check_hook(hook)

    def fire(self, event: Event, trainer, *args: Any) -> None:
        for hook in (*self.observers, *self.hooks):
            getattr(hook, event.value)(trainer, *args)

    def close(self) -> None:
        for observer in self.observers:
            observer.close()

    def __bool__(self) -> bool:
        return bool(self.hooks)


def _check_hook(hook: Any) -> None:
    if not isinstance(hook, TrainingHooks):
        raise TypeError(
            f"hooks must be TrainingHooks instances (or a list of them), got {type(hook).__name__}; "
            "subclass trainyard.TrainingHooks and override the events you need"
        )
    for name in _own_method_names(type(hook)):
        if name.startswith("on_") and name not in _EVENT_NAMES:
            raise TypeError(
                f"{type(hook).__name__}.{name} is not a hook event, so it would never be called; "
                f"events are: {', '.join(e.value for e in Event)}"
            )


def _own_method_names(cls: type) -> Iterable[str]:
    for klass in cls.__mro__:
        if klass in (TrainingHooks, object):
            continue
        for name, value in vars(klass).items():
            if inspect.isfunction(value):
                yield name
