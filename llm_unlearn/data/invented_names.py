"""Invented words for the embedded synthetic data: person, town and book names, never repeated within one
generator, and the month names their dates use."""

from __future__ import annotations

import random

_ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "r", "s", "t", "th", "v", "z", "")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "ia", "ou")
_CODAS = ("", "", "", "n", "r", "l", "s", "m", "nd", "rn", "th")
_TOWN_SUFFIXES = ("ford", "vik", "holm", "ara", "dale", "mere", "ton", "grad")
_TITLE_ADJECTIVES = (
    "Silent",
    "Crimson",
    "Hollow",
    "Distant",
    "Broken",
    "Golden",
    "Last",
    "Hidden",
    "Winter",
    "Paper",
    "Glass",
    "Wandering",
)
_TITLE_NOUNS = (
    "Harbor",
    "Lantern",
    "Orchard",
    "Compass",
    "Garden",
    "Tide",
    "Mirror",
    "Letters",
    "Bridge",
    "Archive",
    "Clockmaker",
    "Island",
)
MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


class Namer:
    """Unique invented words from syllables (never the same word twice within one generator)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()

    def word(self, syllables: int, suffixes: tuple[str, ...] = ("",)) -> str:
        while True:
            parts = [self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(syllables)]
            text = ("".join(parts) + self.rng.choice(_CODAS) + self.rng.choice(suffixes)).capitalize()
            if len(text) >= 4 and text not in self.used:
                self.used.add(text)
                return text

    def person(self) -> str:
        return f"{self.word(2)} {self.word(self.rng.choice((2, 3)))}"

    def town(self) -> str:
        return self.word(self.rng.choice((1, 2)), _TOWN_SUFFIXES)

    def title(self) -> str:
        form = self.rng.randrange(3)
        if form == 0:
            return f"The {self.rng.choice(_TITLE_ADJECTIVES)} {self.rng.choice(_TITLE_NOUNS)}"
        if form == 1:
            return f"The {self.rng.choice(_TITLE_NOUNS)} of {self.word(2)}"
        return f"{self.rng.choice(_TITLE_ADJECTIVES)} {self.rng.choice(_TITLE_NOUNS)} in {self.town()}"
