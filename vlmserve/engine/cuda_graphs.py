"""CUDA graphs for decode steps: one graph per batch-size bucket, captured once at start-up over static buffers.

A decode step of n sequences (one new token each, nothing to cross-attend, no image features) is padded to the
smallest bucket >= n: its tokens, positions, slots, context lengths and block tables are copied into the first n
rows of the static buffers (pinned, non-blocking: no host sync), the other rows become harmless padding (slot -1:
the KV write skips them; a context of 1 token of whatever block their table row names), and the bucket's graph is
replayed; the hidden states of the first n rows go on to the LM head and the sampler, eagerly.

Every captured shape is fixed: the block tables always have `max_blocks` columns (the context length in blocks),
so the decode kernel's split count, chosen from host-side sizes only, is the same at capture and at replay. The
context lengths reach the kernels only as device tensors (`DeviceLens`, views of the static buffers), so a graph
bakes in no host value; the torch twins read them back to the host, which is why capture needs Triton.

Eager steps: prefill chunks, Mllama image requests (their cross-attention inputs vary in shape from step to step),
Llama 4 (its MoE layer reads expert counts on the host), `enforce_eager`, the CPU, tensor parallelism.
"""

from __future__ import annotations

import bisect
import functools
import importlib.util
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from vlmserve.engine.step_data import ForwardStep
from vlmserve.kernels.step_inputs import DeviceLens
from vlmserve.layers.attention_metadata import AttentionMetadata
from vlmserve.layers.moe import MoE

if TYPE_CHECKING:
    from vlmserve.config import EngineConfig

MAX_BUCKET = 256  # larger decode batches run eagerly: launch overhead is small beside their work

Forward = Callable[[], torch.Tensor]  # a bucket's forward over the static buffers -> hidden [bucket, hidden]


def batch_buckets(max_num_seqs: int) -> list[int]:
    """The batch sizes graphs are captured for: 1, 2, 4, then every multiple of 8, up to min(max_num_seqs, 256),
    which is always a bucket itself."""
    cap = min(max_num_seqs, MAX_BUCKET)
    return [size for size in (1, 2, 4, *range(8, MAX_BUCKET + 1, 8)) if size < cap] + [cap]


def graphs_wanted(config: EngineConfig, device: torch.device, model) -> bool:
    """Whether the engine captures decode graphs: on CUDA with the Triton kernels (their twins sync the host),
    unless `enforce_eager`, on one rank (collectives are not captured), for a model whose forward never syncs the
    host (not Llama 4's MoE: `.tolist()` of expert counts)."""
    return (not config.enforce_eager and device.type == "cuda" and importlib.util.find_spec("triton") is not None
            and config.tensor_parallel_size == 1 and not any(isinstance(module, MoE) for module in model.modules()))


class CudaGraphCapture:
    """Captures each forward into a torch.cuda.CUDAGraph after one warm-up run (Triton compiles, the allocator's
    blocks exist); every graph shares one memory pool, so capture the largest bucket first."""

    def __init__(self):
        self.pool = None

    def __call__(self, forward: Forward) -> Forward:
        forward()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            hidden = forward()
        self.pool = graph.pool()

        def replay() -> torch.Tensor:
            graph.replay()
            return hidden

        return replay


def eager_replay(forward: Forward) -> Forward:
    """The CPU twin of CudaGraphCapture: every replay runs the same padded static-buffer forward eagerly."""
    return forward


class DecodeGraphs:
    """The decode graphs of one model and KV pool (bound to the model's attention layers), buckets up to
    min(max_num_seqs, 256), block tables `max_blocks` wide. `capture` turns a bucket's forward into its replay."""

    def __init__(self, model, max_num_seqs: int, max_blocks: int, device: torch.device,
                 capture: Callable[[Forward], Forward] | None = None):
        self.model, self.max_blocks = model, max_blocks
        self.buckets = batch_buckets(max_num_seqs)
        size = self.buckets[-1]
        self.pin_memory = device.type == "cuda"
        padding = torch.tensor([[0], [0], [-1], [1]], dtype=torch.int64, device=device)
        self.inputs = padding.repeat(1, size)  # [4, size]: input_ids, positions, slot_mapping, seq_lens
        self.block_tables = torch.zeros(size, max_blocks, dtype=torch.int64, device=device)
        self.arange = torch.arange(size + 1, device=device)  # query_start_loc, decode rows and seqs
        capture = capture or CudaGraphCapture()
        self.replays = {bucket: capture(functools.partial(self._forward, bucket)) for bucket in reversed(self.buckets)}
        self.num_replays = 0

    def can_replay(self, step: ForwardStep) -> bool:
        """A decode step: one new token per sequence, logits at each, no vision inputs, a batch and block tables
        that fit the buffers."""
        num_seqs = len(step.seq_lens)
        return (step.vision is None and len(step.input_ids) == num_seqs <= self.buckets[-1]
                and (step.logit_rows is None or len(step.logit_rows) == num_seqs)
                and len(step.block_tables[0]) <= self.max_blocks)

    def bucket_for(self, num_seqs: int) -> int:
        """The smallest bucket that holds num_seqs sequences."""
        return self.buckets[bisect.bisect_left(self.buckets, num_seqs)]

    def replay(self, step: ForwardStep) -> torch.Tensor:
        """The step's hidden states [num_seqs, hidden], from its bucket's graph."""
        num_seqs = len(step.seq_lens)
        bucket = self.bucket_for(num_seqs)
        pad = bucket - num_seqs
        self._copy(self.inputs[:, :bucket], [step.input_ids + [0] * pad, step.positions + [0] * pad,
                                              step.slot_mapping + [-1] * pad, step.seq_lens + [1] * pad])
        self._copy(self.block_tables[:num_seqs, : len(step.block_tables[0])], step.block_tables)
        self.num_replays += 1
        return self.replays[bucket]()[:num_seqs]

    def _copy(self, buffer: torch.Tensor, values: list[list[int]]) -> None:
        # pinned and non-blocking: the host goes on to queue the replay (the caching host allocator keeps the
        # staging memory until the copy is done)
        buffer.copy_(torch.tensor(values, dtype=torch.int64, pin_memory=self.pin_memory), non_blocking=True)

    def _forward(self, bucket: int) -> torch.Tensor:
        input_ids, positions, slot_mapping, seq_lens = self.inputs[:, :bucket]
        rows = self.arange[:bucket]  # one new token per sequence: sequence i is row i, a decode
        metadata = AttentionMetadata(
            lens=DeviceLens(seq_lens, self.arange[: bucket + 1], rows, rows),
            block_tables=self.block_tables[:bucket],
            slot_mapping=slot_mapping,
        )
        return self.model(input_ids, positions, metadata)
