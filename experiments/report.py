"""One report a person opens: the main job's outputs gathered into <out>/report.md and report.html.

It only reads what the stages wrote (no new numbers), answer first: the object-state proxy study's verdict, its table
with intervals and its learning curves with the start marked; then the pictures (the task list, the asset contact
sheet, the scene QA sheet and composer summary); the sim deployment rehearsal's summary; the wall time of every step.
Each item gets one line saying what it shows; a missing item is listed as missing with the stage that makes it, never
silently dropped.

    python experiments/report.py --out-dir out/main          # what scripts/main_job.sh runs last
"""

from __future__ import annotations

import html
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # scene_schema


@dataclass
class Args:
    out_dir: str = "out/main"
    """The main job's folder: scenes/, assets/, learning/ (experiments/state_proxy.py), pixel_il/, deploy/."""
    tasks: str = "examples/tasks.txt"
    """The task list the scene pipeline ran on."""


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def section_learning(out: Path, rel, args: Args) -> list[str]:
    """Step 4: the study of experiments/state_proxy.py (its report.md body: verdict, table, curve, per scene)."""
    learn = out / "learning"
    body = learn / "report.md"
    if not body.exists():
        return ["## 1. The method: PPOFlow vs its imitation start (object-state proxy)", "",
                "_missing: `learning/report.md` (step 4 of scripts/main_job.sh, experiments/state_proxy.py) did not "
                "finish; re-run the main job to resume it._", ""]
    text = body.read_text(encoding="utf-8")
    text = re.sub(r"^# .*\n", "", text, count=1)  # its title becomes this section's
    text = re.sub(r"^## ", "### ", text, flags=re.M)  # its sections become this section's subsections
    text = re.sub(r"!\[([^\]]*)\]\((?!/)([^)]+)\)", lambda m: f"![{m.group(1)}]({rel(learn / m.group(2))})", text)
    return ["## 1. The method: PPOFlow vs its imitation start (object-state proxy: no pretrained VLM, visual "
            "generalisation not tested)", "",
            "The job's own generated scenes, split into training and held-out ones; an imitation start stopped "
            "early, then PPOFlow with the frozen recipe; the start and the FINAL PPOFlow checkpoint evaluated "
            "deterministically on the same fresh seeds. The policy reads the target's and destination's poses from "
            "the simulator instead of an image: it shows what RL does at this machine's scale, not vision.", "",
            text.strip(), ""]


def step_times(out: Path) -> list[str]:
    """The wall time of each step of scripts/main_job.sh (its step_wall_s.tsv): a one-line total, then the table."""
    f = out / "step_wall_s.tsv"
    rows = [line.split("\t") for line in f.read_text().splitlines() if "\t" in line] if f.exists() else []
    if not rows:
        return ["wall time unknown", "_missing: step_wall_s.tsv (scripts/main_job.sh writes it)_", ""]
    total = sum(int(t) for _, t in rows)
    return ([f"{total // 60} min {total % 60:02d} s in all", "| step | wall time |", "|---|---:|"]
            + [f"| {n} | {int(t) // 60} min {int(t) % 60:02d} s |" for n, t in rows]
            + [f"| **total** | {total // 60} min {total % 60:02d} s |", ""])


def main(args: Args) -> Path:
    out = Path(args.out_dir)
    rel = lambda p: Path(p).relative_to(out).as_posix()  # noqa: E731
    tasks = [t.strip() for t in Path(args.tasks).read_text(encoding="utf-8").splitlines()
             if t.strip() and not t.lstrip().startswith("#")] if Path(args.tasks).is_file() else []
    summary = read_json(out / "scenes" / "compose_summary.json") or {}
    accepted, rejected = summary.get("accepted", []), summary.get("rejected", {})
    verdict = (read_json(out / "learning" / "report.json") or {}).get("verdict", "_no verdict: step 4 did not finish_")
    walls = step_times(out)
    md = ["# Main job report", "", verdict, "",
          "What the offline main job (`bash scripts/main_job.sh`) built and learned: the answer first (the method's "
          "table and learning curve), then the pictures of what it was learned on, then the deployment rehearsal and "
          f"the wall time of each step ({walls[0]}). Every figure below is a file next to this one.", ""]
    md += section_learning(out, rel, args)
    md += ["## 2. The task list", "", f"{len(tasks)} plain-language tasks ({args.tasks}):", ""]
    md += [f"{i + 1}. {t}" for i, t in enumerate(tasks)] + [""]
    md += ["## 3. Generated assets", ""]
    sheet = out / "assets" / "contact_sheet.png"
    md += ([f"Every generated asset with its QA verdict (procedural backend, drop-tested in SAPIEN):", "",
            f"![asset contact sheet]({rel(sheet)})", ""] if sheet.exists() else
           ["_missing: assets/contact_sheet.png (generate_assets.py)_", ""])
    md += ["## 4. Composed scenes", ""]
    if summary:
        md += [f"{len(accepted)} of {len(accepted) + len(rejected)} scenes accepted by the composer's physics and "
               f"solvability QA; the scripted expert solved {summary.get('expert_success_rate', 0):.0%} of "
               f"{summary.get('expert_episodes', 0)} randomised episodes on them.", ""]
        md += [f"- rejected `{k}`: {v}" for k, v in rejected.items()] + ([""] if rejected else [])
    qa = out / "scenes" / "qa_contact_sheet.png"
    md += ([f"One QA render per scene (the scene as the scripted expert found it):", "", f"![scene QA sheet]({rel(qa)})", ""]
           if qa.exists() else ["_missing: scenes/qa_contact_sheet.png (compose_scene.py)_", ""])
    md += ["## 5. A sim deployment trial", ""]
    trials = sorted((out / "deploy").glob("*/summary.md"))
    if trials:
        body = trials[0].read_text(encoding="utf-8").strip()
        body = re.sub(r"^#+ .*\n", "", body, count=1)
        md += [f"deploy_widowx.py's trial protocol on the sim backend, at the robot's 5 Hz, with a PIXEL policy: "
               "imitation on the first training scene from the 64 px camera (`pixel_il/`, a small budget). The "
               "object-state proxy of section 1 cannot run on a robot (no simulator state there), so this rehearses "
               "the protocol, the safety layer and the trial log with what a robot could run; its success rate says "
               f"little about the method (Table 2 columns; log: {rel(trials[0].parent / 'trials.jsonl')}):", "",
               body, ""]
    else:
        md += ["_missing: deploy/<session>/summary.md (deploy_widowx.py --backend sim)_", ""]
    md += ["## Wall time of each step", ""] + walls[1:]
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
