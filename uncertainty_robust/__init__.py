"""uncertainty-robust: uncertainty-promoting regularizers (EntM, LS) with and without adversarial
training, attacks, Jacobian statistics and one trial end to end. Plain PyTorch: this package
imports nothing from Ray, submitit or SLURM (``cluster/`` is the glue)."""
from .config import AttackSpec, ConfigError, TrialConfig, validate

__all__ = ["AttackSpec", "ConfigError", "TrialConfig", "validate"]
__version__ = "0.1.0"
