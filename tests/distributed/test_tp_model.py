"""Tensor-parallel models on the CPU over gloo: TP = 2 and 4 give TP = 1's greedy tokens and its logits within
1e-5 (fp32), for a tiny Llama 3.2 Vision and a tiny Llama 4 with an image, and each rank holds its share of the
parameters and no more."""

import math
import shutil

import pytest
import torch
import torch.multiprocessing as mp
from transformers import Llama4ForConditionalGeneration as HFLlama4
from transformers import MllamaConfig, MllamaForConditionalGeneration

from tests.conftest import TINY_CONFIGS, randomize_gates
from tests.distributed.tp_worker import TP_SIZES, WORLD_SIZE, Job, worker
from tests.helpers import REL_TOL, relative_error
from tests.models.llama4_checkpoints import (
    build_hf_config,
    pixel_values,
    prompt_ids,
    randomize,
)
from tests.models.test_llama4_loader import unfuse_experts
from tests.server.helpers import free_port
from vlmserve.distributed.parallel_state import TensorParallel
from vlmserve.distributed.sharding import (
    REPLICATED,
    parameter_specs,
    shard_shape,
    shard_tensor,
)
from vlmserve.families import resolve_model_family
from vlmserve.models import loader
from vlmserve.models.loader import load_model, read_config

# Vocabularies no TP size divides, so the padded rows of the embedding and the LM head are exercised.
MLLAMA_VOCAB, LLAMA4_VOCAB = 301, 303


def mllama_job(root) -> Job:
    """8 heads, 2 kv heads (each replicated on two ranks at TP = 4), 4 vision heads; a 2-tile image of 4."""
    spec = TINY_CONFIGS["gqa4-adjacent-cross"]
    text = dict(spec["text"], vocab_size=MLLAMA_VOCAB, hidden_act="silu", max_position_embeddings=512,
                pad_token_id=0, bos_token_id=1, eos_token_id=2)
    config = MllamaConfig(text_config=text, vision_config=dict(spec["vision"]), image_token_index=MLLAMA_VOCAB)
    torch.manual_seed(0)
    model = MllamaForConditionalGeneration(config).eval()
    randomize_gates(model)
    model.save_pretrained(root / "mllama")
    vision = config.vision_config
    generator = torch.Generator().manual_seed(1)
    pixels = torch.zeros(1, vision.max_num_tiles, 3, vision.image_size, vision.image_size)
    pixels[0, :2] = torch.randn(2, 3, vision.image_size, vision.image_size, generator=generator)
    images = (pixels, torch.tensor([2]), torch.tensor([[1, 1, 0, 0]]))  # aspect ratio 1 x 2
    ids = [MLLAMA_VOCAB, 1] + torch.randint(3, MLLAMA_VOCAB, (12,), generator=generator).tolist()
    return Job("mllama", str(root / "mllama"), ids, images)


def llama4_job(root) -> Job:
    """Dense and MoE layers (5 experts, top 2), 8 heads, 2 kv heads, 4 vision heads; a one-tile image."""
    config = build_hf_config("interleaved")
    config.text_config.vocab_size = LLAMA4_VOCAB
    torch.manual_seed(0)
    model = HFLlama4(config).eval()
    randomize(model, seed=100)
    model.save_pretrained(root / "llama4")
    vision = config.vision_config
    tokens_per_tile = (vision.image_size // vision.patch_size) ** 2 // 4
    return Job("llama4", str(root / "llama4"), prompt_ids("one-image", tokens_per_tile),
               pixel_values("one-image", vision.image_size))


@pytest.fixture(scope="module")
def jobs(tmp_path_factory) -> list[Job]:
    root = tmp_path_factory.mktemp("tp-models")
    return [mllama_job(root), llama4_job(root)]


@pytest.fixture(scope="module")
def results(jobs, tmp_path_factory) -> list[dict]:
    """Per rank: (job name, TP size) -> what that rank measured (rank 0: logits and tokens too)."""
    out = tmp_path_factory.mktemp("tp-results")
    mp.spawn(worker, args=(free_port(), jobs, str(out)), nprocs=WORLD_SIZE, join=True)
    return [torch.load(out / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]


@pytest.mark.parity
@pytest.mark.parametrize("name", ["mllama", "llama4"])
@pytest.mark.parametrize("size", [n for n in TP_SIZES if n > 1])
def test_tp_matches_one_rank(results, name, size):
    one, tp = results[0][name, 1], results[0][name, size]
    assert tp["logits"].shape == one["logits"].shape
    assert relative_error(tp["logits"], one["logits"]) < REL_TOL
    assert tp["tokens"] == one["tokens"]


def expected_param_bytes(path: str, size: int) -> tuple[int, int, int]:
    """(bytes a rank of `size` holds by the splits the layers declare, the sharded bytes of the whole model, its
    replicated bytes), from the full model's shapes on the meta device."""
    raw = read_config(path)
    config = resolve_model_family(raw["model_type"]).parse_config(raw)
    with torch.device("meta"):
        model = resolve_model_family(raw["model_type"]).model_class(config)
    specs = parameter_specs(model)
    per_rank = sharded = replicated = 0
    for name, param in model.named_parameters():
        spec = specs[name]
        per_rank += math.prod(shard_shape(spec, param.shape, size)) * 4
        if spec.kind == "replicated":
            replicated += param.numel() * 4
        else:
            sharded += param.numel() * 4
    return per_rank, sharded, replicated


@pytest.mark.parametrize("name", ["mllama", "llama4"])
@pytest.mark.parametrize("size", TP_SIZES)
def test_each_rank_holds_its_share_of_the_parameters(jobs, results, name, size):
    path = next(job.path for job in jobs if job.name == name)
    per_rank, sharded, replicated = expected_param_bytes(path, size)
    assert [results[rank][name, size]["param_bytes"] for rank in range(size)] == [per_rank] * size
    # 1/N of the sharded parts, plus the replicated kv heads and the vocabulary's padding rows (a few %).
    assert sharded / size <= per_rank - replicated <= 1.1 * sharded / size


def test_a_size_the_model_cannot_split_is_refused_at_load(jobs):
    with pytest.raises(ValueError, match=r"tensor parallel size 3 cannot split this mllama model.*Sizes that work"):
        load_model(jobs[0].path, dtype="float32", tp=TensorParallel(0, 3))


class SlicesOnly:
    """safe_open whose files give slices only: reading a whole tensor fails the test."""

    def __init__(self, *args, **kwargs):
        self.file = SAFE_OPEN(*args, **kwargs)

    def __enter__(self):
        self.shard = self.file.__enter__()
        return self

    def __exit__(self, *exc):
        return self.file.__exit__(*exc)

    def keys(self):
        return self.shard.keys()

    def get_slice(self, name):
        return self.shard.get_slice(name)


SAFE_OPEN = loader.safe_open


@pytest.mark.parametrize("name", ["mllama", "llama4"])
def test_each_rank_reads_only_its_declared_slices(jobs, name, monkeypatch, tmp_path):
    """Loaded without a process group (loading needs none): rank r's every parameter is its declared cut of the
    full one, read through slices alone; Llama 4's unfused per-expert layout gives the same parameters."""
    path = next(job.path for job in jobs if job.name == name)
    full = load_model(path, dtype="float32")
    if name == "llama4":
        shutil.copytree(path, tmp_path / "unfused")
        unfuse_experts(tmp_path / "unfused")
    monkeypatch.setattr(loader, "safe_open", SlicesOnly)
    for rank in range(2):
        tp = TensorParallel(rank, 2)
        specs = parameter_specs(full.model)
        expected = {key: shard_tensor(specs[key], value, rank, 2) for key, value in full.model.state_dict().items()}
        for source in [path] + ([tmp_path / "unfused"] if name == "llama4" else []):
            state = load_model(source, dtype="float32", tp=tp).model.state_dict()
            assert state.keys() == expected.keys()
            assert all(torch.equal(state[key], expected[key]) for key in state)


@pytest.mark.parametrize("name", ["mllama", "llama4"])
def test_a_split_left_undeclared_fails_the_shape_check(jobs, name, monkeypatch):
    """A column-parallel weight whose split is forgotten reads as replicated: harmless on one rank, refused by name
    on two, where the rank's parameter holds half the rows of the checkpoint tensor."""
    path = next(job.path for job in jobs if job.name == name)
    forgotten = "language_model.model.layers.0.self_attn.q_proj.weight"
    declared = loader.parameter_specs
    monkeypatch.setattr(loader, "parameter_specs", lambda model: {**declared(model), forgotten: REPLICATED})
    load_model(path, dtype="float32")
    with pytest.raises(loader.WeightLoadError, match=rf"tensor '{forgotten}' has shape .* on each of 2 ranks"):
        load_model(path, dtype="float32", tp=TensorParallel(0, 2))
