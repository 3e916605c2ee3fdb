"""File contracts shared by every stage (SPEC section 2): dataclasses, load/save, validation.

Stages talk only through the files defined here:

    scenes/<scene_id>/scene_graph.json   SceneGraph      (scene_designer.py)
    scenes/index.json                    SceneIndex      (scene_designer.py)
    assets/<asset_id>/asset.json         AssetRecord     (generate_assets.py)
    scenes/<scene_id>/asset_links.json   AssetLinks      (generate_assets.py)
    scenes/<scene_id>/manifest.json      SceneManifest   (compose_scene.py)
    <any>/splits.json                    SceneSplits     (evaluate.py, read by ppoflow_pi0.py)

Every loader validates and raises `SchemaError` naming the file, the field and what is wrong,
e.g. ``scenes/a/scene_graph.json: objects[2].role: 'targt' is not one of background, ...``.
Every writer is atomic (tmp file + rename), so a crash never leaves a half-written file that
looks valid. Only the standard library and numpy are used, so this module imports anywhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

SCHEMA_VERSION = 1

ROLES = ("background", "context", "target", "destination", "distractor", "robot")
RELATIONS = ("ON", "IN")
RELATION_PHASES = ("initial", "goal")
SIZE_WORDS = ("tiny", "small", "medium", "large", "big")

# WidowX 250 S parallel gripper (paper Sec. 3, Appendix C): fingers open to 74 mm.
GRIPPER_MAX_WIDTH_M = 0.074
# Table A.2: object placement ranges in the robot base frame (x forward, y left).
OBJECT_X_RANGE_M = (0.2, 0.4)
OBJECT_Y_RANGE_M = (-0.15, 0.15)
# Plausible extents for a tabletop object (metres); outside this a size is a typo or a unit slip.
MIN_OBJECT_EXTENT_M = 0.005
MAX_OBJECT_EXTENT_M = 1.0


class SchemaError(ValueError):
    """A file (or in-memory document) does not follow its contract.

    The message always reads ``<source>: <field path>: <problem>`` so a user can find and fix it.
    """

    def __init__(self, source: str, field_path: str, problem: str):
        self.source, self.field_path, self.problem = source, field_path, problem
        super().__init__(f"{source}: {field_path}: {problem}" if field_path else f"{source}: {problem}")


# ---------------------------------------------------------------------------------------------
# I/O helpers: atomic writes, JSON reading with clear errors, content hashes
# ---------------------------------------------------------------------------------------------


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the permissions open() would
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write `obj` (dataclasses allowed) as pretty UTF-8 JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = to_dict(obj)
    text = json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False, default=_json_default) + "\n"
    return write_bytes_atomic(path, text.encode("utf-8"))


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line and fsync: an append-only log that survives a crash mid-run."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False, default=_json_default) + "\n")
        f.flush()
        os.fsync(f.fileno())


def repair_jsonl_tail(path: str | os.PathLike) -> int:
    """Before appending to a log after a crash: cut a torn last line (no newline) so new records start clean.
    The torn bytes are kept in `<log>.torn`; returns how many bytes were cut (0 when the log was intact)."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return 0
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1
    with open(path.with_name(path.name + ".torn"), "ab") as f:
        f.write(data[keep:] + b"\n")
    with open(path, "r+b") as f:
        f.truncate(keep)
    return len(data) - keep


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSONL log; a torn last line (crash mid-write) is ignored, any other bad line raises."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break  # torn final line from a crash: the record was never complete
            raise SchemaError(str(path), f"line {i + 1}", f"not valid JSON ({e.msg})") from None
    return out


def read_json(path: str | os.PathLike) -> Any:
    """Read a UTF-8 JSON file; missing files and syntax errors raise SchemaError with the location."""
    path = Path(path)
    if not path.exists():
        raise SchemaError(str(path), "", "file does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise SchemaError(str(path), "", "not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise SchemaError(str(path), f"line {e.lineno} column {e.colno}", f"invalid JSON: {e.msg}") from None


WANDB_PROJECT = "gensim-rl-vla"  # the one W&B project of every stage (--wandb-project overrides it)


def init_wandb(out_dir: str | os.PathLike, config: dict, job_type: str, project: str = WANDB_PROJECT,
               entity: str | None = None, group: str | None = None, name: str | None = None):
    """A W&B run for a stage writing into `out_dir`: resumable (the run id is kept in <out_dir>/wandb_run_id.txt,
    so re-running the same command after an interruption continues the same W&B run), the code saved, grouped by
    experiment (`group`, default the parent folder's name: the sweep / study that holds the run)."""
    import wandb

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    id_file = out / "wandb_run_id.txt"
    run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:12]
    run = wandb.init(project=project, entity=entity, group=group or out.resolve().parent.name, job_type=job_type,
                     name=name or out.name, id=run_id, resume="allow", dir=str(out), config=config, save_code=True)
    id_file.write_text(run_id)
    return run


def content_hash(obj: Any, length: int = 16) -> str:
    """Stable sha256 hex digest of a JSON-able object (sorted keys), truncated to `length`."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = to_dict(obj)
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=_json_default).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:length]


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file's bytes (read in 4 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Secrets: nothing a stage writes or prints may carry an API key or URL credentials
# ---------------------------------------------------------------------------------------------

# Key-like tokens that must never be stored even when they are not this run's key (OpenAI-style, bearer headers).
SECRET_PATTERNS = re.compile(r"(sk-[A-Za-z0-9_\-]{12,}|(?i:bearer)\s+[A-Za-z0-9._\-]{12,})")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def secret_forms(secret: str | None) -> list[str]:
    """The key and its base64 echoes (standard and URL-safe, at each of the 3 byte alignments inside a longer
    base64 text: only the characters that depend on the key alone)."""
    if not secret:
        return []
    import base64

    forms = {secret}
    raw = secret.encode()
    for pad in range(3):
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            text = enc(b"\0" * pad + raw).decode()
            core = text[4 if pad else 0:((pad + len(raw)) // 3) * 4]
            if len(core) >= 12:
                forms.add(core)
    return sorted(forms, key=len, reverse=True)


def scrub_secrets(obj: Any, secrets: Iterable[str | None] = ()) -> Any:
    """`obj` (a string or a parsed JSON value: dict keys and every string inside) without the given secrets, their
    base64 forms, or anything key-like. Applied to decoded text, so a JSON-escaped key (sk\\u002d...) is caught."""
    if isinstance(obj, str):
        for s in secrets:
            for form in secret_forms(s):
                obj = obj.replace(form, "***")
        return SECRET_PATTERNS.sub("***", obj)
    if isinstance(obj, dict):
        return {scrub_secrets(k, secrets): scrub_secrets(v, secrets) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [scrub_secrets(v, secrets) for v in obj]
    return obj


def strip_url_credentials(url: str | None) -> str | None:
    """`http://user:key@host/v1` -> `http://host/v1` (the form written to args files and logs)."""
    if not url:
        return url
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def url_credentials(url: str | None) -> list[str]:
    """The password of a URL's userinfo (a secret to scrub wherever it is echoed; the URL is never written with it)."""
    from urllib.parse import unquote, urlsplit

    try:
        parts = urlsplit(url or "")
    except ValueError:
        return []
    return [unquote(parts.password)] if parts.password and len(parts.password) >= 6 else []


def check_key_env_name(flag: str, name: str) -> None:
    """`--llm-api-key-env` takes the NAME of a variable, not the key: a value that is no variable name is refused
    without being echoed (it is probably the key)."""
    if not ENV_NAME.fullmatch(name or ""):
        raise SystemExit(f"{flag} takes the name of an environment variable that holds the key (e.g. OPENAI_API_KEY), "
                         f"not the key itself; the value given ({len(name or '')} characters) is not a variable name "
                         "and was not written anywhere")


def normalize_text(text: str) -> str:
    """Lower-case, collapse whitespace, strip punctuation at the ends: the form hashed into ids."""
    return re.sub(r"\s+", " ", text.strip().lower()).strip(" .,!?;:")


def slugify(text: str, max_len: int = 48) -> str:
    """`Put the pen in the pen-holder!` -> `put_the_pen_in_the_pen_holder` (ASCII, safe in paths)."""
    slug = re.sub(r"[^a-z0-9]+", "_", normalize_text(text).encode("ascii", "ignore").decode()).strip("_")
    return (slug[:max_len].rstrip("_")) or "scene"


def asset_id_for(description: str, category: str, generator: str, seed: int) -> str:
    """Asset id = content hash of the normalized description + category + generator + seed."""
    key = {"description": normalize_text(description), "category": normalize_text(category),
           "generator": generator, "seed": int(seed)}
    return f"{slugify(category, 24)}-{content_hash(key, 12)}"


def path_problem(rel: Any, *, name_only: bool = False) -> str | None:
    """Why `rel` cannot be joined under a folder a stage owns (None: it can): not a non-empty string, absolute,
    '..', a NUL or another control character; name_only: also no folder separators (an asset id is one folder
    name). Every path read from a file goes through this before it is joined."""
    if not isinstance(rel, str) or not rel.strip():
        return f"expected a non-empty path string, got {rel!r:.60}"
    if any(ord(c) < 32 or ord(c) == 127 for c in rel):
        return f"{rel!r:.80} contains a NUL or control character"
    if name_only and ("/" in rel or "\\" in rel or rel in (".", "..")):
        return f"{rel!r:.80} must be a single folder name (no '/', not '.' or '..')"
    if Path(rel).is_absolute() or ".." in Path(rel).parts:
        return f"{rel!r:.80} must be a relative path inside the asset folder (no '..', not absolute)"
    return None


def to_dict(obj: Any) -> Any:
    """dataclass -> plain JSON-able dict (recursively), dropping nothing."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return _json_default(obj) if not isinstance(obj, (str, int, float, bool, type(None))) else obj


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


# ---------------------------------------------------------------------------------------------
# Field checking: every check names the source file and the field path
# ---------------------------------------------------------------------------------------------


class _Doc:
    """A cursor over a JSON dict that knows where it is, so every error says source + field path."""

    def __init__(self, data: Any, source: str, where: str = ""):
        self.data, self.source, self.where = data, source, where
        if not isinstance(data, dict):
            self.fail("", f"expected a JSON object, got {type(data).__name__}")

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, problem: str):
        raise SchemaError(self.source, self.path(key) if key else self.where, problem)

    def get(self, key: str, types: type | tuple, *, default: Any = ..., choices: Iterable | None = None) -> Any:
        if key not in self.data or self.data[key] is None:
            if default is ...:
                self.fail(key, "required field is missing")
            return default
        value = self.data[key]
        if types is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and types in (int, float):
            self.fail(key, f"expected {types.__name__}, got a boolean")
        if not isinstance(value, types):
            names = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
            self.fail(key, f"expected {names}, got {type(value).__name__} {value!r:.60}")
        if choices is not None and value not in choices:
            self.fail(key, f"{value!r} is not one of {', '.join(map(str, choices))}")
        return value

    def text(self, key: str, *, default: Any = ..., nonempty: bool = True) -> str:
        value = self.get(key, str, default=default)
        if nonempty and isinstance(value, str) and not value.strip():
            self.fail(key, "must not be empty")
        return value

    def number(self, key: str, *, default: Any = ..., lo: float | None = None, hi: float | None = None) -> float:
        value = self.get(key, float, default=default)
        if value is None:
            return value
        if value != value or value in (float("inf"), float("-inf")):
            self.fail(key, "must be a finite number")
        if lo is not None and value < lo:
            self.fail(key, f"{value} is below the minimum {lo}")
        if hi is not None and value > hi:
            self.fail(key, f"{value} is above the maximum {hi}")
        return value

    def vector(self, key: str, n: int, *, default: Any = ..., lo: float | None = None) -> list[float] | None:
        value = self.get(key, list, default=default)
        if value is None:
            return None
        if len(value) != n:
            self.fail(key, f"expected a list of {n} numbers, got {len(value)}")
        out = []
        for i, v in enumerate(value):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
                self.fail(f"{key}[{i}]", f"expected a finite number, got {v!r}")
            if lo is not None and v < lo:
                self.fail(f"{key}[{i}]", f"{v} is below the minimum {lo}")
            out.append(float(v))
        return out

    def child(self, key: str, *, default: Any = ...) -> "_Doc | None":
        value = self.get(key, dict, default=default)
        return None if value is None else _Doc(value, self.source, self.path(key))

    def children(self, key: str, *, default: Any = ...) -> list["_Doc"]:
        value = self.get(key, list, default=default)
        return [_Doc(v, self.source, f"{self.path(key)}[{i}]") for i, v in enumerate(value or [])]

    def version(self) -> int:
        v = self.get("schema_version", int)
        if v != SCHEMA_VERSION:
            self.fail("schema_version", f"this code reads version {SCHEMA_VERSION}, the file has {v}; "
                      "regenerate it with the current stage")
        return v


# ---------------------------------------------------------------------------------------------
# Scene graph (scene_designer.py)
# ---------------------------------------------------------------------------------------------


@dataclass
class ObjectAttributes:
    color: str | None = None
    """Colour word as written or inferred ("red"); None when unspecified."""
    material: str | None = None
    """Material word ("wood", "plastic", "ceramic", ...); None when unspecified."""
    size: str | None = None
    """Relative size word ("small", "large", ...); None when unspecified."""


@dataclass
class SceneObject:
    name: str
    """Unique name inside the scene (snake_case), referenced by relations, e.g. "red_mug"."""
    role: str
    """One of ROLES."""
    category: str
    """Lexicon category ("mug", "pen_holder", `scene_lexicon.py`); the asset stage matches it against its templates."""
    description: str
    """Text prompt for the asset generator ("a small red ceramic mug")."""
    attributes: ObjectAttributes = field(default_factory=ObjectAttributes)
    size_m: list[float] | None = None
    """Typical real extents [x, y, z] in metres (None for background/robot)."""
    graspable: bool = False
    """Fits the 74 mm WidowX gripper after auto-scaling (the target must be)."""
    receptacle: str | None = None
    """"IN" for containers, "ON" for surfaces, None for neither."""


@dataclass
class Relation:
    subject: str
    relation: str
    """One of RELATIONS."""
    object: str
    phase: str = "goal"
    """"goal" (what success means) or "initial" (how the scene starts)."""


@dataclass
class SceneGraph:
    scene_id: str
    task: str
    """The instruction given to the policy, verbatim."""
    objects: list[SceneObject]
    relations: list[Relation]
    background: dict = field(default_factory=dict)
    """Scene styling: table style/colour, floor, walls, lighting preset (free-form, JSON-able)."""
    designer: dict = field(default_factory=dict)
    """Provenance: designer name, seed, variant, model, fallback reason, args."""
    schema_version: int = SCHEMA_VERSION

    def by_role(self, role: str) -> list[SceneObject]:
        return [o for o in self.objects if o.role == role]

    def object(self, name: str) -> SceneObject:
        for o in self.objects:
            if o.name == name:
                return o
        raise KeyError(f"scene {self.scene_id!r} has no object named {name!r}")

    @property
    def target(self) -> SceneObject:
        return self.by_role("target")[0]

    @property
    def destination(self) -> SceneObject:
        return self.by_role("destination")[0]

    @property
    def goal(self) -> Relation:
        """The goal relation between target and destination (validated to exist)."""
        for r in self.relations:
            if r.phase == "goal" and r.subject == self.target.name and r.object == self.destination.name:
                return r
        raise KeyError(f"scene {self.scene_id!r} has no goal relation target -> destination")


def scene_graph_from_dict(data: Any, source: str = "<scene graph>") -> SceneGraph:
    """Structural validation: types, enums, references. Semantic checks live in `check_scene_graph`."""
    d = _Doc(data, source)
    d.version()
    objects = []
    for o in d.children("objects"):
        a = o.child("attributes", default={}) or _Doc({}, source, o.path("attributes"))
        objects.append(SceneObject(
            name=o.text("name"), role=o.get("role", str, choices=ROLES), category=o.text("category"),
            description=o.text("description"),
            attributes=ObjectAttributes(color=a.get("color", str, default=None),
                                        material=a.get("material", str, default=None),
                                        size=a.get("size", str, default=None)),
            size_m=o.vector("size_m", 3, default=None, lo=0.0),
            graspable=o.get("graspable", bool, default=False),
            receptacle=o.get("receptacle", str, default=None, choices=(*RELATIONS, None))))
    names = [o.name for o in objects]
    relations = []
    for r in d.children("relations"):
        rel = Relation(subject=r.text("subject"), relation=r.get("relation", str, choices=RELATIONS),
                       object=r.text("object"), phase=r.get("phase", str, default="goal", choices=RELATION_PHASES))
        for key in ("subject", "object"):
            if getattr(rel, key) not in names:
                r.fail(key, f"{getattr(rel, key)!r} is not the name of an object in this scene ({', '.join(names)})")
        relations.append(rel)
    scene_id = d.text("scene_id")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", scene_id):
        d.fail("scene_id", f"{scene_id!r} must be letters, digits, '_', '.', '-' (it names a folder)")
    return SceneGraph(scene_id=scene_id, task=d.text("task"), objects=objects, relations=relations,
                      background=d.get("background", dict, default={}),
                      designer=d.get("designer", dict, default={}))


def check_scene_graph(g: SceneGraph) -> list[str]:
    """Semantic QA of a graph: returns the list of problems (empty = accepted).

    Exactly one target and one destination; the goal relation target ON/IN destination present;
    target graspable; sizes plausible; no duplicate names; the initial layout not already solved.
    """
    problems = []
    names = [o.name for o in g.objects]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        problems.append(f"duplicate object names: {', '.join(dups)}")
    for role in ("target", "destination"):
        n = len(g.by_role(role))
        if n != 1:
            problems.append(f"expected exactly one {role}, found {n}")
    if problems:
        return problems
    tgt, dst = g.target, g.destination
    if tgt.name == dst.name or tgt.category == dst.category and tgt.description == dst.description:
        problems.append(f"target and destination are the same object ({tgt.name})")
    goal = [r for r in g.relations if r.phase == "goal" and r.subject == tgt.name and r.object == dst.name]
    if not goal:
        problems.append(f"no goal relation '{tgt.name} ON|IN {dst.name}'")
    if not tgt.graspable:
        problems.append(f"target {tgt.name!r} ({tgt.category}) is not graspable by the "
                        f"{GRIPPER_MAX_WIDTH_M * 1000:.0f} mm WidowX gripper")
    for o in g.objects:
        if o.role in ("target", "destination", "distractor"):
            if o.size_m is None:
                problems.append(f"{o.name}: size_m is missing")
                continue
            bad = [s for s in o.size_m if not MIN_OBJECT_EXTENT_M <= s <= MAX_OBJECT_EXTENT_M]
            if bad:
                problems.append(f"{o.name}: size {o.size_m} m is implausible for a tabletop object "
                                f"(each extent must lie in [{MIN_OBJECT_EXTENT_M}, {MAX_OBJECT_EXTENT_M}] m)")
    if goal and goal[0].relation == "IN" and dst.receptacle != "IN":
        problems.append(f"goal is '{tgt.name} IN {dst.name}' but {dst.category!r} is not a receptacle")
    for r in g.relations:
        if r.phase == "initial" and r.subject == tgt.name and r.object == dst.name:
            problems.append(f"initial layout already solved: '{tgt.name} {r.relation} {dst.name}' holds at the start")
    return problems


def load_scene_graph(path: str | os.PathLike) -> SceneGraph:
    return scene_graph_from_dict(read_json(path), str(path))


def save_scene_graph(graph: SceneGraph, path: str | os.PathLike) -> Path:
    scene_graph_from_dict(to_dict(graph), str(path))  # never write what we could not read back
    return write_json_atomic(path, graph)


# ---------------------------------------------------------------------------------------------
# Asset record (generate_assets.py)
# ---------------------------------------------------------------------------------------------


@dataclass
class QAVerdict:
    check: str
    """Checker name: "geometry", "stability", "appearance", "semantic", "alignment", ..."""
    passed: bool
    reason: str
    attempt: int
    seed: int


@dataclass
class AssetRecord:
    asset_id: str
    description: str
    category: str
    backend: str
    """"procedural" | "library" | "command"."""
    seed: int
    """Seed of the accepted attempt (the id hashes the first requested seed)."""
    accepted: bool
    attempts: int
    qa: list[QAVerdict]
    scale: float
    """Uniform scale applied to the raw mesh."""
    bbox_m: list[float]
    """Axis-aligned extents [x, y, z] of the final mesh in metres (z up, base at z=0)."""
    mass_kg: float
    friction: float
    material: str
    color_rgba: list[float]
    paths: dict
    """Relative to the asset folder: visual (GLB), collision (list of OBJ), thumb (PNG)."""
    args: dict = field(default_factory=dict)
    reject_reason: str | None = None
    schema_version: int = SCHEMA_VERSION


def asset_record_from_dict(data: Any, source: str = "<asset record>") -> AssetRecord:
    d = _Doc(data, source)
    d.version()
    qa = [QAVerdict(check=q.text("check"), passed=q.get("passed", bool), reason=q.get("reason", str, default=""),
                    attempt=q.get("attempt", int), seed=q.get("seed", int)) for q in d.children("qa", default=[])]
    accepted = d.get("accepted", bool)
    paths = d.get("paths", dict, default={})
    if path_problem(d.text("asset_id"), name_only=True):  # stages join it under the assets folder
        d.fail("asset_id", path_problem(d.data["asset_id"], name_only=True))
    p = _Doc(paths, source, "paths")
    if accepted:
        p.text("visual")
        collision = p.get("collision", list)
        if not collision or not all(isinstance(c, str) and c for c in collision):
            p.fail("collision", "an accepted asset needs at least one collision mesh path")
    named = [(k, paths[k]) for k in ("visual", "thumb") if k in paths]
    named += [(f"collision[{i}]", c) for i, c in enumerate(paths.get("collision") or [])]
    for key, rel in named:  # assets are self-contained folders
        if path_problem(rel):
            p.fail(key, path_problem(rel))
    rec = AssetRecord(
        asset_id=d.text("asset_id"), description=d.text("description"), category=d.text("category"),
        backend=d.text("backend"), seed=d.get("seed", int), accepted=accepted,
        attempts=d.get("attempts", int), qa=qa, scale=d.number("scale", lo=0.0),
        bbox_m=d.vector("bbox_m", 3, lo=0.0), mass_kg=d.number("mass_kg", lo=0.0),
        friction=d.number("friction", lo=0.0), material=d.get("material", str, default=""),
        color_rgba=d.vector("color_rgba", 4, default=[0.7, 0.7, 0.7, 1.0]), paths=paths,
        args=d.get("args", dict, default={}), reject_reason=d.get("reject_reason", str, default=None))
    if accepted and rec.mass_kg <= 0:
        d.fail("mass_kg", f"{rec.mass_kg} kg: an accepted asset needs a positive mass (the simulator divides by it)")
    if accepted and min(rec.bbox_m) <= 0:
        d.fail("bbox_m", f"{rec.bbox_m}: an accepted asset needs positive extents on every axis")
    return rec


def load_asset_record(path: str | os.PathLike) -> AssetRecord:
    """Load `assets/<id>/asset.json` (or the folder) and check that the files it names exist."""
    path = Path(path)
    if path.is_dir():
        path = path / "asset.json"
    rec = asset_record_from_dict(read_json(path), str(path))
    if rec.asset_id != path.parent.name:  # compose names the folder by the record's id: they must agree
        raise SchemaError(str(path), "asset_id", f"{rec.asset_id!r} differs from its folder {path.parent.name!r}; "
                          "re-run generate_assets.py --overwrite (it writes them equal)")
    if rec.accepted:
        root = path.parent.resolve()
        for key, rel in [("visual", rec.paths["visual"])] + [("collision", c) for c in rec.paths["collision"]]:
            if not (path.parent / rel).resolve().is_relative_to(root):  # e.g. a symlink pointing outside
                raise SchemaError(str(path), f"paths.{key}", f"{rel!r} resolves outside the asset folder {root}")
            if not (path.parent / rel).exists():
                raise SchemaError(str(path), f"paths.{key}", f"{rel!r} does not exist next to asset.json")
    return rec


def save_asset_record(rec: AssetRecord, path: str | os.PathLike) -> Path:
    asset_record_from_dict(to_dict(rec), str(path))
    return write_json_atomic(path, rec)


@dataclass
class AssetLinks:
    """`scenes/<id>/asset_links.json`: which accepted asset stands for each object of a scene graph."""

    scene_id: str
    assets_dir: str
    """Folder holding the assets, relative to this file's folder (or absolute)."""
    objects: dict[str, str]
    """object name -> asset_id (only objects that are simulated: target, destination, distractors)."""
    failed: dict[str, str] = field(default_factory=dict)
    """object name -> reason no asset could be made."""
    schema_version: int = SCHEMA_VERSION


def load_asset_links(path: str | os.PathLike) -> AssetLinks:
    d = _Doc(read_json(path), str(path))
    d.version()
    objects, failed = d.get("objects", dict), d.get("failed", dict, default={})
    for k, v in objects.items():
        if path_problem(v, name_only=True):  # an asset id: one folder name under assets_dir
            d.fail(f"objects.{k}", path_problem(v, name_only=True))
    if "\0" in d.text("assets_dir"):
        d.fail("assets_dir", "contains a NUL character")
    return AssetLinks(scene_id=d.text("scene_id"), assets_dir=d.text("assets_dir"), objects=objects, failed=failed)


# ---------------------------------------------------------------------------------------------
# Scene manifest (compose_scene.py -> scene_env.py)
# ---------------------------------------------------------------------------------------------


@dataclass
class ManifestObject:
    name: str
    role: str
    asset_id: str
    asset_dir: str
    """Asset folder, relative to the manifest's folder (or absolute)."""
    visual: str
    """GLB path relative to asset_dir."""
    collision: list[str]
    """Convex collision OBJ paths relative to asset_dir."""
    scale: float
    """Extra uniform scale applied at load time on top of the asset's own (1.0 = as generated)."""
    bbox_m: list[float]
    """Extents [x, y, z] after scaling, metres."""
    mass_kg: float
    friction: float
    init_xyz: list[float]
    """Nominal pose in the robot base frame; z = height of the object's base above the table top."""
    init_yaw: float
    x_range: list[float]
    """Narrow domain-randomisation box of x around init_xyz (half-width <= 4 cm, any draw disjoint): used only with
    EnvConfig.object_region="manifest" and as the fallback layout; by default the env draws over the manifest's
    object_region (Table A.2)."""
    y_range: list[float]
    yaw_range: list[float]


@dataclass
class SceneManifest:
    scene_id: str
    task: str
    scene_graph: str
    """Path of scene_graph.json relative to the manifest's folder."""
    objects: list[ManifestObject]
    success: dict
    """{"target": name, "destination": name, "relation": "ON"|"IN"} (Eq. A.1)."""
    table: dict
    """{"size": [x, y, z], "color": [r, g, b, a], "height": z of the top in the world, ...}."""
    background: dict
    """{"floor_color": [...], "wall_color": [...], ...}."""
    lighting: dict
    """{"ambient": [r, g, b], "directional": [[dx, dy, dz, brightness], ...]}."""
    qa: dict
    """{"settle": {...}, "solver": {...}, "attempts": n}: verdicts with reasons."""
    content_hash: str = ""
    """Hash of everything above; `validate` recomputes it."""
    args: dict = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    object_region: dict = field(default_factory=dict)
    """Where the env draws the objects at every reset (Table A.2; scene_env.OBJECT_REGION's keys): {"x": [lo, hi],
    "y": [lo, hi], "yaw": [lo, hi], "margin_m": footprint gap, "view_margin_px": ...}, per object intersected with
    the camera view and the table. Empty in manifests written before issue 26 (the env then uses
    scene_env.OBJECT_REGION). Objects' x_range / y_range are the narrow boxes around the nominal layout
    (EnvConfig.object_region="manifest"); init_xyz / init_yaw the nominal layout (QA renders, videos)."""

    def hashed_content(self) -> dict:
        d = to_dict(self)
        for k in ("content_hash", "args"):
            d.pop(k, None)
        if not d.get("object_region"):  # absent before issue 26: old manifests keep their hash
            d.pop("object_region", None)
        return d

    def object(self, name: str) -> ManifestObject:
        for o in self.objects:
            if o.name == name:
                return o
        raise KeyError(f"manifest {self.scene_id!r} has no object named {name!r}")


def scene_manifest_from_dict(data: Any, source: str = "<manifest>", check_hash: bool = True) -> SceneManifest:
    d = _Doc(data, source)
    d.version()
    objects = []
    for o in d.children("objects"):
        objects.append(ManifestObject(
            name=o.text("name"), role=o.get("role", str, choices=ROLES), asset_id=o.text("asset_id"),
            asset_dir=o.text("asset_dir"), visual=o.text("visual"),
            collision=o.get("collision", list), scale=o.number("scale", lo=1e-6),
            bbox_m=o.vector("bbox_m", 3, lo=0.0), mass_kg=o.number("mass_kg", lo=0.0),
            friction=o.number("friction", lo=0.0), init_xyz=o.vector("init_xyz", 3),
            init_yaw=o.number("init_yaw"), x_range=o.vector("x_range", 2), y_range=o.vector("y_range", 2),
            yaw_range=o.vector("yaw_range", 2)))
        if path_problem(objects[-1].asset_id, name_only=True):
            o.fail("asset_id", path_problem(objects[-1].asset_id, name_only=True))
        if "\0" in objects[-1].asset_dir:
            o.fail("asset_dir", "contains a NUL character")
        for key, rel in [("visual", objects[-1].visual)] + [(f"collision[{i}]", c) for i, c in enumerate(objects[-1].collision)]:
            if path_problem(rel):  # relative to asset_dir, inside it
                o.fail(key, path_problem(rel))
        for key in ("x_range", "y_range", "yaw_range"):
            lo, hi = getattr(objects[-1], key)
            if lo > hi:
                o.fail(key, f"lower bound {lo} is above upper bound {hi}")
    names = [o.name for o in objects]
    success = d.child("success")
    for key in ("target", "destination"):
        if success.text(key) not in names:
            success.fail(key, f"{success.data[key]!r} is not an object of this manifest ({', '.join(names)})")
    success.get("relation", str, choices=RELATIONS)
    m = SceneManifest(scene_id=d.text("scene_id"), task=d.text("task"), scene_graph=d.text("scene_graph"),
                      objects=objects, success=success.data, table=d.get("table", dict),
                      background=d.get("background", dict, default={}), lighting=d.get("lighting", dict, default={}),
                      qa=d.get("qa", dict, default={}), content_hash=d.get("content_hash", str, default=""),
                      args=d.get("args", dict, default={}), object_region=d.get("object_region", dict, default={}))
    for key in ("x", "y", "yaw"):
        if key in m.object_region:
            v = m.object_region[key]
            if not (isinstance(v, list) and len(v) == 2 and all(isinstance(t, (int, float)) for t in v) and v[0] <= v[1]):
                d.fail(f"object_region.{key}", f"expected [lo, hi] with lo <= hi, got {v!r}")
    if check_hash and m.content_hash and m.content_hash != content_hash(m.hashed_content()):
        d.fail("content_hash", "does not match the manifest's content: the file was edited by hand or is "
               "corrupt; re-run compose_scene.py for this scene (or clear content_hash to accept the edit)")
    return m


def load_manifest(path: str | os.PathLike) -> SceneManifest:
    """Load and validate `scenes/<id>/manifest.json` (or the scene folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.json"
    return scene_manifest_from_dict(read_json(path), str(path))


def save_manifest(m: SceneManifest, path: str | os.PathLike) -> Path:
    m.content_hash = content_hash(m.hashed_content())
    scene_manifest_from_dict(to_dict(m), str(path))
    return write_json_atomic(path, m)


def resolve_asset_dir(manifest_path: str | os.PathLike, obj: ManifestObject) -> Path:
    """Absolute asset folder of a manifest object (paths in manifests are relative to their folder)."""
    base = Path(manifest_path)
    base = base if base.is_dir() else base.parent
    d = (base / obj.asset_dir).resolve()
    for rel in [obj.visual, *obj.collision]:  # validated as relative without '..'; a symlink may still point out
        if path_problem(rel) or not (d / rel).resolve().is_relative_to(d):
            raise SchemaError(str(manifest_path), f"objects.{obj.name}", f"{rel!r} resolves outside its asset folder {d}")
    return d


def find_manifests(scenes_dir: str | os.PathLike, scene_ids: Iterable[str] | None = None) -> list[Path]:
    """Manifest paths under `scenes_dir`, sorted by scene id; unknown requested ids raise clearly."""
    scenes_dir = Path(scenes_dir)
    if not scenes_dir.is_dir():
        raise SchemaError(str(scenes_dir), "", "scenes folder does not exist; run scene_designer.py and "
                          "compose_scene.py first (or pass the right --scenes-dir)")
    found = {p.parent.name: p for p in sorted(scenes_dir.glob("*/manifest.json"))}
    if scene_ids is None:
        return list(found.values())
    scene_ids = list(scene_ids)
    missing = [s for s in scene_ids if s not in found]
    if missing:
        raise SchemaError(str(scenes_dir), "", f"no composed scene (manifest.json) for id(s) {', '.join(missing)}; "
                          f"{len(found)} are available" + (f", e.g. {', '.join(list(found)[:5])}" if found else ""))
    return [found[s] for s in scene_ids]


# ---------------------------------------------------------------------------------------------
# Scene index (scene_designer.py) and scene splits (evaluate.py -> ppoflow_pi0.py)
# ---------------------------------------------------------------------------------------------


@dataclass
class IndexEntry:
    task: str
    variant: int
    status: str
    """"ok" (graph written), "exists" (kept from an earlier run) or "rejected"."""
    scene_id: str | None = None
    reason: str | None = None
    designer: str | None = None


def load_scene_index(path: str | os.PathLike) -> list[IndexEntry]:
    d = _Doc(read_json(path), str(path))
    d.version()
    return [IndexEntry(task=e.get("task", str), variant=e.get("variant", int),
                       status=e.get("status", str, choices=("ok", "exists", "rejected")),
                       scene_id=e.get("scene_id", str, default=None), reason=e.get("reason", str, default=None),
                       designer=e.get("designer", str, default=None)) for e in d.children("entries")]


@dataclass
class SceneSplits:
    """Seeded ID subsets H_i of size M and their OOD complements (paper Sec. 4)."""

    scenes: list[str]
    """All scene ids (W), in a fixed order."""
    splits: list[dict]
    """[{"index": i, "id": [...M ids, fixed order], "ood": [...]}]; train on id[:N]."""
    seed: int
    size: int
    schema_version: int = SCHEMA_VERSION


def load_splits(path: str | os.PathLike) -> SceneSplits:
    d = _Doc(read_json(path), str(path))
    d.version()
    scenes = d.get("scenes", list)
    splits = []
    for s in d.children("splits"):
        ids, ood = s.get("id", list), s.get("ood", list)
        unknown = [x for x in ids + ood if x not in scenes]
        if unknown:
            s.fail("id", f"scene ids not in 'scenes': {', '.join(map(str, unknown[:5]))}")
        if set(ids) & set(ood):
            s.fail("ood", "overlaps the ID set")
        splits.append(s.data)
    return SceneSplits(scenes=scenes, splits=splits, seed=d.get("seed", int), size=d.get("size", int))
