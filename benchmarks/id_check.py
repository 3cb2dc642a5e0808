"""What checking token ids costs: the feed check with the graph's bounds (one min and one max
over the ids, `BoundedFeedCheck`) against the plain check, next to one run of a small encoder
on ONNX Runtime (the cheapest run such a model has; a real BERT runs 10-100x longer).

    .venv/bin/python benchmarks/id_check.py [--repeat 15]

Blocks of calls alternate between the cases (benchmarks/_timing.py); the best block of each is
reported, in microseconds, with the check's extra cost as a share of the run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import models  # noqa: E402

import infer  # noqa: E402
from benchmarks import _timing  # noqa: E402
from infer.backends.base import BoundedFeedCheck, FeedCheck  # noqa: E402

SHAPES = [(1, 128), (8, 512), (32, 512)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    model = models.encoder(vocab=30522, hidden=64, ffn=256)
    with infer.Engine.load(model, device="cpu", backend="onnxruntime") as engine:
        session = engine._session
        bounded = session._feeds
        assert isinstance(bounded, BoundedFeedCheck)
        plain = FeedCheck(session.inputs, cast=False, reader=None, outputs=session.outputs)
        print(
            f"{'ids':>10} {'plain us':>9} {'bounded us':>10} {'check us':>9} {'run us':>9} {'share':>7}"
        )
        for shape in SHAPES:
            feeds = {"input_ids": np.random.default_rng(0).integers(0, 30522, shape, np.int64)}
            plain(feeds), bounded(feeds)  # warm the fast path
            times = _timing.blocks(
                {
                    "plain": lambda f=feeds: plain(f),
                    "bounded": lambda f=feeds: bounded(f),
                    "run": lambda f=feeds: engine.run(f),
                },
                number=200,
                repeat=args.repeat,
            )
            best = {k: min(v) * 1e6 for k, v in times.items()}
            extra = best["bounded"] - best["plain"]
            print(
                f"{'x'.join(map(str, shape)):>10} {best['plain']:9.2f} {best['bounded']:10.2f} "
                f"{extra:9.2f} {best['run']:9.1f} {extra / best['run']:7.2%}"
            )


if __name__ == "__main__":
    main()
