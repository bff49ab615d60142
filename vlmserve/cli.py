"""vlmserve command line: generate | make-tiny."""

import argparse
import sys

from vlmserve.models.tiny import ensure_demo_model, write_tiny_checkpoint


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model directory (Hugging Face layout); default: the tiny random demo model")
    parser.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--load-format", default="auto", choices=["auto", "safetensors", "dummy"])
    parser.add_argument("--transformers-compat", action="store_true",
                        help="reproduce transformers 5.x instead of Meta's reference where they differ")


def _resolve_model(args) -> str:
    if args.model:
        return args.model
    path = ensure_demo_model()
    print(f"[vlmserve] no --model given: using the tiny demo model at {path} (RANDOM weights: its answers "
          "mean nothing)", file=sys.stderr)
    return str(path)


def cmd_generate(args) -> int:
    from vlmserve import LLM, SamplingParams

    llm = LLM(_resolve_model(args), dtype=args.dtype, device=args.device, load_format=args.load_format,
              transformers_compat=args.transformers_compat)
    content = [{"type": "image_url", "image_url": {"url": path}} for path in args.image]
    content.append({"type": "text", "text": args.prompt})
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        {"role": "user", "content": content}]
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p,
                            seed=args.seed)
    output = llm.chat(messages, params, use_tqdm=False)[0].outputs[0]
    print(output.text)
    print(f"[vlmserve] {len(output.token_ids)} tokens, finish_reason={output.finish_reason}", file=sys.stderr)
    return 0


def cmd_make_tiny(args) -> int:
    path = write_tiny_checkpoint(args.directory, seed=args.seed)
    print(f"wrote a tiny random-weight Llama 3.2 Vision checkpoint to {path} (for trying the system, not answers)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlmserve", description="Serve Meta's multimodal Llama models.")
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser("generate", help="answer one prompt, with optional images")
    _add_model_options(generate)
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    generate.add_argument("--system", help="system prompt")
    generate.add_argument("--max-tokens", type=int, default=64)
    generate.add_argument("--temperature", type=float, default=0.0)
    generate.add_argument("--top-p", type=float, default=1.0)
    generate.add_argument("--seed", type=int)
    generate.set_defaults(func=cmd_generate)

    tiny = commands.add_parser("make-tiny", help="write the tiny random-weight demo checkpoint")
    tiny.add_argument("directory")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_make_tiny)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError) as err:
        print(f"vlmserve: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
