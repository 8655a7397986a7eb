"""Streamlit glue, and the only library code that imports streamlit: cached loaders that share one model
per process, every session-state and query-parameter key, the widget groups the pages are made of, and
plotly figures built from stored records (lists and floats, never tensors)."""
