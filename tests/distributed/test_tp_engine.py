"""Tensor parallelism end to end on the CPU over gloo: the same greedy tokens as one rank, through `LLM`, a live
`vlmserve serve` whose worker is killed, and two torchrun "nodes" on loopback."""

import base64
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import save_file

from tests.helpers import png_data_url
from tests.server.helpers import MODEL, REPO, LiveServer, free_port, image_message
from vlmserve import LLM, SamplingParams
from vlmserve.distributed import launch
from vlmserve.engine.model_runner import ModelRunner
from vlmserve.families import resolve_model_family
from vlmserve.models.loader import load_model, read_config
from vlmserve.models.tiny import _random_state_dict, tiny_config, write_tiny_checkpoint

GREEDY = SamplingParams(max_tokens=8, temperature=0.0)
PROMPT = "Describe the picture."


def chat(url: str = png_data_url()) -> list[dict]:
    return [image_message(PROMPT, url)]


def tp_tokens(model_dir, size: int, messages: list[dict], **options) -> list[list[int]]:
    llm = LLM(model_dir, dtype="float32", device="cpu", num_kv_blocks=128, tensor_parallel_size=size, **options)
    try:
        return [o.outputs[0].token_ids for o in llm.chat(messages, GREEDY, use_tqdm=False)]
    finally:
        llm.shutdown()


@pytest.mark.parametrize("family", ["mllama", "llama4"])
def test_a_worker_fed_only_the_pickled_steps_computes_the_logits_of_rank_0(family, demo_model_dir, served_llama4):
    """What a worker gets is enough: a runner with its own model copy and KV pool, holding no sequences, computes
    the same logits from the pickled steps (images encoded into its own pool / features kept under rank 0's keys,
    chunked prefill, features dropped when done)."""
    model_dir = demo_model_dir if family == "mllama" else served_llama4.path
    llm = LLM(model_dir, dtype="float32", device="cpu", num_kv_blocks=64, max_num_batched_tokens=16)
    runner = llm.engine.runner
    loaded = load_model(model_dir, dtype="float32", device="cpu")
    worker = ModelRunner(loaded.model, 64, runner.block_size, runner.device, runner.dtype, None,
                         resolve_model_family(read_config(model_dir)["model_type"]).vision_state)
    pairs = []  # per step: [the worker's logits, rank 0's]
    rank0_execute = runner.execute

    def send(step):
        pairs.append([worker.execute(pickle.loads(pickle.dumps(step)))])

    def execute(step):
        pairs[-1].append(rank0_execute(step))
        return pairs[-1][-1]

    runner.send_step, runner.execute = send, execute
    llm.chat([chat(), chat(png_data_url(size=(20, 50), color=(10, 200, 10)))], GREEDY, use_tqdm=False)
    assert len(pairs) > 8 and all(theirs is None for theirs, ours in pairs if ours is None)
    assert all(torch.equal(theirs, ours) for theirs, ours in pairs if ours is not None)
    assert worker.vision.num_images_encoded == runner.vision.num_images_encoded == 2
    if family == "llama4":
        assert worker.vision.features == {}


def test_torchrun_world_must_match_the_tensor_parallel_size(monkeypatch):
    for name, value in dict(RANK="0", WORLD_SIZE="3", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT="1").items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="--tensor-parallel-size 2 but torchrun started 3 processes"):
        launch.start_ranks(2, torch.device("cpu"), None, ())


def test_tp2_mllama_chat_with_an_image_matches_one_rank(demo_model_dir, demo_llm):
    conversations = [chat(), chat(png_data_url(size=(20, 50), color=(10, 200, 10))),
                     [image_message("No picture here.")]]
    expected = [o.outputs[0].token_ids for o in demo_llm.chat(conversations, GREEDY, use_tqdm=False)]
    assert tp_tokens(demo_model_dir, 2, conversations) == expected


def test_tp2_llama4_chunked_prefill_with_an_image_matches_one_rank(served_llama4):
    conversations = [chat(png_data_url(size=(60, 33), color=(90, 20, 160)))]
    options = dict(max_num_batched_tokens=16)  # the image's features reach the workers over several steps
    assert tp_tokens(served_llama4.path, 2, conversations, **options) == tp_tokens(
        served_llama4.path, 1, conversations, **options)


@pytest.fixture(scope="module")
def four_way_mllama(tmp_path_factory) -> Path:
    """The demo model with 4 vision heads: its every split size divides by 4 (2 kv heads: each replicated twice)."""
    path = write_tiny_checkpoint(tmp_path_factory.mktemp("tp4") / "tiny-mllama-4")
    config = tiny_config()
    config["vision_config"]["attention_heads"] = 4
    save_file(_random_state_dict(config, seed=3), str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config))
    return path


def test_tp4_matches_one_rank(four_way_mllama):
    conversations = [chat()]
    assert tp_tokens(four_way_mllama, 4, conversations) == tp_tokens(four_way_mllama, 1, conversations)


def test_a_size_the_model_cannot_split_is_refused_before_any_process_starts(demo_model_dir):
    with pytest.raises(ValueError, match=r"tensor parallel size 4 .*vision attention_heads 2\. Sizes that work: 1, 2"):
        LLM(demo_model_dir, dtype="float32", device="cpu", tensor_parallel_size=4)


def _children(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return children


def _spawned_worker(pid: int) -> int:
    workers = [c for c in _children(pid) if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]
    assert len(workers) == 1, workers
    return workers[0]


def test_live_tp2_server_answers_then_a_dead_worker_makes_it_503_and_exit_nonzero(demo_model_dir, demo_llm):
    live = LiveServer(demo_model_dir, "--tensor-parallel-size", "2")
    try:
        body = {"model": MODEL, "messages": chat(), "max_tokens": 8, "temperature": 0}
        response = httpx.post(f"{live.url}/v1/chat/completions", json=body, timeout=60)
        assert response.status_code == 200
        expected = demo_llm.chat(chat(), GREEDY, use_tqdm=False)[0].outputs[0].text
        assert response.json()["choices"][0]["message"]["content"] == expected

        os.kill(_spawned_worker(live.process.pid), signal.SIGKILL)
        deadline = time.monotonic() + 10
        while httpx.get(f"{live.url}/health", timeout=5).status_code != 503:
            assert time.monotonic() < deadline, "/health never answered 503"
            time.sleep(0.05)
        assert httpx.post(f"{live.url}/v1/chat/completions", json=body, timeout=10).status_code == 503
        assert live.process.wait(30) == 1
    finally:
        live.stop()


def test_torchrun_two_nodes_on_loopback_match_one_rank(demo_model_dir, demo_llm, tmp_path):
    image = tmp_path / "red.png"
    image.write_bytes(base64.b64decode(png_data_url().split(",", 1)[1]))
    expected = demo_llm.chat([{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": str(image)}}, {"type": "text", "text": PROMPT}]}],
        SamplingParams(max_tokens=8, temperature=0.0), use_tqdm=False)[0].outputs[0].text
    port = free_port()
    torchrun = Path(sys.executable).with_name("torchrun")
    nodes = [subprocess.Popen(
        [str(torchrun), "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(rank), "--master-addr",
         "127.0.0.1", "--master-port", str(port), "-m", "vlmserve.cli", "generate", "--model", str(demo_model_dir),
         "--dtype", "float32", "--device", "cpu", "--tensor-parallel-size", "2", "--image", str(image),
         "--prompt", PROMPT, "--max-tokens", "8", "--temperature", "0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    try:
        outputs = [node.communicate(timeout=120) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in outputs]
    assert outputs[0][0] == expected + "\n"
    assert outputs[1][0] == ""

