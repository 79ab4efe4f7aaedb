"""The Dagster daemon a command starts for its home (operate.running_daemon), with a real `dagster-daemon` process.

The command's own code server loads while the daemon starts (both import the code location): the block runs at once,
and `ready` is what waits for the daemon's heartbeat, or says why it never came."""

from __future__ import annotations

import pytest

from arena_dagster.errors import ArenaError
from arena_dagster.home import dagster_home, prepare_environment
from arena_dagster.operate import (
    _last_heartbeat,
    daemon_serving,
    open_instance,
    running_daemon,
)


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("ARENA_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home(home)))
    prepare_environment(home)
    return home


def test_the_block_runs_while_the_daemon_starts_and_ready_waits_for_its_heartbeat(home):
    instance = open_instance(home)
    with running_daemon(home, instance, print) as ready:
        # Started, not waited for: a daemon takes seconds to import Dagster before its first beat.
        assert daemon_serving(home)
        assert _last_heartbeat(instance) == 0.0
        ready()
        assert _last_heartbeat(instance) > 0.0
        ready()  # a second call returns at once
    assert not daemon_serving(home)


def test_a_daemon_that_stops_at_start_is_named_by_ready_and_the_block_ends(home):
    instance = open_instance(home)
    (dagster_home(home) / "dagster.yaml").write_text("run_coordinator: [\n")  # the daemon cannot read its instance
    with pytest.raises(ArenaError, match="the Dagster daemon stopped at start"), \
            running_daemon(home, instance, print) as ready:
        ready()
    assert not daemon_serving(home)
