"""A training DataLoader that can continue an epoch part-way, for exact mid-epoch resumes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import DataLoader


class ResumableDataLoader(DataLoader):
    """A DataLoader that asks, right before each epoch's first batch, how many batches of the epoch
    are already done, and draws and discards that many.

    ``epoch_start`` is set by :class:`~ssl_norms.callbacks.reproducible_resume.ReproducibleResume`:
    it seeds the epoch and returns Lightning's own count of the epoch's finished batches (restored
    from the checkpoint's loop progress; 0 in an uninterrupted epoch). Drawing the skipped batches,
    instead of skipping their indices, keeps every random stream where the uninterrupted run had it,
    so a run resumed from a mid-epoch checkpoint trains on exactly the batches an uninterrupted run
    would; the cost is loading those batches once more. Randomness drawn after the loader
    (augmentation on the device in ``on_after_batch_transfer``) is not replayed by the skip.
    Without ``epoch_start`` this is a plain DataLoader.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.epoch_start: Callable[[], int] | None = None

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
