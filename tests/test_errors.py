from arena_dagster.errors import ArenaError
from arena_dagster.paths import UnsafePathError, check_name


def test_one_line_with_input_and_fix():
    error = ArenaError("profile not found", "skils", "known profiles: skills, sharegpt")
    assert str(error) == "profile not found (skils): known profiles: skills, sharegpt"
    assert str(ArenaError("a message\n spread over lines")) == "a message spread over lines"


def test_domain_errors_are_user_errors():
    try:
        check_name("../x")
    except UnsafePathError as exc:
        assert isinstance(exc, ArenaError) and "\n" not in str(exc)
