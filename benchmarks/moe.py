"""Time vlmserve's grouped MoE layer against transformers' Llama4TextMoe on the same weights and tokens.

Llama4TextMoe runs every expert on every token (the unselected ones on x * 0); ours sorts the token rows by their
chosen experts and runs one matmul pair per expert that has rows. Both include the shared expert. Each row gives,
for each system, the best of at least --repeat timed calls (more, where those take under 0.5 s in all) after one
warm-up call; their ratio; and the relative Frobenius error between the two outputs. Other processes' CPU use
while each system is timed is measured from /proc: a row marked `*` was disturbed (over 0.15 cores busy elsewhere).

    .venv/bin/python benchmarks/moe.py                                  # hidden 1024, 16 experts, top-1, ~1 min
    .venv/bin/python benchmarks/moe.py --batches 1 16 --experts 128     # Maverick's expert count
"""

import argparse
import os
import sys
import time

import torch
from transformers import Llama4TextConfig
from transformers.models.llama4.modeling_llama4 import Llama4TextMoe

from vlmserve.bench.measure import OtherLoad, is_disturbed, synchronize
from vlmserve.layers.moe import MoE


def best_time(fn, repeat: int, device: torch.device, min_seconds: float = 0.5) -> tuple[float, float]:
    """(best seconds of at least `repeat` calls, and of as many as fill min_seconds, after one warm-up call; the
    cores other processes kept busy meanwhile)."""
    fn()
    times = []
    with OtherLoad() as load:
        while len(times) < repeat or sum(times) < min_seconds:
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times.append(time.perf_counter() - start)
    return min(times), load.value or 0.0


def build_pair(args, device: torch.device) -> tuple[MoE, Llama4TextMoe]:
    """Our layer with random unit-scale weights, and transformers' with the same state dict."""
    torch.manual_seed(args.seed)
    ours = MoE(args.hidden, args.intermediate, args.experts, args.top_k)
    with torch.no_grad():
        for param in ours.parameters():
            fan_in = param.shape[1] if param.dim() == 3 else param.shape[-1]
            param.copy_(torch.randn(param.shape) / fan_in**0.5)
    config = Llama4TextConfig(hidden_size=args.hidden, intermediate_size=args.intermediate,
                              num_local_experts=args.experts, num_experts_per_tok=args.top_k)
    theirs = Llama4TextMoe(config)
    theirs.load_state_dict(ours.state_dict())
    return ours.to(device, args.dtype).eval(), theirs.to(device, args.dtype).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--intermediate", type=int, default=2048)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=1)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 256, 2048])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.dtype = getattr(torch, args.dtype)
    device = torch.device(args.device)
    ours, theirs = build_pair(args, device)
    print(f"hidden {args.hidden}, intermediate {args.intermediate}, {args.experts} experts, top-{args.top_k}, "
          f"{args.dtype}, {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs")
    print("| tokens | vlmserve ms | transformers ms | transformers / vlmserve | rel. error |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for tokens in args.batches:
        x = torch.randn(tokens, args.hidden, generator=torch.Generator().manual_seed(tokens)).to(device, args.dtype)
        with torch.inference_mode():
            ref = theirs(x)[0].float()
            error = ((ours(x).float() - ref).norm() / ref.norm()).item()
            ours_s, ours_busy = best_time(lambda: ours(x), args.repeat, device)
            theirs_s, theirs_busy = best_time(lambda: theirs(x), args.repeat, device)
        mark = " *" if is_disturbed(max(ours_busy, theirs_busy)) else ""
        print(f"| {tokens} | {ours_s * 1e3:.2f} | {theirs_s * 1e3:.2f} | {theirs_s / ours_s:.1f}x | "
              f"{error:.1e}{mark} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
