"""Upstream -> downstream: which latents of an earlier SAE drive the main SAE's refusal latents.

For a downstream latent d (a refusal latent of the main SAE) and a latent u of an earlier SAE, with the
earlier SAE spliced in with its error term kept (`explorer.research.upstream_check`), the attribution is

    attr(u -> d) = sum over upstream positions of f_u(pos) * d a_d / d f_u(pos),

a_d being d's activation summed over the post-instruction positions, and the mean taken over prompts. The
upstream positions are the ones the SAEs' corpus counts (`explorer.latents.attribution.counted_positions`:
real tokens after the first, special tokens left out). -attr(u -> d) is the first-order prediction of what
ablating u there does to a_d; each kept edge is checked against that ablation, run for real.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, get_args

import torch

from explorer.core.generation import encode_chats
from explorer.core.hooks import parse_hook_name
from explorer.core.models import LoadedModel
from explorer.core.paths import write_json_atomic
from explorer.core.prompts import Split, builtin_prompts, stratified_sample
from explorer.latents.attribution import counted_positions
from explorer.latents.reader import CacheError, LatentCache
from explorer.refusal.candidates import post_instruction_ids
from explorer.research import read_result, research_dir
from explorer.research.upstream_check import ablation_changes, agreement, spliced_pass
from explorer.saes.loading import LoadedSAE

log = logging.getLogger(__name__)

UPSTREAM_FILE = "upstream.json"
Selection = Literal["cosine+attribution", "cosine", "attribution", "named"]
Progress = Callable[[float, str], None]
"""Called with the fraction done (0..1) and what is running."""


class UpstreamError(ValueError):
    """An upstream graph that cannot be computed as asked, or a stored one that cannot be read."""


@dataclass(frozen=True)
class UpstreamConfig:
    """What an upstream graph traces.

    Attributes:
        upstream: hook of the earlier SAE whose latents are the sources.
        downstream: hook of the main SAE whose latents are the targets.
        latents: the downstream latents (chosen by `selection`, or named by the user).
        selection: how `latents` were chosen ("named": by the user).
        per_latent: upstream latents kept per downstream latent, by |attribution|.
        split: the split of the built-in harmful prompts used.
        n: prompts taken from it, spread over the categories (None: all).
        check: ablate each kept edge's upstream latent and measure the change.
        batch_size: prompts per forward pass.
    """

    upstream: str
    downstream: str
    latents: tuple[int, ...]
    selection: Selection = "cosine+attribution"
    per_latent: int = 8
    split: Split = "test"
    n: int | None = None
    check: bool = True
    batch_size: int = 16

    def __post_init__(self) -> None:
        if not self.latents:
            raise UpstreamError("an upstream graph needs at least one downstream latent")
        if self.selection not in get_args(Selection):
            raise UpstreamError(f"selection {self.selection!r} is not one of {get_args(Selection)}")
        if self.split not in get_args(Split):
            raise UpstreamError(f"split {self.split!r} is not one of {get_args(Split)}")
        for name, value in (("per_latent", self.per_latent), ("batch_size", self.batch_size), ("n", self.n)):
            if value is not None and value < 1:
                raise UpstreamError(f"{name} must be >= 1, got {value}")
        if any(i < 0 for i in self.latents):
            raise UpstreamError(f"latents must be >= 0, got {list(self.latents)}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "latents": list(self.latents)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UpstreamConfig:
        return cls(**{**data, "latents": tuple(int(i) for i in data["latents"])})


@dataclass(frozen=True)
class Node:
    """A latent of the graph: `side` is "upstream" (earlier SAE) or "downstream" (a refusal latent)."""

    hook: str
    latent: int
    label: str
    side: Literal["upstream", "downstream"]
    activation: float
    """Mean over prompts: summed over the upstream positions (upstream), the post-instruction ones (down)."""


@dataclass(frozen=True)
class Edge:
    """How much upstream latent `upstream` drives downstream latent `downstream`.

    Attributes:
        attribution: mean over prompts of sum f_u * d a_d / d f_u.
        predicted: the first-order change of a_d when u is ablated (-attribution).
        measured: the change of a_d measured by ablating u (None when the check did not run).
    """

    upstream: int
    downstream: int
    attribution: float
    predicted: float
    measured: float | None = None


@dataclass(frozen=True)
class UpstreamGraph:
    """A stored upstream graph: the config, the nodes, the edges and how well the attribution predicted
    the ablations (Pearson, Spearman and the share of edges with the same sign; None without the check,
    and a correlation None when undefined: fewer than two edges, or one side constant)."""

    model: str
    config: UpstreamConfig
    n_prompts: int
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    pearson: float | None = None
    spearman: float | None = None
    sign_agreement: float | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["config"] = self.config.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UpstreamGraph:
        return cls(
            **{
                **data,
                "config": UpstreamConfig.from_dict(data["config"]),
                "nodes": tuple(Node(**n) for n in data["nodes"]),
                "edges": tuple(Edge(**e) for e in data["edges"]),
            }
        )


def default_upstream(hooks: Sequence[str], main: str, n_layers: int) -> str:
    """The SAE hook nearest before `main` along the forward pass.

    Raises:
        UpstreamError: no hook in `hooks` comes before `main`.
    """
    depth = parse_hook_name(main, n_layers).depth
    earlier = [h for h in hooks if parse_hook_name(h, n_layers).depth < depth]
    if not earlier:
        raise UpstreamError(
            f"no SAE comes before the main SAE at {main} (SAEs at: {', '.join(hooks) or 'none'}); "
            "name an upstream hook"
        )
    return max(earlier, key=lambda h: parse_hook_name(h, n_layers).depth)


def harmful_prompts(split: Split, n: int | None) -> list[str]:
    """The built-in harmful prompts of `split`, `n` of them spread over the categories (None: all)."""
    return [r.text for r in stratified_sample(builtin_prompts("harmful", split), n)]


def attribute(
    loaded: LoadedModel,
    upstream: LoadedSAE,
    downstream: LoadedSAE,
    latents: Sequence[int],
    prompts: Sequence[str],
    *,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attribution of every upstream latent to each downstream latent, mean over `prompts`.

    One forward pass per batch, one backward (`torch.autograd.grad` on the upstream latents) per
    downstream latent.

    Returns:
        (attribution [len(latents), d_sae_up], upstream activation [d_sae_up] summed over the upstream
        positions, downstream activation [len(latents)] summed over the post-instruction positions), all
        float64 means over prompts.
    """
    if not prompts:
        raise UpstreamError("an upstream graph needs at least one prompt")
    n_post = len(post_instruction_ids(loaded))
    total = torch.zeros(len(latents), upstream.d_sae, dtype=torch.float64)
    up_total = torch.zeros(upstream.d_sae, dtype=torch.float64)
    down_total = torch.zeros(len(latents), dtype=torch.float64)
    starts = range(0, len(prompts), batch_size)
    for step, start in enumerate(starts):
        _, batch = encode_chats(loaded, list(prompts[start : start + batch_size]))
        mask = counted_positions(loaded, batch["input_ids"], batch["attention_mask"]).double()  # [batch, pos]
        with torch.enable_grad():
            f, a = spliced_pass(loaded, upstream, downstream, latents, batch, n_post, leaf=True)
            for j in range(len(latents)):
                (grad,) = torch.autograd.grad(a[:, j].sum(), f, retain_graph=j + 1 < len(latents))
                # rows of a batch do not see each other, so grad holds each prompt's own gradient
                total[j] += torch.einsum("bp,bpu->u", mask, (f.detach() * grad).double()).cpu()
        up_total += torch.einsum("bp,bpu->u", mask, f.detach().double()).cpu()
        down_total += a.detach().double().sum(0).cpu()
        if progress is not None:
            progress((step + 1) / len(starts), f"attribution: {start + len(batch['input_ids'])} prompts")
    n = len(prompts)
    return total / n, up_total / n, down_total / n


def check_edges(
    loaded: LoadedModel,
    upstream: LoadedSAE,
    downstream: LoadedSAE,
    latents: Sequence[int],
    edges: Sequence[Edge],
    prompts: Sequence[str],
    *,
    batch_size: int = 16,
    progress: Progress | None = None,
) -> list[Edge]:
    """`edges` with `measured` filled in: the mean over prompts of the change of a_d when u is ablated
    at the upstream positions (one forward pass per distinct upstream latent per batch)."""
    n_post = len(post_instruction_ids(loaded))
    ablated = list(dict.fromkeys(e.upstream for e in edges))
    sums = {u: torch.zeros(len(latents), dtype=torch.float64) for u in ablated}
    starts = range(0, len(prompts), batch_size)
    for step, start in enumerate(starts):
        _, batch = encode_chats(loaded, list(prompts[start : start + batch_size]))
        mask = counted_positions(loaded, batch["input_ids"], batch["attention_mask"])
        changes = ablation_changes(loaded, upstream, downstream, latents, ablated, batch, mask, n_post)
        for u, change in changes.items():
            sums[u] += change.double().sum(0).cpu()
        if progress is not None:
            progress((step + 1) / len(starts), f"ablation check: {start + len(batch['input_ids'])} prompts")
    column = {d: j for j, d in enumerate(latents)}
    return [replace(e, measured=float(sums[e.upstream][column[e.downstream]]) / len(prompts)) for e in edges]


def upstream_graph(
    loaded: LoadedModel,
    saes: Mapping[str, LoadedSAE],
    caches: Mapping[str, LatentCache],
    config: UpstreamConfig,
    *,
    progress: Progress | None = None,
) -> UpstreamGraph:
    """Trace, keep and (with `config.check`) check the edges from `config.upstream` to `config.downstream`.

    Args:
        saes: hook -> SAE; must hold both hooks.
        caches: hook -> latent cache, for the nodes' labels (a missing cache leaves labels empty).

    Raises:
        UpstreamError: an SAE is missing or a downstream latent is out of range.
    """
    for hook in (config.upstream, config.downstream):
        if hook not in saes:
            raise UpstreamError(f"no SAE at {hook}; SAEs at: {', '.join(saes) or 'none'}")
    up, down = saes[config.upstream], saes[config.downstream]
    bad = [i for i in config.latents if i >= down.d_sae]
    if bad:
        raise UpstreamError(
            f"downstream latents {bad} are out of range: {down.hook} has {down.d_sae} latents"
        )
    started = time.perf_counter()
    prompts = harmful_prompts(config.split, config.n)
    stages = 2 if config.check else 1

    def stage(index: int) -> Progress | None:
        report = progress
        if report is None:
            return None
        return lambda done, what: report((index + done) / stages, what)

    latents = list(config.latents)
    scores, up_mean, down_mean = attribute(
        loaded, up, down, latents, prompts, batch_size=config.batch_size, progress=stage(0)
    )
    edges = []
    for j, d in enumerate(latents):
        for u in scores[j].abs().argsort(descending=True, stable=True)[: config.per_latent].tolist():
            value = float(scores[j, u])
            edges.append(Edge(int(u), d, value, -value))
    pearson = spearman = signs = None
    if config.check:
        edges = check_edges(
            loaded, up, down, latents, edges, prompts, batch_size=config.batch_size, progress=stage(1)
        )
        pearson, spearman, signs = (
            None if math.isnan(v) else v
            for v in agreement([e.predicted for e in edges], [e.measured or 0.0 for e in edges])
        )
    ups = list(dict.fromkeys(e.upstream for e in edges))
    nodes = _nodes(up.hook, ups, up_mean, caches, "upstream") + _nodes(
        down.hook, latents, dict(zip(latents, down_mean.tolist(), strict=True)), caches, "downstream"
    )
    seconds = round(time.perf_counter() - started, 2)
    log.info("upstream graph of %d edges over %d prompts in %.1f s", len(edges), len(prompts), seconds)
    return UpstreamGraph(
        loaded.name, config, len(prompts), tuple(nodes), tuple(edges), pearson, spearman, signs, seconds
    )


def _nodes(
    hook: str,
    latents: Sequence[int],
    activation: torch.Tensor | Mapping[int, float],
    caches: Mapping[str, LatentCache],
    side: Literal["upstream", "downstream"],
) -> list[Node]:
    labels: list[str] = []
    if hook in caches:
        try:
            labels = caches[hook].labels()
        except CacheError as e:  # labels are a convenience: a graph without them is still a graph
            log.warning("no labels for %s: %s", hook, e)
    return [Node(hook, i, labels[i] if i < len(labels) else "", side, float(activation[i])) for i in latents]


def store_graph(graph: UpstreamGraph) -> None:
    """Write `graph` atomically as `research_dir(model) / UPSTREAM_FILE`."""
    write_json_atomic(research_dir(graph.model) / UPSTREAM_FILE, graph.to_dict())


def load_graph(model_name: str) -> UpstreamGraph | None:
    """The stored upstream graph of `model_name`, or None when none is stored.

    Raises:
        UpstreamError: the stored file is corrupt or from an incompatible version.
    """
    path = research_dir(model_name) / UPSTREAM_FILE
    if not path.is_file():
        return None
    return read_result(path, UpstreamGraph.from_dict, "upstream graph", "explorer upstream", UpstreamError)
