"""Why a held save checks its directory, not its slots file, before it writes.

On Linux 6.13 and later, asking for a file's times (``fstat``) marks them as
seen, and the next write of the file then updates them with a fine-grained
timestamp: a metadata change the journal records, paid by the next
``fdatasync``. An ``fstat`` of the directory, or a ``statx`` asking only for the
link count, leaves the file's times unseen. This compares, from C, pwrite +
fdatasync of 4 KiB alone and after each of the three checks, taking turns.

Run: ``python benchmarks/bench_stat_before_write.py [--disk DIR]`` (~10 s).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Final

SOURCE: Final = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
static long long now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}
static int cmp(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return x < y ? -1 : x > y;
}
#define N 1000
#define BATCH 20
static long long times[4][N];
static char buf[4096];
int main(int argc, char **argv) {
    char path[4096];
    int dir = open(argv[1], O_RDONLY | O_DIRECTORY), file[4];
    for (int v = 0; v < 4; v++) {
        snprintf(path, sizeof path, "%s/f%d", argv[1], v);
        file[v] = open(path, O_RDWR | O_CREAT, 0600);
        if (dir < 0 || file[v] < 0 || pwrite(file[v], buf, 4096, 0) != 4096) return 1;
        fsync(file[v]);
    }
    for (int r = 0; r < N / BATCH; r++)
        for (int v = 0; v < 4; v++)
            for (int i = 0; i < BATCH; i++) {
                struct stat st;
                struct statx sx;
                buf[0] = (char)i;
                long long start = now();
                if (v == 1) fstat(file[v], &st);
                if (v == 2) fstat(dir, &st);
                if (v == 3) statx(file[v], "", AT_EMPTY_PATH, STATX_NLINK, &sx);
                if (pwrite(file[v], buf, 4096, 0) != 4096) return 1;
                if (fdatasync(file[v])) return 1;
                times[v][r * BATCH + i] = now() - start;
            }
    for (int v = 0; v < 4; v++) {
        qsort(times[v], N, sizeof times[v][0], cmp);
        printf("%lld\n", times[v][N / 2]);
    }
    return 0;
}
"""
CASES: Final = (
    "write + fdatasync",
    "fstat(file), then the same",
    "fstat(dir), then the same",
    "statx(file, NLINK), then the same",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--disk", default="/var/tmp", help="default /var/tmp")
    args = parser.parse_args(argv)
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("needs a C compiler (cc)")
    with tempfile.TemporaryDirectory(prefix="bench-stat-", dir=args.disk) as work:
        source, binary = Path(work, "stat.c"), Path(work, "stat.bin")
        source.write_text(SOURCE)
        subprocess.run([cc, "-O2", "-o", str(binary), str(source)], check=True)
        data = Path(work, "files")
        data.mkdir()
        done = subprocess.run(
            [str(binary), str(data)], capture_output=True, text=True, check=True
        )
    medians = [int(line) / 1e3 for line in done.stdout.split()]
    print(f"Linux {platform.release()}, {args.disk}, median of 1000 per case")
    for case, median in zip(CASES, medians, strict=True):
        print(f"{case:<36} {median:8.1f} µs  {median / medians[0]:5.2f}x")
    return 0


if __name__ == "__main__":
    if not sys.platform.startswith("linux"):
        raise SystemExit("statx and fine-grained timestamps are Linux's")
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    sys.exit(main())
