"""Training SAEs with SAELens's own `SAETrainer` on stored activations (no hub, no TransformerLens model)."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from sae_lens import SAETrainer
from sae_lens import __version__ as sae_lens_version
from sae_lens.config import SAETrainerConfig
from sae_lens.registry import get_sae_training_class
from sae_lens.saes.sae import TrainingSAE

from explorer.core.paths import atomic_directory, write_json_atomic
from explorer.core.precision import fast_bfloat16
from explorer.saes.activations import shuffled_batches
from explorer.saes.loading import PROVENANCE_FILE

log = logging.getLogger(__name__)

Architecture = Literal["topk", "batchtopk", "jumprelu", "standard", "gated"]
ARCHITECTURES: tuple[Architecture, ...] = get_args(Architecture)


@dataclass(frozen=True)
class SAETrainConfig:
    """One SAE's training recipe.

    Attributes:
        architecture: a SAELens training architecture.
        d_sae: number of latents.
        k: active latents per token (topk) or on average per token (batchtopk).
        sparsity_coefficient: L1 (standard, gated) or L0 (jumprelu) penalty; unused by the TopK family.
        aux_loss_coefficient: weight of the TopK auxiliary loss that revives dead latents.
        training_samples: activations seen in total (epochs = training_samples / stored activations).
        batch_size: activations per step.
        lr: Adam learning rate; decays linearly to lr/10 over the last `decay_fraction` of steps.
        warmup_steps: linear warm-up steps.
        decay_fraction: share of steps spent decaying the learning rate.
        dead_window_samples: a latent not active for this many samples counts as dead for the aux loss.
        autocast: bfloat16 autocast where the device has native bfloat16 (AMX or tensor cores make it ~1.5x
            faster; weights stay float32); float32 elsewhere.
        init_b_dec_mean: start the decoder bias at the data mean (scaled as the SAE sees it), so latents
            encode deviations from the mean from step one instead of all spending capacity on it.
        seed: initialisation and batch order.
    """

    architecture: Architecture = "topk"
    d_sae: int = 4096
    k: int = 64
    sparsity_coefficient: float = 1.0
    aux_loss_coefficient: float = 1.0
    training_samples: int = 1_000_000
    batch_size: int = 1024
    lr: float = 2e-3
    warmup_steps: int = 10
    decay_fraction: float = 0.3
    dead_window_samples: int = 100_000
    autocast: bool = True
    init_b_dec_mean: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.d_sae < 1 or self.k < 1 or self.k > self.d_sae:
            raise ValueError(f"need 1 <= k <= d_sae, got k={self.k}, d_sae={self.d_sae}")
        if self.batch_size < 1 or self.training_samples < self.batch_size:
            raise ValueError(
                f"training_samples ({self.training_samples}) must be at least one batch ({self.batch_size})"
            )
        if not 0 < self.lr < 1 or not 0 <= self.decay_fraction <= 1:
            raise ValueError(
                f"lr must be in (0, 1) and decay_fraction in [0, 1]; got {self.lr}, {self.decay_fraction}"
            )

    @property
    def steps(self) -> int:
        return self.training_samples // self.batch_size

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SAETrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _training_sae(d_in: int, config: SAETrainConfig, metadata: dict[str, Any]) -> TrainingSAE[Any]:
    sae_cls, cfg_cls = get_sae_training_class(config.architecture)
    options: dict[str, Any] = {
        "d_in": d_in,
        "d_sae": config.d_sae,
        # Inputs are scaled to norm sqrt(d_in) during training so one lr fits every layer; SAELens folds
        # the factor back into the weights when training ends.
        "normalize_activations": "expected_average_only_in",
    }
    if config.architecture in ("topk", "batchtopk"):
        options |= {"k": config.k, "aux_loss_coefficient": config.aux_loss_coefficient}
    elif config.architecture == "jumprelu":
        options |= {"l0_coefficient": config.sparsity_coefficient}
    else:
        options |= {"l1_coefficient": config.sparsity_coefficient}
    cfg = cfg_cls(**options)
    for key, value in metadata.items():
        cfg.metadata[key] = value
    torch.manual_seed(config.seed)
    return sae_cls(cfg)


def train_sae(
    acts: torch.Tensor,
    config: SAETrainConfig,
    *,
    hook: str,
    model_name: str,
) -> tuple[TrainingSAE[Any], dict[str, Any]]:
    """Train an SAE on stored activations with SAELens's `SAETrainer`.

    Args:
        acts: [n, d_model] activations (any float dtype; batches are cast to float32).
        config: the recipe.
        hook: the hook the activations came from, stored in the SAE's metadata.
        model_name: the model they came from, stored in the SAE's metadata.

    Returns:
        The trained SAE and a summary (steps, seconds, final training L0 and dead count).
    """
    sae = _training_sae(acts.shape[1], config, {"hook_name": hook, "model_name": model_name})
    decay_steps = int(config.steps * config.decay_fraction)
    trainer_cfg = SAETrainerConfig(
        total_training_samples=config.steps * config.batch_size,
        train_batch_size_samples=config.batch_size,
        lr=config.lr,
        lr_end=config.lr / 10,
        lr_scheduler_name="constant",
        lr_warm_up_steps=min(config.warmup_steps, max(config.steps - 1, 0)),
        lr_decay_steps=decay_steps,
        # bfloat16 autocast only where it is fast: emulated bfloat16 is ~80x slower (core.precision).
        autocast=config.autocast and fast_bfloat16(next(sae.parameters()).device),
        dead_feature_window=max(1, config.dead_window_samples // config.batch_size),
        feature_sampling_window=max(1, config.steps),
        n_batches_for_norm_estimate=min(50, max(1, len(acts) // config.batch_size)),
    )
    trainer = SAETrainer(trainer_cfg, sae, shuffled_batches(acts, config.batch_size, seed=config.seed))
    if config.init_b_dec_mean:
        # Fix the input scaling SAELens would estimate (its rule: sqrt(d_in) / mean norm) so the decoder
        # bias can start at the mean in the same units; fit() keeps a factor that is already set.
        sample = acts[
            torch.randperm(len(acts), generator=torch.Generator().manual_seed(config.seed))[:50_000]
        ]
        sample = sample.float()
        scale = (acts.shape[1] ** 0.5) / float(sample.norm(dim=-1).mean())
        trainer.activation_scaler.scaling_factor = scale
        with torch.no_grad():
            sae.b_dec.copy_(sample.mean(0) * scale)
    start = time.perf_counter()
    trained = trainer.fit()
    seconds = time.perf_counter() - start
    summary = {
        "steps": trainer.n_training_steps,
        "samples": trainer.n_training_samples,
        "epochs": round(trainer.n_training_samples / len(acts), 2),
        "distinct_samples": len(acts),
        "seconds": round(seconds, 1),
        "samples_per_second": round(trainer.n_training_samples / max(seconds, 1e-9)),
        "train_l0": trained.cfg.metadata.get("l0"),
        "train_dead": trained.cfg.metadata.get("num_dead_features"),
    }
    log.info("trained %s SAE on %s: %s", config.architecture, hook, summary)
    return trained, summary


def save_sae(sae: TrainingSAE[Any], directory: Path, provenance: dict[str, Any]) -> Path:
    """Write the inference form of `sae` in SAELens format plus `provenance.json`, atomically."""
    with atomic_directory(directory) as tmp:
        sae.save_inference_model(tmp)
        write_json_atomic(tmp / PROVENANCE_FILE, {**provenance, "sae_lens": sae_lens_version})
    return directory
