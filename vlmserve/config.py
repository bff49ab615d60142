"""Engine-level configuration, validated once where it enters (LLM, CLI, server)."""

from dataclasses import dataclass

from vlmserve.multimodal.inputs import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_REQUEST_PIXELS

GiB = 1 << 30
SCHEDULING_POLICIES = ("fcfs", "priority")


@dataclass(frozen=True)
class EngineConfig:
    model: str
    dtype: str = "auto"
    device: str = "auto"
    load_format: str = "auto"
    transformers_compat: bool = False
    block_size: int = 16
    num_kv_blocks: int | None = None  # overrides the memory-based sizing
    gpu_memory_utilization: float = 0.9  # fraction of GPU memory for weights + KV cache
    cpu_kv_cache_bytes: int = 2 * GiB  # KV budget when running on the CPU
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    max_model_len: int | None = None  # defaults to the model's context, capped by the KV pool
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS  # width x height summed over one request's images
    enable_prefix_caching: bool = True
    tensor_parallel_size: int = 1  # ranks the model is split over, one device each
    enforce_eager: bool = False  # no CUDA graphs: decode steps run eagerly too (vLLM's name)
    cpu_threads: int | None = None  # torch's compute threads on the CPU; None: $VLMSERVE_CPU_THREADS, else adapt
    scheduling_policy: str = "fcfs"  # or "priority": requests' priority (lower first) orders the queue (vLLM's)

    def __post_init__(self):
        positive = ("block_size", "max_num_seqs", "max_num_batched_tokens", "cpu_kv_cache_bytes",
                    "max_image_pixels", "max_request_pixels", "tensor_parallel_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("num_kv_blocks", "max_model_len", "cpu_threads"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        if self.scheduling_policy not in SCHEDULING_POLICIES:
            raise ValueError(f"scheduling_policy must be one of {', '.join(SCHEDULING_POLICIES)}, got "
                             f"{self.scheduling_policy!r}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
