"""Scripted demos as a LeRobotDataset (codebase v2.1 layout) that LeRobot and other tools read, and back.

    <root>/meta/info.json              fps, features (dtype, shape, names), path templates, totals
    <root>/meta/episodes.jsonl         {"episode_index", "tasks": [text], "length"} per episode
    <root>/meta/tasks.jsonl            {"task_index", "task"} per distinct instruction
    <root>/meta/episodes_stats.jsonl   per-episode min / max / mean / std / count of the numeric features
    <root>/data/chunk-000/episode_000000.parquet   one row per frame

A frame is one chunk decision: the policy image (PNG bytes in the parquet, LeRobot's "image" dtype), the robot
state, the C-step action chunk [C, 7] the scripted expert executed from it, timestamp = frame_index / fps with fps =
1 / (C x 0.2 s), and the episode's task text and scene id. Images are stored at the env's render size, so another
image size or tokenizer re-reads the same dataset (train_imitation.py --dataset). Only pyarrow, numpy and Pillow.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

import scene_schema as ss

CODEBASE_VERSION = "v2.1"
CHUNKS_SIZE = 1000
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
IMAGE_KEY, STATE_KEY, ACTION_KEY = "observation.images.primary", "observation.state", "action"
STATE_NAMES = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(rgb, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_dataset(root: str | Path, episodes: list[dict], fps: float, robot_type: str = "widowx250s") -> Path:
    """episodes: [{"rgb" u8 [T, H, W, 3], "state" [T, 7], "action" [T, C, 7], "task": str, "scene_id": str}].
    Writes the v2.1 layout (atomically per file) and returns the root."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    if not episodes:
        raise ValueError("lerobot_format.write_dataset: no episodes to write")
    tasks = list(dict.fromkeys(e["task"] for e in episodes))
    h, w = np.asarray(episodes[0]["rgb"]).shape[1:3]
    chunk, adim = np.asarray(episodes[0]["action"]).shape[1:]
    index, stats = 0, []
    for ei, ep in enumerate(episodes):
        rgb, state, action = np.asarray(ep["rgb"], np.uint8), np.asarray(ep["state"], np.float32), np.asarray(ep["action"], np.float32)
        T = len(rgb)
        if not (len(state) == len(action) == T) or rgb.shape[1:3] != (h, w):
            raise ValueError(f"lerobot_format.write_dataset: episode {ei}: rgb/state/action lengths {T}/{len(state)}/"
                             f"{len(action)} or image size {rgb.shape[1:3]} != {(h, w)}")
        table = pa.table({
            IMAGE_KEY: pa.array([{"bytes": _png(f), "path": None} for f in rgb],
                                pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            STATE_KEY: pa.array(state.tolist(), pa.list_(pa.float32())),
            ACTION_KEY: pa.array(action.reshape(T, -1).tolist(), pa.list_(pa.float32())),
            "timestamp": pa.array((np.arange(T) / fps).astype(np.float32)),
            "frame_index": pa.array(np.arange(T), pa.int64()), "episode_index": pa.array([ei] * T, pa.int64()),
            "index": pa.array(np.arange(index, index + T), pa.int64()),
            "task_index": pa.array([tasks.index(ep["task"])] * T, pa.int64())})
        path = root / DATA_PATH.format(episode_chunk=ei // CHUNKS_SIZE, episode_index=ei)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(table, tmp)
        tmp.replace(path)
        stats.append({"episode_index": ei, "stats": {k: _stats(v) for k, v in ((STATE_KEY, state),
                                                                               (ACTION_KEY, action.reshape(T, -1)))}})
        index += T
    features = {
        IMAGE_KEY: {"dtype": "image", "shape": [int(h), int(w), 3], "names": ["height", "width", "channel"]},
        STATE_KEY: {"dtype": "float32", "shape": [7], "names": STATE_NAMES},
        ACTION_KEY: {"dtype": "float32", "shape": [int(chunk) * int(adim)],
                     "names": [f"{n}_{k}" for k in range(int(chunk)) for n in STATE_NAMES]},
        **{k: {"dtype": d, "shape": [1], "names": None} for k, d in (("timestamp", "float32"), ("frame_index", "int64"),
                                                                     ("episode_index", "int64"), ("index", "int64"),
                                                                     ("task_index", "int64"))}}
    info = {"codebase_version": CODEBASE_VERSION, "robot_type": robot_type, "total_episodes": len(episodes),
            "total_frames": index, "total_tasks": len(tasks), "total_videos": 0,
            "total_chunks": (len(episodes) - 1) // CHUNKS_SIZE + 1, "chunks_size": CHUNKS_SIZE, "fps": fps,
            "splits": {"train": f"0:{len(episodes)}"}, "data_path": DATA_PATH, "video_path": None, "features": features,
            "action_chunk": int(chunk)}
    ss.write_json_atomic(root / "meta/info.json", info)
    _write_jsonl(root / "meta/tasks.jsonl", [{"task_index": i, "task": t} for i, t in enumerate(tasks)])
    _write_jsonl(root / "meta/episodes.jsonl", [{"episode_index": i, "tasks": [e["task"]], "length": len(e["rgb"]),
                                                 "scene_id": e.get("scene_id")} for i, e in enumerate(episodes)])
    _write_jsonl(root / "meta/episodes_stats.jsonl", stats)
    return root


def read_dataset(root: str | Path) -> list[dict]:
    """The episodes `write_dataset` wrote (same dict layout), validated against meta/info.json."""
    import pyarrow.parquet as pq
    from PIL import Image

    root = Path(root)
    info_path = root / "meta/info.json"
    if not info_path.exists():
        raise FileNotFoundError(f"{root}: not a LeRobotDataset (no meta/info.json; fix: pass the folder that "
                                "train_imitation.py wrote as <out>/dataset)")
    info = json.loads(info_path.read_text())
    tasks = {t["task_index"]: t["task"] for t in map(json.loads, (root / "meta/tasks.jsonl").read_text().splitlines())}
    eps_meta = [json.loads(x) for x in (root / "meta/episodes.jsonl").read_text().splitlines() if x.strip()]
    chunk = int(info.get("action_chunk", 1))
    out = []
    for m in eps_meta:
        ei = m["episode_index"]
        t = pq.read_table(root / info["data_path"].format(episode_chunk=ei // info["chunks_size"], episode_index=ei))
        d = t.to_pydict()
        if len(d["frame_index"]) != m["length"] or any(x != ei for x in d["episode_index"]):
            raise ss.SchemaError(root, f"episode {ei}", "parquet rows do not match meta/episodes.jsonl")
        out.append({"rgb": np.stack([np.asarray(Image.open(io.BytesIO(f["bytes"])).convert("RGB")) for f in d[IMAGE_KEY]]),
                    "state": np.asarray(d[STATE_KEY], np.float32),
                    "action": np.asarray(d[ACTION_KEY], np.float32).reshape(m["length"], chunk, -1),
                    "task": tasks[d["task_index"][0]], "scene_id": m.get("scene_id")})
    return out


def episodes_from_trajectories(paths: list[str | Path], image_size: int, chunk: int, success_only: bool = True) -> list[dict]:
    """write_dataset's episodes from ManiSkill RecordEpisode trajectories (train_imitation.py --record-trajectories)
    re-rendered at `image_size` (scene_env.rerender: recorded env states, no expert re-run): one frame per decision
    (every `chunk` control steps) with the [chunk, 7] actions executed from it. `success_only`: skip the episodes
    that did not succeed, and the unfinished one a recorder holds at the end of collection."""
    import scene_env

    out = []
    for path in paths:
        meta = json.loads(Path(path).with_suffix(".json").read_text())
        keep = [e["episode_id"] for e in meta["episodes"] if e.get("success") or not success_only]
        for ep in scene_env.rerender(path, image_size, keep):
            T = len(ep["actions"]) // chunk
            if T == 0:
                continue
            out.append({"rgb": ep["rgb"][:T * chunk:chunk], "state": ep["state"][:T * chunk:chunk],
                        "action": ep["actions"][:T * chunk].reshape(T, chunk, -1), "task": ep["instruction"],
                        "scene_id": ep["scene_id"]})
    return out


def _stats(x: np.ndarray) -> dict:
    return {"min": x.min(0).tolist(), "max": x.max(0).tolist(), "mean": x.mean(0).tolist(), "std": x.std(0).tolist(),
            "count": [int(len(x))]}


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    ss.write_bytes_atomic(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


if __name__ == "__main__":
    from dataclasses import dataclass

    import tyro

    @dataclass
    class Args:
        """Build a LeRobotDataset at another image size from recorded demo trajectories (no expert re-run):
        python lerobot_format.py --trajectories out/il/trajectories/*.h5 --image-size 128 --out out/il/dataset_128"""

        trajectories: list[str]
        """RecordEpisode .h5 files (train_imitation.py --record-trajectories writes <out>/trajectories/)."""
        out: str
        """Dataset folder to write (LeRobot v2.1 layout)."""
        image_size: int = 224
        """Policy image side to render."""
        chunk: int = 4
        """Control steps per decision (the recorded run's --env.chunk)."""
        control_freq: float = 5.0
        """Control frequency of the recorded run (Hz): fps = control_freq / chunk."""
        success_only: bool = True
        """Keep successful episodes only."""

    a = tyro.cli(Args)
    missing = [p for p in a.trajectories if not Path(p).exists() or not Path(p).with_suffix(".json").exists()]
    if missing:
        raise SystemExit(f"lerobot_format.py: --trajectories: {missing} missing (or their .json); fix: pass the .h5 "
                         "files of a train_imitation.py --record-trajectories run")
    eps = episodes_from_trajectories(a.trajectories, a.image_size, a.chunk, a.success_only)
    if not eps:
        raise SystemExit("lerobot_format.py: no (successful) episodes in --trajectories")
    root = write_dataset(a.out, eps, fps=a.control_freq / a.chunk)
    print(f"wrote {len(eps)} episodes at {a.image_size} px to {root}")
