"""Write ``tickets.csv`` for the multi-label example from the single-label support tickets.

Each of the 360 hand-written messages of ``examples/support-tickets/tickets.csv`` is used
once: about 60% stay alone (one label), the others are joined with a message of another
intent into one message that asks about both (two labels, ``billing|shipping``). The source's
deliberate duplicates and conflicting labels carry over for the validators to find. Seeded:
the same file every time.

    python examples/support-tickets-multilabel/make_tickets.py          # -> tickets.csv here
    python examples/support-tickets-multilabel/make_tickets.py OUT.csv
"""

from __future__ import annotations

import csv
import random
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parent / "support-tickets" / "tickets.csv"
LINKS = ["Also,", "And another thing:", "Separately,", "One more question:", "Plus,", "Oh and"]


def join(first: str, second: str, link: str) -> str:
    """Two messages as one: ``first`` ended as a sentence, ``link``, then ``second``."""
    first = first.strip()
    if first[-1] not in ".!?":
        first += "."
    second = second.strip()
    if (link.endswith(",") or link == "Oh and") and not re.match(r"I\b|[A-Z]{2}", second):
        second = second[0].lower() + second[1:]  # "Also, the parcel..." ("I", "UPS" stay)
    return f"{first} {link} {second}"


def make_rows(seed: int = 15, pair_share: float = 0.4) -> list[tuple[str, str]]:
    with SOURCE.open(encoding="utf-8", newline="") as fh:
        tickets = [(r["text"], r["label"]) for r in csv.DictReader(fh)]
    rng = random.Random(seed)
    rng.shuffle(tickets)
    rows, waiting = [], []
    for text, label in tickets:
        partner = next((w for w in waiting if w[1] != label), None)
        if partner is not None:
            waiting.remove(partner)
            labels = "|".join(sorted({label, partner[1]}))
            rows.append((join(partner[0], text, rng.choice(LINKS)), labels))
        elif rng.random() < pair_share:
            waiting.append((text, label))
        else:
            rows.append((text, label))
    rows += waiting  # partners never found stay single
    rng.shuffle(rows)
    return rows


def main(out: Path) -> None:
    rows = make_rows()
    with out.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "labels"])
        writer.writerows(rows)
    pairs = sum("|" in labels for _, labels in rows)
    print(f"wrote {len(rows)} messages ({pairs} with two labels) to {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "tickets.csv")
