"""Foundation speed, measured side by side on the offline default: loading, early stopping, hook overhead.

Prints ratios; nothing here is asserted. Run with `make bench`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
from transformers import AutoModelForCausalLM

from explorer.core.generation import SamplingConfig, encode_chats, generate
from explorer.core.hooks import intervene, run_to
from explorer.core.models import default_gguf_path, ensure_default_model, load_model


def best_of(fn: Callable[[], object], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    torch.manual_seed(0)
    gguf = default_gguf_path()
    copy = ensure_default_model()
    t_gguf = best_of(
        lambda: AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name), repeats=1
    )
    t_copy = best_of(lambda: AutoModelForCausalLM.from_pretrained(str(copy)), repeats=3)
    print(f"load: GGUF {t_gguf:.2f} s, dequantized copy {t_copy:.2f} s, ratio {t_gguf / t_copy:.1f}x")

    loaded = load_model("default")
    prompts = [f"Explain topic number {i} in two sentences, with an example." for i in range(16)]
    _, batch = encode_chats(loaded, prompts)
    n_tokens = int(batch["attention_mask"].sum())

    def full() -> None:
        with torch.no_grad():
            loaded.model(**batch, use_cache=False)

    def early() -> None:
        run_to(loaded.model, batch["input_ids"], ["blocks.15.hook_resid_post"], batch["attention_mask"])

    t_full, t_early = best_of(full), best_of(early)
    print(
        f"forward over {n_tokens} tokens: full {t_full:.3f} s ({n_tokens / t_full:.0f} tok/s), "
        f"stopped after layer 15 {t_early:.3f} s ({n_tokens / t_early:.0f} tok/s), "
        f"ratio {t_full / t_early:.2f}x"
    )

    sampling = SamplingConfig(max_new_tokens=48)
    plain_prompts = ["Write a short story about a lighthouse keeper."]
    t_plain = best_of(lambda: generate(loaded, plain_prompts, sampling))

    def hooked() -> None:
        with intervene(loaded.model, {"blocks.15.hook_resid_post": lambda act, _: act + 0.0}):
            generate(loaded, plain_prompts, sampling)

    t_hooked = best_of(hooked)
    print(
        f"generation of 48 tokens: plain {t_plain:.3f} s, with a residual write hook {t_hooked:.3f} s, "
        f"hooked/plain {t_hooked / t_plain:.3f}x"
    )


if __name__ == "__main__":
    main()
