"""Objectives: turn this step's entropy into a loss and an alpha (one file each)."""

from vreason.objectives.base import Objective
from vreason.registry import OBJECTIVES, import_submodules

import_submodules(__name__, __path__)

__all__ = ["OBJECTIVES", "Objective"]
