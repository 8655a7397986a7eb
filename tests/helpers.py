"""Tiny, seeded models built in the test process: no download, a real tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2Config,
    Qwen2ForCausalLM,
)

FAMILIES = ("llama", "qwen2", "gemma2", "phi3")
"""The families most tests run on."""
OTHER_FAMILIES = ("gpt_neox", "opt")
"""Families laid out otherwise: GPT-NeoX (layers at `gpt_neox.layers`, LayerNorm with bias, untied
embeddings; the bring-your-own-model test builds a workspace for it) and OPT (layers at
`model.decoder.layers`, found by the hooks' fallback)."""


def tiny_config(family: str, vocab_size: int, n_layers: int = 4) -> PretrainedConfig:
    common = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": n_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
        "tie_word_embeddings": True,
    }
    if family == "llama":
        return LlamaConfig(**common)
    if family == "qwen2":
        return Qwen2Config(**common)
    if family == "gemma2":
        return Gemma2Config(**common, head_dim=16, sliding_window=64)
    if family == "phi3":
        return Phi3Config(**{**common, "num_key_value_heads": 4}, pad_token_id=0)
    if family == "gpt_neox":
        del common["num_key_value_heads"], common["tie_word_embeddings"]
        return GPTNeoXConfig(**common)
    if family == "opt":
        del common["num_key_value_heads"], common["intermediate_size"]
        return OPTConfig(**common, ffn_dim=128, word_embed_proj_dim=64)
    raise ValueError(family)


def tiny_model(
    family: str = "llama", vocab_size: int = 49152, n_layers: int = 4, seed: int = 0
) -> PreTrainedModel:
    """A randomly initialised decoder of the given family; same seed, same weights."""
    classes = {
        "llama": LlamaForCausalLM,
        "qwen2": Qwen2ForCausalLM,
        "gemma2": Gemma2ForCausalLM,
        "phi3": Phi3ForCausalLM,
        "gpt_neox": GPTNeoXForCausalLM,
        "opt": OPTForCausalLM,
    }
    torch.manual_seed(seed)
    model = classes[family](tiny_config(family, vocab_size, n_layers))
    return model.eval()


def save_tiny_model_dir(
    directory: Path, tokenizer: PreTrainedTokenizerBase, family: str = "llama", seed: int = 0
) -> Path:
    """Write a tiny model with the real tokenizer as a Hugging Face model directory."""
    model = tiny_model(family, vocab_size=len(tokenizer), seed=seed)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def tiny_sae(
    architecture: str = "topk",
    d_in: int = 64,
    d_sae: int = 128,
    hook: str = "blocks.2.hook_resid_pre",
    seed: int = 0,
    dtype: str = "float32",
) -> Any:
    """A seeded SAELens inference SAE with random weights (no training), for loading and checking tests."""
    from sae_lens.registry import get_sae_class

    sae_cls, cfg_cls = get_sae_class(architecture)
    options: dict[str, Any] = {"d_in": d_in, "d_sae": d_sae, "dtype": dtype}
    if architecture == "topk":
        options["k"] = 8
    cfg = cfg_cls(**options)
    cfg.metadata.hook_name = hook
    cfg.metadata.model_name = "tiny"
    torch.manual_seed(seed)
    sae = sae_cls(cfg)
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(torch.randn_like(param) * 0.1)
    return sae.eval()


def identity_sae(d_in: int, hook: str = "blocks.2.hook_resid_pre", n_dead: int = 0) -> Any:
    """A standard (ReLU) SAE that reconstructs its input exactly: latents i and d_in + i carry +x_i and
    -x_i. `n_dead` extra latents have a zero encoder and a negative bias, so they never fire."""
    from sae_lens import StandardSAE, StandardSAEConfig

    cfg = StandardSAEConfig(d_in=d_in, d_sae=2 * d_in + n_dead)
    cfg.metadata.hook_name = hook
    sae = StandardSAE(cfg)
    eye = torch.eye(d_in)
    with torch.no_grad():
        sae.W_enc.zero_()
        sae.W_enc[:, : 2 * d_in] = torch.cat([eye, -eye], dim=1)
        sae.W_dec.zero_()
        sae.W_dec[: 2 * d_in] = torch.cat([eye, -eye], dim=0)
        sae.W_dec[2 * d_in :, 0] = 1.0  # unit rows, so decoder norms stay well defined
        sae.b_enc.zero_()
        sae.b_enc[2 * d_in :] = -1.0
        sae.b_dec.zero_()
    return sae.eval()


def build_tiny_latent_cache(loaded: Any, root: Path, hook: str, config: Any) -> tuple[Any, Path, Any, Path]:
    """A latent cache of a seeded 32-latent TopK SAE at `hook` over a tiny corpus (4 harmful test and 4
    harmless train prompts plus general text), with a random refusal direction, built under `root`.

    Returns:
        (corpus, stored activations directory, the SAE, the cache directory).
    """
    from explorer.core.prompts import builtin_prompts
    from explorer.latents.builder import build_latent_cache
    from explorer.refusal.direction import RefusalDirection
    from explorer.saes.activations import collect
    from explorer.saes.corpus import CorpusConfig, build_corpus
    from explorer.saes.loading import wrap_sae

    prompts = builtin_prompts("harmful", "test")[:4] + builtin_prompts("harmless", "train")[:4]
    corpus = build_corpus(
        loaded,
        CorpusConfig(seq_len=64, response_tokens=6, text_tokens=3000, batch_size=8),
        prompts,
        root / "corpus",
    )
    for part in ("train", "heldout"):
        collect(loaded, corpus, [hook], root / "acts", part)  # pyright: ignore[reportArgumentType]
    sae = wrap_sae(tiny_sae("topk", d_in=64, d_sae=32, hook=hook), "tiny", "tiny")
    torch.manual_seed(0)
    refusal = RefusalDirection(torch.randn(64), hook, 2, -1, torch.randn(5, 6, 64), {})
    build_latent_cache(loaded, sae, corpus, root / "acts", refusal, config=config, directory=root / "cache")
    return corpus, root / "acts", sae, root / "cache"
