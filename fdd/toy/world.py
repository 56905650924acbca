"""A seeded generator of toy frames, clips, captions and edits.

A scene is a background colour and one or two objects; each object has a shape (circle,
square, triangle), a colour, a texture (solid or horizontal stripes), a style (filled or
outline), a centre, a radius and a constant velocity. Frames are rendered analytically (no
anti-aliasing) so the evaluator can read every attribute back exactly.

Edits cover the EVE task types that make sense here (EVE §4.0.2 lists Add, Remove, Background,
Texture, Local, Style, Global):

| task | instruction (example) | ground truth |
|---|---|---|
| Local | "make the circle blue" / "turn the circle into a square" | colour or shape changed |
| Background | "change the background to black" | background changed |
| Remove | "remove the circle" | object gone |
| Add | "add a green square" | a second object, moving with the first at a fixed offset |
| Texture | "give the circle stripes" | horizontal grey stripes inside the object |
| Style | "draw the circle as an outline" | only the object's boundary |
| Global | "invert the colours" | every pixel c -> 1 - c (palette closed under inversion) |
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

SHAPES = ("circle", "square", "triangle")
#: object colours; the palette is closed under inversion (red<->cyan, green<->magenta, blue<->yellow)
COLOURS = {
    "red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0), "cyan": (0.0, 1.0, 1.0), "magenta": (1.0, 0.0, 1.0),
}
#: colours scenes are sampled from (cyan / magenta only appear through Global edits)
BASE_COLOURS = ("red", "green", "blue", "yellow")
BACKGROUNDS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}
#: colour of the stripes of a striped object (inverts to itself; neither a background nor a colour)
STRIPE = (0.5, 0.5, 0.5)
STRIPE_PERIOD = 4  # rows: 2 object-coloured, 2 grey
OUTLINE_PX = 2
TASKS = ("Local", "Background", "Remove", "Add", "Texture", "Style", "Global")


@dataclass(frozen=True)
class Obj:
    shape: str
    colour: str
    cx: float  # centre at frame 0, pixels
    cy: float
    r: float  # half-size, pixels
    vx: float = 0.0  # pixels per frame
    vy: float = 0.0
    texture: str = "solid"  # solid | stripes
    style: str = "filled"  # filled | outline


@dataclass(frozen=True)
class Scene:
    background: str
    objects: tuple[Obj, ...]
    size: int = 32

    def at(self, frame: int) -> "Scene":
        return replace(self, objects=tuple(replace(o, cx=o.cx + o.vx * frame, cy=o.cy + o.vy * frame)
                                           for o in self.objects))


def _inverse(name: str) -> str:
    table = {**COLOURS, **BACKGROUNDS}
    rgb = tuple(1.0 - c for c in table[name])
    for k, v in table.items():
        if v == rgb:
            return k
    raise KeyError(name)


def _shape_mask(o: Obj, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    dx, dy = xx - o.cx, yy - o.cy
    if o.shape == "circle":
        return dx * dx + dy * dy <= o.r * o.r
    if o.shape == "square":
        return (np.abs(dx) <= o.r) & (np.abs(dy) <= o.r)
    if o.shape == "triangle":  # apex up, base at cy + r, apex at cy - r
        t = (dy + o.r) / (2 * o.r)  # 0 at apex, 1 at base
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= o.r * t)
    raise ValueError(f"shape: unknown {o.shape!r}; expected one of {SHAPES}")


def _outline(mask: np.ndarray, px: int) -> np.ndarray:
    """Pixels of ``mask`` within ``px`` pixels (4-neighbourhood steps) of its complement."""
    inner = mask.copy()
    for _ in range(px):
        shrunk = inner.copy()
        shrunk[1:, :] &= inner[:-1, :]
        shrunk[:-1, :] &= inner[1:, :]
        shrunk[:, 1:] &= inner[:, :-1]
        shrunk[:, :-1] &= inner[:, 1:]
        shrunk[0, :] = shrunk[-1, :] = shrunk[:, 0] = shrunk[:, -1] = False
        inner = shrunk
    return mask & ~inner


def render_frame(scene: Scene, inverted: bool = False) -> np.ndarray:
    """``[H, W, 3]`` float32 in 0..1."""
    s = scene.size
    img = np.empty((s, s, 3), np.float32)
    img[:] = BACKGROUNDS[scene.background]
    rows = np.arange(s)[:, None]
    for o in scene.objects:
        m = _shape_mask(o, s)
        if o.style == "outline":
            m = _outline(m, OUTLINE_PX)
        img[m] = COLOURS[o.colour]
        if o.texture == "stripes":
            top = int(np.floor(o.cy - o.r))
            band = ((rows - top) % STRIPE_PERIOD) >= STRIPE_PERIOD // 2
            img[m & np.broadcast_to(band, m.shape)] = STRIPE
    return 1.0 - img if inverted else img


def render_clip(scene: Scene, frames: int = 8, inverted: bool = False) -> np.ndarray:
    """``[F, H, W, 3]`` float32: the scene advanced by its objects' velocities each frame."""
    return np.stack([render_frame(scene.at(i), inverted) for i in range(frames)])


def caption(scene: Scene, inverted: bool = False) -> str:
    """"a red circle on a white background", "a striped red circle and a green square on a
    black background", "an outlined blue triangle on ...", "an empty white background"."""
    bg = _inverse(scene.background) if inverted else scene.background
    parts = []
    for o in scene.objects:
        colour = _inverse(o.colour) if inverted else o.colour
        adj = {"stripes": "striped "}.get(o.texture, "") + {"outline": "outlined "}.get(o.style, "")
        words = f"{adj}{colour} {o.shape}"
        parts.append(("an " if words[0] in "aeiou" else "a ") + words)
    if not parts:
        return f"an empty {bg} background"
    return " and ".join(parts) + f" on a {bg} background"


def random_scene(rng: np.random.Generator, size: int = 32, frames: int = 8, shape_p=None) -> Scene:
    """One object whose whole path over ``frames`` stays inside the frame; its shape is drawn
    uniformly, or with probabilities ``shape_p`` over SHAPES."""
    r = size * rng.uniform(0.16, 0.22)
    margin = r + 1.5
    span = size - 2 * margin
    # start inside the safe box; the end point moves at most 40 % of the box, clipped inside
    x0, y0 = margin + rng.uniform(0, span, 2)
    x1 = float(np.clip(x0 + rng.uniform(-0.4, 0.4) * span, margin, size - margin))
    y1 = float(np.clip(y0 + rng.uniform(-0.4, 0.4) * span, margin, size - margin))
    steps = max(1, frames - 1)
    shape = rng.choice(SHAPES) if shape_p is None else rng.choice(SHAPES, p=shape_p)
    obj = Obj(shape=str(shape), colour=str(rng.choice(BASE_COLOURS)), cx=float(x0),
              cy=float(y0), r=float(r), vx=float((x1 - x0) / steps), vy=float((y1 - y0) / steps))
    return Scene(background=str(rng.choice(tuple(BACKGROUNDS))), objects=(obj,), size=size)


@dataclass(frozen=True)
class Edit:
    task: str
    instruction: str
    source: Scene
    target: Scene
    inverted: bool = False  # Global: the target is rendered inverted

    @property
    def source_caption(self) -> str:
        return caption(self.source)

    @property
    def target_caption(self) -> str:
        return caption(self.target, self.inverted)

    def render(self, frames: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """(input clip, ground-truth edited clip)."""
        return render_clip(self.source, frames), render_clip(self.target, frames, self.inverted)


def _path_inside(o: Obj, size: int, frames: int) -> bool:
    lo, hi = o.r + 1.0, size - o.r - 1.0
    return all(lo <= o.cx + o.vx * i <= hi and lo <= o.cy + o.vy * i <= hi for i in range(frames))


def _apart(a: Obj, b: Obj, frames: int) -> bool:
    """Chebyshev distance between the centres stays >= r_a + r_b + 1.5 px on every frame, so
    the two shapes' bounding boxes never touch."""
    need = a.r + b.r + 1.5
    return all(max(abs((a.cx + a.vx * i) - (b.cx + b.vx * i)), abs((a.cy + a.vy * i) - (b.cy + b.vy * i))) >= need
               for i in range(frames))


def _place_second(o: Obj, shape: str, colour: str, size: int, frames: int, rng) -> Obj:
    """The object an Add edit inserts: moving with ``o`` at a fixed offset if that keeps it in
    frame, else standing still in the frame corner farthest from ``o``'s path, shrunk if needed."""
    d = 2 * o.r + 2.0
    offsets = [(d, 0.0), (-d, 0.0), (0.0, d), (0.0, -d), (d, d), (-d, d), (d, -d), (-d, -d)]
    order = rng.permutation(len(offsets))
    for k in order:
        dx, dy = offsets[k]
        cand = replace(o, shape=shape, colour=colour, cx=o.cx + dx, cy=o.cy + dy)
        if _path_inside(cand, size, frames) and _apart(o, cand, frames):
            return cand
    for scale in (1.0, 0.8, 0.6, 0.45):
        r = o.r * scale
        corners = [(r + 1.0, r + 1.0), (size - r - 1.0, r + 1.0), (r + 1.0, size - r - 1.0),
                   (size - r - 1.0, size - r - 1.0)]
        cands = [replace(o, shape=shape, colour=colour, cx=x, cy=y, r=r, vx=0.0, vy=0.0) for x, y in corners]
        good = [c for c in cands if _apart(o, c, frames)]
        if good:
            return good[int(rng.integers(len(good)))]
    raise ValueError("Add: no room for a second object beside this scene's path")


def make_edit(scene: Scene, task: str, rng: np.random.Generator, frames: int = 8) -> Edit:
    """A random edit of the given task type applied to a one-object scene. Add places the
    second object at a fixed offset moving with the first (so they never overlap) when such
    an offset keeps it inside the frame for ``frames`` frames, else on the mirrored path."""
    o = scene.objects[0]
    if task == "Local":
        if rng.random() < 0.5:
            colour = str(rng.choice([c for c in BASE_COLOURS if c != o.colour]))
            return Edit(task, f"make the {o.shape} {colour}", scene,
                        replace(scene, objects=(replace(o, colour=colour),)))
        shape = str(rng.choice([s for s in SHAPES if s != o.shape]))
        return Edit(task, f"turn the {o.shape} into a {shape}", scene,
                    replace(scene, objects=(replace(o, shape=shape),)))
    if task == "Background":
        bg = [b for b in BACKGROUNDS if b != scene.background][0]
        return Edit(task, f"change the background to {bg}", scene, replace(scene, background=bg))
    if task == "Remove":
        return Edit(task, f"remove the {o.shape}", scene, replace(scene, objects=()))
    if task == "Add":
        s = scene.size
        colour = str(rng.choice([c for c in BASE_COLOURS if c != o.colour]))
        shape = str(rng.choice(SHAPES))
        other = _place_second(o, shape, colour, s, frames, rng)
        return Edit(task, f"add a {colour} {shape}", scene, replace(scene, objects=(o, other)))
    if task == "Texture":
        return Edit(task, f"give the {o.shape} stripes", scene,
                    replace(scene, objects=(replace(o, texture="stripes"),)))
    if task == "Style":
        return Edit(task, f"draw the {o.shape} as an outline", scene,
                    replace(scene, objects=(replace(o, style="outline"),)))
    if task == "Global":
        return Edit(task, "invert the colours", scene, scene, inverted=True)
    raise ValueError(f"task: unknown {task!r}; expected one of {TASKS}")


def seeded_edit(seed: int, task: str = "random", size: int = 32, frames: int = 8, shape: str | None = None,
                colour: str | None = None, background: str | None = None) -> Edit:
    """One reproducible edit: a random scene from ``seed`` with the given attributes pinned
    (None: random), and a random edit of ``task`` ("random": one of TASKS) drawn from the same
    generator. The scene's motion and size do not depend on the pinned attributes."""
    for name, value, allowed in (("shape", shape, SHAPES), ("colour", colour, BASE_COLOURS),
                                 ("background", background, tuple(BACKGROUNDS))):
        if value is not None and value not in allowed:
            raise ValueError(f"{name}: expected one of {allowed} (or random), got {value!r}")
    if task != "random" and task not in TASKS:
        raise ValueError(f"task: expected one of {TASKS} or 'random', got {task!r}")
    rng = np.random.default_rng(seed)
    scene = random_scene(rng, size, frames)
    o = scene.objects[0]
    o = replace(o, shape=shape or o.shape, colour=colour or o.colour)
    scene = replace(scene, background=background or scene.background, objects=(o,))
    if task == "random":
        task = TASKS[int(rng.integers(len(TASKS)))]
    return make_edit(scene, task, rng, frames)
