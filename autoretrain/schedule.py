"""Timer schedules as the Functions host reads them (NCRONTAB), computed by croniter.

    {second} {minute} {hour} {day} {month} {day-of-week}

Six fields, seconds first. Each takes `*`, a value, a range `a-b`, a step `*/n`, `a-b/n` or `a/n`,
and comma lists of those; months and days of the week also take English names, whole or their
start, as NCrontab reads them (`Jan`, `Monday`, `thurs`). Sunday is 0; 7 is refused, as the host
refuses it (NCrontab's days run 0-6; Unix cron also takes 7). Like the NCrontab library the host
uses, a day must match both the day-of-month and the day-of-week fields. Times are UTC, the host's
default on Azure (no WEBSITE_TIME_ZONE).

croniter does the parsing and the calendar; this module holds it to that grammar: croniter also
takes five- and seven-field forms, `L`, `W`, `#`, `?`, `H` and `@daily`, and reads a range that runs
backwards (`5-2`) as one that wraps around, none of which the host accepts the same way.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from croniter import CroniterBadDateError, CroniterBadTypeRangeError, CroniterError, CroniterNotAlphaError, croniter

from autoretrain.domain.errors import ConfigError

__all__ = ["SHAPE", "TimerSchedule"]

SHAPE = "{second} {minute} {hour} {day} {month} {day-of-week}"
_EXAMPLE = "'0 */5 * * * *'"
# As NCrontab reads a name: the first of these that starts with it, whatever its case ('Mon',
# 'Monday', 'M'; 'Ma' is March, 'T' Tuesday). croniter knows three-letter names only: it is given numbers.
_MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december")
_DAYS = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
# (name, lowest, highest, names, what the names are) per field, in schedule order.
_FIELDS: tuple[tuple[str, int, int, tuple[str, ...], str], ...] = (
    ("second", 0, 59, (), ""),
    ("minute", 0, 59, (), ""),
    ("hour", 0, 23, (), ""),
    ("day", 1, 31, (), ""),
    ("month", 1, 12, _MONTHS, "a month name (Jan-Dec)"),
    ("day-of-week", 0, 6, _DAYS, "a day name (Sun-Sat)"),
)
_VALUE = r"\d+|[A-Za-z]+"
# One comma-separated item: `*`, `a` or `a-b`, then an optional `/n`.
_ITEM = re.compile(rf"(?:\*|(?P<first>{_VALUE})(?:-(?P<last>{_VALUE}))?)(?:/(?P<step>\d+))?")


@dataclass(frozen=True, slots=True)
class TimerSchedule:
    """A checked six-field NCRONTAB expression; `next_after(t)` gives the next fire time."""

    expression: str

    @classmethod
    def parse(cls, expression: str) -> TimerSchedule:
        """Check `expression`; a malformed one raises ConfigError with one line naming it."""
        parts = expression.split()
        if len(parts) != len(_FIELDS):
            raise ConfigError(
                f"timer schedule {expression!r} has {len(parts)} fields; NCRONTAB needs 6 ({SHAPE}), "
                f"e.g. {_EXAMPLE}."
            )
        for index, text in enumerate(parts):
            if why := _grammar_error(text, index):
                raise _field_error(expression, index, why)
        try:
            _croniter(expression)
        except (CroniterError, CroniterBadTypeRangeError):
            # croniter's messages show the fields reordered, or a traceback: name the item instead.
            for index in range(len(parts)):
                if why := _croniter_error(parts, index):
                    raise _field_error(expression, index, why) from None
            raise ConfigError(
                f"timer schedule {expression!r} is not valid NCRONTAB; use 6 fields ({SHAPE}), e.g. {_EXAMPLE}."
            ) from None
        return cls(expression)

    def next_after(self, after: datetime) -> datetime:
        """The first fire time strictly after `after`, in UTC (naive times are taken as UTC)."""
        if after.tzinfo is None:
            after = after.replace(tzinfo=UTC)
        after = after.astimezone(UTC)
        try:
            return _croniter(self.expression, after).get_next(datetime).astimezone(UTC)
        except CroniterBadDateError:
            raise ConfigError(
                f"timer schedule {self.expression!r} never fires after {after.isoformat()}; "
                "check its day and month fields."
            ) from None


def _croniter(expression: str, start: datetime | None = None) -> croniter[datetime]:
    # second_at_beginning: seconds are the first field, as in NCRONTAB (croniter's own six-field
    # form puts them last). day_or=False: a day must match day-of-month AND day-of-week.
    return croniter(_numeric(expression), start, ret_type=datetime, day_or=False, second_at_beginning=True)


def _numeric(expression: str) -> str:
    """The expression with each month and day name as its number (a name of neither stays, for
    croniter to refuse)."""
    fields = expression.split()
    for index, (_, _, _, names, _) in enumerate(_FIELDS[: len(fields)]):
        if names:
            fields[index] = re.sub(r"[A-Za-z]+", functools.partial(_as_number, names=names), fields[index])
    return " ".join(fields)


def _as_number(match: re.Match[str], names: tuple[str, ...]) -> str:
    number = _number(match[0], names)
    return match[0] if number is None else str(number)


def _field_error(expression: str, index: int, why: str) -> ConfigError:
    return ConfigError(
        f"timer schedule {expression!r}: {_FIELDS[index][0]} field {expression.split()[index]!r} {why}; "
        f"NCRONTAB needs 6 fields ({SHAPE}), e.g. {_EXAMPLE}."
    )


def _grammar_error(text: str, index: int) -> str | None:
    """What is wrong with field `text` by the NCRONTAB grammar, if anything."""
    _, low, high, names, named = _FIELDS[index]
    for item in text.split(","):
        match = _ITEM.fullmatch(item)
        tokens = [match["first"], match["last"]] if match else []
        words = [t for t in tokens if t and not t.isdigit()]
        # Quartz's L, W, LW and H, which croniter reads its own way, are not values to NCrontab.
        if match is None or (not names and any(len(word) <= 2 for word in words)):
            return f"has {item!r}; use *, a value, a range a-b, a step */n, a-b/n or a/n, or a comma list"
        first, last = (_number(token, names) for token in tokens)
        if any(token and value is None for token, value in zip(tokens, (first, last), strict=True)):
            return f"has {item!r}, which is not a number" + (f" or {named}" if named else "")
        if match["step"] is not None and int(match["step"]) == 0:
            return f"has step {match['step']!r}; use a whole number above 0"
        if first is not None and last is not None and first > last:
            return f"has range {match[0].partition('/')[0]!r} that runs backwards"
        for value in (first, last):
            if value is not None and not low <= value <= high:  # croniter takes a 7th weekday
                sunday = " (Sunday is 0: the Functions host refuses 7)" if names is _DAYS and value == 7 else ""
                return f"has {item!r}, outside {low}-{high}{sunday}"
    return None


def _number(token: str | None, names: tuple[str, ...]) -> int | None:
    if token is None:
        return None
    if token.isdigit():
        return int(token)
    lowered = token.lower()
    index = next((i for i, name in enumerate(names) if name.startswith(lowered)), None)
    return None if index is None else index + (1 if names is _MONTHS else 0)


def _croniter_error(parts: list[str], index: int) -> str | None:
    """What croniter finds wrong with field `index` (values, names), each item tried on its own."""
    _, low, high, _, named = _FIELDS[index]
    for item in parts[index].split(","):
        probe = ["*"] * len(parts)
        probe[index] = item
        try:
            _croniter(" ".join(probe))
        except CroniterNotAlphaError:
            return f"has {item!r}, which is not a number" + (f" or {named}" if named else "")
        except (CroniterError, CroniterBadTypeRangeError):
            return f"has {item!r}, outside {low}-{high}"
    return None
