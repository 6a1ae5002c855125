"""Markdown for docs/benchmarks.md: sections of tables, and the targets summary."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from harness import Stat


@dataclass(frozen=True)
class Target:
    """A goal from the issues, judged on the median (the range is shown beside it)."""

    what: str
    value: Stat
    goal: float
    at_least: bool  # True: value >= goal; False: value <= goal
    spec: str  # format of the numbers, e.g. ".2f"
    unit: str = ""

    def _ok(self, x: float) -> bool:
        return x >= self.goal if self.at_least else x <= self.goal

    @property
    def met(self) -> bool:
        return self._ok(self.value.median)

    @property
    def met_in_every_run(self) -> bool:
        return self._ok(self.value.lo if self.at_least else self.value.hi)

    @property
    def goal_text(self) -> str:
        return f"{'>=' if self.at_least else '<='} {self.goal:{self.spec}}{self.unit}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


@dataclass
class Section:
    title: str
    parts: list[str] = field(default_factory=list)

    def add(self, text: str) -> None:
        self.parts.append(text.strip("\n"))


@dataclass
class Doc:
    sections: list[Section] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)

    def section(self, title: str) -> Section:
        s = Section(title)
        self.sections.append(s)
        return s

    def targets_table(self) -> str:
        rows = []
        for t in self.targets:
            verdict = "**met**" if t.met else "**missed**"
            if t.met and not t.met_in_every_run:
                verdict += " (not in every run)"
            rows.append((t.what, t.goal_text, t.value.fmt(t.spec) + t.unit, verdict))
        return table(("Target", "Goal", "Median (min–max)", "Result"), rows)

    def render(self, head: str) -> str:
        out = [head.strip("\n")]
        if self.targets:
            out.append("## Targets\n\n" + self.targets_table())
        for s in self.sections:
            out.append(f"## {s.title}\n\n" + "\n\n".join(s.parts))
        return "\n\n".join(out) + "\n"
