"""Read and write the residual stream of Hugging Face decoder models by TransformerLens-style hook names.

Names are ``blocks.{i}.hook_resid_pre`` (the input of decoder layer i) and ``blocks.{i}.hook_resid_post``
(its output). Every hook is attached inside a context manager that removes it in ``finally``, and holds
the model's lock meanwhile, so a hooked forward pass never runs beside another thread's.

`forward` is the one way the library runs a forward pass on a model that may be shared (one model per
process serves every browser session): it takes the model's lock and attaches the caller's hooks for that
pass only, so no pass ever sees another caller's hooks, and an unhooked pass never runs while another
thread's hooks are attached.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from explorer.core.few_rows import few_row_linear

Site = Literal["pre", "post"]
HookFn = Callable[[torch.Tensor, str], torch.Tensor | None]
"""Called with the activation [batch, pos, d_model] and the hook name; returns a replacement or None."""

_HOOK_NAME = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")
_LAYER_PATHS = ("model.layers", "model.language_model.layers", "transformer.h", "gpt_neox.layers")
_locks: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


class HookError(ValueError):
    """A hook name that does not exist on the model, or a model whose layers cannot be found."""


@dataclass(frozen=True)
class HookPoint:
    layer: int
    site: Site

    @property
    def name(self) -> str:
        return f"blocks.{self.layer}.hook_resid_{self.site}"

    @property
    def depth(self) -> float:
        """Order along the forward pass: resid_pre of layer i comes before resid_post of layer i."""
        return self.layer + (0.5 if self.site == "post" else 0.0)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of a Llama/Gemma/Qwen/Phi/Mistral-style (or GPT-2/NeoX) model, else of
    any model whose config names its number of layers (OPT, MPT, ...)."""
    for path in _LAYER_PATHS:
        module: Any = model
        for attr in path.split("."):
            module = getattr(module, attr, None)
            if module is None:
                break
        if isinstance(module, nn.ModuleList):
            return module
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for _name, module in model.named_modules():  # any other family: the list of its n_layers blocks
        if isinstance(module, nn.ModuleList) and n_layers and len(module) == n_layers:
            return module
    raise HookError(
        f"cannot find decoder layers on {type(model).__name__} (looked for {', '.join(_LAYER_PATHS)} and "
        "for a module list as long as config.num_hidden_layers)"
    )


def hook_names(n_layers: int) -> list[str]:
    """Every residual hook name of a model with `n_layers` layers, in forward order."""
    return [HookPoint(i, site).name for i in range(n_layers) for site in ("pre", "post")]


def parse_hook_name(name: str, n_layers: int) -> HookPoint:
    """Parse and range-check a hook name.

    Raises:
        HookError: the name is not a residual hook name, or its layer is outside [0, n_layers).
    """
    match = _HOOK_NAME.match(name)
    if match is None:
        raise HookError(f"unknown hook {name!r}: expected 'blocks.{{i}}.hook_resid_pre' or '..._post'")
    layer = int(match.group(1))
    if not 0 <= layer < n_layers:
        raise HookError(
            f"hook {name!r}: layer {layer} is out of range, the model has layers 0..{n_layers - 1}"
        )
    return HookPoint(layer, "pre" if match.group(2) == "pre" else "post")


def model_lock(model: nn.Module) -> threading.RLock:
    """The re-entrant lock that serialises hooked forward passes on one (shared) model."""
    with _locks_guard:
        lock = _locks.get(model)
        if lock is None:
            lock = _locks[model] = threading.RLock()
        return lock


def _attach(model: nn.Module, name: str, fn: Callable[[torch.Tensor], torch.Tensor | None]):
    """Register `fn` on the residual stream at `name`; returns the removable handle."""
    layers = decoder_layers(model)
    point = parse_hook_name(name, len(layers))
    block = layers[point.layer]
    if point.site == "pre":

        def pre_hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]):
            if args:
                new = fn(args[0])
                return None if new is None else ((new, *args[1:]), kwargs)
            new = fn(kwargs["hidden_states"])
            return None if new is None else (args, {**kwargs, "hidden_states": new})

        return block.register_forward_pre_hook(pre_hook, with_kwargs=True)

    def post_hook(_module: nn.Module, _args: Any, output: Any):
        if isinstance(output, tuple):
            new = fn(output[0])
            return None if new is None else (new, *output[1:])
        return fn(output)

    return block.register_forward_hook(post_hook)


@contextmanager
def intervene(model: nn.Module, edits: Mapping[str, HookFn]) -> Iterator[None]:
    """Replace residual activations during every forward pass inside the block.

    Args:
        model: a Hugging Face decoder model.
        edits: hook name -> function of (activation [batch, pos, d_model], name) returning the new
            activation (or None to leave it). Names are checked before anything is attached.
    """
    n_layers = len(decoder_layers(model))
    for name in edits:
        parse_hook_name(name, n_layers)
    with model_lock(model), ExitStack() as stack:
        for name, edit in edits.items():
            handle = _attach(model, name, lambda act, _n=name, _f=edit: _f(act, _n))
            stack.callback(handle.remove)
        yield


@contextmanager
def capture(model: nn.Module, names: Iterable[str]) -> Iterator[dict[str, list[torch.Tensor]]]:
    """Record residual activations: name -> one detached [batch, pos, d_model] tensor per forward call.

    Hooks attached earlier (e.g. by an enclosing `intervene`) act first, so captures see edited values.
    """
    names = list(dict.fromkeys(names))
    n_layers = len(decoder_layers(model))
    for name in names:
        parse_hook_name(name, n_layers)
    store: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    with model_lock(model), ExitStack() as stack:
        for name in names:
            handle = _attach(model, name, lambda act, _n=name: store[_n].append(act.detach()))
            stack.callback(handle.remove)
        yield store


def forward(
    model: nn.Module,
    hooks: Mapping[str, HookFn] | None = None,
    *,
    few_rows: bool = False,
    **inputs: Any,
) -> Any:
    """Run `model(**inputs)` once with the model's lock held and `hooks` attached for this pass only.

    Args:
        model: a Hugging Face decoder model, possibly shared between threads.
        hooks: hook name -> edit function, as for `intervene` (None or empty: a plain pass, still locked).
        few_rows: compute linear layers on a few rows as W @ Xᵀ (token-by-token decoding on CPU).
        inputs: the model's keyword arguments (input_ids [batch, pos], attention_mask, ...).

    Returns:
        The model's output.
    """
    with intervene(model, hooks or {}):
        if not few_rows:
            return model(**inputs)
        with few_row_linear(next(model.parameters()).device):
            return model(**inputs)


class StopForward(Exception):  # noqa: N818 -- a signal, not an error
    """Raised inside a hook to end a forward pass once it has what it needs (the layers after never run);
    the caller suppresses it around `forward`."""


@torch.no_grad()
def run_to(
    model: nn.Module,
    input_ids: torch.Tensor,
    names: Iterable[str],
    attention_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Run the model only as far as the deepest requested hook and return those activations.

    Layers after the deepest hook (and the unembedding) never run, which is what makes activation
    collection for one SAE layer cheap.

    Args:
        input_ids: [batch, pos] token ids.
        names: residual hook names.
        attention_mask: [batch, pos], 1 for real tokens.

    Returns:
        name -> [batch, pos, d_model] activations.
    """
    names = list(dict.fromkeys(names))
    if not names:
        raise HookError("run_to needs at least one hook name")
    n_layers = len(decoder_layers(model))
    deepest = max((parse_hook_name(n, n_layers) for n in names), key=lambda p: p.depth).name

    def stop(_act: torch.Tensor, _name: str) -> None:
        raise StopForward

    with capture(model, names) as store, suppress(StopForward):
        forward(model, {deepest: stop}, input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return {name: store[name][0] for name in names}
