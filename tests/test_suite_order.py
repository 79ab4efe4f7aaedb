"""The order in which scripts/test.sh's two xdist workers get the test files (tests/conftest.py's schedule_order)."""

from __future__ import annotations

import pytest
from conftest import LONGEST_FILES, REPO, schedule_order


class Item:
    """What schedule_order reads of a pytest item: its node id and whether it is marked slow."""

    def __init__(self, nodeid: str, slow: bool = False) -> None:
        self.nodeid, self.slow = nodeid, slow

    def get_closest_marker(self, name: str):
        return pytest.mark.slow.mark if name == "slow" and self.slow else None


def test_every_longest_file_exists():
    # A renamed file would silently lose its place in the order.
    assert [path for path in LONGEST_FILES if not (REPO / path).is_file()] == []


def test_slow_files_first_then_the_longest_then_the_rest_in_collection_order():
    items = [Item("tests/test_a.py::t"), Item("tests/test_compute_ray.py::t"), Item("tests/test_b.py::t", slow=True),
             Item("tests/test_server_backend.py::t"), Item("tests/test_sharegpt_flywheel.py::t", slow=True),
             Item("tests/test_compute_ray_round.py::t", slow=True), Item("tests/test_c.py::t")]
    assert [item.nodeid.split("::")[0][len("tests/test_"):-3] for item in sorted(items, key=schedule_order)] == [
        "compute_ray_round", "sharegpt_flywheel", "b", "server_backend", "compute_ray", "a", "c"]
