"""The extension's step codes and file names are the core's: `SaveStep` numbers
the steps both backends execute and `_naming` names the files, and the native
core spells each once (rust/save_plan.rs), exported as module constants."""

from __future__ import annotations

import pytest

from sessionstore import _naming
from sessionstore._save_plan import SaveStep

native = pytest.importorskip(
    "sessionstore._native", reason="the native extension is not built"
)

FILE_NAMES = ("CHECKPOINT_NAME", "NEXT_NAME", "SLOTS_NAME")


def native_step_codes() -> dict[str, int]:
    """The extension's integer module constants: its step codes, by name."""
    return {
        name: value
        for name, value in vars(native).items()
        if name.isupper() and type(value) is int
    }


def test_every_step_code_is_the_core_one() -> None:
    assert native_step_codes() == {step.name: step.value for step in SaveStep}


def test_every_file_name_is_the_core_one() -> None:
    for name in FILE_NAMES:
        assert getattr(native, name) == getattr(_naming, name), name


def test_the_fallback_exports_exactly_the_extensions_names() -> None:
    from sessionstore import _fallback

    public = {name for name in vars(native) if not name.startswith("_")}
    assert set(_fallback.__all__) == public
    for name in public:
        if name.isupper():
            assert getattr(_fallback, name) == getattr(native, name), name
