"""vlmserve: fast, self-hosted serving for Meta's multimodal Llama models."""

from vlmserve.engine.outputs import CompletionOutput, RequestOutput
from vlmserve.llm import LLM
from vlmserve.sampling_params import SamplingParams

__all__ = ["LLM", "SamplingParams", "RequestOutput", "CompletionOutput"]
