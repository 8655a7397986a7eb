"""refusal-explorer: the Streamlit entry point (`streamlit run app.py`)."""

import streamlit as st

from explorer.ui.build_gate import build_first
from explorer.ui.state import demo_mode

# Icons from Streamlit's bundled Material set: emoji need a font the user may not have.
st.set_page_config(page_title="refusal-explorer", page_icon=":material/explore:", layout="wide")
demo = demo_mode()
building = build_first()  # while the offline default builds (or is incomplete), the app opens on its progress
pages = [
    st.Page("pages/demo.py", title="Walkthrough", icon=":material/school:", default=demo and not building),
    st.Page("pages/overview.py", title="Overview", icon=":material/home:", default=not demo and not building),
    st.Page("pages/latents.py", title="Latents", icon=":material/table_rows:"),
    st.Page("pages/latent_detail.py", title="Latent detail", icon=":material/biotech:"),
    st.Page("pages/inspector.py", title="Prompt inspector", icon=":material/manage_search:"),
    st.Page("pages/steering.py", title="Steering playground", icon=":material/tune:"),
    st.Page("pages/evaluate.py", title="Evaluate", icon=":material/monitoring:"),
    st.Page("pages/jailbreaks.py", title="Jailbreak lens", icon=":material/lock_open:"),
    st.Page("pages/probes.py", title="Probes", icon=":material/query_stats:"),
    st.Page("pages/upstream.py", title="Upstream graph", icon=":material/account_tree:"),
    st.Page("pages/build.py", title="Build", icon=":material/construction:", default=building),
]
st.navigation(pages).run()
