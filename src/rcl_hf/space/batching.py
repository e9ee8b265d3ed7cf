"""Forward passes of concurrent Space requests, run together; the CPU threads and Gradio queue of a Space process.

Each request decodes and checks its own image in its own thread (:mod:`rcl_hf.space.handlers`); its forward pass
goes through a :class:`ForwardBatcher`. With ``max_batch_size`` 1 the request's thread runs it. Otherwise a few
forward threads each take every image waiting (up to ``max_batch_size``) and run them as one batch through each
model: there is no waiting window, so a request alone is not delayed, and the requests that arrive while a pass
runs share the next one. Batched or not, each image gets the same answer (the models are in eval mode: an image's
output does not depend on the others in its batch; ``tests/test_space_batching.py``).

Gradio's own batching (``batch=True`` on the event) is not used: a bad upload raises ``gr.Error`` for the whole
batch, so one user's broken file would fail the other users' requests, and the "busy" answer is per request.
"""

from __future__ import annotations

import collections
import queue
import threading
from concurrent.futures import Future
from typing import Any, Dict, List, Sequence, Tuple

from .answer import Output

__all__ = ["ForwardBatcher", "set_cpu_threads", "queue_demo", "QUEUE_POLL_S"]

#: How often Gradio's queue looks for new events when it has none to start (Gradio's own: 1 ms on Linux).
QUEUE_POLL_S: float = 0.01



class ForwardBatcher:
    """Run the forward passes of ``models`` for concurrent callers, up to ``max_batch_size`` images at once.

    ``threads``: forward passes that may run at the same time (each with the process's torch threads). Calling the
    batcher with one image returns that image's :data:`Output` per model, as :func:`rcl_hf.space.answer.forward` does.
    ``batch_sizes`` counts the batches run, by size (for the benchmarks).
    """

    def __init__(self, models: Sequence[Any], max_batch_size: int = 1, threads: int = 1) -> None:
        if max_batch_size < 1 or threads < 1:
            raise ValueError(f"need max_batch_size >= 1 and threads >= 1, got {max_batch_size}, {threads}")
        self.models = list(models)
        self.max_batch_size, self.threads = int(max_batch_size), int(threads)
        self.batch_sizes: Dict[int, int] = collections.Counter()
        self._queue: "queue.SimpleQueue[Tuple[Any, Future]]" = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._workers: List[threading.Thread] = []

    def __call__(self, rgb: Any) -> List[Output]:
        if self.max_batch_size == 1:
            return self._run([rgb])[0]
        self._start()
        fut: Future = Future()
        self._queue.put((rgb, fut))
        return fut.result()

    def _run(self, rgbs: Sequence[Any]) -> List[List[Output]]:
        from .answer import forward_batch

        out = forward_batch(self.models, rgbs)
        with self._lock:
            self.batch_sizes[len(rgbs)] += 1
        return out

    def _start(self) -> None:
        with self._lock:  # the threads start with the first request: a demo that is never called holds none
            while len(self._workers) < self.threads:
                t = threading.Thread(target=self._loop, name=f"rcl-forward-{len(self._workers)}", daemon=True)
                t.start()
                self._workers.append(t)

    def _loop(self) -> None:
        while True:
            items = [self._queue.get()]
            while len(items) < self.max_batch_size:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                outs = self._run([rgb for rgb, _ in items])
            except BaseException as err:  # noqa: BLE001 - every caller of the batch gets the error, the thread lives on
                for _, fut in items:
                    fut.set_exception(err)
                continue
            for (_, fut), out in zip(items, outs):
                fut.set_result(out)


def set_cpu_threads(n: int) -> None:
    """``n`` CPU threads for torch's and for numpy's BLAS / OpenMP pools in this process.

    A Space runs several analyses at once on few cores: one thread each is faster than pools that oversubscribe
    the cores (on 2 shared cores, OpenBLAS's two threads made the OOD guard's matrix product 10x slower).
    """
    import torch

    torch.set_num_threads(int(n))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn's dependency; without it only torch is set
        return
    threadpool_limits(limits=int(n))


def queue_demo(demo: Any, max_size: int, poll_s: float = QUEUE_POLL_S) -> Any:
    """``demo.queue(...)``: every event goes to its handler at once (the handlers' Admission bounds the work), at
    most ``max_size`` events held, and two per-event costs of Gradio's queue cut:

    * Gradio rebuilds a pandas summary of its last 10,000 events after every event, for a monitoring page the Space
      does not enable (~3 ms per request, growing with the events kept): every 1,000 events instead
      (``GRADIO_ANALYTICS_CACHE_FREQUENCY``, when not set already);
    * its dispatch loop wakes every 1 ms while idle; each wake-up takes the GIL from the analyses, and on busy shared
      cores the analysis thread then waits for the GIL (a 1 ms loop beside one analysis: 87 ms instead of 56 ms; at
      10 ms: ~60 ms). ``poll_s`` sets that interval (Gradio's private ``Queue.sleep_when_free``; skipped when absent).
    """
    import os

    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1000")
    demo = demo.queue(default_concurrency_limit=None, max_size=max_size) or demo
    queue_obj = getattr(demo, "_queue", None)
    if poll_s and queue_obj is not None and isinstance(getattr(queue_obj, "sleep_when_free", None), float):
        queue_obj.sleep_when_free = float(poll_s)
    return demo
