"""doctor's decisions: pure functions of the facts, tested without a disk."""

from __future__ import annotations

import datetime

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sessionstore._doctor import (
    DoctorFacts,
    Mount,
    SessionFacts,
    Severity,
    TmpfilesAge,
    TmpfilesRule,
    decide,
    effective_tmpfiles,
    mount_of,
    needs_attention,
    parse_mountinfo,
    parse_time_span,
    parse_tmpfiles,
    parse_tmpfiles_age,
    sessions_older_than,
    tmpfiles_verdict,
)

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DAY = datetime.timedelta(days=1)

MOUNTINFO = (
    "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
    "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n"
    "30 27 0:40 / /var/tmp rw,nosuid - tmpfs tmpfs rw,size=1024k\n"
    "31 27 7:3 / /mnt/with\\040space rw,relatime - xfs /dev/loop3 rw,nobarrier\n"
    "32 27 0:41 /sub /srv ro,relatime - btrfs /dev/vdb rw,subvol=/sub\n"
    "garbage line\n"
)


def test_mountinfo_lines_read_with_their_escapes_and_both_option_sets() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    assert [m.mount_point for m in mounts] == [
        "/proc",
        "/",
        "/var/tmp",
        "/mnt/with space",
        "/srv",
    ]
    xfs = mounts[3]
    assert (xfs.fs_type, xfs.source, xfs.major, xfs.minor) == (
        "xfs",
        "/dev/loop3",
        7,
        3,
    )
    assert {"rw", "relatime", "nobarrier"} <= xfs.options
    assert mounts[4].read_only
    assert not mounts[1].read_only


def test_the_mount_of_a_path_is_the_longest_mount_point_above_it() -> None:
    mounts = parse_mountinfo(MOUNTINFO)
    tmp = mount_of(mounts, 0, 40, "/var/tmp/checkbox-ng/sessions")
    assert tmp is not None
    assert tmp.fs_type == "tmpfs"
    root = mount_of(mounts, 254, 0, "/var/tmpfoo")
    assert root is not None
    assert root.mount_point == "/"
    # btrfs reports another device number to stat than mountinfo shows.
    srv = mount_of(mounts, 0, 99, "/srv/sessions")
    assert srv is not None
    assert srv.fs_type == "btrfs"
    # Mounted over: the later mount of the same point wins.
    over = parse_mountinfo(MOUNTINFO + "40 27 0:50 / /var/tmp rw - ext4 /dev/vdc rw\n")
    later = mount_of(over, 0, 50, "/var/tmp/x")
    assert later is not None
    assert later.fs_type == "ext4"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30d", 30 * 86400),
        ("10", 10),
        ("1h30min", 5400),
        ("1w 2d", 9 * 86400),
        ("500ms", 0.5),
        ("2M", 2 * 2629800),
        ("1y", 31557600),
        ("1.5h", 5400),
    ],
)
def test_systemd_time_spans(text: str, seconds: float) -> None:
    assert parse_time_span(text) == datetime.timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "d", "10 fortnights", "-1d", "1d-"])
def test_bad_time_spans_are_none(text: str) -> None:
    assert parse_time_span(text) is None


units = st.sampled_from(["s", "min", "h", "d", "w"])
seconds_of = {"s": 1, "min": 60, "h": 3600, "d": 86400, "w": 604800}


@given(st.lists(st.tuples(st.integers(0, 10_000), units), min_size=1, max_size=5))
def test_a_time_span_is_the_sum_of_its_parts(parts: list[tuple[int, str]]) -> None:
    text = "".join(f"{n}{unit}" for n, unit in parts)
    expected = sum(n * seconds_of[unit] for n, unit in parts)
    assert parse_time_span(text) == datetime.timedelta(seconds=expected)


def test_the_age_field_takes_a_tilde_and_timestamp_letters() -> None:
    assert parse_tmpfiles_age("-") is None
    assert parse_tmpfiles_age("10d") == TmpfilesAge(10 * DAY, False)
    assert parse_tmpfiles_age("~10d") == TmpfilesAge(10 * DAY, True)
    assert parse_tmpfiles_age("cmA:10d") == TmpfilesAge(10 * DAY, False)
    assert parse_tmpfiles_age("ab:~1h") == TmpfilesAge(
        datetime.timedelta(hours=1), True
    )
    assert parse_tmpfiles_age("soon") is None


def test_tmpfiles_lines_parse_with_modifiers_quotes_and_specifiers() -> None:
    text = (
        "# comment\n"
        "\n"
        "q /var/tmp 1777 root root 30d\n"
        "D! /tmp 1777 root root -\n"
        'd "/srv/with space" - - - 1d\n'
        "d %V/x - - - 2d\n"
        "d %h/cache - - - 2d\n"
        "x /var/tmp/systemd-private-*\n"
        "L /etc/link - - - - /target\n"
    )
    rules = parse_tmpfiles(text, "/usr/lib/tmpfiles.d/a.conf")
    assert [(r.type, r.path) for r in rules] == [
        ("q", "/var/tmp"),
        ("D", "/tmp"),
        ("d", "/srv/with space"),
        ("d", "/var/tmp/x"),
        ("x", "/var/tmp/systemd-private-*"),
        ("L", "/etc/link"),
    ]
    assert rules[0].age == TmpfilesAge(30 * DAY)
    assert rules[1].age is None
    assert rules[0].origin == "/usr/lib/tmpfiles.d/a.conf:3"


DIRS = ("/etc/tmpfiles.d", "/run/tmpfiles.d", "/usr/lib/tmpfiles.d")


def test_etc_masks_usr_lib_and_the_first_line_for_a_path_wins() -> None:
    rules = effective_tmpfiles(
        [
            {"tmp.conf": "q /var/tmp 1777 root root 10d\n"},
            {"masked.conf": ""},
            {
                "tmp.conf": "q /var/tmp 1777 root root 30d\n",
                "masked.conf": "d /srv 0755 root root 1d\n",
                "00-early.conf": "d /var/tmp 0755 root root 1h\n",
                "zz-late.conf": "d /var/tmp 0755 root root 1w\n",
                "notes.txt": "d /opt - - - 1d\n",
            },
        ],
        DIRS,
    )
    assert [(r.path, r.age, r.origin) for r in rules] == [
        (
            "/var/tmp",
            TmpfilesAge(datetime.timedelta(hours=1)),
            "/usr/lib/tmpfiles.d/00-early.conf:1",
        )
    ]
    without_early = effective_tmpfiles(
        [{"tmp.conf": "q /var/tmp 1777 root root 10d\n"}, {}, {}], DIRS
    )
    assert without_early[0].age == TmpfilesAge(10 * DAY)


def rule(kind: str, path: str, age: str | None = None) -> TmpfilesRule:
    parsed = None if age is None else parse_tmpfiles_age(age)
    return TmpfilesRule(kind, path, parsed, "test.conf:1")


def test_the_nearest_configured_ancestor_governs_the_sessions() -> None:
    var_tmp = rule("q", "/var/tmp", "30d")
    verdict = tmpfiles_verdict([var_tmp], "/var/tmp/checkbox-ng/sessions")
    assert verdict is not None
    assert (verdict.rule, verdict.sessions_depth, verdict.age) == (var_tmp, 3, 30 * DAY)
    # A line of its own (without age) keeps the parent's cleaning out.
    assert (
        tmpfiles_verdict(
            [var_tmp, rule("d", "/var/tmp/checkbox-ng")], "/var/tmp/checkbox-ng/s"
        )
        is None
    )
    # Its own aging line replaces the parent's.
    own = rule("d", "/var/tmp/checkbox-ng", "2d")
    nearer = tmpfiles_verdict([var_tmp, own], "/var/tmp/checkbox-ng/s")
    assert nearer is not None
    assert nearer.rule == own
    # x excludes the path and all below; X the path only.
    excluded = [var_tmp, rule("x", "/var/tmp/checkbox-*")]
    assert tmpfiles_verdict(excluded, "/var/tmp/checkbox-ng/s") is None
    only_path = [var_tmp, rule("X", "/var/tmp/checkbox-ng/s")]
    assert tmpfiles_verdict(only_path, "/var/tmp/checkbox-ng/s") is not None
    # Outside any rule, and a rule with no age: nothing.
    assert tmpfiles_verdict([var_tmp], "/home/u/.cache/plainbox/sessions") is None
    assert tmpfiles_verdict([rule("D", "/tmp")], "/tmp/sessions") is None


def test_a_tilde_on_the_repository_spares_sessions_not_their_checkpoints() -> None:
    verdict = tmpfiles_verdict([rule("d", "/srv/sessions", "~1d")], "/srv/sessions")
    assert verdict is not None
    assert verdict.spares_sessions
    deeper = tmpfiles_verdict([rule("d", "/srv", "~1d")], "/srv/sessions")
    assert deeper is not None
    assert not deeper.spares_sessions


moments = st.datetimes(
    min_value=datetime.datetime(2025, 1, 1),
    max_value=datetime.datetime(2026, 6, 1, 12),
    timezones=st.just(UTC),
)


@given(
    st.lists(st.tuples(st.text("abc", min_size=1), moments)),
    st.timedeltas(min_value=datetime.timedelta(0), max_value=600 * DAY),
)
def test_sessions_older_than_the_age_are_exactly_those_past_it(
    sessions: list[tuple[str, datetime.datetime]], age: datetime.timedelta
) -> None:
    older = sessions_older_than(sessions, age, NOW)
    assert older == [ident for ident, when in sessions if when < NOW - age]


DISK = Mount(254, 0, "/", "ext4", "/dev/vda", frozenset({"rw", "relatime"}))
CLEAN = SessionFacts(2, 4096, (), (), (), (), (("a", NOW), ("b", NOW - DAY)))
HEALTHY = DoctorFacts(
    repository="/srv/sessions",
    exists=True,
    is_directory=True,
    checked_path="/srv/sessions",
    mount=DISK,
    device=None,
    free_bytes=1 << 30,
    latency=None,
    latency_error=None,
    sessions=CLEAN,
    scan_error=None,
    tmpfiles=None,
)

SESSION_TROUBLES = {
    "stale-locks": "stale",
    "tombstones": "tombstones",
    "damaged": "damaged",
    "unreadable": "unreadable",
}
TWELVE_HOURS = tmpfiles_verdict([rule("d", "/srv", "12h")], "/srv/sessions")


def test_a_healthy_repository_needs_no_attention() -> None:
    findings = decide(HEALTHY, NOW)
    assert not needs_attention(findings)
    assert [f.code for f in findings] == ["filesystem", "free-space", "sessions"]


@given(
    kind=st.sampled_from(["ext4", "tmpfs", "ramfs", "nfs4", "fuse.sshfs", "overlay"]),
    options=st.sets(st.sampled_from(["ro", "nobarrier", "sync", "data=journal"])),
    low_space=st.booleans(),
    save_failed=st.booleans(),
    scan=st.sampled_from(["ok", "unreadable", "not-a-directory"]),
    session_troubles=st.sets(st.sampled_from(sorted(SESSION_TROUBLES))),
    aged=st.booleans(),
)
def test_attention_is_asked_exactly_for_the_troubles_present(
    kind: str,
    options: set[str],
    low_space: bool,
    save_failed: bool,
    scan: str,
    session_troubles: set[str],
    aged: bool,
) -> None:
    sessions = attrs.evolve(
        CLEAN,
        **{SESSION_TROUBLES[code]: ("a",) for code in session_troubles},  # type: ignore[arg-type]
    )
    facts = attrs.evolve(
        HEALTHY,
        mount=attrs.evolve(DISK, fs_type=kind, options=frozenset(options)),
        free_bytes=4095 if low_space else HEALTHY.free_bytes,
        latency_error="Read-only file system" if save_failed else None,
        is_directory=scan != "not-a-directory",
        sessions=sessions if scan == "ok" else None,
        scan_error="Permission denied" if scan == "unreadable" else None,
        tmpfiles=TWELVE_HOURS if aged else None,
    )
    expected = set()
    if kind in ("tmpfs", "ramfs"):
        expected.add("volatile-filesystem")
    elif kind != "ext4":
        expected.add("untested-filesystem")
    expected |= {"read-only", "no-barriers"} & {
        {"ro": "read-only", "nobarrier": "no-barriers"}.get(o, o) for o in options
    }
    if save_failed:
        expected.add("save-failed")
    if scan == "unreadable":
        expected.add("repository-unreadable")
    elif scan == "not-a-directory":
        expected.add("not-a-directory")
    else:
        expected |= session_troubles
        if low_space:
            expected.add("low-space")
        if aged:
            expected.add("tmpfiles-age")  # session b is a day old: past 12h
    findings = decide(facts, NOW)
    asked = {f.code for f in findings if f.severity is Severity.ATTENTION}
    assert asked == expected
    assert needs_attention(findings) == bool(expected)
    for f in findings:
        if f.severity is Severity.ATTENTION:
            assert f.action, f"{f.code} says what to do"


def test_a_missing_repository_is_a_note_and_the_checks_still_run() -> None:
    facts = attrs.evolve(
        HEALTHY, exists=False, is_directory=False, sessions=None, checked_path="/srv"
    )
    findings = decide(facts, NOW)
    assert [f.code for f in findings] == [
        "repository-missing",
        "filesystem",
        "free-space",
    ]
    assert not needs_attention(findings)
    assert "checked /srv" in findings[0].summary


def test_statfs_names_the_filesystem_where_mountinfo_cannot() -> None:
    tmpfs_magic = 0x01021994
    alone = attrs.evolve(HEALTHY, mount=None, fs_magic=tmpfs_magic)
    assert "volatile-filesystem" in {f.code for f in decide(alone, NOW)}
    unknown = attrs.evolve(HEALTHY, mount=None, fs_magic=0x1234)
    assert next(f.code for f in decide(unknown, NOW)) == "filesystem-unknown"
    # statfs of the directory itself wins over the type of the mount above it.
    over = attrs.evolve(HEALTHY, fs_magic=tmpfs_magic)
    assert "volatile-filesystem" in {f.code for f in decide(over, NOW)}
