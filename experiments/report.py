"""One report a person opens: the main job's outputs gathered into <out>/report.md and report.html.

It only reads what the stages wrote (no new numbers): the task list, the asset contact sheet, the scene QA sheet
and composer summary, the learning demonstration's table with intervals and its learning curve, rollout GIFs of the
evaluated policies played at real time, and the sim deployment trial's summary. Each item gets one line saying
what it shows; a missing item is listed as missing with the stage that makes it, never silently dropped.

    python experiments/report.py --out-dir out/main          # what scripts/main_job.sh runs last
"""

from __future__ import annotations

import html
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scene_schema


@dataclass
class Args:
    out_dir: str = "out/main"
    """The main job's folder: scenes/, assets/, learning/ (experiments/learning_demo.py), deploy/."""
    tasks: str = "examples/tasks.txt"
    """The task list the scene pipeline ran on."""
    gifs: int = 2
    """Rollout GIFs per evaluated policy (first episodes of the evaluation)."""
    decision_s: float = 0.8
    """Seconds of robot time per recorded frame (one frame per chunk decision: C = 4 control steps at 5 Hz), so
    the GIFs play at real time."""


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def rollout_gifs(eval_dir: Path, dest: Path, per_policy: int, frame_s: float) -> list[tuple[str, Path]]:
    """evaluate.py's per-episode clips (videos/episodes/<policy slug>/<scene>__<seed>.npz) -> real-time GIFs,
    captioned with the policy's label from results.json."""
    import imageio.v2 as imageio

    import scene_schema as ss

    res = read_json(eval_dir / "results.json") or {}
    label = {ss.slugify(p["name"], 64): p["label"] for p in res.get("policies", [])}
    out = []
    for pol in sorted((eval_dir / "videos" / "episodes").glob("*")):
        for clip in sorted(pol.glob("*.npz"))[:per_policy]:
            z = np.load(clip)
            ok = bool(z["success"])
            gif = dest / f"{pol.name}__{clip.stem}.gif"
            gif.parent.mkdir(parents=True, exist_ok=True)
            imageio.mimwrite(gif, list(z["frames"]), duration=frame_s * 1000, loop=0)
            out.append((f"{label.get(pol.name, pol.name)}: {clip.stem.rsplit('__', 1)[0]}, seed "
                        f"{clip.stem.rsplit('__', 1)[-1]}, {'success' if ok else 'failure'}", gif))
    return out


def section_learning(out: Path, rel, args: Args) -> list[str]:
    learn = out / "learning"
    rep = read_json(learn / "report.json")
    if rep is None:
        return ["## 4. The method: PPOFlow vs its imitation start", "",
                "_missing: `learning/report.json` (step 4 of scripts/main_job.sh, experiments/learning_demo.py) did "
                "not finish; re-run the main job to resume it._", ""]
    d, lo, hi = rep["diff_newcombe95"]
    il, ppo = rep["il"], rep["ppo"]
    verdict = (f"**PPOFlow lifted the success rate by {d:+.3f}; the 95% interval [{lo:+.3f}, {hi:+.3f}] excludes zero.**"
               if lo > 0 else
               f"**At this budget the lift is not shown: the difference is {d:+.3f} with a 95% interval "
               f"[{lo:+.3f}, {hi:+.3f}] that includes zero.** Read the curve below for what was learned; "
               "benchmarks/RESULTS.md has the longer runs.")
    task = rep.get("args", {}).get("task", "?")
    lines = ["## 4. The method: PPOFlow vs its imitation start", "",
             f"One generated scene (`{task}`), the tiny pi0 preset, imitation from scripted demos, then PPOFlow; both "
             f"policies evaluated deterministically on the same {il['episodes']} fresh seeds.", "",
             "| policy | successes / episodes | SR | Wilson 95% | TF of successes (s) |", "|---|---|---|---|---|"]
    for name, key, r in (("imitation start", "IL (start)", il), ("PPOFlow", "PPOFlow", ppo)):
        tf = rep.get("tf_s", {}).get(key)
        lines.append(f"| {name} | {r['successes']}/{r['episodes']} | {r['sr']:.3f} | [{r['wilson95'][0]:.3f}, "
                     f"{r['wilson95'][1]:.3f}] | {'-' if tf is None else f'{tf:.2f}'} |")
    lines += ["", verdict, "",
              f"PPOFlow checkpoint: iteration {rep['ppo_iteration_evaluated']} (rule: {rep['ppo_selection']}, fixed "
              f"before the run), {rep['ppo_control_steps']} control steps, {rep['ppo_wall_s_to_checkpoint']:.0f} s of "
              "rollout + update.", ""]
    if (learn / "learning_curve.png").exists():
        lines += ["Learning curve: rollout (stochastic) and in-training deterministic success rate against env "
                  "decisions, with the imitation start and the evaluated checkpoint marked.", "",
                  f"![learning curve]({rel(learn / 'learning_curve.png')})", ""]
    gifs = rollout_gifs(learn / "eval", out / "report_files", args.gifs, args.decision_s)
    if gifs:
        lines += ["Rollouts (the policy's own camera, one frame per chunk decision, played at real time):", ""]
        lines += [f"- {cap}<br>![{cap}]({rel(g)})" for cap, g in gifs]
        lines.append("")
    import scene_schema as ss

    res = read_json(learn / "eval" / "results.json") or {}
    label = {ss.slugify(p["name"], 64): p["label"] for p in res.get("policies", [])}
    vids = [(label.get(k, k), Path(v)) for k, vs in res.get("render_videos", {}).items() for v in vs]
    if vids:
        lines += ["The same episodes through the render camera (ManiSkill `RecordEpisode`: 640x480, every control "
                  "step, played at real time; `trajectory.h5` beside each video replays it):", ""]
        lines += [f"- {lab}: {v.parent.name}<br>[{v.parent.name}/video.mp4]"
                  f"({os.path.relpath(v.resolve(), out.resolve())})" for lab, v in vids]
        lines.append("")
    return lines


def main(args: Args) -> Path:
    out = Path(args.out_dir)
    rel = lambda p: Path(p).relative_to(out).as_posix()  # noqa: E731
    tasks = [t.strip() for t in Path(args.tasks).read_text(encoding="utf-8").splitlines()
             if t.strip() and not t.lstrip().startswith("#")] if Path(args.tasks).is_file() else []
    summary = read_json(out / "scenes" / "compose_summary.json") or {}
    accepted, rejected = summary.get("accepted", []), summary.get("rejected", {})
    md = ["# Main job report", "",
          "What the offline main job (`bash scripts/main_job.sh`) built and learned, in the order it ran. Open this "
          "file first; every figure below is a file next to it.", "",
          "## 1. The task list", "", f"{len(tasks)} plain-language tasks ({args.tasks}):", ""]
    md += [f"{i + 1}. {t}" for i, t in enumerate(tasks)] + [""]
    md += ["## 2. Generated assets", ""]
    sheet = out / "assets" / "contact_sheet.png"
    md += ([f"Every generated asset with its QA verdict (procedural backend, drop-tested in SAPIEN):", "",
            f"![asset contact sheet]({rel(sheet)})", ""] if sheet.exists() else
           ["_missing: assets/contact_sheet.png (generate_assets.py)_", ""])
    md += ["## 3. Composed scenes", ""]
    if summary:
        md += [f"{len(accepted)} of {len(accepted) + len(rejected)} scenes accepted by the composer's physics and "
               f"solvability QA; the scripted expert solved {summary.get('expert_success_rate', 0):.0%} of "
               f"{summary.get('expert_episodes', 0)} randomised episodes on them.", ""]
        md += [f"- rejected `{k}`: {v}" for k, v in rejected.items()] + ([""] if rejected else [])
    qa = out / "scenes" / "qa_contact_sheet.png"
    md += ([f"One QA render per scene (the scene as the scripted expert found it):", "", f"![scene QA sheet]({rel(qa)})", ""]
           if qa.exists() else ["_missing: scenes/qa_contact_sheet.png (compose_scene.py)_", ""])
    md += section_learning(out, rel, args)
    md += ["## 5. A sim deployment trial", ""]
    trials = sorted((out / "deploy").glob("*/summary.md"))
    if trials:
        body = trials[0].read_text(encoding="utf-8").strip()
        body = re.sub(r"^#+ .*\n", "", body, count=1)
        md += [f"deploy_widowx.py's trial protocol on the sim backend with the PPOFlow checkpoint (Table 2 columns; "
               f"log: {rel(trials[0].parent / 'trials.jsonl')}):", "", body, ""]
    else:
        md += ["_missing: deploy/<session>/summary.md (deploy_widowx.py --backend sim)_", ""]
    text = "\n".join(md) + "\n"
    (out / "report.md").write_text(text, encoding="utf-8")
    (out / "report.html").write_text(markdown_to_html(text), encoding="utf-8")
    print(f"report: {out / 'report.md'} (and report.html)")
    return out / "report.md"


def markdown_to_html(text: str) -> str:
    """The few constructs report.md uses (headings, lists, tables, images, bold, code) as a standalone page."""
    def inline(s: str) -> str:
        s = html.escape(s, quote=False).replace("&lt;br&gt;", "<br>")
        s = re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", r'<img alt="\1" src="\2" style="max-width:100%">', s)
        s = re.sub(r"\[([^\]]*)\]\(([^)]+\.mp4)\)", r'<video controls src="\2" style="max-width:100%"></video>', s)
        s = re.sub(r"\[([^\]]*)\]\(([^)]+)\)", r'<a href="\2">\1</a>', s)
        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
        return re.sub(r"(?<![\w*])_(.+?)_(?![\w*])", r"<i>\1</i>", s)

    out, table = ['<!doctype html><meta charset="utf-8"><title>Main job report</title>',
                  "<style>body{font-family:sans-serif;max-width:1000px;margin:auto}td,th{border:1px solid #ccc;"
                  "padding:2px 6px}table{border-collapse:collapse}</style>"], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            if not set(line) <= set("|-: "):
                table.append(line)
            continue
        if table:
            rows = [[c.strip() for c in r.strip("|").split("|")] for r in table]
            out.append("<table>" + "".join("<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{inline(c)}</"
                                                              f"{'th' if i == 0 else 'td'}>" for c in r) + "</tr>"
                                           for i, r in enumerate(rows)) + "</table>")
            table = []
        if m := re.match(r"^(#+) (.*)", line):
            out.append(f"<h{len(m[1])}>{inline(m[2])}</h{len(m[1])}>")
        elif m := re.match(r"^(?:\d+\.|-) (.*)", line):
            out.append(f"<li>{inline(m[1])}</li>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main(tyro.cli(Args))
