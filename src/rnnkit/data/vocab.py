"""A token vocabulary that can be stored in a run folder or checkpoint as JSON."""

from __future__ import annotations

from collections import Counter
from typing import Iterable

from .errors import DataError

UNK = "<unk>"


class Vocab:
    """Tokens to ids and back; ids follow the specials, then count (desc), then token.

    >>> v = Vocab.build("abracadabra")
    >>> v.itos
    ['<unk>', 'a', 'b', 'r', 'c', 'd']
    >>> v.encode("cab!")
    [4, 1, 2, 0]
    >>> "".join(v.decode([2, 3, 1]))
    'bra'
    >>> Vocab.from_dict(v.to_dict()) == v
    True
    """

    def __init__(self, itos: Iterable[str], specials: Iterable[str] = (UNK,)):
        self.itos: list[str] = list(itos)
        self.specials: tuple[str, ...] = tuple(specials)
        self.stoi: dict[str, int] = {t: i for i, t in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            dup = next(t for t in self.itos if self.itos.count(t) > 1)
            raise DataError(f"the vocabulary lists {dup!r} twice; rebuild it with Vocab.build")
        missing = [s for s in self.specials if s not in self.stoi]
        if missing:
            raise DataError(f"the vocabulary lacks its special tokens {missing}; rebuild it with Vocab.build")

    @classmethod
    def build(
        cls,
        tokens: Iterable[str],
        min_count: int = 1,
        max_size: int | None = None,
        specials: Iterable[str] = (UNK,),
    ) -> "Vocab":
        """Count tokens; keep those seen min_count times, at most max_size entries in all (specials included)."""
        specials = tuple(specials)
        counts = Counter(tokens)
        for s in specials:
            counts.pop(s, None)  # a special keeps its fixed id even if it occurs in the text
        ranked = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
        if max_size is not None:
            if max_size <= len(specials):
                raise DataError(
                    f"max_size {max_size} leaves no room beside the {len(specials)} special tokens; pass a larger size"
                )
            ranked = ranked[: max_size - len(specials)]
        if not ranked:
            raise DataError(f"no token occurs at least {min_count} times; pass more text or a lower min_count")
        return cls(list(specials) + ranked, specials)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and (self.itos, self.specials) == (other.itos, other.specials)

    def __repr__(self) -> str:
        return f"Vocab({len(self)} tokens)"

    @property
    def unk_index(self) -> int | None:
        """The id unknown tokens map to, or None when the vocabulary has no <unk>."""
        return self.stoi.get(UNK)

    def encode(self, tokens: Iterable[str], strict: bool = False) -> list[int]:
        """Ids of tokens. Unknown tokens map to <unk>, or raise when strict (or no <unk>).

        >>> Vocab.build("ab").encode("ax", strict=True)
        Traceback (most recent call last):
        ...
        rnnkit.data.errors.DataError: 'x' at position 1 is not in the vocabulary of 3 tokens; use only tokens seen in training
        """
        unk = None if strict else self.unk_index
        ids = []
        for pos, tok in enumerate(tokens):
            i = self.stoi.get(tok, unk)
            if i is None:
                raise DataError(
                    f"{tok!r} at position {pos} is not in the vocabulary of {len(self)} tokens; "
                    "use only tokens seen in training"
                )
            ids.append(i)
        return ids

    def decode(self, ids: Iterable[int]) -> list[str]:
        """Tokens of ids (ints or a 1-D tensor)."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.itos):
                raise DataError(
                    f"id {i} is outside the vocabulary of {len(self)} tokens; check the model's output size"
                )
            out.append(self.itos[i])
        return out

    def to_dict(self) -> dict:
        """A JSON-serialisable form; Vocab.from_dict restores it."""
        return {"itos": list(self.itos), "specials": list(self.specials)}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocab":
        if (
            not isinstance(d, dict)
            or not isinstance(d.get("itos"), list)
            or not all(isinstance(t, str) for t in d["itos"])
        ):
            raise DataError(
                "the stored vocabulary is malformed (expected {'itos': [str, ...]}); the run folder may be damaged"
            )
        return cls(d["itos"], d.get("specials", [UNK]))
