"""uncertainty-robust: uncertainty-promoting regularizers (EntM, LS) with and without adversarial
training, attacks, Jacobian statistics and one trial end to end. Plain PyTorch: this package
imports nothing from Ray, submitit or SLURM (``cluster/`` is the glue)."""

from .attacks import AttackSpec
from .config import TrialConfig, validate
from .errors import ConfigError, UserError

__all__ = ["AttackSpec", "ConfigError", "TrialConfig", "UserError", "validate"]
__version__ = "0.2.0"
