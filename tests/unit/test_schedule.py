"""NCRONTAB next-fire times, as the Functions host computes them (six fields, seconds first, UTC)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from autoretrain.domain.errors import ConfigError
from autoretrain.schedule import SHAPE, TimerSchedule
from autoretrain.settings import Settings

ROOT = Path(__file__).resolve().parent.parent.parent


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def fires(expression: str, start: str, count: int) -> list[str]:
    schedule = TimerSchedule.parse(expression)
    moment = at(start)
    result = []
    for _ in range(count):
        moment = schedule.next_after(moment)
        result.append(moment.strftime("%Y-%m-%d %H:%M:%S %a"))
    return result


class TestNextFire:
    def test_every_five_minutes_on_the_minute(self) -> None:
        """'0 */5 * * * *' fires at :00, :05, :10 ... seconds 0, strictly after the start."""
        assert fires("0 */5 * * * *", "2026-11-25T15:04:23", 3) == [
            "2026-11-25 15:05:00 Wed",
            "2026-11-25 15:10:00 Wed",
            "2026-11-25 15:15:00 Wed",
        ]

    def test_start_on_a_fire_time_gives_the_next_one(self) -> None:
        """A start that is itself a fire time is not returned again."""
        assert fires("0 */5 * * * *", "2026-11-25T15:05:00", 1) == ["2026-11-25 15:10:00 Wed"]

    def test_every_ten_seconds(self) -> None:
        """'*/10 * * * * *' steps the seconds field."""
        assert fires("*/10 * * * * *", "2026-11-25T23:59:45", 3) == [
            "2026-11-25 23:59:50 Wed",
            "2026-11-26 00:00:00 Thu",
            "2026-11-26 00:00:10 Thu",
        ]

    def test_lists_and_ranges(self) -> None:
        """'30 0,30 9-10 * * *' fires twice an hour in hours 9 and 10 only."""
        assert fires("30 0,30 9-10 * * *", "2026-11-25T10:31:00", 3) == [
            "2026-11-26 09:00:30 Thu",
            "2026-11-26 09:30:30 Thu",
            "2026-11-26 10:00:30 Thu",
        ]

    def test_names_are_read_as_ncrontab_reads_them(self) -> None:
        """NCrontab (the host's) takes any start of a month's or day's English name, whatever its case:
        the first name it starts ('Monday', 'thurs'; 'T' is Tuesday, 'Ma' March). croniter knows
        three-letter names only; before, 'Monday' was refused here and ran on Azure."""
        weekdays = fires("0 30 9 * * 1-5", "2026-11-26T10:00:00", 3)
        assert fires("0 30 9 * * Monday-Friday", "2026-11-26T10:00:00", 3) == weekdays
        assert fires("0 30 9 * * mon-FRIDAY", "2026-11-26T10:00:00", 3) == weekdays
        assert fires("0 0 12 * * T", "2026-11-25T00:00:00", 1) == ["2026-12-01 12:00:00 Tue"]
        assert fires("0 0 12 * * Thurs", "2026-11-25T00:00:00", 1) == ["2026-11-26 12:00:00 Thu"]
        assert fires("0 0 0 1 Ma *", "2026-11-25T00:00:00", 1) == ["2027-03-01 00:00:00 Mon"]
        assert fires("0 0 0 1 January,July *", "2026-11-25T00:00:00", 2) == ["2027-01-01 00:00:00 Fri",
                                                                             "2027-07-01 00:00:00 Thu"]
        with pytest.raises(ConfigError, match="has 'Mondays', which is not a number or a day name"):
            TimerSchedule.parse("0 0 0 * * Mondays")

    def test_weekdays_by_number_and_name_agree(self) -> None:
        """'0 30 9 * * 1-5' and '... Mon-Fri' skip the weekend (2026-11-28 is a Saturday)."""
        expected = ["2026-11-27 09:30:00 Fri", "2026-11-30 09:30:00 Mon", "2026-12-01 09:30:00 Tue"]
        assert fires("0 30 9 * * 1-5", "2026-11-26T10:00:00", 3) == expected
        assert fires("0 30 9 * * Mon-Fri", "2026-11-26T10:00:00", 3) == expected

    def test_sunday_is_zero_and_seven_is_refused_as_the_host_refuses_it(self) -> None:
        """Day-of-week 0 is Sunday. Unix cron also takes 7, croniter too; the Functions host's NCrontab
        has days 0-6 and refuses 7 (its timer would not run on Azure), so the local one refuses it too."""
        assert fires("0 0 12 * * 0", "2026-11-25T00:00:00", 1) == ["2026-11-29 12:00:00 Sun"]
        for expression in ("0 0 12 * * 7", "0 0 12 * * 6-7", "0 0 12 * * 6,7", "0 0 12 * * 7/2"):
            with pytest.raises(ConfigError, match=r"outside 0-6 \(Sunday is 0: the Functions host refuses 7\)"):
                TimerSchedule.parse(expression)

    def test_month_and_day_cross_the_year(self) -> None:
        """'0 0 0 1 Jan,Jul *' fires on the first of January and July."""
        assert fires("0 0 0 1 Jan,Jul *", "2026-11-25T00:00:00", 3) == [
            "2027-01-01 00:00:00 Fri",
            "2027-07-01 00:00:00 Thu",
            "2028-01-01 00:00:00 Sat",
        ]

    def test_leap_day(self) -> None:
        """'0 0 6 29 2 *' waits for the next 29 February."""
        assert fires("0 0 6 29 2 *", "2026-11-25T00:00:00", 1) == ["2028-02-29 06:00:00 Tue"]

    def test_range_with_step(self) -> None:
        """'0 10-40/15 * * * *' fires at minutes 10, 25 and 40."""
        assert fires("0 10-40/15 * * * *", "2026-11-25T15:00:00", 4) == [
            "2026-11-25 15:10:00 Wed",
            "2026-11-25 15:25:00 Wed",
            "2026-11-25 15:40:00 Wed",
            "2026-11-25 16:10:00 Wed",
        ]

    def test_day_of_month_and_weekday_must_both_match(self) -> None:
        """'0 0 0 13 * 5' is Friday the 13th (NCrontab ANDs the two day fields)."""
        assert fires("0 0 0 13 * 5", "2026-11-25T00:00:00", 2) == [
            "2027-08-13 00:00:00 Fri",
            "2028-10-13 00:00:00 Fri",
        ]

    def test_naive_start_is_utc(self) -> None:
        """A naive datetime is read as UTC, and the result is UTC-aware."""
        result = TimerSchedule.parse("0 0 * * * *").next_after(datetime(2026, 11, 25, 15, 4, 23))
        assert result == datetime(2026, 11, 25, 16, 0, 0, tzinfo=UTC)

    # ---- beyond the cases above: what croniter must be configured for ----------------------------

    def test_seconds_come_first(self) -> None:
        """The first field is the second: '15 * * * * *' fires at :15 of every minute, and
        '0 15 * * * *' at minute 15 of every hour (croniter's own six-field form has seconds last)."""
        assert fires("15 * * * * *", "2026-11-25T15:00:00", 2) == [
            "2026-11-25 15:00:15 Wed",
            "2026-11-25 15:01:15 Wed",
        ]
        assert fires("0 15 * * * *", "2026-11-25T15:00:00", 2) == [
            "2026-11-25 15:15:00 Wed",
            "2026-11-25 16:15:00 Wed",
        ]

    def test_both_day_fields_must_match_not_either(self) -> None:
        """'0 0 0 1 * Mon' is a 1st that is a Monday, not every 1st and every Monday (cron's OR)."""
        assert fires("0 0 0 1 * Mon", "2026-11-25T00:00:00", 2) == [
            "2027-02-01 00:00:00 Mon",
            "2027-03-01 00:00:00 Mon",
        ]
        assert fires("0 0 0 1-7 * 0", "2026-11-25T00:00:00", 2) == [
            "2026-12-06 00:00:00 Sun",
            "2027-01-03 00:00:00 Sun",
        ]

    def test_sunday_in_a_list_and_by_name(self) -> None:
        """0 is Sunday in a list too, and 'Sun' names it."""
        weekend = ["2026-11-28 12:00:00 Sat", "2026-11-29 12:00:00 Sun", "2026-12-05 12:00:00 Sat"]
        assert fires("0 0 12 * * 6,0", "2026-11-25T00:00:00", 3) == weekend
        assert fires("0 0 12 * * Sat,Sun", "2026-11-25T00:00:00", 3) == weekend

    def test_rare_dates_are_found_years_ahead(self) -> None:
        """'0 0 6 29 2 Mon' (29 February on a Monday) next comes in 2044."""
        assert fires("0 0 6 29 2 Mon", "2026-11-25T00:00:00", 1) == ["2044-02-29 06:00:00 Mon"]

    def test_other_time_zones_and_fractions_of_a_second(self) -> None:
        """An aware start in another zone is converted; a fraction of a second past a fire time
        does not give that fire time again."""
        schedule = TimerSchedule.parse("0 */5 * * * *")
        plus_two = timezone(timedelta(hours=2))
        assert schedule.next_after(datetime(2026, 11, 25, 17, 4, 23, tzinfo=plus_two)) == at("2026-11-25T15:05:00")
        assert schedule.next_after(at("2026-11-25T15:05:00.500000")) == at("2026-11-25T15:10:00")
        assert schedule.next_after(at("2026-11-25T15:04:59.500000")) == at("2026-11-25T15:05:00")


class TestParseErrors:
    @pytest.mark.parametrize(
        ("expression", "message"),
        [
            ("*/5 * * * *", "timer schedule '*/5 * * * *' has 5 fields; NCRONTAB needs 6"),
            ("0 61 * * * *", "timer schedule '0 61 * * * *': minute field '61' has '61', outside 0-59"),
            ("0 */0 * * * *", "timer schedule '0 */0 * * * *': minute field '*/0' has step '0'"),
            ("0 0 5-2 * * *", "timer schedule '0 0 5-2 * * *': hour field '5-2' has range '5-2' that runs"),
            ("0 0 0 * Foo *", "timer schedule '0 0 0 * Foo *': month field 'Foo' has 'Foo', which is not"),
            # Beyond the cases above: forms croniter takes but the host does not (or reads otherwise).
            ("0 0 0 * * * 2027", "timer schedule '0 0 0 * * * 2027' has 7 fields; NCRONTAB needs 6"),
            ("@daily", "timer schedule '@daily' has 1 fields; NCRONTAB needs 6"),
            ("0 0 0 L * *", "timer schedule '0 0 0 L * *': day field 'L' has 'L'; use *, a value"),
            ("0 0 0 * * 1#2", "timer schedule '0 0 0 * * 1#2': day-of-week field '1#2' has '1#2'; use"),
            ("0 0 0 ? * *", "timer schedule '0 0 0 ? * *': day field '?' has '?'; use"),
            ("0 0 H * * *", "timer schedule '0 0 H * * *': hour field 'H' has 'H'; use"),
            ("0 0 0 * * Fri-Mon", "timer schedule '0 0 0 * * Fri-Mon': day-of-week field 'Fri-Mon' has range"),
            ("0 0 0 * * 8", "timer schedule '0 0 0 * * 8': day-of-week field '8' has '8', outside 0-6"),
            ("0 1,2,99 * * * *", "timer schedule '0 1,2,99 * * * *': minute field '1,2,99' has '99', outside"),
            ("abc 0 0 * * *", "timer schedule 'abc 0 0 * * *': second field 'abc' has 'abc', which is not a"),
        ],
    )
    def test_malformed_schedule_names_the_value(self, expression: str, message: str) -> None:
        """A bad schedule raises ConfigError with one line that names it."""
        with pytest.raises(ConfigError) as caught:
            TimerSchedule.parse(expression)
        assert str(caught.value).startswith(message)
        assert "\n" not in str(caught.value)

    def test_malformed_schedule_shows_the_expected_shape(self) -> None:
        """The one line says what a schedule looks like, with an example."""
        with pytest.raises(ConfigError) as caught:
            TimerSchedule.parse("0 0 0 * Foo *")
        assert str(caught.value).endswith(f"NCRONTAB needs 6 fields ({SHAPE}), e.g. '0 */5 * * * *'.")
        assert SHAPE == "{second} {minute} {hour} {day} {month} {day-of-week}"

    def test_impossible_date_raises_instead_of_looping(self) -> None:
        """'0 0 0 30 2 *' (30 February) never fires; asking says so."""
        with pytest.raises(ConfigError, match="never fires"):
            TimerSchedule.parse("0 0 0 30 2 *").next_after(at("2026-11-25T00:00:00"))

    def test_a_schedule_that_matches_nothing_says_so_in_one_line(self) -> None:
        """'0 0 0 31 4,6,9,11 *' (the 31st of a 30-day month) parses, but never fires."""
        schedule = TimerSchedule.parse("0 0 0 31 4,6,9,11 *")
        with pytest.raises(ConfigError) as caught:
            schedule.next_after(at("2026-11-25T00:00:00"))
        assert str(caught.value).startswith("timer schedule '0 0 0 31 4,6,9,11 *' never fires after 2026-11-25")
        assert "\n" not in str(caught.value)


def test_settings_reject_a_bad_reconcile_schedule_in_one_line() -> None:
    """AUTORETRAIN_RECONCILE_SCHEDULE is checked at start, and the error names the setting."""
    assert Settings.from_env({"AUTORETRAIN_RECONCILE_SCHEDULE": "0 0 12 * * 0"}).reconcile_schedule == "0 0 12 * * 0"
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"AUTORETRAIN_RECONCILE_SCHEDULE": "*/5 * * * *"})
    assert str(caught.value).startswith(
        "AUTORETRAIN_RECONCILE_SCHEDULE: timer schedule '*/5 * * * *' has 5 fields; NCRONTAB needs 6"
    )
    assert "\n" not in str(caught.value)


def test_settings_do_not_import_the_local_tools() -> None:
    """What runs on Azure (settings, and the schedule it checks) imports nothing from autoretrain.local."""
    code = (
        "import sys; from autoretrain.settings import Settings; Settings.from_env({}); "
        "print(sorted(m for m in sys.modules if m.startswith('autoretrain.local')))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
