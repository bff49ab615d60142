"""The model families we serve, by config.json's model_type. A family is one file here (its ModelFamily record)
plus its entry below."""

from vlmserve.families.base import ModelFamily
from vlmserve.families.llama4 import LLAMA4
from vlmserve.families.mllama import MLLAMA
from vlmserve.models.config_common import ConfigError

MODEL_FAMILIES: dict[str, ModelFamily] = {family.model_type: family for family in (MLLAMA, LLAMA4)}


def resolve_model_family(model_type: str | None) -> ModelFamily:
    if model_type not in MODEL_FAMILIES:
        raise ConfigError(
            f"unsupported model_type {model_type!r}; supported: {', '.join(sorted(MODEL_FAMILIES))}"
        )
    return MODEL_FAMILIES[model_type]
