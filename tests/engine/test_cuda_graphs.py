"""Decode graphs on the CPU: the padded static-buffer forward (`eager_replay`, the twin of a CUDA graph replay)
against the eager path, token for token; padded rows write nothing; ineligible steps stay eager."""

import pytest
import torch
from PIL import Image

from vlmserve import LLM, SamplingParams
from vlmserve.cli import build_parser
from vlmserve.config import EngineConfig
from vlmserve.engine.cuda_graphs import DecodeGraphs, batch_buckets, eager_replay, graphs_wanted
from vlmserve.layers.moe import MoE

MAX_NUM_SEQS = 16  # buckets 1, 2, 4, 8, 16
OPTIONS = dict(dtype="float32", device="cpu", num_kv_blocks=256, block_size=4, max_num_seqs=MAX_NUM_SEQS)
PROMPTS = ["The capital of France", "Once upon a time", "1, 2, 3,", "Dear sir or madam, I write to",
           "Roses are red", "def fibonacci(n):", "A B C"]


@pytest.fixture(scope="module")
def eager_llm(demo_model_dir):
    return LLM(demo_model_dir, **OPTIONS)


@pytest.fixture(scope="module")
def graph_llm(demo_model_dir):
    llm = LLM(demo_model_dir, **OPTIONS)
    llm.engine.runner.capture_decode_graphs(MAX_NUM_SEQS, llm.engine.max_model_len, capture=eager_replay)
    return llm


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)


def token_ids(llm: LLM, prompts, params) -> list[list[int]]:
    return [out.outputs[0].token_ids for out in llm.generate(prompts, params, use_tqdm=False)]


def test_buckets():
    assert batch_buckets(256) == [1, 2, 4, *range(8, 257, 8)]
    assert batch_buckets(1000)[-1] == 256
    assert batch_buckets(5) == [1, 2, 4, 5]
    assert batch_buckets(100)[-2:] == [96, 100]
    assert batch_buckets(1) == [1]


def test_bucket_choice(graph_llm):
    graphs = graph_llm.engine.runner.graphs
    assert graphs.buckets == [1, 2, 4, 8, 16]
    assert [graphs.bucket_for(n) for n in (1, 2, 3, 4, 5, 8, 9, 16)] == [1, 2, 4, 4, 8, 8, 16, 16]


@pytest.mark.parametrize("batch_size", [3, 5, 7])
def test_padded_replay_gives_the_eager_tokens(eager_llm, graph_llm, batch_size):
    """Batches between buckets, shrinking as requests finish (max_tokens differ), contexts crossing 4-token
    blocks while they decode."""
    prompts = PROMPTS[:batch_size]
    params = [greedy(6 + 3 * i) for i in range(batch_size)]
    graphs = graph_llm.engine.runner.graphs
    before = graphs.num_replays
    assert token_ids(graph_llm, prompts, params) == token_ids(eager_llm, prompts, params)
    assert graphs.num_replays - before == max(p.max_tokens for p in params) - 1  # every decode step, no prefill


def test_padded_rows_never_write_the_kv_cache(graph_llm, monkeypatch):
    """Around every replay, the pool's bytes change at most at the step's real slots (a slot may be rewritten
    with the bytes it held: prefix caching keeps freed blocks' contents)."""
    runner = graph_llm.engine.runner
    graphs, replay = runner.graphs, runner.graphs.replay
    padded_steps = []

    def checked_replay(step):
        before = runner.kv_cache.clone()
        hidden = replay(step)
        changed = (runner.kv_cache != before).any(dim=(1, 2, 4, 5)).flatten()  # [blocks * block_size] slots
        assert set(changed.nonzero().flatten().tolist()) <= set(step.slot_mapping)
        padded_steps.append(graphs.bucket_for(len(step.seq_lens)) > len(step.seq_lens))
        return hidden

    monkeypatch.setattr(graphs, "replay", checked_replay)
    token_ids(graph_llm, PROMPTS[:5], [greedy(5 + i) for i in range(5)])
    assert len(padded_steps) == 8 and any(padded_steps)


def test_prefill_and_image_steps_run_eagerly(eager_llm, graph_llm):
    graphs = graph_llm.engine.runner.graphs
    before = graphs.num_replays
    fresh = ["Prompts no earlier test sent", "so no prefix-cache hit", "leaves a one-token prefill"]
    assert token_ids(graph_llm, fresh, greedy(1)) == token_ids(eager_llm, fresh, greedy(1))
    assert graphs.num_replays == before  # prefill only

    # an image request's decode rows cross-attend: every step it takes part in is eager, text rows included
    image = {"prompt": "<|image|>If I had to write a haiku", "images": [Image.new("RGB", (64, 64), (0, 128, 255))]}
    prompts, params = [image, PROMPTS[0]], [greedy(4), greedy(6)]
    assert token_ids(graph_llm, prompts, params) == token_ids(eager_llm, prompts, params)
    assert graphs.num_replays - before == 2  # the text request's last two steps, alone


def test_graphs_wanted_only_on_one_cuda_rank_without_moe(demo_model_dir):
    config = EngineConfig(model=str(demo_model_dir))
    cuda, model = torch.device("cuda"), torch.nn.Linear(2, 2)
    assert graphs_wanted(config, cuda, model)
    assert not graphs_wanted(config, torch.device("cpu"), model)
    assert not graphs_wanted(EngineConfig(model=str(demo_model_dir), enforce_eager=True), cuda, model)
    assert not graphs_wanted(EngineConfig(model=str(demo_model_dir), tensor_parallel_size=2), cuda, model)
    assert not graphs_wanted(config, cuda, torch.nn.Sequential(MoE(8, 16, num_experts=2, top_k=1)))


def test_enforce_eager_flag():
    parser = build_parser()
    assert parser.parse_args(["generate", "--prompt", "hi", "--enforce-eager"]).enforce_eager
    assert not parser.parse_args(["serve"]).enforce_eager


def test_capture_runs_each_bucket_once_largest_first(graph_llm):
    runner = graph_llm.engine.runner
    captured = []

    def recording(forward):
        captured.append(forward().shape[0])
        return forward

    with torch.inference_mode():
        DecodeGraphs(runner.model, 10, 8, runner.device, capture=recording)
    assert captured == [10, 8, 4, 2, 1]
