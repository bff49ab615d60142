"""model_type -> (config parser, model class): the one place a new model family is plugged in."""

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from vlmserve.models.llama4 import Llama4ForConditionalGeneration
from vlmserve.models.llama4_config import parse_llama4_config
from vlmserve.models.mllama import MllamaForConditionalGeneration
from vlmserve.models.mllama_config import ConfigError, parse_mllama_config


@dataclass(frozen=True)
class ModelFamily:
    parse_config: Callable[[dict[str, Any]], Any]
    model_class: type[nn.Module]


MODEL_FAMILIES: dict[str, ModelFamily] = {
    "mllama": ModelFamily(parse_mllama_config, MllamaForConditionalGeneration),
    "llama4": ModelFamily(parse_llama4_config, Llama4ForConditionalGeneration),
}


def resolve_model_family(model_type: str | None) -> ModelFamily:
    if model_type not in MODEL_FAMILIES:
        raise ConfigError(
            f"unsupported model_type {model_type!r}; supported: {', '.join(sorted(MODEL_FAMILIES))}"
        )
    return MODEL_FAMILIES[model_type]
