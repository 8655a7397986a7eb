"""Everything known about individual latents: streaming statistics (`stats`), the cache builder
(`builder`, `finalize`, within the memory `budget`) and its on-disk format (`schema`), quantile groups
(`groups`), example windows and their activations (`context`), heuristic labels (`labels`), the reader
(`reader`), sharded builds and exact merges (`shards`) and on a Ray cluster (`distributed`), the default
build's cache stage (`build`), the browsable table (`table`), what a decoder row writes (`effects`),
attribution on the refusal score (`attribution`), the prompt inspector (`inspector`), one latent on any
text (`probe`), the user's stars, notes, lists and labels (`notes`, `notes_format`), auto-interp
(`autointerp`, `autointerp_client`) and exports to SAEDashboard, Neuronpedia and CSV (`export`,
`export_saedashboard`)."""
