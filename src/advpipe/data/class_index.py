"""The 1000 ILSVRC-2012 classes: index <-> WordNet id <-> human-readable name.

The table ships with the package (``imagenet_classes.csv``), so it is available
offline. Index order is the standard one used by every ImageNet-trained model
(Keras, TF-Slim, PyTorch): classes sorted by WordNet id.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources


@dataclass(frozen=True)
class ImageNetClasses:
    wnids: tuple[str, ...]
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.wnids)

    def index_of(self, wnid: str) -> int:
        try:
            return self._wnid_to_index[wnid]
        except KeyError:
            raise KeyError(f"'{wnid}' is not one of the 1000 ILSVRC-2012 WordNet ids") from None

    @property
    def _wnid_to_index(self) -> dict[str, int]:
        return _wnid_index(self.wnids)

    def wnid_to_index(self) -> dict[str, int]:
        return dict(self._wnid_to_index)

    def short_name(self, index: int) -> str:
        """The first lemma of a class name ("tench" for "tench, Tinca tinca")."""
        return self.names[index].split(",")[0].strip()


@lru_cache(maxsize=1)
def _wnid_index(wnids: tuple[str, ...]) -> dict[str, int]:
    return {w: i for i, w in enumerate(wnids)}


@lru_cache(maxsize=1)
def imagenet_classes() -> ImageNetClasses:
    """Load the bundled class table (validated: 1000 rows, indices 0..999, unique wnids)."""
    text = resources.files("advpipe.data").joinpath("imagenet_classes.csv").read_text()
    rows = list(csv.DictReader(text.splitlines()))
    if [int(r["index"]) for r in rows] != list(range(1000)):
        raise RuntimeError("imagenet_classes.csv is corrupt: indices must be 0..999 in order")
    wnids = tuple(r["wnid"] for r in rows)
    if len(set(wnids)) != 1000:
        raise RuntimeError("imagenet_classes.csv is corrupt: WordNet ids are not unique")
    return ImageNetClasses(wnids=wnids, names=tuple(r["name"] for r in rows))
