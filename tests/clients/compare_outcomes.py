"""Compare a client's whole test suite run on its own storage module and on the face.

Usage: ``python compare_outcomes.py ORIGINAL.xml FACE.xml CLIENT``, the two files
written by ``pytest --junitxml``. Fails (exit 1) when a test that passed on the
original did not pass on the face, unless it is one of the client's listed
exceptions; also fails when an exception no longer applies, so the list cannot
outgrow the truth. Prints the counts either way.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections import Counter
from typing import Final

# Tests that read or patch the original storage module's private internals, which
# a face does not have. Each with its reason; these are the only tests allowed to
# pass on the original and not on the face.
EXCEPTIONS: Final[dict[str, dict[str, str]]] = {
    "plainbox": {},
    "checkbox": {},
}


def outcomes(path: str) -> dict[str, str]:
    """Each test's id (``module.Class::name``) and outcome in a junit file."""
    found = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        # The module's name from site-packages on, whichever directory and
        # environment the run was made from.
        module = (case.get("classname") or "").rpartition("site-packages.")[2]
        test_id = f"{module}::{case.get('name')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = "failed" if child.tag == "failure" else child.tag
                if child.tag == "error":
                    break
        found[test_id] = outcome
    return found


def main(argv: list[str]) -> int:
    original_path, face_path, client = argv
    original, face = outcomes(original_path), outcomes(face_path)
    allowed = EXCEPTIONS[client]
    print(f"{client} whole suite, original: {dict(Counter(original.values()))}")
    print(f"{client} whole suite, face:     {dict(Counter(face.values()))}")
    lost = sorted(
        test
        for test, outcome in original.items()
        if outcome == "passed" and face.get(test) != "passed"
    )
    unexpected = [test for test in lost if test not in allowed]
    stale = sorted(set(allowed) - set(lost))
    for test in lost:
        mark = "listed exception" if test in allowed else "REGRESSION"
        print(f"  {mark}: {test} ({face.get(test, 'missing')} on the face)")
        if test in allowed:
            print(f"    reason: {allowed[test]}")
    for test in stale:
        print(f"  exception no longer needed: {test}")
    gained = sum(
        1
        for test, outcome in face.items()
        if outcome == "passed" and original.get(test) != "passed"
    )
    print(
        f"{client}: {len(lost)} passed on the original only "
        f"({len(unexpected)} not listed), {gained} passed on the face only"
    )
    if "passed" not in original.values():
        print(f"{client}: no test passed on the original: nothing was compared")
        return 1
    return 1 if unexpected or stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
