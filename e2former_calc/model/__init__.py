"""The E2Former network and its building blocks."""

from .config import PRESETS, E2FormerConfig
from .e2former import E2Former

__all__ = ["PRESETS", "E2Former", "E2FormerConfig"]
