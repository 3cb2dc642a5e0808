"""Merging requests into one engine run and splitting the outputs back, for the servers' batchers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import RuntimeFailure

Feeds = Mapping[str, np.ndarray]


def groups(feeds: Sequence[Feeds], batched: bool) -> list[list[int]]:
    """Indices of requests that can share one run: same inputs, dtypes and shapes past the
    batch axis (every request alone when the model has no batch axis). Order is kept."""
    if not batched:
        return [[i] for i in range(len(feeds))]
    found: dict[Any, list[int]] = {}
    for i, f in enumerate(feeds):
        key = tuple(sorted((n, a.dtype.str, a.shape[1:]) for n, a in f.items()))
        found.setdefault(key, []).append(i)
    return list(found.values())


def merge(feeds: Sequence[Feeds]) -> dict[str, np.ndarray]:
    """One feed dict holding every request's rows, in order."""
    if len(feeds) == 1:
        return dict(feeds[0])
    return {name: np.concatenate([f[name] for f in feeds]) for name in feeds[0]}


def rows(feed: Feeds) -> int:
    """Rows (batch size) of one request."""
    first = next(iter(feed.values()))
    return int(first.shape[0]) if first.ndim else 1


def split(out: Mapping[str, np.ndarray], feeds: Sequence[Feeds]) -> list[dict[str, np.ndarray]]:
    """The merged run's outputs cut back into one dict per request."""
    if len(feeds) == 1:
        return [dict(out)]
    counts = [rows(f) for f in feeds]
    total = sum(counts)
    for name, value in out.items():
        if value.ndim == 0 or value.shape[0] != total:
            raise RuntimeFailure(
                f"output {name!r} has shape {list(value.shape)} for a batch of {total} rows: the "
                "model does not keep the batch axis, so requests cannot share a run; serve it "
                "with batching off (max_batch=0)"
            )
    cuts = np.cumsum(counts)[:-1]
    pieces = {name: np.split(value, cuts) for name, value in out.items()}
    return [{name: pieces[name][k] for name in out} for k in range(len(feeds))]
