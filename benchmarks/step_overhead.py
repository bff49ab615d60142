"""Per-step host overhead of the engine: time of `LLMEngine.step` minus the model runner's, at 1, 64 and 256
running sequences, early in their outputs and after 2 000 tokens.

The runner is replaced by a stand-in that hands every sequence whose step is complete the next token of a fixed
English text (no forward, no sampling), so what is timed is exactly the engine's own work per step: scheduling,
block allocation, finish checks, detokenizing, stop strings and building the step's outputs. Before the output
processor that work grew with each request's history (every step copied every token of every request); now it
must not.

    python benchmarks/step_overhead.py                          # this checkout
    python benchmarks/step_overhead.py --before /tmp/before     # and another checkout (e.g. a `git worktree`),
                                                                # run in a subprocess; prints after/before ratios
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

TEXT = ("The harbour was quiet that morning. Gulls circled the masts while the fishermen mended their nets, "
        "talking about the weather, the price of fuel and the new boat moored by the lighthouse. ") * 4
BLOCK_SIZE = 16
PROMPT = "Tell me a long story about a harbour."


class StandInRunner:
    """The model runner's `run` without a model: the next token of TEXT for each sequence that completed its step."""

    def __init__(self, tokenizer):
        self.tokens = tokenizer.encode(TEXT)
        self.seconds = 0.0

    def run(self, batch):
        start = time.perf_counter()
        done = [seq for seq, n in zip(batch.seqs, batch.num_new_tokens) if seq.num_computed_tokens + n == seq.num_tokens]
        tokens = [self.tokens[len(seq.output_token_ids) % len(self.tokens)] for seq in done]
        result = SimpleNamespace(seqs=done, token_ids=tokens, logprobs=[None] * len(done), failed=[])
        self.seconds += time.perf_counter() - start
        return result

    def release(self, seq) -> None:
        """Nothing is cached per sequence."""


def measure(model: str, num_seqs: int, history: int, window: int, stop: list[str]) -> dict:
    """Median step overhead (ms) over `window` steps right after prefill, and over the `window` steps ending at
    `history` output tokens."""
    from vlmserve import LLM, SamplingParams

    blocks = num_seqs * -(-(history + 64) // BLOCK_SIZE) + 8
    llm = LLM(model, dtype="float32", device="cpu", num_kv_blocks=blocks, block_size=BLOCK_SIZE,
              max_num_seqs=num_seqs, max_num_batched_tokens=max(2048, num_seqs * 16), max_model_len=history + 64,
              enable_prefix_caching=False)
    engine = llm.engine
    runner = engine.runner = StandInRunner(engine.tokenizer)
    params = SamplingParams(temperature=0, max_tokens=history + 8, ignore_eos=True, stop=stop)
    process_prompt = getattr(engine, "process_prompt", None) or engine.input_processor.process_prompt
    for i in range(num_seqs):
        engine.add_request(f"r{i}", process_prompt(PROMPT), params)
    while len(engine.step()) < num_seqs:  # prefill until every sequence decodes
        pass
    overheads = []
    for _ in range(history - 1):
        runner.seconds = 0.0
        start = time.perf_counter()
        engine.step()
        overheads.append(time.perf_counter() - start - runner.seconds)
    return {"num_seqs": num_seqs, "short_ms": 1e3 * statistics.median(overheads[:window]),
            "long_ms": 1e3 * statistics.median(overheads[-window:]), "history": history}


def run_all(args) -> list[dict]:
    model = args.model or _demo_model()
    return [measure(model, n, args.history, args.window, args.stop) for n in args.num_seqs]


def _demo_model() -> str:
    from vlmserve.models.tiny import write_tiny_checkpoint

    return str(write_tiny_checkpoint(Path(tempfile.mkdtemp()) / "tiny-mllama"))


def run_before(args) -> list[dict]:
    """This script's figures for another checkout: the same script, that checkout first on the path."""
    command = [sys.executable, __file__, "--json", "--history", str(args.history), "--window", str(args.window),
               "--num-seqs", *map(str, args.num_seqs), "--stop", *args.stop]
    env = {**os.environ, "PYTHONPATH": str(Path(args.before).resolve())}
    return json.loads(subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="model directory (default: the tiny demo checkpoint)")
    parser.add_argument("--num-seqs", type=int, nargs="+", default=[1, 64, 256])
    parser.add_argument("--history", type=int, default=2000, help="output tokens each sequence reaches")
    parser.add_argument("--window", type=int, default=50, help="steps whose median is taken, early and late")
    parser.add_argument("--stop", nargs="*", default=["THE END"], help="stop strings each request carries")
    parser.add_argument("--before", help="another checkout to measure the same way, for ratios")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON only")
    args = parser.parse_args()
    after = run_all(args)
    if args.json:
        print(json.dumps(after))
        return
    before = run_before(args) if args.before else None
    print(f"host overhead per engine step (ms, median of {args.window} steps), history in output tokens")
    header = f"{'seqs':>5} {'early':>9} {f'at {args.history}':>9}"
    print(header + (f" {'before early':>13} {f'before at {args.history}':>16} {'before/after':>13}" if before else ""))
    for i, row in enumerate(after):
        line = f"{row['num_seqs']:>5} {row['short_ms']:>9.3f} {row['long_ms']:>9.3f}"
        if before:
            old = before[i]
            line += f" {old['short_ms']:>13.3f} {old['long_ms']:>16.3f} {old['long_ms'] / row['long_ms']:>12.2f}x"
        print(line)


if __name__ == "__main__":
    main()
