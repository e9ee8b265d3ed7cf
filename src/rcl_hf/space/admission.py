"""Admission control of the Space: at most so many analyses in flight, and "busy" at once past that.

A request beyond ``workers`` running and ``max_waiting`` waiting gets :data:`BUSY_MESSAGE` at once instead of
queueing into a time-out (a full server queue has an answer, not a hang).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

__all__ = ["Admission", "ServiceBusy", "BUSY_MESSAGE"]

BUSY_MESSAGE = "The service is busy — please try again in a minute."


class ServiceBusy(RuntimeError):
    """More requests are in flight than :class:`Admission` admits."""


class Admission:
    """At most ``workers`` analyses run at once and at most ``max_waiting`` more wait for a worker; a request
    beyond that is refused at once (:class:`ServiceBusy`) instead of queueing into a time-out."""

    def __init__(self, workers: int = 2, max_waiting: int = 16) -> None:
        if workers < 1 or max_waiting < 0:
            raise ValueError(f"need workers >= 1 and max_waiting >= 0, got {workers}, {max_waiting}")
        self.workers, self.max_waiting = int(workers), int(max_waiting)
        self._run = threading.Semaphore(self.workers)
        self._lock = threading.Lock()
        self.in_flight = 0

    @contextmanager
    def slot(self) -> Iterator[None]:
        with self._lock:
            if self.in_flight >= self.workers + self.max_waiting:
                raise ServiceBusy(BUSY_MESSAGE)
            self.in_flight += 1
        try:
            with self._run:
                yield
        finally:
            with self._lock:
                self.in_flight -= 1
