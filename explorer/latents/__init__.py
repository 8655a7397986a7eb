"""Everything known about individual latents: streaming statistics (`stats`), the cache builder
(`builder`) and its on-disk format (`schema`), the reader (`reader`), sharded builds and exact merges
(`shards`), the default build's cache stage (`build`), the browsable table (`table`), what a decoder row
writes (`effects`), attribution on the refusal score (`attribution`), the prompt inspector (`inspector`)
and exports to SAEDashboard, Neuronpedia and CSV (`export`)."""
