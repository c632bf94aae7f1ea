"""Class sets: how raw labels (letters, folder names, integer codes) map to contiguous class indices.

The default set is Sign Language MNIST's 24 letters A-Y without J and Z, stored as indices 0-23.
Integer labels follow the dataset's CSV convention: the letter's position in A-Z (A=0 ... Y=24, so 9 and
25 are invalid). Another dataset only needs another ClassSet (``digits``, or a comma-separated list).
"""
from __future__ import annotations

import string
from dataclasses import dataclass, field

from signq.errors import ConfigError

LETTERS24 = tuple(c for c in string.ascii_uppercase if c not in "JZ")


@dataclass(frozen=True)
class ClassSet:
    """Class names in index order, plus integer codes -> index (``codes[i]`` is class i's code)."""

    names: tuple[str, ...]
    codes: tuple[int, ...]
    _by_name: dict = field(init=False, repr=False, compare=False)
    _by_code: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if len(self.names) != len(self.codes) or len(set(n.casefold() for n in self.names)) != len(self.names):
            raise ConfigError(f"Class names must be unique and match their codes. Received: names={self.names!r}")
        object.__setattr__(self, "_by_name", {n.casefold(): i for i, n in enumerate(self.names)})
        object.__setattr__(self, "_by_code", {c: i for i, c in enumerate(self.codes)})

    @classmethod
    def parse(cls, spec: str) -> "ClassSet":
        """``letters24`` (default), ``digits``, or ``name1,name2,...`` (codes 0..n-1)."""
        spec = (spec or "letters24").strip()
        if spec == "letters24":
            return cls(LETTERS24, tuple(ord(c) - ord("A") for c in LETTERS24))
        if spec == "digits":
            return cls(tuple(str(d) for d in range(10)), tuple(range(10)))
        names = tuple(n.strip() for n in spec.split(",") if n.strip())
        if len(names) < 2:
            raise ConfigError(f"A class set needs at least two classes: 'letters24', 'digits' or 'a,b,...'. Received: {spec!r}")
        return cls(names, tuple(range(len(names))))

    @classmethod
    def from_names(cls, names) -> "ClassSet":
        """The class set of a model's class names: the named sets keep their codes, others count from 0."""
        for spec in ("letters24", "digits"):
            known = cls.parse(spec)
            if tuple(names) == known.names:
                return known
        return cls(tuple(names), tuple(range(len(names))))

    def to_json(self) -> dict:
        return {"names": list(self.names), "codes": list(self.codes)}

    @classmethod
    def from_json(cls, d: dict) -> "ClassSet":
        return cls(tuple(d["names"]), tuple(d["codes"]))

    def __len__(self):
        return len(self.names)

    def index(self, label) -> int | None:
        """Class index of a raw label, or None when it is not in the set.

        Integers (and strings of digits that are not class names) are codes; strings are names in any case.
        """
        if isinstance(label, bool) or label is None:
            return None
        if isinstance(label, (int, float)):
            return self._by_code.get(int(label)) if float(label).is_integer() else None
        text = str(label).strip()
        hit = self._by_name.get(text.casefold())
        if hit is not None:
            return hit
        if text.lstrip("-").isdigit():
            return self._by_code.get(int(text))
        return None

    def code_lookup(self, max_code: int = 1024):
        """A numpy-friendly table code -> index (-1 for invalid codes), for vectorised CSV/npz labels."""
        import numpy as np

        table = np.full(max(max_code, max(self.codes) + 1), -1, dtype=np.int32)
        table[list(self.codes)] = np.arange(len(self.codes), dtype=np.int32)
        return table
