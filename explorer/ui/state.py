"""Every session-state and query-parameter key the app uses, in one place."""

from __future__ import annotations

import os

MODEL_ENV = "EXPLORER_MODEL"
"""Environment variable naming the model spec the app loads (default: the offline default)."""

MODEL_SPEC = "model_spec"


def model_spec_from_env() -> str:
    """The model spec the app was started with."""
    return os.environ.get(MODEL_ENV) or "default"
