"""Helpers that read infra/hooks/postdeploy.sh and postdeploy.ps1, shared by the tests under tests/infra.

The hooks are read as text, the way a reviewer reads them: continuation lines joined, string literals set
aside (so that a message quoting `az extension add` is not taken for a command), comments dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from infra_trees import HOOKS, INFRA

_STRINGS = {
    "sh": re.compile(r'"(?:\\.|[^"\\])*"|\'[^\']*\''),
    "ps1": re.compile(r'"(?:`.|[^"`])*"|\'(?:\'\'|[^\'])*\''),
}
_CONTINUATION = {"sh": "\\", "ps1": "`"}
# `az` where a command starts: line start, after ; & | ( { ! = or $(, or after a shell keyword.
_AZ_COMMAND = re.compile(r"(?:^|[;&|({!=]|\$\(|\b(?:then|do|else|if|until|while)\b)\s*az(?=\s|$)")
_COMMAND_END = re.compile(r"[;|)}]|&&")


@dataclass(frozen=True)
class _Line:
    """One logical line of a hook: `code` has each string literal replaced by `\\x00<n>\\x00`."""

    number: int
    text: str
    code: str
    strings: tuple[str, ...]

    def resolved(self, code: str | None = None) -> str:
        """`code` (default: the whole line) with the string literals put back, without their quotes."""
        return re.sub(
            r"\x00(\d+)\x00", lambda m: self.strings[int(m.group(1))][1:-1], self.code if code is None else code
        )


@dataclass(frozen=True)
class _AzCall:
    line: int
    args: str  # everything after `az`, strings put back without quotes
    subscription: str | None


def _hook_lines(text: str, kind: str) -> list[_Line]:
    lines: list[_Line] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        if not pending:
            if raw.lstrip().startswith("#") or not raw.strip():
                continue
            start = number
        if raw.rstrip().endswith(_CONTINUATION[kind]):
            pending.append(raw.rstrip()[:-1])
            continue
        if kind == "ps1" and raw.rstrip().endswith(","):  # PowerShell continues a list after a comma
            pending.append(raw)
            continue
        pending.append(raw)
        logical = " ".join(part.strip() for part in pending)
        pending = []
        strings: list[str] = []

        def keep(match: re.Match[str], strings: list[str] = strings) -> str:
            strings.append(match.group(0))
            return f"\x00{len(strings) - 1}\x00"

        code = _STRINGS[kind].sub(keep, logical)
        code = re.sub(r"(^|\s)#.*$", "", code)
        lines.append(_Line(start, logical, code, tuple(strings)))
    return lines


def _hook(script: str) -> tuple[str, list[_Line]]:
    text = (INFRA / "hooks" / script).read_text()
    return text, _hook_lines(text, HOOKS[script])


def _az_calls(lines: list[_Line]) -> list[_AzCall]:
    calls = []
    for line in lines:
        for match in _AZ_COMMAND.finditer(line.code):
            rest = line.code[match.end():]
            end = _COMMAND_END.search(rest)
            args = line.resolved(rest[: end.start()] if end else rest).strip()
            subscription = re.search(r"--subscription\s+(\S+)", args)
            calls.append(_AzCall(line.number, args, subscription.group(1) if subscription else None))
    return calls


def _checked_names(lines: list[_Line], kind: str) -> set[str]:
    """The variables the hook refuses to run without (its `for name in ...` / `$names = ...` list)."""
    for line in lines:
        if kind == "sh" and re.match(r"\s*for name in ", line.code):
            return set(re.findall(r"\b[A-Z][A-Z0-9_]+\b", line.code.split(";")[0]))
        if kind == "ps1" and re.match(r"\s*\$names\s*=", line.code):
            return {s.strip("'\"") for s in line.strings}
    return set()


def _env_reads(text: str, kind: str) -> set[str]:
    """Every environment variable the hook reads."""
    pattern = r"\$\{?([A-Z][A-Z0-9_]+)" if kind == "sh" else r"\$env:([A-Z][A-Z0-9_]+)"
    return set(re.findall(pattern, text)) | _checked_names(_hook_lines(text, kind), kind)


def _int_assignments(lines: list[_Line], kind: str) -> dict[str, int]:
    pattern = r"\s*(\w+)=(\d+)\s*$" if kind == "sh" else r"\s*\$(\w+)\s*=\s*(\d+)\s*$"
    return {m.group(1): int(m.group(2)) for line in lines if (m := re.match(pattern, line.code))}


def _enclosing_loop(lines: list[_Line], index: int, kind: str) -> list[_Line]:
    """The innermost loop (while/until ... done, or for/while (...) { ... }) around lines[index]."""
    start = re.compile(r"\s*(while|until)\b" if kind == "sh" else r"\s*(for|while)\s*\(")
    for first in range(index, -1, -1):
        if not start.match(lines[first].code):
            continue
        depth = 0
        for last in range(first, len(lines)):
            code = lines[last].code
            if kind == "sh":
                depth += len(re.findall(r"\bdo\b", code)) - len(re.findall(r"\bdone\b", code))
            else:
                depth += code.count("{") - code.count("}")
            if depth <= 0 and last > first:
                break
        if last >= index:
            return lines[first : last + 1]
    return []
