"""vlmserve on the CPU with another process busy on one core, against itself on a quiet machine: the adaptive
thread count (the default) against a count fixed at every core (what torch does by itself).

Each configuration runs `vlmserve bench throughput` in its own process (the thread count is set when the
engine is built), in alternation, quiet and with a `while True: pass` process running beside it. Prints the
wall time of each and the ratios that matter: contended over quiet, and adaptive over fixed.

    python benchmarks/cpu_contention.py                 # the 154M Mllama config, 64 chat prompts x 32 tokens
    python benchmarks/cpu_contention.py --num-prompts 16 --output-len 16 --repeat 1
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIG = str(Path(__file__).with_name("mllama-154m.json"))


def timed_run(threads: str | None, contended: bool, args) -> float:
    """Seconds of one `bench throughput` run (its fastest of --repeat), with `threads` fixed or adaptive (None)."""
    env = {key: value for key, value in os.environ.items() if key != "VLMSERVE_CPU_THREADS"}
    if threads is not None:
        env["VLMSERVE_CPU_THREADS"] = threads
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if contended else None
    try:
        with tempfile.NamedTemporaryFile(suffix=".json") as result:
            subprocess.run([sys.executable, "-m", "vlmserve.cli", "bench", "throughput", "--model", args.model,
                            "--load-format", "dummy", "--dtype", "float32", "--device", "cpu", "--prompts", "chat",
                            "--num-prompts", str(args.num_prompts), "--output-len", str(args.output_len),
                            "--repeat", str(args.repeat), "--json", result.name],
                           env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            return json.loads(Path(result.name).read_text())["vlmserve"]["seconds"]
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=CONFIG)
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the four configurations")
    args = parser.parse_args()
    cores = str(len(os.sched_getaffinity(0)))
    configurations = {(name, contended): threads for name, threads in (("adaptive", None), (f"fixed {cores}", cores))
                      for contended in (False, True)}
    seconds = {key: [] for key in configurations}
    for _ in range(args.rounds):
        for (name, contended), threads in configurations.items():
            seconds[name, contended].append(timed_run(threads, contended, args))
    best = {key: min(values) for key, values in seconds.items()}
    print(f"{args.num_prompts} chat prompts x {args.output_len} tokens, {cores} cores; best of {args.rounds} rounds "
          f"(each the fastest of {args.repeat})")
    print("| threads | quiet s | one core busy s | busy / quiet |\n| --- | --- | --- | --- |")
    for name in ("adaptive", f"fixed {cores}"):
        print(f"| {name} | {best[name, False]:.2f} | {best[name, True]:.2f} | "
              f"{best[name, True] / best[name, False]:.2f}x |")
    print(f"one core busy: adaptive is {best[f'fixed {cores}', True] / best['adaptive', True]:.2f}x as fast as fixed; "
          f"quiet: {best[f'fixed {cores}', False] / best['adaptive', False]:.2f}x")


if __name__ == "__main__":
    main()
