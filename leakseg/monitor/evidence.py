"""Evidence of LEAK alarms: one folder per alarm under ``evidence_dir`` with the alarm as JSON and, for
every window that raised or grew it, the window's overlay GIF and result JSON; the oldest folders go
beyond ``evidence_keep``. Writing runs in a thread of its own and never stops the alarm path.

Pruning deletes only what the monitor created: folders holding its marker file, never an active
alarm's folder, one prune at a time. Anything else in ``evidence_dir`` (recordings, drop folders)
is the user's and stays."""

from __future__ import annotations

import functools
import json
import logging
import shutil
import threading
from pathlib import Path
from typing import AbstractSet, Any, Callable, Dict, Iterator

import numpy as np

from leakseg.monitor.alarm import Alarm, AlarmLogic, Event, State
from leakseg.monitor.windows import Window
from leakseg.schema import ClipResult

log = logging.getLogger("leakseg.monitor")

#: Written into every evidence folder the monitor creates: pruning deletes only folders holding it.
MARKER = ".leakseg-evidence"
_prune_lock = threading.Lock()  # concurrent prunes would race over the same folders


def evidence_folder(root: Path, alarm_id: str) -> Path:
    return root / alarm_id


class WindowEvidence:
    """The LEAK alarms one analysed window raised, grew or cleared, and the files to write for them."""

    def __init__(self, root: Path, logic: AlarmLogic, active: AbstractSet[str] = frozenset()):
        self.root = root
        self.logic = logic
        self.active = active  # ids of the alarms active on any camera: never pruned
        self.grown: Dict[str, Alarm] = {}  # raised or grown in this window, by id
        self.cleared: Dict[str, Alarm] = {}

    def note(self, event: Event) -> None:
        """Before the event is published: a raised or grown LEAK alarm names its evidence folder."""
        alarm = event.alarm
        if alarm is None or alarm.kind != State.LEAK:
            return
        if event.type in ("alarm_raised", "alarm_updated"):
            alarm.evidence = str(evidence_folder(self.root, alarm.id))
            live = self.logic.recent.get(alarm.id)  # the event holds a snapshot
            if live is not None:
                live.evidence = alarm.evidence
            self.grown[alarm.id] = alarm
        elif event.type == "alarm_cleared":
            self.cleared[alarm.id] = alarm

    def writes(self, window: Window, result: ClipResult, keep: int) -> Iterator[Callable[[], None]]:
        """The writes, to run one after another; each alarm's latest state is read when its write is next.

        The latest state of each alarm goes last: alarm.json of an alarm cleared in this window says so
        even when the same window also grew it."""
        for alarm_id, alarm in self.grown.items():
            latest = self.cleared.pop(alarm_id, None) or self.logic.recent.get(alarm_id) or alarm
            yield functools.partial(write_evidence, evidence_folder(self.root, alarm_id), window, result,
                                    latest.to_dict(), keep, self.active | {alarm_id})
        for alarm_id, alarm in self.cleared.items():
            yield functools.partial(write_alarm_json, evidence_folder(self.root, alarm_id), alarm.to_dict())


def write_evidence(folder: Path, window: Window, result: ClipResult, alarm: Dict[str, Any], keep: int,
                   active: AbstractSet[str] = frozenset()) -> None:
    """The window's overlay GIF and result JSON, and the alarm as JSON, in the alarm's folder; then the
    oldest evidence folders beyond ``keep`` go (never those of the ``active`` alarm ids)."""
    try:
        make_evidence_folder(folder)
        stem = f"window-{window.number:06d}"
        (folder / f"{stem}.json").write_text(result.model_dump_json(indent=1), encoding="utf-8")
        (folder / "alarm.json").write_text(json.dumps(alarm, indent=1), encoding="utf-8")
        from leakseg.utils.overlay import render_overlays, write_overlays

        clip = np.stack([f.pixels for f in window.reported])  # the answer is the reported frames
        write_overlays(render_overlays(clip, result), folder / f"{stem}.gif", fps=5)
        prune(folder.parent, keep, active)
    except Exception as exc:  # noqa: BLE001 - evidence must never stop the alarm path
        log.warning("could not write evidence to %s: %s", folder, exc)


def write_alarm_json(folder: Path, alarm: Dict[str, Any]) -> None:
    try:
        make_evidence_folder(folder)
        (folder / "alarm.json").write_text(json.dumps(alarm, indent=1), encoding="utf-8")
    except OSError as exc:
        log.warning("could not write %s/alarm.json: %s", folder, exc)


def make_evidence_folder(folder: Path) -> None:
    """The alarm's folder, marked as the monitor's own (the only kind :func:`prune` deletes)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).touch()


def prune(root: Path, keep: int, active: AbstractSet[str] = frozenset()) -> None:
    """Keep the ``keep`` most recently written evidence folders; delete older ones the monitor created,
    except those of active alarms. One prune at a time."""
    with _prune_lock:
        folders = sorted(_evidence_folders(root), key=lambda item: item[0])
        for _, old in folders[:-keep]:
            if old.name not in active:
                shutil.rmtree(old, ignore_errors=True)


def _evidence_folders(root: Path) -> Iterator[tuple]:
    """(mtime, folder) of each folder under ``root`` that holds the monitor's marker."""
    for path in root.iterdir():
        try:
            if path.is_dir() and not path.is_symlink() and (path / MARKER).is_file():
                yield path.stat().st_mtime, path
        except OSError:  # deleted meanwhile (by the user): not ours to prune any more
            continue
