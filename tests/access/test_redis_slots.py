"""Every Lua script of the limits, spend caps and brake touches keys of one hash slot, as Redis Cluster requires.

Each script's KEYS are recorded while the limiter, the spend book and the brake run on the real Redis, and their
slots computed as Redis Cluster does (CRC16 of the hash tag); then the same runs on a real three-node cluster.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.asyncio import Redis, RedisCluster
from redis.commands.core import AsyncScript

from openfusion.access import redis_brake, redis_limiter, redis_spend
from openfusion.access.brake import AuthBrake
from openfusion.access.redis_brake import SharedBrake
from openfusion.access.redis_limiter import RedisLimiter
from openfusion.access.redis_spend import RedisSpendBook
from openfusion.access.spend import Reservation

from .conftest import REDIS_URL
from .waits import until

DAY = datetime.now(UTC).date().isoformat()
SCRIPTS = {
    "rate limit": redis_limiter._HIT,
    "concurrency slot": redis_limiter._ACQUIRE,
    "slot renewal": redis_limiter._RENEW,
    "spend reservation": redis_spend._RESERVE,
    "reservation renewal": redis_spend._RENEW,
    "settlement": redis_spend._FINISH,
    "brake": redis_brake._COUNT,
}


def _crc16(data: bytes) -> int:
    """CRC16-CCITT (XMODEM), the one Redis Cluster hashes keys with."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021 if crc & 0x8000 else crc << 1) & 0xFFFF
    return crc


def key_slot(key: str) -> int:
    """The key's Redis Cluster slot: of its hash tag (between the first `{` and the next `}`, when not empty)."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return _crc16(key.encode()) % 16384


def test_slots_are_computed_as_redis_cluster_computes_them() -> None:
    # What `CLUSTER KEYSLOT` answers for these (Redis 7.0).
    assert key_slot("123456789") == 12739
    assert key_slot("foo") == 12182
    assert key_slot("{openfusion}:epoch") == 5358 == key_slot("openfusion")
    assert key_slot("{}foo") != key_slot("foo")  # an empty tag is no tag: the whole key hashes
    assert key_slot("{user1000}.following") == key_slot("{user1000}.followers") != key_slot("user1000.following")


async def _run_everything(
    client: Redis | RedisCluster, prefix: str, calls: list[tuple[str, list[str], list[Any]]]
) -> None:
    """Every script the limits, spend caps and brake run, each path: admission, renewal, retaking after Redis
    lost the counters, settlement, giving back, the brake forgetting an address. `calls`: the scripts run so far
    (`script_calls`), waited on for those run in the background."""

    def ran(*names: str) -> Callable[[], bool]:
        return lambda: set(names) <= {name for name, _, _ in calls}

    limiter = RedisLimiter(client, prefix=prefix, lease_ttl_s=0.3)  # type: ignore[arg-type]
    spend = RedisSpendBook(client, prefix=prefix, lease_ttl_s=0.3, epoch=limiter.epoch)  # type: ignore[arg-type]
    local = AuthBrake(max_failures=2, window_s=60, block_s=60)
    brake = SharedBrake(client, prefix=prefix, local=local, max_addresses=1)  # type: ignore[arg-type]
    try:
        assert await limiter.hit("key:a", limit=5, window_s=60) == 0
        slot = await limiter.acquire("key:a", limit=2)
        assert slot is not None
        held = await spend.reserve("key:a", day=DAY, cap=1.0, estimate=0.2, spent=0.0, read_at=await spend.clock())
        assert isinstance(held, Reservation)
        await until(ran("slot renewal", "reservation renewal"))  # both leases renewed (every third of 0.3 s)
        await client.delete(limiter.epoch.key)  # Redis lost the counters: the next admission takes them again
        assert await limiter.hit("key:b", limit=5, window_s=60) == 0
        held.started()
        held.settle(0.1)
        held.written(True)
        unused = await spend.reserve("key:a", day=DAY, cap=1.0, estimate=0.2, spent=0.0, read_at=await spend.clock())
        assert isinstance(unused, Reservation)
        await unused.release()  # given back at once
        await until(ran("settlement"))  # the settlement sent
        await held.release()
        await slot.release()
        for address in ("192.0.2.1", "192.0.2.2", "192.0.2.2"):  # one address kept at most: the first forgotten
            await brake.count_wrong_key(address)
        assert await brake.remaining_block("192.0.2.2") > 0
    finally:
        await spend.aclose()
        await limiter.aclose()


@pytest.fixture
def script_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str], list[Any]]]:
    """Each script run from now on: (its name, its KEYS, its ARGV), pipelined ones included."""
    names = {script: name for name, script in SCRIPTS.items()}
    calls: list[tuple[str, list[str], list[Any]]] = []
    run = AsyncScript.__call__

    async def recorded(self: AsyncScript, keys: Any = None, args: Any = None, client: Any = None) -> Any:
        body = self.script.decode() if isinstance(self.script, bytes) else self.script
        calls.append((names[body], [str(key) for key in keys or []], list(args or [])))
        return await run(self, keys=keys, args=args, client=client)

    monkeypatch.setattr(AsyncScript, "__call__", recorded)
    return calls


async def test_every_scripts_keys_hash_to_one_slot(
    redis_prefix: str, script_calls: list[tuple[str, list[str], list[Any]]]
) -> None:
    client = Redis.from_url(REDIS_URL)
    try:
        await _run_everything(client, redis_prefix, script_calls)
    finally:
        await client.aclose()
    assert {name for name, _, _ in script_calls} == set(SCRIPTS), "every script ran"
    slots = set()
    for name, keys, args in script_calls:
        assert keys, name
        assert len({key_slot(key) for key in keys}) == 1, f"{name}: {keys}"
        slots |= {key_slot(key) for key in keys}
        if name == "brake":  # the keys it forgets, made from ARGV[7] in the script, are in that slot too
            assert key_slot(f"{args[6]}:brake:192.0.2.1") == key_slot(keys[0])
    assert slots == {key_slot(redis_prefix)}, "one slot for all: the admission scripts share the epoch marker"


def _free_cluster_port() -> int:
    """A free port above 20000 whose cluster bus port (+10000) is free too."""
    while True:
        port = random.randrange(20001, 45000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
            return port
        except OSError:
            continue


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """A Redis Cluster of three primaries on loopback, made for these tests: (host, one node's port)."""
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    assert binary and cli, "redis-server and redis-cli are needed (apt-get install redis-server)"
    directory: Path = tmp_path_factory.mktemp("cluster")
    ports = [_free_cluster_port() for _ in range(3)]
    processes = []
    try:
        for port in ports:
            command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes"]
            command += ["--cluster-config-file", f"nodes-{port}.conf", "--save", "", "--appendonly", "no"]
            command += ["--dir", str(directory)]
            processes.append(subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in ports:
            _wait(lambda port=port: redis.Redis(port=port, socket_connect_timeout=1).ping())
        nodes = [f"127.0.0.1:{port}" for port in ports]
        made = subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert made.returncode == 0, made.stdout + made.stderr
        _wait(lambda: redis.Redis(port=ports[0]).cluster("info")["cluster_state"] == "ok")
        yield "127.0.0.1", ports[0]
    finally:
        for process in processes:
            process.kill()
            process.wait(10)


def _wait(ready: Any, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if ready():
                return
        except redis.exceptions.RedisError:
            pass
        assert time.monotonic() < deadline, "the Redis Cluster did not come up"
        time.sleep(0.05)


@pytest.fixture
async def cluster_client(redis_cluster: tuple[str, int]) -> AsyncIterator[RedisCluster]:
    host, port = redis_cluster
    client = RedisCluster(host=host, port=port)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.mark.parametrize("prefix", ["openfusion", "team-a.limits"])
async def test_the_limits_spend_caps_and_brake_run_on_a_redis_cluster(
    cluster_client: RedisCluster, prefix: str, script_calls: list[tuple[str, list[str], list[Any]]]
) -> None:
    """The cluster runs a script only when all its keys are in one slot, on the node that holds it.

    redis-py's cluster client (openfusion's own is a plain one) does not load a script for a pipeline: loaded
    beforehand on every node, as a first run outside a pipeline would.
    """
    for script in SCRIPTS.values():
        await cluster_client.script_load(script)
    await _run_everything(cluster_client, prefix, script_calls)
    assert {name for name, _, _ in script_calls} == set(SCRIPTS)
