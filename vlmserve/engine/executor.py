"""Tensor-parallel execution: rank 0 runs the scheduler and sends each step to the other ranks, which only run it.

Per step rank 0 broadcasts one `ForwardStep` (step_data.py) over the gloo control group with
broadcast_object_list: the flat batch's token ids, positions, slot mapping and block tables, and the vision
state's plan (Mllama: images to encode, with the pool blocks their K/V go to, and the cross-attending rows;
Llama 4: tiles to encode, under keys every rank keeps their features by, and which feature rows go where). Every
rank then runs the same `ModelRunner.execute` on its own shard and its own KV pool, so the collectives inside the
model meet in lockstep; rank 0 alone samples. Workers hold no sequences and send nothing back. `None` is the stop
message: the workers leave their loop and exit 0.

A dead worker must not leave rank 0 hanging in a collective. When vlmserve spawned the workers, a watchdog thread
polls their exit codes; the first death sets `failure`, which the async engine reports as EngineDeadError (the
server answers 503 and exits non-zero), and `send` refuses further steps. A gloo collective with a dead peer also
fails on its own (the connection closes); an NCCL one may block until the process group's timeout, which is why the
server exits on the watchdog's word rather than waiting for the step. Under torchrun the workers are not ours to
watch: torchrun's agent tears the job down when any rank exits, on every node.
"""

import atexit
import logging
import threading
from pathlib import Path

import torch
import torch.distributed as dist

from vlmserve.config import EngineConfig
from vlmserve.distributed import launch
from vlmserve.distributed.sharding import validate_tp
from vlmserve.engine.model_runner import ModelRunner
from vlmserve.engine.step_data import ForwardStep
from vlmserve.families import resolve_model_family
from vlmserve.models.loader import LoadedModel, load_model, read_config

logger = logging.getLogger("vlmserve.engine")

WATCH_INTERVAL_S = 0.2
JOIN_TIMEOUT_S = 30


class WorkerDiedError(RuntimeError):
    """A tensor-parallel worker process exited while the engine was running."""


class Executor:
    """Rank 0's end of the step protocol, and the watchdog over the workers it spawned."""

    def __init__(self, ranks: launch.Ranks):
        self.ranks = ranks
        self.failure: WorkerDiedError | None = None
        self._stopping = threading.Event()
        if ranks.workers:
            threading.Thread(target=self._watch, name="vlmserve-tp-watchdog", daemon=True).start()
        atexit.register(self.shutdown)

    def send(self, step: ForwardStep) -> None:
        """Broadcast one step to the workers (rank 0 then executes it too)."""
        if self.failure is not None:
            raise self.failure
        dist.broadcast_object_list([step], src=0, group=self.ranks.control)

    def shutdown(self) -> None:
        """Send the stop message, wait for the workers to exit, and leave the process group (idempotent)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self.failure is None:
            dist.broadcast_object_list([None], src=0, group=self.ranks.control)
        for process in self.ranks.workers:
            process.join(JOIN_TIMEOUT_S if self.failure is None else 1)
            if process.is_alive():
                process.kill()
        if self.failure is None:
            launch.stop_ranks()

    def _watch(self) -> None:
        while not self._stopping.wait(WATCH_INTERVAL_S):
            for rank, process in enumerate(self.ranks.workers, start=1):
                if process.exitcode is not None:
                    self.failure = WorkerDiedError(f"tensor-parallel worker rank {rank} (pid {process.pid}) exited "
                                                   f"with code {process.exitcode}")
                    logger.error("%s; the engine cannot go on", self.failure)
                    return


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_tensor_parallel(config: EngineConfig) -> None:
    """Raise ValueError before any process starts when the model cannot be split into this many ranks."""
    if config.tensor_parallel_size > 1:
        raw = read_config(config.model)
        validate_tp(raw["model_type"], resolve_model_family(raw["model_type"]).parse_config(raw),
                    config.tensor_parallel_size)


def load_shard(config: EngineConfig, ranks: launch.Ranks) -> tuple[LoadedModel, int]:
    """This rank's part of the model and the KV blocks every rank agrees on (the fewest any rank has room for)."""
    tp = launch.tensor_parallel(ranks)
    options = {} if tp is None else {"tp": tp}
    loaded = load_model(config.model, dtype=config.dtype, device=ranks.device, load_format=config.load_format,
                        transformers_compat=config.transformers_compat, **options)
    num_kv_heads = loaded.model.self_attention_layers[0].num_kv_heads
    return loaded, launch.agree_min(ranks, num_kv_blocks(config, loaded, ranks.device, num_kv_heads))


def num_kv_blocks(config: EngineConfig, loaded: LoadedModel, device: torch.device, num_kv_heads: int) -> int:
    if config.num_kv_blocks:
        return config.num_kv_blocks
    per_block = ModelRunner.kv_bytes_per_block(loaded.config, config.block_size, loaded.dtype, num_kv_heads)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        budget = free - total * (1 - config.gpu_memory_utilization)
    else:
        budget = config.cpu_kv_cache_bytes
    model_len = config.max_model_len or loaded.config.text.max_position_embeddings
    enough = config.max_num_seqs * -(-model_len // config.block_size)
    num_blocks = min(int(budget // per_block), enough)
    if num_blocks < 1:
        raise ValueError("no memory left for the KV cache; lower the model size or raise the memory budget")
    return num_blocks


def run_worker(config: EngineConfig, ranks: launch.Ranks) -> None:
    """A worker rank's life: load its shard and KV pool, then run every step rank 0 sends until the stop message."""
    loaded, num_blocks = load_shard(config, ranks)
    family = resolve_model_family(read_config(Path(config.model))["model_type"])
    runner = ModelRunner(loaded.model, num_blocks, config.block_size, ranks.device, loaded.dtype, None,
                         family.vision_state)
    while True:
        message = [None]
        dist.broadcast_object_list(message, src=0, group=ranks.control)
        if message[0] is None:
            break
        runner.execute(message[0])
    launch.stop_ranks()


def spawned_worker(rank: int, size: int, port: int, config: EngineConfig) -> None:
    """The entry point of a worker process that vlmserve spawned (launch.start_ranks)."""
    run_worker(config, launch.join_ranks(rank, size, port, launch.rank_device(resolve_device(config.device), rank)))
