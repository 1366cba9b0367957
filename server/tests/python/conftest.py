"""Fixtures for the rocmforge-server end-to-end suite.

The server binary and model come from the environment:

    ROCMFORGE_SERVER_BIN  (default: <repo>/target/release/rocmforge-server)
    ROCMFORGE_MODEL       (default: <repo>/models/SmolLM2-135M-Instruct.Q4_1.gguf)

One server (``--parallel 16 --alias <ALIAS>``) is shared by the whole session;
tests that need a special configuration (api key, small context, full queue,
delayed load, SIGTERM drain) start their own short-lived server with
``start_server``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest

REPO = Path(__file__).resolve().parents[3]
SERVER_BIN = os.environ.get(
    "ROCMFORGE_SERVER_BIN", str(REPO / "target" / "release" / "rocmforge-server")
)
MODEL = os.environ.get(
    "ROCMFORGE_MODEL", str(REPO / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf")
)
NOMIC_MODEL = os.environ.get(
    "ROCMFORGE_NOMIC_MODEL", str(REPO / "models" / "nomic-embed-text-v1.5.f16.gguf")
)
ALIAS = "smol-e2e"
READY_TIMEOUT_S = float(os.environ.get("ROCMFORGE_SERVER_READY_TIMEOUT", "60"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A rocmforge-server subprocess on a free loopback port."""

    def __init__(self, args: list[str], log_path: Path, env: dict | None = None, model: str | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        cmd = [
            SERVER_BIN,
            "--model",
            model or MODEL,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *args,
        ]
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=full_env
        )

    # -- lifecycle ---------------------------------------------------------
    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(re.sub(r"\x1b\[[0-9;]*m", "", l) for l in lines[-n:])

    def wait_listening(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Wait until the port answers HTTP at all (any status)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited early ({self.proc.returncode}):\n{self.log_tail()}"
                )
            try:
                httpx.get(self.url + "/health", timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(0.02)
        raise RuntimeError(f"server never listened:\n{self.log_tail()}")

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited early ({self.proc.returncode}):\n{self.log_tail()}"
                )
            try:
                r = httpx.get(self.url + "/health", timeout=1.0)
                if r.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server never became ready:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self._log.close()

    def sigterm(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    # -- clients -----------------------------------------------------------
    def client(self, api_key: str = "unused", **kw) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=self.url + "/v1",
            api_key=api_key,
            max_retries=0,
            timeout=kw.pop("timeout", 120.0),
            **kw,
        )

    def http(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 120.0), **kw)

    def metrics(self) -> dict[str, float]:
        """Parse /metrics into {series: value} (series without labels keep the bare name)."""
        r = httpx.get(self.url + "/metrics", timeout=10.0)
        r.raise_for_status()
        out: dict[str, float] = {}
        for line in r.text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            try:
                out[name] = float(value)
            except ValueError:
                pass
        return out


@pytest.fixture(scope="session")
def start_server(tmp_path_factory):
    """Factory: start_server(args, env=None, wait=True, model=None) -> Server; all are killed at the end."""
    started: list[Server] = []
    logdir = tmp_path_factory.mktemp("server-logs")

    def _start(args: list[str], env: dict | None = None, wait: bool = True, model: str | None = None) -> Server:
        s = Server(args, logdir / f"server-{len(started)}.log", env, model)
        started.append(s)
        if wait:
            s.wait_ready()
        return s

    yield _start
    for s in started:
        s.stop()


@pytest.fixture(scope="session")
def server(start_server) -> Server:
    """The shared server: 16 sequences, an alias."""
    return start_server(["--parallel", "16", "--alias", ALIAS])


@pytest.fixture(scope="session")
def client(server) -> openai.OpenAI:
    return server.client()


@pytest.fixture(scope="session")
def http(server):
    with server.http() as c:
        yield c
