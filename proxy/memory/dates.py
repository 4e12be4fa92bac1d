"""Date cues: the months and years a question names ("in June", "in July 2023"), to prefer memories
from then. Relative phrases ("last year", "4 years ago") are not read."""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import datetime

_MONTHS = {name: number for number, name in enumerate(calendar.month_name) if name}
# month names as written (capitalized); "May" only as a date ("in May", "May 2023"), not "May I ..."
_CUE = re.compile(
    r"\b(" + "|".join(name for name in _MONTHS if name != "May") + r"|(?<=in )May|May(?= \d))\b|\b((?:19|20)\d\d)\b"
)


@dataclass(frozen=True, slots=True)
class DateCues:
    months: frozenset[int]
    years: frozenset[int]

    def __bool__(self) -> bool:
        return bool(self.months or self.years)

    def match(self, at: datetime) -> bool:
        """Whether ``at`` falls in a month and a year the question names (either, when it names one kind)."""
        return (not self.months or at.month in self.months) and (not self.years or at.year in self.years)


def date_cues(text: str) -> DateCues:
    months: set[int] = set()
    years: set[int] = set()
    for month, year in _CUE.findall(text):
        if month:
            months.add(_MONTHS[month])
        if year:
            years.add(int(year))
    return DateCues(frozenset(months), frozenset(years))
