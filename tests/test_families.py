"""Every registered model family's record is complete and its parts agree: the config it parses builds its model, its
tokenizer holds its special tokens, its chat format marks an image with the token its image prompts expand, and its
vision backend has the interface the model runner drives."""

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer

from tests.tokenizer.helpers import image_url, text, user
from vlmserve.engine.vision_inputs import VisionInputs
from vlmserve.families import MODEL_FAMILIES, resolve_model_family
from vlmserve.families.chat import encode_chat
from vlmserve.layers.embed_head import VocabParallelEmbedding
from vlmserve.models.config_common import ConfigError
from vlmserve.tokenizer.llama4_standin import build_llama4_standin_tokenizer
from vlmserve.tokenizer.tokenizer import Tokenizer, packaged_tokenizer_path

SHIPPED = Path(__file__).resolve().parents[1] / "vlmserve" / "models" / "configs"
# Per family: a shipped config and a tokenizer.json with the family's special tokens at their real ids.
CHECKPOINTS = {
    "mllama": ("llama-3.2-11b-vision", lambda: HFTokenizer.from_file(str(packaged_tokenizer_path()))),
    "llama4": ("llama-4-scout-17b-16e", build_llama4_standin_tokenizer),
}
BLOCK_SIZE = 16


def test_every_family_is_checked():
    assert set(CHECKPOINTS) == set(MODEL_FAMILIES)


@pytest.fixture(params=sorted(MODEL_FAMILIES))
def family_parts(request):
    """(family, its typed config, its model on the meta device, its tokenizer)."""
    family = MODEL_FAMILIES[request.param]
    config_name, hf_tokenizer = CHECKPOINTS[request.param]
    raw = json.loads((SHIPPED / config_name / "config.json").read_text())
    assert raw["model_type"] == family.model_type == request.param
    config = family.parse_config(raw)
    with torch.device("meta"):
        model = family.model_class(config)
    return family, config, model, Tokenizer(hf_tokenizer(), special=family.special_tokens)


def test_names_agree(family_parts):
    family, config, _, tokenizer = family_parts
    assert family.special_tokens.family == config.model_type == tokenizer.family == family.model_type


def test_num_embeddings_is_the_embedding_table(family_parts):
    family, config, model, _ = family_parts
    [embedding] = [module for module in model.modules() if isinstance(module, VocabParallelEmbedding)]
    assert family.num_embeddings(config) == embedding.num_embeddings


def test_chat_marks_each_image_with_the_placeholder_image_prompts_expand(family_parts, tmp_path):
    family, config, _, tokenizer = family_parts
    messages = [user(image_url("a.png"), text("What is it?"))]
    ids, images = encode_chat(tokenizer, messages, date_string=None)
    prompts = family.image_prompts(tmp_path, config, tokenizer)
    assert family.render_chat(messages).images == images == ["a.png"]
    assert ids[0] == tokenizer.bos_token_id and ids.count(prompts.placeholder_id) == 1
    assert prompts.placeholder_id == tokenizer.image_token_id < family.num_embeddings(config)


def test_vision_backend_implements_the_protocol(family_parts):
    family, config, model, _ = family_parts
    pool = torch.empty(0, config.text.num_key_value_heads, config.text.head_dim, device="meta")
    vision = family.vision_state(model, pool, BLOCK_SIZE, torch.device("meta"), torch.float32)
    assert isinstance(vision, VisionInputs)
    assert vision.plan([], [], []) is None
    assert vision.step_inputs([], [], []).forward_kwargs() == {} and vision.num_images_encoded == 0
    assert family.vision_state.blocks_per_image(config, BLOCK_SIZE) >= 0


def test_image_request_for_planning(family_parts):
    family, config, _, _ = family_parts
    image_tokens = family.image_prompt_tokens(config, 1)
    assert image_tokens >= 0
    assert family.describe_image(image_tokens, family.vision_state.blocks_per_image(config, BLOCK_SIZE))
    with pytest.raises(ValueError, match="image_tiles must be 1.."):
        family.image_prompt_tokens(config, 0)


def test_unknown_model_type_lists_the_supported_ones():
    supported = ", ".join(sorted(MODEL_FAMILIES))
    with pytest.raises(ConfigError, match=f"unsupported model_type 'qwen2'; supported: {supported}$"):
        resolve_model_family("qwen2")
