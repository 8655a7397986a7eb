"""Refusal as a behaviour and as a direction: the safety fine-tune that makes the offline default refuse
(`organism`), the difference-in-means candidates and Arditi et al.'s selection criteria (`candidates`),
computing, storing and proving the chosen direction (`build`), its runtime type and loader
(`direction`), which is all that steering, the latent cache and the app import, and one prompt's refusal
score and judged greedy reply (`score`)."""
