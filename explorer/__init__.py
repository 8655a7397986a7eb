"""refusal-explorer: find, inspect and steer the SAE latents that mediate refusal."""

__version__ = "0.1.0"
