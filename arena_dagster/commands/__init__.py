"""The subcommands of `arena-dagster` (the top layer): each parses its arguments and calls the layers below."""
