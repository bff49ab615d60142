"""Fixtures of the model tests: the tiny Llama 4 checkpoints, built once per session."""

import pytest

from tests.models.llama4_checkpoints import TinyLlama4, build_checkpoints


@pytest.fixture(scope="session")
def tiny_llama4(tmp_path_factory) -> dict[str, TinyLlama4]:
    return build_checkpoints(tmp_path_factory.mktemp("llama4"))
