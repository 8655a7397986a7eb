"""Changing what the model does with SAE latents or the refusal direction: specs (`spec`), the hooks that
apply them (`hooks`), the sampler and decode loop with side-by-side generation (`decode`), share links and
presets (`share`), the evaluation of a steering setting's refusal, over-refusal and capability cost
(`evaluation`), and the walkthrough's measured examples (`examples`)."""
