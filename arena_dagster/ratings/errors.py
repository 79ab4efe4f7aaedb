"""Errors and warnings of the ratings package."""

from __future__ import annotations

from arena_dagster.errors import ArenaError


class RatingsError(ArenaError, ValueError):
    """Bad input to the ratings code; the message names the row, field or model at fault.

    A user error (ArenaError): the command line prints it as one line and exits 2.
    """


class BattlesInputError(RatingsError):
    """A battles table that cannot be rated as given (missing column, null name, unknown winner...)."""


class InputFileError(RatingsError):
    """A file that cannot be read at all (missing, or a JSON document that does not parse)."""


class DisconnectedComparisonsError(RatingsError):
    """Some models were never compared, directly or through others, with the rest.

    Bradley-Terry ratings of separate groups have no common scale, so no leaderboard can
    put them side by side. `components` lists the groups (each a sorted list of names).
    """

    def __init__(self, components: list[list[str]]):
        self.components = components
        shown = "; ".join(f"{{{', '.join(group)}}}" for group in components)
        super().__init__(
            f"the comparison graph has {len(components)} disconnected components, so their ratings "
            f"share no scale: {shown}. Add battles between the groups or rate each group separately."
        )


class RatingsWarning(UserWarning):
    """A fit that finished but rests on an assumption the user should know about."""
