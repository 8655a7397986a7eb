"""Server-side render time of the app's Latent detail page on the built default's 4,096-latent cache.

Streamlit's `AppTest` runs the page script in this process exactly as the server would for a browser
session (the model, SAEs and caches are loaded once and shared, as in the server); each rerun is timed
for a spread of latents after one warm-up run. The target is <= 150 ms at the 95th percentile. The
Latents table page is timed the same way for reference. Needs `make build` first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

from explorer.core.models import ORGANISM_NAME
from explorer.latents.reader import CacheError, LatentCache
from explorer.latents.schema import latent_cache_dir
from explorer.saes.build import read_index
from explorer.saes.loading import SAEError
from explorer.ui.state import LATENT, SAE_HOOK

ROOT = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def time_page(page: str, hook: str, latents: list[int]) -> list[float]:
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    app.switch_page(page)
    app.session_state[SAE_HOOK] = hook
    app.session_state[LATENT] = latents[0]
    app.run()  # warm-up: loads the model, SAEs and caches into the process-wide resource cache
    if app.exception:
        raise RuntimeError(f"{page} raised: {app.exception[0].value}")
    times = []
    for latent in latents:
        app.session_state[LATENT] = latent
        start = time.perf_counter()
        app.run()
        times.append((time.perf_counter() - start) * 1000)
        if app.exception or app.error:
            problem = app.exception[0].value if app.exception else app.error[0].value
            raise RuntimeError(f"{page} for latent {latent}: {problem}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=100, help="latents to render")
    args = parser.parse_args()
    os.chdir(ROOT)
    try:
        hook = read_index(ORGANISM_NAME)["main"]
        d_sae = LatentCache(latent_cache_dir(ORGANISM_NAME, hook)).d_sae
    except (SAEError, CacheError) as e:
        print(f"skipped: the built default is needed ({e}); run `make build` first")
        return
    latents = [round(i * (d_sae - 1) / (args.n - 1)) for i in range(args.n)]
    for page in ("pages/latent_detail.py", "pages/latents.py"):
        times = time_page(page, hook, latents if page.endswith("detail.py") else latents[:20])
        print(
            f"{page} on {d_sae} latents ({len(times)} renders): median {statistics.median(times):.0f} ms, "
            f"p95 {percentile(times, 0.95):.0f} ms, max {max(times):.0f} ms"
            + (" (target: p95 <= 150 ms)" if page.endswith("detail.py") else "")
        )


if __name__ == "__main__":
    main()
