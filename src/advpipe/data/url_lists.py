"""Parse ImageNet-style URL lists into ordered ``UrlEntry`` records.

Two on-disk formats are understood:

``fall11``
    The ``fall11_urls.txt`` format of the ImageNet 2011 release: one
    ``<wnid>_<n><TAB><url>`` per line, e.g.
    ``n01440764_10026\\thttp://farm1.static.flickr.com/...jpg``.  The wnid is
    mapped to a class index with a caller-supplied ``wnid -> index`` mapping;
    lines whose wnid is not in the mapping are skipped (and counted).

``csv``
    A plain CSV ``url,class_index`` or ``class_index,url`` with an optional
    header line.  With a header the columns are located by name (``url``,
    ``class_index`` and an optional ``wnid``) and may come in any order;
    without one, each row's order is recognised from which field is the URL.

A leading UTF-8 byte-order mark is stripped (files are read as ``utf-8-sig``,
and a ``\ufeff`` at the start of the first given line is removed), so it
neither hides the first fall11 line nor the CSV header.

The real ``fall11_urls.txt`` contains latin-1 junk, blank lines and malformed
lines, so reading is tolerant: the file is decoded as UTF-8 with
``errors="replace"``, blank lines are ignored and malformed lines are counted
in :class:`ParseStats` (with a few examples) instead of raising.  The file is
streamed, so the 14M-line original can be filtered to a class subset without
holding it in memory.

Entries keep file order; :func:`select` groups them per class for the
downloader.
"""

from __future__ import annotations

import csv
import itertools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

__all__ = [
    "FORMATS",
    "ParseStats",
    "ParsedUrlList",
    "UrlEntry",
    "detect_format",
    "parse_url_lines",
    "read_url_list",
    "select",
]

Format = Literal["auto", "fall11", "csv"]
FORMATS: tuple[str, ...] = ("auto", "fall11", "csv")

#: ``n01440764_10026`` -- a WordNet id followed by an image number.
_FALL11_KEY = re.compile(r"^(n\d{8})_(\d+)$")
#: A fall11 line, used only for format detection.
_FALL11_LINE = re.compile(r"^n\d{8}_\d+\s+\S")
_URL_SCHEME = re.compile(r"^https?://", re.IGNORECASE)
#: How many non-blank lines :func:`detect_format` looks at.
_DETECT_LINES = 50
#: How many malformed lines are kept as examples in :class:`ParseStats`.
_MAX_BAD_EXAMPLES = 20
#: How many malformed line numbers are kept in :class:`ParseStats`.
_MAX_BAD_LINES = 1000
_BOM = "\ufeff"


@dataclass(frozen=True, slots=True)
class UrlEntry:
    """One image URL of a URL list.

    Attributes:
        class_index: class index (0..999 for ILSVRC-2012).
        wnid: WordNet id of the class, or ``None`` when the list doesn't say
            (a CSV without a ``wnid`` column and no ``index_to_wnid`` mapping).
        url: the URL exactly as listed (whitespace-stripped).
        line_no: 1-based line number in the source file, for provenance.
    """

    class_index: int
    wnid: str | None
    url: str
    line_no: int


@dataclass
class ParseStats:
    """Line accounting of one parse.

    Attributes:
        lines: physical lines read.
        blank: blank lines (ignored).
        header: 1 when a CSV header line was found, else 0.
        bad: malformed lines (counted, never fatal).
        skipped_unknown_wnid: fall11 lines whose wnid is not in the mapping.
        entries: entries produced.
        bad_examples: up to 20 ``(line_no, reason, line excerpt)`` tuples.
        bad_lines: line numbers of the first 1000 malformed lines.
    """

    lines: int = 0
    blank: int = 0
    header: int = 0
    bad: int = 0
    skipped_unknown_wnid: int = 0
    entries: int = 0
    bad_examples: list[tuple[int, str, str]] = field(default_factory=list)
    bad_lines: list[int] = field(default_factory=list)

    def _bad(self, line_no: int, reason: str, line: str) -> None:
        self.bad += 1
        if len(self.bad_lines) < _MAX_BAD_LINES:
            self.bad_lines.append(line_no)
        if len(self.bad_examples) < _MAX_BAD_EXAMPLES:
            self.bad_examples.append((line_no, reason, line[:200]))

    def to_dict(self) -> dict[str, object]:
        """JSON-serialisable view (for a metrics file)."""
        return {
            "lines": self.lines,
            "blank": self.blank,
            "header": self.header,
            "bad": self.bad,
            "skipped_unknown_wnid": self.skipped_unknown_wnid,
            "entries": self.entries,
            "bad_examples": [list(example) for example in self.bad_examples],
            "bad_lines": list(self.bad_lines),
        }


@dataclass
class ParsedUrlList:
    """Result of parsing a URL list: entries in file order plus statistics."""

    entries: list[UrlEntry]
    format: str
    stats: ParseStats
    source: str = "<lines>"

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[UrlEntry]:
        return iter(self.entries)


# --------------------------------------------------------------------------
# format detection
# --------------------------------------------------------------------------


def _looks_like_csv_header(line: str) -> bool:
    first = next(csv.reader([line]), [])
    return bool(first) and first[0].strip().lower() in {"url", "class_index", "wnid"}


def _looks_like_csv_row(line: str) -> bool:
    row = next(csv.reader([line]), [])
    if len(row) < 2:
        return False
    url_first = row[-1].strip().lstrip("+").isdigit()
    index_first = row[0].strip().lstrip("+").isdigit() and bool(_URL_SCHEME.match(row[1].strip()))
    return url_first or index_first


def detect_format(lines: Iterable[str]) -> str:
    """Guess the format (``"fall11"`` or ``"csv"``) from the first lines.

    Looks at up to 50 non-blank lines: a majority of ``wnid_N<whitespace>url``
    lines means fall11; a ``url,...`` header or a majority of rows ending in an
    integer field (or starting with an integer field followed by a URL)
    means CSV.

    Raises:
        ValueError: when neither format fits (or there are no non-blank lines).
    """
    sample = [ln.strip() for ln in lines if ln.strip()][:_DETECT_LINES]
    if not sample:
        raise ValueError("cannot detect URL-list format: no non-blank lines")
    n_fall11 = sum(bool(_FALL11_LINE.match(ln)) for ln in sample)
    if n_fall11 * 2 > len(sample):
        return "fall11"
    if _looks_like_csv_header(sample[0]):
        return "csv"
    n_csv = sum(_looks_like_csv_row(ln) for ln in sample)
    if n_csv * 2 > len(sample):
        return "csv"
    raise ValueError(
        "cannot detect URL-list format: expected 'wnid_N<TAB>url' lines (fall11) "
        f"or 'url,class_index' rows (csv); first line was {sample[0][:120]!r}"
    )


# --------------------------------------------------------------------------
# parsers
# --------------------------------------------------------------------------


def _parse_fall11(
    lines: Iterable[str], wnid_to_index: Mapping[str, int], stats: ParseStats
) -> list[UrlEntry]:
    entries: list[UrlEntry] = []
    for line_no, raw in enumerate(lines, start=1):
        stats.lines += 1
        line = raw.strip()
        if not line:
            stats.blank += 1
            continue
        if "\t" in line:
            key, _, url = line.partition("\t")
        else:  # tolerate a space instead of the TAB
            parts = line.split(None, 1)
            key, url = (parts[0], parts[1]) if len(parts) == 2 else (line, "")
        key, url = key.strip(), url.strip()
        match = _FALL11_KEY.match(key)
        if match is None:
            stats._bad(line_no, "bad_key", line)
            continue
        if not _URL_SCHEME.match(url):
            stats._bad(line_no, "bad_url", line)
            continue
        wnid = match.group(1)
        index = wnid_to_index.get(wnid)
        if index is None:
            stats.skipped_unknown_wnid += 1
            continue
        entries.append(UrlEntry(int(index), wnid, url, line_no))
    return entries


def _parse_int(text: str) -> int | None:
    text = text.strip()
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value >= 0 else None


def _csv_header(row: list[str]) -> dict[str, int] | None:
    """Column positions when ``row`` (the first non-blank row) is a header naming ``url``.

    Raises:
        ValueError: a header without a ``class_index`` column.
    """
    lowered = [cell.strip().lower() for cell in row]
    if "url" not in lowered:
        return None
    if "class_index" not in lowered:
        raise ValueError(f"CSV URL list header must name a 'class_index' column, got {row!r}")
    return {name: i for i, name in enumerate(lowered)}


def _csv_fields(row: list[str], columns: dict[str, int] | None
                ) -> tuple[str, int | None, str | None] | str:
    """``(url, class_index, wnid)`` of a data row, or the reason it is malformed."""
    if columns is not None:
        if len(row) <= max(columns["url"], columns["class_index"]):
            return "missing_field"
        wnid_col = columns.get("wnid")
        wnid = None
        if wnid_col is not None and wnid_col < len(row):
            wnid = row[wnid_col].strip() or None
        return row[columns["url"]].strip(), _parse_int(row[columns["class_index"]]), wnid
    if len(row) < 2:
        return "missing_field"
    # An unquoted URL containing commas splits into several fields: the class
    # index is the last field (url,class_index) or the first one (class_index,url).
    if not _URL_SCHEME.match(row[0].strip()) and _URL_SCHEME.match(row[1].strip()):
        return ",".join(row[1:]).strip(), _parse_int(row[0]), None
    return ",".join(row[:-1]).strip(), _parse_int(row[-1]), None


def _parse_csv(
    lines: Iterable[str],
    index_to_wnid: Mapping[int, str] | None,
    stats: ParseStats,
) -> list[UrlEntry]:
    entries: list[UrlEntry] = []
    reader = csv.reader(lines)
    columns: dict[str, int] | None = None  # set when a header was seen
    seen_first = False
    last_line = 0
    for row in reader:
        line_no = last_line + 1  # first physical line of this row
        last_line = reader.line_num
        stats.lines = last_line
        if not row or all(not cell.strip() for cell in row):
            stats.blank += 1
            continue
        if not seen_first:
            seen_first = True
            columns = _csv_header(row)
            if columns is not None:
                stats.header = 1
                continue
        fields = _csv_fields(row, columns)
        text = ",".join(row)
        if isinstance(fields, str):
            stats._bad(line_no, fields, text)
            continue
        url, index, wnid = fields
        if index is None:
            stats._bad(line_no, "bad_class_index", text)
        elif not _URL_SCHEME.match(url):
            stats._bad(line_no, "bad_url", text)
        else:
            if wnid is None and index_to_wnid is not None:
                wnid = index_to_wnid.get(index)
            entries.append(UrlEntry(index, wnid, url, line_no))
    return entries


def parse_url_lines(
    lines: Iterable[str],
    *,
    format: Format = "auto",
    wnid_to_index: Mapping[str, int] | None = None,
    index_to_wnid: Mapping[int, str] | None = None,
    source: str = "<lines>",
) -> ParsedUrlList:
    """Parse an iterable of text lines (with or without line endings).

    Args:
        lines: the lines of the list, already decoded.
        format: ``"auto"`` (detect from the first lines), ``"fall11"`` or ``"csv"``.
        wnid_to_index: wnid -> class index; required for fall11 lines, and
            used (inverted) to fill in ``wnid`` for CSV rows when
            ``index_to_wnid`` is not given.
        index_to_wnid: class index -> wnid for CSV rows without a wnid column.
        source: a name for messages (the file path).

    Returns:
        A :class:`ParsedUrlList` with entries in file order.

    Raises:
        ValueError: unknown/undetectable format, fall11 without a mapping, or
            a CSV header lacking a ``class_index`` column.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    iterator = iter(lines)
    first = next(iterator, None)
    if first is not None:
        iterator = itertools.chain([first.lstrip(_BOM)], iterator)
    if format == "auto":
        head = list(itertools.islice(iterator, _DETECT_LINES * 4))
        try:
            format = detect_format(head)  # type: ignore[assignment]
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
        iterator = itertools.chain(head, iterator)
    stats = ParseStats()
    if format == "fall11":
        if wnid_to_index is None:
            raise ValueError(f"{source}: the fall11 format needs a wnid_to_index mapping")
        entries = _parse_fall11(iterator, wnid_to_index, stats)
    else:
        if index_to_wnid is None and wnid_to_index is not None:
            index_to_wnid = {int(i): w for w, i in wnid_to_index.items()}
        entries = _parse_csv(iterator, index_to_wnid, stats)
    stats.entries = len(entries)
    return ParsedUrlList(entries=entries, format=format, stats=stats, source=source)


def read_url_list(
    path: str | Path,
    *,
    format: Format = "auto",
    wnid_to_index: Mapping[str, int] | None = None,
    index_to_wnid: Mapping[int, str] | None = None,
) -> ParsedUrlList:
    """Read and parse a URL-list file (streamed; UTF-8 with ``errors="replace"``, BOM stripped).

    Lines are split on ``\\n`` only (a stray ``\\r`` inside latin-1 junk does
    not shift line numbers); a trailing ``\\r`` is stripped.  See
    :func:`parse_url_lines` for the arguments.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: see :func:`parse_url_lines`.
    """
    path = Path(path)
    with open(path, encoding="utf-8-sig", errors="replace", newline="\n") as handle:
        return parse_url_lines(
            handle,
            format=format,
            wnid_to_index=wnid_to_index,
            index_to_wnid=index_to_wnid,
            source=str(path),
        )


def select(entries: Iterable[UrlEntry], classes: Sequence[int]) -> dict[int, list[UrlEntry]]:
    """Group the entries of the requested classes, each group in file order.

    Entries keep the order in which they are given (file order for one
    parsed list).  The result has one key per requested class, in the order
    of ``classes``,
    including classes without any entry (empty list), so a downloader can
    report them as exhausted.

    Raises:
        ValueError: if ``classes`` contains duplicates.
    """
    wanted = [int(c) for c in classes]
    if len(set(wanted)) != len(wanted):
        duplicates = sorted({c for c in wanted if wanted.count(c) > 1})
        raise ValueError(f"duplicate classes requested: {duplicates}")
    groups: dict[int, list[UrlEntry]] = {c: [] for c in wanted}
    for entry in entries:
        group = groups.get(entry.class_index)
        if group is not None:
            group.append(entry)
    return groups
