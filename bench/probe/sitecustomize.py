"""The benchmarks' probe, loaded by a server's interpreter from PYTHONPATH; it does nothing unless asked.

- `python -m bench.timeline`: in an `openfusion` process started with OPENFUSION_TIMELINE=<file>, it wraps the
  functions named in OPENFUSION_TIMELINE_TARGETS ("module:Qualified.name", separated by spaces) so that each entry,
  exit and (for async generators) each yield appends (monotonic ns, label) to a list, written to <file> on SIGUSR1.
  Wrapping happens as each module is imported, before other modules bind the names, so `from x import f` callers
  see the wrapper too. Each mark costs ~1 µs: the timeline shows where time goes, slightly inflated.
- `python -m bench.heap`: in any process started with OPENFUSION_HEAP=<directory> (openfusion or the floor arm), it
  traces allocations and writes a snapshot of them on SIGUSR2 (see `_install_heap`).
- the soak across workers (`scenarios.soak_workers`): in a process started with OPENFUSION_MEMORY=<file>, on
  SIGRTMIN+3 it appends a line of JSON with what the process's memory holds by kind (see `_install_memory`); on
  SIGRTMIN+4 it collects, trims malloc's free memory and appends two lines (before and after the trim).
- the first-request test (`tests/e2e/test_first_requests.py`): in a process started with OPENFUSION_FIRST_USE=<file>,
  on SIGRTMIN+5 it appends a line of JSON with the modules imported and the files opened since the previous signal
  (see `_install_first_use`).
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


MEMORY_SIGNAL_OFFSET = 3  # SIGRTMIN + 3: a reading; SIGRTMIN + 4: gc, a reading, malloc_trim, a reading


def _install_memory(path: str) -> None:
    """What a process's memory holds, cheaply enough to read between a soak's legs (tracemalloc would slow it).

    RSS alone cannot tell a leak from an allocator that has not settled yet: memory freed inside pymalloc's arenas
    or malloc's heaps stays resident. So each reading also has the memory in live use: `pymalloc_bytes`, the
    allocated blocks of Python's small-object allocator (from `sys._debugmallocstats`), and `malloc_bytes`, what
    malloc has handed out and not got back (glibc's mallinfo2: every arena, and its mmapped chunks), which holds
    Python's large objects and what C code allocates (SQLite's page cache, `sqlite_bytes`, among it).
    `malloc_free_bytes` is what malloc holds free: resident until trimmed.
    """
    import ctypes
    import gc
    import json
    import signal
    import tempfile

    class Mallinfo2(ctypes.Structure):
        _names = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
        _fields_ = [(name, ctypes.c_size_t) for name in (*_names, "keepcost")]

    libc = ctypes.CDLL(None)
    mallinfo2 = getattr(libc, "mallinfo2", None)
    if mallinfo2 is not None:
        mallinfo2.restype = Mallinfo2
    try:
        sqlite = ctypes.CDLL("libsqlite3.so.0")  # the library the sqlite3 module is linked with, loaded once
        sqlite.sqlite3_memory_used.restype = ctypes.c_int64
    except OSError:
        sqlite = None

    def pymalloc_bytes() -> int | None:
        saved = os.dup(2)  # sys._debugmallocstats writes to the C stderr
        try:
            with tempfile.TemporaryFile("w+") as out:
                os.dup2(out.fileno(), 2)
                try:
                    sys._debugmallocstats()
                finally:
                    os.dup2(saved, 2)
                out.seek(0)
                for line in out:
                    if line.startswith("# bytes in allocated blocks"):
                        return int(line.split("=")[1].replace(",", ""))
        finally:
            os.close(saved)
        return None

    def reading(kind: str) -> None:
        row: dict[str, object] = {"pid": os.getpid(), "kind": kind, "pymalloc_bytes": pymalloc_bytes()}
        if mallinfo2 is not None:
            info = mallinfo2()
            row |= {"malloc_bytes": info.uordblks + info.hblkhd, "malloc_free_bytes": info.fordblks}
        row["sqlite_bytes"] = sqlite.sqlite3_memory_used() if sqlite is not None else None
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon"):
                    row[key.lower() + "_bytes"] = int(value.split()[0]) * 1024
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(row) + "\n")

    def trimmed(*_: object) -> None:
        gc.collect()
        reading("collected")
        libc.malloc_trim(0)
        reading("trimmed")

    signal.signal(signal.SIGRTMIN + MEMORY_SIGNAL_OFFSET, lambda *_: reading("plain"))
    signal.signal(signal.SIGRTMIN + MEMORY_SIGNAL_OFFSET + 1, trimmed)


if os.environ.get("OPENFUSION_MEMORY"):
    _install_memory(os.environ["OPENFUSION_MEMORY"])


FIRST_USE_SIGNAL_OFFSET = 5  # SIGRTMIN + 5: what was imported and opened since the last one


def _install_first_use(path: str) -> None:
    """One-time work a process does once it serves, seen through audit hooks: on each signal, a line with the modules
    imported (`import` events) and the files opened (`open` events) since the previous signal; nothing is recorded
    before the first. A request that imports or opens nothing did none of the loading the first ones used to do."""
    import json
    import signal
    import threading

    lock = threading.Lock()
    seen: dict[str, list[str]] | None = None  # None until the first signal

    def hook(event: str, args: tuple[object, ...]) -> None:
        if seen is not None and event in ("import", "open") and args[0] != path:  # not the probe's own writes
            with lock:
                seen[event].append(str(args[0]))

    def report(*_: object) -> None:
        nonlocal seen
        with lock:
            taken, seen = seen, {"import": [], "open": []}
        row = {"pid": os.getpid(), "armed": taken is not None, **(taken or {"import": [], "open": []})}
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(row) + "\n")

    sys.addaudithook(hook)
    signal.signal(signal.SIGRTMIN + FIRST_USE_SIGNAL_OFFSET, report)


if os.environ.get("OPENFUSION_FIRST_USE"):
    _install_first_use(os.environ["OPENFUSION_FIRST_USE"])
