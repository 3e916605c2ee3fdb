"""Asset-stage benchmark: a broad set of scene graphs (categories as users write them) -> assets.

Prints acceptance rate, mean attempts per accepted asset and seconds per asset (CPU), and the
per-category outcome. Outputs go to --out (default /tmp/bench_assets); look at contact_sheet.png.

    python benchmarks/bench_assets.py --out /tmp/bench_assets
    python benchmarks/bench_assets.py --out /tmp/bench_assets --workers 2
"""

import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import generate_assets as ga  # noqa: E402
import scene_schema as ss  # noqa: E402


@dataclass
class Args:
    out: str = "/tmp/bench_assets"
    """Scratch folder (wiped): scenes/ and assets/ are written below it."""
    workers: int = 1
    """Process-pool size passed to generate_assets."""
    max_attempts: int = 4
    """Attempts per asset."""


# (name, category, description, size_m, colour, material, graspable, receptacle) as a designer would write them
TARGETS = [
    ("red_apple", "apple", "a shiny red apple", (0.08, 0.08, 0.08), "red", None),
    ("banana", "banana", "a ripe yellow banana", (0.19, 0.04, 0.04), "yellow", None),
    ("carrot", "carrot", "an orange carrot", (0.16, 0.03, 0.03), "orange", None),
    ("eggplant", "eggplant", "a purple eggplant", (0.2, 0.07, 0.07), "purple", None),
    ("lemon", "lemon", "a yellow lemon", (0.08, 0.06, 0.06), "yellow", None),
    ("grapes", "grapes", "a bunch of green grapes", (0.13, 0.08, 0.05), "green", None),
    ("pear", "pear", "a green pear", (0.07, 0.07, 0.11), "green", None),
    ("tomato", "tomato", "a ripe red tomato", (0.07, 0.07, 0.06), "red", None),
    ("potato", "potato", "a brown potato", (0.1, 0.06, 0.05), "brown", None),
    ("mushroom", "mushroom", "a white mushroom", (0.06, 0.06, 0.05), "white", None),
    ("broccoli", "broccoli", "a head of broccoli", (0.09, 0.09, 0.1), "green", None),
    ("cucumber", "cucumber", "a green cucumber", (0.2, 0.045, 0.045), "green", None),
    ("strawberry", "strawberry", "a red strawberry", (0.045, 0.04, 0.04), "red", None),
    ("pepper", "bell_pepper", "a yellow bell pepper", (0.08, 0.08, 0.09), "yellow", None),
    ("egg", "egg", "a white egg", (0.06, 0.045, 0.045), "white", None),
    ("donut", "donut", "a chocolate donut", (0.09, 0.09, 0.03), "brown", None),
    ("cookie", "cookie", "a round cookie", (0.07, 0.07, 0.01), "tan", None),
    ("pen", "pen", "a blue ballpoint pen", (0.14, 0.012, 0.012), "blue", "plastic"),
    ("pencil", "pencil", "a yellow pencil", (0.18, 0.008, 0.008), "yellow", "wood"),
    ("marker", "marker", "a black marker", (0.14, 0.018, 0.018), "black", "plastic"),
    ("spoon", "spoon", "a silver metal spoon", (0.17, 0.04, 0.01), "silver", "metal"),
    ("fork", "fork", "a stainless steel fork", (0.19, 0.025, 0.01), "silver", "steel"),
    ("knife", "butter_knife", "a butter knife", (0.21, 0.02, 0.01), "silver", "metal"),
    ("spatula", "spatula", "a black plastic spatula", (0.28, 0.07, 0.02), "black", "plastic"),
    ("screwdriver", "screwdriver", "a screwdriver with a red handle", (0.2, 0.03, 0.03), "red", "plastic"),
    ("hammer", "hammer", "a small hammer", (0.28, 0.1, 0.03), "brown", "wood"),
    ("scissors", "scissors", "a pair of scissors", (0.17, 0.07, 0.01), "blue", "metal"),
    ("toy_block", "toy_block", "a green wooden toy block", (0.04, 0.04, 0.04), "green", "wood"),
    ("tennis_ball", "tennis_ball", "a yellow-green tennis ball", (0.065, 0.065, 0.065), "lime", "rubber"),
    ("toy_car", "toy_car", "a small red toy car", (0.1, 0.05, 0.04), "red", "plastic"),
    ("figure", "action_figure", "a blue action figure", (0.05, 0.04, 0.11), "blue", "plastic"),
    ("duck", "rubber_duck", "a yellow rubber duck", (0.09, 0.07, 0.08), "yellow", "rubber"),
    ("sponge", "sponge", "a yellow kitchen sponge", (0.1, 0.07, 0.03), "yellow", "foam"),
    ("phone", "smartphone", "a black smartphone", (0.15, 0.07, 0.01), "black", None),
    ("remote", "remote_control", "a grey TV remote control", (0.18, 0.05, 0.02), "grey", "plastic"),
    ("soda_can", "soda_can", "a red soda can", (0.066, 0.066, 0.12), "red", "aluminium"),
    ("bottle", "water_bottle", "a blue plastic water bottle", (0.07, 0.07, 0.22), "blue", "plastic"),
    ("towel", "dish_towel", "a folded blue dish towel", (0.2, 0.15, 0.02), "blue", "cotton"),
    ("tape", "tape_roll", "a roll of grey duct tape", (0.1, 0.1, 0.05), "grey", None),
    ("mouse", "computer_mouse", "a white computer mouse", (0.11, 0.06, 0.04), "white", "plastic"),
    ("toothbrush", "toothbrush", "a pink toothbrush", (0.18, 0.02, 0.02), "pink", "plastic"),
    ("stapler", "stapler", "a black stapler", (0.15, 0.04, 0.05), "black", "metal"),
    ("gadget", "thingamajig", "a purple thingamajig", (0.07, 0.05, 0.04), "purple", None),
]
DESTINATIONS = [
    ("bowl", "bowl", "a white ceramic bowl", (0.16, 0.16, 0.06), "white", "ceramic", "IN"),
    ("plate", "plate", "a blue dinner plate", (0.22, 0.22, 0.025), "blue", "ceramic", "ON"),
    ("mug", "coffee_mug", "a red coffee mug", (0.12, 0.085, 0.1), "red", "ceramic", "IN"),
    ("basket", "basket", "a brown wicker basket", (0.3, 0.22, 0.12), "brown", None, "IN"),
    ("pot", "cooking_pot", "a silver cooking pot", (0.26, 0.2, 0.12), "silver", "steel", "IN"),
    ("pan", "frying_pan", "a black frying pan", (0.38, 0.22, 0.05), "black", "metal", "ON"),
    ("tray", "serving_tray", "a wooden serving tray", (0.35, 0.25, 0.03), "tan", "wood", "ON"),
    ("holder", "pen_holder", "a black pen holder", (0.08, 0.08, 0.1), "black", "plastic", "IN"),
    ("bin", "trash_can", "a grey trash can", (0.25, 0.25, 0.3), "grey", "plastic", "IN"),
    ("box", "cardboard_box", "an open cardboard box", (0.25, 0.2, 0.12), "brown", "cardboard", "IN"),
    ("board", "cutting_board", "a wooden cutting board", (0.35, 0.22, 0.02), "tan", "wood", "ON"),
    ("book", "book", "a green hardcover book", (0.24, 0.16, 0.03), "green", "paper", "ON"),
    ("cup", "paper_cup", "a white paper cup", (0.08, 0.08, 0.1), "white", "paper", "IN"),
    ("teacup", "teacup", "a pink teacup", (0.12, 0.1, 0.06), "pink", "porcelain", "IN"),
    ("vase", "vase", "a tall blue vase", (0.1, 0.1, 0.2), "blue", "ceramic", "IN"),
    ("planter", "flower_pot", "a terracotta flower pot", (0.13, 0.13, 0.12), "orange", "terracotta", "IN"),
    ("glass", "drinking_glass", "a clear drinking glass", (0.07, 0.07, 0.12), "light blue", "glass", "IN"),
    ("notebook", "notebook", "a red spiral notebook", (0.21, 0.15, 0.015), "red", "paper", "ON"),
    ("container", "storage_container", "a clear plastic storage container", (0.25, 0.18, 0.1), "white", "plastic", "IN"),
    ("jar", "jar", "a glass jar", (0.08, 0.08, 0.11), "white", "glass", None),
    ("teapot", "teapot", "a white teapot", (0.2, 0.13, 0.12), "white", "ceramic", None),
    ("carton", "milk_carton", "a milk carton", (0.07, 0.07, 0.2), "white", "cardboard", None),
]


def build_scenes() -> list[ss.SceneGraph]:
    graphs = []
    for i, (name, cat, desc, size, color, material) in enumerate(TARGETS):
        dname, dcat, ddesc, dsize, dcolor, dmat, rec = DESTINATIONS[i % len(DESTINATIONS)]
        rel = rec or "ON"
        objs = [ss.SceneObject("table", "background", "table", "a wooden table"),
                ss.SceneObject(name, "target", cat, desc, ss.ObjectAttributes(color, material), list(size), True),
                ss.SceneObject(dname, "destination", dcat, ddesc, ss.ObjectAttributes(dcolor, dmat), list(dsize), False, rec or "ON")]
        graphs.append(ss.SceneGraph(scene_id=f"s{i:02d}_{name}", task=f"put the {desc} {rel.lower()} the {ddesc}",
                                    objects=objs, relations=[ss.Relation(name, rel, dname, "goal")]))
    return graphs


def main(args: Args) -> None:
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    for g in build_scenes():
        ss.save_scene_graph(g, out / "scenes" / g.scene_id / "scene_graph.json")
    t0 = time.time()
    s = ga.main(ga.Args(scenes_dir=str(out / "scenes"), assets_dir=str(out / "assets"), workers=args.workers,
                        max_attempts=args.max_attempts))
    wall = time.time() - t0
    recs = [ss.load_asset_record(p.parent) for p in sorted((out / "assets").glob("*/asset.json"))]
    times = sorted(r.args["seconds"] for r in recs)
    print(f"\n{len(recs)} assets over {len({r.args['template'] for r in recs})} templates, {s['scenes']} scenes")
    print(f"acceptance rate {s['acceptance_rate']:.1%}, mean attempts per accepted {s['mean_attempts_per_accepted']:.2f}, "
          f"seconds/asset mean {s['seconds_per_asset']:.2f} median {times[len(times) // 2]:.2f} max {times[-1]:.2f}, "
          f"wall {wall:.1f} s (workers={args.workers}); CPU s/asset {s['cpu_seconds_per_asset']:.2f}")
    print("first-attempt pass rates:", json.dumps(s["first_attempt_pass_rate"]))
    for r in sorted(recs, key=lambda r: -r.args["seconds"]):
        parts = len(r.paths.get("collision", []))
        print(f"  {r.category:18s} {r.args['template']:14s} {'ok ' if r.accepted else 'REJ'} x{r.attempts} "
              f"{r.args['seconds']:5.2f}s cpu {r.args.get('cpu_seconds', 0):5.2f}s parts={parts:2d} bbox={[round(b, 3) for b in r.bbox_m]} {r.mass_kg:.3f}kg"
              + ("" if r.accepted else f"  {r.reject_reason}"))
    print(f"contact sheet: {out / 'assets' / 'contact_sheet.png'}")


if __name__ == "__main__":
    main(tyro.cli(Args))
