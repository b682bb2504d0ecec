"""Evidence pruning through a real Monitor: only folders the monitor created (its marker inside) go, never an
active alarm's folder, never the user's folders that share ``evidence_dir`` (recordings, a drop folder)."""

from __future__ import annotations

import os
import threading

from leakseg.monitor.evidence import MARKER, prune
from support.fake_service import FakeService, answer_clip
from support.monitor_runs import Recorded, fill


def test_pruning_deletes_only_old_evidence_folders_the_monitor_created(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    recordings = shared / "recordings"  # the user's, older than any alarm
    recordings.mkdir()
    (recordings / "shift-1.mkv").write_bytes(b"user data")
    old_alarm = shared / "cam-a-LEAK-20200101T000000-1"  # an earlier run's alarm, cleared long ago
    old_alarm.mkdir()
    (old_alarm / MARKER).touch()
    for folder in (recordings, old_alarm):
        os.utime(folder, (1_000_000, 1_000_000))
    drop_a = fill(shared / "drop-a", 12)  # a camera's drop folder inside evidence_dir
    drop_b = fill(tmp_path / "drop-b", 12)
    leak_at_once = {"min_area_pixels": 1, "k": 1, "n": 1}
    cameras = [{"name": name, "source": str(folder), "clip_frames": 4, "alarm": leak_at_once}
               for name, folder in (("cam-a", drop_a), ("cam-b", drop_b))]
    with FakeService(answer_clip) as service:
        rec = Recorded(service, cameras, evidence_dir=str(shared), evidence_keep=1)
        rec.run(timeout=60)
    leaks = {a.id for _, a in rec.raised("LEAK")}
    assert len(leaks) == 2 and not rec.cleared("LEAK")  # both still active at the end
    assert (recordings / "shift-1.mkv").read_bytes() == b"user data"
    assert sorted(p.name for p in drop_a.iterdir()) == sorted([f"f{i:03d}.png" for i in range(12)] + ["END"])
    assert not old_alarm.exists()  # the monitor's own, inactive, beyond evidence_keep
    for alarm_id in leaks:  # both active alarms keep their evidence, evidence_keep 1 notwithstanding
        assert (shared / alarm_id / "alarm.json").exists() and list((shared / alarm_id).glob("window-*.gif"))


def test_concurrent_prunes_keep_exactly_the_newest(tmp_path):
    for i in range(60):
        folder = tmp_path / f"alarm-{i:02d}"
        folder.mkdir()
        (folder / MARKER).touch()
        os.utime(folder, (1_000_000 + i, 1_000_000 + i))
    errors = []

    def prune_now():
        try:
            prune(tmp_path, 5, frozenset({"alarm-00"}))
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=prune_now) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["alarm-00"] + [f"alarm-{i}" for i in range(55, 60)]
