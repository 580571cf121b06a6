"""NCRONTAB schedules as the Functions host reads them: six fields, seconds first.

    {second} {minute} {hour} {day} {month} {day-of-week}

Each field takes `*`, a value, a range `a-b`, a step `*/n`, `a-b/n` or `a/n`, and comma lists of
those; months and days of the week also take English three-letter names (`Jan`, `Mon`); Sunday is
0 (or 7). Like the NCrontab library the host uses, a day must match both the day-of-month and the
day-of-week fields. Times are UTC, the host's default on Azure (no WEBSITE_TIME_ZONE).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from autoretrain.errors import ConfigError

__all__ = ["NcrontabSchedule"]

_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
# (name, lowest, highest, names) per field, in schedule order.
_FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("second", 0, 59, ()),
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day", 1, 31, ()),
    ("month", 1, 12, _MONTHS),
    ("day-of-week", 0, 7, _DAYS),
)
# A schedule that matches nothing (e.g. 30 February) must not loop forever.
_SEARCH_YEARS = 5


@dataclass(frozen=True, slots=True)
class NcrontabSchedule:
    """A parsed six-field NCRONTAB expression; `next_after(t)` gives the next fire time."""

    expression: str
    seconds: frozenset[int]
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]

    @classmethod
    def parse(cls, expression: str) -> NcrontabSchedule:
        """Parse `expression`; a malformed one raises ConfigError naming it."""
        parts = expression.split()
        if len(parts) != 6:
            raise ConfigError(
                f"timer schedule {expression!r} has {len(parts)} fields; NCRONTAB needs 6 "
                "({second} {minute} {hour} {day} {month} {day-of-week}), e.g. '0 */5 * * * *'."
            )
        sets = [
            _parse_field(expression, part, name, low, high, names)
            for part, (name, low, high, names) in zip(parts, _FIELDS, strict=True)
        ]
        weekdays = frozenset(0 if d == 7 else d for d in sets[5])
        return cls(expression, sets[0], sets[1], sets[2], sets[3], sets[4], weekdays)

    def next_after(self, after: datetime) -> datetime:
        """The first fire time strictly after `after` (naive times are taken as UTC)."""
        if after.tzinfo is None:
            after = after.replace(tzinfo=UTC)
        t = after.astimezone(UTC).replace(microsecond=0) + timedelta(seconds=1)
        limit = t + timedelta(days=366 * _SEARCH_YEARS)
        while t < limit:
            if t.month not in self.months:
                t = _first_of_next_month(t)
            elif t.day not in self.days or (t.weekday() + 1) % 7 not in self.weekdays:
                t = t.replace(hour=0, minute=0, second=0) + timedelta(days=1)
            elif t.hour not in self.hours:
                t = t.replace(minute=0, second=0) + timedelta(hours=1)
            elif t.minute not in self.minutes:
                t = t.replace(second=0) + timedelta(minutes=1)
            elif t.second not in self.seconds:
                t += timedelta(seconds=1)
            else:
                return t
        raise ConfigError(
            f"timer schedule {self.expression!r} never fires within {_SEARCH_YEARS} years after "
            f"{after.isoformat()}; check its day and month fields."
        )


def _first_of_next_month(t: datetime) -> datetime:
    year, month = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
    return t.replace(year=year, month=month, day=1, hour=0, minute=0, second=0)


def _parse_field(
    expression: str, text: str, name: str, low: int, high: int, names: tuple[str, ...]
) -> frozenset[int]:
    def bad(why: str) -> ConfigError:
        return ConfigError(f"timer schedule {expression!r}: {name} field {text!r} {why}.")

    def value(token: str) -> int:
        if token.lower() in names:
            return names.index(token.lower()) + (1 if names is _MONTHS else 0)
        if not token.isdigit():
            raise bad(f"has {token!r}, which is not a number")
        number = int(token)
        if not low <= number <= high:
            raise bad(f"has {number}, outside {low}-{high}")
        return number

    result: set[int] = set()
    for item in text.split(","):
        span, _, step_text = item.partition("/")
        step = 1
        if step_text:
            if not step_text.isdigit() or int(step_text) == 0:
                raise bad(f"has step {step_text!r}; use a whole number above 0")
            step = int(step_text)
        if span == "*":
            start, stop = low, high
        elif "-" in span:
            first, _, last = span.partition("-")
            start, stop = value(first), value(last)
            if start > stop:
                raise bad(f"has range {span!r} that runs backwards")
        else:
            start = value(span)
            # 'a/n' means from a to the end in steps of n, as in cron.
            stop = high if step_text else start
        result.update(range(start, stop + 1, step))
    return frozenset(result)
