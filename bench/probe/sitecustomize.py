"""The benchmarks' probe, loaded by a server's interpreter from PYTHONPATH; it does nothing unless asked.

- `python -m bench.timeline`: in an `openfusion` process started with OPENFUSION_TIMELINE=<file>, it wraps the
  functions named in OPENFUSION_TIMELINE_TARGETS ("module:Qualified.name", separated by spaces) so that each entry,
  exit and (for async generators) each yield appends (monotonic ns, label) to a list, written to <file> on SIGUSR1.
  Wrapping happens as each module is imported, before other modules bind the names, so `from x import f` callers
  see the wrapper too. Each mark costs ~1 µs: the timeline shows where time goes, slightly inflated.
- `python -m bench.heap`: in any process started with OPENFUSION_HEAP=<directory> (openfusion or the floor arm), it
  traces allocations and writes a snapshot of them on SIGUSR2 (see `_install_heap`).
"""

from __future__ import annotations

import os
import sys


def _install(path: str, targets: list[tuple[str, str]]) -> None:
    import builtins
    import contextlib
    import functools
    import inspect
    import signal
    import time

    marks: list[tuple[int, str]] = []
    now = time.perf_counter_ns  # CLOCK_MONOTONIC on Linux: comparable across processes

    def dump(*_: object) -> None:
        with open(path, "w", encoding="utf-8") as out:
            out.writelines(f"{t} {label}\n" for t, label in marks)

    def wrap(fn, label):  # type: ignore[no-untyped-def]
        if inspect.isasyncgenfunction(fn):

            @functools.wraps(fn)
            async def agen(*args, **kwargs):  # type: ignore[no-untyped-def]
                marks.append((now(), label + " >"))
                async with contextlib.aclosing(fn(*args, **kwargs)) as inner:
                    async for item in inner:
                        marks.append((now(), f"{label} yields {type(item).__name__}"))
                        yield item
                marks.append((now(), label + " <"))

            return agen
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def coro(*args, **kwargs):  # type: ignore[no-untyped-def]
                marks.append((now(), label + " >"))
                try:
                    return await fn(*args, **kwargs)
                finally:
                    marks.append((now(), label + " <"))

            return coro

        @functools.wraps(fn)
        def func(*args, **kwargs):  # type: ignore[no-untyped-def]
            marks.append((now(), label + " >"))
            try:
                return fn(*args, **kwargs)
            finally:
                marks.append((now(), label + " <"))

        return func

    pending: dict[str, list[str]] = {}
    for module, name in targets:
        pending.setdefault(module, []).append(name)

    def patch(module: object, names: list[str]) -> list[str]:
        left = []
        for name in names:
            path = name.split(".")
            try:
                holder = module
                for part in path[:-1]:
                    holder = getattr(holder, part)
                setattr(holder, path[-1], wrap(getattr(holder, path[-1]), name))
            except AttributeError:  # not defined yet: the module is still executing
                left.append(name)
        return left

    original = builtins.__import__

    def importing(*args, **kwargs):  # type: ignore[no-untyped-def]
        module = original(*args, **kwargs)
        for name in [n for n in pending if n in sys.modules]:
            left = patch(sys.modules[name], pending.pop(name))
            if left:
                pending[name] = left
        return module

    builtins.__import__ = importing
    signal.signal(signal.SIGUSR1, dump)


if os.path.basename(sys.argv[0]) == "openfusion" and os.environ.get("OPENFUSION_TIMELINE"):
    _lines = os.environ.get("OPENFUSION_TIMELINE_TARGETS", "").split()
    _install(os.environ["OPENFUSION_TIMELINE"], [tuple(line.split(":", 1)) for line in _lines])  # type: ignore[misc]


def _install_heap(directory: str, frames: int) -> None:
    """`python -m bench.heap`: trace the process's allocations; on SIGUSR2 write a snapshot, then a mark to `done`."""
    import gc
    import itertools
    import signal
    import tracemalloc

    tracemalloc.start(frames)
    taken = itertools.count()

    def snapshot(*_: object) -> None:
        gc.collect()  # what is still held, not what awaits the collector
        tracemalloc.take_snapshot().dump(os.path.join(directory, f"snapshot-{next(taken)}.pickle"))
        with open(os.path.join(directory, "done"), "a", encoding="utf-8") as out:
            out.write("x")

    signal.signal(signal.SIGUSR2, snapshot)


if os.environ.get("OPENFUSION_HEAP"):  # openfusion or the floor arm: the same probe for both
    _install_heap(os.environ["OPENFUSION_HEAP"], int(os.environ.get("OPENFUSION_HEAP_FRAMES", "12")))
