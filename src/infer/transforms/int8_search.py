"""int8 that keeps its accuracy budget: quantize, measure against fp32, keep the costly nodes in
float, measure again; on the backend that will run the graph, once, cached.

The search (for a load with `precision="int8"` and a `Calibration` whose `budget` is set, the
default) runs in these steps, each one measured on the backend being compiled for:

1. Quantize the whole graph (transforms/precision.py: onnxruntime's quantizer or NNCF), run it
   and the fp32 model on the validation feeds (given, or held out of the calibration feeds) and
   time both in alternating blocks. A fully quantized graph that is not faster than fp32 ends the
   search: keeping nodes in float only slows it further.
2. While the budget is not met, rank the quantizer groups (the nodes reading one quantized
   tensor) by what putting each group alone back in float gains, on `Budget.ranking_feeds`
   feeds: NNCF's ranking (`quantize_with_accuracy_control`), for any quantizer and backend.
   Groups that gain the same are taken cheapest first (fewest weights kept in float).
3. Keep the best-ranked groups in float, 1, 2, 4, ... of them, until the budget is met on every
   validation feed, then bisect down to the fewest that meet it.
4. Time the result against fp32: it must be `Budget.min_speedup` times as fast.

Steps 2-3 stop at `Budget.time_limit` and the report says so. The outcome (the graph, and an
`Int8Report`: figures reached, nodes kept in float by name and op type, speedup, time taken) is
cached by model, calibration, budget, validation data, quantizer and backend/device, so the
next load only reads it. A budget missed, or met only by a graph slower than fp32, raises
`PrecisionError` with the numbers, unless `Budget.accept_best` takes the best graph found.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx

from .. import _onnx, _race
from ..budget import Budget, Figure, Measure, measure, score_outputs
from ..cache import Cache, Key
from ..calibration import Calibration
from ..device import Device
from ..errors import InferError, OptionError, PrecisionError
from ..model import Model
from ..options import Options
from . import _qdq, precision

log = logging.getLogger(__name__)

SEARCH_VERSION = 1
"""Bump when a change here changes what a search finds, so cached searches run again."""

SEARCH_FILE = "search.json"
_BLOCK_SECONDS = 0.02  # a timing block lasts at least this long
_TIMING_SECONDS = 3.0  # timing one pair stops starting rounds after this long
_ROUNDS = 7
BLOCKS = 16
"""Graphs with more quantizer groups than this are ranked by blocks of groups first."""


class _Backend(Protocol):  # what the search needs of a backends.base.Backend
    @property
    def name(self) -> str: ...

    def compile(
        self, model: Model, device: Device, options: Options, variant: str | None
    ) -> Any: ...

    def probe(self) -> Any: ...


@dataclass(frozen=True)
class Int8Report:
    """What the int8 search reached, on which backend, and why it stopped."""

    met: bool
    budget: str
    figures: tuple[Figure, ...]  # of the graph returned
    kept: tuple[tuple[str, str], ...]  # (node name, op type) kept in float
    speedup: float | None  # fp32 time / int8 time on `backend`, same feed, same run
    fp32_ms: float | None
    int8_ms: float | None
    backend: str
    validation: int  # feeds measured on
    held_out: bool  # the validation feeds were held out of the calibration feeds
    search_s: float
    bounded_s: float  # of search_s, the part Budget.time_limit bounds (steps 2-3)
    evaluations: int  # graphs compiled and measured
    stopped: str
    quantized: str  # what the quantizer made (before any node went back to float)
    tried: tuple[str, ...] = ()  # one line per graph measured
    min_speedup: float | None = None  # the budget's (None: speed measured, not required)
    runs: str = "int8"
    """What the engine runs: "int8" (this graph), or "fp32" where Budget(accept_best=True) found
    no int8 graph faster than the fp32 model it would replace."""

    @property
    def drop(self) -> Figure:
        """The figure closest to (or furthest past) its limit."""
        return Measure(self.figures, 0.0).worst

    @property
    def accuracy_met(self) -> bool:
        """Whether every accuracy figure is within its budget (the speed aside)."""
        return all(f.met for f in self.figures)

    def verdict(self) -> str:
        """Whether the budget is met and, where not, what missed it: the accuracy (its worst
        figure) or the speed."""
        where = "held-out" if self.held_out else "validation"
        accuracy = f"{self.drop} on {self.validation} {where} feeds"
        if self.met:
            return f"budget met: {accuracy}"
        if not self.accuracy_met:
            return f"budget NOT met: {accuracy}"
        speed = "speed not measured" if self.speedup is None else self._speed_missed()
        return f"budget NOT met: accuracy met ({accuracy}), {speed}"

    def _speed_missed(self) -> str:
        assert self.speedup is not None
        if self.speedup < 1:
            return f"slower than fp32 ({self.speedup:.2f}x on {self.backend})"
        return (
            f"short of the speed budget ({self.speedup:.2f}x fp32 on {self.backend}, budget >= "
            f"{self.min_speedup:g}x)"
        )

    def summary(self) -> str:
        """One line for engine.precision."""
        kept = len(self.kept)
        speed = "" if self.speedup is None else f", {self.speedup:.2f}x fp32 on {self.backend}"
        if not self.met and self.accuracy_met:
            speed = ""  # the verdict says it
        text = f"{self.verdict()}, {kept} node{'s' * (kept != 1)} kept in float{speed}"
        if self.runs == "fp32":
            text += "; fp32 runs in its place"
        return text

    def __str__(self) -> str:
        lines = [
            f"int8 on {self.backend}: {'budget met' if self.met else 'budget NOT met'} "
            f"({self.budget}); {self.stopped}",
        ]
        if not self.met:
            lines.append(f"  missed: {self.verdict().removeprefix('budget NOT met: ')}")
        if self.runs == "fp32":
            lines.append(
                "  runs: fp32 (Budget(accept_best=True) keeps the best int8 graph found only "
                "where it is faster than the fp32 model it replaces)"
            )
        lines += [
            f"  quantized: {self.quantized}",
            "  reached: " + "; ".join(str(f) for f in self.figures),
        ]
        if self.speedup is not None:
            lines.append(
                f"  speed: {self.int8_ms:.3g} ms int8 vs {self.fp32_ms:.3g} ms fp32 = "
                f"{self.speedup:.2f}x"
            )
        if self.kept:
            shown = ", ".join(f"{n} ({t})" for n, t in self.kept[:20])
            more = f" and {len(self.kept) - 20} more" if len(self.kept) > 20 else ""
            lines.append(f"  kept in float: {shown}{more}")
        lines.append(
            f"  search: {self.evaluations} graphs measured on {self.validation} feeds in "
            f"{self.search_s:.1f} s"
        )
        lines += [f"    {t}" for t in self.tried[-12:]]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["figures"] = [f.to_dict() for f in self.figures]
        out["kept"] = [list(k) for k in self.kept]
        out["tried"] = list(self.tried)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Int8Report:
        data = dict(data)
        data["figures"] = tuple(Figure(**f) for f in data["figures"])
        data["kept"] = tuple((str(n), str(t)) for n, t in data["kept"])
        data["tried"] = tuple(data.get("tried", ()))
        return cls(**data)


def guarded(options: Options) -> bool:
    """Whether an int8 load measures its graph against a budget (a Calibration with one)."""
    if options.precision != "int8" or options.calibration is None:
        return False
    return Calibration.of(options.calibration).budget is not None


def search(
    model: Model,
    options: Options,
    *,
    quantizer: str | None,
    backend: _Backend,
    device: Device,
    variant: str | None,
    label: str,
) -> tuple[Model, Int8Report | None]:
    """The int8 model to compile on `backend` (named `label`), searched and measured there, and
    the report (None for a model that already holds Q/DQ). Raises PrecisionError when the
    budget is not met by a graph faster than fp32 and the budget does not accept the best."""
    given = precision.int8_source(model, options)
    if given is not None:
        return given, None
    calib = Calibration.of(options.calibration)
    budget = calib.budget
    assert budget is not None
    chosen = precision.int8_quantizer(model, calib, quantizer or "onnxruntime")
    inputs = model.inputs
    data, _ = calib.digest(inputs, cast=options.cast)
    if budget.validation is not None:
        validation = _validation(calib, budget)
        vdata = budget.key or validation.digest(inputs, cast=options.cast)[0]
    else:
        validation, vdata = None, "held-out"
    key = Key.of(
        "onnx-int8-search",
        model=model.digest,
        transform=f"int8-search/{SEARCH_VERSION}/{precision.TRANSFORM_VERSION}",
        data=data,
        **precision.int8_params(calib, chosen),
        budget=budget.key_parts(),
        validation=vdata,
        backend=f"{label} {backend.probe().version}",
        device=device.identity,
        threads=options.threads,
        hint=options.hint,
        shapes={k: repr(v) for k, v in options.shapes.items()},
        **precision._versions(chosen),
    )

    def build(folder: Path) -> dict[str, Any]:
        report = _Search(
            model, options, calib, budget, validation, chosen, backend, device, variant, label
        ).run(folder)
        (folder / SEARCH_FILE).write_text(json.dumps(report.to_dict(), indent=1))
        return {"precision": _described(report), "met": report.met}

    if options.cache:
        entry, _ = Cache(options.cache_dir).get_or_build(key, build)
        folder = entry.path
        report = Int8Report.from_dict(json.loads((folder / SEARCH_FILE).read_text()))
        out = Model.load(folder / precision.MODEL_FILE)
    else:
        with tempfile.TemporaryDirectory(prefix="infer-int8-search-") as tmp:
            build(Path(tmp))
            report = Int8Report.from_dict(json.loads((Path(tmp) / SEARCH_FILE).read_text()))
            out = Model.load((Path(tmp) / precision.MODEL_FILE).read_bytes())
    out.name = f"{model.name}.int8"
    out.precision = _described(report)  # from the report: a cached search reads in today's words
    if not report.met and not budget.accept_best:
        raise PrecisionError(
            f"int8 for {model!r} on {label} does not meet its budget with a graph faster than "
            f"fp32; Budget(accept_best=True) takes the best graph found, "
            f"Calibration(budget=None) skips the check, or load it at fp32:\n{report}",
            report,
        )
    if not report.met and report.speedup is not None and report.speedup < 1:
        # The best found is slower than fp32: never worth running in fp32's place.
        report = dataclasses.replace(report, runs="fp32")
        log.warning(
            "int8 for %r on %s: the best graph found is slower than fp32; running fp32:\n%s",
            model,
            label,
            report,
        )
        return precision._as_is(model, f"fp32 (int8 not used: {report.summary()})"), report
    if not report.met:
        log.warning(
            "int8 for %r on %s misses its budget; using the best found:\n%s", model, label, report
        )
    return out, report


def _validation(calib: Calibration, budget: Budget) -> Calibration:
    """The validation feeds, read and checked like calibration feeds (and preprocessed alike)."""
    assert budget.validation is not None
    return Calibration(
        budget.validation,
        limit=None,
        preprocess=calib.preprocess,
        budget=None,
        key=budget.key,
    )


class _Search:
    """One search: the state of steps 1-4 (module docstring)."""

    def __init__(
        self,
        model: Model,
        options: Options,
        calib: Calibration | None,
        budget: Budget,
        validation: Calibration | None,
        quantizer: str,
        backend: _Backend,
        device: Device,
        variant: str | None,
        label: str,
    ) -> None:
        self.model, self.options, self.calib, self.budget = model, options, calib, budget
        self.validation, self.quantizer = validation, quantizer
        self.backend, self.device, self.variant, self.label = backend, device, variant, label
        base = dataclasses.replace(options, calibration=None, progress=None, preprocess=None)
        self.fp32_options = dataclasses.replace(base, precision="fp32")
        # Candidates are not cached by the runtime (OpenVINO's CACHE_DIR): one compile each.
        self.int8_options = dataclasses.replace(base, precision="int8", cache=False)
        self.progress = options.progress
        self.evaluations = 0
        self.bounded_s = 0.0
        self.tried: list[str] = []

    # -- the steps ----------------------------------------------------------------------------

    def run(self, folder: Path) -> Int8Report:
        start = time.perf_counter()
        calib, feeds, held_out = self._split()
        names = list(self.budget.outputs or [o.name for o in self.model.outputs])
        missing = [n for n in names if n not in {o.name for o in self.model.outputs}]
        if missing:
            raise OptionError(
                f"Budget(outputs=...): {missing} are not outputs of {self.model!r}; its outputs "
                f"are {[o.name for o in self.model.outputs]}"
            )
        self.names, self.feeds = names, feeds
        self.scores = score_outputs(self.model.proto)
        self._report("quantize", 0)
        _, described = precision.quantize(self.model, self.options, calib, self.quantizer, folder)
        quantized = onnx.load(str(folder / precision.MODEL_FILE))
        float_graph = onnx.load(str(folder / precision.FLOAT_FILE))
        (folder / precision.FLOAT_FILE).unlink()
        fp32 = self.backend.compile(self.model, self.device, self.fp32_options, self.variant)
        try:
            self.want = self._outputs(fp32, feeds)
            chosen, kept, result, stopped, speed = self._search(fp32, quantized, float_graph, start)
        finally:
            fp32.close()
        _onnx.save(chosen, folder / precision.MODEL_FILE)
        met = result.met and (
            self.budget.min_speedup is None
            or (speed is not None and speed[0] >= self.budget.min_speedup)
        )
        return Int8Report(
            met=met,
            budget=self.budget.describe(),
            figures=result.figures,
            kept=tuple(_qdq.op_types(quantized, kept)),
            speedup=None if speed is None else speed[0],
            fp32_ms=None if speed is None else speed[1],
            int8_ms=None if speed is None else speed[2],
            backend=self.label,
            validation=len(feeds),
            held_out=held_out,
            search_s=time.perf_counter() - start,
            bounded_s=self.bounded_s,
            evaluations=self.evaluations,
            stopped=stopped,
            quantized=described,
            tried=tuple(self.tried),
            min_speedup=self.budget.min_speedup,
        )

    def _search(
        self,
        fp32: Any,
        quantized: onnx.ModelProto,
        float_graph: onnx.ModelProto,
        start: float,
    ) -> tuple[onnx.ModelProto, list[str], Measure, str, tuple[float, float, float] | None]:
        """(graph, nodes kept in float, its figures, why the search stopped, its speed)."""
        budget = self.budget
        full, outs, session = self._evaluate(quantized, "fully quantized", keep=True)
        try:
            speed = self._speed(fp32, session)
        finally:
            session.close()
        self.tried[-1] += f", {speed[0]:.2f}x fp32"
        bounded = time.perf_counter()
        deadline = bounded + budget.time_limit
        if budget.min_speedup is not None and speed[0] < budget.min_speedup:
            return (
                quantized,
                [],
                full,
                f"the fully quantized graph runs at {speed[0]:.2f}x the speed of fp32 on "
                f"{self.label} (budget >= {budget.min_speedup:g}x), and keeping nodes in float "
                "only slows it further: no search",
                speed,
            )
        if full.met:
            return quantized, [], full, "the fully quantized graph meets the budget", speed
        groups = _qdq.groups(quantized.graph)
        # Every group with weights in float is the fp32 model plus overhead: not a candidate.
        if sum(1 for g in groups if g.weights) < 2:
            return quantized, [], full, "not met, and no node can go back to float", speed
        order, ranked = self._rank(quantized, float_graph, groups, outs, deadline)
        most = max(i for i, g in enumerate(order) if g.weights)  # the last one stays int8
        best: tuple[list[str], Measure] | None = None  # fewest nodes that meet the budget
        closest: tuple[list[str], Measure] = ([], full)  # the least short of it

        def nodes(k: int) -> list[str]:
            seen: dict[str, None] = {}
            for g in order[:k]:
                seen.update(dict.fromkeys(g.nodes))
            return list(seen)

        def attempt(k: int) -> Measure | None:
            nonlocal best, closest
            kept = nodes(k)
            try:
                m, _, _ = self._evaluate(
                    _qdq.revert(quantized, float_graph, kept), f"{len(kept)} nodes in float"
                )
            except InferError as e:
                self.tried.append(f"{len(kept)} nodes in float: failed: {e}")
                return None
            if m.met and (best is None or len(kept) < len(best[0])):
                best = (kept, m)
            if _excess_key(m) < _excess_key(closest[1]):
                closest = (kept, m)
            return m

        k, failed_below, stopped = 1, 0, ""
        while True:  # 1, 2, 4, ... groups until the budget is met
            if time.perf_counter() >= deadline:
                stopped = f"time limit of {budget.time_limit:g} s reached"
                break
            m = attempt(k)
            if m is not None and m.met:
                break
            failed_below = k
            if k == most:
                stopped = (
                    "the budget is not met even with every node in float but "
                    f"{', '.join(order[most].nodes)}"
                )
                break
            k = min(2 * k, most)
        if best is not None:  # bisect down to the fewest groups that meet it
            hi = k
            lo = failed_below + 1
            while lo < hi:
                if time.perf_counter() >= deadline:
                    stopped = f"time limit of {budget.time_limit:g} s reached while trimming"
                    break
                mid = (lo + hi) // 2
                m = attempt(mid)
                if m is not None and m.met:
                    hi = mid
                else:
                    lo = mid + 1
        self.bounded_s = time.perf_counter() - bounded
        note = f" ({ranked} of {len(order)} groups ranked)" if ranked < len(order) else ""
        if best is not None:
            kept, result = best
            graph = _qdq.revert(quantized, float_graph, kept)
            final = self._time(fp32, graph)
            self.tried.append(f"chosen: {len(kept)} nodes in float, {final[0]:.2f}x fp32")
            why = stopped or f"met with {len(kept)} node{'s' * (len(kept) != 1)} in float"
            if budget.min_speedup is not None and final[0] < budget.min_speedup:
                why = (
                    f"the budget is met with {len(kept)} nodes in float, but that graph runs at "
                    f"{final[0]:.2f}x the speed of fp32 on {self.label} (budget >= "
                    f"{budget.min_speedup:g}x)"
                )
            return graph, kept, result, why + note, final
        kept, result = closest
        graph = _qdq.revert(quantized, float_graph, kept) if kept else quantized
        final = self._time(fp32, graph) if kept else speed
        return graph, kept, result, (stopped or "not met") + note, final

    def _rank(
        self,
        quantized: onnx.ModelProto,
        float_graph: onnx.ModelProto,
        groups: list[_qdq.Group],
        outs: list[dict[str, np.ndarray]],
        deadline: float,
    ) -> tuple[list[_qdq.Group], int]:
        """Groups by what keeping each in float gains on the ranking feeds (loss down), cheapest
        first among equals, within half the time left. A graph of more than BLOCKS groups is
        ranked by blocks of neighbouring groups first (one evaluation each: error spread over
        many layers shows there, where no single group stands out), then group by group inside
        the costliest blocks while time lasts; groups not ranked keep their graph order inside
        their block. Returns (order, how many groups were ranked one by one)."""
        sub = self.feeds[: self.budget.ranking_feeds]
        base = measure(
            self.budget, outs[: len(sub)], self.want[: len(sub)], self.scores, self.names
        )
        stop = time.perf_counter() + (deadline - time.perf_counter()) / 2

        def gain(nodes: Sequence[str], what: str) -> float | None:
            try:
                m, _, _ = self._evaluate(
                    _qdq.revert(quantized, float_graph, nodes), None, feeds=sub
                )
            except InferError as e:
                log.debug("ranking %s failed: %s", what, e)
                return None
            return base.loss - m.loss

        def by_gain(gains: dict[int, float]) -> list[int]:
            return sorted(gains, key=lambda i: (-round(gains[i], 6), groups[i].weights, i))

        if len(groups) > BLOCKS:
            size = -(-len(groups) // BLOCKS)
            blocks = [
                list(range(i, min(i + size, len(groups)))) for i in range(0, len(groups), size)
            ]
            block_gain: dict[int, float] = {}
            for b, members in enumerate(blocks):
                if time.perf_counter() >= stop:
                    break
                self._report("rank blocks", b, len(blocks))
                g = gain([n for i in members for n in groups[i].nodes], f"block {b}")
                if g is not None:
                    block_gain[b] = g
            block_order = sorted(block_gain, key=lambda b: -block_gain[b])
            block_order += [b for b in range(len(blocks)) if b not in block_gain]
        else:
            blocks, block_order, block_gain = [list(range(len(groups)))], [0], {}
        gains: dict[int, float] = {}
        order: list[int] = []
        for b in block_order:
            inside: dict[int, float] = {}
            for i in blocks[b]:
                if time.perf_counter() >= stop:
                    break
                self._report("rank", len(gains) + len(inside), len(groups))
                g = gain(groups[i].nodes, groups[i].tensor)
                if g is not None:
                    inside[i] = g
            gains.update(inside)
            order += by_gain(inside) + [i for i in blocks[b] if i not in inside]
        # The search keeps the last group with weights in int8 (all in float is fp32, slower):
        # let that be the measured least costly one.
        weighted = [i for i in gains if groups[i].weights]
        if weighted:
            last = min(weighted, key=lambda i: (gains[i], -groups[i].weights))
            order = [i for i in order if i != last] + [last]
        if gains or block_gain:
            top = by_gain(gains)[:1]
            costly = (
                f"; most costly: {groups[top[0]].tensor} ({', '.join(groups[top[0]].nodes[:3])}), "
                f"loss {base.loss:.4g} -> {base.loss - gains[top[0]]:.4g} without it"
                if top
                else ""
            )
            blocks_text = (
                f"{len(block_gain)} of {len(blocks)} blocks and " if len(blocks) > 1 else ""
            )
            self.tried.append(
                f"ranked {blocks_text}{len(gains)} of {len(groups)} groups on {len(sub)} feeds"
                + costly
            )
        return [groups[i] for i in order], len(gains)

    # -- measuring ----------------------------------------------------------------------------

    def _evaluate(
        self,
        graph: onnx.ModelProto,
        what: str | None,
        *,
        keep: bool = False,
        feeds: Sequence[dict[str, np.ndarray]] | None = None,
    ) -> tuple[Measure, list[dict[str, np.ndarray]], Any]:
        """Compile `graph` on the backend, run the feeds, measure; `what` names it in the report
        (None: not reported). With keep, the session is returned open."""
        feeds = self.feeds if feeds is None else feeds
        candidate = Model.load(graph)
        candidate.name = f"{self.model.name}.int8-candidate"
        candidate.precision = "int8 (search candidate)"
        session = self.backend.compile(candidate, self.device, self.int8_options, self.variant)
        try:
            outs = self._outputs(session, feeds)
        except BaseException:
            session.close()
            raise
        self.evaluations += 1
        m = measure(self.budget, outs, self.want[: len(feeds)], self.scores, self.names)
        if what is not None:
            self.tried.append(f"{what}: {m}")
            log.info("int8 search on %s: %s: %s", self.label, what, m)
        if not keep:
            session.close()
            session = None
        return m, outs, session

    def _outputs(
        self, session: Any, feeds: Sequence[dict[str, np.ndarray]]
    ) -> list[dict[str, np.ndarray]]:
        return [
            {k: np.array(v, copy=True) for k, v in session.run(f, self.names).items()}
            for f in feeds
        ]

    def _time(self, fp32: Any, graph: onnx.ModelProto) -> tuple[float, float, float]:
        """`_speed` of a graph not compiled yet."""
        _, _, session = self._evaluate(graph, None, keep=True, feeds=self.feeds[:1])
        try:
            return self._speed(fp32, session)
        finally:
            session.close()

    def _speed(self, fp32: Any, int8: Any) -> tuple[float, float, float]:
        """(fp32 time / int8 time, fp32 ms, int8 ms) on the first validation feed: blocks of runs
        timed in turn (a short pause between, so one runtime's spinning threads do not tax the
        other), the median of the paired ratios; times are each side's best block."""
        feed = self.feeds[0]
        for s in (fp32, int8):  # warm up (first runs allocate, some runtimes compile lazily)
            s.run(feed)
            s.run(feed)
        blocks: dict[str, list[float]] = {"fp32": [], "int8": []}
        start = time.perf_counter()
        while len(blocks["fp32"]) < _ROUNDS and (
            len(blocks["fp32"]) < 3 or time.perf_counter() - start < _TIMING_SECONDS
        ):
            for name, s in (("fp32", fp32), ("int8", int8)):
                time.sleep(0.005)
                blocks[name].append(_race.block(s, feed, _BLOCK_SECONDS)[0])
        ratio = statistics.median(a / b for a, b in zip(blocks["fp32"], blocks["int8"]))
        return ratio, min(blocks["fp32"]) * 1e3, min(blocks["int8"]) * 1e3

    # -- data ---------------------------------------------------------------------------------

    def _split(self) -> tuple[Calibration, list[dict[str, np.ndarray]], bool]:
        """(calibration to quantize with, validation feeds, whether they were held out)."""
        assert self.calib is not None  # a search quantizes with calibration data
        inputs, cast = self.model.inputs, self.options.cast
        if self.validation is not None:
            feeds = list(self.validation.feeds(inputs, cast=cast))
            if not feeds:
                raise OptionError("Budget(validation=...) is empty: give at least one feed")
            if self.budget.labels is not None and len(self.budget.labels) != len(feeds):
                raise OptionError(
                    f"Budget: {len(self.budget.labels)} labels for {len(feeds)} validation feeds"
                )
            return self.calib, feeds, False
        all_feeds = list(self.calib.feeds(inputs, cast=cast))
        n = len(all_feeds)
        count = max(1, round(n * self.budget.holdout))
        picked = (
            {int(i) for i in np.linspace(0, n - 1, count + 2)[1:-1].round()} if n > 1 else set()
        )
        held = [f for i, f in enumerate(all_feeds) if i in picked]
        rest = [f for i, f in enumerate(all_feeds) if i not in picked]
        if not held or not rest:
            raise OptionError(
                f"the int8 budget is measured on calibration feeds held out from quantizing "
                f"({self.budget.holdout:.0%} of them), but there are {n}: give more calibration "
                "feeds, or Budget(validation=feeds), or budget=None to skip the check"
            )
        kept = dataclasses.replace(
            self.calib,
            data=rest,
            limit=None,
            preprocess=None,
            key=None if self.calib.key is None else f"{self.calib.key}:without-{len(held)}-of-{n}",
        )
        return kept, held, True

    def _report(self, stage: str, done: int, total: int | None = None) -> None:
        if self.progress is None:
            return
        try:
            self.progress(f"int8 {stage}", done, total)
        except Exception:
            log.debug("progress callback failed", exc_info=True)


def _excess_key(m: Measure) -> tuple[int, float]:
    """Order for "least short of the budget": met first, then by the worst figure's excess,
    then by loss."""
    worst = m.worst
    if worst.kind in ("agreement", "exact"):
        excess = (worst.limit - worst.value) / max(1 - worst.limit, 1e-9)
    else:
        excess = (worst.value - worst.limit) / max(worst.limit, 1e-9)
    return (0 if m.met else 1, excess)


def _described(report: Int8Report) -> str:
    """The quantizer's description with the search's outcome inside its parentheses."""
    text = report.quantized
    if text.endswith(")"):
        return f"{text[:-1]}; {report.summary()})"
    return f"{text} ({report.summary()})"


# -- int8 a runtime makes on the fly ------------------------------------------------------------

RUNTIME_FEEDS = 8
"""Random feeds the budget is measured on when no calibration data is given."""


def runtime(
    model: Model,
    options: Options,
    *,
    how: str,
    backend: _Backend,
    device: Device,
    variant: str | None,
    label: str,
) -> tuple[Model, Int8Report | None]:
    """precision="int8" for a model whose weights are already int8, where the runtime quantizes
    the activations on the fly (`Backend.runtime_int8`, described by `how`): the model as it is,
    measured at int8 against itself at fp32 on `backend` under the budget (the Calibration's,
    else `Budget()`), on the validation feeds (given, or held out of the calibration feeds; with
    no calibration, seeded random feeds shaped as the model's inputs, what a sequence model
    sees; a Calibration with budget=None: not measured, no report). Where the budget is missed (and the budget does not accept the best), the model
    comes back marked `float_activations`: the runtime runs its int8 weights without
    quantizing the activations, and `engine.precision` says why."""
    from ..feeds import random_feeds, representative_shapes, roles_of

    start = time.perf_counter()
    calib = Calibration.of(options.calibration) if options.calibration is not None else None
    if calib is not None and calib.budget is None:  # asked not to measure
        return precision._as_is(model, f"int8 ({how}; not measured: budget=None)"), None
    budget = calib.budget if calib is not None and calib.budget is not None else Budget()
    search = _Search(
        model,
        options,
        calib,
        budget,
        None,
        "",
        backend,
        device,
        variant,
        label,
    )
    if calib is not None and budget.validation is not None:
        search.validation = _validation(calib, budget)
    if calib is not None:
        _, feeds, held_out = search._split()
        where = "held-out" if held_out else "validation"
    else:
        specs = model.inputs
        shapes, _ = representative_shapes(specs, options.shapes or None, model=model)
        roles = roles_of(specs, model)
        feeds = [random_feeds(specs, shapes, seed=i, roles=roles) for i in range(RUNTIME_FEEDS)]
        held_out, where = False, "random"
    names = list(budget.outputs or [o.name for o in model.outputs])
    search.names, search.feeds = names, feeds
    search.scores = score_outputs(model.proto)
    fp32 = backend.compile(model, device, search.fp32_options, variant)
    try:
        search.want = search._outputs(fp32, feeds)
        int8 = backend.compile(model, device, search.int8_options, variant)
        try:
            got = search._outputs(int8, feeds)
            result = measure(budget, got, search.want, search.scores, names)
            speed = search._speed(fp32, int8)
        finally:
            int8.close()
    finally:
        fp32.close()
    fast = budget.min_speedup is None or speed[0] >= budget.min_speedup
    report = Int8Report(
        met=result.met and fast,
        budget=budget.describe(),
        figures=result.figures,
        kept=(),
        speedup=speed[0],
        fp32_ms=speed[1],
        int8_ms=speed[2],
        backend=label,
        validation=len(feeds),
        held_out=held_out,
        search_s=time.perf_counter() - start,
        bounded_s=0.0,
        evaluations=1,
        stopped="measured once: the runtime quantizes the activations, the graph is the model's",
        quantized=how,
        tried=(f"{how}: {result}, {speed[0]:.2f}x fp32",),
    )
    said = "held-out" if held_out else "validation"
    summary = report.summary().replace(f" {said} feeds", f" {where} feeds")
    summary = summary.replace(", 0 nodes kept in float", "")
    # accept_best keeps a miss that is not slower than fp32 (as the search does)
    if report.met or (budget.accept_best and speed[0] >= 1.0):
        if not report.met:
            log.warning("int8 for %r on %s misses its budget; using it:\n%s", model, label, report)
        return precision._as_is(model, f"int8 ({how}; {summary})"), report
    # Off, the model still runs its int8 weights: what int8 meant for it without the runtime's.
    report = dataclasses.replace(
        report, stopped=f"{report.stopped}; budget missed: activations stay float"
    )
    log.info("int8 for %r on %s: %s misses the budget; activations stay float", model, label, how)
    out = precision._as_is(
        model,
        f"int8 (int8 weights from the model, float activations: {how} missed the budget: "
        f"{summary.removeprefix('budget NOT met: ')})",
    )
    out.float_activations = True
    return out, report
