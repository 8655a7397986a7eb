"""The upstream graph on tiny models: exact attribution where the downstream latent is linear in the
upstream latents, a faithful splice, ablations that match a brute-force run, the CLI, and stored files."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig
from transformers import BatchEncoding

from explorer.cli.main import main
from explorer.core.generation import encode_chats
from explorer.core.hooks import intervene, run_to
from explorer.core.models import LoadedModel
from explorer.latents.attribution import counted_positions
from explorer.refusal.candidates import post_instruction_ids
from explorer.research import research_dir
from explorer.research.upstream import (
    UPSTREAM_FILE,
    Edge,
    UpstreamConfig,
    UpstreamError,
    UpstreamGraph,
    attribute,
    check_edges,
    default_upstream,
    harmful_prompts,
    load_graph,
    store_graph,
    upstream_graph,
)
from explorer.research.upstream_check import agreement, spliced_pass
from explorer.saes.loading import LoadedSAE, wrap_sae
from tests.helpers import identity_sae, tiny_sae

SAME = "blocks.2.hook_resid_pre"
EARLY, LATE = "blocks.1.hook_resid_post", "blocks.3.hook_resid_pre"
PROMPTS = ["How do I pick a lock?", "Write a poem about the sea, please, in four lines."]


def _always_active_relu_sae(hook: str, d_sae: int = 6, seed: int = 1) -> LoadedSAE:
    """A ReLU SAE whose large encoder bias keeps every latent active: its latents are affine in x."""
    cfg = StandardSAEConfig(d_in=64, d_sae=d_sae)
    cfg.metadata.hook_name = hook
    sae = StandardSAE(cfg)
    torch.manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(64, d_sae) * 0.3)
        sae.W_dec.copy_(torch.randn(d_sae, 64))
        sae.b_enc.fill_(5.0)
        sae.b_dec.zero_()
    return wrap_sae(sae.eval(), "tiny", "relu")


def test_attribution_is_exact_where_the_downstream_latent_is_linear(tiny: LoadedModel) -> None:
    up = wrap_sae(identity_sae(64, hook=SAME), "tiny", "identity")
    down = _always_active_relu_sae(SAME)
    latents = [0, 3, 5]
    scores, _, _ = attribute(tiny, up, down, latents, PROMPTS, batch_size=2)
    # By hand: a_d = sum over post-instruction positions of relu(W_enc[:, d] . x + b), x = f @ W_dec_up, so
    # f_u * d a_d / d f_u = f_u * (W_dec_up[u] . W_enc[:, d]) at the counted post-instruction positions.
    _, batch = encode_chats(tiny, PROMPTS)
    x = run_to(tiny.model, batch["input_ids"], [SAME], batch["attention_mask"])[SAME]
    f = up.sae.encode(x)  # [batch, pos, 128]
    assert (down.sae.encode(x) > 0).all()  # every latent active: the premise of the hand computation
    n_post = len(post_instruction_ids(tiny))
    mask = counted_positions(tiny, batch["input_ids"], batch["attention_mask"])
    post = torch.zeros_like(mask)
    post[:, -n_post:] = True
    summed = (f * (mask & post)[..., None]).sum(1).mean(0).double()  # [128]
    by_hand = summed[None, :] * (up.sae.W_dec @ down.sae.W_enc[:, latents]).T.double()
    torch.testing.assert_close(scores, by_hand, rtol=1e-4, atol=1e-5)
    assert scores.abs().max() > 1e-2  # the comparison is not between zeros
    # ... and the first-order prediction is the exact ablation change.
    edges = [
        Edge(u, d, float(scores[j, u]), -float(scores[j, u]))
        for j, d in enumerate(latents)
        for u in (0, 7, 70)
    ]
    checked = check_edges(tiny, up, down, latents, edges, PROMPTS, batch_size=1)
    for edge in checked:
        assert edge.measured == pytest.approx(edge.predicted, rel=1e-4, abs=1e-5)


def test_the_splice_leaves_the_downstream_residual_unchanged(tiny: LoadedModel) -> None:
    up = wrap_sae(tiny_sae("topk", d_in=64, d_sae=32, hook=EARLY, seed=2), "tiny", "up")  # reconstructs badly
    down = _always_active_relu_sae(LATE, d_sae=4)
    _, batch = encode_chats(tiny, PROMPTS)
    n_post = len(post_instruction_ids(tiny))
    _, spliced = spliced_pass(tiny, up, down, range(4), batch, n_post)
    x = run_to(tiny.model, batch["input_ids"], [LATE], batch["attention_mask"])[LATE]
    plain = down.sae.encode(x[:, -n_post:]).sum(1)
    torch.testing.assert_close(spliced, plain, rtol=1e-5, atol=1e-3)

    # while the reconstruction alone would change it: the error term is what keeps the pass faithful
    def recon_only(act: torch.Tensor, _name: str) -> torch.Tensor:
        return up.sae.decode(up.sae.encode(act))

    with intervene(tiny.model, {EARLY: recon_only}):
        edited = run_to(tiny.model, batch["input_ids"], [LATE], batch["attention_mask"])[LATE]
    assert not torch.allclose(down.sae.encode(edited[:, -n_post:]).sum(1), plain, atol=1e-1)


def test_upstream_after_downstream_is_refused(tiny: LoadedModel) -> None:
    up = wrap_sae(tiny_sae("topk", d_in=64, d_sae=32, hook=LATE), "tiny", "up")
    down = _always_active_relu_sae(EARLY)
    _, batch = encode_chats(tiny, PROMPTS)
    with pytest.raises(ValueError, match="comes after the downstream hook"):
        spliced_pass(tiny, up, down, [0], batch, 3)


def test_the_check_matches_a_brute_force_ablation(tiny: LoadedModel) -> None:
    up = wrap_sae(tiny_sae("topk", d_in=64, d_sae=32, hook=EARLY, seed=4), "tiny", "up")
    down = wrap_sae(tiny_sae("standard", d_in=64, d_sae=16, hook=LATE, seed=5), "tiny", "down")
    config = UpstreamConfig(EARLY, LATE, (1, 2, 3), "named", per_latent=3, n=3, batch_size=2)
    graph = upstream_graph(tiny, {EARLY: up, LATE: down}, {}, config)
    assert graph.n_prompts == 3 and len(graph.edges) == 9
    assert all(math.isfinite(v) for v in (graph.pearson, graph.spearman, graph.sign_agreement))  # pyright: ignore[reportArgumentType]
    assert {n.side for n in graph.nodes} == {"upstream", "downstream"}
    edge = max(graph.edges, key=lambda e: abs(e.measured or 0.0))
    assert abs(edge.measured or 0.0) > 1e-4
    n_post = len(post_instruction_ids(tiny))
    changes = []
    for prompt in harmful_prompts("test", 3):
        _, batch = encode_chats(tiny, [prompt])
        mask = counted_positions(tiny, batch["input_ids"], batch["attention_mask"])[0]

        def remove(act: torch.Tensor, _name: str, mask: torch.Tensor = mask) -> torch.Tensor:
            out = act.clone()
            f = up.sae.encode(act[0, mask])[:, edge.upstream]
            out[0, mask] -= f[:, None] * up.sae.W_dec[edge.upstream]
            return out

        def a_d(edits: dict, batch: BatchEncoding = batch) -> float:
            with torch.no_grad(), intervene(tiny.model, edits):
                x = run_to(tiny.model, batch["input_ids"], [LATE], batch["attention_mask"])[LATE]
                return float(down.sae.encode(x[:, -n_post:])[..., edge.downstream].sum())

        changes.append(a_d({EARLY: remove}) - a_d({}))
    assert edge.measured == pytest.approx(sum(changes) / len(changes), rel=1e-3, abs=1e-4)


def test_agreement_known_answers() -> None:
    assert agreement([1.0, 2.0, 3.0], [2.0, 4.0, 6.0]) == pytest.approx((1.0, 1.0, 1.0))
    pearson, spearman, signs = agreement([1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, -4.0])
    assert spearman == pytest.approx(1 - 6 * (1 + 4 + 0 + 9) / (4 * 15))  # ranks 1,3,2,0 vs 0,1,2,3
    assert signs == 0.75 and pearson < 0
    assert math.isnan(agreement([1.0], [2.0])[0])
    with pytest.raises(ValueError, match="equally many"):
        agreement([1.0], [])


def test_default_upstream_is_the_nearest_earlier_sae() -> None:
    hooks = [
        "blocks.5.hook_resid_pre",
        "blocks.17.hook_resid_pre",
        "blocks.23.hook_resid_pre",
        "blocks.25.hook_resid_pre",
    ]
    assert default_upstream(hooks, "blocks.23.hook_resid_pre", 30) == "blocks.17.hook_resid_pre"
    assert default_upstream(hooks, "blocks.17.hook_resid_post", 30) == "blocks.17.hook_resid_pre"
    with pytest.raises(UpstreamError, match="no SAE comes before"):
        default_upstream(hooks, "blocks.5.hook_resid_pre", 30)


def test_config_validates_and_round_trips() -> None:
    config = UpstreamConfig(EARLY, LATE, (4, 2), "cosine", per_latent=3, n=10, check=False)
    assert UpstreamConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(UpstreamError, match="per_latent must be >= 1"):
        UpstreamConfig(EARLY, LATE, (1,), per_latent=0)
    with pytest.raises(UpstreamError, match="at least one downstream latent"):
        UpstreamConfig(EARLY, LATE, ())


def test_stored_graph_round_trips_and_a_corrupt_one_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(tmp_path))
    assert load_graph("tiny") is None
    config = UpstreamConfig(EARLY, LATE, (1,), "named")
    graph = UpstreamGraph("tiny", config, 2, (), (Edge(3, 1, 0.5, -0.5, -0.4),), 1.0, 1.0, 1.0, 2.5)
    store_graph(graph)
    assert load_graph("tiny") == graph
    (research_dir("tiny") / UPSTREAM_FILE).write_text('{"model": "tiny", "config": {', encoding="utf-8")
    with pytest.raises(UpstreamError, match=r"is corrupt.*explorer upstream.*run it again"):
        load_graph("tiny")


def test_cli_traces_stores_and_prints_json(
    app_cache: Path,
    tiny_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(app_cache, cache)
    monkeypatch.setenv("EXPLORER_CACHE_DIR", str(cache))
    out = tmp_path / "graph.json"
    args = ["upstream", "--model", str(tiny_dir), "--downstream-k", "2", "--per-latent", "3", "--n", "2"]
    assert main([*args, "--json", "--out", str(out)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert json.loads(out.read_text(encoding="utf-8")) == data
    stored = load_graph(data["model"])
    assert stored is not None and json.loads(json.dumps(stored.to_dict())) == data
    assert len(stored.edges) == 6 and stored.n_prompts == 2
    assert (
        stored.config.upstream != stored.config.downstream and stored.config.selection == "cosine+attribution"
    )
    assert all(e.measured is not None for e in stored.edges) and stored.sign_agreement is not None
    labels = [n.label for n in stored.nodes]
    assert len(labels) == len(stored.nodes) and any(labels)
    main_hook = stored.config.downstream
    assert main([*args, "--latents", f"{main_hook}:1", "--no-check"]) == 0
    text = capsys.readouterr().out
    assert "downstream  upstream  attribution" in text and "Pearson" not in text
    assert main([*args, "--latents", "blocks.0.hook_resid_pre:1"]) == 2
    assert "is not" in capsys.readouterr().err
