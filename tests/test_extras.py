"""Optional dependencies are imported when used, and a missing one names the extra that installs it."""

import json

import pytest

from mskd.extras import require


def test_an_installed_module_is_returned():
    assert require("json", "none", "anything") is json


def test_a_missing_module_names_its_extra():
    with pytest.raises(ImportError, match=r"^no_such_module is not installed; reading X needs the optional extra: "):
        require("no_such_module", "dicom", "reading X")
    with pytest.raises(ImportError, match=r"pip install 'mskd\[dicom\]'$"):
        require("no_such_module", "dicom", "reading X")
