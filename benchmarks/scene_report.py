"""Per-category composer report of a scene pool (issue 15): acceptance and scripted-expert success by target category.

    python benchmarks/scene_report.py --scenes-dir out/thin/scenes [--markdown]

Reads <scenes-dir>/compose_summary.json (compose_scene.py) and each scene's scene_graph.json; the expert's episodes are
the composer's solvability QA episodes (seeded, at the training frequency). Prints one row per target category:
scenes, accepted, expert successes / episodes on accepted scenes, and the rejection reasons.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import scene_schema as ss  # noqa: E402


@dataclass
class Args:
    scenes_dir: str = "scenes"
    """Composed scene pool (compose_summary.json + <id>/scene_graph.json)."""
    markdown: bool = False
    """Print a markdown table (for benchmarks/RESULTS.md)."""


def category_rows(scenes_dir: Path) -> dict[str, dict]:
    path = scenes_dir / "compose_summary.json"
    if not path.exists():
        raise SystemExit(f"scene_report.py: {path} does not exist (fix: --scenes-dir must be a folder that "
                         "compose_scene.py has run on)")
    summary = json.loads(path.read_text())
    rows: dict[str, dict] = defaultdict(lambda: {"scenes": 0, "accepted": 0, "succ": 0, "eps": 0, "reasons": []})
    for s in summary["scenes"]:
        g = ss.load_scene_graph(scenes_dir / s["scene_id"] / "scene_graph.json")
        r = rows[g.target.category]
        r["scenes"] += 1
        if s["status"] == "accepted":
            r["accepted"] += 1
            r["succ"] += s.get("solver_successes", 0)
            r["eps"] += s.get("solver_episodes", 0)
        else:
            r["reasons"].append(s["reason"][:90])
    return dict(sorted(rows.items()))


def main(args: Args) -> dict[str, dict]:
    rows = category_rows(Path(args.scenes_dir))
    tot = {k: sum(r[k] for r in rows.values()) for k in ("scenes", "accepted", "succ", "eps")}
    if args.markdown:
        print("| target category | scenes | accepted | expert on accepted |\n|---|---:|---:|---:|")
        for c, r in rows.items():
            print(f"| {c} | {r['scenes']} | {r['accepted']} | {r['succ']}/{r['eps']} |")
        print(f"| **all** | {tot['scenes']} | {tot['accepted']} ({100 * tot['accepted'] / max(1, tot['scenes']):.0f}%) | "
              f"{tot['succ']}/{tot['eps']} ({100 * tot['succ'] / max(1, tot['eps']):.0f}%) |")
    else:
        for c, r in rows.items():
            print(f"{c:16s} scenes {r['scenes']:2d} accepted {r['accepted']:2d} expert {r['succ']:3d}/{r['eps']:<3d}"
                  + (f"  rejected: {'; '.join(r['reasons'])}" if r["reasons"] else ""))
        print(f"all: {tot['accepted']}/{tot['scenes']} accepted, expert {tot['succ']}/{tot['eps']}")
    return rows


if __name__ == "__main__":
    main(tyro.cli(Args))
