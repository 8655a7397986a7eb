"""SAEDashboard's `SaeVisRunner` on a Hugging Face Llama model: the baseline for the latent-cache benchmark.

SaeVisRunner needs a TransformerLens `HookedTransformer`, and TransformerLens cannot load our models by
name, so `hooked_from_hf` builds one from the Hugging Face model already in memory and checks its logits.

Run `PYTHONPATH=. .venv/bin/python bench/saevis_baseline.py` from the repo root for a self-check on a tiny
random model (and on the real SmolLM2 weights when the build has written them to cache/models/).
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from typing import Any

import torch
from transformer_lens import HookedTransformer
from transformer_lens.config.hooked_transformer_config import HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights
from transformers import PreTrainedModel

log = logging.getLogger(__name__)

LOGIT_CHECK_TOKENS = 16


def _rope_theta(hf_config: Any) -> float:
    # transformers 5 moved rope_theta into `rope_parameters`; 4.x kept it at the top level.
    params = getattr(hf_config, "rope_parameters", None) or {}
    theta = params.get("rope_theta", getattr(hf_config, "rope_theta", None))
    if theta is None:
        raise ValueError(
            f"no rope_theta in {type(hf_config).__name__}; expected rope_parameters['rope_theta']"
        )
    rope_type = params.get("rope_type", "default")
    if rope_type != "default":
        raise ValueError(f"rope_type {rope_type!r} is not supported here; expected 'default'")
    return float(theta)


def hooked_config_from_hf(hf_model: PreTrainedModel, n_ctx: int) -> HookedTransformerConfig:
    """The HookedTransformerConfig of a Hugging Face LlamaForCausalLM, built field by field.

    Args:
        hf_model: a LlamaForCausalLM (no rope scaling, no biases).
        n_ctx: the longest sequence the hooked model will see. TransformerLens allocates an
            [n_ctx, n_ctx] causal mask per layer, so the checkpoint's 8192 would cost ~2 GB for SmolLM2.
    """
    hf = hf_model.config
    if hf.model_type != "llama":
        raise ValueError(f"model_type {hf.model_type!r} is not supported; expected 'llama'")
    if getattr(hf, "attention_bias", False) or getattr(hf, "mlp_bias", False):
        raise ValueError("Llama models with attention or MLP biases are not supported")
    n_heads = hf.num_attention_heads
    n_kv = hf.num_key_value_heads
    d_head = getattr(hf, "head_dim", None) or hf.hidden_size // n_heads
    return HookedTransformerConfig(
        n_layers=hf.num_hidden_layers,
        d_model=hf.hidden_size,
        d_head=d_head,
        n_heads=n_heads,
        # TransformerLens switches to grouped-query attention only when this is not None.
        n_key_value_heads=n_kv if n_kv != n_heads else None,
        d_mlp=hf.intermediate_size,
        d_vocab=hf.vocab_size,
        n_ctx=n_ctx,
        act_fn=hf.hidden_act,
        eps=hf.rms_norm_eps,
        normalization_type="RMS",
        final_rms=True,
        gated_mlp=True,
        positional_embedding_type="rotary",
        rotary_dim=d_head,
        rotary_base=_rope_theta(hf),
        rotary_adjacent_pairs=False,
        original_architecture="LlamaForCausalLM",
        dtype=hf_model.dtype,
        device=str(hf_model.device),
        init_weights=False,  # every weight is overwritten by the conversion
    )


@torch.no_grad()
def check_logits(hf_model: PreTrainedModel, hooked: HookedTransformer, tokens: torch.Tensor) -> float:
    """Raise if the hooked model's logits differ from the Hugging Face model's; return the max difference.

    Args:
        tokens: [batch, pos] int ids.
    """
    tokens = tokens.to(hf_model.device)
    expected = hf_model(input_ids=tokens).logits.float()
    actual = hooked(tokens, return_type="logits").float()
    diff = float((expected - actual).abs().max())
    scale = float(expected.abs().max())
    tolerance = (1e-4 if hf_model.dtype == torch.float32 else 3e-2) * max(scale, 1.0)
    if not diff <= tolerance:
        raise RuntimeError(
            f"HookedTransformer logits differ from the Hugging Face model's by {diff:.3g} "
            f"(tolerance {tolerance:.3g}, logit scale {scale:.3g}); the weight conversion is wrong"
        )
    return diff


def hooked_from_hf(hf_model: PreTrainedModel, n_ctx: int, *, check: bool = True) -> HookedTransformer:
    """A HookedTransformer with the weights of a Hugging Face LlamaForCausalLM, residual stream unchanged.

    Args:
        hf_model: the model; only read.
        n_ctx: the longest sequence the hooked model will see.
        check: compare logits with the Hugging Face model on a short random input, raising on mismatch.
    """
    cfg = hooked_config_from_hf(hf_model, n_ctx)
    with warnings.catch_warnings():
        # TransformerLens 3 deprecates HookedTransformer for TransformerBridge, but SaeVisRunner needs
        # HookedTransformer's `run_with_hooks(stop_at_layer=...)` and `W_U`.
        warnings.simplefilter("ignore", DeprecationWarning)
        hooked = HookedTransformer(cfg, move_to_device=True)
    # No folding or centring: they would change the activations at the hook (centring) or the
    # weights the runner reads, and the benchmark must see the same activations as our builder.
    hooked.load_and_process_state_dict(
        convert_llama_weights(hf_model, cfg),
        fold_ln=False,
        center_writing_weights=False,
        center_unembed=False,
        fold_value_biases=False,
    )
    hooked.eval()
    if check:
        generator = torch.Generator().manual_seed(0)
        probe = torch.randint(0, cfg.d_vocab, (2, min(LOGIT_CHECK_TOKENS, n_ctx)), generator=generator)
        log.info("logit check: max |diff| %.3g", check_logits(hf_model, hooked, probe))
    return hooked


def _sae_for_runner(sae: Any) -> Any:
    """A copy of the SAE that SaeVisRunner may mutate, encoding exactly like the original."""
    runner_sae = copy.deepcopy(sae)
    # SaeVisRunner calls fold_W_dec_norm() in place: that would mutate the caller's SAE, rescale
    # every activation by its decoder norm (our cache stores plain sae.encode), and SAELens 6 TopK
    # SAEs with rescale_acts_by_decoder_norm=False refuse it with NotImplementedError.
    runner_sae.fold_W_dec_norm = lambda: None
    return runner_sae


def run_saevis(
    hf_model: PreTrainedModel,
    sae: Any,
    tokens: torch.Tensor,
    *,
    hook_name: str,
    minibatch_size_tokens: int = 64,
    minibatch_size_features: int = 256,
    device: str = "cpu",
    hooked: HookedTransformer | None = None,
    check: bool = True,
) -> tuple[float, dict[str, Any]]:
    """Run SAEDashboard's SaeVisRunner over every latent of `sae` on `tokens`.

    Args:
        hf_model: a LlamaForCausalLM; converted to a HookedTransformer unless `hooked` is given.
        sae: a SAELens 6 `SAE` reading `hook_name`; not modified.
        tokens: [n_seq, seq_len] int ids, no padding.
        hook_name: TransformerLens hook name, e.g. ``blocks.2.hook_resid_pre``.
        minibatch_size_tokens: sequences per forward pass (SaeVisConfig.minibatch_size_tokens).
        minibatch_size_features: latents per runner batch (SaeVisConfig.minibatch_size_features).
        device: where the runner keeps its tensors ("cpu" or "cuda").
        hooked: a model from `hooked_from_hf`, to reuse across repeats; skips conversion.
        check: check the conversion's logits against the Hugging Face model.

    Returns:
        (runner wall seconds, excluding conversion, {"data": SaeVisData, "convert_s": conversion
        seconds (0.0 when `hooked` was given), "hooked": the HookedTransformer})
    """
    from sae_dashboard.sae_vis_data import SaeVisConfig
    from sae_dashboard.sae_vis_runner import SaeVisRunner

    sae_hook = sae.cfg.metadata.hook_name  # SAELens 6 moved hook_name from cfg to cfg.metadata
    if sae_hook is not None and sae_hook != hook_name:
        raise ValueError(f"hook_name {hook_name!r} differs from the SAE's hook {sae_hook!r}")
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [n_seq, seq_len], got shape {tuple(tokens.shape)}")

    convert_s = 0.0
    if hooked is None:
        start = time.perf_counter()
        hooked = hooked_from_hf(hf_model, n_ctx=int(tokens.shape[1]), check=check)
        convert_s = time.perf_counter() - start
    if hook_name not in hooked.hook_dict:
        raise ValueError(f"hook_name {hook_name!r} is not a hook of the converted model")
    hooked.to(device)
    runner_sae = _sae_for_runner(sae).to(device)

    cfg = SaeVisConfig(
        hook_point=hook_name,
        features=range(sae.cfg.d_sae),
        minibatch_size_tokens=minibatch_size_tokens,
        minibatch_size_features=minibatch_size_features,
        device=device,
        dtype="float32",
        use_dfa=False,
        verbose=False,
    )
    # `run` is annotated HookedSAETransformer but uses only HookedTransformer's API (run_with_hooks, W_U).
    model: Any = hooked
    start = time.perf_counter()
    data = SaeVisRunner(cfg).run(encoder=runner_sae, model=model, tokens=tokens.cpu())
    runner_s = time.perf_counter() - start
    return runner_s, {"data": data, "convert_s": convert_s, "hooked": hooked}


@torch.no_grad()
def _self_check(hf_model: PreTrainedModel, sae: Any, tokens: torch.Tensor, hook_name: str) -> None:
    """Run the runner and compare its per-latent maxima and densities with `sae.encode`."""
    runner_s, out = run_saevis(hf_model, sae, tokens, hook_name=hook_name, minibatch_size_tokens=4)
    data, hooked = out["data"], out["hooked"]
    print(f"conversion {out['convert_s']:.2f}s, runner {runner_s:.2f}s ({sae.cfg.d_sae} latents)")

    _, cache = hooked.run_with_cache(tokens, names_filter=hook_name)
    layer = int(hook_name.split(".")[1])
    hf_hidden = hf_model(input_ids=tokens, output_hidden_states=True).hidden_states
    hf_resid = hf_hidden[layer] if hook_name.endswith("hook_resid_pre") else hf_hidden[layer + 1]
    resid_diff = float((cache[hook_name] - hf_resid).abs().max())
    acts = sae.encode(cache[hook_name]).flatten(0, 1)  # [n_seq * seq_len, d_sae]

    runner_max = torch.tensor(data.feature_stats.max)
    runner_density = torch.tensor(data.feature_stats.frac_nonzero)
    max_diff = float((runner_max - acts.max(0).values).abs().max())
    density_diff = float((runner_density - (acts > 0).float().mean(0)).abs().max())
    # Top examples are drawn only where the +-buffer context window fits: positions [before + 1, len - after).
    before, after = data.cfg.feature_centric_layout.seq_cfg.buffer
    windowed = acts.unflatten(0, tokens.shape)[:, before + 1 : tokens.shape[1] - after]
    latent = int(windowed.amax((0, 1)).argmax())  # the most active latent, so the check cannot pass on zeros
    top = data.feature_data_dict[latent].sequence_data.seq_group_data[0].seq_data[0]
    top_act, expected_top = top.feat_acts[before], float(windowed[..., latent].max())
    print(
        f"latent {latent}: runner top act {top_act:.4f} at (seq {top.original_index}, pos "
        f"{top.qualifying_token_index}); sae.encode max in the runner's window {expected_top:.4f}\n"
        f"all {acts.shape[1]} latents: max |runner max - encode max| {max_diff:.2e}, "
        f"max |density diff| {density_diff:.2e}; hook vs HF hidden state {resid_diff:.2e}"
    )
    at = float(acts.unflatten(0, tokens.shape)[top.original_index, top.qualifying_token_index, latent])
    if abs(at - expected_top) > 1e-4:
        raise SystemExit(f"the runner's top example is not where sae.encode peaks ({at:.4f} there)")
    if max_diff > 1e-5 or density_diff > 0 or abs(top_act - expected_top) > 1e-4:
        raise SystemExit("SaeVisRunner's activations disagree with sae.encode")


def main() -> None:
    from pathlib import Path

    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.helpers import tiny_sae

    logging.basicConfig(level=logging.INFO)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    tiny = LlamaForCausalLM(config).eval()
    hook = "blocks.2.hook_resid_pre"
    tokens = torch.randint(0, config.vocab_size, (16, 32), generator=torch.Generator().manual_seed(1))
    print("tiny Llama:")
    _self_check(tiny, tiny_sae(d_in=64, d_sae=128, hook=hook), tokens, hook)

    if not Path("cache/models/smollm2-135m-instruct/config.json").exists():
        print("SmolLM2 not built yet (cache/models/smollm2-135m-instruct/config.json missing); skipped")
        return
    from explorer.core.models import load_model

    model = load_model("smollm2-135m-instruct").model
    hook = "blocks.10.hook_resid_post"
    d_model = int(model.config.hidden_size)
    tokens = torch.randint(
        0, int(model.config.vocab_size), (8, 64), generator=torch.Generator().manual_seed(2)
    )
    print("SmolLM2-135M-Instruct:")
    _self_check(model, tiny_sae(d_in=d_model, d_sae=1024, hook=hook), tokens, hook)


if __name__ == "__main__":
    main()
