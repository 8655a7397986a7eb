"""The latent cache equals brute force on a tiny corpus, and its reader refuses bad caches clearly."""

from __future__ import annotations

import json
from copy import deepcopy
from pathlib import Path

import pytest
import torch

from explorer.core.models import LoadedModel
from explorer.latents.builder import cache_rows, readable_vocab
from explorer.latents.effects import logit_effects
from explorer.latents.reader import CacheError, LatentCache
from explorer.latents.schema import CacheConfig
from explorer.saes.activations import load_activations
from explorer.saes.corpus import Corpus, CorpusConfig
from explorer.saes.loading import LoadedSAE
from tests.helpers import build_tiny_latent_cache

HOOK = "blocks.2.hook_resid_pre"
CONFIG = CacheConfig(
    k=4,
    samples_per_bin=6,
    n_groups=8,
    examples_per_group=5,
    context_before=3,
    context_after=2,
    batch_tokens=97,
)


@pytest.fixture(scope="module")
def built(
    tmp_path_factory: pytest.TempPathFactory, tiny: LoadedModel
) -> tuple[Corpus, Path, LoadedSAE, Path]:
    return build_tiny_latent_cache(tiny, tmp_path_factory.mktemp("latent-cache"), HOOK, CONFIG)


def brute_force(
    corpus: Corpus, acts_dir: Path, sae: LoadedSAE
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    keep = cache_rows(corpus)
    parts = [load_activations(acts_dir, HOOK, p) for p in ("train", "heldout")]  # pyright: ignore[reportArgumentType]
    acts, rows, pos = (torch.cat([getattr(p, f) for p in parts]) for f in ("acts", "row", "pos"))
    sel = keep[rows.long()]
    with torch.no_grad():
        f = sae.sae.encode(acts[sel].float())
    return f, rows[sel].long(), pos[sel].long()


def test_top_examples_and_statistics_equal_brute_force(built: tuple[Corpus, Path, LoadedSAE, Path]) -> None:
    corpus, acts_dir, sae, directory = built
    f, rows, pos = brute_force(corpus, acts_dir, sae)
    cache = LatentCache(directory, sae_fingerprint=sae.fingerprint)
    assert cache.manifest["n_tokens"] == len(f)
    table = cache.table()
    width = corpus.input_ids.shape[1]
    tokens = rows * width + pos
    top_tokens, top_values = cache.column("top_tokens"), cache.column("top_values")
    for latent in range(sae.d_sae):
        column = f[:, latent]
        active = column > 0
        record = cache.latent(latent)
        best: dict[int, tuple[float, int]] = {}  # each row's best token: one example per row
        for value, token in zip((-column[active]).tolist(), tokens[active].tolist(), strict=True):
            best[token // width] = min(best.get(token // width, (0.0, 1 << 60)), (value, token))
        expected = sorted(best.values())[: CONFIG.k]
        got = [(-v, t) for v, t in zip(top_values[latent].tolist(), top_tokens[latent].tolist(), strict=True)]
        assert got[: len(expected)] == expected, latent
        # The record shows them all, near-duplicate windows merged into the first with a count.
        shown = [(-e.value, e.row * width + e.pos) for e in record.top_examples]
        assert set(shown) <= set(expected) and shown[:1] == expected[:1]
        assert sum(e.count for e in record.top_examples) == len(expected)
        assert record.density == pytest.approx(float(active.double().mean()))
        assert table["density"][latent] == pytest.approx(record.density)
        if active.any():
            assert record.max == pytest.approx(float(column.max()))
            assert record.mean_active == pytest.approx(float(column[active].mean()), rel=1e-5)
            assert sum(record.histogram[1]) == int(active.sum())
            assert record.top_examples[0].value == pytest.approx(record.max)


def test_examples_show_their_token_in_context(
    built: tuple[Corpus, Path, LoadedSAE, Path], tiny: LoadedModel
) -> None:
    corpus, _, _, directory = built
    record = LatentCache(directory).latent(0, window=3)
    example = record.top_examples[0]
    assert example.count >= 1
    token = int(corpus.input_ids[example.row, example.pos])
    assert example.context[example.focus] == str(tiny.tokenizer.decode([token])).replace("\n", "↵")
    assert len(example.context) <= 7
    assert corpus.mask[example.row, example.pos]  # never position 0 or a special token


def test_quantile_groups_split_the_activations_from_the_top(
    built: tuple[Corpus, Path, LoadedSAE, Path],
) -> None:
    corpus, acts_dir, sae, directory = built
    f, *_ = brute_force(corpus, acts_dir, sae)
    cache = LatentCache(directory)
    filled = 0
    for latent in range(cache.d_sae):
        record = cache.latent(latent)
        column = f[:, latent]
        values = column[column > 0]
        if not len(values):
            assert record.groups == []
            continue
        assert sum(g.share for g in record.groups) == pytest.approx(1.0)
        assert record.groups[0].high == pytest.approx(record.max)
        for upper, lower in zip(record.groups, record.groups[1:], strict=False):
            assert lower.high <= upper.low + 1e-6  # from the top down, not overlapping
        for group in record.groups:
            inside = ((values >= group.low * (1 - 1e-6)) & (values <= group.high * (1 + 1e-6))).double()
            assert group.share == pytest.approx(float(inside.mean()), abs=1e-6)
            assert sum(e.count for e in group.examples) <= CONFIG.examples_per_group
            for e in group.examples:
                assert group.low * (1 - 1e-6) <= e.value <= group.high * (1 + 1e-6)
            filled += len(group.examples)
    assert filled > 0


def test_every_example_carries_its_latents_activation_across_its_window(
    built: tuple[Corpus, Path, LoadedSAE, Path],
) -> None:
    corpus, acts_dir, sae, directory = built
    f, rows, pos = brute_force(corpus, acts_dir, sae)
    width = corpus.input_ids.shape[1]
    at = {int(t): i for i, t in enumerate((rows * width + pos).tolist())}
    cache = LatentCache(directory)
    checked = 0
    for latent in range(cache.d_sae):
        record = cache.latent(latent)
        for e in record.top_examples + [x for g in record.groups for x in g.examples]:
            start = e.pos - e.focus
            assert start + len(e.context) <= corpus.sequences[e.row].length  # never padding
            assert e.values[e.focus] == pytest.approx(e.value, rel=1e-3)
            for n, value in enumerate(e.values):
                token = e.row * width + start + n
                if token not in at:
                    assert value is None and not corpus.mask[e.row, start + n]
                else:
                    assert value == pytest.approx(float(f[at[token], latent]), rel=1e-3, abs=1e-4)
                    checked += 1
    assert checked > 100


def test_windows_reach_back_to_the_request_and_trim_on_demand(
    built: tuple[Corpus, Path, LoadedSAE, Path],
) -> None:
    corpus, *_, directory = built
    cache = LatentCache(directory)
    chat = [r for r, s in enumerate(corpus.sequences) if s.kind == "chat"]
    ids = corpus.input_ids[chat]
    start = int((ids == ids[:1]).all(0).long().cumprod(0).sum())  # the template's shared opening
    seen = 0
    for latent in range(cache.d_sae):
        for e in cache.latent(latent).top_examples:
            chat = corpus.sequences[e.row].kind == "chat"
            if chat and start <= e.pos and e.pos - start <= CONFIG.request_reach:
                assert e.pos - e.focus == start  # the whole request, none of the system prompt
                seen += 1
    assert seen > 0
    example = cache.latent(0, window=2).top_examples[0]
    assert len(example.context) <= 5 and len(example.values) == len(example.context)


def test_every_latent_has_a_heuristic_label(built: tuple[Corpus, Path, LoadedSAE, Path]) -> None:
    corpus, acts_dir, sae, directory = built
    f, rows, pos = brute_force(corpus, acts_dir, sae)
    cache = LatentCache(directory)
    labels = cache.labels()
    assert len(labels) == cache.d_sae
    ids = corpus.input_ids[rows, pos].long()
    for latent in range(cache.d_sae):
        record = cache.latent(latent)
        assert record.label == labels[latent]
        if record.max <= 0:
            assert labels[latent].startswith("never fires")
            continue
        assert labels[latent].startswith("fires on: ") and " · promotes: " in labels[latent]
        # The label's first token carries activation on this corpus.
        first = cache.column("label_fires_ids")[latent, 0]
        assert float(f[ids == first, latent].sum()) > 0


def test_harmful_harmless_means_and_alignment(built: tuple[Corpus, Path, LoadedSAE, Path]) -> None:
    corpus, acts_dir, sae, directory = built
    f, rows, pos = brute_force(corpus, acts_dir, sae)
    label = [corpus.sequences[r].label for r in rows.tolist()]
    n_prompt = torch.tensor([corpus.sequences[r].n_prompt for r in rows.tolist()])
    post = (pos < n_prompt) & (pos >= n_prompt - CONFIG.n_post_instruction)
    harmful = post & torch.tensor([lab == "harmful" for lab in label])
    record = LatentCache(directory).latent(5)
    assert record.harmful_vs_harmless["post_instruction"][0] == pytest.approx(
        float(f[harmful, 5].mean()), rel=1e-5
    )
    w = torch.nn.functional.normalize(sae.sae.W_dec.detach(), dim=-1)
    assert record.refusal_cos_layers is not None and len(record.refusal_cos_layers) == 5
    assert record.nearest[0][1] == pytest.approx(float((w @ w[5]).sort(descending=True).values[1]), abs=1e-5)
    assert len(record.logits_top) == 10 and record.logits_top[0][1] >= record.logits_top[-1][1]


def test_refusal_cosines_and_logit_effects_equal_hand_computation(
    built: tuple[Corpus, Path, LoadedSAE, Path], tiny: LoadedModel
) -> None:
    _, _, sae, directory = built
    torch.manual_seed(0)  # the refusal direction build_tiny_latent_cache stored
    _direction, directions = torch.randn(64), torch.randn(5, 6, 64)
    cache, vocab = LatentCache(directory), readable_vocab(tiny.tokenizer)
    w_dec = sae.sae.W_dec.detach()
    unembed = tiny.model.get_output_embeddings().weight.detach()  # pyright: ignore[reportOptionalMemberAccess]
    norm = tiny.model.model.norm.weight.detach()  # pyright: ignore[reportAttributeAccessIssue]
    for latent in (0, 5, 31):
        record = cache.latent(latent)
        cosines = torch.nn.functional.cosine_similarity(w_dec[latent][None, :], directions[:, -1], dim=-1)
        assert record.refusal_cos_layers == pytest.approx(cosines.tolist(), abs=1e-5)
        assert record.refusal_cos == pytest.approx(float(cosines[2]), abs=1e-5)  # HOOK reads layer 2's input
        logits = (w_dec[latent] * norm) @ unembed.T
        top, bottom = logits.topk(10), logits.topk(10, largest=False)
        assert record.logits_top == [
            (vocab[i], pytest.approx(v, abs=1e-4))
            for i, v in zip(top.indices.tolist(), top.values.tolist(), strict=True)
        ]
        assert record.logits_bottom == [
            (vocab[i], pytest.approx(v, abs=1e-4))
            for i, v in zip(bottom.indices.tolist(), bottom.values.tolist(), strict=True)
        ]


def test_logit_effects_go_through_the_final_norms_scale(
    built: tuple[Corpus, Path, LoadedSAE, Path], tiny: LoadedModel
) -> None:
    sae = built[2]
    model = deepcopy(tiny.model)
    torch.manual_seed(1)
    model.model.norm.weight.data = torch.rand(64) * 2  # pyright: ignore[reportAttributeAccessIssue]
    top_ids, top_logits, bottom_ids, bottom_logits = logit_effects(sae, model, top=5)
    unembed = model.get_output_embeddings().weight.detach()  # pyright: ignore[reportOptionalMemberAccess]
    expected = (sae.sae.W_dec.detach() * model.model.norm.weight.detach()) @ unembed.T  # pyright: ignore[reportAttributeAccessIssue]
    torch.testing.assert_close(top_logits, expected.topk(5).values, rtol=0, atol=1e-4)
    torch.testing.assert_close(bottom_logits, expected.topk(5, largest=False).values, rtol=0, atol=1e-4)
    assert torch.equal(top_ids, expected.topk(5).indices)
    assert torch.equal(bottom_ids, expected.topk(5, largest=False).indices)


def test_reader_errors_name_the_problem(built: tuple[Corpus, Path, LoadedSAE, Path], tmp_path: Path) -> None:
    *_, directory = built
    cache = LatentCache(directory)
    with pytest.raises(CacheError, match=r"latent 32 is out of range: this SAE has latents 0\.\.31"):
        cache.latent(32)
    with pytest.raises(CacheError, match="missing"):
        LatentCache(tmp_path)
    with pytest.raises(CacheError, match="was built from sae_fingerprint"):
        LatentCache(directory, sae_fingerprint="0" * 16)
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in directory.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    with pytest.raises(CacheError, match="newer than this explorer"):
        LatentCache(copy)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    data = (copy / "latents.safetensors").read_bytes()
    (copy / "latents.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(CacheError, match="corrupt or truncated"):
        LatentCache(copy).latent(0)


def test_cache_stage_and_cli_on_a_tiny_model(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from explorer.cli.main import main
    from explorer.core.paths import CACHE_ENV
    from explorer.latents.build import build_caches, is_complete
    from explorer.saes.build import SAEStageConfig, build_saes, sae_dir
    from explorer.saes.training import SAETrainConfig
    from tests.test_sae_train import _fake_refusal

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    _fake_refusal(tmp_path, tiny_dir.name, n_layers=4, d_model=64, layer=2)
    small = SAETrainConfig(d_sae=64, k=4, training_samples=2000, batch_size=500, autocast=False)
    corpus = CorpusConfig(seq_len=64, response_tokens=4, text_tokens=2000, prompts_per_label=6, batch_size=6)
    build_saes(
        str(tiny_dir), SAEStageConfig(main=small, side=small, corpus=corpus, fast_dtype=None, loss_rows=4)
    )
    assert not is_complete(tiny_dir.name)
    index = build_caches(str(tiny_dir))
    assert set(index["caches"]) == set(index["hooks"])
    assert is_complete(tiny_dir.name)
    assert main(["cache", "top", "--model", tiny_dir.name, "--by", "density", "-n", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("latent\tdensity") and len(lines) == 4
    assert main(["cache", "show", "0", "--model", tiny_dir.name, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["latent"] == 0
    assert main(["cache", "show", "64", "--model", tiny_dir.name]) == 2
    assert "out of range" in capsys.readouterr().err
    # Retraining an SAE (new weights) makes its cache stale.
    weights = sae_dir(tiny_dir.name, index["main"]) / "sae_weights.safetensors"
    from safetensors.torch import load_file, save_file

    state = load_file(str(weights))
    state["b_enc"] = state["b_enc"] + 1
    save_file(state, str(weights))
    assert not is_complete(tiny_dir.name)
