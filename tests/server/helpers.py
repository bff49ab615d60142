"""Helpers shared by the server tests: messages, a live `vlmserve serve` subprocess (images: tests/helpers.py)."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from vlmserve.config import EngineConfig
from vlmserve.distributed.launch import free_port

MODEL = "tiny"
REPO = Path(__file__).parents[2]


def engine_config(model_dir: Path, **overrides) -> EngineConfig:
    return EngineConfig(model=str(model_dir), dtype="float32", device="cpu", num_kv_blocks=128, **overrides)


def wait_for(predicate, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def metric(server: "LiveServer", name: str, key: str | None = None) -> float:
    """The sum of the /metrics samples whose line starts with `name` (a metric, or a metric and its labels)."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    text = httpx.get(f"{server.url}/metrics", headers=headers).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def image_message(text: str, *urls: str) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


class LiveServer:
    """`vlmserve serve` in a subprocess on a free loopback port."""

    def __init__(self, model_dir: Path, *args: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "vlmserve.cli", "serve", "--model", str(model_dir), "--port", str(self.port),
                   "--served-model-name", MODEL, "--dtype", "float32", "--device", "cpu", "--num-kv-blocks", "128",
                   "--log-level", "warning", *args]
        self.process = subprocess.Popen(command, cwd=REPO, env=dict(os.environ), stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self._wait_healthy()

    def _wait_healthy(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vlmserve serve exited {self.process.returncode}: {self.process.stdout.read()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError("vlmserve serve did not become healthy")

    def terminate(self, timeout_s: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout_s)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

