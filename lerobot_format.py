"""Scripted demos as a LeRobotDataset that LeRobot reads frame by frame (v3.0 by default, v2.1 with a flag), and back.

    python lerobot_format.py --trajectories out/il/trajectories/*.h5 --out out/il/dataset            # v3.0
    python lerobot_format.py --trajectories out/il/trajectories/*.h5 --out out/il/dataset_v21 --version v2.1

A frame is one CONTROL step at the control rate (fps = control_freq, an integer: 5): the policy image (an HF
`datasets` Image feature, PNG in the parquet), the robot state [7] (ee xyz, rpy, gripper opening) and the 7-D action
executed from it (ee delta xyz, delta rpy, gripper +1 open / -1 close), timestamp = frame_index / fps, the task text.
LeRobot's own `delta_timestamps={"action": [k / fps for k in range(C)]}` turns frames into C-step chunks;
`read_dataset` does the same for train_imitation.py --dataset (one chunk per policy decision, every C-th frame,
C = info.json's `action_chunk`). Parquet files are written by HF `datasets` (its `huggingface` schema metadata types
the image column as an Image and state / action as fixed-length float32 lists, what LeRobot's reader relies on).

    v3.0 (LeRobot >= 0.4): meta/info.json, meta/stats.json, meta/tasks.parquet,
         meta/episodes/chunk-000/file-000.parquet (per-episode rows: index ranges, file indices, stats/* columns),
         data/chunk-000/file-000.parquet (all frames)
    v2.1 (LeRobot 0.3, openpi-era code): meta/info.json, meta/stats.json, meta/tasks.jsonl, meta/episodes.jsonl,
         meta/episodes_stats.jsonl, data/chunk-000/episode_000000.parquet (one file per episode)

Statistics (min / max / mean / std / count, and q01..q99 in v3.0) cover every feature, images included (per channel,
in [0, 1], shape [3, 1, 1], as LeRobot computes them).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import scene_schema as ss

VERSIONS = ("v3.0", "v2.1")
CHUNKS_SIZE = 1000
DATA_PATH = {"v3.0": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
             "v2.1": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"}
EPISODES_PATH = "meta/episodes/chunk-000/file-000.parquet"
IMAGE_KEY, STATE_KEY, ACTION_KEY = "observation.images.primary", "observation.state", "action"
STATE_NAMES = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
ACTION_NAMES = ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]
INDEX_KEYS = (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"), ("index", "int64"),
              ("task_index", "int64"))
QUANTILES = (1, 10, 50, 90, 99)


def _hf_features(h: int, w: int):
    import datasets

    seq = getattr(datasets, "List", None) or datasets.Sequence  # datasets >= 4 calls fixed-length lists List
    return datasets.Features({IMAGE_KEY: datasets.Image(), STATE_KEY: seq(datasets.Value("float32"), length=7),
                              ACTION_KEY: seq(datasets.Value("float32"), length=7),
                              **{k: datasets.Value(d) for k, d in INDEX_KEYS}})


def _legacy_schema(path: Path) -> None:
    """Rename datasets >= 4's `List` feature type to `Sequence` in the parquet's `huggingface` metadata: the same
    fixed-length list, in the spelling datasets 3.x (what LeRobot 0.3 pins) parses; datasets 4+ reads both."""
    import pyarrow.parquet as pq

    t = pq.read_table(path)
    meta = dict(t.schema.metadata or {})
    hf = json.loads(meta[b"huggingface"])

    def fix(x):
        if isinstance(x, dict):
            x = {k: fix(v) for k, v in x.items()}
            if x.get("_type") == "List" and "length" in x:
                x["_type"] = "Sequence"
        return x
    meta[b"huggingface"] = json.dumps(fix(hf)).encode()
    pq.write_table(t.replace_schema_metadata(meta), path)


def _to_parquet(rows: dict, features, path: Path, legacy: bool) -> None:
    import datasets

    datasets.disable_progress_bars()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(tmp))
    if legacy:
        _legacy_schema(tmp)
    tmp.replace(path)


def feature_stats(x: np.ndarray, image: bool = False, quantiles: bool = True) -> dict:
    """LeRobot's per-feature statistics of frames x [T, D] (or images u8 [T, H, W, 3]: per channel, scaled to [0, 1],
    shaped [3, 1, 1])."""
    if image:
        x = np.asarray(x, np.float64).reshape(len(x), -1, 3) / 255.0  # [T, HW, 3]
        flat, shape = x.reshape(-1, 3), (3, 1, 1)
    else:
        flat = np.asarray(x, np.float64).reshape(len(x), -1)
        shape = flat.shape[1:]
    out = {"min": flat.min(0), "max": flat.max(0), "mean": flat.mean(0), "std": flat.std(0)}
    if quantiles:
        out.update({f"q{q:02d}": np.quantile(flat, q / 100, axis=0) for q in QUANTILES})
    out = {k: v.reshape(shape).tolist() for k, v in out.items()}
    out["count"] = [int(len(x))]
    return out


def aggregate_stats(per_episode: list[dict]) -> dict:
    """Dataset statistics from per-episode ones (count-weighted mean and pooled variance; min / max over episodes;
    quantiles count-weighted, an approximation as in LeRobot)."""
    out = {}
    for key in per_episode[0]:
        st = [{k: np.asarray(v, np.float64) for k, v in e[key].items()} for e in per_episode]
        n = np.array([float(s["count"][0]) for s in st])
        w = n / n.sum()
        mean = sum(wi * s["mean"] for wi, s in zip(w, st))
        var = sum(wi * (s["std"] ** 2 + (s["mean"] - mean) ** 2) for wi, s in zip(w, st))
        agg = {"min": np.min([s["min"] for s in st], 0), "max": np.max([s["max"] for s in st], 0), "mean": mean,
               "std": np.sqrt(var)}
        agg.update({q: sum(wi * s[q] for wi, s in zip(w, st)) for q in st[0] if q.startswith("q")})
        out[key] = {k: v.tolist() for k, v in agg.items()}
        out[key]["count"] = [int(n.sum())]
    return out


def write_dataset(root: str | Path, episodes: list[dict], fps: int, chunk: int = 1, version: str = "v3.0",
                  robot_type: str = "widowx250s", info_extra: dict | None = None) -> Path:
    """episodes: [{"rgb" u8 [T, H, W, 3], "state" [T, 7], "action" [T, 7], "task": str, "scene_id": str}], one row
    per control step. `fps`: the control rate (int); `chunk`: control steps per policy decision (info.json's
    `action_chunk`, what read_dataset chunks by); `info_extra`: more keys for info.json (what made the data, e.g.
    distill.py's "dagger" entry). Returns the root."""
    if version not in VERSIONS:
        raise ValueError(f"lerobot_format.write_dataset: version {version!r}; expected one of {VERSIONS}")
    if not episodes:
        raise ValueError("lerobot_format.write_dataset: no episodes to write")
    if int(fps) != fps or fps <= 0:
        raise ValueError(f"lerobot_format.write_dataset: fps {fps} must be a positive integer (LeRobot types it int; "
                         "fix: one frame per control step, fps = the control frequency)")
    root, fps = Path(root), int(fps)
    tasks = list(dict.fromkeys(e["task"] for e in episodes))
    h, w = np.asarray(episodes[0]["rgb"]).shape[1:3]
    feats = _hf_features(int(h), int(w))
    legacy, v3 = version == "v2.1", version == "v3.0"
    index, ep_rows, ep_stats, frames = 0, [], [], {k: [] for k in feats}
    for ei, ep in enumerate(episodes):
        rgb, state, action = (np.asarray(ep["rgb"], np.uint8), np.asarray(ep["state"], np.float32),
                              np.asarray(ep["action"], np.float32))
        T = len(rgb)
        if not (len(state) == len(action) == T) or rgb.shape[1:] != (h, w, 3) or action.shape[1:] != (7,) \
                or state.shape[1:] != (7,):
            raise ValueError(f"lerobot_format.write_dataset: episode {ei}: rgb {rgb.shape}, state {state.shape}, action "
                             f"{action.shape}; expected [T, {h}, {w}, 3], [T, 7], [T, 7] (one row per control step)")
        cols = {IMAGE_KEY: list(rgb), STATE_KEY: state.tolist(), ACTION_KEY: action.tolist(),
                "timestamp": (np.arange(T) / fps).astype(np.float32).tolist(), "frame_index": list(range(T)),
                "episode_index": [ei] * T, "index": list(range(index, index + T)),
                "task_index": [tasks.index(ep["task"])] * T}
        stats = {IMAGE_KEY: feature_stats(rgb, image=True, quantiles=v3),
                 **{k: feature_stats(np.asarray(cols[k], np.float64), quantiles=v3)
                    for k in (STATE_KEY, ACTION_KEY, *dict(INDEX_KEYS))}}
        ep_stats.append(stats)
        row = {"episode_index": ei, "tasks": [ep["task"]], "length": T}
        if v3:
            row.update({"data/chunk_index": 0, "data/file_index": 0, "dataset_from_index": index,
                        "dataset_to_index": index + T, "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0,
                        **{f"stats/{k}/{s}": v for k, st in stats.items() for s, v in st.items()}})
            for k in feats:
                frames[k] += cols[k]
        else:
            _to_parquet(cols, feats, root / DATA_PATH[version].format(episode_chunk=ei // CHUNKS_SIZE,
                                                                        episode_index=ei), legacy)
        ep_rows.append({**row, "scene_id": ep.get("scene_id")})
        index += T
    features = {
        IMAGE_KEY: {"dtype": "image", "shape": [int(h), int(w), 3], "names": ["height", "width", "channels"]},
        STATE_KEY: {"dtype": "float32", "shape": [7], "names": STATE_NAMES},
        ACTION_KEY: {"dtype": "float32", "shape": [7], "names": ACTION_NAMES},
        **{k: {"dtype": d, "shape": [1], "names": None} for k, d in INDEX_KEYS}}
    info = {"codebase_version": version, "robot_type": robot_type, "total_episodes": len(episodes),
            "total_frames": index, "total_tasks": len(tasks), "chunks_size": CHUNKS_SIZE, "fps": fps,
            "splits": {"train": f"0:{len(episodes)}"}, "data_path": DATA_PATH[version], "video_path": None,
            "features": features, "action_chunk": int(chunk), **(info_extra or {})}
    if v3:
        import pandas as pd

        _to_parquet(frames, feats, root / DATA_PATH[version].format(chunk_index=0, file_index=0), False)
        import datasets

        (root / EPISODES_PATH).parent.mkdir(parents=True, exist_ok=True)
        datasets.Dataset.from_list(ep_rows).to_parquet(str(root / EPISODES_PATH))
        (root / "meta").mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"task_index": range(len(tasks))}, index=pd.Index(tasks, name="task")).to_parquet(
            root / "meta/tasks.parquet")
        info.update(data_files_size_in_mb=100, video_files_size_in_mb=200)
    else:
        info.update(total_chunks=(len(episodes) - 1) // CHUNKS_SIZE + 1, total_videos=0)
        _write_jsonl(root / "meta/tasks.jsonl", [{"task_index": i, "task": t} for i, t in enumerate(tasks)])
        _write_jsonl(root / "meta/episodes.jsonl", ep_rows)
        _write_jsonl(root / "meta/episodes_stats.jsonl", [{"episode_index": i, "stats": s}
                                                          for i, s in enumerate(ep_stats)])
    ss.write_json_atomic(root / "meta/stats.json", aggregate_stats(ep_stats))
    ss.write_json_atomic(root / "meta/info.json", info)
    return root


def read_frames(root: str | Path) -> list[dict]:
    """The per-control-step episodes `write_dataset` wrote (either version), through HF `datasets` as LeRobot reads
    them: [{"rgb" u8 [T, H, W, 3], "state" [T, 7], "action" [T, 7], "task", "scene_id"}]."""
    import datasets
    import pyarrow.parquet as pq

    def load(path) -> datasets.Dataset:  # typed by the parquet's `huggingface` metadata, no cache files
        return datasets.Dataset(pq.read_table(path))

    root = Path(root)
    info_path = root / "meta/info.json"
    if not info_path.exists():
        raise FileNotFoundError(f"{root}: not a LeRobotDataset (no meta/info.json; fix: pass the folder that "
                                "train_imitation.py --write-dataset wrote as <out>/dataset)")
    info = json.loads(info_path.read_text())
    if info.get("codebase_version") not in VERSIONS or info["features"][ACTION_KEY]["shape"] != [7]:
        raise ss.SchemaError(info_path, "codebase_version / features.action", f"{info.get('codebase_version')} with "
                             f"action shape {info['features'][ACTION_KEY]['shape']}: not a dataset of this writer "
                             "(fix: re-write it with lerobot_format.py)")
    if info["codebase_version"] == "v3.0":
        import pandas as pd

        tasks = {int(i): t for t, i in pd.read_parquet(root / "meta/tasks.parquet")["task_index"].items()}
        eps_meta = load(root / EPISODES_PATH).to_list()
        files = sorted({(m["data/chunk_index"], m["data/file_index"]) for m in eps_meta})
        ds = datasets.concatenate_datasets([load(root / info["data_path"].format(chunk_index=c, file_index=f)) for c, f in files])
    else:
        tasks = {t["task_index"]: t["task"] for t in map(json.loads, (root / "meta/tasks.jsonl").read_text().splitlines())}
        eps_meta = [json.loads(x) for x in (root / "meta/episodes.jsonl").read_text().splitlines() if x.strip()]
        ds = datasets.concatenate_datasets([load(root / info["data_path"].format(
            episode_chunk=m["episode_index"] // info["chunks_size"], episode_index=m["episode_index"]))
            for m in eps_meta])
    ep_col = np.asarray(ds["episode_index"])
    out = []
    for m in eps_meta:
        rows = np.nonzero(ep_col == m["episode_index"])[0]
        if len(rows) != m["length"]:
            raise ss.SchemaError(root, f"episode {m['episode_index']}", "parquet rows do not match the episode metadata")
        sub = ds.select(rows)
        out.append({"rgb": np.stack([np.asarray(im.convert("RGB")) for im in sub[IMAGE_KEY]]),
                    "state": np.asarray(sub[STATE_KEY], np.float32), "action": np.asarray(sub[ACTION_KEY], np.float32),
                    "task": tasks[int(sub["task_index"][0])], "scene_id": m.get("scene_id")})
    return out


def to_decisions(episodes: list[dict], chunk: int) -> list[dict]:
    """Per-control-step episodes -> one frame per policy decision (every `chunk`-th step) with the [chunk, 7] actions
    executed from it; a trailing partial chunk is dropped."""
    out = []
    for ep in episodes:
        T = len(ep["action"]) // chunk
        if T:
            out.append({**ep, "rgb": ep["rgb"][:T * chunk:chunk], "state": ep["state"][:T * chunk:chunk],
                        "action": np.asarray(ep["action"][:T * chunk]).reshape(T, chunk, -1)})
    return out


def from_decisions(episodes: list[dict]) -> list[dict]:
    """One observation per decision -> write_dataset's rows, one per control step: rgb [D, H, W, 3], state [D, 7],
    action [D, C, 7] -> C rows per decision, the decision's observation held over its chunk (the policy executes a
    chunk open loop, so each of its C actions was chosen from that observation), action [D * C, 7]. What distill.py
    writes (the teacher labels decisions; the env renders no frame inside a chunk). to_decisions inverts it."""
    out = []
    for ep in episodes:
        action = np.asarray(ep["action"])  # [D, C, 7]
        C = action.shape[1]
        out.append({**ep, "rgb": np.repeat(np.asarray(ep["rgb"]), C, 0), "state": np.repeat(np.asarray(ep["state"]), C, 0),
                    "action": action.reshape(-1, action.shape[-1])})
    return out


def read_dataset(root: str | Path) -> list[dict]:
    """The dataset as policy decisions (what train_imitation.py --dataset trains on): rgb [D, H, W, 3], state [D, 7],
    action [D, C, 7] per episode, C = info.json's action_chunk."""
    frames = read_frames(root)
    return to_decisions(frames, int(json.loads((Path(root) / "meta/info.json").read_text()).get("action_chunk", 1)))


def episodes_from_trajectories(paths: list[str | Path], image_size: int, chunk: int | None = None,
                               success_only: bool = True) -> list[dict]:
    """write_dataset's episodes from ManiSkill RecordEpisode trajectories (train_imitation.py --record-trajectories)
    re-rendered at `image_size` (scene_env.rerender: recorded env states, no expert re-run): one frame per control
    step (the state before each action), or with `chunk` one per decision (to_decisions). `success_only`: skip the
    episodes that did not succeed, and the unfinished one a recorder holds at the end of collection."""
    import scene_env

    out = []
    for path in paths:
        meta = json.loads(Path(path).with_suffix(".json").read_text())
        keep = [e["episode_id"] for e in meta["episodes"] if e.get("success") or not success_only]
        for ep in scene_env.rerender(path, image_size, keep):
            T = len(ep["actions"])
            if T:
                out.append({"rgb": ep["rgb"][:T], "state": ep["state"][:T], "action": ep["actions"][:T],
                            "task": ep["instruction"], "scene_id": ep["scene_id"]})
    return to_decisions(out, chunk) if chunk else out


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    ss.write_bytes_atomic(path, "".join(json.dumps(r) + "\n" for r in rows).encode())


if __name__ == "__main__":
    from dataclasses import dataclass
    from typing import Literal

    import tyro

    @dataclass
    class Args:
        """Build a LeRobotDataset (one frame per control step) from recorded demo trajectories, at any image size
        (no expert re-run): python lerobot_format.py --trajectories out/il/trajectories/*.h5 --out out/il/dataset"""

        trajectories: list[str]
        """RecordEpisode .h5 files (train_imitation.py --record-trajectories writes <out>/trajectories/)."""
        out: str
        """Dataset folder to write."""
        image_size: int = 224
        """Policy image side to render."""
        chunk: int = 4
        """Control steps per policy decision (the recorded run's --env.chunk), stored as info.json's action_chunk."""
        control_freq: int = 5
        """Control frequency of the recorded run (Hz): the dataset's fps."""
        version: Literal["v3.0", "v2.1"] = "v3.0"
        """LeRobot dataset format: v3.0 (LeRobot >= 0.4) or v2.1 (LeRobot 0.3, openpi-era code)."""
        success_only: bool = True
        """Keep successful episodes only."""

    a = tyro.cli(Args)
    missing = [p for p in a.trajectories if not Path(p).exists() or not Path(p).with_suffix(".json").exists()]
    if missing:
        raise SystemExit(f"lerobot_format.py: --trajectories: {missing} missing (or their .json); fix: pass the .h5 "
                         "files of a train_imitation.py --record-trajectories run")
    eps = episodes_from_trajectories(a.trajectories, a.image_size, success_only=a.success_only)
    if not eps:
        raise SystemExit("lerobot_format.py: no (successful) episodes in --trajectories")
    root = write_dataset(a.out, eps, fps=a.control_freq, chunk=a.chunk, version=a.version)
    print(f"wrote {len(eps)} episodes ({sum(len(e['action']) for e in eps)} frames) at {a.image_size} px, "
          f"LeRobot {a.version}, to {root}")
