"""Controllers: the small trainable tensors V-Reason tunes during decoding (one file each)."""

from vreason.controllers.base import Controller
from vreason.registry import CONTROLLERS, import_submodules

import_submodules(__name__, __path__)

__all__ = ["CONTROLLERS", "Controller"]
