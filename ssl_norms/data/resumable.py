"""A training DataLoader that can continue an epoch part-way, for exact mid-epoch resumes, and the
handshake it has with :class:`~ssl_norms.callbacks.reproducible_resume.ReproducibleResume`.

The handshake (:class:`ResumableLoader`):

1. when training starts, the callback sets the loader's ``epoch_start`` to one of its methods;
2. right before each epoch's first batch, the loader calls ``epoch_start()``: the callback seeds
   the epoch and returns how many of its batches Lightning already counts as done (restored from
   the checkpoint's loop progress; 0 in an uninterrupted epoch);
3. the loader draws and discards that many batches and yields the rest.

Drawing the skipped batches, instead of skipping their indices, keeps every random stream where the
uninterrupted run had it, so a run resumed from a mid-epoch checkpoint trains on exactly the batches
an uninterrupted run would; the cost is loading those batches once more. Randomness drawn after the
loader (augmentation on the device in ``on_after_batch_transfer``) is not replayed by the skip.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

from torch.utils.data import DataLoader


class EpochStart(Protocol):
    def __call__(self) -> int:
        """Seed the epoch about to start; return how many of its batches are already done."""


@runtime_checkable
class ResumableLoader(Protocol):
    """The loader's side of the handshake: it calls ``epoch_start`` (when set) right before each
    epoch's first batch and draws and discards the batches it reports as done."""

    epoch_start: EpochStart | None


class ResumableDataLoader(DataLoader):
    """A DataLoader that is a :class:`ResumableLoader`; without ``epoch_start`` a plain DataLoader."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.epoch_start: EpochStart | None = None

    def __iter__(self) -> Iterator[Any]:
        return self._continue(super().__iter__())

    def _continue(self, iterator: Iterator[Any]) -> Iterator[Any]:
        # runs at the first next(): after Lightning has restored and adjusted its loop progress
        done = self.epoch_start() if self.epoch_start is not None else 0
        for _ in range(done):
            next(iterator, None)
        yield from iterator

    # The position lives in Lightning's loop progress, which every checkpoint holds; these two make
    # Lightning treat the loader as resumable (no "not resumable" warning on a mid-epoch resume).
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass
