"""Text -> sim-ready 3D assets with automatic QA and retries (paper Sec. 3, Appendix C).

Every target / destination / distractor named in `scenes/<id>/scene_graph.json` becomes
`assets/<asset_id>/{visual.glb, collision_*.obj, thumb.png, asset.json}` and each scene gets
`scenes/<id>/asset_links.json` (object name -> asset id). Pipeline per asset and attempt:

    backend mesh -> repair + simplify -> auto-scale (size_m, 74 mm gripper) -> geometry QA
    -> collision (one convex hull, or coacd parts for concave templates) -> SAPIEN drop test
    -> thumbnail render -> colour QA -> optional VLM semantic + text-to-3D alignment QA

A failed check resamples the seed and retries (`--max-attempts`). Backends:
  procedural  parametric trimesh templates (offline default, ~70 templates, keyword rules + fallbacks;
              `asset_templates.py`, which also holds the colour and material tables)
  library     reuse meshes from `<library-dir>/<folder>/*.{glb,obj,ply,stl}` (the paper's fast path): the folder
              is the category slug (`coffee_mug/`) or else the longest folder name found in the category or
              description (`mug/`); files are ranked by word overlap with the description and attempt k takes
              the k-th. Meshes must be z up (any scale: auto-scaled); no match -> procedural (recorded)
  command     any text-to-3D CLI: `--command-template "trellis-cli --prompt {prompt} --seed {seed} --out {out}"`
              (placeholders {prompt} {seed} {out} {category}; `{out}` must receive a mesh file). External
              meshes are repaired, simplified and coacd-decomposed; their colours/textures become one PBR colour.

Stability check (documented choice): the collision parts are dropped 3 mm onto a plane in SAPIEN
(physx_cpu, ManiSkill's default physics settings at the env's 500 Hz), tilted 4 deg (so a balanced-but-unstable pose falls as it would for real), and simulated
for `--settle-s` without extra damping; it must end tilted < 15 deg, within 2 cm of where it landed,
and at rest = its position stays within 5 mm over the last 0.5 s (a residual wobble on a round base
is fine; sliding, rolling away or tipping over is not). Templates marked `rolls` (balls, round fruit,
lying cylinders) may roll on PhysX's plane (no rolling resistance): tilt is not checked, they may
drift 10 cm and must stay within 2 cm over the last 0.5 s.

    python generate_assets.py --scenes-dir scenes --assets-dir assets
    python generate_assets.py --scenes-dir scenes --assets-dir assets --workers 2 --shard 0/4 \
        --vlm-base-url http://localhost:8000/v1 --vlm-model gpt-4o
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import trimesh
import tyro

import scene_schema as ss
from asset_templates import (COLORS, MATERIAL_ALIASES, MATERIAL_COLORS, MATERIALS, TEMPLATES, Template, category_range,
                             choose_template, proportion_stretch, spaced_words, template_fingerprint, to_frame)


@dataclass
class Args:
    scenes_dir: str = "scenes"
    """Folder of `<scene_id>/scene_graph.json` files (scene_designer.py output)."""
    assets_dir: str = "assets"
    """Output folder: one `<asset_id>/` folder per asset, plus `contact_sheet.png` and `summary.json`."""
    scene_ids: list[str] | None = None
    """Only these scenes (default: every scene graph under --scenes-dir)."""
    backend: Literal["procedural", "library", "command"] = "procedural"
    """Where raw meshes come from (the rest of the stage is the same for all)."""
    library_dir: str | None = None
    """Asset library for `--backend library`: `<dir>/<category>/<name>.{glb,obj,ply,stl}`, z up."""
    library_fallback: bool = True
    """With `--backend library`: use the procedural template when the library has no match."""
    command_template: str | None = None
    """With `--backend command`: shell-free command line with {prompt} {seed} {out} {category}."""
    command_out_ext: str = "glb"
    """File extension of `{out}` (what the external tool writes: glb, obj, ply, stl)."""
    command_timeout_s: float = 900.0
    """Kill the external text-to-3D command after this many seconds (counts as a failed attempt)."""
    seed: int = 0
    """First seed; attempt k uses seed + k. The asset id hashes this seed (scene_schema.asset_id_for)."""
    max_attempts: int = 4
    """Generation attempts per asset before it is rejected (paper: 1.37 on average)."""
    workers: int = 1
    """Process-pool size (each worker keeps one SAPIEN scene; LP_NUM_THREADS=1 per worker)."""
    shard: str = "0/1"
    """`i/n`: generate only the assets whose id hashes to shard i of n (one process per machine)."""
    overwrite: bool = False
    """Regenerate even when `assets/<id>/asset.json` exists (default: reuse, a cache hit costs nothing)."""
    retry_rejected: bool = False
    """Regenerate cached assets that were rejected before (accepted ones stay cached)."""
    face_budget: int = 4000
    """Visual meshes with more faces are simplified (fast_simplification) to this many."""
    grip_max_m: float = 0.06
    """Graspable objects are scaled down until their smallest horizontal extent is <= this (74 mm gripper)."""
    coacd_threshold: float = 0.1
    """coacd concavity threshold (only concave templates and external meshes are decomposed)."""
    coacd_max_hulls: int = 10
    """Upper bound on convex parts per concave object."""
    coacd_resolution: int = 30
    """coacd preprocess voxel resolution, used only for non-watertight (external) meshes; manifold ones skip it."""
    coacd_input_faces: int = 500
    """Mesh given to coacd is first simplified to about this many faces (speed)."""
    stability_check: bool = True
    """Drop-test every asset in SAPIEN (physx_cpu) and render its thumbnail; off = geometry QA only."""
    settle_s: float = 1.0
    """Simulated seconds of the drop test."""
    thumb_size: int = 192
    """Thumbnail side in pixels."""
    hue_tol_deg: float = 35.0
    """Colour QA: largest hue distance between the rendered dominant colour and the requested one."""
    vlm_base_url: str | None = None
    """OpenAI-compatible endpoint for the semantic-appearance and text-to-3D-alignment checks (off when unset)."""
    vlm_model: str = "gpt-4o"
    """Model name sent to the VLM endpoint."""
    vlm_api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the VLM API key ("EMPTY" when unset, fine for local servers)."""
    contact_sheet_max: int = 240
    """At most this many thumbnails on `contact_sheet.png`."""

    @property
    def shard_index(self) -> tuple[int, int]:
        m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", self.shard)
        if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
            raise ValueError(f"--shard {self.shard!r}: expected i/n with 0 <= i < n, e.g. 0/4")
        return int(m.group(1)), int(m.group(2))

    @property
    def generator(self) -> str:
        """Name hashed into asset ids: same description + category + generator + seed = same asset
        (a different text-to-3D command template is a different generator)."""
        if self.backend == "command":
            return f"command-{ss.content_hash(self.command_template or '', 8)}"
        return self.backend


SIM_ROLES = ("target", "destination", "distractor")
MASS_RANGE_KG = (0.005, 5.0)


# ---------------------------------------------------------------------------------------------
# Pure helpers: words -> colour / material, scale, mass, colour check
# ---------------------------------------------------------------------------------------------


def find_word(text: str | None, table) -> str | None:
    """Longest table key that appears as whole words in `text` (None if none)."""
    words = spaced_words(text or "")
    hits = [k for k in table if f" {k} " in words]
    return max(hits, key=len) if hits else None


def resolve_material(text: str | None) -> str | None:
    """Material word(s) ("stainless steel", "wooden") -> a key of MATERIALS, or None."""
    w = find_word(text, {**MATERIALS, **MATERIAL_ALIASES})
    return MATERIAL_ALIASES.get(w, w)


def auto_scale(extents, size_m, graspable: bool, grip_max_m: float) -> tuple[float, str]:
    """Uniform scale: longest side -> longest side of size_m, then shrink graspable objects until the
    smallest horizontal extent fits the gripper (paper App. C: scale by mesh bounding box)."""
    ext = np.asarray(extents, float)
    s = float(max(size_m) / ext.max())  # ALGO LOGIC
    why = f"longest side -> {max(size_m):.3f} m"
    min_h = s * ext[:2].min()
    if graspable and min_h > grip_max_m:
        s *= grip_max_m / min_h
        why += f"; shrunk so its smallest horizontal extent is {grip_max_m * 1000:.0f} mm (74 mm gripper)"
    return s, why


def mass_from(volume_m3: float, material: str, fill: float = 1.0) -> float:
    """Mass = volume x material density x fill (fill < 1 for shells modelled as solids), clamped."""
    return float(np.clip(volume_m3 * MATERIALS[material][0] * fill, *MASS_RANGE_KG))


def rgb_to_hsv(rgb) -> np.ndarray:
    import colorsys

    return np.array(colorsys.rgb_to_hsv(*np.clip(np.asarray(rgb, float), 0, 1)))


def dominant_color(pixels: np.ndarray) -> np.ndarray:
    """Mean colour of the most populated cell of a coarse 6x6x6 RGB histogram ([N, 3] floats in 0-1)."""
    q = np.clip((pixels * 6).astype(int), 0, 5)
    key = q[:, 0] * 36 + q[:, 1] * 6 + q[:, 2]
    return pixels[key == np.bincount(key).argmax()].mean(0)


def color_matches(rendered_rgb, requested: str, hue_tol_deg: float = 35.0) -> tuple[bool, str]:
    """Chromatic colours: hue distance <= tol and enough saturation; white/grey/black: low saturation + value band."""
    want = np.asarray(COLORS[requested])
    hw, hr = rgb_to_hsv(want), rgb_to_hsv(rendered_rgb)
    got = f"rendered dominant colour rgb={np.round(rendered_rgb, 2).tolist()} (h={hr[0] * 360:.0f} s={hr[1]:.2f} v={hr[2]:.2f})"
    if hw[1] < 0.2:  # achromatic request
        v_lo, v_hi = (0.0, 0.3) if hw[2] < 0.2 else (0.45, 1.01) if hw[2] > 0.85 else (0.12, 0.95)
        ok = hr[1] < 0.3 and v_lo <= hr[2] <= v_hi
        return ok, f"{got} vs {requested!r}: needs saturation < 0.3 and value in [{v_lo}, {v_hi:.2f}]"
    dh = abs(hr[0] - hw[0]) * 360
    dh = min(dh, 360 - dh)
    ok = dh <= hue_tol_deg and hr[1] >= 0.25 * hw[1] and hr[2] > 0.05
    return ok, f"{got} vs {requested!r} (h={hw[0] * 360:.0f}): hue distance {dh:.0f} deg (tol {hue_tol_deg:.0f})"


def in_shard(asset_id: str, shard: tuple[int, int]) -> bool:
    """Stable partition of asset ids over n shards (sha256, independent of run order)."""
    i, n = shard
    return int(ss.content_hash(asset_id), 16) % n == i


def parse_vlm_answer(text: str) -> tuple[bool, str]:
    """`{"pass": bool, "reason": str}` anywhere in the reply (code fences tolerated)."""
    m = re.search(r"\{.*\}", text or "", re.S)
    if not m:
        raise ValueError(f"VLM reply has no JSON object: {text[:200]!r}")
    d = json.loads(m.group(0))
    if not isinstance(d.get("pass"), bool):
        raise ValueError(f"VLM reply lacks a boolean 'pass': {text[:200]!r}")
    return d["pass"], str(d.get("reason", ""))


# ---------------------------------------------------------------------------------------------
# Backends: request + attempt seed -> raw trimesh (any frame, any scale) + provenance
# ---------------------------------------------------------------------------------------------


def generate_procedural(req: dict, seed: int) -> tuple[trimesh.Trimesh, dict]:
    t = TEMPLATES[req["template"]]
    rng = np.random.default_rng([seed, int(ss.content_hash(ss.normalize_text(req["description"])), 16) % 2**32])
    size = tuple(req["size_m"] or t.size)
    return t.build(rng.uniform, size), {"backend": "procedural", "template": req["template"]}


def _load_mesh(path: Path) -> trimesh.Trimesh:
    m = trimesh.load(str(path), force="mesh", process=True)
    if not isinstance(m, trimesh.Trimesh) or len(m.faces) == 0:
        raise ValueError(f"{path.name}: no triangles could be read")
    return m


def generate_library(req: dict, seed: int, library_dir: str) -> tuple[trimesh.Trimesh, dict]:
    """`<lib>/<category slug>/*.{glb,obj,ply,stl}`; otherwise the folder named by the longest word match
    in category/description. Files are ranked by word overlap with the description; attempt k takes the k-th."""
    lib = Path(library_dir)
    folders = {p.name: p for p in lib.iterdir() if p.is_dir()} if lib.is_dir() else {}
    slug = ss.slugify(req["category"])
    name = slug if slug in folders else None
    if name is None:
        text = spaced_words(req["category"] + " " + req["description"])
        hits = [k for k in folders if f" {k.replace('_', ' ')} " in text]
        name = max(hits, key=len) if hits else None
    if name is None:
        raise LookupError(f"library {lib} has no folder for category {req['category']!r} ({len(folders)} folders)")
    files = sorted(p for p in folders[name].iterdir() if p.suffix.lower() in (".glb", ".gltf", ".obj", ".ply", ".stl"))
    if not files:
        raise LookupError(f"library folder {folders[name]} holds no mesh files")
    desc = set(spaced_words(req["description"]).split())
    files.sort(key=lambda p: -len(desc & set(spaced_words(p.stem).split())))
    pick = files[seed % len(files)]
    return _load_mesh(pick), {"backend": "library", "source": str(pick)}


def _kill_command(pgid: int, marker: str) -> None:
    """Kill the command's process group, and any process that carries its run marker in its environment (a child
    that left the group with setsid); Linux /proc only for the latter."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # the group is already gone
        pass
    needle = f"GENSCENE_COMMAND_RUN={marker}".encode()
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in env.read_bytes().split(b"\0"):
                os.kill(int(env.parent.name), signal.SIGKILL)
        except (OSError, ValueError):  # gone, or not ours to read
            pass


def generate_command(req: dict, seed: int, template: str, out: Path, timeout_s: float, ext: str) -> tuple[trimesh.Trimesh, dict]:
    """Run the external text-to-3D command (no shell); a non-zero exit, timeout, missing or unreadable
    output raises with the command's stderr tail."""
    out = out / f"raw_{seed}.{ext}"
    subs = {"{prompt}": req["description"], "{seed}": str(seed), "{out}": str(out), "{category}": req["category"]}
    argv = [re.sub("|".join(map(re.escape, subs)), lambda m: subs[m.group(0)], tok) for tok in shlex.split(template)]
    # its own process group, killed whenever the command ends (success, failure, time-out, Ctrl-C): no child it
    # started (a detached server, a stray `sleep`) outlives it
    marker = uuid.uuid4().hex
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            start_new_session=True, env={**os.environ, "GENSCENE_COMMAND_RUN": marker})
    try:
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_command(proc.pid, marker)
            proc.communicate()
            raise RuntimeError(f"command timed out after {timeout_s:.0f} s (its process group was killed): {argv[0]}") from None
    finally:
        _kill_command(proc.pid, marker)
    if proc.returncode != 0:
        raise RuntimeError(f"command exited with {proc.returncode}: {(stderr or stdout).strip()[-300:]}")
    if not out.exists() or out.stat().st_size == 0:
        raise RuntimeError(f"command wrote no mesh at {{out}} ({out.name}); stderr: {stderr.strip()[-200:]}")
    try:
        mesh = _load_mesh(out)
    except Exception as e:  # noqa: BLE001 - any parser error means a corrupt file
        raise RuntimeError(f"corrupt mesh from command ({out.name}): {type(e).__name__}: {e}") from None
    return mesh, {"backend": "command", "argv": argv}


# ---------------------------------------------------------------------------------------------
# Sim-ready processing and geometry QA
# ---------------------------------------------------------------------------------------------


def repair(m: trimesh.Trimesh, face_budget: int) -> tuple[trimesh.Trimesh, list[str]]:
    """Merge vertices, drop debris components, simplify to the face budget, drop degenerate/duplicate
    faces, fill holes, fix normals. Returns the mesh and notes on what was done."""
    notes = []
    m = trimesh.Trimesh(m.vertices, m.faces, visual=m.visual, process=True)
    m.merge_vertices(digits_vertex=7)  # 0.1 um: collapses the needle slivers booleans leave behind
    parts = m.split(only_watertight=False)
    if len(parts) > 1:
        area = np.array([p.area for p in parts])
        keep = [p for p, a in zip(parts, area) if a >= 0.02 * area.sum()]
        if len(keep) < len(parts):
            notes.append(f"dropped {len(parts) - len(keep)} debris/void component(s)")
            m = trimesh.util.concatenate(keep) if len(keep) > 1 else keep[0]
    if len(m.faces) > face_budget:
        import fast_simplification

        v, f = fast_simplification.simplify(m.vertices, m.faces, target_reduction=1 - face_budget / len(m.faces))
        notes.append(f"simplified {len(m.faces)} -> {len(f)} faces")
        m = trimesh.Trimesh(v, f, process=True)  # UVs do not survive decimation: uniform colour below
    bad = ~(m.nondegenerate_faces() & m.unique_faces())
    if bad.any():
        m.update_faces(~bad)
        m.remove_unreferenced_vertices()
        notes.append(f"removed {int(bad.sum())} degenerate/duplicate faces")
    if not m.is_watertight:
        trimesh.repair.fill_holes(m)
        notes.append("filled holes" + ("" if m.is_watertight else " (still open)"))
    trimesh.repair.fix_normals(m)
    return m, notes


def check_geometry(m: trimesh.Trimesh, tmpl: Template, graspable: bool, grip_max_m: float) -> tuple[bool, str]:
    """Non-empty, finite, one main component, watertight (or only tiny holes), no degenerate faces,
    bbox within the category range, graspable objects fit the gripper."""
    if len(m.faces) == 0 or not np.isfinite(m.vertices).all():
        return False, "empty or non-finite mesh"
    problems, notes = [], []
    areas = np.array([c.area for c in m.split(only_watertight=False)])
    n_comp = int((areas >= 0.02 * areas.sum()).sum())  # internal voids / specks do not count as parts
    if n_comp > 1:
        problems.append(f"{n_comp} disconnected components (expected one object)")
    if not m.is_watertight:
        open_frac = len(trimesh.grouping.group_rows(m.edges_sorted, require_count=1)) / max(len(m.edges), 1)
        (notes if open_frac < 0.02 else problems).append(f"not watertight ({open_frac:.1%} boundary edges)")
    n_deg = int((~m.nondegenerate_faces()).sum())
    if n_deg:
        problems.append(f"{n_deg} degenerate faces")
    ext = m.extents
    lo, hi = category_range(tmpl)
    if not lo <= ext.max() <= hi:
        problems.append(f"longest side {ext.max():.3f} m outside the category range [{lo:.3f}, {hi:.3f}] m")
    if ext.min() < 0.002 or ext.max() > ss.MAX_OBJECT_EXTENT_M:
        problems.append(f"extents {np.round(ext, 4).tolist()} m outside [0.002, {ss.MAX_OBJECT_EXTENT_M}] m")
    if graspable and ext[:2].min() > grip_max_m + 1e-6:
        problems.append(f"graspable but smallest horizontal extent {ext[:2].min() * 1000:.0f} mm > {grip_max_m * 1000:.0f} mm")
    msg = f"{len(m.faces)} faces, extents {np.round(ext, 3).tolist()} m, {n_comp} component(s)" + "".join(f"; {n}" for n in notes)
    return not problems, ("; ".join(problems) + f" ({msg})") if problems else msg


def limit_hull(h: trimesh.Trimesh, max_faces: int = 120) -> trimesh.Trimesh:
    """Convex hull with at most ~max_faces/2 vertices: PhysX reduces larger hulls itself when cooking, and
    the reduced hull can rock and "walk" on a table forever (measured on a thin 640-vertex slab)."""
    h = h.convex_hull
    if len(h.faces) > max_faces:
        import fast_simplification

        v, f = fast_simplification.simplify(h.vertices, h.faces, target_reduction=1 - max_faces / len(h.faces))
        h = trimesh.Trimesh(v, f).convex_hull
    return h


def collision_parts(m: trimesh.Trimesh, concave: bool, args: Args, seed: int) -> list[trimesh.Trimesh]:
    """One convex hull for convex-ish objects (fast); coacd parts for concave ones (containers keep walls)."""
    if not concave:
        return [limit_hull(m)]
    import coacd

    coacd.set_log_level("error")
    src = m
    if len(m.faces) > args.coacd_input_faces:
        import fast_simplification

        v, f = fast_simplification.simplify(m.vertices, m.faces, target_reduction=1 - args.coacd_input_faces / len(m.faces))
        src = trimesh.Trimesh(v, f, process=True)
    parts = coacd.run_coacd(coacd.Mesh(src.vertices, src.faces), threshold=args.coacd_threshold,  # ALGO LOGIC
                            max_convex_hull=args.coacd_max_hulls, preprocess_resolution=args.coacd_resolution,
                            preprocess_mode="off" if m.is_watertight else "auto",  # manifold input needs no remesh
                            resolution=300, mcts_nodes=4, mcts_iterations=10, mcts_max_depth=2, max_ch_vertex=64, seed=seed)
    hulls = [limit_hull(trimesh.Trimesh(v, f)) for v, f in parts]
    return [h for h in hulls if h.volume > 1e-10] or [limit_hull(m)]


def visual_color(m: trimesh.Trimesh) -> np.ndarray | None:
    """Mean RGBA (0-1) of a mesh's own vertex/face colours or texture, or None when it has none."""
    v = m.visual
    try:
        if v.kind == "texture":
            v = v.to_color()  # samples the texture (or the material colour) at the vertices
        if v.kind in ("vertex", "face"):
            return np.asarray(v.vertex_colors, float)[:, :4].mean(0) / 255
    except Exception:  # noqa: BLE001 - odd visuals: fall back to the requested colour
        return None
    return None


def wood_grain(rgb, size: int = 256, seed: int = 0) -> np.ndarray:
    """[size, size, 3] uint8 wood grain in colour `rgb` (0-1; brightness 0.72-1.0 of it, baked in: SAPIEN's glTF
    loader does not multiply a base-colour texture by its factor): rings along v whose phase wanders with u, so
    the lines run along the texture's u axis."""
    rng = np.random.default_rng(seed)
    u, v = np.meshgrid(np.linspace(0, 1, size, endpoint=False), np.linspace(0, 1, size, endpoint=False))
    wander = sum(a * np.sin(2 * np.pi * (f * u + rng.uniform())) for f, a in ((1, 0.35), (3, 0.12), (7, 0.04)))
    rings = 0.5 + 0.5 * np.sin(2 * np.pi * (9 * v + wander))
    fine = rng.normal(0, 0.025, (size, size))
    g = np.clip(0.72 + 0.28 * (0.35 + 0.65 * rings ** 3) + fine, 0, 1)
    return (g[..., None] * np.asarray(rgb, float)[None, None, :3] * 255).astype(np.uint8)


def brushed_metal(rgb, size: int = 256, seed: int = 0) -> np.ndarray:
    """[size, size, 3] uint8 brushed metal in colour `rgb` (0-1, baked in as for wood): fine streaks along the
    texture's u axis (each row a slightly different brightness, 0.8-1.0 of the colour) and a broad soft sheen band
    across v, the look of polished cutlery under a single light."""
    rng = np.random.default_rng(seed)
    u, v = np.meshgrid(np.linspace(0, 1, size, endpoint=False), np.linspace(0, 1, size, endpoint=False))
    rows = np.convolve(rng.normal(0, 1, size), np.ones(3) / 3, mode="same")  # one brightness per streak (row)
    streaks = rows[:, None] * 0.035 + rng.normal(0, 0.01, (size, size))
    sheen = 0.12 * np.exp(-((v - 0.35) / 0.12) ** 2) * (0.9 + 0.1 * np.sin(2 * np.pi * u))
    g = np.clip(0.86 + streaks + sheen, 0, 1)
    return (g[..., None] * np.asarray(rgb, float)[None, None, :3] * 255).astype(np.uint8)


PROCEDURAL_TEXTURES = {"wood": wood_grain, "metal": brushed_metal, "aluminum": brushed_metal}


def export_visual(m: trimesh.Trimesh, rgba, material: str, path: Path, seed: int = 0) -> None:
    """GLB with a PBR material (SAPIEN ignores vertex colours): metallic / roughness factors from the material,
    and a procedural texture along the object's long (x) axis where a flat colour reads wrong (wood grain, brushed
    metal); glass, ceramic and plastic are flat PBR colours."""
    from PIL import Image

    _, _, metal, rough = MATERIALS[material]
    v = m.smooth_shaded  # split vertices at sharp edges: flat box faces, smooth round ones
    texture, uv = None, None
    if material in PROCEDURAL_TEXTURES:  # a flat tan reads as cardboard, a flat grey as plastic
        lo, hi = v.bounds  # lines along x, projected from the side (x, y+z)
        ext = max(float((hi - lo).max()), 1e-6)
        uv = np.stack([(v.vertices[:, 0] - lo[0]) / ext, (v.vertices[:, 1] - lo[1] + v.vertices[:, 2] - lo[2]) / ext], 1)
        texture = Image.fromarray(PROCEDURAL_TEXTURES[material](rgba[:3], seed=seed))
    factor = [255, 255, 255, int(255 * rgba[3])] if texture is not None else (np.asarray(rgba) * 255).astype(np.uint8)
    mat = trimesh.visual.material.PBRMaterial(baseColorFactor=factor,
                                              metallicFactor=metal, roughnessFactor=rough, baseColorTexture=texture)
    v.visual = trimesh.visual.TextureVisuals(uv=uv, material=mat)
    path.write_bytes(v.export(file_type="glb"))


# ---------------------------------------------------------------------------------------------
# SAPIEN drop test + renderer (one scene per process, objects added and removed)
# ---------------------------------------------------------------------------------------------


def render_device():
    """The GPU when there is one, else the CPU (lavapipe): the same choice as scene_env, because SAPIEN allows
    one render device per process and tests run both in one process."""
    import sapien

    try:
        return sapien.Device("cuda")
    except Exception:  # noqa: BLE001 - no CUDA device
        return sapien.Device("cpu")


class SimChecker:
    """Drop test on a plane (physx_cpu) and thumbnail rendering (SAPIEN renderer, lavapipe on CPU)."""

    def __init__(self, size: int = 192):
        import sapien
        from sapien import physx

        # ManiSkill 3's default physics (SceneConfig) and the env's 500 Hz, so the verdict carries over to scenes
        physx.set_shape_config(contact_offset=0.02, rest_offset=0.0)
        physx.set_body_config(solver_position_iterations=15, solver_velocity_iterations=1, sleep_threshold=0.005)
        physx.set_scene_config(gravity=[0, 0, -9.81], bounce_threshold=2.0, enable_pcm=True, enable_tgs=True,
                               enable_ccd=False, enable_enhanced_determinism=False, enable_friction_every_iteration=True,
                               cpu_workers=0)
        self.sapien, self.hz = sapien, 500
        self.scene = sapien.Scene([physx.PhysxCpuSystem(), sapien.render.RenderSystem(render_device())])
        self.scene.set_timestep(1 / self.hz)
        ground = sapien.render.RenderMaterial(base_color=[0.82, 0.82, 0.84, 1.0], roughness=0.9)
        self.scene.add_ground(0.0, render_material=ground)
        self.scene.set_ambient_light([0.45, 0.45, 0.45])
        self.scene.add_directional_light([0.3, 0.5, -1.0], [0.75, 0.75, 0.75])
        # Camera settings are process-global in SAPIEN and ManiSkill switches them to its "minimal" shader (no
        # "Segmentation" picture, 8-bit colour): pin what this checker reads, so it works in any process.
        sapien.render.set_camera_shader_dir("default")
        sapien.render.set_picture_format("Color", "r32g32b32a32sfloat")
        self.cam = self.scene.add_camera("thumb", size, size, np.deg2rad(35), 0.005, 10.0)

    def drop_test(self, collision_files: list[Path], visual_file: Path, mass: float, friction: float,
                  rolls: bool, settle_s: float) -> tuple[bool, str, object]:
        sapien = self.sapien
        mat = sapien.physx.PhysxMaterial(friction, friction, 0.0)
        b = self.scene.create_actor_builder()
        for f in collision_files:
            b.add_convex_collision_from_file(str(f), material=mat)
        b.add_visual_from_file(str(visual_file))
        actor = b.build(name="asset")
        body = actor.find_component_by_type(sapien.physx.PhysxRigidDynamicComponent)
        body.set_mass(mass)
        tip = np.radians(4.0) / 2  # ALGO LOGIC: a 4 deg nudge, so balanced-but-unstable poses fall as they would for real
        actor.set_pose(sapien.Pose([0, 0, 0.003], [np.cos(tip), np.sin(tip) * 0.6, np.sin(tip) * 0.8, 0]))
        for _ in range(int(0.15 * self.hz)):  # land, then measure drift from the landing point
            self.scene.step()
        p0, n = actor.pose.p.copy(), int(settle_s * self.hz)
        window = []  # positions over the last 0.5 s: "at rest" = stays within a small radius (no damping needed)
        for i in range(n):
            self.scene.step()
            if i >= n - self.hz // 2:
                window.append(actor.pose.p.copy())
        p, q = actor.pose.p, actor.pose.q
        up = 2 * (q[0] ** 2 + q[3] ** 2) - 1  # z of the body's z axis (wxyz quaternion)
        tilt = float(np.degrees(np.arccos(np.clip(up, -1, 1))))
        drift = float(np.linalg.norm(p[:2] - p0[:2]))
        moving = float(np.linalg.norm(np.asarray(window) - p, axis=1).max())
        max_drift, max_moving = (0.10, 0.02) if rolls else (0.02, 0.005)  # ALGO LOGIC: rest thresholds
        ok = moving < max_moving and drift < max_drift and p[2] > -0.01 and (rolls or tilt < 15.0)
        why = (f"after {settle_s:.1f} s: moved {moving * 100:.2f} cm in the last 0.5 s (< {max_moving * 100:.1f}), "
               f"drift {drift * 100:.1f} cm (< {max_drift * 100:.0f}), tilt {tilt:.1f} deg"
               + (" (rolls: not checked)" if rolls else " (< 15)"))
        return ok, why, actor

    def render(self, actor, azimuth_deg: float = -50.0, elevation_deg: float = 30.0) -> tuple[np.ndarray, np.ndarray]:
        """RGB uint8 [S, S, 3] and object mask [S, S] bool, camera framing the actor's bounding box."""
        sapien = self.sapien
        lo, hi = actor.find_component_by_type(sapien.render.RenderBodyComponent).compute_global_aabb_tight()
        c, r = (lo + hi) / 2, max(np.linalg.norm(hi - lo) / 2, 0.01)
        az, el = np.radians(azimuth_deg), np.radians(elevation_deg)
        fwd = -np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        eye = c - fwd * r / np.sin(np.radians(35) / 2) * 1.05
        left = np.cross([0, 0, 1.0], fwd)
        left /= np.linalg.norm(left)
        pose = np.eye(4)
        pose[:3, :3], pose[:3, 3] = np.c_[fwd, left, np.cross(fwd, left)], eye
        self.cam.entity.set_pose(sapien.Pose(pose))
        self.scene.update_render()
        self.cam.take_picture()
        rgb = (np.clip(self.cam.get_picture("Color")[..., :3], 0, 1) * 255).astype(np.uint8)
        mask = self.cam.get_picture("Segmentation")[..., 1] == actor.per_scene_id
        return rgb, mask

    def remove(self, actor) -> None:
        self.scene.remove_entity(actor)


_SIM: SimChecker | None = None


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def vlm_check(cfg: dict, prompt: str, png: bytes) -> tuple[bool, str]:
    """One chat request with the rendered view as a base64 PNG; expects {"pass": bool, "reason": str}."""
    from openai import OpenAI

    client = OpenAI(base_url=cfg["vlm_base_url"], api_key=os.environ.get(cfg["vlm_api_key_env"]) or "EMPTY",
                    timeout=120, max_retries=1)
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    r = client.chat.completions.create(model=cfg["vlm_model"], temperature=0.0, max_tokens=300, messages=[
        {"role": "user", "content": [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": url}}]}])
    return parse_vlm_answer(r.choices[0].message.content)


# ---------------------------------------------------------------------------------------------
# One asset: attempts with QA, built in a temporary folder and renamed into place
# ---------------------------------------------------------------------------------------------


def _attempt(req: dict, seed: int, attempt: int, args: Args, work: Path, qa: list) -> dict | None:
    """One generation attempt; appends verdicts to `qa`; returns the asset's physical facts or None on failure."""
    def verdict(check, ok, reason):
        qa.append(ss.QAVerdict(check=check, passed=bool(ok), reason=reason, attempt=attempt, seed=seed))
        return ok

    tmpl = TEMPLATES[req["template"]]
    try:
        if args.backend == "command":
            raw, prov = generate_command(req, seed, args.command_template, work, args.command_timeout_s, args.command_out_ext)
        elif args.backend == "library":
            try:
                raw, prov = generate_library(req, seed - args.seed, args.library_dir or "")
            except LookupError as e:
                if not args.library_fallback:
                    raise
                raw, prov = generate_procedural(req, seed)
                prov["library_miss"] = str(e)
        else:
            raw, prov = generate_procedural(req, seed)
    except Exception as e:  # noqa: BLE001 - any backend error is a recorded failed attempt
        verdict("generate", False, f"{type(e).__name__}: {e}")
        return None
    own = visual_color(raw) if prov["backend"] != "procedural" else None
    mesh, notes = repair(raw, args.face_budget)
    to_frame(mesh)
    stretch = req.get("stretch") or [1.0, 1.0, 1.0]
    if stretch != [1.0, 1.0, 1.0]:  # "tall", "flat", ...: the template's proportions, stretched per axis
        mesh.apply_scale(stretch)
        to_frame(mesh)
    size = req["size_m"] or [v * k for v, k in zip(tmpl.size, stretch)]
    scale, why = auto_scale(mesh.extents, size, req["graspable"], args.grip_max_m)
    mesh.apply_scale(scale)
    to_frame(mesh)
    ok, reason = check_geometry(mesh, tmpl, req["graspable"], args.grip_max_m)
    if not verdict("geometry", ok, f"{reason}; scale x{scale:.3g} ({why})" + "".join(f"; {n}" for n in notes)):
        return None
    rgba = list(own) if own is not None else [*COLORS[req["color"]], 1.0]
    volume = mesh.volume if mesh.is_watertight else 0.6 * mesh.convex_hull.volume
    facts = dict(scale=scale, bbox_m=mesh.extents.tolist(), mass_kg=mass_from(abs(volume), req["material"], tmpl.fill),
                 friction=MATERIALS[req["material"]][1], color_rgba=[float(c) for c in rgba], provenance=prov)
    for f in work.glob("collision_*.obj"):
        f.unlink()
    export_visual(mesh, rgba, req["material"], work / "visual.glb", seed)
    parts = collision_parts(mesh, tmpl.concave or prov["backend"] != "procedural", args, seed)
    facts["collision"] = []
    for i, p in enumerate(parts):
        (work / f"collision_{i}.obj").write_text(trimesh.exchange.obj.export_obj(p, include_normals=False, include_color=False,
                                                                                 include_texture=False))
        facts["collision"].append(f"collision_{i}.obj")
    if not args.stability_check:
        return facts
    global _SIM
    if _SIM is None:
        _SIM = SimChecker(args.thumb_size)
    ok, why, actor = _SIM.drop_test([work / c for c in facts["collision"]], work / "visual.glb", facts["mass_kg"],
                                    facts["friction"], tmpl.rolls, args.settle_s)
    try:
        rgb, mask = _SIM.render(actor)
        (work / "thumb.png").write_bytes(_png(rgb))
        if not verdict("stability", ok, f"{len(parts)} convex part(s), {facts['mass_kg']:.3f} kg; {why}"):
            return None
        if mask.sum() < 20:
            verdict("appearance", False, f"object covers only {mask.sum()} pixels of the thumbnail")
            return None
        col = req["color"]
        ok, why = color_matches(dominant_color(rgb[mask].astype(float) / 255), col, args.hue_tol_deg)
        if not verdict("appearance", ok, why + req["color_note"]):
            return None
        if args.vlm_base_url:
            side, _ = _SIM.render(actor, azimuth_deg=-140.0, elevation_deg=60.0)
            cfg = {"vlm_base_url": args.vlm_base_url, "vlm_model": args.vlm_model, "vlm_api_key_env": args.vlm_api_key_env}
            checks = [("semantic", f"This is a rendered 3D object for a robot simulation. Is it recognisably a "
                                   f"{req['category'].replace('_', ' ')} whose main colour is {col}? ", rgb),
                      ("alignment", f"Two views of a 3D asset generated from the description '{req['description']}'. "
                                    f"Does the 3D object match the description (shape, parts, colour, proportions)? ",
                       np.concatenate([rgb, side], axis=1))]
            for check, prompt, img in checks:
                try:
                    ok, why = vlm_check(cfg, prompt + 'Answer only JSON: {"pass": true or false, "reason": "<short reason>"}', _png(img))
                except Exception as e:  # noqa: BLE001 - an unreachable or confused VLM fails the check, clearly
                    ok, why = False, f"VLM request failed: {type(e).__name__}: {str(e)[:200]}"
                if not verdict(check, ok, why):
                    return None
    finally:
        _SIM.remove(actor)
    return facts


def build_asset(req: dict, args: Args) -> dict:
    """Generate, QA and write one asset folder atomically. Returns a small summary for the run report."""
    t0, c0 = time.time(), time.process_time()
    root, aid = Path(args.assets_dir), req["asset_id"]
    work = root / ".tmp" / f"{aid}-p{os.getpid()}-{uuid.uuid4().hex[:8]}"
    work.mkdir(parents=True)
    qa: list[ss.QAVerdict] = []
    facts, seed = None, args.seed
    try:
        for k in range(args.max_attempts):
            seed = args.seed + k
            facts = _attempt(req, seed, k + 1, args, work, qa)
            if facts is not None:
                break
        attempts = k + 1
        accepted = facts is not None
        last = [q for q in qa if not q.passed]
        paths = {"visual": "visual.glb", "collision": facts["collision"]} if accepted else {}
        if (work / "thumb.png").exists():
            paths["thumb"] = "thumb.png"
        junk = set(work.glob("raw_*")) | (set() if accepted else set(work.glob("*.obj")) | set(work.glob("*.glb")))
        for f in junk:  # rejected: keep the last thumbnail for people, drop meshes so nothing looks valid
            f.unlink(missing_ok=True)
        facts = facts or {}
        rec = ss.AssetRecord(
            asset_id=aid, description=req["description"], category=req["category"], backend=args.backend, seed=seed,
            accepted=accepted, attempts=attempts, qa=qa, scale=float(facts.get("scale", 1.0)),
            bbox_m=facts.get("bbox_m", [0.0, 0.0, 0.0]), mass_kg=facts.get("mass_kg", 0.0), friction=facts.get("friction", 0.0),
            material=req["material"], color_rgba=facts.get("color_rgba", [*COLORS[req["color"]], 1.0]), paths=paths,
            args={"template": req["template"], "template_rule": req["template_rule"], "color": req["color"],
                  "template_fingerprint": template_fingerprint(req["template"]), "stretch": req.get("stretch"),
                  "rolls": TEMPLATES[req["template"]].rolls, "concave": TEMPLATES[req["template"]].concave,
                  "size_m_requested": req["size_m"], "graspable": req["graspable"], "receptacle": req["receptacle"],
                  "provenance": facts.get("provenance"), "seconds": round(time.time() - t0, 3),
                  "cpu_seconds": round(time.process_time() - c0, 3), "scenes": req["scenes"],
                  "run": {k: v for k, v in public_args(args).items() if k not in ("scene_ids",)}},
            reject_reason=None if accepted else f"failed QA in all {attempts} attempt(s); last: {last[-1].check}: {last[-1].reason}")
        # one scrub of the final record: a VLM reply (or its error) that echoes the key, in any form, is not stored
        rec = ss.asset_record_from_dict(ss.scrub_secrets(ss.to_dict(rec), run_secrets(args)), str(work / "asset.json"))
        ss.save_asset_record(rec, work / "asset.json")
        dest = root / aid
        if dest.exists():  # replacing a cached (rejected / overwritten) asset: swap, then delete the old one
            trash = root / ".tmp" / f"old-{aid}-p{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.rename(dest, trash)
            os.rename(work, dest)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(work, dest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    first = {}
    for q in qa:
        if q.attempt == 1:
            first[q.check] = q.passed
    return {"asset_id": aid, "accepted": accepted, "attempts": attempts, "seconds": time.time() - t0,
            "cpu_seconds": time.process_time() - c0,
            "first_attempt": first, "reject_reason": rec.reject_reason, "category": req["category"]}


def run_secrets(args: Args) -> list[str | None]:
    """What must never be written: the VLM key and the password of a credentials URL."""
    return [os.environ.get(args.vlm_api_key_env), *ss.url_credentials(args.vlm_base_url)]


def public_args(args: Args) -> dict:
    """The args as written to args.json and asset.json: no URL credentials, no key."""
    return ss.scrub_secrets({**vars(args), "vlm_base_url": ss.strip_url_credentials(args.vlm_base_url)}, run_secrets(args))


def _worker_init() -> None:
    os.environ.setdefault("LP_NUM_THREADS", "1")


def _run_one(req: dict, args: Args) -> dict:
    try:
        return build_asset(req, args)
    except Exception as e:  # noqa: BLE001 - one broken asset never stops the batch
        return {"asset_id": req["asset_id"], "accepted": False, "attempts": 0, "seconds": 0.0, "first_attempt": {},
                "reject_reason": f"internal error: {type(e).__name__}: {e}", "category": req["category"], "error": True}


# ---------------------------------------------------------------------------------------------
# Batch: scene graphs -> requests -> assets -> links, contact sheet, summary
# ---------------------------------------------------------------------------------------------


def collect_requests(graphs: list[ss.SceneGraph], args: Args) -> dict[str, dict]:
    """Unique asset requests (by asset id) over all scenes; shared objects across scenes merge."""
    reqs: dict[str, dict] = {}
    for g in graphs:
        for o in g.objects:
            if o.role not in SIM_ROLES:
                continue
            aid = ss.asset_id_for(o.description, o.category, args.generator, args.seed)
            # only a goal's target must fit the 74 mm gripper: a graspable bowl that is a destination or a
            # distractor keeps its real size (shrinking it to 7 cm made "put the banana in the bowl" impossible)
            grasp_fit = o.graspable and o.role == "target"
            if aid in reqs:
                reqs[aid]["graspable"] |= grasp_fit
                reqs[aid]["scenes"].append(g.scene_id)
                continue
            name, rule = choose_template(o.category, o.description, o.size_m, o.receptacle)
            tmpl = TEMPLATES[name]
            word = (o.attributes.color or "").lower().strip()
            color = word if word in COLORS else find_word(word, COLORS) or find_word(o.description, COLORS)
            note = f" (colour word {word!r} is not in the colour table: template default)" if word and not color else ""
            said = resolve_material(o.description)  # the words say it ("a wooden block")
            material = resolve_material(o.attributes.material) or said
            requested = color is not None
            if not color and material in MATERIAL_COLORS and (material != tmpl.material or said == material):
                color, note = MATERIAL_COLORS[material], f" (no colour requested: the colour of {material})"
            stretch = proportion_stretch(o.description)
            size_m = [round(v * k, 4) for v, k in zip(o.size_m, stretch)] if o.size_m else None
            reqs[aid] = dict(asset_id=aid, description=o.description, category=o.category, template=name, template_rule=rule,
                             color=color or tmpl.color, color_requested=requested,
                             color_note=note or ("" if color else " (no colour requested: template default)"), material=material or tmpl.material,
                             size_m=size_m, stretch=list(stretch), graspable=grasp_fit, receptacle=o.receptacle,
                             scenes=[g.scene_id])
    return reqs


def write_links(graphs: list[ss.SceneGraph], scenes_dir: Path, assets_dir: Path, args: Args) -> int:
    """`scenes/<id>/asset_links.json` from what is on disk now (objects of other shards show as pending)."""
    n_complete = 0
    for g in graphs:
        objects, failed = {}, {}
        for o in g.objects:
            if o.role not in SIM_ROLES:
                continue
            aid = ss.asset_id_for(o.description, o.category, args.generator, args.seed)
            try:
                rec = ss.load_asset_record(assets_dir / aid)
            except FileNotFoundError:
                n = args.shard_index[1]
                owner = next(j for j in range(n) if in_shard(aid, (j, n)))
                failed[o.name] = f"asset {aid} not generated yet (shard {owner}/{n}); re-run once all shards are done"
                continue
            except (ss.SchemaError, OSError, ValueError) as e:
                failed[o.name] = f"asset {aid}: unreadable record ({e}); re-run with --overwrite"
                continue
            if rec.accepted:
                objects[o.name] = aid
            else:
                failed[o.name] = f"asset {aid} rejected: {rec.reject_reason}"
        scene_dir = scenes_dir / g.scene_id
        ss.write_json_atomic(scene_dir / "asset_links.json", ss.AssetLinks(
            scene_id=g.scene_id, assets_dir=os.path.relpath(assets_dir.resolve(), scene_dir.resolve()), objects=objects, failed=failed))
        n_complete += not failed
    return n_complete


def contact_sheet(asset_ids: list[str], assets_dir: Path, path: Path, max_n: int, cell: int = 160) -> None:
    """Grid of thumbnails with labels (category, attempts; rejected in red) for people to look at."""
    from PIL import Image, ImageDraw

    recs = []
    for aid in asset_ids:
        try:
            recs.append(ss.load_asset_record(assets_dir / aid))
        except Exception:  # noqa: BLE001
            continue
    recs = sorted(recs, key=lambda r: (r.accepted, r.category))[:max_n]
    if not recs:
        return
    cols = min(8, len(recs))
    rows = -(-len(recs) // cols)
    sheet = Image.new("RGB", (cols * cell, rows * (cell + 28)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, r in enumerate(recs):
        x, y = (i % cols) * cell, (i // cols) * (cell + 28)
        thumb = assets_dir / r.asset_id / r.paths.get("thumb", "thumb.png")
        if thumb.exists():
            sheet.paste(Image.open(thumb).convert("RGB").resize((cell, cell)), (x, y))
        color = (0, 0, 0) if r.accepted else (200, 0, 0)
        label = f"{r.category[:20]} ({r.args.get('template', '?')[:10]})"
        draw.text((x + 3, y + cell + 1), label, fill=color)
        draw.text((x + 3, y + cell + 13), ("ok" if r.accepted else "REJECTED") + f" x{r.attempts} {r.args.get('color', '')}", fill=color)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    ss.write_bytes_atomic(path, buf.getvalue())


def load_graphs(scenes_dir: Path, scene_ids: list[str] | None) -> tuple[list[ss.SceneGraph], list[str]]:
    if not scenes_dir.is_dir():
        raise SystemExit(f"--scenes-dir {scenes_dir}: folder does not exist; run scene_designer.py first")
    paths = sorted(scenes_dir.glob("*/scene_graph.json"))
    if scene_ids is not None:
        paths = [p for p in paths if p.parent.name in set(scene_ids)]
        missing = set(scene_ids) - {p.parent.name for p in paths}
        if missing:
            raise SystemExit(f"--scene-ids: no scene_graph.json for {', '.join(sorted(missing))} under {scenes_dir}")
    graphs, errors = [], []
    for p in paths:
        try:
            g = ss.load_scene_graph(p)
        except (ss.SchemaError, OSError, ValueError) as e:
            errors.append(str(e))
            continue
        if g.scene_id != p.parent.name:  # its links would go to another folder than the graph's
            errors.append(f"{p}: scene_id: {g.scene_id!r} differs from its folder {p.parent.name!r}; rename the "
                          "folder or fix scene_id (scene_designer.py writes them equal)")
            continue
        graphs.append(g)
    return graphs, errors


def clean_stale_tmp(assets_dir: Path) -> list[str]:
    """Remove the build folders (.tmp/<id>-p<pid>-<uuid>) of runs that no longer exist (killed mid-asset); folders
    of live processes (another shard on this machine) are kept. Returns what was removed."""
    removed = []
    for d in sorted((assets_dir / ".tmp").glob("*")) if (assets_dir / ".tmp").is_dir() else []:
        m = re.search(r"-p(\d+)-[0-9a-f]{8}$", d.name)
        alive = False
        if m:
            try:
                os.kill(int(m.group(1)), 0)
                alive = True
            except ProcessLookupError:
                pass
            except PermissionError:
                alive = True
        elif time.time() - d.stat().st_mtime < 24 * 3600:
            alive = True  # an unnamed folder of a recent run: leave it
        if not alive:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
    return removed


def main(args: Args) -> dict:
    try:
        shard = args.shard_index
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if args.max_attempts < 1:
        raise SystemExit(f"--max-attempts must be >= 1 (got {args.max_attempts})")
    if args.backend == "command" and not args.command_template:
        raise SystemExit("--backend command needs --command-template, e.g. 'my-t23d --prompt {prompt} --seed {seed} --out {out}'")
    ss.check_key_env_name("--vlm-api-key-env", args.vlm_api_key_env)
    if not re.fullmatch(r"[A-Za-z0-9]{1,8}", args.command_out_ext):  # joined into a file name in the build folder
        raise SystemExit(f"--command-out-ext must be a file extension such as glb or obj (got {args.command_out_ext!r})")
    if args.backend == "library" and not (args.library_dir and Path(args.library_dir).is_dir()) and not args.library_fallback:
        raise SystemExit(f"--backend library needs an existing --library-dir (got {args.library_dir!r})")
    scenes_dir, assets_dir = Path(args.scenes_dir), Path(args.assets_dir)
    assets_dir.mkdir(parents=True, exist_ok=True)
    tag = "" if shard[1] == 1 else f"_shard{shard[0]}of{shard[1]}"
    ss.write_json_atomic(assets_dir / f"args{tag}.json", {"schema_version": ss.SCHEMA_VERSION, "stage": "generate_assets", "args": public_args(args)})
    stale = clean_stale_tmp(assets_dir)
    if stale:
        print(f"[generate_assets] removed {len(stale)} build folder(s) of killed runs from {assets_dir / '.tmp'}")
    graphs, graph_errors = load_graphs(scenes_dir, args.scene_ids)
    for e in graph_errors:
        print(f"[generate_assets] skipping scene graph: {e}")
    reqs = collect_requests(graphs, args)
    mine = {aid: r for aid, r in reqs.items() if in_shard(aid, shard)}
    todo, cached, rebuilt = [], [], []
    for aid, r in mine.items():
        try:
            rec = ss.load_asset_record(assets_dir / aid)
            hit = not args.overwrite and (rec.accepted or not args.retry_rejected)
            if hit and (rec.args.get("template_fingerprint") != template_fingerprint(r["template"])
                        or rec.args.get("stretch", [1.0, 1.0, 1.0]) != r["stretch"]
                        or rec.args.get("color", r["color"]) != r["color"]):
                hit = False  # built from an older version of its template, proportions or colour rule: rebuild
                rebuilt.append(aid)
        except FileNotFoundError:
            hit = False
        except (ss.SchemaError, OSError, ValueError) as e:  # a bad cached record (an escaping path, a NUL): rebuilt
            print(f"[generate_assets] {aid}: cached record unusable, rebuilding it: {e}")
            hit = False
        (cached if hit else todo).append(r)
    print(f"[generate_assets] {len(graphs)} scene(s), {len(reqs)} unique asset(s), {len(mine)} in shard {shard[0]}/{shard[1]}: "
          f"{len(cached)} cached, {len(todo)} to generate with backend={args.backend}"
          + (f" ({len(rebuilt)} cached asset(s) rebuilt: their template, proportions or colour changed)" if rebuilt else ""))
    from tqdm import tqdm

    t0, results = time.time(), []
    if args.workers <= 1 or len(todo) <= 1:
        for r in tqdm(todo, desc="assets", unit="asset"):
            results.append(_run_one(r, args))
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("forkserver"), initializer=_worker_init) as pool:
            futs = [pool.submit(_run_one, r, args) for r in todo]
            for f in tqdm(as_completed(futs), total=len(futs), desc="assets", unit="asset"):
                results.append(f.result())
    wall = time.time() - t0
    if (assets_dir / ".tmp").is_dir() and not any((assets_dir / ".tmp").iterdir()):
        (assets_dir / ".tmp").rmdir()  # other shards may still be building in it otherwise
    n_links = write_links(graphs, scenes_dir, assets_dir, args)
    contact_sheet(list(mine), assets_dir, assets_dir / f"contact_sheet{tag}.png", args.contact_sheet_max)
    acc = [r for r in results if r["accepted"]]
    checks = sorted({c for r in results for c in r["first_attempt"]})
    summary = {
        "schema_version": ss.SCHEMA_VERSION, "backend": args.backend, "shard": args.shard, "scenes": len(graphs),
        "scene_graph_errors": graph_errors, "unique_assets": len(reqs), "in_shard": len(mine), "cached": len(cached),
        "generated": len(results), "accepted": len(acc),
        "acceptance_rate": len(acc) / len(results) if results else None,
        "mean_attempts_per_accepted": float(np.mean([r["attempts"] for r in acc])) if acc else None,
        "seconds_per_asset": float(np.mean([r["seconds"] for r in results])) if results else None,
        "cpu_seconds_per_asset": float(np.mean([r.get("cpu_seconds", 0.0) for r in results])) if results else None,
        "wall_seconds": wall, "workers": args.workers,
        "first_attempt_pass_rate": {c: float(np.mean([r["first_attempt"][c] for r in results if c in r["first_attempt"]])) for c in checks},
        "scenes_fully_linked": n_links,
        "rejected": {r["asset_id"]: r["reject_reason"] for r in results if not r["accepted"]},
    }
    summary = ss.scrub_secrets(summary, run_secrets(args))  # reasons quote VLM replies and errors
    ss.write_json_atomic(assets_dir / f"summary{tag}.json", summary)
    rate = "n/a" if summary["acceptance_rate"] is None else f"{summary['acceptance_rate']:.1%}"
    att = "n/a" if summary["mean_attempts_per_accepted"] is None else f"{summary['mean_attempts_per_accepted']:.2f}"
    sec = "n/a" if summary["seconds_per_asset"] is None else f"{summary['seconds_per_asset']:.2f}"
    print(f"[generate_assets] generated {len(results)} ({len(acc)} accepted, acceptance {rate}, mean attempts {att}, "
          f"{sec} s/asset, wall {wall:.1f} s), cached {len(cached)}; {n_links}/{len(graphs)} scenes fully linked; "
          f"contact sheet: {assets_dir / f'contact_sheet{tag}.png'}")
    for aid, why in summary["rejected"].items():
        print(f"[generate_assets] REJECTED {aid}: {why}")
    if results and not acc:
        raise SystemExit(f"[generate_assets] error: all {len(results)} generated assets were rejected (reasons above; "
                         f"{assets_dir / f'summary{tag}.json'}): no scene can be composed. Check the backend "
                         "(--backend, --command-template) or the scene graphs' sizes and categories")
    return summary


if __name__ == "__main__":
    main(tyro.cli(Args))
