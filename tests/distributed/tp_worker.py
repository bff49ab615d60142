"""A tensor-parallel rank of tests/distributed/test_tp_model.py: one process of a gloo group of 4 that, for each
job, loads the tiny checkpoint at TP = 1 (rank 0 alone), 2 (ranks 0-1) and 4, and drives it through a paged KV cache
as the engine does: prompt logits, then greedy tokens. Every rank saves its resident parameter bytes; rank 0 also
its logits and tokens."""

from dataclasses import dataclass

import torch
import torch.distributed as dist

from tests.models.llama4_harness import PagedHarness
from vlmserve.distributed.parallel_state import SINGLE, TensorParallel
from vlmserve.layers.attention_metadata import AttentionMetadata, CrossBatch, SeqCrossInputs
from vlmserve.models.loader import load_model

TP_SIZES = (1, 2, 4)
WORLD_SIZE = max(TP_SIZES)


@dataclass
class Job:
    """One checkpoint and its prompt: `images` are Llama 4 tiles [tiles, 3, S, S], or Mllama's (pixel_values
    [1, tiles, 3, H, W], aspect_ratio_ids [1], aspect_ratio_mask [1, tiles]) for a prompt whose every token sees
    the image."""

    name: str
    path: str
    token_ids: list[int]
    images: object
    max_new_tokens: int = 16


class CrossAttentionHarness(PagedHarness):
    """PagedHarness for Mllama: one sequence whose every token cross-attends to one image's K/V (kept in a pool of
    their own, rows [2 * layers * vision tokens, kv_heads, head_dim])."""

    def __init__(self, model, pixel_values, aspect_ratio_ids, aspect_ratio_mask):
        super().__init__(model)
        with torch.inference_mode():
            kv = model.encode_images(pixel_values, aspect_ratio_ids, aspect_ratio_mask)
        self.kv_pool = torch.cat([t for layer in sorted(kv) for t in kv[layer]])
        num_tokens = kv[min(kv)][0].shape[0]
        rows = torch.arange(self.kv_pool.shape[0]).view(-1, num_tokens)
        self.kv_rows = {layer: (rows[2 * c], rows[2 * c + 1]) for c, layer in enumerate(sorted(kv))}
        patches = num_tokens // aspect_ratio_mask.shape[1]
        self.sees = aspect_ratio_mask[0].bool().repeat_interleave(patches)  # [vision tokens]: real tiles'

    def forward(self, input_ids, positions, metadata: AttentionMetadata, image_embeds) -> torch.Tensor:
        n = input_ids.shape[0]
        seq = SeqCrossInputs(self.kv_rows, self.sees.expand(n, -1))
        metadata.cross = CrossBatch(torch.arange(n), [0, n], [seq], None, self.kv_pool)
        return self.model(input_ids, positions, metadata)


def run_job(job: Job, tp: TensorParallel) -> dict:
    model = load_model(job.path, dtype="float32", device="cpu", tp=tp).model
    if isinstance(job.images, tuple):
        harness, embeds = CrossAttentionHarness(model, *job.images), None
    else:
        harness = PagedHarness(model)
        with torch.inference_mode():
            embeds = model.encode_images(job.images)
    seq, logits = harness.prefill(job.token_ids, embeds)
    tokens = harness.decode(seq, logits, job.max_new_tokens)
    return {"logits": logits, "tokens": tokens,
            "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters())}


def worker(rank: int, port: int, jobs: list[Job], out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE)
    groups = {n: dist.new_group(list(range(n))) for n in TP_SIZES if n > 1}  # every rank creates every group
    results = {}
    for job in jobs:
        for n in TP_SIZES:
            if rank < n:
                tp = SINGLE if n == 1 else TensorParallel(rank, n, groups[n])
                result = run_job(job, tp)
                results[job.name, n] = result if rank == 0 else {"param_bytes": result["param_bytes"]}
    torch.save(results, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()
