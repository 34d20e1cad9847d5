"""Streamed datasets: a user's ``torch.utils.data.Dataset`` too large to hold in memory is read
in batches when a model needs its samples, never stacked whole.

A Dataset is streamed when ``dataset_args.stream = true``, or, by default, when its features
would take more than :data:`STREAM_ABOVE_BYTES` in memory (the first sample's size times the
length). Loading reads it once, batch by batch: the labels (for stratified folds), the digest
and the checks of every sample (shape, dtype, finite values). Then each fold's training data is
a :class:`Rows` view: training, pruning and evaluation on the training fold fetch the rows of one
batch at a time (``dataset[i]`` for each ``i``), and the scaler is fitted in one more streamed pass.
The validation fold is read into memory (a ``1 / folds`` share of the data), as edge sets, checks
and latency need its arrays. Memory is then bounded by the validation fold and one batch, not by
the dataset.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

STREAM_ABOVE_BYTES = 1 << 30  # features above 1 GiB are streamed unless dataset_args.stream says
READ_BATCH = 1024  # samples fetched at a time while loading and fitting the scaler


class Streamed:
    """A map-style dataset of ``(features, label)`` pairs read on demand. ``fetch(idx)`` stacks
    the features of the samples ``idx`` (an array or a mapping of named arrays), cast as the
    registry casts a materialized dataset (``prepare``)."""

    def __init__(self, dataset: Any, n: int, prepare: Callable[[Any], Any]) -> None:
        self.dataset = dataset
        self.n = n
        self.prepare = prepare

    def __len__(self) -> int:
        return self.n

    def fetch(self, idx: np.ndarray) -> Any:
        return self.read(idx)[0]

    def read(self, idx: np.ndarray) -> tuple[Any, list[Any]]:
        """Features (stacked, prepared) and labels of the samples ``idx``, each read once."""
        items = [self.dataset[int(i)] for i in idx]
        xs = [_features(item) for item in items]
        if xs and isinstance(xs[0], Mapping):
            stacked: Any = {k: np.stack([np.asarray(x[k]) for x in xs]) for k in xs[0]}
        else:
            stacked = np.stack([np.asarray(x) for x in xs]) if xs else np.zeros((0,))
        labels = [item[1].item() if hasattr(item[1], "item") else item[1] for item in items]
        return self.prepare(stacked), labels


def _features(item: Any) -> Any:
    x = item[0]
    if hasattr(x, "detach"):
        return x.detach().cpu().numpy()
    if isinstance(x, Mapping):
        return {k: v.detach().cpu().numpy() if hasattr(v, "detach") else v for k, v in x.items()}
    return x


class Rows:
    """Samples ``idx`` of a :class:`Streamed` dataset, optionally through ``transform`` (a
    fitted scaler): the lazy training fold. ``take(sel)`` reads the selected rows (an index
    array, a boolean mask or a slice) into memory; nothing else does."""

    lazy_rows = True  # harness.inputs.take reads rows through take()

    def __init__(
        self, source: Streamed, idx: np.ndarray, transform: Callable[[Any], Any] | None = None
    ) -> None:
        self.source = source
        self.idx = np.asarray(idx, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.idx)

    def take(self, sel: Any) -> Any:
        if hasattr(sel, "numpy"):  # a torch index tensor
            sel = sel.cpu().numpy()
        rows = self.source.fetch(self.idx[sel])
        return self.transform(rows) if self.transform is not None else rows

    def subset(self, sel: Any) -> Rows:
        return Rows(self.source, self.idx[sel], self.transform)

    def with_transform(self, transform: Callable[[Any], Any] | None) -> Rows:
        return Rows(self.source, self.idx, transform)

    def batches(self, size: int = READ_BATCH) -> Any:
        for start in range(0, len(self), size):
            yield self.take(slice(start, start + size))


def scan(source: Streamed, check: Callable[[Any], None]) -> tuple[np.ndarray, bytes, Any]:
    """One streamed pass at load time: the labels, a SHA-256 digest of every sample as stored,
    and a description of a sample (the first row, with the largest value of every integer
    field: the token vocabulary); ``check`` sees every batch."""
    digest = hashlib.sha256()
    ys: list[Any] = []
    first: Any = None
    top: dict[str, int] = {}
    for start in range(0, len(source), READ_BATCH):
        idx = np.arange(start, min(start + READ_BATCH, len(source)))
        batch, labels = source.read(idx)
        check(batch)
        for k, a in batch.items() if isinstance(batch, Mapping) else [("", batch)]:
            digest.update(f"{k}|{a.dtype}|{a.shape[1:]}|".encode() + np.ascontiguousarray(a).data)
            if a.dtype.kind in "iu" and a.size:
                top[k] = max(top.get(k, 0), int(a.max()))
        ys.extend(labels)
        if first is None:
            first = batch
    return np.asarray(ys), digest.digest(), (first, top)
