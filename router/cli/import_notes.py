"""What a conversion says on stderr, and in which order: warnings, notes, the environment to set,
and last, what could not be carried over, each with its reason."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TextIO


@dataclass
class Notes:
    """What the conversion says on stderr: warnings, notes, the environment to set, and what
    could not be carried over (path, reason), in the order they were found."""

    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # variable -> what it must hold
    dropped: list[tuple[str, str]] = field(default_factory=list)

    def drop(self, where: str, why: str) -> None:
        self.dropped.append((where, why))


def report(notes: Notes, err: TextIO) -> None:
    """The notes, in order: warnings, notes, the environment to set, and what was not carried over."""
    for line in notes.warnings:
        print(f"warning: {line}", file=err)
    for line in notes.notes:
        print(f"note: {line}", file=err)
    if notes.env:
        print("Set in the environment where fedrouter runs:", file=err)
        for name, what in notes.env.items():
            print(f"  {name}: {what}", file=err)
    if notes.dropped:
        print(f"Not carried over ({len(notes.dropped)}; no equivalent in fedrouter):", file=err)
        for where, why in notes.dropped:
            print(f"  {where}: {why}", file=err)


__all__ = ["Notes", "report"]
