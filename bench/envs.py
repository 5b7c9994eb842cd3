"""The peers' own virtual environments (LiteLLM, OptiLLM): created on demand, cached between runs.

Each peer lives in its own venv so its pins never touch openfusion's. A venv is reused when its
marker file records the same install spec; otherwise it is rebuilt from scratch.

    python -m bench.envs            # create (or verify) both
    python -m bench.envs litellm    # just one
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

VENV_ROOT = Path(os.environ.get("OPENFUSION_BENCH_VENVS", "/tmp/openfusion-bench/venvs"))


@dataclass(frozen=True)
class Peer:
    name: str
    spec: tuple[str, ...]  # what `pip install` gets
    command: str  # the console script the peer is started with
    version_of: str  # the distribution whose version is reported
    pre: tuple[str, ...] = ()  # installed first when available (best effort)

    @property
    def venv(self) -> Path:
        return VENV_ROOT / self.name

    @property
    def marker(self) -> Path:
        return self.venv / ".openfusion-bench-spec"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def executable(self) -> Path:
        return self.venv / "bin" / self.command

    def ready(self) -> bool:
        return (
            self.executable.exists()
            and self.marker.exists()
            and self.marker.read_text(encoding="utf-8") == self.spec_text
        )

    @property
    def spec_text(self) -> str:
        return " ".join((*self.pre, *self.spec))

    def version(self) -> str:
        if not self.python.exists():
            return "not installed"
        out = subprocess.run(
            [str(self.python), "-c", f"import importlib.metadata as m; print(m.version({self.version_of!r}))"],
            capture_output=True,
            text=True,
            check=False,
        )
        return out.stdout.strip() or "unknown"


# measurements.md: newer LiteLLM proxy extras pin packages the index here lacks; 1.108.7 resolves.
LITELLM = Peer("litellm", ("litellm[proxy]==1.108.7",), "litellm", "litellm")
# OptiLLM pulls in torch; without a pin pip takes a multi-GB CUDA build. The CPU wheel of 2.13.0
# lies on this kind of machine's disk (PIP_FIND_LINKS): take it first where it can be had.
OPTILLM = Peer("optillm", ("optillm==0.4.0",), "optillm", "optillm", pre=("torch==2.13.0",))
PEERS = {peer.name: peer for peer in (LITELLM, OPTILLM)}


def ensure(peer: Peer, *, log: Path | None = None) -> Path:
    """Create the peer's venv unless a matching one is cached; return its console script."""
    if peer.ready():
        return peer.executable
    if peer.venv.exists():
        shutil.rmtree(peer.venv)
    peer.venv.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
    try:
        subprocess.run([sys.executable, "-m", "venv", str(peer.venv)], check=True, stdout=out, stderr=out)
        subprocess.run(
            [str(peer.python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
            check=True,
            stdout=out,
            stderr=out,
        )
        if peer.pre:
            subprocess.run(
                [str(peer.python), "-m", "pip", "install", "--quiet", *peer.pre], check=False, stdout=out, stderr=out
            )
        subprocess.run(
            [str(peer.python), "-m", "pip", "install", "--quiet", *peer.spec], check=True, stdout=out, stderr=out
        )
    finally:
        if log:
            out.close()  # type: ignore[union-attr]
    peer.marker.write_text(peer.spec_text, encoding="utf-8")
    print(f"[envs] {peer.name}: installed {' '.join(peer.spec)} in {time.monotonic() - started:.0f} s", flush=True)  # noqa: T201
    return peer.executable


def snapshot_openfusion(repo: Path) -> tuple[str, str]:
    """Copy the checkout's openfusion (committed and uncommitted alike) and install it, not editable.

    Other people edit the same checkout while a run goes on; a frozen copy keeps one run on one
    version of the code. Returns the `openfusion` executable and a line naming what was frozen.
    """
    import hashlib

    base = VENV_ROOT.parent / "snapshot"
    src = base / "src"
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(repo / name, src / name)
    for name in ("src", "presets"):
        shutil.copytree(repo / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    digest = hashlib.sha256()
    for path in sorted(p for p in src.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(src)).encode() + b"\0" + path.read_bytes())
    venv = base / "venv"
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    with open(base / "install.log", "ab") as log:
        subprocess.run([*pip, str(src)], check=True, stdout=log, stderr=log)
        subprocess.run([*pip, "--force-reinstall", "--no-deps", str(src)], check=True, stdout=log, stderr=log)
    head = subprocess.run(
        ["git", "-C", str(repo), "log", "-1", "--format=%h %s"], capture_output=True, text=True, check=False
    ).stdout.strip()
    label = (
        f"openfusion measured: a frozen copy of the checkout at {time.strftime('%H:%M UTC', time.gmtime())} "
        f"(HEAD {head or '?'} plus any uncommitted changes; content digest {digest.hexdigest()[:12]})"
    )
    return str(venv / "bin" / "openfusion"), label


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("peers", nargs="*", help=f"which peers: {', '.join(PEERS)} (default: all)")
    args = parser.parse_args()
    unknown = set(args.peers) - set(PEERS)
    if unknown:
        parser.error(f"unknown peer(s): {', '.join(sorted(unknown))}")
    for name in args.peers or list(PEERS):
        peer = PEERS[name]
        path = ensure(peer)
        print(f"{peer.name}: {peer.version()} at {path}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
