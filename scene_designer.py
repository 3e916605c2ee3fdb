"""Scene designer: task text -> validated scene graph (SPEC section 2; paper Sec. 3 and Fig. 2).

Turns plain-language pick-and-place tasks into scene graphs with semantic roles (background, context
table, robot, target, destination, distractors) and ON/IN relations, checks every graph with
`scene_schema.check_scene_graph`, and writes `<out>/<scene_id>/scene_graph.json` plus `<out>/index.json`.

    python scene_designer.py --tasks examples/tasks.txt --out-dir scenes --variants-per-task 2
    python scene_designer.py --task "put the pen in the pen holder" --num-distractors 2-4 --out-dir scenes

The default designer is offline and rule-based: a noun-phrase parser over the everyday-object lexicon
of `scene_lexicon.py` (sizes, graspability, receptacle type, settings), deterministic for a seed.
`--designer llm` asks any OpenAI-compatible endpoint (key from $OPENAI_API_KEY) for the graph with
JSON-schema structured output, validates it with the same checks, feeds the problems back for repair, and
falls back to the rules (recorded in `graph.designer`) when every attempt fails.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import re
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import tyro

import scene_schema as ss
from scene_lexicon import (CATEGORIES, GENERIC_CATEGORY, GENERIC_SIZE_M, LOOKUP, MAX_GRASP_SCALE_DOWN, MAX_NGRAM,
                           SETTINGS, Category)
from scene_schema import IndexEntry, ObjectAttributes, Relation, SceneGraph, SceneObject


@dataclass
class Args:
    task: tyro.conf.UseAppendAction[list[str]] = field(default_factory=list)
    """A task, e.g. "put the pen in the pen holder"; repeat the flag for several."""
    tasks: str | None = None
    """A .txt file (one task per line, '#' starts a comment line) or a .json file (a list of strings)."""
    out_dir: str = "scenes"
    """Folder that receives <scene_id>/scene_graph.json, index.json and args.json."""
    variants_per_task: int = 1
    """Distinct scene graphs per task (different distractors, background and attributes)."""
    num_distractors: str = "2-4"
    """Distractors per scene: a count ("3") or an inclusive range ("2-4") sampled per scene (difficulty knob)."""
    seed: int = 0
    """Base seed; each (task, variant) derives its own seed from it, so results do not depend on task order."""
    designer: Literal["rules", "llm"] = "rules"
    """"rules": the offline rule-based designer; "llm": an OpenAI-compatible model, falling back to rules."""
    llm_base_url: str | None = None
    """Base URL of an OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (None: api.openai.com)."""
    llm_model: str = "gpt-4o"
    """Model name sent to the endpoint."""
    llm_api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (the key itself is never logged or written)."""
    llm_attempts: int = 3
    """LLM tries per scene; each retry feeds the validation errors back for repair."""
    llm_timeout_s: float = 30.0
    """Timeout of one LLM request in seconds (no client-side retries: --llm-attempts are the retries)."""
    llm_circuit_breaker: int = 3
    """After this many consecutive scenes whose every LLM request failed (time-out, connection, HTTP error), the
    rest of the batch uses the rules designer (recorded as the fall-back reason): a hung endpoint costs minutes,
    not --llm-attempts x --llm-timeout-s per scene for the whole batch. 0: never."""
    overwrite: bool = False
    """Re-design scenes whose scene_graph.json exists (default: keep them, index status "exists")."""

    @property
    def distractor_range(self) -> tuple[int, int]:
        return parse_count_range(self.num_distractors)


# ---------------------------------------------------------------------------------------------
# Parsing: task text -> (target noun phrase, preposition, destination noun phrase)
# ---------------------------------------------------------------------------------------------

COLORS = set("red green blue yellow orange purple pink white black brown grey gray silver gold golden beige teal cyan "
             "magenta navy maroon turquoise violet tan cream ivory khaki lime olive indigo".split())
COLOR_MODIFIERS = {"dark", "light", "bright", "pale", "deep"}
MATERIALS = {"wooden": "wood", "wood": "wood", "plastic": "plastic", "metal": "metal", "metallic": "metal",
             "steel": "steel", "stainless": "steel", "ceramic": "ceramic", "porcelain": "ceramic", "glass": "glass",
             "paper": "paper", "cardboard": "cardboard", "rubber": "rubber", "fabric": "fabric", "cloth": "fabric",
             "cotton": "fabric", "leather": "leather", "wicker": "wicker", "bamboo": "bamboo", "stone": "stone",
             "clay": "clay", "silicone": "silicone", "aluminum": "aluminium", "aluminium": "aluminium",
             "foam": "foam", "felt": "felt", "woolen": "wool", "wool": "wool", "iron": "metal", "tin": "metal"}
SIZES = {"tiny": "tiny", "mini": "tiny", "small": "small", "little": "small", "smaller": "small", "medium": "medium",
         "large": "large", "larger": "large", "big": "big", "bigger": "big", "huge": "large", "giant": "large"}
SIZE_SCALE = {"tiny": 0.6, "small": 0.8, "medium": 1.0, "large": 1.25, "big": 1.25}
DETERMINERS = set("the a an this that these those my your our their his her its some any each every another other "
                  "both all few couple single same two three four five".split())
ANAPHORS = set("one ones it them thing things object objects item items something stuff".split())
NOISE = set("go goes going gone should must belongs belong needs need has have is are be will would gets sits sit "
            "stay stays end ends up down back away out off over please you me us i we carefully gently slowly "
            "quickly just now also again here there currently located sitting lying resting placed kept".split())
NON_OBJECT = set("left right middle center centre side corner front rear top bottom edge end place spot area "
                 "position room kitchen office workshop garage playroom bathroom bedroom lab house home way".split())
OF_QUANTIFIERS = set("piece slice bunch handful pair block bar loaf head ear clove wedge chunk stick roll sheet "
                     "stack pile set packet bag box cup".split())
VERBS = set("put puts putting place places placing move moves moving set setting drop drops dropping transfer "
            "transfers transferring stack stacks stacking pick picks picking grab grabs grabbing take takes taking "
            "lay laying position bring brings bringing carry carrying toss tossing throw throwing insert inserting "
            "load stick slide sliding push relocate shift get lift lifting deposit stash store pop leave rest return "
            "fetch deliver pack stuff plop dump tuck slip nest lower hand sit stand fit hang keep fill cover "
            "arrange organize organise park".split())
IN_PREPS, ON_PREPS = {"in", "into", "inside", "within"}, {"on", "onto", "upon", "atop", "over"}
TO_PREPS = {"to", "toward", "towards"}
SPATIAL = IN_PREPS | ON_PREPS | TO_PREPS
DIRECTIONAL = {"into", "onto"} | TO_PREPS  # unambiguous goal markers; static in/on may also locate an object
CLAUSE = {"and", "then", ",", "so", "but", "after", "before", "while", "once", "afterwards"}
RELATIVE = {"that", "which", "who", "thats", "whichs", "where", "from", "with", "except"}
UNSUPPORTED = {"next_to": "next to", "in_front_of": "in front of", "behind": "behind", "beside": "beside",
               "besides": "beside", "near": "near", "under": "under", "underneath": "under", "below": "below",
               "beneath": "beneath", "left_of": "left of", "right_of": "right of", "around": "around",
               "between": "between", "above": "above", "against": "against", "across": "across"}
BOUNDARY = CLAUSE | RELATIVE | SPATIAL | set(UNSUPPORTED)
LOCATIVE = set("is are was were thats that which sitting lying located resting standing currently kept".split())
COPULA = set("go goes should must belongs belong needs need has have is are be will would gets sits stays".split())
FILLERS = ["could you please", "can you please", "would you please", "would you mind", "will you please",
           "could you", "can you", "would you", "will you", "i want you to", "i would like you to", "id like you to",
           "i need you to", "you need to", "you should", "i want", "i need", "i would like", "id like", "lets",
           "let us", "go ahead and", "try to", "make sure to", "make sure that", "make sure", "remember to",
           "help me", "for me", "thank you", "thanks", "please", "kindly", "hey", "okay", "ok", "robot", "now",
           "just", "carefully", "gently", "slowly", "quickly", "i think", "time to", "first"]
_FILLER_RE = re.compile(r"\b(?:" + "|".join(sorted(map(re.escape, FILLERS), key=len, reverse=True)) + r")\b")
_REWRITES = [  # multi-word prepositions -> one token (order matters)
    (r"\b(?:to|on|at) the (left|right)(?: hand)?(?: side)? of\b", r"\1_of"), (r"\bin front of\b", "in_front_of"),
    (r"\bnext to\b", "next_to"), (r"\bclose to\b", "near"), (r"\bout of\b", "from"), (r"\boff of\b", "from"),
    (r"\b(?:in|into|inside) the (?:middle|center|centre|inside|bottom) of\b", "into"),
    (r"\b(?:on|onto|at|to) the (?:middle|center|centre|top|surface) of\b", "onto"),
    (r"\bon top of\b", "onto"), (r"\bon to\b", "onto"), (r"\bin to\b", "into"), (r"\binside of\b", "inside"),
]


class DesignError(ValueError):
    """A task the designer cannot turn into a scene; the message says why and how to rephrase."""


@dataclass
class NounPhrase:
    category: Category | None
    """Lexicon category, or None for an unknown noun (generic) / a bare anaphor."""
    words: str
    """Object words as written, attributes included ("small red coffee mug")."""
    head: str = ""
    """The noun itself ("coffee mug", or the unknown word)."""
    color: str | None = None
    material: str | None = None
    size: str | None = None
    anaphor: str = ""
    """The pronoun when the phrase names no object by itself ("one" in "the red one", "it")."""


def tokenize(text: str) -> list[str]:
    """Lower-case tokens; fillers removed, multi-word prepositions merged, commas kept only between clauses."""
    t = " " + text.lower().replace("\u2019", "'") + " "
    t = re.sub(r"'s\b", "s", t)
    t = re.sub(r"(\w)'(\w)", r"\1\2", t)
    t = re.sub(r"[^a-z0-9,]+", " ", t).replace(",", " , ")
    t = _FILLER_RE.sub(" ", t)
    for pattern, repl in _REWRITES:
        t = re.sub(pattern, repl, t)
    toks = t.split()
    return [w for i, w in enumerate(toks)  # a comma separates clauses only before a verb / "and" / "then"
            if w != "," or (i + 1 < len(toks) and (toks[i + 1] in VERBS or toks[i + 1] in ("and", "then")))]


def _attributes(toks: list[str]) -> tuple[str | None, str | None, str | None]:
    color = material = size = None
    for i, w in enumerate(toks):
        if w in COLORS and color is None:
            mod = toks[i - 1] if i and toks[i - 1] in COLOR_MODIFIERS else None
            color = f"{mod} {w}" if mod else ("grey" if w == "gray" else w)
        elif w in MATERIALS and material is None:
            material = MATERIALS[w]
        elif w in SIZES and size is None:
            size = SIZES[w]
    return color, material, size


def _is_attribute(w: str) -> bool:
    return w in COLORS or w in MATERIALS or w in SIZES or w in COLOR_MODIFIERS


def parse_noun_phrase(tokens: list[str]) -> NounPhrase | None:
    """Noun phrase -> lexicon category + attributes. The head is the right-most (then longest) lexicon
    name, so "pen holder" beats "pen" and "glass bowl" is a bowl; "cup of coffee" keeps the head before
    "of" unless it is a quantifier ("slice of bread" -> bread). None if the phrase names no object."""
    toks = [w for w in tokens if w not in DETERMINERS and w not in NOISE and not w.isdigit()]
    if not toks:
        return None
    anaphor = toks[-1] if toks[-1] in ANAPHORS else ""
    toks = [w for w in toks if w not in ANAPHORS]
    matches = [(j, j - i, i) for i in range(len(toks)) for j in range(i + 1, min(len(toks), i + MAX_NGRAM) + 1)
               if tuple(toks[i:j]) in LOOKUP]
    if anaphor:  # "the orange one": colour words are not the noun
        matches = [m for m in matches if not all(_is_attribute(w) for w in toks[m[2]:m[0]])]
    best = max(matches) if matches else None
    if best and "of" in toks[:best[2]]:
        k = toks.index("of")
        before = [m for m in matches if m[0] <= k]
        if before and toks[max(before)[0] - 1] not in OF_QUANTIFIERS:
            best = max(before)
    if best:
        j, _, i = best
        color, material, size = _attributes(toks[:j - 1])
        return NounPhrase(LOOKUP[tuple(toks[i:j])], " ".join(toks[:j]), " ".join(toks[i:j]), color, material, size)
    color, material, size = _attributes(toks)
    nouns = [w for w in toks if not _is_attribute(w) and w != "of"]
    if not nouns:  # only attributes and/or a pronoun ("the red one", "it")
        return NounPhrase(None, " ".join(toks), "", color, material, size, anaphor=anaphor or "one")
    if nouns[-1] in NON_OBJECT:  # "the left", "the kitchen": a place, not an object
        return None
    return NounPhrase(None, " ".join(toks), nouns[-1], color, material, size)


def _segment(toks: list[str], start: int, stop_at: set[str]) -> list[str]:
    """Tokens from `start` up to the first token in `stop_at` ("that"/"which" only after the noun)."""
    out = []
    for w in toks[start:]:
        if out and (w in stop_at or w in COPULA) or not out and w in stop_at - RELATIVE:  # "the bowl | goes .."
            break
        out.append(w)
    return out


@dataclass
class ParsedTask:
    target: NounPhrase
    destination: NounPhrase
    preposition: str
    """The goal preposition as written ("into", "on", "to"; "with" for "fill Y with X")."""
    source: NounPhrase | None = None
    """Where the target starts ("move the apple from the plate to the bowl"), kept as a distractor."""


def parse_task(text: str) -> ParsedTask:
    """Find the target and the destination in a pick-and-place command. Raises DesignError saying why."""
    if not isinstance(text, str) or not text.strip():
        raise DesignError("the task is empty; write a command such as 'put the pen in the pen holder'")
    toks = tokenize(text)
    # "fill the bowl with apples" / "cover the plate with the towel"
    if toks and toks[0] in ("fill", "cover") and "with" in toks:
        w = toks.index("with")
        dst, tgt = parse_noun_phrase(toks[1:w]), parse_noun_phrase(_segment(toks, w + 1, BOUNDARY - {"with"}))
        if dst and tgt:
            return ParsedTask(tgt, dst, "into" if toks[0] == "fill" else "onto")
    verb = next((i for i, w in enumerate(toks) if w in VERBS and (i == 0 or toks[i - 1] in CLAUSE | {"to"})), -1)
    if verb == -1 and toks and toks[0] in SPATIAL:  # "into the bowl goes the apple" / "in the bowl, put ..."
        verb = next((i for i, w in enumerate(toks) if w in VERBS), len(toks))
    candidates = [p for p, w in enumerate(toks) if w in SPATIAL and p != verb
                  and not (p > 0 and toks[p - 1] in LOCATIVE)  # "the apple (that is) sitting on the plate"
                  and not (w in TO_PREPS and p + 1 < len(toks) and toks[p + 1] in VERBS)]
    # Directional prepositions (into, onto, to) first, then static ones (in, on), each left to right.
    candidates.sort(key=lambda p: (toks[p] not in DIRECTIONAL, p))
    on_context = None
    for p in candidates:
        dst = parse_noun_phrase(_segment(toks, p + 1, BOUNDARY))
        if dst is None:
            continue
        if p > verb:
            region = toks[verb + 1:p] if verb >= 0 else toks[:p]
            first = _segment(region, 0, CLAUSE)
            tgt_toks, rest = _segment(first, 0, BOUNDARY), first
        else:  # destination fronted: "into the bowl goes the apple", "in the bowl, put the apple"
            start = verb + 1 if verb < len(toks) else p + 1 + len(_segment(toks, p + 1, BOUNDARY))
            tgt_toks = rest = _segment(toks, start, BOUNDARY)
        tgt = parse_noun_phrase(tgt_toks)
        if tgt is not None and tgt.anaphor and not tgt.words and verb > 0:  # "the apple, put it in the bowl"
            tgt = parse_noun_phrase(_segment(toks[:verb], 0, BOUNDARY)) or tgt
        if tgt is None:
            continue
        source = parse_noun_phrase(_segment(rest, rest.index("from") + 1, BOUNDARY)) if "from" in rest else None
        parsed = ParsedTask(tgt, dst, toks[p], source)
        if dst.category is not None and dst.category.key == "table":
            on_context = on_context or parsed
            continue
        return parsed
    if on_context is not None:
        raise DesignError(f"the destination {on_context.destination.head!r} is the work surface every object "
                          "already stands on, so the scene would start solved; name an object to put it "
                          "on or in (e.g. 'put the apple on the plate')")
    unsupported = [UNSUPPORTED[w] for w in toks if w in UNSUPPORTED]
    if unsupported:
        raise DesignError(f"the relation {unsupported[0]!r} is not supported: scenes have ON/IN goals only "
                          "(e.g. 'put the cup on the tray', 'put the pen in the cup')")
    raise DesignError("could not find both an object to move and where to put it; write it like "
                      "'put the <object> in/on the <destination>' or 'stack the <block> on the <block>'")


def goal_relation(preposition: str, destination_receptacle: str | None) -> str:
    """IN when the destination is an open container, or a container with a top and the text says in/into;
    ON otherwise (surfaces, "stack X on Y", "put the block on the box")."""  # ALGO LOGIC
    if destination_receptacle == "IN":
        return "IN"
    if destination_receptacle == "IN/ON" and preposition not in ON_PREPS:
        return "IN"
    return "ON"


# ---------------------------------------------------------------------------------------------
# Scene building (rules designer)
# ---------------------------------------------------------------------------------------------

DEFAULT_ANAPHOR_CATEGORY = "block"  # "put the red one on the plate" with nothing named: a cube of that colour
DISTRACTOR_MAX_EXTENT_M = 0.2  # distractors must leave room in the 0.2 x 0.3 m workspace (Table A.2)
PALETTE = ["red", "green", "blue", "yellow", "orange", "purple", "pink", "white", "black", "grey", "brown"]
TABLE_STYLES = [("wood", "light oak", (0.76, 0.6, 0.42)), ("wood", "walnut", (0.4, 0.28, 0.18)),
                ("wood", "birch plywood", (0.84, 0.74, 0.56)), ("laminate", "white", (0.9, 0.9, 0.88)),
                ("laminate", "grey", (0.55, 0.56, 0.58)), ("metal", "brushed steel", (0.68, 0.69, 0.7)),
                ("stone", "black granite", (0.16, 0.16, 0.17)), ("plastic", "beige", (0.85, 0.8, 0.68))]
FLOORS = [("tile", "grey", (0.5, 0.5, 0.52)), ("wood", "oak", (0.6, 0.45, 0.3)),
          ("concrete", "grey", (0.62, 0.62, 0.6)), ("carpet", "blue", (0.25, 0.3, 0.45)),
          ("vinyl", "beige", (0.8, 0.74, 0.62)), ("tile", "white", (0.88, 0.88, 0.86))]
WALLS = [("white", (0.93, 0.93, 0.92)), ("beige", (0.86, 0.8, 0.68)), ("light blue", (0.7, 0.8, 0.9)),
         ("sage green", (0.7, 0.78, 0.66)), ("light grey", (0.78, 0.78, 0.78)), ("cream", (0.95, 0.92, 0.8))]
LIGHTING = {  # preset -> (ambient RGB, directional [[dx, dy, dz, brightness]]), manifest "lighting" format
    "neutral": ([0.3, 0.3, 0.3], [[1.0, 1.0, -1.0, 1.0]]), "bright": ([0.45, 0.45, 0.45], [[0.0, 0.0, -1.0, 1.4]]),
    "dim": ([0.15, 0.15, 0.15], [[1.0, 1.0, -1.0, 0.6]]), "warm": ([0.35, 0.3, 0.22], [[1.0, 0.5, -1.0, 1.0]]),
    "cool": ([0.25, 0.3, 0.38], [[-1.0, 0.5, -1.0, 1.0]])}


def parse_count_range(spec: str | int) -> tuple[int, int]:
    """"3" -> (3, 3); "2-4" -> (2, 4). Raises DesignError on anything else."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", str(spec))
    if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
        raise DesignError(f"--num-distractors {spec!r}: expected a count like '3' or a range like '2-4' (low <= high)")
    return int(m.group(1)), int(m.group(2) if m.group(2) is not None else m.group(1))


def derive_seed(seed: int, task: str, variant: int, attempt: int = 0) -> int:
    """Per-scene seed from the base seed, the normalized task, the variant and the attempt."""
    key = {"seed": int(seed), "task": ss.normalize_text(task), "variant": variant, "attempt": attempt}
    return int(ss.content_hash(key, 8), 16)


def make_scene_id(task: str, variant: int, key: dict) -> str:
    """Readable, unique and stable: `<slug>-v<k>-<hash8>` (hash of the task and what shapes the graph)."""
    digest = ss.content_hash({"task": ss.normalize_text(task), "variant": variant, **key}, 8)
    return f"{ss.slugify(task, 40)}-v{variant}-{digest}"


def make_background(rng: random.Random, setting: str) -> dict:
    """Room and table styling for the composer: names plus RGBA so no colour table is needed downstream."""
    material, tname, trgb = rng.choice(TABLE_STYLES)
    fmat, fname, frgb = rng.choice(FLOORS)
    wname, wrgb = rng.choice(WALLS)
    preset = rng.choice(sorted(LIGHTING))
    ambient, directional = LIGHTING[preset]
    room = setting.replace("_", " ")
    return {"setting": setting,
            "description": f"a {room} with {wname} walls, a {fname} {fmat} floor and a {tname} {material} table",
            "table": {"material": material, "color_name": tname, "rgba": [*trgb, 1.0]},
            "floor": {"material": fmat, "color_name": fname, "rgba": [*frgb, 1.0]},
            "walls": {"color_name": wname, "rgba": [*wrgb, 1.0]},
            "lighting": {"preset": preset, "ambient": ambient, "directional": directional}}


def _article(text: str) -> str:
    return ("an " if text[:1] in "aeiou" else "a ") + text


def make_object(np_: NounPhrase, role: str, name: str, preposition: str = "") -> SceneObject:
    """A scene object from a noun phrase: lexicon size (scaled by a size word), graspability, receptacle."""
    c = np_.category
    words = np_.words
    if c is None:  # unknown noun: a sensible generic object (the asset stage makes a primitive)
        size = GENERIC_SIZE_M.get(role, GENERIC_SIZE_M["target"])
        recep = None if role != "destination" else ("IN" if preposition in IN_PREPS | {"into"} else "ON")
        category, graspable = GENERIC_CATEGORY, role != "destination"
    else:
        size, category, graspable = c.size_m, c.key, c.graspable
        recep = "IN" if c.receptacle in ("IN", "IN/ON") else c.receptacle
    k = SIZE_SCALE.get(np_.size or "", 1.0)
    size_m = [round(min(max(s * k, ss.MIN_OBJECT_EXTENT_M), ss.MAX_OBJECT_EXTENT_M), 4) for s in size]
    if k < 1.0 and c is not None and not graspable and c.group != "food":  # "the small box" fits once scaled
        graspable = min(size_m[:2]) <= ss.GRIPPER_MAX_WIDTH_M * MAX_GRASP_SCALE_DOWN
    return SceneObject(name=name, role=role, category=category, description=_article(words),
                       attributes=ObjectAttributes(np_.color, np_.material, np_.size), size_m=size_m,
                       graspable=graspable, receptacle=recep)


def _name(np_: NounPhrase, taken: set[str]) -> str:
    noun = np_.category.key if np_.category else np_.head or "object"
    base = ss.slugify(" ".join(filter(None, [np_.size, np_.color, noun])), 40)
    name, i = base, 2
    while name in taken or name in ("table", "widowx", "background"):
        name, i = f"{base}_{i}", i + 1
    taken.add(name)
    return name


def design_rules(task: str, seed: int, n_distractors: tuple[int, int] = (2, 4), variant: int = 0,
                 scene_id: str | None = None) -> SceneGraph:
    """The offline designer: parse, resolve "the red one", pick setting/distractors/background (seeded)."""
    p = parse_task(task)
    rng = random.Random(seed)
    tgt, dst = p.target, p.destination
    for np_, what in ((tgt, "object to move"), (dst, "destination")):
        if np_.anaphor and np_.anaphor not in ("one", "ones") and not (np_.color or np_.material or np_.size):
            raise DesignError(f"the {what} is only {np_.anaphor!r}; name it, e.g. 'put the apple in the bowl'")
    if tgt.anaphor:  # "put the red one on the plate": nothing named, a cube of that colour
        c = CATEGORIES[DEFAULT_ANAPHOR_CATEGORY]
        tgt.category, tgt.head, tgt.words = c, c.names[0], f"{tgt.words} {c.names[0]}".strip()
    if dst.anaphor:  # "stack the green block on the yellow one": the target's kind
        dst.category, dst.head, dst.words = tgt.category, tgt.head, f"{dst.words} {tgt.head}".strip()
    if all(getattr(tgt, f) == getattr(dst, f) for f in ("category", "head", "color", "material", "size")):
        # "stack a cube on another cube": tell them apart by colour
        tgt.color, dst.color = rng.sample(PALETTE, 2)
        tgt.words, dst.words = f"{tgt.color} {tgt.words}", f"{dst.color} {dst.words}"
    taken: set[str] = set()
    target = make_object(tgt, "target", _name(tgt, taken))
    destination = make_object(dst, "destination", _name(dst, taken), p.preposition)
    relation = goal_relation(p.preposition, dst.category.receptacle if dst.category else destination.receptacle)
    # ALGO LOGIC: setting = where both objects appear; distractors from that setting (density knob n).
    common = [s for s in SETTINGS.values() if all(c is None or s in c.settings for c in (tgt.category, dst.category))]
    either = [s for s in SETTINGS.values() if any(c and s in c.settings for c in (tgt.category, dst.category))]
    setting = rng.choice(common or either or list(SETTINGS.values()))
    n = rng.randint(*n_distractors)
    distractors: list[SceneObject] = []
    if p.source is not None and p.source.category is not None and p.source.category.key != "table":
        distractors.append(make_object(p.source, "distractor", _name(p.source, taken)))
    named = {c.key for c in (tgt.category, dst.category) if c}
    decoys = [np_ for np_ in (tgt, dst) if np_.color and np_.category]
    if decoys and n > len(distractors) and rng.random() < 0.5:  # same kind, other colour: the colour matters
        d = rng.choice(decoys)
        color = rng.choice([c for c in PALETTE if c not in (tgt.color, dst.color)])
        decoy = NounPhrase(d.category, f"{color} {d.head}", d.head, color, d.material, d.size)
        distractors.append(make_object(decoy, "distractor", _name(decoy, taken)))
    pool = [c for c in CATEGORIES.values() if setting in c.settings and c.key not in named
            and max(c.size_m[:2]) <= DISTRACTOR_MAX_EXTENT_M and c.key not in {o.category for o in distractors}]
    for c in rng.sample(pool, min(len(pool), max(0, n - len(distractors)))):
        color = rng.choice(PALETTE) if c.group != "food" and rng.random() < 0.5 else None
        np_ = NounPhrase(c, " ".join(filter(None, [color, c.names[0]])), c.names[0], color)
        distractors.append(make_object(np_, "distractor", _name(np_, taken)))
    bg = make_background(rng, setting)
    objects = [SceneObject("background", "background", setting, bg["description"]),
               SceneObject("table", "context", "table", f"a {bg['table']['color_name']} {bg['table']['material']} "
                           "table", receptacle="ON"),
               SceneObject("widowx", "robot", "widowx_250s", "a WidowX 250 S robot arm with a parallel gripper"),
               target, destination, *distractors]
    relations = [Relation(o.name, "ON", "table", "initial") for o in objects
                 if o.role in ("target", "destination", "distractor")]
    relations.append(Relation(target.name, relation, destination.name, "goal"))
    unknown = [{"object": o.name, "role": o.role, "words": np_.words}
               for o, np_ in ((target, tgt), (destination, dst)) if np_.category is None]
    designer = {"name": "rules", "seed": seed, "variant": variant, "num_distractors": len(distractors),
                **({"unknown_nouns": unknown} if unknown else {}),
                "parse": {"target": tgt.words, "preposition": p.preposition, "destination": dst.words,
                          "source": p.source.words if p.source else None}}
    scene_id = scene_id or make_scene_id(task, variant, {"seed": seed})
    return SceneGraph(scene_id, task.strip(), objects, relations, bg, designer)


def qa_problems(g: SceneGraph) -> list[str]:
    """Every check a graph must pass: scene_schema's semantic QA plus the roles the composer needs."""
    problems = ss.check_scene_graph(g)
    for role in ("context", "robot"):
        if len(g.by_role(role)) != 1:
            problems.append(f"expected exactly one {role} object, found {len(g.by_role(role))}")
    ctx = [o.name for o in g.by_role("context")]
    on_table = {r.subject for r in g.relations if r.phase == "initial" and r.object in ctx}
    loose = [o.name for o in g.objects if o.role in ("target", "destination", "distractor") and o.name not in on_table]
    if ctx and loose:
        problems.append(f"objects without an initial relation to the table: {', '.join(loose)}")
    return problems


def signature(g: SceneGraph) -> str:
    """What makes variants of one task distinct: distractors, their colours and the background style."""
    return ss.content_hash({"d": sorted((o.category, o.attributes.color) for o in g.objects if o.role == "distractor"),
                            "bg": {k: g.background.get(k) for k in ("setting", "table", "floor", "walls", "lighting")}})


# ---------------------------------------------------------------------------------------------
# LLM designer: JSON-schema structured output, same validation, repair-and-retry, fall-back to rules
# ---------------------------------------------------------------------------------------------

_NULLABLE_STR = {"type": ["string", "null"]}
LLM_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["objects", "relations", "background"],
    "properties": {
        "objects": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["name", "role", "category", "description", "attributes", "size_m", "graspable", "receptacle"],
            "properties": {
                "name": {"type": "string"}, "role": {"type": "string", "enum": list(ss.ROLES)},
                "category": {"type": "string"}, "description": {"type": "string"},
                "attributes": {"type": "object", "additionalProperties": False,
                               "required": ["color", "material", "size"],
                               "properties": {k: _NULLABLE_STR for k in ("color", "material", "size")}},
                "size_m": {"type": ["array", "null"], "items": {"type": "number"}},
                "graspable": {"type": "boolean"},
                "receptacle": {"type": ["string", "null"], "enum": ["ON", "IN", None]}}}},
        "relations": {"type": "array", "items": {
            "type": "object", "additionalProperties": False, "required": ["subject", "relation", "object", "phase"],
            "properties": {"subject": {"type": "string"}, "relation": {"type": "string", "enum": list(ss.RELATIONS)},
                           "object": {"type": "string"},
                           "phase": {"type": "string", "enum": list(ss.RELATION_PHASES)}}}},
        "background": {"type": "object", "additionalProperties": False,
                       "required": ["setting", "table", "floor", "walls", "lighting"],
                       "properties": {k: {"type": "string"}
                                      for k in ("setting", "table", "floor", "walls", "lighting")}}}}
LLM_SYSTEM_PROMPT = f"""You design tabletop pick-and-place scenes for a WidowX 250 S robot arm whose parallel gripper \
opens to {ss.GRIPPER_MAX_WIDTH_M * 1000:.0f} mm. Turn the task into a scene graph (JSON following the schema):
- objects: one "background" (the room), one "context" named "table", one "robot" named "widowx", exactly one \
"target" (the object to pick up), exactly one "destination" (where it goes), and the requested number of \
"distractor" objects that belong in the same room and are not mentioned in the task.
- name: unique snake_case ("red_mug"); category: a snake_case noun, preferably one of: {{categories}}.
- size_m: typical real extents [x, y, z] in metres (null for background and robot); the target must be \
graspable once scaled down so its smallest horizontal side fits the gripper (an apple yes, a watermelon no).
- receptacle: "IN" for containers, "ON" for surfaces, null otherwise.
- relations: every target, destination and distractor ON "table" with phase "initial"; one goal relation \
(phase "goal") target IN destination if the destination is a container and the task says in/into, else ON. \
The initial layout must not already satisfy the goal.
- background: short descriptions of setting, table, floor, walls and lighting."""


def _scrub(text, secret) -> str:
    """Remove the API key (a string, or a list of secrets), its base64 forms and anything key-like from text or a
    parsed JSON value that will be stored, logged or sent back (scene_schema.scrub_secrets)."""
    return ss.scrub_secrets(text, [secret] if secret is None or isinstance(secret, str) else secret)


def public_args(args: Args, secret) -> dict:
    """The args as written to args.json / index.json: no URL credentials, no key anywhere."""
    d = dataclasses.asdict(args)
    d["llm_base_url"] = ss.strip_url_credentials(d["llm_base_url"])
    return _scrub(d, secret)


def graph_from_llm_reply(content: str, task: str, scene_id: str, rng: random.Random) -> SceneGraph:
    """LLM JSON -> SceneGraph with lexicon fixes (canonical categories, sizes, flags); DesignError if unusable."""
    try:
        data = json.loads(content)
    except (json.JSONDecodeError, TypeError) as e:
        raise DesignError(f"the reply is not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("objects"), list):
        raise DesignError("the reply must be a JSON object with an 'objects' list, 'relations' and 'background'")
    objects = [dict(o) for o in data["objects"] if isinstance(o, dict)]
    roles = [o.get("role") for o in objects]
    if "context" not in roles:
        objects.append({"name": "table", "role": "context", "category": "table", "description": "a table",
                        "receptacle": "ON"})
    if "robot" not in roles:
        objects.append({"name": "widowx", "role": "robot", "category": "widowx_250s",
                        "description": "a WidowX 250 S robot arm"})
    for o in objects:  # lexicon fixes: the lexicon knows sizes and flags better than a language model
        if o.get("role") not in ("target", "destination", "distractor") or not isinstance(o.get("category"), str):
            continue
        np_ = parse_noun_phrase(o["category"].lower().replace("_", " ").split())
        if np_ is not None and np_.category is not None and np_.category.key != "table":
            c = np_.category
            o.update(category=c.key, graspable=c.graspable,
                     receptacle="IN" if c.receptacle == "IN/ON" else c.receptacle)
            if not isinstance(o.get("size_m"), list) or len(o["size_m"]) != 3:
                o["size_m"] = list(c.size_m)
            if not all(isinstance(v, (int, float)) and ss.MIN_OBJECT_EXTENT_M <= v <= ss.MAX_OBJECT_EXTENT_M
                       for v in o["size_m"]):  # e.g. centimetres instead of metres
                o["size_m"] = list(c.size_m)
        elif o.get("size_m") is None:
            o["size_m"] = list(GENERIC_SIZE_M.get(o["role"], GENERIC_SIZE_M["target"]))
    if not isinstance(data.get("background") or {}, dict):
        raise DesignError(f"background: expected a JSON object, got {type(data['background']).__name__}")
    setting = str((data.get("background") or {}).get("setting", "")).lower().replace(" ", "_")
    bg = make_background(rng, setting if setting in SETTINGS.values() else "kitchen")
    bg["llm"] = data.get("background")
    raw = {"schema_version": ss.SCHEMA_VERSION, "scene_id": scene_id, "task": task.strip(), "objects": objects,
           "relations": data.get("relations"), "background": bg}
    try:
        return ss.scene_graph_from_dict(raw, "reply")
    except ss.SchemaError as e:
        raise DesignError(str(e)) from None


def design_llm(client, task: str, scene_id: str, seed: int, n: int, args: Args, avoid: set[str],
               secret: str | list | None = None) -> SceneGraph:
    """Ask the model, validate, feed the problems back; DesignError with every attempt's reason on failure."""
    cats = ", ".join(sorted(k for k in CATEGORIES if k != "table"))
    messages = [{"role": "system", "content": LLM_SYSTEM_PROMPT.replace("{categories}", cats)},
                {"role": "user", "content": f"Task: {task.strip()}\nNumber of distractors: {n}"}]
    response_format = {"type": "json_schema",  # structured output: the reply must follow LLM_SCHEMA
                       "json_schema": {"name": "scene_graph", "strict": True, "schema": LLM_SCHEMA}}
    errors = []
    for attempt in range(1, args.llm_attempts + 1):
        try:
            reply = client.chat.completions.create(model=args.llm_model, messages=messages, seed=seed % 2**31,
                                                   response_format=response_format)
            # scrubbed on arrival: an endpoint that echoes the key must not get it into the graph, the
            # validation problems, the repair prompt or the fall-back reason
            content = _scrub(reply.choices[0].message.content or "", secret)
        except Exception as e:  # network, HTTP and API errors: retried like invalid replies
            errors.append(f"attempt {attempt}: request failed: {type(e).__name__}: {_scrub(str(e), secret)[:300]}")
            continue
        try:
            g = graph_from_llm_reply(content, task, scene_id, random.Random(seed + attempt))
            problems = qa_problems(g) + (["identical to another variant of this task; choose different distractors "
                                          "and background"] if signature(g) in avoid else [])
        except DesignError as e:
            problems = [_scrub(str(e), secret)]
        except Exception as e:  # noqa: BLE001 - a wrong-typed field the checks did not foresee: an invalid reply
            problems = [_scrub(f"unusable reply ({type(e).__name__}: {e})", secret)[:300]]
        if not problems:
            g.designer = {"name": "llm", "model": args.llm_model, "seed": seed, "attempts": attempt}
            return g
        errors.append(f"attempt {attempt}: " + "; ".join(problems))
        messages += [{"role": "assistant", "content": content[:8000]},
                     {"role": "user", "content": "The scene graph was rejected: " + "; ".join(problems)
                      + ". Fix these problems and answer with the complete corrected JSON."}]
    err = DesignError(" | ".join(errors)[:2000])
    err.request_failures = sum("request failed" in e for e in errors) == len(errors)  # the endpoint, not the model
    raise err


def make_llm_client(args: Args):
    """(client, None) or (None, reason). The key comes from the environment and is only handed to the client."""
    key = os.environ.get(args.llm_api_key_env)
    if not key and not args.llm_base_url:
        return None, f"no API key: set ${args.llm_api_key_env} (or --llm-base-url for a local server)"
    import openai

    return openai.OpenAI(api_key=key or "not-needed", base_url=args.llm_base_url, timeout=args.llm_timeout_s,
                         max_retries=0), None


# ---------------------------------------------------------------------------------------------
# Batch mode
# ---------------------------------------------------------------------------------------------


def load_tasks(task_flags: list[str], tasks_file: str | None) -> list[str]:
    """Tasks from the CLI and a .txt (one per line, '#' comments) or .json (list of strings) file."""
    tasks = [t for t in task_flags]
    if tasks_file:
        path = Path(tasks_file)
        if path.is_dir():
            raise ss.SchemaError(str(path), "", "is a directory; pass a .txt file (one task per line) or a .json list")
        if path.exists():
            try:
                path.read_bytes().decode("utf-8")
            except UnicodeDecodeError as e:
                raise ss.SchemaError(str(path), "", f"is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset "
                                     f"{e.start}); save it as UTF-8") from None
        if path.suffix.lower() == ".json":
            data = ss.read_json(path)
            data = data.get("tasks") if isinstance(data, dict) else data
            if not isinstance(data, list):
                raise ss.SchemaError(str(path), "", "expected a JSON list of task strings (or {\"tasks\": [...]})")
            for i, t in enumerate(data):
                t = t.get("task") if isinstance(t, dict) else t
                if not isinstance(t, str):
                    raise ss.SchemaError(str(path), f"[{i}]", f"expected a task string, got {type(t).__name__}")
                tasks.append(t)
        else:
            if not path.exists():
                raise ss.SchemaError(str(path), "", "tasks file does not exist")
            lines = path.read_text(encoding="utf-8").splitlines()
            tasks += [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    seen, out = set(), []
    for t in (t.strip() for t in tasks):
        if t and ss.normalize_text(t) not in seen:  # the same task twice would map to the same scene ids
            seen.add(ss.normalize_text(t))
            out.append(t)
    return out


def design_scene(task: str, variant: int, scene_id: str, args: Args, avoid: set[str], client=None,
                 client_error: str | None = None, secret: str | list | None = None) -> SceneGraph:
    """One scene with the chosen designer; rules variants are re-drawn until distinct from `avoid`."""
    n_range = args.distractor_range
    fallback_reason, unreachable = client_error, False
    if args.designer == "llm" and client is not None:
        seed = derive_seed(args.seed, task, variant)
        n = random.Random(seed).randint(*n_range)
        try:
            g = design_llm(client, task, scene_id, seed, n, args, avoid, secret)
            g.designer.update(variant=variant, num_distractors=n)
            return g
        except DesignError as e:
            fallback_reason = _scrub(str(e), secret)
            unreachable = getattr(e, "request_failures", False)  # every request failed: main's circuit breaker
    g = None
    for attempt in range(8):
        g = design_rules(task, derive_seed(args.seed, task, variant, attempt), n_range, variant, scene_id)
        if signature(g) not in avoid:
            break
    if args.designer == "llm":
        g.designer.update(fallback_from="llm", fallback_reason=fallback_reason, llm_model=args.llm_model,
                          llm_unreachable=unreachable)
    return g


def write_index(out: Path, entries: list[IndexEntry], args: Args, secret=None) -> Path:
    """index.json: this run's entries plus earlier entries for other (task, variant) pairs."""
    path, old = out / "index.json", []
    if path.exists():
        try:
            old = ss.load_scene_index(path)
        except ss.SchemaError as e:
            print(f"warning: {e}; rewriting it", file=sys.stderr)
    current = {(ss.normalize_text(e.task), e.variant) for e in entries}
    merged = [e for e in old if (ss.normalize_text(e.task), e.variant) not in current] + entries
    counts = {s: sum(e.status == s for e in merged) for s in ("ok", "exists", "rejected")}
    return ss.write_json_atomic(path, _scrub({"schema_version": ss.SCHEMA_VERSION, "generated_by": "scene_designer.py",
                                              "args": public_args(args, secret), "counts": counts,
                                              "entries": [ss.to_dict(e) for e in merged]}, secret))


def main(args: Args) -> list[IndexEntry]:
    from tqdm import tqdm

    out = Path(args.out_dir)
    try:
        tasks = load_tasks(args.task, args.tasks)
    except ss.SchemaError as e:
        raise SystemExit(f"error: {e}") from None
    if not tasks:
        raise SystemExit("no tasks: pass --task \"put the pen in the pen holder\" (repeatable) or --tasks tasks.txt")
    if args.variants_per_task < 1:
        raise SystemExit(f"--variants-per-task must be >= 1, got {args.variants_per_task}")
    try:
        args.distractor_range
    except DesignError as e:
        raise SystemExit(str(e)) from None
    ss.check_key_env_name("--llm-api-key-env", args.llm_api_key_env)
    # every secret this run could see: the key, and the password of a credentials URL
    secret = [os.environ.get(args.llm_api_key_env), *ss.url_credentials(args.llm_base_url)]
    out.mkdir(parents=True, exist_ok=True)
    ss.write_json_atomic(out / "args.json", {"schema_version": ss.SCHEMA_VERSION, "stage": "scene_designer",
                                             "args": public_args(args, secret)})
    client, client_error = make_llm_client(args) if args.designer == "llm" else (None, None)
    if client_error:
        print(f"warning: LLM designer unavailable ({client_error}); using the rules designer", file=sys.stderr)
    id_key = {"seed": args.seed, "designer": args.designer, "num_distractors": args.num_distractors,
              **({"llm_model": args.llm_model} if args.designer == "llm" else {})}
    entries, seen, failures = [], {}, 0
    jobs = [(t, k) for t in tasks for k in range(args.variants_per_task)]
    for task, k in tqdm(jobs, desc="designing scenes", unit="scene"):
        scene_id = make_scene_id(task, k, id_key)
        path = out / scene_id / "scene_graph.json"
        avoid = seen.setdefault(ss.normalize_text(task), set())
        if path.exists() and not args.overwrite:
            try:
                g = ss.load_scene_graph(path)
                avoid.add(signature(g))
                entries.append(IndexEntry(task, k, "exists", scene_id, designer=g.designer.get("name")))
                continue
            except ss.SchemaError as e:
                print(f"warning: {e}; designing it again", file=sys.stderr)
        try:  # one bad task never stops the batch: it is reported in the index with its reason
            g = design_scene(task, k, scene_id, args, avoid, client, client_error, secret)
            failures = failures + 1 if g.designer.get("llm_unreachable") else 0
            if client is not None and args.llm_circuit_breaker and failures >= args.llm_circuit_breaker:
                client, client_error = None, (f"circuit breaker: every request of {failures} consecutive scenes "
                                              f"failed (endpoint {ss.strip_url_credentials(args.llm_base_url) or 'api.openai.com'}); the rest "
                                              "of the batch uses the rules designer")
                print(f"warning: {client_error}", file=sys.stderr)
            for u in g.designer.get("unknown_nouns", []):
                print(f"warning: {task!r}: {u['words']!r} ({u['role']}) is not in the lexicon: it becomes a generic "
                      f"primitive of a typical {u['role']} size; name a known object or add it to scene_lexicon.py",
                      file=sys.stderr)
            problems = qa_problems(g)
            if problems:
                raise DesignError("QA rejected the graph: " + "; ".join(problems))
            # one scrub of the final object, after every string was decoded (a JSON-escaped key is literal now)
            g = ss.scene_graph_from_dict(_scrub(ss.to_dict(g), secret), str(path))
            ss.save_scene_graph(g, path)
            avoid.add(signature(g))
            entries.append(IndexEntry(task, k, "ok", scene_id, designer=g.designer.get("name")))
        except Exception as e:  # noqa: BLE001 - reported, not raised
            if not isinstance(e, (DesignError, ss.SchemaError)):
                traceback.print_exc()
            entries.append(IndexEntry(task, k, "rejected", reason=_scrub(f"{e}" if isinstance(e, DesignError)
                                      else f"{type(e).__name__}: {e}", secret), designer=args.designer))
    index = write_index(out, entries, args, secret)
    counts = {s: sum(e.status == s for e in entries) for s in ("ok", "exists", "rejected")}
    print(f"scene designer: {counts['ok']} written, {counts['exists']} kept, {counts['rejected']} rejected -> {index}")
    for task in dict.fromkeys(e.task for e in entries if e.status == "rejected"):  # one line per task
        bad = [e for e in entries if e.task == task and e.status == "rejected"]
        print(f"  rejected: {task!r} ({len(bad)} variant(s)): {bad[0].reason}")
    if jobs and counts["rejected"] == len(jobs):
        raise SystemExit("every task was rejected; see the reasons above")
    return entries


if __name__ == "__main__":
    main(tyro.cli(Args))
