"""Coordinate check: does every activation keep its size, and every layer keep learning, as the
model widens (or deepens)? ``check.py`` runs it, ``probe.py`` measures, ``verdict.py`` judges."""

from mutransfer.coord.check import GROWTH_THRESHOLD, RELIABLE, coord_check
from mutransfer.coord.result import CoordCheck
from mutransfer.coord.verdict import ModuleCheck

__all__ = ["GROWTH_THRESHOLD", "RELIABLE", "CoordCheck", "ModuleCheck", "coord_check"]
