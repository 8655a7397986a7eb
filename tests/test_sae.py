"""Loading SAELens SAEs, checking them against a model, and the quality metrics on SAEs with known answers."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub.errors import OfflineModeIsEnabled
from sae_lens import SAE

from explorer.core.models import LoadedModel
from explorer.saes.activations import Activations
from explorer.saes.corpus import Corpus, SequenceInfo
from explorer.saes.loading import (
    LoadedSAE,
    SAEError,
    check_compatible,
    latent_encoder,
    load_sae,
    load_sae_dir,
    load_sae_for,
    residual_hook,
    wrap_sae,
)
from explorer.saes.quality import (
    by_source,
    check_targets,
    decoder_norm_stats,
    loss_recovered,
    reconstruction_metrics,
    refusal_fit,
    refusal_location_index,
    unseen_genres_floor,
)
from tests.helpers import identity_sae, tiny_sae

ARCHITECTURES = ("standard", "topk", "jumprelu", "gated")


def _saved(tmp_path: Path, architecture: str = "topk", **kwargs: object) -> Path:
    directory = tmp_path / architecture
    tiny_sae(architecture, **kwargs).save_model(directory)  # pyright: ignore[reportArgumentType]
    return directory


def _wrap(sae: object, name: str = "test") -> LoadedSAE:
    return wrap_sae(sae, name, name)  # pyright: ignore[reportArgumentType]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_save_load_round_trip_is_exact(tmp_path: Path, architecture: str) -> None:
    original = tiny_sae(architecture)
    directory = tmp_path / "sae"
    original.save_model(directory)
    loaded = load_sae_dir(directory)
    assert loaded.architecture == architecture
    assert loaded.hook == "blocks.2.hook_resid_pre"
    for name, tensor in original.state_dict().items():
        assert torch.equal(loaded.sae.state_dict()[name], tensor), name
    x = torch.randn(10, 64)
    assert torch.equal(loaded.sae.encode(x), original.encode(x))
    assert torch.equal(loaded.sae.decode(loaded.sae.encode(x)), original.decode(original.encode(x)))
    assert load_sae(str(directory)).fingerprint == loaded.fingerprint


def test_fingerprint_changes_with_weights(tmp_path: Path) -> None:
    a = load_sae_dir(_saved(tmp_path / "a", seed=0))
    b = load_sae_dir(_saved(tmp_path / "b", seed=1))
    assert a.fingerprint != b.fingerprint


def test_compatible_sae_loads_for_the_model(tmp_path: Path, tiny: LoadedModel) -> None:
    sae = load_sae_for(tiny, str(_saved(tmp_path)))
    assert sae.d_in == tiny.d_model and sae.sae.dtype == torch.float32


def test_width_mismatch_is_a_clear_error(tmp_path: Path, tiny: LoadedModel) -> None:
    with pytest.raises(SAEError, match=r"d_in 32 but model .* has d_model 64"):
        load_sae_for(tiny, str(_saved(tmp_path, d_in=32)))


@pytest.mark.parametrize(
    ("hook", "message"),
    [
        ("blocks.9.hook_resid_pre", "does not have"),
        ("blocks.1.hook_mlp_out", "does not have"),
    ],
)
def test_hook_not_in_model_is_a_clear_error(
    tmp_path: Path, tiny: LoadedModel, hook: str, message: str
) -> None:
    with pytest.raises(SAEError, match=message):
        load_sae_for(tiny, str(_saved(tmp_path, hook=hook)))


def test_dtype_clash_is_a_clear_error(tmp_path: Path, tiny: LoadedModel) -> None:
    sae = load_sae_dir(_saved(tmp_path, dtype="float64"))
    with pytest.raises(SAEError, match=r"float64 but the model is torch.float32"):
        check_compatible(sae, tiny)


def test_missing_and_corrupt_files_are_named(tmp_path: Path) -> None:
    directory = _saved(tmp_path)
    with pytest.raises(SAEError, match="no SAE 'nowhere'"):
        load_sae("nowhere")
    (directory / "cfg.json").write_text("{not json")
    with pytest.raises(SAEError, match="corrupt"):
        load_sae_dir(directory)
    directory = _saved(tmp_path / "b")
    (directory / "sae_weights.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(SAEError, match="corrupt"):
        load_sae_dir(directory)
    (directory / "sae_weights.safetensors").unlink()
    with pytest.raises(SAEError, match=r"sae_weights.safetensors is missing"):
        load_sae_dir(directory)


def test_sae_without_hook_name_is_rejected(tmp_path: Path) -> None:
    directory = _saved(tmp_path)
    cfg = json.loads((directory / "cfg.json").read_text())
    cfg["metadata"].pop("hook_name")
    (directory / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEError, match="no hook_name"):
        load_sae_dir(directory)


def test_identity_sae_explains_all_variance_and_counts_dead_latents() -> None:
    d = 16
    sae = _wrap(identity_sae(d, n_dead=8))
    torch.manual_seed(0)
    x = torch.randn(5000, d)
    metrics = reconstruction_metrics(sae, x, batch_size=777)
    assert metrics["explained_variance"] == pytest.approx(1.0, abs=1e-6)
    # Exactly one of +x_i / -x_i fires per coordinate (x_i is never exactly 0).
    assert metrics["l0"]["mean"] == d and metrics["l0"]["max"] == d
    assert metrics["dead_fraction"] == pytest.approx(8 / (2 * d + 8))
    # Each live latent fires on about half the tokens: all dense at the 10% threshold.
    assert metrics["dense_fraction"] == pytest.approx(2 * d / (2 * d + 8))
    assert decoder_norm_stats(sae)["unit_norm"] is True


def test_grouped_metrics_match_each_group_measured_alone() -> None:
    torch.manual_seed(2)
    sae = _wrap(identity_sae(8, n_dead=4))
    with torch.no_grad():
        sae.sae.W_dec.mul_(0.9)  # an imperfect reconstruction, so explained variance differs by group
    x = torch.cat([torch.randn(300, 8), 3 * torch.randn(200, 8) + 1])
    groups = torch.tensor([0] * 300 + [1] * 200)[torch.randperm(500)]
    x = x[torch.argsort(torch.argsort(groups))]  # tokens of both groups interleaved as in a corpus
    whole = reconstruction_metrics(sae, x, groups=groups, batch_size=64)
    for k in (0, 1):
        alone = reconstruction_metrics(sae, x[groups == k])
        group = whole["groups"][k]
        assert group["tokens"] == alone["tokens"]
        assert group["explained_variance"] == pytest.approx(alone["explained_variance"], abs=1e-9)
        assert group["l0"] == pytest.approx(alone["l0"]["mean"])
        assert group["dead_fraction"] == pytest.approx(alone["dead_fraction"])
    assert whole["explained_variance"] == pytest.approx(reconstruction_metrics(sae, x)["explained_variance"])
    named = by_source(whole, ["chat", "kjv"], trained_on=["chat"])
    assert named["kjv"]["trained_on"] is False and named["chat"]["trained_on"] is True
    assert unseen_genres_floor(named) == (named["kjv"]["explained_variance"] >= 0.85)


def test_zero_sae_explains_nothing() -> None:
    sae = identity_sae(8)
    with torch.no_grad():
        sae.W_dec.zero_()
    metrics = reconstruction_metrics(_wrap(sae), torch.randn(1000, 8) + 3.0)
    # x_hat = 0, so sum|x|^2 / sum|x - mean|^2 > 1 with a mean of 3: explained variance is negative.
    assert metrics["explained_variance"] < -5
    assert check_targets({"reconstruction": metrics})["explained_variance"] is False


def _toy_corpus(tiny: LoadedModel, n_rows: int = 6, width: int = 12) -> Corpus:
    torch.manual_seed(1)
    ids = torch.randint(100, 5000, (n_rows, width), dtype=torch.int32)
    mask = torch.ones(n_rows, width, dtype=torch.bool)
    mask[:, 0] = False
    infos = [
        SequenceInfo(f"r{i}", "chat", "heldout", "harmful" if i % 2 else "harmless", 6, width)
        for i in range(n_rows)
    ]
    return Corpus(ids, mask, infos, {})


def test_identity_sae_recovers_all_loss(tiny: LoadedModel) -> None:
    corpus = _toy_corpus(tiny)
    perfect = _wrap(identity_sae(tiny.d_model, hook="blocks.2.hook_resid_pre"), "perfect")
    broken_module = identity_sae(tiny.d_model, hook="blocks.2.hook_resid_pre")
    with torch.no_grad():
        broken_module.W_dec.mul_(0.0)
    broken = _wrap(broken_module, "broken")
    out = loss_recovered(tiny, [perfect, broken], corpus, list(range(6)), batch_size=4)
    assert out["perfect"]["ce_sae"] == pytest.approx(out["perfect"]["ce_clean"], abs=1e-4)
    assert out["perfect"]["fraction_recovered"] == pytest.approx(1.0, abs=1e-3)
    # A decoder of zeros reconstructs b_dec = 0: the same as zero-ablation.
    assert out["broken"]["fraction_recovered"] == pytest.approx(0.0, abs=1e-3)
    assert out["perfect"]["tokens"] == 6 * 10  # positions 1..10 predict a real next token


def test_refusal_fit_finds_the_aligned_latent(tiny: LoadedModel) -> None:
    corpus = _toy_corpus(tiny)
    module = tiny_sae("topk", d_in=tiny.d_model, d_sae=32)
    direction = module.W_dec[7].detach().clone() * 3
    n = len(corpus.sequences)
    acts = Activations(
        torch.randn(n, tiny.d_model).half(), torch.arange(n, dtype=torch.int32), torch.full((n,), 5)
    )
    fit = refusal_fit(_wrap(module), direction, acts, corpus, position=-1)
    assert fit["top_latents"][0] == {"latent": 7, "cosine": pytest.approx(1.0, abs=1e-5)}
    assert fit["cos_direction_top_latents_span"] == pytest.approx(1.0, abs=1e-5)
    assert fit["reconstruction"]["n_harmful"] == 3 and fit["reconstruction"]["n_harmless"] == 3


def test_refusal_location_index() -> None:
    assert refusal_location_index("blocks.23.hook_resid_pre", 30) == 23
    assert refusal_location_index("blocks.29.hook_resid_post", 30) == 30


def test_registry_specs_are_checked_before_any_download() -> None:
    with pytest.raises(SAEError, match="no release 'gemma-scope-2b-pt-res-typo'"):
        load_sae("gemma-scope-2b-pt-res-typo:layer_15/width_16k/canonical")
    with pytest.raises(SAEError, match=r"has no SAE 'layer_99/width_16k/canonical'"):
        load_sae("gemma-scope-2b-pt-res-canonical:layer_99/width_16k/canonical")


def _raise(error: BaseException) -> Callable[..., None]:
    def fail(*_args: Any, **_kwargs: Any) -> None:
        raise error

    return fail


def test_a_real_id_that_cannot_be_fetched_says_so_and_bugs_stay_bugs(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = "gemma-scope-2b-pt-res-canonical:layer_15/width_16k/canonical"
    # What the hub client raises offline (an OSError subclass), without touching the network.
    monkeypatch.setattr(SAE, "from_pretrained", _raise(OfflineModeIsEnabled("offline mode is enabled")))
    with pytest.raises(SAEError, match=r"could not download .* gemma-2-2b"):
        load_sae(spec)
    # A programming error is not re-labelled as "offline or no access?".
    monkeypatch.setattr(SAE, "from_pretrained", _raise(TypeError("unexpected keyword 'dtyp'")))
    with pytest.raises(TypeError, match="dtyp"):
        load_sae(spec)


def test_hugging_face_layer_paths_map_to_residual_hooks(tmp_path: Path, tiny: LoadedModel) -> None:
    assert residual_hook("model.layers.2") == "blocks.2.hook_resid_post"
    assert residual_hook("blocks.3.hook_resid_pre") == "blocks.3.hook_resid_pre"
    assert load_sae_for(tiny, str(_saved(tmp_path, hook="model.layers.1"))).hook == "blocks.1.hook_resid_post"
    with pytest.raises(SAEError, match="hook_resid_mid"):
        load_sae_for(tiny, str(_saved(tmp_path / "mid", hook="blocks.1.hook_resid_mid")))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_latent_encoder_matches_the_full_encode_and_slices_when_it_can(architecture: str) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    sae = wrap_sae(tiny_sae(architecture, d_in=64, d_sae=128), "tiny", "tiny")
    x = torch.randn(10, 64)
    picked = [5, 2, 97]
    rng = torch.get_rng_state()
    encode = latent_encoder(sae, picked)
    assert torch.equal(torch.get_rng_state(), rng)  # building the slice draws no random numbers
    with FlopCounterMode(display=False) as sliced:
        got = encode(x)
    with FlopCounterMode(display=False) as full:
        expected = sae.sae.encode(x)[:, picked]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    if architecture == "topk":  # a TopK latent's value depends on every other latent: no shortcut
        assert sliced.get_total_flops() >= full.get_total_flops()
    else:
        assert sliced.get_total_flops() * 128 <= full.get_total_flops() * len(picked) * 2
