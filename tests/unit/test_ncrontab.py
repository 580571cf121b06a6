"""NCRONTAB next-fire times, as the Functions host computes them (six fields, seconds first, UTC)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from autoretrain.errors import ConfigError
from autoretrain.local.ncrontab import NcrontabSchedule


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def fires(expression: str, start: str, count: int) -> list[str]:
    schedule = NcrontabSchedule.parse(expression)
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

    def test_weekdays_by_number_and_name_agree(self) -> None:
        """'0 30 9 * * 1-5' and '... Mon-Fri' skip the weekend (2026-11-28 is a Saturday)."""
        expected = ["2026-11-27 09:30:00 Fri", "2026-11-30 09:30:00 Mon", "2026-12-01 09:30:00 Tue"]
        assert fires("0 30 9 * * 1-5", "2026-11-26T10:00:00", 3) == expected
        assert fires("0 30 9 * * Mon-Fri", "2026-11-26T10:00:00", 3) == expected

    def test_sunday_is_zero_or_seven(self) -> None:
        """Day-of-week 7 means Sunday, as 0 does."""
        assert fires("0 0 12 * * 7", "2026-11-25T00:00:00", 1) == ["2026-11-29 12:00:00 Sun"]
        assert fires("0 0 12 * * 0", "2026-11-25T00:00:00", 1) == ["2026-11-29 12:00:00 Sun"]

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
        result = NcrontabSchedule.parse("0 0 * * * *").next_after(datetime(2026, 11, 25, 15, 4, 23))
        assert result == datetime(2026, 11, 25, 16, 0, 0, tzinfo=UTC)


class TestParseErrors:
    @pytest.mark.parametrize(
        ("expression", "message"),
        [
            ("*/5 * * * *", "timer schedule '*/5 * * * *' has 5 fields; NCRONTAB needs 6"),
            ("0 61 * * * *", "timer schedule '0 61 * * * *': minute field '61' has 61, outside 0-59."),
            ("0 */0 * * * *", "timer schedule '0 */0 * * * *': minute field '*/0' has step '0'"),
            ("0 0 5-2 * * *", "timer schedule '0 0 5-2 * * *': hour field '5-2' has range '5-2' that runs"),
            ("0 0 0 * Foo *", "timer schedule '0 0 0 * Foo *': month field 'Foo' has 'Foo', which is not"),
        ],
    )
    def test_malformed_schedule_names_the_value(self, expression: str, message: str) -> None:
        """A bad schedule raises ConfigError with one line that names it."""
        with pytest.raises(ConfigError) as caught:
            NcrontabSchedule.parse(expression)
        assert str(caught.value).startswith(message)
        assert "\n" not in str(caught.value)

    def test_impossible_date_raises_instead_of_looping(self) -> None:
        """'0 0 0 30 2 *' (30 February) never fires; asking says so."""
        with pytest.raises(ConfigError, match="never fires"):
            NcrontabSchedule.parse("0 0 0 30 2 *").next_after(at("2026-11-25T00:00:00"))
