"""From the object-state teacher to a pixel policy, measured (issue 32): the DAgger student against a pixel policy
trained by plain imitation on as many scripted-expert frames, and against the teacher itself.

    python experiments/distill_study.py --teacher out/sp2_confirm/runs/ppo_s8/ckpt_final.pt \
        --scenes-dir out/exp/scenes --train-scenes A B C D --heldout-scenes E F --out-dir out/distill_study

The teacher is an `--env.obs-mode state` policy (the OBJECT-STATE PROXY: no pretrained VLM, visual generalisation not
tested), typically PPOFlow's final checkpoint of experiments/state_proxy.py. The student and the baseline are the
pixel `PI0Policy` (64 px camera + instruction + proprio): what a robot could run.

Design v12 (the defaults; issue 32, session 20): v9 with the estimate made by a convolutional keypoint detector on the
image itself (`--perception-estimator keypoints`: PolicyConfig.estimator, ppoflow_pi0.KeypointProbe; trained at
`--perception-learning-rate 1e-3`) instead of a linear probe on the vision tower's 64 tokens: on the same frames its
target error along the teacher's episodes is 1.67 cm against 2.87, and the teacher reading it makes 36.0% against
15.5% on development seeds (benchmarks/RESULTS.md). v9: `--perception-estimator linear --perception-learning-rate
3e-4`.
Design v9 (issue 32, session 17): v8 with DAgger's loss on the deterministic chunk itself
(`--student-loss chunk`: distill.py --loss chunk): each student's K-step chunk from the label's own noise draw A^0,
regressed on the teacher's chunk before its clip and gripper threshold, where v1-v8 trained Eq. 1; at a tenth of v8's
step size (`--student-learning-rate 1e-5`) and with the perception left as step 0 made it (`--aux-state-coef 0`).
v8's development diagnostics showed Eq. 1 fine-tuning undoing the PPOFlow teacher's behaviour, even on its own labels
and inputs (57% -> 26%), and taking the teacher-start student from 22.5% before DAgger to 2.5% after one round; on the
same development seeds one round of v9's training leaves it at 16.0% (benchmarks/RESULTS.md). The teacher-start
student before DAgger is evaluated beside it (`pre_student_teacher`: the teacher reading the estimate), so the table
says what DAgger itself adds.
Design v8 (issue 32, session 16; `--student-loss flow_matching`): v7 with perception also trained along the teacher's own episodes
(`--perception-rollout-frames 20000`: v7's estimate erred 3-5 cm on the states a learned policy visits against 2 cm
at reset) and two students side by side from the same perception, each against the one baseline: one from the
imitation start (v7) and one starting as the teacher (v6; `--student-start imitation teacher`), the two comparisons
Bonferroni-corrected (97.5% intervals each). With an estimate good where a learned policy acts, the teacher-start
student is the teacher's expert reading it, which v6 could not test (its estimate was 3-5 cm off there and its
flung-object frames wrecked the vision tower).
Design v7 (issue 32, session 15; `--student-start imitation --perception-rollout-frames 0`): v6's perception and
pixel policies, with the student starting from
the pixel policy that works, not from the teacher (`--student-start imitation`): step 1 trains `start` by plain
imitation of the scripted expert (as many frames and steps as the DAgger rounds; v6's baseline, 11%), DAgger then
trains it on the teacher's labels of the states it visits, and the baseline gets the start's and the rounds' budget
together (twice the frames and steps), so a gain is the teacher's labels, not more training. Also fixed in distill.py
(session 15): frames where the student's arm knocked an object off the table or flung it away (a bowl seen 1800 m
away) are no longer trained on; in v6 they made the auxiliary probe's loss ~1e6 from round 1 on and wrecked the
vision tower (the estimate's error on the next round's frames 4.0 -> 7.3 cm). v6: `--student-start teacher`.
Design v6 (`--student-start teacher`; session 14): v5 with its estimate made fit for the states a policy visits. v5's
perception saw only reset frames (the arm at its start pose): along the rollouts its target estimate erred 5-7 cm
(3 cm at reset), and DAgger's flow-matching loss, reaching the probe through the state token, pulled the estimate
further off what the teacher's expert expects (4-5 cm). v6: perception also on frames along scripted-expert episodes
(`--perception-expert-frames 20000`), mini's finer vision tower under the tiny teacher's architecture
(`--vision-preset mini`: 64 tokens of 8x8 px patches), and the estimate trained by object-state supervision alone
(`--estimate-detached`: the policy's loss does not reach it).
Design v5 (`--perception-expert-frames 0 --vision-preset tiny --no-estimate-detached`): the student and the baseline
are `tiny` pixel policies (the teacher's preset) whose state token carries an ESTIMATE of the 14 object features the
teacher reads, made from the camera by a linear probe on the image tokens, and whose prefix is the instruction alone
(PolicyConfig estimate_object_state, image_in_prefix=False): the teacher's architecture with its simulator features
replaced by the camera's estimate. Both start from perception pretraining of that estimate (step 0, 20,000 frames,
6000 steps); the student also takes the teacher's language model, action expert and heads (distill.py
--student-start teacher), so it acts as the teacher wherever the estimate is right, and DAgger trains it where the
estimate misleads it; the baseline's action expert learns from the scripted expert's frames alone, as before. v4
showed why: its perception localised the target to 1.3 cm on new layouts, yet neither pixel policy acted on it when
the position had to travel from 64 image tokens through the VLM into the expert's attention (student 4.0%, baseline
1.5%, teacher 54.5%).
Design v4 (`--no-estimate-object-state --student-start perception --preset mini --perception-frames 10000
--perception-steps 4000 --perception-expert-frames 0`; session 13): v3 with both pixel policies starting from
perception pretraining (step 0 below). Design v3 (`--perception-frames 0`): v2 with the student's auxiliary
object-state probe (distill.py --aux-state-coef 1: its image tokens also regress the 14 object features the teacher
reads). Design v2 (`--aux-state-coef 0`): the `mini` preset (8x8 patches of the 64 px image: 64 image tokens) with
camera and lighting randomisation off (object poses still drawn over Table A.2's region at every reset). Design v1
(`--preset tiny --env-extra "" --aux-state-coef 0`: 4x4 patches, full Table A.2 randomisation). v1 and v2 left both
pixel policies at 0-1% of 200 episodes (benchmarks/RESULTS.md): they never localised the target.

Steps (each a subprocess of a stage CLI, skipped when its output exists, so an interrupted run resumes; distill.py
also resumes inside its rounds):
0. perception (with --perception-frames): pretrain_perception.py on the training scenes: the vision tower and a probe
   regress the object state from fresh-reset frames (and frames along scripted-expert episodes); both pixel policies
   below start from its checkpoint;
1. start (--student-start imitation): train_imitation.py on the training scenes from the scripted expert, rounds x
   frames per round frames and rounds x steps per round steps; that student starts from it;
2. student (one per --student-start: runs/student, or runs/student_<start> when there are several): distill.py,
   --rounds x --frames-per-round labelled frames on the training scenes (beta 1 -> 0.5^k), the flow-matching loss on
   the aggregate for --steps-per-round after each round;
3. baseline: train_imitation.py on the same scenes from the scripted expert with the SAME number of scripted-expert
   frames and gradient steps as the student in all (rounds x frames per round, `--frames`, plus the start's), batch,
   learning rate, preset and image size;
4. evaluate.py: teacher, (start,) the students and the baseline, deterministic, on the training and the held-out scenes, the same fresh
   seeds (--eval-seed..), videos of each policy's first episode in the first --video-scenes scenes; the teacher
   reads the exact object features, as when it labels, whatever noise it trained under (--env.object-state-noise-m);
5. report.md / report.json: SR per policy (Wilson), each student - baseline, - start and - teacher (Newcombe, at
   1 - 0.05 / #students: Bonferroni; the unit is the evaluation episode: one training seed per policy, said so),
   per-scene SR, cost per DAgger round, wall time of every step.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Literal

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (PIXEL_LABEL as PIXEL, STATE_PROXY_LABEL, evaluate_cmd, fmt_wall, machine_info,  # noqa: E402
                    perception_summary, pooled, results_per_scene, run_step, stage)
from evaluate import newcombe_diff, wilson_interval  # noqa: E402


@dataclass
class Args:
    teacher: str
    """The object-state teacher (a ckpt of ppoflow_pi0.py / train_imitation.py with --env.obs-mode state)."""
    scenes_dir: str
    """Composed scenes (`<id>/manifest.json`)."""
    train_scenes: list[str] = field(default_factory=list)
    """The teacher's training scenes: the student and the baseline train here (issue 32: >= 4)."""
    heldout_scenes: list[str] = field(default_factory=list)
    """Scenes no policy trained on, evaluated apart."""
    out_dir: str = "out/distill_study"
    """Experiment folder: runs/student (distill.py), runs/baseline (train_imitation.py), eval/, report.md/json."""
    rounds: int = 5
    """DAgger rounds."""
    frames_per_round: int = 2000
    """Labelled frames (decisions) per round (rounded up to whole vector steps of --num-envs); the baseline gets as
    many scripted-expert frames as the student's aggregate."""
    steps_per_round: int = 1500
    """Student gradient steps per round; the baseline gets rounds x this many."""
    seed: int = 0
    """Seed of the student's rounds and of the baseline's demos and training."""
    num_envs: int = 8
    """CPU env workers (DAgger collection, the baseline's demos and evaluation)."""
    preset: Literal["tiny", "mini"] = "tiny"
    """Size of the student and the baseline (ppoflow_pi0.preset_config): tiny (16 image tokens of a 64 px image; the
    teacher's preset, which --student-from-teacher needs) or mini (64 image tokens, ~4x tiny's compute per step:
    designs v2-v4)."""
    env_extra: str = "--env.no-dr-camera --env.no-dr-lighting"
    """scene_env.EnvConfig flags of the student's and the baseline's envs (training and, through their recorded env,
    evaluation). Default: camera and lighting randomisation off, object poses randomised; "" = full Table A.2."""
    aux_state_coef: float = 0.0
    """The student's auxiliary object-state loss weight (distill.py --aux-state-coef; designs v3-v8: 1). 0 (v1, v2,
    v9): plain DAgger; with --estimate-detached the perception then stays as step 0 made it (v8: the probe's loss on
    the rounds' small aggregate made the estimate ~1 cm worse everywhere). The baseline has no privileged state to
    regress: it is plain imitation."""
    perception_frames: int = 20000
    """Step 0, perception pretraining (pretrain_perception.py) on the training scenes with the pixel policies' env and
    preset: this many fresh-reset frames labelled with the object state (and a tenth as many held out); the student
    (distill.py --student-init) and the baseline (train_imitation.py --init) both start from its checkpoint, with the
    teacher's statistics. 0: both start from random --preset weights (designs v1-v3)."""
    perception_steps: int = 6000
    """Gradient steps of the perception pretraining."""
    perception_estimator: Literal["linear", "keypoints"] = "keypoints"
    """What makes the estimate (pretrain_perception.py --estimator; with --estimate-object-state): "keypoints", a
    convolutional detector with a spatial-softmax keypoint layer on the image itself (design v12); "linear", a linear
    probe on the vision tower's image tokens (designs v5-v11)."""
    perception_learning_rate: float = 1e-3
    """The perception pretraining's learning rate (pretrain_perception.py --learning-rate; designs v1-v11: 3e-4, the
    keypoint detector's diagnostic: 1e-3)."""
    estimate_object_state: bool = True
    """Both pixel policies' state token carries the perception probe's estimate of the object features, their prefix
    is the instruction alone (design v5; needs --perception-frames). False: pi0's image tokens in the prefix (v1-v4)."""
    perception_expert_frames: int = 20000
    """Step 0 also labels this many frames along scripted-expert episodes (pretrain_perception.py --expert-frames):
    the arm in view, the target grasped and carried, as a policy sees them after its first decision (design v6)."""
    perception_rollout_frames: int = 20000
    """Step 0 also labels this many frames along the teacher's own deterministic episodes (pretrain_perception.py
    --rollout-policy <teacher> --rollout-frames): the hesitations, pushes and failures of a learned policy, where v7's
    estimate erred 3-5 cm against 2 cm at reset (design v8). 0: none (designs v1-v7)."""
    vision_preset: Literal["tiny", "mini"] = "mini"
    """The pixel policies' vision tower (pretrain_perception.py --vision-preset) under --preset's language model and
    action expert; with --estimate-object-state the image tokens feed only the estimate (v6: mini, 8x8 px patches)."""
    estimate_detached: bool = True
    """The estimate is trained by object-state supervision alone (PolicyConfig.estimate_detached; perception and the
    student's --aux-state-coef), the flow-matching loss does not reach it (v6). False: end to end as well (v5)."""
    student_start: list[Literal["imitation", "teacher", "perception"]] = field(
        default_factory=lambda: ["imitation", "teacher"])
    """Where each DAgger student starts: one student per entry, the same rounds and budget each, all evaluated against
    the one baseline (several: Bonferroni-corrected intervals; design v8 runs two). "imitation" (v7): from a pixel
    policy trained by plain imitation on the scripted expert (`runs/start`: as many frames and steps as the DAgger
    rounds), which DAgger then trains on the teacher's labels; the baseline then gets the expert frames and steps of
    the start and the rounds together. "teacher" (v5, v6): as the teacher with the perception's image path (distill.py
    --student-from-teacher; needs --estimate-object-state and the teacher's --preset). "perception" (v1-v4): the
    perception checkpoint (or random --preset weights), as the baseline does."""
    student_loss: Literal["flow_matching", "chunk"] = "chunk"
    """DAgger's loss (distill.py --loss): "chunk", the student's deterministic chunk from the label's own noise A^0
    regressed on the teacher's unclipped chunk (design v9), or "flow_matching", Eq. 1 on the labels (designs v1-v8)."""
    student_learning_rate: float = 1e-5
    """The students' DAgger learning rate (distill.py --learning-rate; designs v1-v8: 1e-4). The teacher-start
    student's action expert is the RL teacher's, which PPOFlow trained at 5e-6."""
    student_train_part: Literal["all", "perception"] = "all"
    """What the students' rounds train (distill.py --train-part): "all" (designs v1-v9) or "perception", the image path
    alone by the auxiliary object-state loss on the states the student visits, the rest kept as it starts (needs
    --aux-state-coef > 0)."""
    student_replay: bool = False
    """The students' auxiliary loss also replays the perception stage's own frames (distill.py --replay-frames
    runs/perception/frames.pt; needs --perception-frames and --aux-state-coef > 0)."""
    num_inference_steps: int = 1
    """K of the student's and the baseline's deterministic flow inference (the teacher's recipe uses 1)."""
    eval_episodes_per_scene: int = 50
    """Deterministic evaluation episodes per scene and policy (4 training scenes x 50 = 200)."""
    eval_seed: int = 8000
    """First evaluation seed (never used by the teacher's study or while choosing budgets)."""
    video_scenes: int = 2
    """Scenes of each split whose first evaluation episode is recorded as a render-camera video per policy."""
    max_decisions: int = 25
    """Episode length in chunk decisions (paper: 25)."""
    dry_run: bool = False
    """Print the commands without running them."""


def main(args: Args) -> Path:
    if not args.train_scenes:
        raise SystemExit("distill_study.py: --train-scenes is empty (fix: name the teacher's training scenes, e.g. "
                         "the train_scenes of its experiments/state_proxy.py args.json)")
    if args.estimate_object_state and not args.perception_frames:
        raise SystemExit("distill_study.py: --estimate-object-state needs the perception stage that trains the "
                         "estimate (fix: --perception-frames 10000)")
    if not args.student_start:
        raise SystemExit("distill_study.py: --student-start is empty (fix: one or more of imitation, teacher, "
                         "perception)")
    if len(set(args.student_start)) != len(args.student_start):
        raise SystemExit(f"distill_study.py: --student-start {' '.join(args.student_start)} names a start twice (fix: "
                         "each at most once; a second seed is a second --out-dir)")
    if "teacher" in args.student_start and not args.estimate_object_state:
        raise SystemExit("distill_study.py: --student-start teacher needs --estimate-object-state (the student then "
                         "has the teacher's architecture; fix: drop --no-estimate-object-state, or another "
                         "--student-start)")
    if args.student_replay and not args.perception_frames:
        raise SystemExit("distill_study.py: --student-replay replays the perception stage's frames, but "
                         "--perception-frames is 0 (fix: --perception-frames 20000, or --no-student-replay)")
    if (args.student_replay or args.student_train_part == "perception") and args.aux_state_coef <= 0:
        raise SystemExit(f"distill_study.py: --student-train-part {args.student_train_part}"
                         f"{' --student-replay' * args.student_replay} trains the students by the auxiliary "
                         f"object-state loss, but --aux-state-coef is {args.aux_state_coef} (fix: --aux-state-coef 1)")
    if not Path(args.teacher).is_file() and not args.dry_run:
        raise SystemExit(f"distill_study.py: --teacher {args.teacher} is not a file (fix: a ckpt_*.pt of an "
                         "--env.obs-mode state run, e.g. experiments/state_proxy.py's runs/ppo_s<seed>/ckpt_final.pt)")
    out = Path(args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    args.scenes_dir = str(Path(args.scenes_dir).resolve())
    if not args.dry_run:  # a dry run prints the commands and leaves the folder as it is
        (out / "args.json").write_text(json.dumps({"schema_version": 1, "args": asdict(args)}, indent=2))
    logs, steps, t0 = out / "logs", out / "steps.json", time.time()
    scenes = ["--scenes-dir", args.scenes_dir, "--scene-ids", *args.train_scenes]
    common = ["--preset", args.preset, "--env.image-size", "64", *shlex.split(args.env_extra),
              "--env.max-decisions", str(args.max_decisions),
              "--num-envs", str(args.num_envs), "--seed", str(args.seed), "--device", "cpu",
              "--num-inference-steps", str(args.num_inference_steps)]
    baseline, perception, start = (out / f"runs/{r}" for r in ("baseline", "perception", "start"))
    students = student_labels(args)  # --student-start -> policy label = folder under runs/
    # where each policy starts: a student by its --student-start, "baseline" for the imitation policies (start, baseline)
    init: dict[str, list[str]] = {"perception": [], "teacher": [], "baseline": []}
    if args.perception_frames:
        run_step("perception", stage("pretrain_perception.py") + [*scenes, *common, "--out", str(perception),
                 "--stats-from", str(Path(args.teacher).resolve()), "--frames", str(args.perception_frames),
                 "--val-frames", str(max(1, args.perception_frames // 10)),
                 "--steps", str(args.perception_steps), "--learning-rate", str(args.perception_learning_rate),
                 "--expert-frames", str(args.perception_expert_frames), "--vision-preset", args.vision_preset,
                 *(["--rollout-policy", str(Path(args.teacher).resolve()), "--rollout-frames",
                    str(args.perception_rollout_frames)] if args.perception_rollout_frames else []),
                 *(["--estimate-object-state", "--no-image-in-prefix", "--estimator", args.perception_estimator]
                   if args.estimate_object_state else []),
                 *(["--estimate-detached"] if args.estimate_detached and args.estimate_object_state else [])],
                 perception / "ckpt_final.pt", logs, steps, args.dry_run)
        init = {"perception": ["--student-init", str(perception / "ckpt_final.pt")],
                "teacher": ["--student-init", str(perception / "ckpt_final.pt"), "--student-from-teacher"],
                "baseline": ["--init", str(perception / "ckpt_final.pt")]}
    # distill.py labels whole vector steps: ceil(frames / envs) of them per round, so this is the student's aggregate
    frames = args.rounds * -(-args.frames_per_round // args.num_envs) * args.num_envs
    grad_steps = args.rounds * args.steps_per_round

    def imitation(name: str, folder: Path, n_frames: int, n_steps: int) -> None:
        run_step(name, stage("train_imitation.py") + [*scenes, *common, *init["baseline"], "--out", str(folder),
                 "--frames", str(n_frames), "--episodes", str(n_frames), "--steps", str(n_steps),
                 "--save-every", str(n_steps), "--no-write-dataset"], folder / "ckpt_final.pt", logs, steps,
                 args.dry_run)
    if "imitation" in students:  # that student's scripted-expert frames and steps come before its rounds
        imitation("start", start, frames, grad_steps)
        init["imitation"] = ["--student-init", str(start / "ckpt_final.pt")]
    for start_from, name in students.items():
        student = out / "runs" / name
        run_step(name, stage("distill.py") + ["--teacher", str(Path(args.teacher).resolve()), *scenes, *common,
                 *init[start_from], "--out", str(student), "--rounds", str(args.rounds), "--frames-per-round",
                 str(args.frames_per_round), "--steps-per-round", str(args.steps_per_round), "--aux-state-coef",
                 str(args.aux_state_coef), "--loss", args.student_loss, "--learning-rate",
                 str(args.student_learning_rate), "--train-part", args.student_train_part,
                 *(["--replay-frames", str(perception / "frames.pt")] if args.student_replay else [])],
                 student / "ckpt_final.pt", logs, steps,
                 args.dry_run)
    matched = 2 if "imitation" in students else 1  # the baseline: the start's budget plus the rounds'
    imitation("baseline", baseline, matched * frames, matched * grad_steps)
    ev = out / "eval"
    policies = {"teacher": Path(args.teacher).resolve(), **({"start": start / "ckpt_final.pt"} if matched == 2 else {}),
                **{before(name): out / "runs" / name / "ckpt_start.pt" for s, name in students.items() if s == "teacher"},
                **{name: out / "runs" / name / "ckpt_final.pt" for name in students.values()},
                "baseline": baseline / "ckpt_final.pt"}
    cmd = evaluate_cmd(list(policies.values()), list(policies), args.scenes_dir, args.train_scenes + args.heldout_scenes,
                       args.eval_episodes_per_scene, args.eval_seed, ev, args.num_envs, args.max_decisions)
    # the teacher reads the exact features, as when it labels (a teacher trained under noise too: design v11)
    run_step("evaluate", cmd + ["--video-scenes", str(args.video_scenes), "--object-state-noise-m", "0", "0"],
             ev / "results.json", logs, steps, args.dry_run)
    if args.dry_run:
        return out
    print(write_report(out, args, results_per_scene(ev / "results.json"), time.time() - t0))
    return out


def perception_line(summary: Path, args: Args) -> str:
    """The report's sentence on step 0 (empty without it): frames, and the held-out localisation it reached."""
    if not args.perception_frames:
        return ""
    return f"Both start from perception pretraining ({perception_summary(summary, args.perception_steps)}). "


def round_costs(metrics: Path) -> list[dict]:
    """distill.py's per-round summary rows: frames, rollout success, collect / train seconds."""
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    return [r for r in rows if r.get("summary")]


STARTS_AS = {"teacher": "starting as the teacher with the perception's image path",
             "imitation": "starting from `start`, plain imitation of the scripted expert",
             "perception": "starting from the perception checkpoint, as the baseline does"}


LOSS_AS = {"chunk": "on the deterministic chunk (the student's K-step chunk from the label's own noise, regressed on "
                    "the label)", "flow_matching": "Eq. 1 (flow matching on the labels)"}


def before(name: str) -> str:
    """The policy label of a student before its first DAgger round (distill.py's ckpt_start.pt)."""
    return f"pre_{name}"


def student_labels(args: Args) -> dict[str, str]:
    """--student-start -> the student's policy label, which is also its folder under runs/: `student` when there is
    one (designs v1-v7), `student_<start>` when there are several."""
    return {s: "student" if len(args.student_start) == 1 else f"student_{s}" for s in args.student_start}


def write_report(out: Path, args: Args, per: dict[str, dict], wall: float) -> str:
    tr, ho = args.train_scenes, args.heldout_scenes
    sr = {p: pooled(per[p], tr) for p in per}
    hsr = {p: pooled(per[p], ho) for p in per} if ho else {}
    students = student_labels(args)
    m = len(students)
    z, level = NormalDist().inv_cdf(1 - 0.025 / m), f"{100 - 5 / m:g}%"  # Bonferroni over the students
    order = [p for p in ("teacher", "start", *[x for n in students.values() for x in (before(n), n)], "baseline")
             if p in per]
    vs = {name: {ref: newcombe_diff(*sr[name], *sr[ref], z=z) for ref in ("baseline", "start", before(name), "teacher")
                 if ref in per} for name in students.values()}
    rate = {p: k / n for p, (k, n) in sr.items()}
    said = []
    for start_from, name in students.items():
        d, lo, hi = vs[name]["baseline"]
        shown = ("above the plain-imitation pixel policy" if lo > 0 else "below the plain-imitation pixel policy"
                 if hi < 0 else "not distinguishable from the plain-imitation pixel policy")
        said.append(f"the DAgger student `{name}`, {STARTS_AS[start_from]}, is {shown}: {rate[name]:.1%} vs "
                    f"{rate['baseline']:.1%}, difference {d:+.1%}, {level} Newcombe interval [{lo:+.1%}, {hi:+.1%}]")
    met = any(v["baseline"][1] > 0 for v in vs.values())
    verdict = (f"**Verdict ({PIXEL}; teacher: {STATE_PROXY_LABEL}):** on the {len(tr)} training scene{'s' * (len(tr) > 1)} "
               + "; ".join(said) + " (unit: the evaluation episode, one training seed each"
               + (f"; {level} = 95% Bonferroni-corrected over the {m} students" if m > 1 else "")
               + f"); the teacher makes {rate['teacher']:.1%}. Issue 32's goal (a student above the baseline, its "
               f"interval excluding 0): **{'met' if met else 'not met'}**.")
    costs = {name: round_costs(out / "runs" / name / "metrics.jsonl") for name in students.values()}
    baseline_frames = len(torch.load(out / "runs/baseline/demos.pt", weights_only=True)["action"])
    matched = 2 if "start" in per else 1
    start_frames = len(torch.load(out / "runs/start/demos.pt", weights_only=True)["action"]) if matched == 2 else 0
    trained_on = ", ".join(f"{c[-1]['charts/aggregate_frames']}" for c in costs.values())
    lines = [f"# DAgger: object-state teacher -> pixel student ({PIXEL})\n", verdict + "\n",
             f"Teacher `{args.teacher}` ({STATE_PROXY_LABEL}). "
             + ("Student" if m == 1 else f"{m} students, ") + f"distill.py, {args.rounds} rounds x "
             f"{args.frames_per_round} frames, {args.steps_per_round} steps per round ({trained_on} "
             f"frames trained on), DAgger loss {LOSS_AS[args.student_loss]} at learning rate "
             f"{args.student_learning_rate:g}, auxiliary object-state loss weight {args.aux_state_coef:g}. Baseline: "
             "train_imitation.py "
             f"on {baseline_frames} scripted-expert frames, "
             f"{matched * args.rounds * args.steps_per_round} steps"
             + (" (the start's and the rounds' frames and steps together)" if matched == 2 else "")
             + f". Pixel policies: preset `{args.preset}`"
             + (f", vision tower `{args.vision_preset}`" if args.vision_preset != args.preset else "")
             + (", the object features the teacher reads estimated from the camera into the state token, an "
                "instruction-only prefix" if args.estimate_object_state else "")
             + (" (the estimate trained by object-state supervision alone)" if args.estimate_detached
                and args.estimate_object_state else "")
             + "".join(f"; `{name}` {STARTS_AS[s]}" + (f" (`{before(name)}`: it before its first round)"
                                                         if before(name) in per else "")
                       for s, name in students.items())
             + (f"; `start`: plain imitation on the scripted expert's {start_frames} frames, "
                f"{args.rounds * args.steps_per_round} steps" if matched == 2 else "") + "; env flags "
             f"`{args.env_extra or '(none: full Table A.2 randomisation)'}`, evaluated in the env they trained in. "
             + perception_line(out / "runs/perception/summary.json", args) +
             f"Evaluation: deterministic, seeds {args.eval_seed}..{args.eval_seed + args.eval_episodes_per_scene - 1} "
             "in every scene.\n",
             "| policy | observes | training scenes SR [Wilson 95%] | held-out SR [Wilson 95%] |", "|---|---|---:|---:|"]
    cam = f"64 px camera ({args.preset}{'; object state estimated from it' if args.estimate_object_state else ''})"
    for p in order:
        cells = []
        for k, n in [sr[p]] + ([hsr[p]] if ho else []):
            w0, w1 = wilson_interval(k, n)
            cells.append(f"{k}/{n} = {k / n:.1%} [{w0:.1%}, {w1:.1%}]")
        sees = "object state (proxy)" if p == "teacher" else cam
        lines.append(f"| {p} | {sees} | " + " | ".join(cells + ([] if ho else ["-"])) + " |")
    lines += ["", f"| difference (training scenes) | SR difference | {level} Newcombe |", "|---|---:|---:|"]
    lines += [f"| {name} - {ref} | {v[0]:+.1%} | [{v[1]:+.1%}, {v[2]:+.1%}] |"
              for name, refs in vs.items() for ref, v in refs.items()]
    lines += ["", "## Per scene (SR)\n", f"| scene | split | {' | '.join(order)} |", "|---|---|" + "---:|" * len(order)]
    for s in tr + ho:
        lines.append(f"| {s} | {'train' if s in tr else 'held-out'} | " + " | ".join(
            f"{per[p][s]['success_rate']:.0%}" if s in per[p] else "-" for p in order) + " |")
    videos = sorted((out / "eval").glob("render/*/*/video.mp4"))
    lines += ["", "## Videos\n"] + ([f"- [{v.parent.parent.name}: {v.parent.name}]({v.relative_to(out).as_posix()})"
                                    for v in videos] or ["_none recorded (--video-scenes 0)_"])
    for name, rows in costs.items():
        lines += ["", f"## Cost of the DAgger rounds ({name})\n", "| round | beta | frames (trainable aggregate) | "
                  "objects off the workspace | rollout SR | collect s | train s |", "|---:|---:|---:|---:|---:|---:|---:|"]
        for c in rows:
            rsr = c.get("charts/rollout_success_rate")
            lines.append(f"| {c['round']} | {c['charts/beta']:.3f} | {c['charts/frames']} ({c['charts/aggregate_frames']}) | "
                         f"{c.get('charts/frames_off_workspace', '-')} | {'-' if rsr is None else f'{rsr:.2f}'} | "
                         f"{c['time/collect_s']:.0f} | {c['time/train_s']:.0f} |")
    st = json.loads((out / "steps.json").read_text())
    lines += ["", "## Budget\n", "| step | wall s | command |", "|---|---:|---|"]
    lines += [f"| {k} | {fmt_wall(v)} | `{v['cmd'][:200]}` |" for k, v in st.items()]
    lines += ["", f"Machine: `{json.dumps(machine_info())}`; this invocation {wall:.0f} s.\n"]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    (out / "report.json").write_text(json.dumps({
        "label": PIXEL, "teacher_label": STATE_PROXY_LABEL, "train": {p: list(v) for p, v in sr.items()},
        "heldout": {p: list(v) for p, v in hsr.items()}, "interval_level": level, "goal_met": met,
        "student_vs": {name: {r: list(v) for r, v in refs.items()} for name, refs in vs.items()},
        "verdict": verdict, "rounds": costs, "args": asdict(args)}, indent=2))
    return text


if __name__ == "__main__":
    main(tyro.cli(Args))
