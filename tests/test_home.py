"""The home: the profile it remembers, its locks, and what killed runs leave in it."""

from __future__ import annotations

import pytest

from arena_dagster.home import HomeProfileMismatch, home_profile, read_home_record, reap_stale_files, record_profile
from arena_dagster.locks import flywheel_lock, writer_lock


def test_the_first_run_records_the_profile_and_another_is_refused(tmp_path):
    name, seed, settings = home_profile(tmp_path, "skills_smoke")
    assert read_home_record(tmp_path) is None
    record = record_profile(tmp_path, name, seed, settings)
    assert read_home_record(tmp_path) == record and record["profile"] == "skills_smoke"
    assert home_profile(tmp_path)[0] == "skills_smoke"  # the UI, the schedule, `leaderboard` read it
    with pytest.raises(HomeProfileMismatch, match="built with profile 'skills_smoke', not 'skills'"):
        home_profile(tmp_path, "skills")
    with pytest.raises(HomeProfileMismatch):
        record_profile(tmp_path, "skills", None, home_profile(tmp_path)[2])
    switched = record_profile(tmp_path, "skills", None, home_profile(tmp_path)[2], switch=True)
    assert switched["profile"] == "skills" and switched["switched_from"] == [{"profile": "skills_smoke", "seed": None}]


def test_locks_say_who_holds_them(tmp_path):
    lock = flywheel_lock(tmp_path)
    assert lock.acquire(wait=False, command="flywheel", round="2")
    other = flywheel_lock(tmp_path)
    assert not other.acquire(wait=False)
    assert other.holder()["command"] == "flywheel" and other.holder()["round"] == "2"
    lock.release()
    assert other.acquire(wait=False) and writer_lock(tmp_path).acquire(wait=False)


def test_stale_files_of_killed_trainings_are_removed_only_inside_the_home(tmp_path):
    home = tmp_path / "home"
    checkpoints = home / "checkpoints"
    (checkpoints / "SFT-I1.tmp").mkdir(parents=True)
    (checkpoints / "SFT-I1").mkdir()
    (checkpoints / "SFT-I1.spec.json").write_text("{}")
    (checkpoints / "DPO-I1.ab12cd34.json").write_text("{}")
    (checkpoints / "SFT-I1.lock").write_text("")
    (home / "models" / "models" / "qwen2.5-x.old").mkdir(parents=True)
    outside = tmp_path / "precious.tmp"
    outside.mkdir()
    (checkpoints / "link.tmp").symlink_to(outside)
    removed = sorted(p.name for p in reap_stale_files(home))
    assert removed == ["DPO-I1.ab12cd34.json", "SFT-I1.spec.json", "SFT-I1.tmp", "link.tmp", "qwen2.5-x.old"]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["SFT-I1", "SFT-I1.lock"] and outside.is_dir()
    # While a run writes (holds the writer lock), nothing is touched: its `.tmp` is alive.
    (checkpoints / "RL-I1.tmp").mkdir()
    lock = writer_lock(home)
    assert lock.acquire(wait=False)
    assert reap_stale_files(home) == [] and (checkpoints / "RL-I1.tmp").is_dir()
    lock.release()
