"""Changing what the model does with SAE latents or the refusal direction: specs (`spec`), the hooks that
apply them (`hooks`), the sampler and decode loop with side-by-side generation (`decode`), share links and
presets (`share`), and the evaluation of a steering setting's refusal, over-refusal and capability cost
(`evaluation`)."""
