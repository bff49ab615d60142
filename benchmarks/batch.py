"""A batch of image requests two ways: `vlmserve run-batch` (offline, the app in process) against the same lines
sent as individual HTTP requests to `vlmserve serve` (a client keeping `--concurrency` in flight), on the same
model and engine settings. Prints lines/s and output tok/s of each and their ratio.

Every line asks about its own random image (no encoder-cache hits) with greedy decoding of exactly
`--max-tokens` tokens. Server start-up and model loading are outside both timings.

    python benchmarks/batch.py                       # 1 000 lines on the tiny demo model
    python benchmarks/batch.py --lines 100 --max-tokens 8
"""

import argparse
import asyncio
import base64
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from vlmserve.config import EngineConfig
from vlmserve.distributed.launch import free_port
from vlmserve.models.tiny import ensure_demo_model
from vlmserve.server.config import ServerConfig
from vlmserve.server.run_batch import run_batch

MODEL = "bench"


def image_url(seed: int, side: int = 48) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def batch_lines(count: int, max_tokens: int) -> list[dict]:
    return [{"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions", "body": {
        "model": MODEL, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url(i)}},
                                                  {"type": "text", "text": f"Describe picture {i}."}]}]}}
             for i in range(count)]


def time_run_batch(model: str, lines: list[dict], engine_options: dict, workdir: Path) -> tuple[float, int]:
    input_file, output_file = workdir / "in.jsonl", workdir / "out.jsonl"
    input_file.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    summary = run_batch(EngineConfig(model=model, **engine_options), ServerConfig(served_model_name=MODEL),
                        input_file, output_file, use_tqdm=False)
    assert summary.succeeded == len(lines), summary
    return time.monotonic() - summary.started, summary.output_tokens


def time_individual_requests(model: str, lines: list[dict], engine_options: dict, concurrency: int
                             ) -> tuple[float, int]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "vlmserve.cli", "serve", "--model", model, "--port", str(port), "--served-model-name",
         MODEL, "--log-level", "warning", "--max-queue", str(len(lines)),
         *[f"--{key.replace('_', '-')}={value}" for key, value in engine_options.items()]],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        return asyncio.run(_send_all(url, lines, concurrency))
    finally:
        server.terminate()
        server.wait(60)


async def _send_all(url: str, lines: list[dict], concurrency: int) -> tuple[float, int]:
    slots, tokens = asyncio.Semaphore(concurrency), 0
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        async def send(line: dict) -> None:
            nonlocal tokens
            async with slots:
                response = await client.post(line["url"], json=line["body"])
            response.raise_for_status()
            tokens += response.json()["usage"]["completion_tokens"]

        start = time.monotonic()
        await asyncio.gather(*(send(line) for line in lines))
        return time.monotonic() - start, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model directory (default: the tiny demo model)")
    parser.add_argument("--lines", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=64, help="requests the HTTP client keeps in flight")
    parser.add_argument("--max-num-seqs", type=int, default=64)
    args = parser.parse_args()
    model = args.model or str(ensure_demo_model())
    engine_options = {"dtype": "float32", "device": "cpu", "max_num_seqs": args.max_num_seqs}
    lines = batch_lines(args.lines, args.max_tokens)
    with tempfile.TemporaryDirectory() as workdir:
        offline_s, offline_tokens = time_run_batch(model, lines, engine_options, Path(workdir))
    online_s, online_tokens = time_individual_requests(model, lines, engine_options, args.concurrency)
    print(f"{args.lines} image lines x {args.max_tokens} tokens, max_num_seqs {args.max_num_seqs}, "
          f"{os.cpu_count()} CPUs")
    print("| way | wall s | lines/s | output tok/s |\n| --- | --- | --- | --- |")
    for name, seconds, tokens in (("run-batch", offline_s, offline_tokens),
                                  (f"individual HTTP requests, {args.concurrency} in flight", online_s,
                                   online_tokens)):
        print(f"| {name} | {seconds:.2f} | {args.lines / seconds:.1f} | {tokens / seconds:.1f} |")
    print(f"run-batch / individual requests: {online_s / offline_s:.2f}x the throughput")


if __name__ == "__main__":
    main()
