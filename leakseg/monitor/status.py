"""The live status table in a terminal: one row per camera, redrawn at the top of the screen."""

from __future__ import annotations

import sys
from typing import Any, Dict, Iterable, List

HEADER = f"{'camera':<16} {'state':<14} {'area px':>8} {'score':>6} {'analysed':>9} {'dropped':>8}  fault / degraded"
ROW_WIDTH = 160

# Save the cursor, draw from the top-left corner clearing each line, restore the cursor: the log
# lines below keep scrolling.
SAVE_AND_HOME, NEXT_LINE, RESTORE = "\x1b[s\x1b[H\x1b[2K", "\n\x1b[2K", "\n\x1b[u"


def table_rows(snapshots: Iterable[Dict[str, Any]]) -> List[str]:
    rows = [HEADER]
    for s in snapshots:
        rows.append(f"{s['camera']:<16} {s['state']:<14} {s['leak_area_pixels']:>8} {s['score']:>6.2f} "
                    f"{s['frames_analysed']:>9} {s['windows_dropped']:>8}  "
                    f"{trouble(s)}"[:ROW_WIDTH])
    return rows


def trouble(snapshot: Dict[str, Any]) -> str:
    """The fault column: the fault's reason, else why the camera cannot see gas (a degraded camera in LEAK
    shows it too), else nothing."""
    return snapshot["camera_fault"] or snapshot["service_fault"] or snapshot["degraded_reason"] or ""


def draw_table(snapshots: Iterable[Dict[str, Any]]) -> None:
    sys.stdout.write(SAVE_AND_HOME + NEXT_LINE.join(table_rows(snapshots)) + RESTORE)
    sys.stdout.flush()


def end_table() -> None:
    """Leave the cursor on a fresh line once the monitor stops."""
    sys.stdout.write("\n")
