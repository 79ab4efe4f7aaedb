"""Typed profiles: the schema `config.load_profile` validates every profile against.

The bottom of the package with config.py: it imports no domain module. The values a setting
chooses among live here (constants.py, curation.py, training.py) and the domain reads them.
"""

from arena_dagster.profile_schema.constants import REAL_SOURCES, SKILLS_SOURCE
from arena_dagster.profile_schema.sections import SEED_PATHS, Profile, validation_context

__all__ = ["REAL_SOURCES", "SEED_PATHS", "SKILLS_SOURCE", "Profile", "validation_context"]
