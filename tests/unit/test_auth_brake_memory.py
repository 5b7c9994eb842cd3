"""The brake's table of addresses is bounded in memory, not only in entries: a flood from many addresses (an IPv6
/48 holds 65,536 /64s, each counted apart) fills it, and each worker keeps a table of its own."""

from __future__ import annotations

import tracemalloc

from openfusion.access.brake import MAX_ADDRESSES, AuthBrake

# A full table, each address one wrong key short of being braked: what a flood leaves in every worker.
BOUND_MB = 40  # measured: 29 MB (a dataclass holding a deque: 68 MB)


def test_a_full_table_stays_small() -> None:
    brake = AuthBrake(max_failures=10, window_s=60.0, block_s=300.0, clock=lambda: 1000.0)
    tracemalloc.start()
    try:
        for number in range(MAX_ADDRESSES):
            address = f"10.{number >> 16}.{number >> 8 & 255}.{number & 255}"  # IPv4: no parsing, a fast test
            for _ in range(9):
                brake.failed(address)
        used_mb = tracemalloc.get_traced_memory()[0] / 1e6
    finally:
        tracemalloc.stop()
    assert used_mb < BOUND_MB, f"{used_mb:.0f} MB for {MAX_ADDRESSES} addresses"


def test_failures_leave_the_window_and_a_braked_address_is_free_after_its_time() -> None:
    now = [0.0]
    brake = AuthBrake(max_failures=3, window_s=10.0, block_s=5.0, clock=lambda: now[0])
    for at in (0.0, 6.0, 10.5):  # the first has left the window when the third comes
        now[0] = at
        assert brake.failed("192.0.2.1") is False
    now[0] = 12.0
    assert brake.failed("192.0.2.1") is True  # three within 10 s: 6, 10.5, 12
    assert brake.blocked_for("192.0.2.1") == 5.0
    now[0] = 17.0
    assert brake.blocked_for("192.0.2.1") == 0.0
    assert brake.failed("192.0.2.1") is False  # counting starts afresh
