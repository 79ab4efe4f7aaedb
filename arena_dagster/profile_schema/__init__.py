"""Typed profiles: the schema `config.load_profile` validates every profile against."""

from arena_dagster.profile_schema.sections import REAL_SOURCES, SEED_PATHS, SKILLS_SOURCE, Profile, validation_context

__all__ = ["REAL_SOURCES", "SEED_PATHS", "SKILLS_SOURCE", "Profile", "validation_context"]
