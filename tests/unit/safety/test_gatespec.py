"""Alert selectors, maintenance windows and freeze values as users write them (issue 19 items 2, 3).

What each spelling means at a given instant: a window in Europe/Berlin across a DST change, an
overnight window, the next opening named in a denial, the matchers Prometheus users know, and
freeze values that end by themselves or fail safe."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agent.safety.windows import parse_freeze, window_denial, windows_of
from agent.settings import SettingsError, load_settings
from agent.structs.gatespec import next_opening, parse_selector, parse_window


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def iso(t: float | None) -> str:
    assert t is not None
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M")


def test_business_hours_follow_the_zone_across_daylight_saving() -> None:
    """09:00-17:00 Berlin is 08:00-16:00 UTC in winter and 07:00-15:00 UTC in summer."""
    w = parse_window("Mon-Fri 09:00-17:00 Europe/Berlin")
    assert w.contains(ts("2027-01-15T08:00:00"))  # Friday 09:00 CET
    assert not w.contains(ts("2027-01-15T07:59:00"))
    assert not w.contains(ts("2027-01-15T16:00:00"))  # 17:00 CET: end excluded
    assert w.contains(ts("2027-07-16T07:00:00"))  # Friday 09:00 CEST
    assert not w.contains(ts("2027-07-16T15:00:00"))
    assert not w.contains(ts("2027-01-16T10:00:00"))  # Saturday


def test_an_overnight_window_belongs_to_its_start_day() -> None:
    w = parse_window("Fri 22:00-06:00 UTC")
    assert w.contains(ts("2027-01-15T23:00:00"))  # Friday night
    assert w.contains(ts("2027-01-16T05:59:00"))  # Saturday morning
    assert not w.contains(ts("2027-01-16T06:00:00"))
    assert not w.contains(ts("2027-01-14T23:00:00"))  # Thursday night
    assert not w.contains(ts("2027-01-15T05:00:00"))  # Friday morning belongs to Thursday


def test_day_lists_ranges_wrapping_and_daily() -> None:
    assert parse_window("Sat,Sun 00:00-24:00 UTC").days == {5, 6}
    assert parse_window("Fri-Mon 10:00-11:00 UTC").days == {4, 5, 6, 0}
    assert parse_window("Mon,Wed-Fri 10:00-11:00 UTC").days == {0, 2, 3, 4}
    assert parse_window("10:00-11:00 UTC").days == set(range(7))
    assert parse_window("daily 10:00-11:00 UTC").days == set(range(7))


@pytest.mark.parametrize(("text", "says"), [
    ("Mon-Fri 09:00-17:00", r"expected \[DAYS\] HH:MM-HH:MM ZONE"),
    ("Mon 09:00-17:00 Mars/Olympus", "unknown time zone"),
    ("Someday 09:00-17:00 UTC", "not a day"),
    ("Mon 09:60-17:00 UTC", "not a time of day"),
    ("Mon 24:00-01:00 UTC", "not a time of day"),
    ("Mon 09:00-09:00 UTC", "same time"),
])
def test_bad_windows_say_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_window(text)


def test_denial_names_the_next_opening() -> None:
    """Outside the allow windows, or inside a deny window, the detail says when it opens."""
    allow = [windows_of(["Mon-Fri 09:00-17:00 Europe/Berlin"])]
    friday_evening = ts("2027-01-15T18:00:00")
    detail = window_denial(allow, (), friday_evening)
    assert detail is not None
    assert "outside the allow windows 'Mon-Fri 09:00-17:00 Europe/Berlin'" in detail
    assert "next opening 2027-01-18T08:00:00Z" in detail  # Monday 09:00 CET
    assert window_denial(allow, (), ts("2027-01-15T10:00:00")) is None
    # A deny window inside the allow window pushes the opening to its end.
    deny = windows_of(["Mon 08:00-12:00 Europe/Berlin"])
    assert iso(next_opening(allow, deny, friday_evening)) == "2027-01-18 11:00"
    inside = window_denial(allow, deny, ts("2027-01-18T09:00:00"))
    assert inside is not None and "inside deny window 'Mon 08:00-12:00 Europe/Berlin'" in inside
    # Global and rule allow windows must both hold: no overlap, no opening.
    never = [windows_of(["Mon 09:00-10:00 UTC"]), windows_of(["Tue 09:00-10:00 UTC"])]
    assert "no opening in the next 8 days" in (window_denial(never, (), friday_evening) or "")


def test_selectors_match_like_prometheus() -> None:
    sel = parse_selector('{alertname="NodeDown", severity=~"critical|page"}')
    assert sel.matches({"alertname": "NodeDown", "severity": "page", "node": "a"})
    assert not sel.matches({"alertname": "NodeDown", "severity": "pager"})  # anchored
    assert not sel.matches({"alertname": "NodeDown"})  # missing label = ""
    assert parse_selector("KubeAPIDown").matches({"alertname": "KubeAPIDown"})
    bare = parse_selector('alertname=X, severity!="info", team!~"db.*"')
    assert bare.matches({"alertname": "X", "severity": "warning", "team": "web"})
    assert not bare.matches({"alertname": "X", "severity": "warning", "team": "dba"})
    for bad in ("", "{}", "a b", 'x=~"("', '{alertname="X"'):
        with pytest.raises(ValueError, match="alert selector"):
            parse_selector(bad)


NOW = ts("2027-01-15T08:00:00")


@pytest.mark.parametrize(("raw", "frozen", "until", "reason"), [
    (None, False, None, ""),
    ("", False, None, ""),
    ("false", False, None, ""),
    ("true", True, None, ""),
    ("2027-01-15T09:00:00Z year-end freeze", True, "2027-01-15 09:00", "year-end freeze"),
    ("2027-01-15T07:00:00Z over", False, None, ""),  # ended by itself
    ("{until: 2027-01-16T00:00:00Z, reason: release}", True, "2027-01-16 00:00", "release"),
    ("{until: '2027-01-15T11:00:00+02:00', reason: r}", True, "2027-01-15 09:00", "r"),
    ("{until: 2027-01-14T00:00:00Z}", False, None, ""),
    ("{until: next tuesday, reason: r}", True, None, "r"),  # unreadable until: fail safe
    ("{broken", True, None, "{broken"),
    ("change freeze, ask #ops", True, None, "change freeze, ask #ops"),
])
def test_freeze_values(raw: str | None, frozen: bool, until: str | None, reason: str) -> None:
    f = parse_freeze(raw, NOW)
    assert (f is not None) == frozen
    if f is not None:
        assert (iso(f.until) if f.until is not None else None) == until
        assert f.reason == reason


def test_settings_take_windows_and_selectors_from_flags_and_config(tmp_path: object) -> None:
    """On the command line and in the environment, items are ';'-separated (a selector or a
    day list contains commas); an invalid one is refused with the setting named."""
    env = {"NODEMEDIC_SAFETY_DENY_WINDOWS": "Sat,Sun 00:00-24:00 UTC; Fri 18:00-24:00 UTC",
           "NODEMEDIC_SAFETY_ALERT_GATE_ALERTS": '{alertname="A", severity=~"critical|page"}; B',
           "NODEMEDIC_SAFETY_ALERT_GATE_ALERTMANAGER_URL": "http://am:9093/"}
    s = load_settings(environ=env)
    assert s.safety_deny_windows == ("Sat,Sun 00:00-24:00 UTC", "Fri 18:00-24:00 UTC")
    assert s.safety_alert_gate_alerts == ('{alertname="A", severity=~"critical|page"}', "B")
    assert s.safety_alert_gate_alertmanager_url == "http://am:9093"
    with pytest.raises(SettingsError, match=r"NODEMEDIC_SAFETY_ALLOW_WINDOWS.*unknown time zone"):
        load_settings(environ={"NODEMEDIC_SAFETY_ALLOW_WINDOWS": "Mon 09:00-10:00 Nowhere"})
    with pytest.raises(SettingsError, match=r"neither --safety\.alert-gate-prometheus-url"):
        load_settings(environ={"NODEMEDIC_SAFETY_ALERT_GATE_ALERTS": "A"})
    with pytest.raises(SettingsError, match="unknown action 'reboot'"):
        load_settings(environ={"NODEMEDIC_SAFETY_GATED_ACTIONS": "cordon,reboot"})
