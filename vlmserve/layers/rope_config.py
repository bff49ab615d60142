"""The rotary embedding's parameters, as the model configs parse them (rotary_embedding.py uses them)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class RopeConfig:
    theta: float = 500000.0
    rope_type: str = "default"  # or "llama3": Llama 3's long-context scaling of the low frequencies
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192
