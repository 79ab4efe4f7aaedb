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


def test_os_errors_are_named_with_their_message_and_path(tmp_path):
    import errno

    import pytest

    from arena_dagster.errors import describe_os_error, name_os_errors, os_error_in

    # A real full device: writing /dev/full fails with ENOSPC, a failed write names no file.
    with pytest.raises(OSError) as full:
        with open("/dev/full", "w") as handle:
            handle.write("x")
    assert full.value.errno == errno.ENOSPC
    assert describe_os_error(full.value, writing="/dev/full") == "ENOSPC: No space left on device (while writing /dev/full)"
    # A path through a regular file: ENOTDIR, with the path the error carries (root cannot bypass it).
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError) as through_file:
        (tmp_path / "file" / "checkpoints").mkdir()
    assert describe_os_error(through_file.value) == f"ENOTDIR: Not a directory: {tmp_path / 'file' / 'checkpoints'}"
    # Wrapped by a library, or only in a message that crossed a process.
    try:
        try:
            (tmp_path / "file" / "x").write_text("")
        except OSError as exc:
            raise RuntimeError("saving the checkpoint failed") from exc
    except RuntimeError as wrapped:
        assert os_error_in(wrapped).errno == errno.ENOTDIR
    rust = RuntimeError("Error while serializing: I/O error: File too large (os error 27)")
    assert describe_os_error(os_error_in(rust), writing="/h/RM-I1.tmp") == "EFBIG: File too large (while writing /h/RM-I1.tmp)"
    assert os_error_in(ValueError("no errno here")) is None
    assert name_os_errors(f"OSError: {full.value}") == "OSError: ENOSPC: No space left on device"
