"""Procedural mesh templates: category text -> a parametric trimesh, the offline backend of generate_assets.py.

A template is a `Template(build, size, color, material, keywords, concave, rolls, fill)`. `build(u, size)`
returns a closed (watertight) trimesh in its resting pose, where `u(lo, hi)` draws a uniform number (numpy
`Generator.uniform`, seeded by the asset stage from the attempt seed and the description, so shapes vary
between attempts and stay reproducible) and `size` is the scene graph's size_m or the template's default
`size` (most builders use it only for the generic shapes: generate_assets.py rescales every mesh anyway).
`color` and `material` are keys of `COLORS` and `MATERIALS` below (the asset stage's palette and physics
table), `keywords` the whole words `choose_template` looks for, `concave` asks for a coacd decomposition
(containers must hold things) instead of one convex hull, `rolls` relaxes the drop test, and `fill` scales
the density of closed shells modelled as solids.

Units and frame of a built mesh: metres, z up, resting on its base; long objects lie along x. It may sit
anywhere: `to_frame` moves it to the asset frame (bounding box centred on x = y = 0, lowest point at z = 0).

Adding a template: write a builder from the primitives (`_solid` / `_rev` solids of revolution, `_hollow` open
containers, `_tube` handles, `_box`, `_cyl`, `_sphere`, `_superellipsoid`, `_prism`, the manifold booleans
`_union` / `_diff`), add a `TEMPLATES` entry with a realistic default size (geometry QA accepts 0.25x - 4x its
longest side: `category_range`) and its keywords, check that `choose_template("<category>")` picks it, and
run `tests/test_generate_assets.py`, which builds and checks every template.

Importing builds nothing (builders run only when the asset stage asks for a mesh).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import numpy as np
import trimesh

# ---------------------------------------------------------------------------------------------
# Tables: colours (sRGB 0-1), materials (density kg/m^3, friction, PBR metallic, roughness)
# ---------------------------------------------------------------------------------------------

COLORS = {
    "red": (0.80, 0.10, 0.10), "dark red": (0.50, 0.05, 0.05), "maroon": (0.45, 0.05, 0.10),
    "orange": (0.95, 0.50, 0.08), "yellow": (0.95, 0.85, 0.15), "gold": (0.85, 0.68, 0.20),
    "green": (0.15, 0.60, 0.20), "dark green": (0.07, 0.35, 0.12), "light green": (0.55, 0.85, 0.45),
    "lime": (0.60, 0.85, 0.15), "olive": (0.45, 0.45, 0.12), "mint": (0.60, 0.90, 0.75),
    "blue": (0.12, 0.30, 0.85), "dark blue": (0.06, 0.12, 0.45), "navy": (0.05, 0.08, 0.35),
    "light blue": (0.55, 0.75, 0.95), "sky blue": (0.45, 0.70, 0.95), "cyan": (0.10, 0.80, 0.85),
    "teal": (0.05, 0.50, 0.50), "turquoise": (0.20, 0.80, 0.75), "purple": (0.50, 0.15, 0.65),
    "violet": (0.55, 0.30, 0.80), "lavender": (0.70, 0.60, 0.90), "magenta": (0.85, 0.10, 0.70),
    "pink": (0.95, 0.50, 0.65), "coral": (0.95, 0.45, 0.35), "brown": (0.45, 0.26, 0.10),
    "dark brown": (0.28, 0.16, 0.07), "tan": (0.80, 0.65, 0.45), "beige": (0.90, 0.82, 0.65),
    "cream": (0.95, 0.92, 0.78), "khaki": (0.75, 0.70, 0.45), "white": (0.93, 0.93, 0.93),
    "ivory": (0.95, 0.94, 0.85), "silver": (0.75, 0.75, 0.78), "grey": (0.50, 0.50, 0.52),
    "gray": (0.50, 0.50, 0.52), "dark grey": (0.25, 0.25, 0.27), "dark gray": (0.25, 0.25, 0.27),
    "light grey": (0.75, 0.75, 0.77), "light gray": (0.75, 0.75, 0.77), "black": (0.06, 0.06, 0.06),
}
MATERIALS = {  # ALGO LOGIC: density, friction, metallic, roughness
    "plastic": (950, 0.5, 0.0, 0.5), "wood": (700, 0.6, 0.0, 0.8), "metal": (7800, 0.4, 0.9, 0.35),
    "aluminum": (2700, 0.4, 0.9, 0.35), "ceramic": (2300, 0.5, 0.0, 0.25), "glass": (2500, 0.35, 0.0, 0.05),
    "rubber": (1100, 0.9, 0.0, 0.9), "fabric": (300, 0.8, 0.0, 1.0), "paper": (800, 0.5, 0.0, 0.9),
    "cardboard": (690, 0.55, 0.0, 0.9), "foam": (50, 0.9, 0.0, 1.0), "food": (950, 0.6, 0.0, 0.7),
    "leather": (900, 0.7, 0.0, 0.7), "stone": (2600, 0.6, 0.0, 0.8), "silicone": (1200, 0.8, 0.0, 0.6),
    "wax": (900, 0.5, 0.0, 0.6), "plush": (150, 0.8, 0.0, 1.0),
}
MATERIAL_ALIASES = {"steel": "metal", "stainless": "metal", "iron": "metal", "tin": "metal", "copper": "metal",
                    "aluminium": "aluminum", "porcelain": "ceramic", "clay": "ceramic", "terracotta": "ceramic",
                    "cloth": "fabric", "cotton": "fabric", "wool": "fabric", "felt": "fabric", "linen": "fabric",
                    "sponge": "foam", "bamboo": "wood", "wooden": "wood", "marble": "stone", "granite": "stone",
                    "card": "cardboard", "polymer": "plastic", "acrylic": "plastic", "vinyl": "plastic"}

MATERIAL_COLORS = {  # the colour a material gives an object whose description names no colour ("wooden spoon")
    "wood": "tan", "metal": "silver", "aluminum": "silver", "glass": "light blue", "ceramic": "white", "stone": "grey",
    "cardboard": "tan", "paper": "white", "rubber": "black", "leather": "brown", "wax": "cream"}


# ---------------------------------------------------------------------------------------------
# Geometry helpers (all meshes watertight, metres, z up)
# ---------------------------------------------------------------------------------------------


def _fix(m: trimesh.Trimesh) -> trimesh.Trimesh:
    """Outward normals (positive volume) for a closed mesh."""
    if m.is_watertight and m.volume < 0:
        m.invert()
    return m


def _rev(profile, sections: int = 32) -> trimesh.Trimesh:
    """Surface of revolution about z of a (radius, z) polyline that starts and ends on the axis."""
    return _fix(trimesh.creation.revolve(np.asarray(profile, float), sections=sections))


def _solid(r, z, sections: int = 32) -> trimesh.Trimesh:
    """Closed solid of revolution through radii r at heights z (axis points added at both ends)."""
    r, z = np.asarray(r, float), np.asarray(z, float)
    keep = r > 1e-4  # points on the axis are the end caps themselves
    return _rev(np.vstack([[0, z[0]], np.c_[r, z][keep], [0, z[-1]]]), sections)


def _hollow(r_bot, r_top, h, wall, base, bulge=0.0, n=8, round_bottom=0.0, sections=32):
    """Open container (cup, bowl, pot): outer wall up, rim, inner wall down to the inner floor."""
    z = np.linspace(0, h, n)
    r = r_bot + (r_top - r_bot) * z / h + bulge * np.sin(np.pi * z / h)
    if round_bottom > 0:  # bowl: the wall curves in toward a flat foot
        r = r_top * np.sqrt(np.clip(1 - (1 - z / h) ** 2, 0, 1)) * (1 - round_bottom) + r * round_bottom
        r[0] = max(r[0], 0.45 * r_top)
    zi = np.linspace(h, base, n)
    ri = np.interp(zi, z, r) - wall
    outer, inner = np.c_[r, z], np.c_[np.maximum(ri, 0.2 * wall), zi]
    return _rev(np.vstack([[0, 0], outer, inner, [0, base]]), sections)


def _tube(path, radii, sides: int = 12) -> trimesh.Trimesh:
    """Closed tube (capped) of varying radius along a 3-D polyline: handles, bananas, spouts."""
    p = np.asarray(path, float)
    n, rad = len(p), np.broadcast_to(np.asarray(radii, float), (len(p),))
    t = np.gradient(p, axis=0)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    ref = np.eye(3)[np.argmin(np.abs(t).max(0))]  # normal of the curve's plane
    nr = ref - (t @ ref)[:, None] * t
    nr /= np.linalg.norm(nr, axis=1, keepdims=True)
    b = np.cross(t, nr)
    a = np.linspace(0, 2 * np.pi, sides, endpoint=False)
    ring = p[:, None] + rad[:, None, None] * (np.cos(a)[None, :, None] * nr[:, None] + np.sin(a)[None, :, None] * b[:, None])
    v = np.vstack([ring.reshape(-1, 3), p[0], p[-1]])
    f = []
    for i in range(n - 1):
        for j in range(sides):
            a0, a1, b0, b1 = i * sides + j, i * sides + (j + 1) % sides, (i + 1) * sides + j, (i + 1) * sides + (j + 1) % sides
            f += [[a0, a1, b1], [a0, b1, b0]]
    for j in range(sides):
        f += [[n * sides, (j + 1) % sides, j], [n * sides + 1, (n - 1) * sides + j, (n - 1) * sides + (j + 1) % sides]]
    return _fix(trimesh.Trimesh(v, np.array(f), process=True))


def _box(ext, c=(0, 0, 0), base=True) -> trimesh.Trimesh:
    """Box of extents `ext`; `c` is the centre of its bottom face (base=True) or of the box."""
    m = trimesh.creation.box(extents=ext)
    m.apply_translation(np.asarray(c, float) + [0, 0, ext[2] / 2 if base else 0])
    return m


def _cyl(r, h, c=(0, 0, 0), axis="z", sections=24) -> trimesh.Trimesh:
    """Cylinder with its axis along x/y/z; `c` is its centre."""
    m = trimesh.creation.cylinder(radius=r, height=h, sections=sections)
    if axis != "z":  # laid down, a polygonal bar rests on a face, not balanced on an edge: pens and markers spawned
        # on an edge rolled away across the table (20 cm in 1.6 s) before the expert reached them
        down = 0.0 if axis == "x" else 1.5 * np.pi  # the polar angle that ends up pointing at -z
        m.apply_transform(trimesh.transformations.rotation_matrix(down + np.pi / sections, [0, 0, 1]))
        m.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0] if axis == "x" else [1, 0, 0]))
    elif sections == 6:  # upright hexagonal prisms keep their former orientation
        m.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 6, [0, 0, 1]))
    m.apply_translation(c)
    return m


def _sphere(r, c=(0, 0, 0), sub=2) -> trimesh.Trimesh:
    m = trimesh.creation.icosphere(subdivisions=sub, radius=r)
    m.apply_translation(c)
    return m


def _superellipsoid(ext, p=2.0, c=(0, 0, 0), sub=3, flat=None) -> trimesh.Trimesh:
    """Rounded box (p large) ... ellipsoid (p=2) with extents `ext`, centred at `c`. Top and bottom are cut
    flat at `flat` x half height (default 0.97 for box-like p >= 4): a shallow dome base rocks and "walks" in PhysX."""
    s = trimesh.creation.icosphere(subdivisions=sub)
    v = np.sign(s.vertices) * np.abs(s.vertices) ** (2.0 / p)
    flat = flat if flat is not None else (0.97 if p >= 4 else 1.0)
    v[:, 2] = np.clip(v[:, 2], -flat, flat)
    return trimesh.Trimesh(v * np.asarray(ext, float) / 2 / [1, 1, flat] + c, s.faces)


def _prism(poly, h, axis="z") -> trimesh.Trimesh:
    """Extrude a convex 2-D polygon (counter-clockwise) by h along z (or y: polygon in the xz plane)."""
    poly = np.asarray(poly, float)
    n = len(poly)
    v = np.vstack([np.c_[poly, np.zeros(n)], np.c_[poly, np.full(n, h)]])
    f = [[0, i + 1, i] for i in range(1, n - 1)] + [[n, n + i, n + i + 1] for i in range(1, n - 1)]
    f += [[i, (i + 1) % n, n + (i + 1) % n] for i in range(n)] + [[i, n + (i + 1) % n, n + i] for i in range(n)]
    m = _fix(trimesh.Trimesh(v, np.array(f)))
    if axis == "y":  # polygon (x, z) extruded along y, centred
        m.vertices[:] = m.vertices[:, [0, 2, 1]] - [0, h / 2, 0]
        m = _fix(trimesh.Trimesh(m.vertices, m.faces[:, ::-1]))
    return m


def _flat_bottom(m: trimesh.Trimesh, k: float = 0.06) -> trimesh.Trimesh:
    """Squash the part below z = 0 to a nearly flat base (a dome that rests on its bottom)."""
    v = m.vertices.copy()
    v[v[:, 2] < 0, 2] *= k
    return trimesh.Trimesh(v, m.faces)


def _lay(m: trimesh.Trimesh) -> trimesh.Trimesh:
    """Rotate an upright (z) solid to lie along x."""
    m.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0]))
    return m


def _union(*parts) -> trimesh.Trimesh:
    return trimesh.boolean.union(list(parts), engine="manifold")


def _diff(a, b) -> trimesh.Trimesh:
    return trimesh.boolean.difference([a, b], engine="manifold")


def to_frame(m: trimesh.Trimesh) -> trimesh.Trimesh:
    """Asset frame: bbox centred at x = y = 0, lowest point at z = 0."""
    lo, hi = m.bounds
    m.apply_translation([-(lo[0] + hi[0]) / 2, -(lo[1] + hi[1]) / 2, -lo[2]])
    return m


# ---------------------------------------------------------------------------------------------
# Procedural templates: build(rng, size) -> mesh in its resting pose. `size` is size_m or the default.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    build: Callable
    """build(u, size) -> closed mesh in its resting pose (metres, z up); u(lo, hi) draws a seeded uniform number."""
    size: tuple = (0.08, 0.08, 0.08)
    """Default extents (m) when the scene graph gives none; the category's bbox range is 0.25x - 4x its longest side."""
    color: str = "grey"
    """Default colour (a COLORS key) when the description names none."""
    material: str = "plastic"
    """Default material (a MATERIALS key) when the description names none."""
    keywords: tuple = ()
    """Whole words (plurals tolerated) that select this template in a category or description."""
    concave: bool = False
    """coacd decomposition (containers must hold things) instead of one convex hull."""
    rolls: bool = False
    """May roll when dropped: the stability check allows drift and skips tilt."""
    fill: float = 1.0
    """Effective density factor (closed shells modelled as solids: bottles, boxes, cans)."""


def _mug(u, s, handle=True, taper=1.05, hr=1.0, wall=0.08):
    R = 0.04 * u(0.9, 1.1)
    H = 2 * R * hr * u(0.9, 1.15)
    body = _hollow(R, R * taper, H, R * wall, R * 0.15)
    if not handle:
        return body
    ph = np.linspace(-np.pi / 2, np.pi / 2, 9)
    path = np.c_[R * taper * 0.9 + 0.45 * R * np.cos(ph), np.zeros(9), H / 2 + 0.32 * H * np.sin(ph)]
    return _union(body, _tube(path, 0.1 * R, 10))


def _banana(u, s):
    a, Rc = u(0.5, 0.7), 0.12 * u(0.9, 1.1)
    t = np.linspace(0, 1, 16)
    ph = (t - 0.5) * 2 * a
    rad = 0.018 * np.clip(np.sin(np.pi * t) ** 0.5, 0.3, 1)
    return _tube(np.c_[Rc * np.sin(ph), Rc * np.cos(ph), rad], rad, 10)  # ring bottoms on z = 0: lies flat


def _grapes(u, s):
    """Overlapping berries on a tapering grid (bottom layer) with a second layer on top, and a stem."""
    g, d, pts = 0.011, 0.017, []
    for i in range(5):
        n = max(1, 4 - i * 3 // 4)
        pts += [(i * d, (j - (n - 1) / 2) * d, g) for j in range(n)]
        pts += [(i * d + d / 2, (j - (n - 2) / 2) * d, g + 0.8 * d) for j in range(n - 1)]
    jitter = [(u(-1, 1) * 1e-3, u(-1, 1) * 1e-3, 0) for _ in pts]  # also avoids sliver faces at triple points
    return _union(*[_sphere(g * u(.92, 1.05), np.add(c, j), 1) for c, j in zip(pts, jitter)], _cyl(0.002, 0.03, (-0.01, 0, g), "x", 6))


def _pepper(u, s):
    m = _solid(0.035 * np.array([0.6, 0.95, 1, 0.9, 0.5, 0.15, 0.15]), 0.09 * np.array([0, .1, .4, .8, .95, .96, 1.1]), 36)
    phi = np.arctan2(m.vertices[:, 1], m.vertices[:, 0])
    m.vertices[:, :2] *= (1 + 0.08 * np.cos(4 * phi))[:, None]
    return m


def _pencil(u, s):
    L = 0.15 * u(.9, 1.1)
    tip = trimesh.creation.cone(0.0045, 0.02, sections=6)
    tip.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 6, [0, 0, 1]))  # faces line up with the prism
    return _union(_cyl(0.0045, L, (0, 0, 0.0039), "x", 6), _lay(tip).apply_translation([L / 2 - 1e-4, 0, 0.0039]))


def _carton(u, s):
    w, h = 0.07 * u(0.9, 1.1), 0.16 * u(0.9, 1.1)
    return _union(_box((w, w, h)), _prism([(-w / 2, h - 1e-3), (w / 2, h - 1e-3), (0, h + 0.35 * w)], w * 0.98, "y"))


def _scissors(u, s):
    L = 0.16 * u(0.9, 1.1)
    loops = [_rev([[0.011, 0], [0.018, 0], [0.018, 0.006], [0.011, 0.006], [0.011, 0]], 16) for _ in range(2)]
    loops[0].apply_translation([-0.4 * L, 0.017, 0])
    loops[1].apply_translation([-0.4 * L, -0.017, 0])
    blade = _prism([(-0.3 * L, -0.012), (0.6 * L, -0.002), (0.6 * L, 0.002), (-0.3 * L, 0.012)], 0.005)
    return _union(*loops, blade, _cyl(0.006, 0.008, (-0.05 * L, 0, 0.004)))


def _figure(u, s):
    h = 0.1 * u(0.9, 1.1)
    return _union(_cyl(0.022, 0.008, (0, 0, 0.004)), _cyl(0.014, 0.6 * h, (0, 0, 0.3 * h + 0.007)),
                  _sphere(0.013, (0, 0, 0.72 * h)), _cyl(0.006, 0.05, (0, 0, 0.5 * h), "y", 8))


def _wrench(u, s):
    L = 0.18 * u(0.9, 1.1)
    ring = _rev([[0.008, 0], [0.015, 0], [0.015, 0.006], [0.008, 0.006], [0.008, 0]], 16)
    ring.apply_translation([L / 2, 0, 0])
    jaw = _diff(_box((0.035, 0.035, 0.006), (-L / 2, 0, 0)), _box((0.02, 0.014, 0.02), (-L / 2 - 0.01, 0, -0.005)))
    return _union(_box((L, 0.012, 0.006)), ring, jaw)


def _open_box(ext, wall=None, base=None):
    x, y, z = ext
    wall = wall or max(0.06 * min(x, y), 0.003)
    return _diff(_box((x, y, z)), _box((x - 2 * wall, y - 2 * wall, z), (0, 0, base or wall)))


def _generic(u, s, kind):
    x, y, z = s
    if kind == "rounded_box":
        return _superellipsoid((x, y, z), 6, (0, 0, z / 2))
    if kind == "capsule":  # along the longest horizontal axis
        L, r = max(x, y), max(min(x, y), z) / 2
        m = _lay(trimesh.creation.capsule(height=max(L - 2 * r, 1e-3), radius=r, count=[16, 16]))
        return m if x >= y else m.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [0, 0, 1]))
    if kind == "slab":
        return _superellipsoid((x, y, z), 8, (0, 0, z / 2))
    if kind == "open_container":
        return _open_box((x, y, z))
    return _hollow(x / 2, x / 2, max(z, 0.01), 0.004, 0.004)  # "open_round"


T = Template
TEMPLATES: dict[str, Template] = {  # ALGO LOGIC: category templates (keywords matched on whole words)
    # ---- produce and food ----
    "apple": T(lambda u, s: _union(_solid(0.04 * np.sin(th := np.linspace(.25, np.pi - .25, 12)) * u(.95, 1.05), 0.075 * (1 - np.cos(th)) / 2 + 0.004),
                                   _cyl(0.003, 0.018, (0, 0, 0.075)), ), (0.08, 0.08, 0.08), "red", "food", ("apple", "peach", "plum", "nectarine", "pomegranate", "fruit")),
    "orange": T(lambda u, s: _superellipsoid((d := 0.075 * u(.9, 1.1), d, d * u(.85, .95)), 2), (0.075, 0.075, 0.07), "orange", "food",
                ("orange", "tangerine", "mandarin", "clementine", "grapefruit", "lime"), rolls=True),
    "lemon": T(lambda u, s: _lay(_solid(0.028 * np.sin(th := np.linspace(0, np.pi, 13)) ** 1.3 * u(.9, 1.1), 0.085 * (1 - np.cos(th)) / 2)),
               (0.085, 0.056, 0.056), "yellow", "food", ("lemon",), rolls=True),
    "banana": T(_banana, (0.18, 0.08, 0.04), "yellow", "food", ("banana", "plantain")),
    "carrot": T(lambda u, s: _lay(_solid(0.015 * u(.9, 1.2) * (1 - (z := np.linspace(0, 1, 8))) ** 0.7, 0.15 * z)),
                (0.15, 0.03, 0.03), "orange", "food", ("carrot", "parsnip"), rolls=True),
    "eggplant": T(lambda u, s: _lay(_solid(0.035 * (0.5 + 0.5 * np.sin(np.pi * (z := np.linspace(0, 1, 12)) * 0.9 + .2) ** 2) * (1 - 0.4 * z) * u(.9, 1.1),
                                           0.18 * z)), (0.18, 0.07, 0.07), "purple", "food", ("eggplant", "aubergine"), rolls=True),
    "grapes": T(_grapes, (0.13, 0.07, 0.05), "purple", "food", ("grape", "grapes", "berries", "blueberries", "cherries")),
    "pear": T(lambda u, s: _union(_solid(0.038 * np.maximum(np.sin(np.pi * (z := np.linspace(0, 0.97, 14))) ** 0.8, 0.45) * (1.1 - 0.55 * z) * u(.95, 1.05), 0.1 * z),
                                  _cyl(0.003, 0.02, (0, 0, 0.1))), (0.07, 0.07, 0.11), "green", "food", ("pear", "avocado", "gourd")),
    "tomato": T(lambda u, s: _union(_superellipsoid((d := 0.065 * u(.9, 1.1), d, 0.75 * d), 2.3, (0, 0, 0.375 * d)), _cyl(0.006, 0.01, (0, 0, 0.75 * d))),
                (0.065, 0.065, 0.05), "red", "food", ("tomato",)),
    "onion": T(lambda u, s: _solid(0.035 * np.r_[np.sin(th := np.linspace(.3, np.pi * 0.85, 10)), 0.08] * u(.9, 1.1), 0.07 * np.r_[(1 - np.cos(th)) / 2, 1.3]),
               (0.07, 0.07, 0.09), "tan", "food", ("onion", "garlic", "shallot")),
    "potato": T(lambda u, s: _superellipsoid((0.09 * u(.85, 1.15), 0.06 * u(.85, 1.15), 0.045), 2.2, (0, 0, 0.0225)),
                (0.09, 0.06, 0.045), "brown", "food", ("potato", "sweet potato", "ginger", "rock", "stone", "pebble")),
    "mushroom": T(lambda u, s: _rev(np.array([[0, 0], [.32, 0], [.28, .5], [1, .5], [.95, .66], [.7, .86], [.35, .97], [0, 1]]) * [0.03 * u(.9, 1.1), 0.05]),
                  (0.06, 0.06, 0.05), "beige", "food", ("mushroom",)),
    "broccoli": T(lambda u, s: _union(_cyl(0.02, 0.05, (0, 0, 0.025)), *[_sphere(0.02 * u(.9, 1.1), (0.02 * np.cos(a), 0.02 * np.sin(a), 0.055), 2)
                                                                           for a in np.linspace(0, 2 * np.pi, 6)[:-1]], _sphere(0.022, (0, 0, 0.065))),
                  (0.08, 0.08, 0.09), "green", "food", ("broccoli", "cauliflower", "tree")),
    "cucumber": T(lambda u, s: _lay(trimesh.creation.capsule(height=0.16 * u(.9, 1.1), radius=0.02, count=[16, 16])), (0.2, 0.04, 0.04), "green", "food",
                  ("cucumber", "zucchini", "corn", "sausage", "hot dog", "baguette", "leek"), rolls=True),
    "strawberry": T(lambda u, s: _lay(_solid(0.022 * np.sin(np.pi / 2 * (z := np.linspace(0.05, 1, 9))) ** 0.8 * u(.9, 1.1), 0.045 * z)),
                    (0.045, 0.044, 0.044), "red", "food", ("strawberry", "raspberry", "chili", "radish"), rolls=True),
    "pepper": T(_pepper, (0.07, 0.07, 0.1), "red", "food", ("pepper", "bell pepper", "capsicum", "paprika")),
    "egg": T(lambda u, s: _lay(_solid(0.022 * np.sin(th := np.linspace(0, np.pi, 14)) * (1 - 0.12 * np.cos(th)), 0.06 * (1 - np.cos(th)) / 2)),
             (0.06, 0.045, 0.045), "cream", "food", ("egg",), rolls=True),
    "bread": T(lambda u, s: _superellipsoid((0.2 * u(.9, 1.1), 0.1, 0.08), 3, (0, 0, 0.04), flat=0.9), (0.2, 0.1, 0.08), "tan", "food",
               ("bread", "loaf", "bun", "croissant", "muffin", "cake", "pastry")),
    "donut": T(lambda u, s: trimesh.creation.torus(0.03 * u(.9, 1.1), 0.014, 24, 12), (0.088, 0.088, 0.028), "brown", "food", ("donut", "doughnut", "bagel", "ring")),
    "cookie": T(lambda u, s: _cyl(0.035 * u(.9, 1.1), 0.01, (0, 0, 0.005), sections=32), (0.07, 0.07, 0.01), "tan", "food",
                ("cookie", "biscuit", "cracker", "coaster", "pancake", "pizza", "coin", "puck", "disc", "disk", "lid", "frisbee")),
    "cheese": T(lambda u, s: _prism([(0, -0.03), (0.1 * u(.9, 1.1), 0), (0, 0.03)], 0.04), (0.1, 0.06, 0.04), "yellow", "food",
                ("cheese", "wedge", "cake slice", "pie", "sandwich", "triangle")),
    # ---- kitchen containers and tableware ----
    "mug": T(lambda u, s: _mug(u, s), (0.12, 0.085, 0.095), "white", "ceramic", ("mug", "coffee mug", "coffee cup", "stein"), concave=True),
    "teacup": T(lambda u, s: _mug(u, s, taper=1.3, hr=0.6, wall=0.07), (0.12, 0.1, 0.06), "white", "ceramic", ("teacup", "tea cup", "espresso cup"), concave=True),
    "cup": T(lambda u, s: _mug(u, s, False, taper=1.3, hr=1.25), (0.08, 0.08, 0.1), "white", "plastic", ("cup", "paper cup", "beaker", "shot glass"), concave=True),
    "glass": T(lambda u, s: _mug(u, s, False, taper=1.1, hr=1.5, wall=0.05), (0.07, 0.07, 0.12), "light blue", "glass", ("glass", "tumbler", "drinking glass"), concave=True),
    "bowl": T(lambda u, s: _hollow(0.04, 0.08 * u(.9, 1.1), 0.06 * u(.85, 1.1), 0.006, 0.006, round_bottom=0.3, n=9), (0.16, 0.16, 0.06), "white", "ceramic",
              ("bowl", "salad bowl", "basin"), concave=True),
    "plate": T(lambda u, s: _rev(np.array([[0, 0], [.6, 0], [1, .9], [1, 1.1], [.96, 1.1], [.58, .45], [0, .45]]) * [0.11 * u(.9, 1.1), 0.02], 40),
               (0.22, 0.22, 0.022), "white", "ceramic", ("plate", "dish", "saucer", "platter", "dinner plate"), concave=True),
    "pot": T(lambda u, s: _union(_hollow(0.09, 0.09, 0.11 * u(.85, 1.15), 0.005, 0.006), _box((0.03, 0.02, 0.012), (0.1, 0, 0.085)),
                                 _box((0.03, 0.02, 0.012), (-0.1, 0, 0.085))), (0.24, 0.18, 0.11), "silver", "metal",
             ("pot", "saucepan", "stockpot", "soup pot", "cooking pot", "casserole", "cauldron"), concave=True, fill=0.3),
    "pan": T(lambda u, s: _union(_hollow(0.09, 0.1, 0.04, 0.005, 0.005), _cyl(0.009, 0.16, (0.17, 0, 0.03), "x", 12)),
             (0.36, 0.2, 0.04), "black", "metal", ("pan", "frying pan", "skillet", "wok"), concave=True, fill=0.3),
    "planter": T(lambda u, s: _union(_hollow(0.045, 0.06, (h := 0.1 * u(.9, 1.1)), 0.006, 0.01),
                                     _rev([[0.052, h - .016], [0.066, h - .016], [0.066, h], [0.052, h], [0.052, h - .016]])),
                 (0.13, 0.13, 0.1), "brown", "ceramic",
                 ("flower pot", "plant pot", "planter", "pot plant"), concave=True),
    "teapot": T(lambda u, s: _union(_solid(0.06 * np.sin(th := np.linspace(.5, np.pi - .6, 10)) * u(.9, 1.1), 0.1 * (1 - np.cos(th)) / 2),
                                    _tube([[0.04, 0, 0.03], [0.07, 0, 0.05], [0.09, 0, 0.08]], [0.012, 0.008, 0.006], 8),
                                    _tube(np.c_[-0.03 - 0.05 * np.cos(a := np.linspace(-1.4, 1.4, 7)), 0 * a, 0.05 + 0.03 * np.sin(a)], 0.006, 8),
                                    _sphere(0.01, (0, 0, 0.088))), (0.2, 0.12, 0.11), "white", "ceramic", ("teapot", "kettle", "watering can"), fill=0.2),
    "bottle": T(lambda u, s: _solid(0.035 * np.array([.95, 1, 1, .8, .35, .35, .38, .38]) * u(.85, 1.15),
                                    0.22 * np.array([0, .02, .6 * u(.9, 1.1), .72, .82, .95, .96, 1])), (0.07, 0.07, 0.22), "blue", "plastic",
                ("bottle", "water bottle", "wine bottle", "ketchup", "shampoo", "spray bottle", "flask", "sauce", "lotion"), fill=0.25),
    "can": T(lambda u, s: _solid(0.033 * np.array([.85, 1, 1, .85]), 0.12 * u(.9, 1.1) * np.array([0, .05, .95, 1])), (0.066, 0.066, 0.12), "red", "metal",
             ("can", "soda can", "tin", "canister", "thermos", "battery", "candle", "cylinder", "tube"), fill=0.08),
    "jar": T(lambda u, s: _solid(0.04 * np.array([.9, 1, 1, .85, .9, .9]) * u(.9, 1.1), 0.11 * np.array([0, .05, .8, .85, .86, 1])),
             (0.08, 0.08, 0.11), "white", "glass", ("jar", "salt shaker", "pepper shaker", "shaker", "spice", "honey", "pill bottle", "jam"), fill=0.4),
    "vase": T(lambda u, s: _hollow(0.03, 0.025, 0.16 * u(.9, 1.1), 0.004, 0.006, bulge=0.025, n=10), (0.09, 0.09, 0.16), "blue", "ceramic",
              ("vase", "pitcher", "jug", "urn"), concave=True),
    "holder": T(lambda u, s: _hollow(0.035, 0.035, 0.1 * u(.9, 1.1), 0.004, 0.006), (0.07, 0.07, 0.1), "black", "plastic",
                ("pen holder", "pencil holder", "pencil cup", "pen cup", "utensil holder", "cup holder", "brush holder", "toothbrush holder"), concave=True),
    "bin": T(lambda u, s: _hollow(0.1, 0.12, 0.25 * u(.9, 1.1), 0.005, 0.006), (0.24, 0.24, 0.25), "grey", "plastic",
             ("bin", "trash can", "garbage can", "wastebasket", "bucket", "pail", "recycling bin"), concave=True),
    "basket": T(lambda u, s: _open_box((0.28 * u(.9, 1.1), 0.2, 0.1)), (0.28, 0.2, 0.1), "tan", "wood", ("basket", "crate", "hamper", "box basket"), concave=True),
    "tray": T(lambda u, s: _open_box((0.3 * u(.9, 1.1), 0.22, 0.025), 0.006, 0.005), (0.3, 0.22, 0.025), "black", "plastic",
              ("tray", "baking sheet", "baking tray", "serving tray", "dish rack"), concave=True),
    "open_box": T(lambda u, s: _open_box(s), (0.2, 0.15, 0.1), "tan", "cardboard", ("container", "tote", "drawer", "organizer", "storage box", "open box", "bin box",
                                                                                    "toy box", "toybox", "toy chest", "shoe box", "tool box", "toolbox"),
                  concave=True),
    "box": T(lambda u, s: _superellipsoid((s[0] * u(.9, 1.1), s[1], s[2]), 14, (0, 0, s[2] / 2)), (0.2, 0.15, 0.1), "brown", "cardboard",
             ("box", "cereal box", "package", "parcel", "chest", "case", "gift", "tissue box"), fill=0.15),
    "milk_carton": T(_carton, (0.07, 0.07, 0.2), "white", "cardboard", ("milk carton", "juice box", "juice carton", "carton", "milk"), fill=0.3),
    # ---- office and household ----
    "book": T(lambda u, s: _union(_box((0.22, 0.15 * u(.9, 1.1), (t := 0.03 * u(.8, 1.3)))), _cyl(t / 2, 0.15, (-0.11, 0, t / 2), "y", 12)),
              (0.23, 0.15, 0.03), "blue", "paper", ("book", "textbook", "novel", "dictionary", "bible")),
    "notebook": T(lambda u, s: _union(_box((0.21, 0.15 * u(.9, 1.1), 0.012)), *[_cyl(0.005, 0.006, (-0.1, y, 0.006), "x", 10) for y in np.linspace(-0.06, 0.06, 7)]),
                  (0.21, 0.15, 0.012), "red", "paper", ("notebook", "notepad", "diary", "journal", "magazine", "folder", "envelope", "card", "paper")),
    "towel": T(lambda u, s: _superellipsoid((0.2 * u(.9, 1.1), 0.15, 0.015), 6, (0, 0, 0.0075)), (0.2, 0.15, 0.015), "blue", "fabric",
               ("towel", "cloth", "napkin", "rag", "tablecloth", "handkerchief", "dishcloth", "mat", "placemat", "tissue", "sheet", "blanket")),
    "sponge": T(lambda u, s: _union(_box((0.1, 0.07, 0.025)), _box((0.1, 0.07, 0.008), (0, 0, 0.024))), (0.1, 0.07, 0.033), "yellow", "foam",
                ("sponge", "scrubber", "scourer")),
    "soap": T(lambda u, s: _superellipsoid((0.09 * u(.9, 1.1), 0.06, 0.03), 2.6, (0, 0, 0.015), flat=0.85), (0.09, 0.06, 0.03), "white", "wax", ("soap", "bar of soap", "eraser")),
    "phone": T(lambda u, s: _union(_superellipsoid((0.15, 0.072 * u(.95, 1.05), 0.009), 8, (0, 0, 0.0045)), _box((0.025, 0.025, 0.003), (0.05, 0.02, 0.008))),
               (0.15, 0.072, 0.011), "black", "plastic", ("phone", "smartphone", "cellphone", "cell phone", "tablet", "calculator", "ipad")),
    "remote": T(lambda u, s: _union(_superellipsoid((0.18, 0.048 * u(.9, 1.1), 0.022), 5, (0, 0, 0.011)),
                                    *[_cyl(0.005, 0.006, (x, 0, 0.021), sections=10) for x in (-0.05, -0.02, 0.01, 0.04)]),
                (0.18, 0.048, 0.025), "black", "plastic", ("remote", "remote control", "controller", "tv remote")),
    "screwdriver": T(lambda u, s: _union(_cyl(0.014, 0.1, (-0.05, 0, 0.014), "x", 6), _cyl(0.004, (L := 0.1 * u(.8, 1.2)), (L / 2 - 0.005, 0, 0.014), "x", 10)),
                     (0.2, 0.032, 0.028), "yellow", "plastic", ("screwdriver", "awl")),
    "hammer": T(lambda u, s: _union(_box((0.28 * u(.9, 1.1), 0.025, 0.025)), _box((0.035, 0.11, 0.035), (0.13, 0, 0))),
                (0.3, 0.11, 0.035), "brown", "wood", ("hammer", "mallet")),
    "scissors": T(_scissors, (0.16, 0.07, 0.008), "red", "metal", ("scissors", "shears")),
    "pen": T(lambda u, s: _union(_cyl(0.0055, 0.13 * u(.9, 1.1), (0, 0, 0.0055), "x", 16), _box((0.04, 0.003, 0.004), (-0.035, 0, 0.009))),
             (0.14, 0.012, 0.014), "blue", "plastic", ("pen", "ballpoint", "stick", "straw", "skewer", "wand", "stylus"), rolls=True),
    "pencil": T(_pencil, (0.18, 0.009, 0.008), "yellow", "wood", ("pencil", "crayon")),
    "marker": T(lambda u, s: _union(_cyl(0.008, 0.11 * u(.9, 1.1), (0, 0, 0.009), "x", 16), _cyl(0.009, 0.04, (0.05, 0, 0.009), "x", 16)),
                (0.14, 0.018, 0.018), "black", "plastic", ("marker", "highlighter", "glue stick", "lipstick", "flashlight", "torch", "sharpie"), rolls=True),
    "knife": T(lambda u, s: _union(_box((0.1, 0.02, 0.012), (-0.05, 0, 0)), _prism([(0, -0.01), (0.12 * u(.9, 1.1), -0.01), (0.13, 0.0), (0, 0.012)], 0.003)),
               (0.23, 0.024, 0.012), "silver", "metal", ("knife", "butter knife", "cleaver", "dagger", "blade"),
               fill=0.3),  # a solid steel handle weighed 206 g and slipped from the fingers; a table knife is ~60 g
    # flat cutlery 5 mm high: a real handle arches off the table; a 4 mm flat bar lies below the finger pads' lower
    # edge (a 4.0 mm fork was missed in 4 of 6 episodes, a 4.4 mm one grasped in 17 of 18)
    "fork": T(lambda u, s: _union(_box((0.12, 0.012, 0.005), (-0.06, 0, 0)), _box((0.02, 0.024, 0.005), (0.01, 0, 0)),
                                  *[_box((0.045, 0.004, 0.005), (0.04, y, 0)) for y in (-0.01, -0.0033, 0.0033, 0.01)]),
              (0.18, 0.025, 0.005), "silver", "metal", ("fork",), fill=0.35),  # ~40 g like a table fork (solid: 100 g)
    "spoon": T(lambda u, s: _union(_box((0.12, 0.012, 0.005), (-0.06, 0, 0)), _superellipsoid((0.06, 0.04 * u(.9, 1.1), 0.01), 2, (0.025, 0, 0.005))),
               (0.18, 0.04, 0.01), "silver", "metal", ("spoon", "ladle", "scoop", "teaspoon", "tablespoon"),
               fill=0.3),  # a solid bowl and a 4 mm handle weighed 110-130 g and slid out of the pinch; a spoon is ~40 g
    "spatula": T(lambda u, s: _union(_box((0.16, 0.016, 0.01), (-0.08, 0, 0)), _box((0.09, 0.07 * u(.9, 1.1), 0.004), (0.04, 0, 0))),
                 (0.25, 0.07, 0.01), "black", "plastic", ("spatula", "turner", "paddle", "scraper", "putty knife")),
    "cutting_board": T(lambda u, s: _union(_superellipsoid((0.3 * u(.9, 1.1), 0.2, 0.02), 8, (0, 0, 0.01)), _box((0.05, 0.05, 0.02), (0.16, 0, 0))),
                       (0.35, 0.2, 0.02), "tan", "wood", ("cutting board", "chopping board", "board", "clipboard", "tablet board")),
    "block": T(lambda u, s: _superellipsoid((b := 0.04 * u(.95, 1.05), b, b), 16, (0, 0, b / 2)), (0.04, 0.04, 0.04), "red", "wood",
               ("block", "cube", "dice", "die", "lego", "lego brick", "toy brick", "building block", "toy block")),
    "brick": T(lambda u, s: _superellipsoid((0.2 * u(.95, 1.05), 0.09, 0.06), 16, (0, 0, 0.03)), (0.2, 0.09, 0.06), "red", "stone",
               ("brick", "paver", "cinder block")),
    "clip": T(lambda u, s: _superellipsoid((0.033 * u(.9, 1.1), 0.01, 0.003), 8, (0, 0, 0.0015)), (0.033, 0.01, 0.003), "silver", "metal",
              ("paper clip", "paperclip", "binder clip", "clip", "safety pin", "bobby pin", "hair clip")),
    "ball": T(lambda u, s: _sphere(0.03, sub=3), (0.06, 0.06, 0.06), "green", "rubber", ("ball", "tennis ball", "baseball", "marble", "orb", "sphere", "globe"), rolls=True),
    "toy_car": T(lambda u, s: _union(_box((0.1, 0.045, 0.02), (0, 0, 0.01)), _box((0.05, 0.04, 0.018), (-0.005, 0, 0.028)),
                                     *[_cyl(0.01, 0.01, (x, y, 0.01), "y", 12) for x in (-0.033, 0.033) for y in (-0.024, 0.024)]),
                 (0.1, 0.058, 0.046), "red", "plastic", ("toy car", "car", "truck", "vehicle", "bus", "train", "tractor")),
    "figure": T(_figure, (0.05, 0.044, 0.11), "blue", "plastic", ("figure", "doll", "action figure", "figurine", "toy figure", "toy", "chess piece", "pawn", "teddy bear", "robot")),
    "duck": T(lambda u, s: _union(_flat_bottom(_superellipsoid((0.08 * u(.9, 1.1), 0.06, 0.05), 2), 0.3), _sphere(0.02, (0.02, 0, 0.035)), _box((0.02, 0.012, 0.006), (0.045, 0, 0.032))),
              (0.09, 0.06, 0.08), "yellow", "rubber", ("rubber duck", "duck", "bird", "chick")),
    "stapler": T(lambda u, s: _union(_box((0.15, 0.035, 0.012)), _box((0.14 * u(.9, 1.1), 0.03, 0.02), (0.005, 0, 0.011))),
                 (0.15, 0.035, 0.034), "black", "metal", ("stapler", "hole punch"), fill=0.3),
    "tape": T(lambda u, s: _rev(np.array([[0.6, 0], [1, 0], [1, 1], [0.6, 1], [0.6, 0]]) * [0.04 * u(.9, 1.1), 0.025], 28),
              (0.08, 0.08, 0.025), "grey", "plastic", ("tape", "tape roll", "roll of tape", "duct tape", "bracelet")),
    "mouse": T(lambda u, s: _flat_bottom(_superellipsoid((0.11, 0.06 * u(.9, 1.1), 0.07), 2.2)),
               (0.11, 0.06, 0.035), "grey", "plastic", ("mouse", "computer mouse")),
    "toothbrush": T(lambda u, s: _union(_box((0.17, 0.012, 0.008)), _box((0.025, 0.011, 0.012), (0.07, 0, 0.007))), (0.17, 0.012, 0.019), "blue", "plastic",
                    ("toothbrush", "brush", "comb", "razor")),
    "wrench": T(_wrench, (0.2, 0.035, 0.006), "silver", "metal", ("wrench", "spanner", "pliers", "key", "keys")),
    "cone": T(lambda u, s: _union(_box((0.07, 0.07, 0.006)), trimesh.creation.cone(0.028, 0.1 * u(.9, 1.1), sections=24)), (0.07, 0.07, 0.1), "orange", "rubber",
              ("cone", "traffic cone", "pyramid")),
    "rolling_pin": T(lambda u, s: _union(_cyl(0.025, 0.25 * u(.9, 1.1), axis="x"), _cyl(0.01, 0.36, axis="x", sections=12)), (0.36, 0.05, 0.05), "tan", "wood",
                     ("rolling pin", "dowel", "rod", "pipe", "baton", "log"), rolls=True),
    "pouch": T(lambda u, s: _superellipsoid((0.2 * u(.9, 1.1), 0.12, 0.05), 2.6, (0, 0, 0.025)), (0.2, 0.12, 0.05), "black", "fabric",
               ("pouch", "bag", "wallet", "purse", "pencil case", "chips", "glasses case", "pillow", "cushion", "bean bag")),
    # ---- issue 15: categories that fell back to grey generic shapes, and thin tools ----
    "cherry": T(lambda u, s: _union(_sphere((r := 0.012 * u(.9, 1.1)), (0, 0, r)), _cyl(0.0012, 0.012, (0, 0, 2 * r + 0.004), sections=6)),
                (0.03, 0.025, 0.025), "dark red", "food", ("cherry", "cherries", "berry", "plum"), rolls=True),
    "coconut": T(lambda u, s: _flat_bottom(_superellipsoid((d := 0.11 * u(.9, 1.1), 0.95 * d, 0.9 * d), 2, (0, 0, 0.35 * d)), 0.2),
                 (0.11, 0.105, 0.1), "dark brown", "food", ("coconut",), rolls=True),
    "kiwi": T(lambda u, s: _flat_bottom(_superellipsoid((0.07 * u(.95, 1.05), 0.052, 0.05), 2.1, (0, 0, 0.018)), 0.2),
              (0.07, 0.052, 0.048), "olive", "food", ("kiwi", "kiwifruit", "kiwi fruit")),
    "cactus": T(lambda u, s: _union(_cyl(0.022, (h := 0.11 * u(.9, 1.1)), (0, 0, h / 2), sections=16), _sphere(0.022, (0, 0, h), 1),
                                    _cyl(0.011, 0.03, (0.03, 0, 0.5 * h), "x", 10), _cyl(0.011, 0.035, (0.04, 0, 0.5 * h + 0.017), sections=10),
                                    _cyl(0.011, 0.03, (-0.03, 0, 0.65 * h), "x", 10), _cyl(0.011, 0.03, (-0.04, 0, 0.65 * h + 0.015), sections=10)),
                (0.1, 0.045, 0.13), "dark green", "plastic", ("cactus", "succulent", "cacti")),
    # a flower cannot stand on its head: it is built lying down, stem along x and the bloom resting on the table
    "flower": T(lambda u, s: _union(_cyl(0.004, (L := 0.2 * u(.9, 1.1)), (-L / 2, 0, 0.004), "x", 10),
                                    _superellipsoid((0.04, 0.06, 0.035), 2, (0.015, 0, 0.0175)), _box((0.03, 0.012, 0.003), (-0.09, 0.008, 0))),
                (0.26, 0.06, 0.035), "red", "plastic", ("flower", "rose", "tulip", "daisy", "sunflower", "bouquet", "lily")),
    "paintbrush": T(lambda u, s: _union(_cyl(0.005, 0.13 * u(.9, 1.1), (-0.055, 0, 0.006), "x", 12), _cyl(0.0065, 0.025, (0.02, 0, 0.006), "x", 12),
                                        _box((0.03, 0.012, 0.007), (0.047, 0, 0.0025))),
                    (0.2, 0.013, 0.013), "tan", "wood", ("paintbrush", "paint brush", "artist brush")),
    "chopsticks": T(lambda u, s: _union(*[_cyl(0.0045, 0.23 * u(.97, 1.03), (0, y, 0.0045), "x", 10) for y in (-0.004, 0.004)]),
                    (0.23, 0.017, 0.009), "tan", "wood", ("chopstick", "chopsticks")),
    # shape words ("round tray", "square bowl"): counterparts of templates of the other shape (choose_template)
    "round_tray": T(lambda u, s: _hollow(0.13 * u(.9, 1.1), 0.135, 0.025, 0.005, 0.005, n=4, sections=40), (0.27, 0.27, 0.025), "black", "plastic",
                    (), concave=True),
    # ---- generic fallbacks (no keywords: chosen by receptacle and aspect ratio) ----
    "rounded_box": T(lambda u, s: _generic(u, s, "rounded_box"), (0.08, 0.06, 0.05)),
    "capsule": T(lambda u, s: _generic(u, s, "capsule"), (0.15, 0.03, 0.03), rolls=True),
    "slab": T(lambda u, s: _generic(u, s, "slab"), (0.15, 0.1, 0.015)),
    "open_container": T(lambda u, s: _generic(u, s, "open_container"), (0.2, 0.15, 0.08), concave=True),
    "open_round": T(lambda u, s: _generic(u, s, "open_round"), (0.15, 0.15, 0.05), concave=True),
}
del T


def _code_digest(code, h) -> None:
    """Feed a code object's bytecode, names and constants (nested code objects recursively) into hash `h`."""
    h.update(code.co_code)
    h.update(repr(code.co_names).encode())
    for c in code.co_consts:
        if hasattr(c, "co_code"):
            _code_digest(c, h)
        else:
            h.update(repr(c).encode())


SHARED_CODE_VERSION = 2
"""Part of every template's fingerprint: bump it when a shared helper (`_cyl`, `_box`, ...) or the visual export
changes what a template builds, so cached assets are rebuilt. 2: laid-down cylinders rest on a face, brushed metal."""


def template_fingerprint(name: str) -> str:
    """A short hash of a template's build code and fields (and SHARED_CODE_VERSION): generate_assets.py regenerates
    a cached asset whose template changed since it was built."""
    import hashlib

    t = TEMPLATES[name]
    h = hashlib.sha256(repr((name, t.size, t.color, t.material, t.concave, t.rolls, t.fill,
                             SHARED_CODE_VERSION)).encode())
    _code_digest(t.build.__code__, h)
    return h.hexdigest()[:12]


def spaced_words(text: str) -> str:
    """" a b c ": lower-case alphanumeric words padded with spaces, for whole-word matching."""
    return " " + re.sub(r"[^a-z0-9]+", " ", text.lower()).strip() + " "


def _find(keyword: str, words: str) -> bool:
    """Whole-word match, tolerant of plurals ("grapes", "boxes", "knives")."""
    kw = re.escape(keyword).replace(r"\ ", " ")
    kw = re.sub(r"fe?$", "(?:fe?|ves)", kw) if keyword.endswith(("fe", "f")) else kw
    return re.search(rf" {kw}(?:e?s)? ", words) is not None


def _find_end(keyword: str, words: str) -> int:
    """Where the last whole-word match of `keyword` ends in `words` (-1 if none)."""
    kw = re.escape(keyword).replace(r"\ ", " ")
    kw = re.sub(r"fe?$", "(?:fe?|ves)", kw) if keyword.endswith(("fe", "f")) else kw
    return max((m.end() for m in re.finditer(rf" {kw}(?:e?s)?(?= )", words)), default=-1)


def choose_template(category: str, description: str = "", size_m=None, receptacle: str | None = None) -> tuple[str, str]:
    """Category -> (template name, why). The head-noun keyword (ending last, then longest) in the category wins, then
    in the description (colour words removed), then a generic shape from receptacle + aspect ratio: every category
    gets one."""
    desc = description.lower()
    for c in sorted(COLORS, key=len, reverse=True):
        desc = re.sub(rf"\b{c}\b", " ", desc)
    for where, text in (("category", category), ("description", desc)):
        words = spaced_words(text)
        # the keyword that ends last wins (the head noun: "toy box" is a box, a "toothbrush cup" a cup), then the
        # longest of those ("tennis ball" over "ball")
        hits = [(_find_end(k, words), len(k), name, k) for name, t in TEMPLATES.items() for k in t.keywords
                if _find(k, words)]
        if hits:
            *_, name, k = max(hits)
            return _with_shape(name, desc, f"keyword {k!r} in {where} {text.strip()!r}")
    x, y, z = size_m or (0.08, 0.06, 0.05)
    lo, hi = sorted((x, y))
    if receptacle == "IN":
        name = "open_round" if hi / lo < 1.2 else "open_container"
    elif receptacle == "ON" or z < 0.3 * lo:
        name = "cookie" if hi / lo < 1.2 and receptacle == "ON" else "slab"
    elif hi / max(lo, z) > 2.5:
        name = "capsule"
    else:
        name = "rounded_box"
    return _with_shape(name, desc, f"unknown category {category!r}: no template keyword matched; generic {name!r} "
                       f"from receptacle={receptacle} and size {[round(v, 3) for v in (x, y, z)]}")


# ALGO LOGIC: a proportion word stretches the template's mesh along its axes (x long, y across, z up) before the
# bounding-box fit, and the requested size with it: a "tall cup" is taller than a cup, a "flat tray" lower
PROPORTION_WORDS = {"tall": (1.0, 1.0, 1.4), "flat": (1.0, 1.0, 0.6), "shallow": (1.0, 1.0, 0.6),
                    "short": (1.0, 1.0, 0.7), "long": (1.35, 1.0, 1.0), "wide": (1.25, 1.25, 1.0)}


def proportion_stretch(description: str) -> tuple[float, float, float]:
    """Per-axis stretch of the proportion words in a description ("a tall glass" -> (1, 1, 1.4)); several
    multiply; (1, 1, 1) when there is none."""
    words = spaced_words(description.lower())
    out = np.ones(3)
    for w, k in PROPORTION_WORDS.items():
        if _find(w, words):
            out *= k
    return tuple(float(x) for x in out)


# ALGO LOGIC: a shape word in the description swaps a template for its counterpart of that shape
SHAPE_WORDS = {"round": "round", "circular": "round", "cylindrical": "round", "oval": "round",
               "square": "square", "rectangular": "square", "boxy": "square", "cubic": "square"}
SHAPE_COUNTERPARTS = {
    "round": {"open_box": "open_round", "open_container": "open_round", "basket": "open_round", "tray": "round_tray",
              "slab": "cookie", "rounded_box": "can", "box": "can"},
    "square": {"open_round": "open_container", "bowl": "open_container", "bin": "open_container",
               "holder": "open_container", "plate": "tray", "round_tray": "tray", "cookie": "slab", "can": "box"},
}


def shape_word(description: str) -> str | None:
    """"round" / "square" when the description says so (first shape word wins), else None."""
    return next((SHAPE_WORDS[w] for w in spaced_words(description).split() if w in SHAPE_WORDS), None)


def _with_shape(name: str, desc: str, why: str) -> tuple[str, str]:
    shape = shape_word(desc)
    swap = SHAPE_COUNTERPARTS.get(shape or "", {}).get(name)
    return (swap, f"{why}; {shape!r} in the description: {name!r} -> {swap!r}") if swap else (name, why)


def category_range(tmpl: Template) -> tuple[float, float]:
    """Allowed longest side (m) of a template's meshes: 0.25x - 4x its default longest side."""
    return 0.25 * max(tmpl.size), 4.0 * max(tmpl.size)
