"""Tables of a power-cut results file: rounds and verdicts per save path and filesystem.

    python tests/powercut/summarize.py RESULTS.jsonl [MORE.jsonl ...]

prints, in Markdown, the library rounds per save path and filesystem (with
lost, torn and other failures), the rounds per cut, drop and backend, and for
each control where it was caught.
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

FILESYSTEMS = ("ext4", "xfs", "btrfs")


def summarize(rows: list[dict[str, object]]) -> str:
    library = [row for row in rows if row["label"] == "library"]
    controls = [row for row in rows if row["label"] == "control"]
    out = ["| save path | " + " | ".join(FILESYSTEMS) + " | lost | torn | other |"]
    out.append("|---" * (len(FILESYSTEMS) + 4) + "|")
    paths = sorted({str(row["path"]) for row in library})
    for path in paths:
        mine = [row for row in library if row["path"] == path]
        per_fs = Counter(str(row["fs"]) for row in mine)
        verdicts = Counter(str(row["verdict"]) for row in mine)
        other = sum(n for v, n in verdicts.items() if v not in ("ok", "lost", "torn"))
        cells = [str(per_fs[fs]) for fs in FILESYSTEMS]
        out.append(
            f"| {path} | "
            + " | ".join(cells)
            + f" | {verdicts['lost']} | {verdicts['torn']} | {other} |"
        )
    total = Counter(str(row["verdict"]) for row in library)
    out.append(
        f"\n{len(library)} library rounds: "
        + ", ".join(f"{n} {v}" for v, n in sorted(total.items()))
    )
    for key in ("cut", "drop", "backend"):
        spread = Counter(str(row[key]) for row in library)
        out.append(
            f"by {key}: " + ", ".join(f"{k} {n}" for k, n in sorted(spread.items()))
        )
    if controls:
        out.append("\n| control | " + " | ".join(FILESYSTEMS) + " |")
        out.append("|---" * (len(FILESYSTEMS) + 1) + "|")
        found: dict[str, dict[str, str]] = defaultdict(dict)
        for name in sorted({str(row["path"]) for row in controls}):
            for fs in FILESYSTEMS:
                mine = [r for r in controls if r["path"] == name and r["fs"] == fs]
                bad = [r for r in mine if r["verdict"] in ("lost", "torn")]
                found[name][fs] = (
                    f"caught ({bad[0]['verdict']}) in round {mine.index(bad[0]) + 1}"
                    if bad
                    else f"not caught in {len(mine)}"
                )
            out.append(
                f"| {name} | "
                + " | ".join(found[name][fs] for fs in FILESYSTEMS)
                + " |"
            )
    return "\n".join(out)


def main() -> None:
    rows = []
    for name in sys.argv[1:]:
        with Path(name).open(encoding="utf-8") as results:
            rows += [json.loads(line) for line in results if line.strip()]
    print(summarize(rows))


if __name__ == "__main__":
    main()
