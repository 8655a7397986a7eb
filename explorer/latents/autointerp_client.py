"""The autointerp conversation: the prompts the explainer and the detector are given, and how their replies
are read. The prompts take windows already rendered as text, and the parsers turn a reply into an
explanation or window numbers, raising `ReplyError` (one latent fails) rather than `LLMError` (the endpoint
is unusable). The endpoint client itself is `explorer.core.llm`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

from explorer.core.llm import Messages

# The conversation: what the explainer and the detector are asked, and how their replies are read.

PROMPT_VERSION = "explain-v1/detect-v1"
"""Stored with every label: change it whenever a prompt's text or the window rendering changes."""
EXPLAIN_SYSTEM = (
    "You explain latents (features) of a sparse autoencoder trained on a language model's activations. "
    "You are shown text windows in which one latent is active. Tokens where it is active are marked "
    "<<token|a>>, where a is its activation from 1 (weak) to 10 (its strongest). Newlines are shown as ↵. "
    "Say what the latent detects in one short phrase of at most 12 words. Be specific: name the tokens or "
    "the context it responds to. Reply with the phrase only."
)
DETECT_SYSTEM = (
    "You test an explanation of a latent (feature) of a sparse autoencoder trained on a language model. "
    "You are given the explanation and numbered text windows; in some of them the latent is active "
    "somewhere, in the others it is not active at all. Newlines are shown as ↵. Using the explanation, "
    'say which windows it is active in. Reply with JSON only, e.g. {"activating": [2, 5]}.'
)
MAX_EXPLANATION_CHARS = 200
_THINK = re.compile(r"<think>.*?</think>", re.DOTALL | re.IGNORECASE)
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)
_OBJECT = re.compile(r"\{[^{}]*\}")


class ReplyError(ValueError):
    """An LLM reply that is not what the prompt asked for (that latent fails; the run goes on)."""


def render_window(tokens: Sequence[str], values: Sequence[float | None], peak: float | None) -> str:
    """A window on one line; with `peak`, tokens with a positive value are marked `<<token|a>>` (a: the
    value in tenths of `peak`, 1 to 10), a token's leading space kept outside its mark."""
    out = []
    for token, value in zip(tokens, values, strict=True):
        token = token.replace("\n", "↵").replace("\r", "")
        if peak is None or value is None or value <= 0:
            out.append(token)
            continue
        core = token.lstrip()
        level = min(10, max(1, round(10 * value / peak))) if peak > 0 else 10
        out.append(f"{token[: len(token) - len(core)]}<<{core}|{level}>>")
    return "".join(out).strip(" ")


def explanation_messages(windows: Sequence[str]) -> Messages:
    """The explainer's prompt, given its windows rendered with their marks, strongest first."""
    lines = "\n".join(f"{n}. {w}" for n, w in enumerate(windows, 1))
    user = f"Windows where the latent is active (strongest first):\n{lines}\n\nWhat does this latent detect?"
    return [{"role": "system", "content": EXPLAIN_SYSTEM}, {"role": "user", "content": user}]


def detection_messages(explanation: str, windows: Sequence[str]) -> Messages:
    """The detection prompt: the explanation and the numbered windows, rendered without marks."""
    lines = "\n".join(f"{n}. {w}" for n, w in enumerate(windows, 1))
    user = (
        f"Explanation: {explanation}\n\nWindows:\n{lines}\n\n"
        f'In which of these {len(windows)} windows is the latent active? Reply {{"activating": [...]}}.'
    )
    return [{"role": "system", "content": DETECT_SYSTEM}, {"role": "user", "content": user}]


def parse_explanation(reply: str) -> str:
    """The explanation in a reply: its first non-empty line, without reasoning (`<think>`), code fences,
    quotes or an `Explanation:` prefix, cut to `MAX_EXPLANATION_CHARS`.

    Raises:
        ReplyError: the reply holds no text.
    """
    text = _FENCE.sub(lambda m: m.group(1), _THINK.sub("", reply))
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    line = line.strip("\"'`* ")
    line = re.sub(r"^(explanation|answer|latent|feature)\s*:\s*", "", line, flags=re.IGNORECASE)
    line = line.strip("\"'`* ").rstrip(".").strip("\"'`* ")
    if not line:
        raise ReplyError(f"the explanation reply is empty: {reply[:200]!r}")
    return line[:MAX_EXPLANATION_CHARS]


def parse_detection(reply: str, n: int) -> list[int]:
    """The window numbers (1..n) a detection reply says activate, from `{"activating": [...]}` anywhere in
    it (reasoning, code fences and surrounding text are tolerated), or a reply that is only a JSON list.

    Raises:
        ReplyError: no such JSON, or entries that are not window numbers 1..n.
    """
    text = _THINK.sub("", reply)
    for piece in [*_FENCE.findall(text), text, *_OBJECT.findall(text)]:
        try:
            data = json.loads(piece.strip())
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):
            data = data.get("activating")
        if not isinstance(data, list):
            continue
        if not all(isinstance(x, int | str) and str(x).strip().isdigit() for x in data):
            raise ReplyError(f"the detection reply lists non-numbers: {data!r}")
        picked = sorted({int(x) for x in data})
        if any(not 1 <= x <= n for x in picked):
            raise ReplyError(f"the detection reply names windows outside 1..{n}: {picked}")
        return picked
    raise ReplyError(f'the detection reply holds no {{"activating": [...]}}: {reply[:200]!r}')
