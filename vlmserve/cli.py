"""vlmserve command line: serve | generate | run-batch | make-tiny | eval | bench | plan."""

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

from vlmserve.config import SCHEDULING_POLICIES, EngineConfig
from vlmserve.models.tiny import ensure_demo_model, write_tiny_checkpoint
from vlmserve.planning import add_plan_parser


def _add_model_options(parser: argparse.ArgumentParser,
                       model_help: str = "model directory (Hugging Face layout); default: the tiny random demo model"
                       ) -> None:
    parser.add_argument("--model", help=model_help)
    # Engine options default to EngineConfig's fields: the one place engine defaults are written.
    parser.add_argument("--dtype", default=EngineConfig.dtype,
                        help="auto, bfloat16, float16 or float32 (default: %(default)s)")
    parser.add_argument("--device", default=EngineConfig.device, help="auto, cpu or cuda[:N] (default: %(default)s)")
    parser.add_argument("--load-format", default=EngineConfig.load_format, choices=["auto", "safetensors", "dummy"])
    parser.add_argument("--transformers-compat", action="store_true",
                        help="reproduce transformers 5.x instead of Meta's reference where they differ")
    parser.add_argument("--enforce-eager", action="store_true",
                        help="run decode steps eagerly: no CUDA graphs (on CUDA they are captured at start-up)")


def _add_parallel_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tensor-parallel-size", "-tp", type=int, default=EngineConfig.tensor_parallel_size,
                        help="split the model over N processes, one device each (spawned here, or started by "
                             "torchrun: see README; default: %(default)s)")
    parser.add_argument("--cpu-threads", type=int,
                        help="torch's compute threads on the CPU (default: $VLMSERVE_CPU_THREADS, else every core "
                             "other processes leave free, followed as their load changes)")


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
              transformers_compat=args.transformers_compat, tensor_parallel_size=args.tensor_parallel_size,
              enforce_eager=args.enforce_eager, cpu_threads=args.cpu_threads)
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


def _serving_engine_config(args, model: str, **options) -> EngineConfig:
    """The EngineConfig of `serve` and `run-batch`: the model and batching options both take, and `options`."""
    return EngineConfig(
        model=model, dtype=args.dtype, device=args.device, load_format=args.load_format,
        transformers_compat=args.transformers_compat, num_kv_blocks=args.num_kv_blocks,
        max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len, tensor_parallel_size=args.tensor_parallel_size,
        enforce_eager=args.enforce_eager, cpu_threads=args.cpu_threads, **options)


def cmd_serve(args) -> NoReturn:
    from vlmserve.server.config import ServerConfig
    from vlmserve.server.image_fetch import ImageFetchConfig
    from vlmserve.server.launch import serve
    from vlmserve.server.pricing import PriceTable, load_pricing

    model = _resolve_model(args)
    engine_config = _serving_engine_config(
        args, model, max_image_pixels=args.max_image_pixels, max_request_pixels=args.max_request_pixels,
        gpu_memory_utilization=args.gpu_memory_utilization, scheduling_policy=args.scheduling_policy)
    env_key = os.environ.get("VLMSERVE_API_KEY")
    server_config = ServerConfig(
        served_model_name=args.served_model_name or Path(model).name,
        api_keys=tuple(args.api_key) + ((env_key,) if env_key else ()),
        pricing=load_pricing(args.pricing) if args.pricing else PriceTable(),
        max_output_tokens=args.max_output_tokens, max_images_per_request=args.max_images_per_request,
        max_image_bytes=args.max_image_bytes, max_queue=args.max_queue, max_prompt_chars=args.max_prompt_chars,
        image_fetch=ImageFetchConfig(timeout_s=args.image_fetch_timeout, max_bytes=args.max_image_bytes,
                                     allow_private=args.allow_private_image_urls),
        data_dir=args.data_dir, max_stored_responses=args.max_stored_responses,
        response_retention_days=args.response_retention_days, max_batch_file_bytes=args.max_batch_file_bytes,
        max_batch_lines=args.max_batch_lines)
    serve(engine_config, server_config, host=args.host, port=args.port, log_level=args.log_level,
          shutdown_timeout_s=args.shutdown_timeout, drain_grace_s=args.drain_grace)


def cmd_run_batch(args) -> int:
    from vlmserve.server.config import ServerConfig
    from vlmserve.server.pricing import PriceTable, load_pricing
    from vlmserve.server.run_batch import BatchInterrupted, run_batch

    model = _resolve_model(args)
    engine_config = _serving_engine_config(args, model)
    server_config = ServerConfig(served_model_name=args.served_model_name or Path(model).name,
                                 pricing=load_pricing(args.pricing) if args.pricing else PriceTable())
    try:
        summary = run_batch(engine_config, server_config, args.input_file, args.output_file,
                            use_tqdm=not args.no_progress)
    except BatchInterrupted as stopped:
        print(f"vlmserve: error: {stopped}", file=sys.stderr)
        return 1
    print(f"[vlmserve] {summary.describe(args.output_file)}", file=sys.stderr)
    return 0


def _add_run_batch_options(run_batch: argparse.ArgumentParser) -> None:
    run_batch.add_argument("-i", "--input-file", required=True, help="OpenAI batch input (JSONL)")
    run_batch.add_argument("-o", "--output-file", required=True,
                           help="where answers are appended, one line each (a rerun skips the custom_ids it holds)")
    run_batch.add_argument("--served-model-name",
                           help="the model name lines may carry (default: the model directory's)")
    run_batch.add_argument("--pricing", help="JSON price table for usage.cost (see README)")
    run_batch.add_argument("--max-num-seqs", type=int, default=EngineConfig.max_num_seqs,
                           help="lines answered at once (default: %(default)s)")
    run_batch.add_argument("--max-num-batched-tokens", type=int, default=EngineConfig.max_num_batched_tokens)
    run_batch.add_argument("--max-model-len", type=int)
    run_batch.add_argument("--num-kv-blocks", type=int, help="KV-cache blocks (default: sized from memory)")
    run_batch.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_serve_options(serve: argparse.ArgumentParser) -> None:
    from vlmserve.server import config as limits

    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--served-model-name", help="the model name clients send (default: the model directory's)")
    serve.add_argument("--api-key", action="append", default=[],
                       help="accept this Bearer key (repeatable; also $VLMSERVE_API_KEY); none: no auth")
    serve.add_argument("--pricing", help="JSON price table (see README); default: $0.35/$0.40 per 1M tokens in/out, "
                                         "$0.0005058 per image")
    serve.add_argument("--max-model-len", type=int, help="context length (default: the model's, if the KV cache fits)")
    serve.add_argument("--max-num-seqs", type=int, default=EngineConfig.max_num_seqs,
                       help="sequences generated at once (default: %(default)s)")
    serve.add_argument("--max-num-batched-tokens", type=int, default=EngineConfig.max_num_batched_tokens,
                       help="tokens per engine step (default: %(default)s)")
    serve.add_argument("--num-kv-blocks", type=int, help="KV-cache blocks (default: sized from memory)")
    serve.add_argument("--gpu-memory-utilization", type=float, default=EngineConfig.gpu_memory_utilization,
                       help="share of GPU memory for weights and KV cache (default: %(default)s)")
    serve.add_argument("--max-queue", type=int, default=limits.DEFAULT_MAX_QUEUE,
                       help="sequences (n per request) admitted beyond --max-num-seqs; more get 429 with Retry-After")
    serve.add_argument("--max-prompt-chars", type=int,
                       help=f"largest prompt text, refused (413) before tokenizing; default: "
                            f"{limits.PROMPT_CHARS_PER_TOKEN} per token of the context")
    serve.add_argument("--max-output-tokens", type=int, default=limits.DEFAULT_MAX_OUTPUT_TOKENS)
    serve.add_argument("--max-images-per-request", type=int, default=limits.DEFAULT_MAX_IMAGES_PER_REQUEST)
    serve.add_argument("--max-image-bytes", type=int, default=limits.DEFAULT_MAX_IMAGE_BYTES,
                       help="largest image, fetched or inline")
    serve.add_argument("--max-image-pixels", type=int, default=EngineConfig.max_image_pixels,
                       help="largest image, width x height (default: %(default)s)")
    serve.add_argument("--max-request-pixels", type=int, default=EngineConfig.max_request_pixels,
                       help="all of a request's images together, checked from their headers before decoding "
                            "(default: %(default)s)")
    serve.add_argument("--image-fetch-timeout", type=float, default=10.0, help="seconds per image URL")
    serve.add_argument("--allow-private-image-urls", action="store_true",
                       help="let image URLs reach loopback and private networks (trusted clients only)")
    serve.add_argument("--data-dir", help="where /v1/responses stores responses (SQLite) for previous_response_id, "
                                          "and the Files and Batches APIs keep files and batches (default: none; "
                                          "nothing is stored, those APIs are off)")
    serve.add_argument("--max-stored-responses", type=int, default=limits.DEFAULT_MAX_RESPONSES,
                       help="the newest this many stored responses are kept (default: %(default)s)")
    serve.add_argument("--response-retention-days", type=float, default=limits.DEFAULT_RETENTION_DAYS,
                       help="stored responses older than this are deleted (default: %(default)s)")
    serve.add_argument("--max-batch-file-bytes", type=int, default=limits.DEFAULT_MAX_BATCH_FILE_BYTES,
                       help="largest file /v1/files takes (default: %(default)s, OpenAI's)")
    serve.add_argument("--max-batch-lines", type=int, default=limits.DEFAULT_MAX_BATCH_LINES,
                       help="most requests in one batch input file (default: %(default)s, OpenAI's)")
    serve.add_argument("--scheduling-policy", default=EngineConfig.scheduling_policy, choices=SCHEDULING_POLICIES,
                       help="fcfs, or priority: requests' `priority` (lower first) orders the queue and may preempt; "
                            "batch lines always run below interactive requests (default: %(default)s)")
    serve.add_argument("--shutdown-timeout", type=float, default=limits.DEFAULT_SHUTDOWN_TIMEOUT_S,
                       help="seconds SIGTERM/Ctrl-C waits for requests in flight before cancelling them")
    serve.add_argument("--drain-grace", type=float, default=0.0,
                       help="seconds SIGTERM/Ctrl-C keeps serving with /ready at 503 before the drain starts, so a "
                            "load balancer stops routing here first (default: %(default)s)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def cmd_make_tiny(args) -> int:
    path = write_tiny_checkpoint(args.directory, seed=args.seed)
    print(f"wrote a tiny random-weight Llama 3.2 Vision checkpoint to {path} (for trying the system, not answers)")
    return 0


def cmd_eval(args) -> int:
    from vlmserve.evals.tasks import TASKS

    if args.list_tasks:
        for name, task in TASKS.items():
            print(f"{name}: {task.metric} on {task.split} (model card: {task.card_split}), "
                  f"max_tokens {task.max_tokens}")
            print(f"    {task.description}")
            print(f"    data: <--data>/{name}/ holding {task.layout}")
        return 0
    from vlmserve.evals.runner import evaluate

    endpoints, extractor = _eval_endpoints(args), _eval_extractor(args)
    if not args.task:
        raise ValueError(f"give --task (repeatable); known tasks: {', '.join(TASKS)}")
    if not args.data:
        raise ValueError("give --data DIR: a local copy of the datasets, one sub-directory per task (see --list-tasks)")
    if not Path(args.data).is_dir():
        raise ValueError(f"--data {args.data} is not a directory")
    try:
        results = evaluate(endpoints, args.task, args.data, args.output, limit=args.limit,
                           concurrency=args.concurrency, temperature=args.temperature, seed=args.seed,
                           timeout_s=args.timeout, max_retries=args.max_retries, extractor=extractor)
    except KeyboardInterrupt:
        print(f"[vlmserve] interrupted: the answers so far are saved under {args.output}; run the same command "
              "again to continue", file=sys.stderr)
        return 130
    for name, task in results["tasks"].items():
        for label, summary in task["endpoints"].items():
            score = "no score" if summary["score_pct"] is None else f"{summary['score_pct']:.1f}"
            print(f"{name}\t{label}\t{score}\t({summary['num_scored']} scored, {summary['num_errors']} errors)")
    print(f"[vlmserve] report: {Path(args.output) / 'report.md'}", file=sys.stderr)
    return 0


def _eval_endpoints(args) -> list:
    from vlmserve.evals.endpoint import Endpoint

    if not args.endpoint or len(args.endpoint) != len(args.model):
        raise ValueError(f"give --endpoint URL --model NAME in pairs (got {len(args.endpoint)} endpoints and "
                         f"{len(args.model)} models)")
    if args.api_key and len(args.api_key) != len(args.endpoint):
        raise ValueError(f"give one --api-key per --endpoint, in the same order ('' for none): got "
                         f"{len(args.api_key)} keys for {len(args.endpoint)} endpoints")
    keys = args.api_key or [os.environ.get("VLMSERVE_EVAL_API_KEY")] * len(args.endpoint)
    return [Endpoint(url, model, key or None) for url, model, key in zip(args.endpoint, args.model, keys)]


def _eval_extractor(args):
    """The LLM answer extractor, or None for rule-based extraction."""
    from vlmserve.evals.endpoint import Endpoint

    if bool(args.extractor_endpoint) != bool(args.extractor_model):
        raise ValueError("give --extractor-endpoint URL and --extractor-model NAME together")
    if not args.extractor_endpoint:
        return None
    key = args.extractor_api_key or os.environ.get("VLMSERVE_EVAL_EXTRACTOR_API_KEY")
    return Endpoint(args.extractor_endpoint, args.extractor_model, key or None)


def _add_eval_options(evaluate: argparse.ArgumentParser) -> None:
    evaluate.add_argument("--endpoint", action="append", default=[],
                          help="OpenAI-compatible server URL, e.g. http://127.0.0.1:8000 (repeatable, with --model)")
    evaluate.add_argument("--model", action="append", default=[], help="model name to send to the matching --endpoint")
    evaluate.add_argument("--api-key", action="append", default=[],
                          help="Bearer key per --endpoint, same order (default: $VLMSERVE_EVAL_API_KEY for all)")
    evaluate.add_argument("--task", action="append", default=[], help="task name (repeatable; see --list-tasks)")
    evaluate.add_argument("--data", help="local datasets: one sub-directory per task, named after the task")
    evaluate.add_argument("--output", default="vlmserve-eval",
                          help="answer cache and report; rerunning into the same directory resumes "
                               "(default: %(default)s)")
    evaluate.add_argument("--limit", type=int, help="the first N items of each task")
    evaluate.add_argument("--concurrency", type=int, default=8, help="requests in flight per endpoint")
    evaluate.add_argument("--temperature", type=float, default=0.0)
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    evaluate.add_argument("--max-retries", type=int, default=5, help="on 429, 5xx, timeouts and connection errors")
    evaluate.add_argument("--extractor-endpoint",
                          help="OpenAI-compatible server of an LLM answer extractor for the tasks that use one "
                               "(MathVista, as in the official code); default: rule-based extraction")
    evaluate.add_argument("--extractor-model", help="model name to send to --extractor-endpoint")
    evaluate.add_argument("--extractor-api-key",
                          help="Bearer key for --extractor-endpoint (default: $VLMSERVE_EVAL_EXTRACTOR_API_KEY)")
    evaluate.add_argument("--list-tasks", action="store_true", help="list the tasks, their metrics and data layouts")


def cmd_bench(args) -> int:
    from vlmserve.bench import report
    from vlmserve.bench.model_source import resolve_model

    options = {"dtype": args.dtype, "device": args.device, "load_format": args.load_format,
               "transformers_compat": args.transformers_compat, "compare_hf": args.compare_hf,
               "enforce_eager": args.enforce_eager}
    with resolve_model(_resolve_model(args), load_format=args.load_format, hf_overrides=args.hf_overrides) as source:
        if args.bench == "latency":
            from vlmserve.bench.latency import LatencySettings, run_latency

            settings = LatencySettings(tuple(args.batch_sizes), args.prompt_len, args.image_tiles, args.output_len,
                                       args.warmup, args.iters)
            results = run_latency(source, settings, **options)
            report.print_latency(results)
        else:
            from vlmserve.bench.throughput import ThroughputSettings, run_throughput

            settings = ThroughputSettings(
                num_prompts=args.num_prompts, input_len=args.input_len, output_len=args.output_len,
                image_fraction=args.image_fraction, image_tiles=args.image_tiles,
                hf_batch_sizes=tuple(args.hf_batch_size), prompts=args.prompts,
                output_lens=tuple(args.output_lens) if args.output_lens else None, repeat=args.repeat,
                seed=args.seed, prefix_caching=args.prefix_caching)
            results = run_throughput(source, settings, **options, hf_only=args.hf_only)
            report.print_throughput(results)
    if args.json:
        report.write_json(results, args.json)
    return 0


def _add_bench_options(commands) -> None:
    from vlmserve.bench.model_source import shipped_configs

    bench = commands.add_parser("bench", help="measure latency or throughput, optionally beside transformers")
    kinds = bench.add_subparsers(dest="bench", required=True)
    latency = kinds.add_parser("latency", help="TTFT, decode tok/s per batch size, peak memory, memory roofline")
    throughput = kinds.add_parser("throughput", help="offline tok/s of LLM.generate on synthetic prompts")
    for parser, output_len in ((latency, 32), (throughput, 64)):
        _add_model_options(parser, model_help="model directory, config.json, or shipped config name ("
                           f"{', '.join(shipped_configs())}); default: the tiny random demo model")
        parser.add_argument("--hf-overrides", help="JSON deep-merged into the config, e.g. "
                            "'{\"text_config\": {\"num_hidden_layers\": 4}}'")
        parser.add_argument("--image-tiles", type=int, default=4, help="tiles of each synthetic image")
        parser.add_argument("--output-len", type=int, default=output_len, help="new tokens per request (EOS ignored)")
        parser.add_argument("--compare-hf", action="store_true",
                            help="also run transformers on the same weights and inputs (implies --transformers-compat)")
        parser.add_argument("--json", help="also write the results to this file")
        parser.set_defaults(func=cmd_bench)
    latency.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 64])
    latency.add_argument("--prompt-len", type=int, default=48, help="prompt tokens, <|image|> and BOS included")
    latency.add_argument("--warmup", type=int, default=3, help="untimed TTFT runs and decode steps")
    latency.add_argument("--iters", type=int, default=5, help="timed TTFT runs (the median is reported)")
    throughput.add_argument("--num-prompts", type=int, default=64)
    throughput.add_argument("--prompts", choices=["tokens", "chat"], default="tokens",
                            help="tokens: --input-len random token ids, --image-fraction of them with one "
                                 "--image-tiles image; chat: chat requests of 2-259 random words, one in three "
                                 "with one random-pixel image of random size")
    throughput.add_argument("--input-len", type=int, default=128, help="prompt tokens, <|image|> and BOS included")
    throughput.add_argument("--image-fraction", type=float, default=0.5, help="share of prompts with one image")
    throughput.add_argument("--output-lens", type=int, nargs=2, metavar=("MIN", "MAX"),
                            help="instead of --output-len: each request wants its own number of new tokens, drawn "
                                 "uniformly from [MIN, MAX] with --seed (as requests that end at different EOS)")
    throughput.add_argument("--seed", type=int, default=0, help="draws the prompts and --output-lens")
    throughput.add_argument("--hf-batch-size", type=int, nargs="+", default=[16],
                            help="transformers generate() batch sizes, each timed as its own entry")
    throughput.add_argument("--repeat", type=int, default=1,
                            help="timed runs per system (ours: a fresh engine each); the fastest undisturbed one "
                                 "is reported")
    throughput.add_argument("--no-prefix-caching", dest="prefix_caching", action="store_false",
                            help="run vlmserve with enable_prefix_caching=False")
    throughput.add_argument("--hf-only", action="store_true",
                            help="time transformers alone (implies --compare-hf); our engine is built once, "
                                 "untimed, for the weights and inputs transformers gets")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlmserve", description="Serve Meta's multimodal Llama models.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="OpenAI-compatible HTTP server")
    _add_model_options(serve)
    _add_parallel_options(serve)
    _add_serve_options(serve)
    serve.set_defaults(func=cmd_serve)

    generate = commands.add_parser("generate", help="answer one prompt, with optional images")
    _add_model_options(generate)
    _add_parallel_options(generate)
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    generate.add_argument("--system", help="system prompt")
    generate.add_argument("--max-tokens", type=int, default=64)
    generate.add_argument("--temperature", type=float, default=0.0)
    generate.add_argument("--top-p", type=float, default=1.0)
    generate.add_argument("--seed", type=int)
    generate.set_defaults(func=cmd_generate)

    run_batch = commands.add_parser("run-batch", help="answer an OpenAI batch file offline (resumable)")
    _add_model_options(run_batch)
    _add_parallel_options(run_batch)
    _add_run_batch_options(run_batch)
    run_batch.set_defaults(func=cmd_run_batch)

    tiny = commands.add_parser("make-tiny", help="write the tiny random-weight demo checkpoint")
    tiny.add_argument("directory")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_make_tiny)

    evaluate = commands.add_parser("eval", help="score OpenAI-compatible endpoints on benchmarks, side by side")
    _add_eval_options(evaluate)
    evaluate.set_defaults(func=cmd_eval)

    _add_bench_options(commands)
    add_plan_parser(commands)
    return parser


def default_to_serve(argv: list[str]) -> list[str]:
    """Options with no command before them are serve's (`vlmserve --port 8001`); -h/--help stays the top-level
    help."""
    if argv and argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        return ["serve", *argv]
    return argv


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(default_to_serve(sys.argv[1:] if argv is None else argv))
    try:
        return args.func(args)
    except (ValueError, OSError) as err:
        print(f"vlmserve: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
