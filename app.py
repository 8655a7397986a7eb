"""refusal-explorer: the Streamlit entry point (`streamlit run app.py`)."""

import streamlit as st

from explorer.ui.state import demo_mode

st.set_page_config(page_title="refusal-explorer", page_icon="🧭", layout="wide")
demo = demo_mode()
pages = [
    st.Page("pages/demo.py", title="Walkthrough", icon="🎬", default=demo),
    st.Page("pages/overview.py", title="Overview", icon="🏠", default=not demo),
    st.Page("pages/latents.py", title="Latents", icon="🔢"),
    st.Page("pages/latent_detail.py", title="Latent detail", icon="🔬"),
    st.Page("pages/inspector.py", title="Prompt inspector", icon="🔎"),
    st.Page("pages/steering.py", title="Steering playground", icon="🎛️"),
    st.Page("pages/evaluate.py", title="Evaluate", icon="📈"),
]
st.navigation(pages).run()
