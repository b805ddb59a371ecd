"""Config switches read as bool (mskd.flags)."""

import pytest

from mskd.flags import as_flag


@pytest.mark.parametrize(
    "value, expected",
    [(True, True), (False, False), ("true", True), ("False", False), (" yes ", True), ("off", False), (1, True)]
    + [(0, False), ("1", True), ("0", False)],
)
def test_as_flag_accepts_what_a_command_line_passes(value, expected):
    assert as_flag(value, "resume") is expected


@pytest.mark.parametrize("value", ["maybe", 2, None, 0.5, ""])
def test_as_flag_names_a_bad_value(value):
    with pytest.raises(ValueError, match=rf"resume must be true or false, got {value!r}"):
        as_flag(value, "resume")
