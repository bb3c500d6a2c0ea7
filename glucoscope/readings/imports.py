"""Reading CGM files in the generic `subject_id,timestamp,glucose_mg_dl` format of ../shared/data.

Timestamps there are local device time without an offset; the patient's time zone turns
them into UTC. Times that fall in a daylight-saving gap or fold are resolved by zoneinfo's
rules (fold=0: the first occurrence), and the choice is documented rather than guessed.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

REQUIRED_COLUMNS = ("subject_id", "timestamp", "glucose_mg_dl")


class ImportFormatError(ValueError):
    pass


def open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def iter_generic_rows(path: Path, *, subject: str | None = None) -> Iterator[tuple[str, str, str]]:
    """Yield (subject_id, timestamp text, glucose text) rows, optionally for one subject."""
    with open_text(path) as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ImportFormatError(f"{path} lacks the column(s) {', '.join(missing)}; expected {','.join(REQUIRED_COLUMNS)}")
        for row in reader:
            if subject is None or row["subject_id"] == subject:
                yield row["subject_id"], row["timestamp"], row["glucose_mg_dl"]


def subjects_in(path: Path) -> list[str]:
    seen: dict[str, None] = {}
    for subject_id, _, _ in iter_generic_rows(path):
        seen.setdefault(subject_id, None)
    return list(seen)


def to_aware_iso(timestamp_text: str, zone: ZoneInfo) -> str:
    """Local time without offset → ISO 8601 with the zone's offset; text with an offset is kept as given."""
    text = timestamp_text.strip()
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text  # left for the ingest validator to reject with its standard message
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.isoformat()
