"""The pool of OpenVINO infer requests behind `OpenVinoSession.submit`.

Futures resolve as inferences finish; OpenVINO's own callback thread copies the outputs out.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Any

import numpy as np

from ..errors import EngineClosed

log = logging.getLogger("infer.backends.openvino")


class Job:
    """One submitted inference: its Future, the outputs asked for, and the feeds it shares."""

    __slots__ = ("feeds", "finished", "future", "outputs")

    def __init__(self, future: Future, outputs: list[str] | None) -> None:
        self.future = future
        self.outputs = outputs
        self.feeds: list[Any] = []  # the input tensors: the request reads them until it is done
        self.finished = False


class RequestPool:
    """A fixed pool of InferRequests behind submit(); futures resolve as inferences finish.

    Each request's OpenVINO callback (run on OpenVINO's thread, as ov.AsyncInferQueue's is)
    copies the outputs, frees the request and resolves the Future. OpenVINO calls no callback
    for an inference that fails, so a watchdog thread looks, every WATCH_S while inferences are
    in flight, at those not finished yet, and fails the Future of any that ended in an error.
    It sleeps in between rather than waiting on each request, so it costs no thread switch per
    inference.

    Why not ov.AsyncInferQueue itself: measured with OpenVINO 2026.4, after one failed
    inference its Future would never resolve (no callback), and the failed request's error is
    raised again by every later start_async that picks that request: one bad input poisons the
    queue. Done-callbacks of the Futures run on OpenVINO's thread: keep them short.
    """

    WATCH_S = 0.02

    def __init__(self, session: Any, size: int) -> None:
        """session: the OpenVinoSession whose compiled model the requests run (its
        `_compiled`, `_set_inputs`, `_read` and `failure`)."""
        self._session = session
        self._requests = [session._compiled.create_infer_request() for _ in range(size)]
        self._jobs: list[Job | None] = [None] * size
        self._idle: queue.SimpleQueue[int] = queue.SimpleQueue()
        for i, req in enumerate(self._requests):
            req.set_callback(self._done, i)
            self._idle.put(i)
        self._lock = threading.Lock()
        self._in_flight = threading.Condition(self._lock)
        self._closed = False
        self._watchdog = threading.Thread(
            target=self._watch, name=f"infer-openvino-{id(self):x}", daemon=True
        )
        self._watchdog.start()

    def submit(self, feeds: dict[str, np.ndarray], outputs: list[str] | None) -> Future:
        fut: Future = Future()
        fut.set_running_or_notify_cancel()
        slot = self._idle.get()  # blocks while every request is in flight
        req = self._requests[slot]
        with self._lock:
            if self._closed:
                self._idle.put(slot)
                raise EngineClosed("openvino session is closed")
            job = self._jobs[slot] = Job(fut, outputs)
            try:
                job.feeds = self._session._set_inputs(req, feeds)
                req.start_async()
            except Exception as e:
                self._jobs[slot] = None
                self._idle.put(slot)
                failure = self._session.failure(e)
                failure.__cause__ = e
                fut.set_exception(failure)
                return fut
            self._in_flight.notify()
        return fut

    def _done(self, slot: int) -> None:
        """OpenVINO's callback after a successful inference. Never raises."""
        try:
            job = self._jobs[slot]
            if job is None:
                return
            try:
                result: Any = self._session._read(self._requests[slot], job.outputs)
            except Exception as e:
                result = self._session.failure(e)
                result.__cause__ = e
            with self._lock:
                job.finished = True
                self._jobs[slot] = None
            self._idle.put(slot)  # before resolving: a done-callback may submit again
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result(result)
        except BaseException:  # an exception escaping into OpenVINO's thread would abort
            log.exception("openvino completion callback failed")

    def _watch(self) -> None:
        while True:
            with self._lock:
                while not self._closed and not any(self._jobs):
                    self._in_flight.wait()
                closing = self._closed
                pending = [(slot, job) for slot, job in enumerate(self._jobs) if job is not None]
            if not pending and closing:
                return
            if not closing:
                time.sleep(self.WATCH_S)
            for slot, job in pending:
                if job.finished:  # its request may already run a later job
                    continue
                req = self._requests[slot]
                try:
                    # While closing, wait for the end; else only look (an unfinished job's
                    # request is its own: the slot is freed only once the job finishes).
                    req.wait() if closing else req.wait_for(0)
                except Exception as e:
                    self._fail(slot, job, e)

    def _fail(self, slot: int, job: Job, error: Exception) -> None:
        with self._lock:
            if job.finished:
                return
            job.finished = True
            self._jobs[slot] = None
        self._idle.put(slot)
        failure = self._session.failure(error)
        failure.__cause__ = error
        job.future.set_exception(failure)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._in_flight.notify()
        self._watchdog.join()  # every started inference has ended by then
