"""The installed distribution: its version, its license, ``sessionstore --version``."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

import sessionstore
from sessionstore._cli import main


def test_the_version_is_the_installed_distributions() -> None:
    assert sessionstore.__version__ == importlib.metadata.version("sessionstore")


def test_importing_the_package_reads_no_distribution_metadata() -> None:
    """The version is looked up when asked for, not by ``import sessionstore``:
    importlib.metadata costs about a third of the import."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, sessionstore; print('importlib.metadata' in sys.modules);"
            " print(sessionstore.__version__ == sessionstore.__version__)",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (0, "False\nTrue\n"), done.stderr


def test_an_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        sessionstore.nonexistent  # noqa: B018


def test_version_flag_prints_the_version_and_exits_0(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"sessionstore {sessionstore.__version__}\n"


def test_the_command_prints_the_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sessionstore", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    expected = f"sessionstore {sessionstore.__version__}\n"
    assert (done.returncode, done.stdout) == (0, expected)


def test_the_license_ships_with_the_distribution() -> None:
    dist = importlib.metadata.distribution("sessionstore")
    assert dist.metadata["License-Expression"] == "Apache-2.0"
    licenses = [f for f in dist.files or () if f.name == "LICENSE"]
    assert len(licenses) == 1, dist.files
    text = licenses[0].read_text()
    assert "Apache License" in text
    assert "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
