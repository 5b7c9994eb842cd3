"""Run a built openfusion image with podman against a scripted fake upstream and check a fusion request.

Called by docker/ci-build.sh: `ci_smoke.py digest` before the build, then
`ci_smoke.py run --image ID --name NAME --source-digest DIGEST` after it.
Needs only starlette, uvicorn, orjson and opentelemetry-proto beside the standard library (it imports
tests/fakes: the fake upstream, and the OTLP/HTTP receiver the container exports its traces to).
Prints one `ok ...` line per check; any failure raises, prints the container's log and exits 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from fakes.otlp import CLIENT, SERVER, Receiver, otlp_receiver  # noqa: E402
from fakes.server import serve_in_thread  # noqa: E402
from fakes.upstream import FakeUpstream, Script  # noqa: E402

UPSTREAM_KEY = "sk-fake-upstream-secret-7f3a"  # must reach the fake, and never the container's log
CLIENT_KEY = "sk-ci-client-key-5c1e9b0d7a"  # the image listens on 0.0.0.0: without a client key it refuses to start
ADMIN_KEY = "sk-ci-admin-key-0e6f1c84b3"  # only an admin (or metrics) key reads /metrics
ANSWER = "Fused answer from the container: the sky is blue because of Rayleigh scattering."
PANEL_ANSWER = "Panel answer: Rayleigh scattering."
ANALYSIS = {
    "consensus": ["The sky is blue because of Rayleigh scattering."],
    "contradictions": [{"topic": "sunsets", "stances": [{"model": "fake/alpha", "stance": "red"}]}],
    "partial_coverage": [{"models": ["fake/beta"], "point": "ozone"}],
    "unique_insights": [{"model": "fake/alpha", "insight": "Mars has blue sunsets."}],
    "blind_spots": ["Nobody mentioned the eye's sensitivity."],
}
PRESET = """\
description = "two fake panelists, for the container smoke test"
analysis_models = ["fake/alpha", "fake/beta"]
model = "fake/judge"
synthesis_model = "fake/synth"
max_completion_tokens = 1000
"""
CONFIG = """\
default_preset = "ci"
builtin_providers = false

[[providers]]
name = "fake"
base_url = "{url}/v1"
api_key_env = "FAKE_UPSTREAM_KEY"
models = ["fake/*"]
strip_prefix = true

[retry]
initial_backoff_s = 0
max_backoff_s = 0
"""
HEALTHY_WITHIN_S = 60.0


# Prints a {path inside the package: sha256} map of the installed openfusion package.
# What `workers = auto` counts inside the container.
CPUS = "from openfusion.workers.count import usable_cpus; print(usable_cpus())"
_INSTALLED_FILES = """
import hashlib, json, pathlib, openfusion
root = pathlib.Path(openfusion.__file__).parent
print(json.dumps({str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                  for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}))
"""


def source_files() -> dict[str, str]:
    """{path inside the package: sha256} of what the wheel is built from: src/openfusion and presets/."""
    files = {}
    for root, prefix in ((REPO / "src" / "openfusion", ""), (REPO / "presets", "presets/")):
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files[prefix + str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def source_digest() -> str:
    """One hash over the source files and pyproject.toml, to tell whether they changed meanwhile."""
    payload = json.dumps(source_files(), sort_keys=True) + (REPO / "pyproject.toml").read_text()
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def say(message: str) -> None:
    print(message, flush=True)  # noqa: T201


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check, timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http(method: str, url: str, body: dict[str, Any] | None = None, *, key: str = CLIENT_KEY) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, response.read()


def write_mounts(directory: Path, upstream_url: str) -> tuple[Path, Path]:
    """config.toml and presets/ci.toml, readable by the image's non-root user."""
    directory.chmod(0o755)
    config = directory / "config.toml"
    config.write_text(CONFIG.format(url=upstream_url))
    presets = directory / "presets"
    presets.mkdir(mode=0o755)
    (presets / "ci.toml").write_text(PRESET)
    for path in (config, presets / "ci.toml"):
        path.chmod(0o644)
    return config, presets


def check_image(image: str) -> None:
    inspected = json.loads(podman("image", "inspect", image).stdout)[0]
    user = inspected["Config"].get("User", "")
    assert user and user.split(":")[0] not in ("", "0", "root"), f"image runs as {user!r}"
    test = (inspected.get("Healthcheck") or {}).get("Test") or []
    assert "/healthz" in " ".join(test), f"no /healthz HEALTHCHECK in the image: {test}"
    say(f"ok image config: USER {user}, HEALTHCHECK {test[0]} … /healthz (kept: built with --format docker)")


def check_refuses_to_be_open(image: str) -> None:
    """Without client keys (and without OPENFUSION_ALLOW_OPEN) the image's default command refuses to start."""
    result = podman("run", "--rm", "--network=none", "--read-only", "--tmpfs", "/tmp", image, check=False, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode == 2, f"exit status {result.returncode}:\n{output}"
    assert "refusing to listen on 0.0.0.0 with no client keys" in output and "OPENFUSION_ALLOW_OPEN=1" in output, output
    assert "Traceback" not in output, output
    say("ok without client keys the image refuses to start (exit 2), saying how to set keys or OPENFUSION_ALLOW_OPEN=1")


def wait_healthy(name: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < HEALTHY_WITHIN_S:
        state = podman("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
        if state != "running":
            raise AssertionError(f"container is {state}, not running")
        if podman("healthcheck", "run", name, check=False).returncode == 0:
            return time.monotonic() - started
        time.sleep(0.5)
    raise AssertionError(f"not healthy within {HEALTHY_WITHIN_S:.0f} s")


def check_running_container(name: str, base: str, fake: FakeUpstream, receiver: Receiver) -> None:
    status, body = http("GET", f"{base}/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok", body
    say(f"ok GET /healthz from the host: {body.decode()}")

    models = [m["id"] for m in json.loads(http("GET", f"{base}/v1/models")[1])["data"]]
    assert "fusion/ci" in models, models
    say("ok GET /v1/models lists fusion/ci: the mounted presets dir (/etc/openfusion/presets) was read")

    request = {"model": "fusion/ci", "messages": [{"role": "user", "content": "Why is the sky blue?"}]}
    status, body = http("POST", f"{base}/v1/chat/completions", request)
    completion = json.loads(body)
    assert status == 200, body
    assert completion["choices"][0]["message"]["content"] == ANSWER, completion
    report = completion["fusion"]
    assert [p["status"] for p in report["panel"]] == ["ok", "ok"], report["panel"]
    assert report["judge"]["status"] == "ok", report["judge"]
    say("ok fusion request (non-streamed) through the container: the synthesizer's answer, panel 2/2 ok, judge ok")

    status, raw = http("POST", f"{base}/v1/chat/completions", {**request, "stream": True})
    lines = raw.decode().splitlines()
    data = [line[len("data: ") :] for line in lines if line.startswith("data: ")]
    assert status == 200 and data and data[-1] == "[DONE]", raw[-300:]
    chunks = [json.loads(d) for d in data[:-1]]
    streamed = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c["choices"])
    assert streamed == ANSWER, streamed
    assert any(line.startswith(": OPENFUSION PROCESSING") for line in lines), lines[:3]
    say(f"ok fusion request (streamed): keep-alive comment, {len(chunks)} chunks, same answer, [DONE]")

    calls = fake.calls
    assert sorted({c.model for c in calls}) == ["alpha", "beta", "judge", "synth"], [c.model for c in calls]
    auth = {c.headers.get("authorization") for c in calls}
    assert auth == {f"Bearer {UPSTREAM_KEY}"}, "the provider key from the environment did not reach upstream"
    say(f"ok fake upstream saw {len(calls)} calls (alpha, beta, judge, synth), each with the key from -e")

    uid = podman("exec", name, "id", "-u").stdout.strip()
    assert uid.isdigit() and int(uid) != 0, f"container process runs as uid {uid}"
    pid1 = podman("exec", name, "cat", "/proc/1/cmdline").stdout.replace("\0", " ").strip()
    assert "openfusion serve" in pid1, pid1
    say(f"ok podman exec id -u = {uid} (non-root); PID 1 is `{pid1}`")

    podman("exec", name, "python", "-c", "import psycopg, psycopg_pool")
    state = podman("exec", name, "sh", "-c", "ls /var/lib/openfusion/openfusion").stdout.split()
    assert "activity.sqlite3" in state, state
    say(
        "ok the PostgreSQL driver is installed (DATABASE_URL works), and the default SQLite history is in "
        "/var/lib/openfusion (the image's VOLUME)"
    )

    logs = podman("logs", name).stdout + podman("logs", name).stderr
    assert UPSTREAM_KEY not in logs, "the provider key appeared in the container's log"
    assert CLIENT_KEY not in logs, "the client key appeared in the container's log"
    say("ok the provider key appears nowhere in the container's log")

    # OPENFUSION_WORKERS=auto: one worker per CPU the container may use, counted together in /metrics.
    cpus = int(podman("exec", name, "python", "-c", CPUS).stdout)
    workers = re.findall(r"(\d+) workers on ", logs)
    assert workers == ([str(cpus)] if cpus > 1 else []), (cpus, workers)
    metrics = http("GET", f"{base}/metrics", key=ADMIN_KEY)[1].decode()
    served = re.search(r'^openfusion_requests_total\{route="fusion/ci",status="ok"\} (\S+)$', metrics, re.M)
    assert served and float(served.group(1)) == 2, metrics[-500:]
    say(
        f"ok {cpus} worker(s) (OPENFUSION_WORKERS=auto, {cpus} usable CPUs): /metrics counts both requests, "
        "whichever worker served them, from its private directory in the read-only container's /tmp"
    )

    check_traces(receiver)


def check_traces(receiver: Receiver) -> None:
    """The image has the otel extra: OTEL_EXPORTER_OTLP_ENDPOINT alone makes it export each request's trace."""
    route = "POST /v1/chat/completions"
    spans = receiver.wait_for(lambda spans: sum(s.name == route for s in spans) >= 2, timeout=30)
    roots = [s for s in spans if s.name == route]
    assert len(roots) == 2 and all(r.kind == SERVER and r.parent_id == "" for r in roots), roots
    for root in roots:
        assert root.resource.get("service.name") == "openfusion", root.resource
        calls = [s for s in spans if s.trace_id == root.trace_id and s.kind == CLIENT]
        assert len(calls) == 4, [s.name for s in spans if s.trace_id == root.trace_id]
    say(
        f"ok traces exported over OTLP/HTTP to the host (tests/fakes/otlp.py): {receiver.posts} POST /v1/traces, "
        f"{len(spans)} spans; each request one {route} trace with 4 upstream calls (panel 2, judge, synthesizer)"
    )


def check_content(name: str, digest_at_build: str) -> None:
    """The installed package is exactly the source tree the image was built from (no stale build cache)."""
    if source_digest() != digest_at_build:
        say("-- skipped the image-content check: the source tree changed while the image was built")
        return
    installed = json.loads(podman("exec", name, "python", "-c", _INSTALLED_FILES).stdout)
    source = source_files()
    differ = sorted(p for p in source.keys() | installed.keys() if source.get(p) != installed.get(p))
    assert not differ, f"the image's openfusion package differs from the source tree in: {differ}"
    say(f"ok the image's openfusion package matches the source tree ({len(source)} files, sha256)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("digest", help="print a digest of the source tree the image is built from")
    run = commands.add_parser("run", help="run the image and check it")
    run.add_argument("--image", required=True, help="image id or name to run")
    run.add_argument("--name", required=True, help="container name (removed at the end)")
    run.add_argument("--source-digest", required=True, help="`digest` as printed before the build")
    args = parser.parse_args()
    if args.command == "digest":
        say(source_digest())
        return 0

    check_image(args.image)
    check_refuses_to_be_open(args.image)
    fake = FakeUpstream(default=Script(content=PANEL_ANSWER))
    fake.script("judge", Script(content=json.dumps(ANALYSIS)))
    fake.script("synth", Script(content=ANSWER))
    with (
        serve_in_thread(fake.app, http="auto") as upstream_url,
        otlp_receiver() as (receiver, otlp_url),
        tempfile.TemporaryDirectory() as tmp,
    ):
        say(f"ok fake OpenAI-compatible upstream on {upstream_url} (tests/fakes/upstream.py)")
        say(f"ok OTLP/HTTP trace receiver on {otlp_url} (tests/fakes/otlp.py)")
        config, presets = write_mounts(Path(tmp), upstream_url)
        port = free_port()
        podman(
            "run", "--detach", "--name", args.name, "--network=host",
            # No systemd here to drive podman's health timer; `podman healthcheck run` drives it below.
            "--health-interval=disable",
            # As in docker/compose.yaml: the image needs no writable filesystem but /tmp.
            "--read-only", "--tmpfs", "/tmp",  # /var/lib/openfusion: the image's VOLUME, writable
            "--env", f"OPENFUSION_PORT={port}",
            "--env", "OPENFUSION_CONFIG=/etc/openfusion/config.toml",
            "--env", f"FAKE_UPSTREAM_KEY={UPSTREAM_KEY}",
            "--env", f"OPENFUSION_API_KEYS={CLIENT_KEY}",
            "--env", f"OPENFUSION_ADMIN_KEYS={ADMIN_KEY}",
            # Tracing as a user turns it on: the endpoint alone (the otel extra is in the image);
            # spans are batched for 200 ms rather than the SDK's 5 s.
            "--env", f"OTEL_EXPORTER_OTLP_ENDPOINT={otlp_url}",
            "--env", "OTEL_BSP_SCHEDULE_DELAY=200",
            "--volume", f"{config}:/etc/openfusion/config.toml:ro",
            "--volume", f"{presets}:/etc/openfusion/presets:ro",
            args.image,
        )  # fmt: skip
        try:
            waited = wait_healthy(args.name)
            say(
                f"ok container {args.name} (--network=host, OPENFUSION_PORT={port}) healthy after {waited:.1f} s "
                "by its own HEALTHCHECK (podman healthcheck run)"
            )
            check_running_container(args.name, f"http://127.0.0.1:{port}", fake, receiver)
            check_content(args.name, args.source_digest)
        except BaseException:
            logs = podman("logs", args.name, check=False)
            say(f"--- container log ({args.name}) ---\n{logs.stdout}{logs.stderr}--- end of log ---")
            raise
        finally:
            podman("rm", "--force", "--time", "5", args.name, check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
