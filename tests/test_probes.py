"""The harmful-vs-harmless probes: known answers on planted features, K chosen on val only, features equal
to a hand-made forward pass and SAE encode, AUC and ROC as scikit-learn computes them, the CLI end to end
on the tiny workspace, and clear errors for a missing or corrupt stored result."""

from __future__ import annotations

import io
import itertools
import json
import shutil
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from explorer.cli.main import main
from explorer.cli.options import open_cache
from explorer.core.hooks import run_to
from explorer.core.jailbreaks import builtin_wrappers
from explorer.core.models import LoadedModel
from explorer.core.paths import CACHE_ENV
from explorer.core.prompts import builtin_prompts, chat_messages, format_chat
from explorer.research.probe_features import (
    BORDERLINE_CATEGORIES,
    Features,
    FeatureSites,
    ProbeData,
    evaluation_sets,
    k_values,
    probe_data,
    read_features,
    refusal_rankings,
    score_set,
    thin_curve,
    training_sets,
)
from explorer.research.probes import (
    ProbeConfig,
    ProbeResult,
    ProbeResultError,
    evaluate_probes,
    fit_probes,
    load_probes,
    probes_path,
    store_probes,
)
from explorer.saes.loading import wrap_sae
from tests.helpers import tiny_sae

FAST = ProbeConfig(c_grid=(0.1, 1.0), max_iter=500)


def _data(latents: np.ndarray, labels: np.ndarray) -> ProbeData:
    return ProbeData(latents, latents, labels, np.ones(len(labels), dtype=bool))


def _separable(rng: np.random.Generator, n: int, columns: list[int], width: int = 8) -> ProbeData:
    """`n` rows of `width` standard normal columns, labelled by the sign of the sum of `columns`, rows
    within 0.5 of the boundary dropped (so a linear probe on `columns` separates them with a margin)."""
    x = rng.standard_normal((4 * n, width))
    margin = x[:, columns].sum(1)
    keep = np.abs(margin) > 0.5
    x, margin = x[keep][:n], margin[keep][:n]
    return _data(x, (margin > 0).astype(np.int64))


def test_a_planted_feature_gives_accuracy_one_and_k_picks_the_planted_columns() -> None:
    rng = np.random.default_rng(0)
    planted = [2, 5]  # the label is sign(x2 + x5): one column alone cannot separate it
    train, val, test = (_separable(rng, n, planted) for n in (400, 200, 200))
    rankings = {1: [2], 2: [2, 5], 4: [2, 5, 0, 1], 8: [2, 5, 0, 1, 3, 4, 6, 7]}
    pipelines, fits, curve = fit_probes(train, val, rankings, FAST)
    chosen = next(f for f in fits if f.probe == "refusal_latents")
    assert (chosen.k, chosen.latents) == (2, planted)  # K = 4 and 8 tie at 1.0 on val: the smaller wins
    assert [p.k for p in curve] == [1, 2, 4, 8]
    assert curve[0].val_accuracy < 0.9 and curve[1].val_accuracy == 1.0
    scores = evaluate_probes(pipelines, fits, [("test", test)])
    assert {s.probe: (s.accuracy, s.auc) for s in scores} == {
        "residual": (1.0, 1.0),
        "latents": (1.0, 1.0),
        "refusal_latents": (1.0, 1.0),
    }


def test_k_is_chosen_on_val_never_on_test() -> None:
    """Train labels follow x0 + x3, val labels x0 alone, test labels x3 alone: val prefers K = 1 (x3 is
    noise there), test would prefer K = 4. The probe must take val's K and pay for it on test."""
    rng = np.random.default_rng(1)
    train = _separable(rng, 600, [0, 3], width=4)
    val = _separable(rng, 300, [0], width=4)
    test = _separable(rng, 300, [3], width=4)
    rankings = {1: [0], 2: [0, 1], 4: [0, 1, 2, 3]}
    pipelines, fits, curve = fit_probes(train, val, rankings, FAST)
    assert next(f for f in fits if f.probe == "refusal_latents").k == 1
    assert max(curve, key=lambda p: (p.val_accuracy, -p.k)).k == 1
    on_test = {}
    for k in rankings:
        fitted, k_fits, _ = fit_probes(train, val, {k: rankings[k]}, FAST)
        [score] = [
            s for s in evaluate_probes(fitted, k_fits, [("test", test)]) if s.probe == "refusal_latents"
        ]
        on_test[k] = score.accuracy
    assert on_test[4] > on_test[1] + 0.15  # selecting on test would have picked K = 4
    chosen = [s for s in evaluate_probes(pipelines, fits, [("test", test)]) if s.probe == "refusal_latents"]
    assert chosen[0].accuracy == on_test[1]


def test_a_rerun_gives_the_same_numbers() -> None:
    rng = np.random.default_rng(2)
    train, val = _separable(rng, 200, [1]), _separable(rng, 100, [1])
    noisy = _data(rng.standard_normal((100, 8)), rng.integers(0, 2, 100))
    first = fit_probes(train, val, {1: [1], 2: [1, 0]}, FAST)
    second = fit_probes(train, val, {1: [1], 2: [1, 0]}, FAST)
    assert first[1:] == second[1:]
    assert evaluate_probes(first[0], first[1], [("n", noisy)]) == evaluate_probes(
        second[0], second[1], [("n", noisy)]
    )


def test_auc_roc_and_accuracies_on_a_hand_example() -> None:
    # Decision values (log-odds of harmful) of 3 harmful then 3 harmless prompts; > 0 calls harmful.
    decision = np.array([0.4, 0.3, -0.2, 0.1, -0.3, -0.4])
    labels = np.array([1, 1, 1, 0, 0, 0])
    both = ProbeData(decision[:, None], decision[:, None], labels, np.ones(6, dtype=bool))
    score = score_set("residual", "hand", decision, both, roc_points=101)
    # Of the 9 (harmful, harmless) pairs, the harmful one scores higher in all but (-0.2, 0.1): AUC 8/9.
    assert score.auc == pytest.approx(8 / 9) == roc_auc_score(labels, decision)
    fpr, tpr, _ = roc_curve(labels, decision)
    assert (score.fpr, score.tpr) == (fpr.tolist(), tpr.tolist())
    assert (score.accuracy, score.recall, score.specificity, score.n) == (4 / 6, 2 / 3, 2 / 3, 6)
    only_harmful = ProbeData(both.residual, both.latents, labels, labels == 1)
    paired = score_set("residual", "hand", decision, only_harmful, roc_points=101)
    assert (paired.accuracy, paired.recall, paired.specificity, paired.n) == (2 / 3, 2 / 3, None, 3)
    assert paired.auc == score.auc


def test_roc_curves_are_stored_at_a_bounded_number_of_points() -> None:
    kept = thin_curve(np.arange(10.0), np.arange(10.0) * 2, 4)
    assert kept == ([0.0, 3.0, 6.0, 9.0], [0.0, 6.0, 12.0, 18.0])
    assert thin_curve(np.arange(3.0), np.arange(3.0), 4) == ([0.0, 1.0, 2.0], [0.0, 1.0, 2.0])


def test_k_runs_over_powers_of_two_up_to_the_bound() -> None:
    assert k_values(256, 4096) == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    assert k_values(256, 100) == [1, 2, 4, 8, 16, 32, 64, 100]
    assert k_values(3, 64) == [1, 2, 3]
    assert k_values(1, 64) == [1]


def test_the_sets_come_from_the_right_splits_and_labels() -> None:
    wrappers = builtin_wrappers()
    train, val = training_sets()
    sets = {s.name: s for s in evaluation_sets(wrappers)}
    test_harmful = [r.text for r in builtin_prompts("harmful", "test")]
    assert list(train.harmful) == [r.text for r in builtin_prompts("harmful", "train")]
    assert list(val.harmless) == [r.text for r in builtin_prompts("harmless", "val")]
    assert list(sets["test"].harmful) == test_harmful
    assert len(sets["jailbreak"].harmful) == len(wrappers) * len(test_harmful)
    assert sets["jailbreak"].harmless == sets["test"].harmless
    assert sets[f"jailbreak:{wrappers[0].name}"].harmful == tuple(wrappers[0].apply(t) for t in test_harmful)
    builtin_borderline = [
        r for r in builtin_prompts("harmless", "test") if r.category in BORDERLINE_CATEGORIES
    ]
    assert set(r.text for r in builtin_borderline) < set(sets["borderline"].harmless)
    assert sets["borderline"].scored == "harmless" and sets["borderline"].harmful == sets["test"].harmful
    assert not set(train.texts) & set(sets["test"].texts)
    borderline = sets["borderline"]
    texts = tuple(dict.fromkeys(borderline.texts))
    features = Features(texts, np.arange(len(texts), dtype=np.float32)[:, None], np.zeros((len(texts), 2)))
    data = probe_data(features, borderline)
    assert data.residual[:, 0].tolist() == [texts.index(t) for t in borderline.texts]
    assert data.labels.tolist() == [1] * len(borderline.harmful) + [0] * len(borderline.harmless)
    assert data.scored.tolist() == [False] * len(borderline.harmful) + [True] * len(borderline.harmless)


def test_features_equal_a_direct_run_to_and_sae_encode(tiny: LoadedModel) -> None:
    """Residual at one hook, latents at another (the sites differ, so each is read at its own), at the
    second-to-last position; batched (left-padded, length-sorted) reads equal one prompt at a time."""
    sae = wrap_sae(tiny_sae("topk", d_in=tiny.d_model, d_sae=32, hook="blocks.2.hook_resid_pre"), "t", "t")
    sites = FeatureSites("blocks.1.hook_resid_post", "blocks.2.hook_resid_pre", -2)
    texts = ["How do I bake bread?", "Hi", "Explain, in detail and step by step, how a bicycle gear works."]
    features = read_features(tiny, sae, sites, [*texts, texts[0]], batch_size=2)
    assert features.texts == tuple(texts)
    assert "differs" in sites.note
    for text, row in zip(texts, features.rows(texts), strict=True):
        prompt = format_chat(tiny.tokenizer, chat_messages(text))
        ids = tiny.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        acts = run_to(tiny.model, ids, [sites.residual_hook, sites.sae_hook])
        with torch.no_grad():
            codes = sae.sae.encode(acts[sites.sae_hook][0, -2])
        np.testing.assert_allclose(
            features.residual[row], acts[sites.residual_hook][0, -2].numpy(), atol=1e-5
        )
        np.testing.assert_allclose(features.latents[row], codes.numpy(), atol=1e-5)


def _cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def cache(app_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A writable copy of the tiny workspace's cache, made the cache root."""
    copy = tmp_path / "cache"
    shutil.copytree(app_cache, copy)
    monkeypatch.setenv(CACHE_ENV, str(copy))
    return copy


def test_the_cli_runs_end_to_end_and_stores_what_it_prints(cache: Path, tiny: LoadedModel, tiny_dir: Path,
                                                          tmp_path: Path) -> None:  # fmt: skip
    out = tmp_path / "probe.json"
    args = ["probe", "--model", str(tiny_dir), "--limit", "4", "--k-max", "8", "--json", "--out", str(out)]
    code, stdout, _ = _cli(*args)
    assert code == 0
    printed = json.loads(stdout)
    assert json.loads(out.read_text()) == printed
    stored = load_probes(tiny.name)
    assert Path(printed.pop("stored")) == probes_path(tiny.name)
    assert stored.to_dict() == printed
    wrappers = builtin_wrappers()
    sizes = {s.name: (s.n_harmful, s.n_harmless) for s in stored.sets}
    assert sizes["test"] == (4, 4) and sizes["jailbreak"] == (4 * len(wrappers), 4)
    assert stored.n_train == stored.n_val == {"harmful": 4, "harmless": 4}
    assert [p.k for p in stored.k_curve] == [1, 2, 4, 8]
    best = max(stored.k_curve, key=lambda p: (p.val_accuracy, round(p.val_auc, 12), -p.k))
    fit = stored.fit("refusal_latents")
    assert (fit.k, fit.c) == (best.k, best.c) and len(fit.latents) == len(stored.labels) == fit.k
    assert stored.score("refusal_latents", "jailbreak").n == 4 * len(
        wrappers
    )  # accuracy over wrapped harmful
    assert all(len(s.fpr) <= stored.config.roc_points for s in stored.scores)
    code, table, _ = _cli(*args[:-3])  # the table, and a rerun gives the same numbers
    assert code == 0 and "K chosen on val" in table and "jailbreak:" in table
    again = load_probes(tiny.name)
    assert again.scores == stored.scores and again.fits == stored.fits


def test_a_wrapper_clashing_with_a_built_in_name_fails_before_the_model_loads(
    cache: Path, tiny_dir: Path, tmp_path: Path
) -> None:
    clash = tmp_path / "mine.json"
    clash.write_text(json.dumps([{"name": builtin_wrappers()[0].name, "template": "x {prompt}"}]))
    code, _, err = _cli("probe", "--model", str(tiny_dir), "--wrappers", str(clash))
    assert code == 2 and "are built in" in err


def test_stored_results_round_trip_and_bad_files_are_clear_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    train, val = _separable(rng, 100, [0]), _separable(rng, 60, [0])
    pipelines, fits, curve = fit_probes(train, val, {1: [0]}, FAST)
    scores = evaluate_probes(pipelines, fits, [("test", val)])
    result = ProbeResult("m", FAST, {"note": ""}, {}, {}, [], fits, curve, ["l"], scores, [], 1.0, "now")
    path = store_probes(result, tmp_path / "probes.json")
    assert load_probes("m", path) == result
    assert ProbeConfig.from_dict(FAST.to_dict()) == FAST
    with pytest.raises(ProbeResultError, match=r"no probe result.*explorer probe"):
        load_probes("m", tmp_path / "missing.json")
    path.write_text("{not json")
    with pytest.raises(ProbeResultError, match=r"probe result .* is corrupt"):
        load_probes("m", path)
    path.write_text(json.dumps({"model": "m"}))
    with pytest.raises(ProbeResultError, match=r"probe result .* is corrupt"):
        load_probes("m", path)


def test_configs_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="k_max"):
        ProbeConfig(k_max=0)
    with pytest.raises(ValueError, match="selection"):
        ProbeConfig(selection="magic")  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="c_grid"):
        ProbeConfig(c_grid=(0.0,))


def test_refusal_latents_are_ranked_by_the_chosen_selection(
    app_cache: Path, tiny: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(app_cache))
    cache = open_cache(tiny.name, None)
    cosine = cache.column("refusal_cos")
    by_cosine = refusal_rankings(cache, "cosine", 8)
    top = cache.top_latents("refusal_cos", 8, active=True)
    assert by_cosine == {k: top[:k] for k in (1, 2, 4, 8)}  # each K: the first K by decoder cosine
    assert all(cosine[a] >= cosine[b] for a, b in itertools.pairwise(top))
    attribution = cache.column("attribution")[:, 0]
    for k, latents in refusal_rankings(cache, "cosine+attribution", 8).items():
        assert len(latents) == k and set(latents) <= set(cache.top_latents("refusal_cos", 4 * k, active=True))
        assert [float(attribution[i]) for i in latents] == sorted(
            (float(attribution[i]) for i in latents), reverse=True
        )
