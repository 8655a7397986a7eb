"""Sparse autoencoders: loading SAELens SAEs and checking they fit a model (`loading`), the token corpus
(`corpus`), residual activations stored as shards (`activations`), training with SAELens (`training`),
quality on held-out tokens (`quality`), and the default build's SAE stage (`build`)."""
