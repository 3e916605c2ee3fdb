"""check_ecosystem.sh, LeRobot check (runs in a side env with LeRobot, no project code): load a dataset with
LeRobotDataset, read every frame, check shapes / types / fps / stats, and chunk actions with LeRobot's own
delta_timestamps. Usage: python ecosystem_lerobot.py <dataset root>. Prints one line; exit 1 on a failure."""

import json
import sys
from pathlib import Path

import torch
from lerobot import __version__ as lerobot_version
from lerobot.datasets.lerobot_dataset import LeRobotDataset

root = Path(sys.argv[1])
info = json.loads((root / "meta/info.json").read_text())
C, fps = int(info["action_chunk"]), info["fps"]
try:
    ds = LeRobotDataset("local/gensim_demos", root=root)
    n = 0
    for i in range(len(ds)):  # frame by frame
        f = ds[i]
        img, st, act = f["observation.images.primary"], f["observation.state"], f["action"]
        assert img.dtype == torch.float32 and img.ndim == 3 and img.shape[0] == 3 and 0 <= img.min() <= img.max() <= 1
        assert st.shape == (7,) and act.shape == (7,) and isinstance(f["task"], str)
        n += 1
    stats = ds.meta.stats
    assert stats["observation.images.primary"]["mean"].shape == (3, 1, 1) and stats["action"]["std"].shape == (7,)
    chunked = LeRobotDataset("local/gensim_demos", root=root, delta_timestamps={"action": [k / fps for k in range(C)]})
    assert chunked[0]["action"].shape == (C, 7) and torch.allclose(chunked[0]["action"][1], ds[1]["action"])
    ok, why = n == info["total_frames"] == ds.num_frames and isinstance(ds.fps, int), ""
except Exception as e:  # one line, the reason
    ok, why, n = False, f"{type(e).__name__}: {str(e).splitlines()[0][:300]}", locals().get("n", 0)
print(f"{'PASS' if ok else 'FAIL'} lerobot {lerobot_version} reads {info['codebase_version']} {root.name}: "
      f"{n}/{info['total_frames']} frames of {info['total_episodes']} episodes at {fps} fps, image + 7-D state/action "
      f"per frame, stats incl. images, delta_timestamps chunks of {C}" + (f" -- {why}" if why else ""))
sys.exit(0 if ok else 1)
