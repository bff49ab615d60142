"""The tensor-parallel ranks of one engine: started by vlmserve itself, or by torchrun.

- vlmserve launches (`--tensor-parallel-size N` without torchrun): the calling process is rank 0 and spawns ranks
  1..N-1 as child processes (the `spawn` start method: CUDA cannot be forked), meeting them at 127.0.0.1 on a free
  port.
- torchrun launches (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT set, one process per device, on one
  machine or `--nnodes` of them): every process joins from the environment and nothing is spawned.

Either way the ranks form one torch.distributed world: NCCL when the device is CUDA (rank r on cuda:LOCAL_RANK),
gloo on the CPU, the same code path with only the backend and device differing. The model's collectives run on the
world group; a second group, always gloo, carries the pickled per-step messages from rank 0 (broadcast_object_list
needs CPU tensors, and a worker waits on it while the server is idle: its timeout is long).
"""

import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from multiprocessing.process import BaseProcess

import torch
import torch.distributed as dist
import torch.multiprocessing

INIT_TIMEOUT = timedelta(minutes=10)  # rendezvous and the model's collectives
IDLE_TIMEOUT = timedelta(days=365)  # a worker waits this long for rank 0's next step before giving up
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class Ranks:
    """This process's place in the tensor-parallel world."""

    rank: int
    size: int
    device: torch.device
    control: object = None  # gloo ProcessGroup for rank 0's step messages; None when size == 1
    workers: list[BaseProcess] = field(default_factory=list)  # ranks 1..N-1, when this process spawned them

    @property
    def backend(self) -> str:
        return "nccl" if self.device.type == "cuda" else "gloo"


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def torchrun_rank() -> int | None:
    """This process's RANK under torchrun, else None."""
    return int(os.environ["RANK"]) if launched_by_torchrun() else None


def rank_device(device: torch.device, local_rank: int) -> torch.device:
    """cuda:LOCAL_RANK for a CUDA device (one device per process), else the device as given."""
    return torch.device("cuda", local_rank) if device.type == "cuda" else device


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(size: int, device: torch.device, worker, worker_args: tuple) -> Ranks:
    """Join or create the world of `size` ranks and return this process's place in it.

    Under torchrun the world comes from the environment (its WORLD_SIZE must be `size`). Otherwise rank 0 (this
    process) spawns `worker(rank, size, port, *worker_args)` for ranks 1..size-1, and those call `join_ranks`.
    """
    if size == 1 and not launched_by_torchrun():
        return Ranks(0, 1, device)
    if dist.is_initialized():
        raise RuntimeError("a tensor-parallel engine is already running in this process; shut it down first")
    if launched_by_torchrun():
        world = int(os.environ["WORLD_SIZE"])
        if world != size:
            raise ValueError(f"--tensor-parallel-size {size} but torchrun started {world} processes "
                             f"(--nnodes x --nproc-per-node must equal the tensor-parallel size)")
        local = rank_device(device, int(os.environ["LOCAL_RANK"]))
        return _init(int(os.environ["RANK"]), size, local, "env://")
    port = free_port()
    spawn = torch.multiprocessing.get_context("spawn")
    workers = [spawn.Process(target=worker, args=(rank, size, port, *worker_args), daemon=True,
                             name=f"vlmserve-tp-rank{rank}") for rank in range(1, size)]
    for process in workers:
        process.start()
    ranks = _init(0, size, rank_device(device, 0), f"tcp://127.0.0.1:{port}")
    ranks.workers = workers
    return ranks


def join_ranks(rank: int, size: int, port: int, device: torch.device) -> Ranks:
    """A spawned worker's side of `start_ranks`."""
    return _init(rank, size, rank_device(device, rank), f"tcp://127.0.0.1:{port}")


def _init(rank: int, size: int, device: torch.device, init_method: str) -> Ranks:
    ranks = Ranks(rank, size, device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(ranks.backend, init_method=init_method, rank=rank, world_size=size,
                            timeout=INIT_TIMEOUT)
    ranks.control = dist.new_group(backend="gloo", timeout=IDLE_TIMEOUT)
    return ranks


def tensor_parallel(ranks: Ranks):
    """The model's TensorParallel for these ranks; None for one rank, or while the model cannot be split (every
    rank then loads the whole model and computes the same thing)."""
    try:
        from vlmserve.distributed.parallel_state import TensorParallel
    except ImportError:
        return None
    return None if ranks.size == 1 else TensorParallel(rank=ranks.rank, size=ranks.size, group=dist.group.WORLD)


def agree_min(ranks: Ranks, value: int) -> int:
    """The smallest of every rank's `value` (each rank sizes its KV pool from its own free memory)."""
    if ranks.size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN, group=ranks.control)
    return int(tensor.item())


def stop_ranks() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
