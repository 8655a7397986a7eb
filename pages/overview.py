"""Overview: the loaded model, its provenance and the state of the build."""

import streamlit as st

from explorer.hooks import hook_names
from explorer.models import ModelError
from explorer.ui.loaders import build_manifest, cached_model
from explorer.ui.state import MODEL_ENV, model_spec_from_env

st.title("refusal-explorer")
st.caption("Find, inspect and steer the SAE latents that mediate refusal in chat language models.")

spec = model_spec_from_env()
try:
    loaded = cached_model(spec)
except ModelError as e:
    st.error(f"Could not load model `{spec}`: {e}")
    st.info(f"Set `{MODEL_ENV}` to 'default', a .gguf file, a model directory or a hub id, then restart.")
    st.stop()

info = loaded.describe()
st.subheader(f"Model: {info['name']}")
cols = st.columns(4)
cols[0].metric("Layers", info["n_layers"])
cols[1].metric("d_model", info["d_model"])
cols[2].metric("Parameters", f"{info['n_parameters'] / 1e6:.1f} M")
cols[3].metric("Device / dtype", f"{info['device']} / {info['dtype']}")
st.markdown(f"**Architecture** `{info['architecture']}` · **source** `{info['source']}`")

with st.expander("Provenance", expanded=False):
    st.json(info["provenance"] or {"note": "no provenance.json beside this model"})
with st.expander(f"Residual hooks ({2 * info['n_layers']})", expanded=False):
    st.code("\n".join(hook_names(info["n_layers"])), language="text")

st.subheader("Build")
try:
    manifest = build_manifest()
except ValueError as e:
    st.error(str(e))
    manifest = None
if manifest is None:
    st.info("Nothing built yet: run `make demo` or `explorer build`.")
else:
    st.dataframe(
        [{"stage": name, **stage} for name, stage in manifest["stages"].items()],
        hide_index=True,
    )
    st.caption(
        f"Last build finished {manifest.get('finished', '?')} (explorer {manifest.get('explorer', '?')})."
    )
