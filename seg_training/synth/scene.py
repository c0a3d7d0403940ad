"""
Procedural driving scenes: a world laid out along a road and a camera driving through it.

The engine behind ``seg-synth`` (see :mod:`seg_training.synth`); numpy and OpenCV only.

Coordinates
    The world follows the road: ``s`` metres along it, ``l`` metres to the right of its centre
    line, ``y`` metres up from the road surface. A road of constant curvature ``k`` moves the
    centre line sideways by ``k * d**2 / 2`` at distance ``d`` from the camera. The camera drives
    along ``+s`` at constant speed and looks forwards (``view='front'``) or backwards
    (``view='rear'``) through a pinhole with height, pitch, roll, focal length and horizon row.

Painting
    Every surface is a polygon or a disc filled with OpenCV into the RGB image and, with the same
    vertices, into the label map, in painter's order: sky, distant skyline, ground (pavement,
    terrain, sidewalks, kerbs, road, road marks), then the objects from far to near in three
    lateral layers: behind the building line, the building line (facades, parks) and the street
    (cars, people, poles, signs, street trees). Objects of an inner layer can never be hidden by
    an outer one, so this order is right without a depth buffer. Boxes (buildings, cars) are
    convex hexahedra whose back faces are culled. Labels are Cityscapes label ids.

Determinism
    The world is cut into 40 m chunks. Each chunk of each stream (the static scenery, every
    traffic lane, every sidewalk direction) is made by its own random generator, seeded by the
    drive's seed, the stream and the chunk index, so a frame renders the same however it is
    reached (alone, in a sequence, in another process).
"""

from dataclasses import dataclass, replace
import functools
import math
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from seg_training.synth.render import (box, Camera, DT, F_AHIGH, F_ALOW, F_BHIGH, F_BLOW,
                                       fixed, Frame, Look, NEAR)
from seg_training.synth.style import Color, domain_style, DomainStyle, VIEWS, Weather, WEATHERS

# Cityscapes label ids drawn by the generator (cityscapesscripts' table).
UNLABELED, EGO_VEHICLE, ROAD, SIDEWALK, BUILDING = 0, 1, 7, 8, 11
POLE, TRAFFIC_LIGHT, TRAFFIC_SIGN, VEGETATION, TERRAIN, SKY = 17, 19, 20, 21, 22, 23
PERSON, CAR, TRUCK = 24, 26, 27
LABEL_IDS = (UNLABELED, EGO_VEHICLE, ROAD, SIDEWALK, BUILDING, POLE, TRAFFIC_LIGHT,
             TRAFFIC_SIGN, VEGETATION, TERRAIN, SKY, PERSON, CAR, TRUCK)

CHUNK = 40.0           # metres of world per random generator
FAR_GROUND = 600.0     # ground drawn up to here
FAR_BUILDINGS = 260.0  # front buildings up to here
FAR_BACK = 170.0       # buildings behind the front row up to here
FAR_STREET = 140.0     # street objects up to here
FAR_DETAIL = 150.0     # windows and shop fronts up to here
_KOFF = 1 << 40        # makes chunk indices non-negative for seeding

# Surface texture per label id: (fine grain, blotches) as relative brightness changes.
GRAIN = np.zeros(256, np.float32)
BLOTCH = np.zeros(256, np.float32)
for _lab, _g, _b in ((ROAD, 0.05, 0.07), (SIDEWALK, 0.05, 0.05), (BUILDING, 0.03, 0.035),
                     (VEGETATION, 0.24, 0.14), (TERRAIN, 0.13, 0.14), (CAR, 0.015, 0.02),
                     (TRUCK, 0.015, 0.03), (PERSON, 0.04, 0.03), (POLE, 0.02, 0.02),
                     (TRAFFIC_SIGN, 0.01, 0.01), (TRAFFIC_LIGHT, 0.02, 0.02),
                     (EGO_VEHICLE, 0.01, 0.02)):
    GRAIN[_lab], BLOTCH[_lab] = _g, _b


@dataclass(frozen=True)
class DriveParams:
    """Everything that stays fixed during one drive; :func:`sample_drive` draws them."""

    seed: int
    domain: str
    city: str
    weather: str
    front: Camera
    rear: Camera
    speed: float                      # m/s
    lane_width: float
    lanes_forward: int
    lanes_oncoming: int
    ego_lane: int
    parking: Tuple[float, float]      # parking strip width left, right (0 = none)
    sidewalk: Tuple[float, float]     # sidewalk width left, right
    kerb_height: float
    curvature: float                  # 1/m, positive bends right
    sun: Tuple[float, float, float]   # unit vector (s, l, y) towards the sun
    visibility: float                 # metres (haze or fog)
    asphalt: Color
    pavement: Color
    kerb: Color
    terrain: Color
    dashed_center: bool
    edge_lines: bool
    facades: Tuple[Color, ...]
    lane_speeds: Tuple[float, ...]    # forward lanes, m/s
    oncoming_speed: float
    lamp_spacing: float
    lamp_phase: float
    bonnet: float                     # bonnet height as a fraction of the image (0 = none)
    look: Look


def _pick(rng: np.random.Generator, items: Sequence):
    return items[int(rng.integers(len(items)))]


def _u(rng: np.random.Generator, r: Tuple[float, float]) -> float:
    return r[0] + (r[1] - r[0]) * rng.random()


def _jitter(rng: np.random.Generator, c: Color, amount: float = 10.0) -> Color:
    n = rng.normal(0, amount, 3).tolist()
    return (min(255, max(0, int(c[0] + n[0]))), min(255, max(0, int(c[1] + n[1]))),
            min(255, max(0, int(c[2] + n[2]))))


def _scale(c: Color, k: float) -> Color:
    return tuple(int(min(255, max(0, v * k))) for v in c)


def _brighter(c: Color, k: float) -> Color:
    return tuple(min(255, int(v * k + 12)) for v in c)


def sample_drive(seed: int, domain: str = 'source', city: str = 'synth') -> DriveParams:
    """Draw the parameters of one drive in ``domain`` from ``seed`` (the same for both views)."""
    style = domain_style(domain)
    rng = np.random.default_rng([int(seed), 7])
    names, probs = zip(*style.weather)
    weather = WEATHERS[names[int(rng.choice(len(names), p=np.asarray(probs) / sum(probs)))]]
    front = Camera(height=_u(rng, style.camera_height),
                   pitch=math.radians(_u(rng, style.pitch_deg)),
                   roll=math.radians(float(rng.uniform(-style.roll_deg, style.roll_deg))),
                   focal=_u(rng, style.focal), horizon=_u(rng, style.horizon))
    # The rear camera sits lower at the tail, wider and pitched further down.
    rear = replace(front, height=front.height * 0.85, pitch=front.pitch + math.radians(4.0),
                   focal=front.focal * 0.85, horizon=max(0.28, front.horizon - 0.04))
    lanes_forward = int(rng.choice([1, 2], p=[0.55, 0.45]))
    lanes_oncoming = int(rng.choice([0, 1, 2], p=[0.15, 0.6, 0.25]))
    ego_lane = lanes_forward - 1 if rng.random() < 0.7 else 0
    parking = tuple(float(rng.uniform(2.0, 2.4)) if rng.random() < 0.45 else 0.0
                    for _ in range(2))
    curvature = 0.0 if rng.random() < 0.5 else float(rng.uniform(-1, 1)) / 700.0
    azimuth = rng.uniform(0, 2 * math.pi)
    elevation = math.radians(rng.uniform(25, 60) if weather.name != 'dusk' else 6)
    sun = (math.cos(elevation) * math.cos(azimuth), math.cos(elevation) * math.sin(azimuth),
           math.sin(elevation))
    visibility = weather.visibility * float(rng.uniform(0.7, 1.4)) if weather.visibility \
        else _u(rng, style.haze_m)
    # Each city favours a subset of the domain's facade colours.
    city_rng = np.random.default_rng([sum(city.encode()) * 131 + len(city), 3])
    facade_idx = np.sort(city_rng.choice(len(style.facades), size=max(3, len(style.facades) - 2),
                                         replace=False))
    wet = 0.7 if weather.wet else 1.0
    speed = float(rng.uniform(6.0, 12.0))
    lane_speeds = tuple(speed if i == ego_lane else speed + float(rng.uniform(-2.5, 3.5))
                        for i in range(lanes_forward))
    look = Look(gain=weather.gain * float(rng.uniform(0.9, 1.1)),
                saturation=_u(rng, style.saturation), noise=_u(rng, style.noise),
                vignette=_u(rng, style.vignette), blur=_u(rng, style.blur),
                texture=style.texture * (0.55 if weather.visibility else 1.0),
                texture_offset=(float(rng.random()), float(rng.random())))
    return DriveParams(
        seed=int(seed), domain=domain, city=city, weather=weather.name, front=front, rear=rear,
        speed=speed, lane_width=float(rng.uniform(2.9, 3.6)), lanes_forward=lanes_forward,
        lanes_oncoming=lanes_oncoming, ego_lane=ego_lane, parking=parking,
        sidewalk=(float(rng.uniform(2.0, 4.5)), float(rng.uniform(2.0, 4.5))),
        kerb_height=float(rng.uniform(0.1, 0.16)), curvature=curvature, sun=sun,
        visibility=visibility,
        asphalt=tuple(int(c * wet) for c in _jitter(rng, _pick(rng, style.asphalt), 4)),
        pavement=_jitter(rng, _pick(rng, style.pavement), 6),
        kerb=_jitter(rng, _pick(rng, style.kerb), 5),
        terrain=_jitter(rng, _pick(rng, style.terrain), 8),
        dashed_center=bool(rng.random() < 0.6), edge_lines=bool(rng.random() < 0.5),
        facades=tuple(style.facades[i] for i in facade_idx),
        lane_speeds=lane_speeds, oncoming_speed=-float(rng.uniform(7.0, 13.0)),
        lamp_spacing=float(rng.uniform(22.0, 34.0)), lamp_phase=float(rng.uniform(0, 30)),
        bonnet=float(rng.uniform(0.06, 0.1)) if style.bonnet else 0.0, look=look)


# --------------------------------------------------------------------------- objects

class _Obj:
    """
    A world object: its s extent at t = 0, its speed along s and its lateral layer.

    Layers are painted in order: 0 behind the building line, 1 the building line (facades,
    parks), 2 the street; within a layer, far before near. ``prepare`` registers the geometry
    of a frame, ``draw`` paints it after :meth:`Frame.run_batch`.
    """

    __slots__ = ('s0', 's1', 'speed', 'layer', 'far')

    def near(self, fr: Frame) -> Optional[float]:
        shift = self.speed * fr.t
        da, db = fr.depth(self.s0 + shift), fr.depth(self.s1 + shift)
        lo, hi = (da, db) if da < db else (db, da)
        if hi < NEAR or lo > self.far:
            return None
        return max(lo, NEAR)

    def prepare(self, fr: Frame) -> None:
        raise NotImplementedError

    def draw(self, fr: Frame) -> None:
        raise NotImplementedError

    def shadow(self, fr: Frame) -> None:
        """Paint this object's shadow on the ground into ``fr.shadow`` (default: none)."""


def _quads(s0, s1, l0, l1, y0, y1) -> np.ndarray:
    """(n, 4, 3) upright quads: s0..s1 and l0..l1 along the bottom, y0..y1 up."""
    sizes = [np.size(v) for v in (s0, s1, l0, l1, y0, y1)]
    n = 0 if 0 in sizes else max(sizes)
    q = np.empty((n, 4, 3))
    q[:, 0::3, 0] = np.reshape(s0, (-1, 1))
    q[:, 1:3, 0] = np.reshape(s1, (-1, 1))
    q[:, 0::3, 1] = np.reshape(l0, (-1, 1))
    q[:, 1:3, 1] = np.reshape(l1, (-1, 1))
    q[:, :2, 2] = np.reshape(y0, (-1, 1))
    q[:, 2:, 2] = np.reshape(y1, (-1, 1))
    return q


class _Building(_Obj):
    """
    A block of flats or shops: a box with windows, shop front, cornice and perhaps a roof.

    The scalar look is drawn at construction; the detail quads are built on first use (from
    their own seed, so they do not depend on when that happens).
    """

    __slots__ = ('side', 'l_face', 'depth_m', 'height', 'color', 'roof', 'floor_h', 'shop',
                 'win', 'glass', 'lit', 'seed', 'verts', 'colors', 'details', 'shade',
                 'shadow_quad', 'hb', 'hd', 'hs', 'near_d')

    def __init__(self, rng: np.random.Generator, drive: 'Drive', s0: float, s1: float, side: int,
                 l_face: float, depth: float, height: float, color: Color, layer: int) -> None:
        self.s0, self.s1, self.speed, self.layer = s0, s1, 0.0, layer
        self.far = FAR_BUILDINGS if layer else FAR_BACK
        self.side, self.l_face, self.depth_m, self.height = side, l_face, depth, height
        self.color = color
        self.roof = _pick(rng, _ROOFS) if rng.random() < 0.4 else None
        self.floor_h = _u(rng, (2.9, 3.6))
        self.shop = _pick(rng, _SHOPS) if layer == 1 and rng.random() < 0.45 else None
        self.win = (_u(rng, (2.2, 3.4)), _u(rng, (0.9, 1.4)), _u(rng, (1.2, 1.8))) \
            if rng.random() < 0.92 else None     # column spacing, width, height
        self.glass = _pick(rng, drive.style.glass)
        self.lit = drive.weather.lit_windows
        self.seed = int(rng.integers(1 << 62))
        self.verts = None
        self.details = None
        self.shadow_quad = None
        sun = drive.sun
        if layer == 1 and drive.weather.sun > 0.05 and sun[1] * side > 0:
            reach = height / max(sun[2], 0.2)
            ds, dl = -sun[0] * reach, -sun[1] * reach
            self.shadow_quad = np.array([[s0, l_face, 0.0], [s1, l_face, 0.0],
                                         [s1 + ds, l_face + dl, 0.0], [s0 + ds, l_face + dl, 0.0]])

    def _make_box(self) -> None:
        l_back = self.l_face + self.side * self.depth_m
        la, lb = min(self.l_face, l_back), max(self.l_face, l_back)
        self.verts = box(self.s0, self.s1, la, lb, 0.0, self.height)[None]
        self.colors = np.broadcast_to(np.asarray(self.color, np.float64), (1, 6, 3))

    def _make_details(self) -> None:
        """Detail quads (n, 4, 3), the box face each sits on (-1: none) and its colour group."""
        s0, s1, lf, side, height = self.s0, self.s1, self.l_face, self.side, self.height
        rng = np.random.default_rng(self.seed)
        facade = F_BLOW if side > 0 else F_BHIGH
        quads, face_of, groups = [], [], []

        def add(q: np.ndarray, face, group) -> None:
            quads.append(q)
            face_of.append(np.broadcast_to(face, len(q)))
            groups.append(np.broadcast_to(group, len(q)))

        ground = 0.0
        if self.shop is not None:
            ground = 3.4
            add(_quads(s0, s1, lf, lf, 0.0, 3.4), facade, 0)
            ws = np.arange(s0 + 0.6, s1 - 3.0, 4.0)
            add(_quads(ws, ws + 3.0, lf, lf, 0.5, 2.7), facade, 2)
        add(_quads(s0, s1, lf, lf, height - 0.7, height - 0.35), facade, 1)
        if self.win is not None:
            spacing, ww, wh = self.win
            rows = np.arange(max(ground, self.floor_h * 0.3) + 0.8, height - wh - 0.8,
                             self.floor_h)
            cols = np.arange(s0 + 0.5 * spacing, s1 - ww - 0.3, spacing)
            c, r = np.repeat(cols, len(rows)), np.tile(rows, len(cols))
            add(_quads(c, c + ww, lf, lf, r, r + wh), facade,
                _window_groups(rng, len(c), self.lit))
            la, lb = sorted((lf, lf + side * self.depth_m))
            lcols = np.arange(la + 1.0, lb - ww - 0.8, spacing)
            c, r = np.repeat(lcols, len(rows)), np.tile(rows, len(lcols))
            for s_face, face in ((s0, F_ALOW), (s1, F_AHIGH)):
                add(_quads(s_face, s_face, c, c + ww, r, r + wh), face,
                    _window_groups(rng, len(c), self.lit))
        if self.roof is not None:
            slope = _quads(s0, s1, lf, lf, height, height)
            slope[0, 2:, 1] = lf + side * 3.0
            slope[0, 2:, 2] = height + 2.6
            add(slope, -1, 6)
        self.details = (np.concatenate(quads), np.concatenate(face_of).astype(np.int64),
                        np.concatenate(groups).astype(np.int64))
        shade = {0: self.shop, 1: _brighter(self.color, 1.1), 2: self.glass,
                 3: _brighter(self.glass, 1.35), 4: (255, 214, 140), 6: self.roof}
        self.shade = [(k, v) for k, v in shade.items() if v is not None]

    def prepare(self, fr: Frame) -> None:
        if self.verts is None:
            self._make_box()
        self.near_d = self.near(fr)
        self.hb = fr.add_boxes(self.verts, self.colors, _BUILDING_FACES)
        self.hd = None
        far = min(FAR_DETAIL, 0.4 * fr.f)      # windows of 2-3 pixels at most are left out
        if self.near_d < (far if self.layer else far / 2):
            if self.details is None:
                self._make_details()
            self.hd = fr.add_points(self.details[0])
        self.hs = fr.add_points(self.shadow_quad) if self.shadow_quad is not None else None

    def draw(self, fr: Frame) -> None:
        vis = fr.paint_boxes(self.hb, 1, BUILDING)[0]
        if self.hd is None or not vis.any():
            return
        _, face_of, groups = self.details
        fx = fr.fx(self.hd)                                    # (n, 4, 2) fixed point
        size = np.abs(fx[:, 2] - fx[:, 0]).min(1)              # quad extent, both axes
        keep = np.append(vis, True)[face_of] & (size >= 10) & (fr.dist(self.hd).min(1) > NEAR)
        if not keep.any():
            return
        d = max(self.near_d, NEAR) + 0.5 * (self.s1 - self.s0)
        for g, rgb in self.shade:
            sel = keep & (groups == g)
            if sel.any():
                col = fr.lit(rgb, (0.0, -self.side, 0.0), d) if g == 0 else fr.fogged(rgb, d)
                fr.fill_fx(fx[sel], col, BUILDING if g == 6 else None)

    def shadow(self, fr: Frame) -> None:
        if self.hs is not None:
            fr.shade_ground(fr.fx(self.hs))


_ROOFS = ((150, 70, 56), (96, 92, 96), (120, 84, 70))
_SHOPS = ((70, 60, 56), (120, 40, 40), (40, 60, 90), (200, 190, 170))
_BUILDING_FACES = np.array([[False, False, True, True, True, True]])


def _window_groups(rng: np.random.Generator, n: int, lit: float) -> np.ndarray:
    """Colour group per window: 2 glass, 3 bright glass, 4 lit from inside."""
    r = rng.random(n)
    return np.where(r < lit, 4, np.where(r < 0.5 + lit / 2, 3, 2))


def _ring(s: float, lat: float, r: float, n: int = 8) -> np.ndarray:
    """(n, 3) polygon approximating a circle of radius r on the ground."""
    a = np.arange(n) * (2 * math.pi / n)
    return np.stack([s + r * np.cos(a), lat + r * np.sin(a), np.zeros(n)], 1)


class _Tree(_Obj):
    """A broadleaf tree (a crown of overlapping discs) or a conifer (stacked triangles)."""

    __slots__ = ('pts', 'radii', 'tones', 'trunk_w', 'bark', 'foliage', 'conifer',
                 'shadow_ring', 'h', 'hs')

    def __init__(self, rng: np.random.Generator, drive: 'Drive', s: float, lat: float, y0: float,
                 layer: int, scale: float = 1.0) -> None:
        self.s0 = self.s1 = s
        self.speed, self.layer, self.far = 0.0, layer, FAR_STREET
        style = drive.style
        self.conifer = rng.random() < 0.15
        radius = _u(rng, (1.6, 3.2)) * scale
        trunk = _u(rng, (1.8, 3.2)) * scale
        self.foliage = _jitter(rng, _pick(rng, style.foliage), 8)
        self.bark = _pick(rng, style.bark)
        self.trunk_w = 0.28 * scale
        top = y0 + trunk
        pts = [(s, lat, y0), (s, lat, top + 0.6 * radius)]
        if self.conifer:
            h = radius * 3.2
            for k in range(3):
                yb, wd = top - 0.6 + k * h * 0.28, radius * (1.0 - 0.25 * k)
                pts += [(s, lat - wd, yb), (s, lat + wd, yb), (s, lat, yb + h * 0.5)]
            self.radii = np.zeros(0)
            self.tones = np.array([0.8, 0.9, 1.0])
        else:
            n = int(rng.integers(6, 11))
            tones = np.sort(rng.uniform(0.7, 1.15, n))          # dark blobs first
            ds = rng.normal(0, 0.35 * radius, n)
            dl = rng.normal(0, 0.45 * radius, n)
            dy = rng.normal(0, 0.3 * radius, n)
            pts += list(zip(s + ds, lat + dl, top + radius + dy))
            self.radii = rng.uniform(0.45, 0.7, n) * radius
            self.tones = tones
        self.pts = np.asarray(pts, np.float64)
        self.shadow_ring = None
        sun = drive.sun
        if drive.weather.sun > 0.05:
            reach = (trunk + radius) / max(sun[2], 0.25)
            self.shadow_ring = _ring(s - sun[0] * reach, lat - sun[1] * reach, radius)

    def prepare(self, fr: Frame) -> None:
        self.h = fr.add_points(self.pts)
        self.hs = fr.add_points(self.shadow_ring) if self.shadow_ring is not None else None

    def draw(self, fr: Frame) -> None:
        px, dist = fr.px(self.h), fr.dist(self.h)
        d = max(float(dist[0]), NEAR)
        fr.stick(px[0], px[1], fr.f * self.trunk_w / d, fr.fogged(self.bark, d), VEGETATION)
        if self.conifer:
            fx = fr.fx(self.h)
            for k in range(3):
                fr.fill_fx([fx[2 + 3 * k:5 + 3 * k]], fr.fogged(_scale(self.foliage,
                                                                       self.tones[k]), d),
                           VEGETATION)
            return
        light = fr.ambient + 0.2
        crown_px = fr.f * self.radii.max() / d
        if crown_px < 4.0:    # far away: one disc for the whole crown
            fr.disc(px[2:].mean(0), 1.5 * crown_px,
                    fr.fogged(_scale(self.foliage, light + 0.05), d), VEGETATION)
            return
        for i, (r, tone) in enumerate(zip(self.radii, self.tones)):
            dd = max(float(dist[2 + i]), NEAR)
            lum = light + fr.sun_k * 0.5 * (tone - 0.7) + (tone - 0.9) * 0.4
            fr.disc(px[2 + i], fr.f * r / dd, fr.fogged(_scale(self.foliage, lum), dd),
                    VEGETATION)

    def shadow(self, fr: Frame) -> None:
        if self.hs is not None:
            fr.shade_ground(fr.fx(self.hs))


class _Hedge(_Obj):
    __slots__ = ('verts', 'colors', 'mask', 'h')

    def __init__(self, s0: float, s1: float, la: float, lb: float, height: float,
                 color: Color, layer: int) -> None:
        self.s0, self.s1, self.speed, self.layer, self.far = s0, s1, 0.0, layer, FAR_STREET
        self.verts = box(s0, s1, la, lb, 0.0, height, 0.1, 0.1, 0.1)[None]
        self.colors = np.broadcast_to(np.asarray(color, np.float64), (1, 6, 3))
        self.mask = np.array([[False, True, True, True, True, True]])

    def prepare(self, fr: Frame) -> None:
        self.h = fr.add_boxes(self.verts, self.colors, self.mask)

    def draw(self, fr: Frame) -> None:
        fr.paint_boxes(self.h, 1, VEGETATION)


_SIGNS = (('circle', 0.32, (200, 30, 36), (240, 240, 240)),
          ('circle', 0.32, (30, 80, 170), (30, 80, 170)),
          ('triangle', 0.45, (200, 30, 36), (240, 240, 240)),
          ('square', 0.32, (30, 80, 170), (240, 240, 240)),
          ('diamond', 0.32, (240, 240, 240), (240, 200, 30)),
          ('octagon', 0.34, (200, 30, 36), (200, 30, 36)))
_SIGN_SIDES = {'circle': (12, 0.0), 'triangle': (3, math.pi / 2), 'square': (4, math.pi / 4),
               'diamond': (4, 0.0), 'octagon': (8, math.pi / 8)}
_LAMPS = ((230, 40, 30), (240, 170, 30), (60, 220, 110))


class _Pole(_Obj):
    """
    A street lamp, a sign post or a traffic light (on a post or a mast over the road).

    Signs and lights face ``facing`` (-1: towards traffic driving +s); from behind, the grey
    back of a sign and the dark box of a light are seen.
    """

    __slots__ = ('kind', 'facing', 'color', 'pts', 'parts', 'lamp', 'light_box', 'h', 'hb')

    def __init__(self, rng: np.random.Generator, drive: 'Drive', s: float, lat: float, side: int,
                 kind: str, facing: float) -> None:
        self.s0 = self.s1 = s
        self.speed, self.layer, self.far = 0.0, 2, FAR_STREET
        self.kind, self.facing = kind, facing
        self.color = _pick(rng, ((120, 122, 124), (90, 96, 90), (150, 150, 146)))
        y0 = drive.params.kerb_height
        pts = [(s, lat, y0)]
        self.parts: List[Tuple] = []    # (what, start, stop, colours...) into pts
        self.light_box = None
        self.lamp = int(rng.integers(3))
        if kind == 'lamp':
            top = _u(rng, (6.5, 9.0))
            arm = lat - side * 1.8
            pts += [(s, lat, top), (s, arm, top + 0.25), (s, arm - 0.35, top),
                    (s, arm + 0.35, top), (s, arm + 0.35, top + 0.28), (s, arm - 0.35, top + 0.28)]
            self.parts = [('head', 3, 7)]
        elif kind == 'sign':
            top = _u(rng, (2.2, 2.8))
            pts.append((s, lat, top))
            y = top
            for _ in range(1 if rng.random() < 0.7 else 2):
                shape, r, rim, inner = _pick(rng, _SIGNS)
                n, phase = _SIGN_SIDES[shape]
                ang = phase + np.arange(n) * 2 * math.pi / n
                ls = lat - side * 0.2
                k = 0.62 if shape == 'triangle' else 0.75
                start = len(pts)
                pts += [(s, ls + r * math.cos(a), y + r + r * math.sin(a)) for a in ang]
                pts += [(s, ls + k * r * math.cos(a), y + r + k * r * math.sin(a)) for a in ang]
                self.parts.append(('sign', start, n, rim, inner))
                y += 2 * r + 0.12
        else:
            mast = rng.random() < 0.5
            top = 5.6 if mast else _u(rng, (2.6, 3.2))
            pts.append((s, lat, top))
            l_light = lat
            if mast:
                l_light = lat - side * (2.5 + drive.params.lane_width)
                pts.append((s, l_light - side * 0.2, top))
                self.parts.append(('mast', 2, 3))
                top -= 0.1
            self.light_box = box(s - 0.15, s + 0.15, l_light - 0.18, l_light + 0.18, top - 0.95,
                                 top)[None]
            s_face = s + 0.16 * facing
            start = len(pts)
            pts += [(s_face, l_light, top - 0.17 - 0.3 * k) for k in range(3)]
            self.parts.append(('lamps', start, 3))
        self.pts = np.asarray(pts, np.float64)

    def prepare(self, fr: Frame) -> None:
        self.h = fr.add_points(self.pts)
        self.hb = None
        if self.light_box is not None:
            self.hb = fr.add_boxes(self.light_box, np.full((1, 6, 3), 34.0),
                                   np.ones((1, 6), bool))

    def draw(self, fr: Frame) -> None:
        px, fx = fr.px(self.h), fr.fx(self.h)
        d = max(float(fr.dist(self.h)[0]), NEAR)
        col = fr.fogged(self.color, d)
        fr.stick(px[0], px[1], fr.f * 0.14 / d, col, POLE)
        front = self.facing == -fr.dir
        for part in self.parts:
            what = part[0]
            if what == 'head':
                fr.stick(px[1], px[2], fr.f * 0.08 / d, col, POLE)
                fr.fill_fx([fx[part[1]:part[2]]], col, POLE)
            elif what == 'mast':
                fr.stick(px[1], px[2], fr.f * 0.14 / d, col, POLE)
            elif what == 'sign':
                _, start, n, rim, inner = part
                if not front:
                    rim = inner = (110, 112, 116)
                fr.fill_fx([fx[start:start + n]], fr.fogged(rim, d), TRAFFIC_SIGN)
                if rim != inner:
                    fr.fill_fx([fx[start + n:start + 2 * n]], fr.fogged(inner, d), TRAFFIC_SIGN)
            elif what == 'lamps':
                fr.paint_boxes(self.hb, 1, TRAFFIC_LIGHT)
                if front:
                    for k in range(3):
                        on = _LAMPS[k] if k == self.lamp else _scale(_LAMPS[k], 0.3)
                        fr.disc(px[part[1] + k], fr.f * 0.1 / d, fr.fogged(on, d), TRAFFIC_LIGHT)


# Car shapes: parts (a0, a1, b_half, y0, y1, inset_rear, inset_front, inset_side, role) in the
# car's frame (a forward from the centre, b across), wheel axles, wheel radius, label.
_SHAPES: Dict[str, Tuple] = {
    'sedan': (((-2.25, 2.25, 0.9, 0.3, 0.95, 0.05, 0.18, 0.04, 'body'),
               (-1.4, 1.0, 0.85, 0.95, 1.45, 0.5, 0.75, 0.14, 'cabin')),
              (-1.35, 1.4), 0.33, CAR),
    'hatchback': (((-2.0, 2.0, 0.87, 0.3, 0.95, 0.03, 0.2, 0.04, 'body'),
                   (-1.92, 0.85, 0.83, 0.95, 1.5, 0.22, 0.72, 0.14, 'cabin')),
                  (-1.25, 1.3), 0.32, CAR),
    'suv': (((-2.3, 2.3, 0.95, 0.4, 1.1, 0.03, 0.15, 0.04, 'body'),
             (-2.2, 1.0, 0.9, 1.1, 1.78, 0.15, 0.6, 0.12, 'cabin')),
            (-1.45, 1.45), 0.38, CAR),
    'van': (((-2.5, 2.5, 1.0, 0.35, 1.15, 0.02, 0.25, 0.03, 'body'),
             (-2.48, 1.55, 0.98, 1.15, 2.15, 0.02, 0.55, 0.06, 'panel')),
            (-1.7, 1.8), 0.36, CAR),
    'truck': (((-4.0, 4.0, 1.2, 0.55, 0.95, 0.0, 0.0, 0.0, 'dark'),
               (2.1, 4.0, 1.2, 0.95, 3.0, 0.0, 0.15, 0.05, 'cab'),
               (-4.0, 1.95, 1.25, 0.95, 3.6, 0.0, 0.0, 0.0, 'cargo')),
              (-3.1, -2.0, 3.0), 0.5, TRUCK),
}
_CAR_SHAPES = ('sedan', 'sedan', 'sedan', 'hatchback', 'hatchback', 'suv', 'suv', 'van',
               'truck')
_TIRE = (26, 26, 28)
_CARGO = ((226, 226, 222), (200, 200, 196), (180, 40, 36), (40, 80, 140))


@functools.lru_cache(maxsize=None)
def _shape_geometry(name: str) -> Tuple[np.ndarray, Tuple[str, ...], np.ndarray, np.ndarray,
                                        np.ndarray, Tuple[int, ...]]:
    """
    Local boxes of a car shape: bodies, their roles, wheels, detail quads and their faces.

    Details are (m, 4, 3) quads on the main body's rear or front face, with (m,) face index
    and (m,) colour key (0 tail light, 1 plate, 2 head lamp, 3 grille, 4 windscreen).
    """
    parts, axles, radius, _ = _SHAPES[name]
    bodies = np.stack([box(a0, a1, -bh, bh, y0, y1, ir, if_, ib)
                       for a0, a1, bh, y0, y1, ir, if_, ib, _ in parts])
    roles = tuple(p[-1] for p in parts)
    half = parts[0][2]
    wheels = np.stack([box(ax - radius, ax + radius, b0, b0 + 0.28, 0.0, 2 * radius,
                           0.12 * radius, 0.12 * radius)
                       for ax in axles for b0 in (-half - 0.02, half - 0.26)])
    main = parts[1] if name == 'truck' else parts[0]
    a0, a1, _, y0, y1 = main[:5]
    quads, faces, keys = [], [], []

    def quad(a: float, b0: float, b1: float, ya: float, yb: float, face: int, key: int) -> None:
        quads.append([[a, b0, ya], [a, b1, ya], [a, b1, yb], [a, b0, yb]])
        faces.append(face)
        keys.append(key)

    if name != 'truck':
        for sgn in (-1, 1):
            quad(a0 - 0.01, sgn * (half - 0.06), sgn * (half - 0.3), y1 - 0.24, y1 - 0.08,
                 F_ALOW, 0)
        quad(a0 - 0.01, -0.26, 0.26, y0 + 0.12, y0 + 0.25, F_ALOW, 1)
    for sgn in (-1, 1):
        quad(a1 + 0.01, sgn * (half - 0.08), sgn * (half - 0.38), y1 - 0.22 if name != 'truck'
             else y0 + 0.35, y1 - 0.07 if name != 'truck' else y0 + 0.5, F_AHIGH, 2)
    quad(a1 + 0.01, -0.4, 0.4, y0 + 0.1, y0 + 0.4, F_AHIGH, 3)
    if name == 'truck':
        quad(a1 + 0.01, -1.05, 1.05, y1 - 1.1, y1 - 0.15, F_AHIGH, 4)
    return bodies, roles, wheels, np.asarray(quads, np.float64), np.asarray(faces), tuple(keys)


class _Car(_Obj):
    """A car, SUV, van or truck: wheel boxes, a body, a cabin, lamps and plates."""

    __slots__ = ('label', 'verts', 'colors', 'mask', 'n_wheels', 'main', 'details',
                 'detail_faces', 'detail_colors', 'shadow_quad', 'hb', 'hd', 'hs', 'near_d')

    def __init__(self, rng: np.random.Generator, drive: 'Drive', s: float, lat: float,
                 heading: float, speed: float, shape: Optional[str] = None) -> None:
        style = drive.style
        shape = shape or _pick(rng, _CAR_SHAPES)
        half_len = 4.0 if shape == 'truck' else 2.5
        self.s0, self.s1 = s - half_len, s + half_len
        self.speed, self.layer, self.far = speed, 2, FAR_STREET
        bodies, roles, wheels, details, faces, keys = _shape_geometry(shape)
        self.label = _SHAPES[shape][3]
        paint = np.asarray(_jitter(rng, _pick(rng, style.paints), 6), np.float64)
        glass = np.asarray(_pick(rng, style.glass), np.float64)
        cargo = np.asarray(_pick(rng, _CARGO), np.float64)
        dark = np.full(3, 40.0)
        role_colors = {'body': [paint] * 6, 'cabin': [paint, paint, glass, glass, glass, glass],
                       'panel': [paint] * 5 + [glass], 'dark': [dark] * 6, 'cab': [paint] * 6,
                       'cargo': [cargo] * 6}
        colors = [[np.full(3, 26.0)] * 6] * len(wheels) + [role_colors[r] for r in roles]
        self.colors = np.asarray(colors, np.float64)                 # (n, 6, 3)
        self.mask = np.ones(self.colors.shape[:2], bool)
        self.mask[:, 0] = False                                       # bottoms
        self.n_wheels = len(wheels)
        self.main = self.n_wheels + (1 if shape == 'truck' else 0)
        local = np.concatenate([wheels, bodies])
        self.verts = self._place(local, s, lat, heading)
        self.details = self._place(details, s, lat, heading)
        self.detail_faces = faces
        palette = ((200, 28, 26), (220, 220, 214), (236, 232, 210), (30, 30, 32),
                   tuple(int(c) for c in glass))
        self.detail_colors = tuple(palette[k] for k in keys)
        hl, hw = half_len + 0.1, 1.05 if shape != 'truck' else 1.3
        sun = drive.sun
        ds, dl = -sun[0] * 0.8 * drive.weather.sun, -sun[1] * 0.8 * drive.weather.sun
        self.shadow_quad = _quads(s - hl + ds, s + hl + ds, lat - hw + dl, lat - hw + dl, 0.0,
                                  0.0)[0]
        self.shadow_quad[2:, 1] = lat + hw + dl

    @staticmethod
    def _place(local: np.ndarray, s: float, lat: float, heading: float) -> np.ndarray:
        out = local.copy()
        out[..., 0] = s + heading * local[..., 0]
        out[..., 1] = lat + heading * local[..., 1]
        return out

    def prepare(self, fr: Frame) -> None:
        self.near_d = self.near(fr)
        shift = np.array([self.speed * fr.t, 0.0, 0.0])
        self.hb = fr.add_boxes(self.verts + shift, self.colors, self.mask)
        self.hd = fr.add_points(self.details + shift) if self.near_d < 70 else None
        self.hs = fr.add_points(self.shadow_quad + shift)

    def draw(self, fr: Frame) -> None:
        if self.near_d < 60:
            fr.paint_boxes(self.hb, self.n_wheels, self.label, fr.fogged(_TIRE, self.near_d))
        vis = fr.paint_boxes(self.hb + self.n_wheels, len(self.colors) - self.n_wheels,
                             self.label)
        if self.hd is None:
            return
        main_vis = vis[self.main - self.n_wheels]
        fx = fr.fx(self.hd)
        d = self.near_d + 2.0
        for i, face in enumerate(self.detail_faces):
            if main_vis[face]:
                fr.fill_fx(fx[i:i + 1], fr.fogged(self.detail_colors[i], d), None)

    def shadow(self, fr: Frame) -> None:
        fr.shade_ground(fr.fx(self.hs))


_SKIN = ((236, 200, 170), (200, 150, 110), (150, 100, 70), (96, 64, 44))
_CLOTHES = ((40, 40, 46), (30, 50, 90), (150, 30, 36), (200, 200, 196), (90, 90, 96),
            (110, 80, 50), (60, 100, 60), (230, 180, 40), (70, 40, 90))
_HAIR = ((30, 24, 20), (90, 60, 36), (180, 150, 100), (140, 140, 140))
# A standing figure in body heights: (x, y) polygons, x across, y up from the feet.
_LEG = np.array([[-0.02, 0.47], [0.055, 0.47], [0.045, 0.0], [-0.03, 0.0]])
_TORSO = np.array([[-0.115, 0.82], [0.115, 0.82], [0.095, 0.45], [-0.095, 0.45]])
_ARM = np.array([[-0.03, 0.8], [0.01, 0.8], [0.02, 0.45], [-0.02, 0.45]])
_BAG = np.array([[0.1, 0.75], [0.2, 0.75], [0.2, 0.5], [0.1, 0.5]])
_FIGURE = np.stack([_LEG, _LEG * [-1, 1], _TORSO, _ARM + [-0.125, 0], _ARM * [-1, 1] + [0.125, 0],
                    _BAG])   # legs, torso, arms, bag


class _Person(_Obj):
    """A pedestrian standing or walking along the sidewalk, seen from the front or back."""

    __slots__ = ('pts', 'skin', 'shirt', 'legs', 'hair', 'phase', 'bag', 'h')

    def __init__(self, rng: np.random.Generator, drive: 'Drive', s: float, lat: float,
                 speed: float) -> None:
        self.s0 = self.s1 = s
        self.speed, self.layer, self.far = speed, 2, FAR_STREET
        y0 = drive.params.kerb_height
        self.pts = np.array([[s, lat, y0], [s, lat, y0 + _u(rng, (1.55, 1.92))]])
        self.skin, self.shirt = _pick(rng, _SKIN), _pick(rng, _CLOTHES)
        self.legs, self.hair = _pick(rng, _CLOTHES[:6]), _pick(rng, _HAIR)
        self.phase = float(rng.uniform(0, 2 * math.pi))
        self.bag = rng.random() < 0.3

    def prepare(self, fr: Frame) -> None:
        self.h = fr.add_points(self.pts + np.array([self.speed * fr.t, 0.0, 0.0]))

    def draw(self, fr: Frame) -> None:
        foot, head = fr.px(self.h)
        d = max(float(fr.dist(self.h)[0]), NEAR)
        up = head - foot
        hp = math.hypot(up[0], up[1])
        if hp < 6.0:
            fr.stick(foot, head, max(1.0, hp * 0.22), fr.fogged(self.shirt, d), PERSON)
            return
        step = self.phase + (self.s0 + self.speed * fr.t) / 0.7
        swing = 0.05 * math.sin(step) if self.speed else 0.0
        lift = 0.02 * abs(math.sin(step)) if self.speed else 0.0
        local = _FIGURE.copy()                                  # (6, 4, 2) body heights
        local[0] += (-0.07 + 0.3 * swing, lift)
        local[1] += (0.07 - 0.3 * swing, 0.02 - lift)
        local[3, :, 0] -= 0.2 * swing
        local[4, :, 0] += 0.2 * swing
        # x across (image right, as long as ``up``), y along ``up``, from the feet
        basis = np.array([[-up[1], up[0]], [up[0], up[1]]])
        polys = fixed(local @ basis + foot)
        # legs, torso, arms and bag overlap: one fill each (or per pair that does not)
        fr.fill_fx(polys[:2], fr.fogged(self.legs, d), PERSON)
        fr.fill_fx(polys[2:3], fr.fogged(self.shirt, d), PERSON)
        fr.fill_fx(polys[3:5], fr.fogged(_scale(self.shirt, 0.85), d), PERSON)
        if self.bag:
            fr.fill_fx(polys[5:6], fr.fogged((60, 44, 36), d), PERSON)
        fr.disc(foot + 0.905 * up, hp * 0.065, fr.fogged(self.skin, d), PERSON)
        fr.disc(foot + 0.93 * up, hp * 0.055, fr.fogged(self.hair, d), PERSON)


# --------------------------------------------------------------------------- the world

class _Chunk:
    __slots__ = ('objects', 'terrain', 'patches', 'crosswalk')

    def __init__(self) -> None:
        self.objects: List[_Obj] = []
        self.terrain: List[Tuple[float, float, int]] = []        # (s0, s1, side)
        self.patches: List[Tuple[float, float, float, float, Color]] = []
        self.crosswalk: Optional[float] = None


class Drive:
    """One drive: a world along a road and a car driving through it at constant speed."""

    def __init__(self, params: DriveParams) -> None:
        self.params = p = params
        self.style: DomainStyle = domain_style(p.domain)
        self.weather: Weather = WEATHERS[p.weather]
        self.sun = np.asarray(p.sun)
        w = p.lane_width
        self.road_right = p.lanes_forward * w + p.parking[1]
        self.road_left = -(p.lanes_oncoming * w + p.parking[0]) \
            - (0.0 if p.lanes_oncoming else 0.3)
        self.walk_right = self.road_right + p.sidewalk[1]
        self.walk_left = self.road_left - p.sidewalk[0]
        self._cache: Dict[Tuple[int, int], _Chunk] = {}
        self._skylines: Dict[str, Tuple] = {}
        self._streams = [(0, 0.0)]  # (stream id, speed): scenery, lanes, sidewalks
        self._streams += [(1 + i, v) for i, v in enumerate(p.lane_speeds)]
        self._streams += [(10 + i, p.oncoming_speed) for i in range(p.lanes_oncoming)]
        self._streams += [(20 + k, 1.3 if k % 2 == 0 else -1.3) for k in range(4)]

    # -- layout
    def lane_center(self, lane: int) -> float:
        """Lateral position of forward lane ``lane`` (0 = next to the centre line)."""
        return (lane + 0.5) * self.params.lane_width

    def edge(self, side: int) -> float:
        return self.road_right if side > 0 else self.road_left

    def outer(self, side: int) -> float:
        return self.walk_right if side > 0 else self.walk_left

    def _walk_l(self, rng: np.random.Generator, side: int) -> float:
        a, b = self.edge(side) + side * 0.9, self.outer(side) - side * 0.4
        return float(rng.uniform(min(a, b), max(a, b)))

    # -- chunks
    def _chunk(self, stream: int, k: int) -> _Chunk:
        chunk = self._cache.get((stream, k))
        if chunk is None:
            if len(self._cache) > 400:
                self._cache.clear()
            rng = np.random.default_rng([self.params.seed, stream, k + _KOFF])
            chunk = self._static(rng, k) if stream == 0 else self._moving(rng, stream, k)
            self._cache[(stream, k)] = chunk
        return chunk

    def _static(self, rng: np.random.Generator, k: int) -> _Chunk:
        p, st = self.params, self.style
        ch = _Chunk()
        s0, s1 = k * CHUNK, (k + 1) * CHUNK
        if rng.random() < 0.2:
            ch.crosswalk = _u(rng, (s0 + 6, s1 - 6))
        for _ in range(int(rng.integers(0, 3))):
            a = _u(rng, (s0, s1))
            la = _u(rng, (self.road_left, self.road_right - 1))
            ch.patches.append((a, a + _u(rng, (1.5, 8)), la, la + _u(rng, (0.8, 3)),
                               _scale(p.asphalt, float(rng.choice([0.85, 0.9, 1.1, 1.15])))))
        for side in (-1, 1):
            edge, outer = self.edge(side), self.outer(side)
            front = outer + side * 0.3
            if rng.random() < st.park_rate:
                ch.terrain.append((s0, s1, side))
                if rng.random() < 0.5:
                    la, lb = sorted((outer + side * 0.4, outer + side * 1.4))
                    ch.objects.append(_Hedge(s0, s1, la, lb, _u(rng, (0.8, 1.5)),
                                             _scale(_pick(rng, st.foliage), 0.85), 1))
                for _ in range(int(rng.integers(3, 9))):
                    ch.objects.append(_Tree(rng, self, _u(rng, (s0, s1)),
                                            outer + side * _u(rng, (2.0, 13.0)), 0.0, 1,
                                            scale=_u(rng, (1.0, 1.6))))
                self._buildings(rng, ch, s0, s1, side, front + side * _u(rng, (28, 60)), 0)
            else:
                self._buildings(rng, ch, s0, s1, side, front, 1)
                self._buildings(rng, ch, s0, s1, side, front + side * _u(rng, (16, 24)), 0)
                if rng.random() < st.street_tree_rate:
                    spacing = _u(rng, (9, 15))
                    for s in np.arange(s0 + rng.uniform(0, spacing), s1, spacing):
                        ch.objects.append(_Tree(rng, self, float(s), edge + side * 0.9,
                                                p.kerb_height, 2))
            self._street_furniture(rng, ch, s0, s1, side)
        return ch

    def _street_furniture(self, rng: np.random.Generator, ch: _Chunk, s0: float, s1: float,
                          side: int) -> None:
        """Lamps at regular spacing, sign posts, traffic lights, parked cars, people."""
        p, st = self.params, self.style
        edge = self.edge(side)
        facing = -1.0 if side > 0 else 1.0
        first = math.ceil((s0 - p.lamp_phase) / p.lamp_spacing) - 1
        for j in range(first, first + 4):
            s = p.lamp_phase + j * p.lamp_spacing + (0 if side > 0 else p.lamp_spacing / 2)
            if s0 <= s < s1:
                ch.objects.append(_Pole(rng, self, s, edge + side * 0.45, side, 'lamp', -1.0))
        if rng.random() < 0.7:
            ch.objects.append(_Pole(rng, self, _u(rng, (s0, s1)), edge + side * 0.5, side,
                                    'sign', facing))
        if ch.crosswalk is not None:
            ch.objects.append(_Pole(rng, self, ch.crosswalk - 2.5 * side, edge + side * 0.5,
                                    side, 'light', facing))
        width = p.parking[(side + 1) // 2]
        if width > 0:
            l_park = edge - side * width / 2
            s = s0 + _u(rng, (0, 4))
            while s < s1 - 2.5:
                if rng.random() < 0.65 and (ch.crosswalk is None or abs(s - ch.crosswalk) > 6):
                    heading = float(rng.choice([-1.0, 1.0])) if side < 0 else 1.0
                    ch.objects.append(_Car(rng, self, s + 2.3, l_park, heading, 0.0,
                                           shape=_pick(rng, ('sedan', 'hatchback', 'suv',
                                                             'van'))))
                s += _u(rng, (5.2, 6.5))
        for _ in range(int(rng.poisson(st.pedestrian_rate * 0.1))):
            ch.objects.append(_Person(rng, self, _u(rng, (s0, s1)), self._walk_l(rng, side),
                                      0.0))

    def _buildings(self, rng: np.random.Generator, ch: _Chunk, s0: float, s1: float, side: int,
                   l_face: float, layer: int) -> None:
        s = s0
        while s < s1 - 0.5:
            end = min(s + (_u(rng, (9, 30)) if layer else _u(rng, (15, 40))), s1)
            height = _u(rng, (8, 24)) if layer else _u(rng, (12, 36))
            ch.objects.append(_Building(
                rng, self, s, end, side, l_face + side * _u(rng, (0, 0.4)), _u(rng, (9, 13)),
                height, _jitter(rng, _pick(rng, self.params.facades), 8), layer))
            s = end
            if layer and rng.random() < 0.3:
                s += _u(rng, (2, 7))

    def _moving(self, rng: np.random.Generator, stream: int, k: int) -> _Chunk:
        p, st = self.params, self.style
        ch = _Chunk()
        u0, u1 = k * CHUNK, (k + 1) * CHUNK
        if stream >= 20:
            side = -1 if stream < 22 else 1
            speed = 1.3 if stream % 2 == 0 else -1.3
            for _ in range(int(rng.poisson(st.pedestrian_rate * CHUNK / 100))):
                ch.objects.append(_Person(rng, self, _u(rng, (u0, u1)), self._walk_l(rng, side),
                                          speed * _u(rng, (0.8, 1.2))))
            return ch
        if stream >= 10:
            heading, speed = -1.0, p.oncoming_speed
            l_c = -(stream - 10 + 0.5) * p.lane_width
        else:
            heading, speed = 1.0, p.lane_speeds[stream - 1]
            l_c = self.lane_center(stream - 1)
        ego = stream == 1 + p.ego_lane
        u = u0 + _u(rng, (0, 10))
        while u < u1:
            if not (ego and -9.0 < u < 12.0):   # keep the ego car's own spot free
                ch.objects.append(_Car(rng, self, u, l_c + float(rng.normal(0, 0.12)), heading,
                                       speed))
            u += _u(rng, st.traffic_gap)
        return ch

    # -- rendering
    def _visible(self, fr: Frame) -> Tuple[List[_Obj], List[_Chunk]]:
        """Objects in view, in painting order, and the static chunks in view."""
        items, statics = [], []
        for stream, speed in self._streams:
            back, ahead = 40.0, (FAR_BUILDINGS if stream == 0 else FAR_STREET) + 10
            lo, hi = (fr.s_cam - back, fr.s_cam + ahead) if fr.dir > 0 else \
                (fr.s_cam - ahead, fr.s_cam + back)
            shift = speed * fr.t
            for k in range(int(math.floor((lo - shift - 10) / CHUNK)),
                           int(math.floor((hi - shift + 10) / CHUNK)) + 1):
                ch = self._chunk(stream, k)
                if stream == 0:
                    statics.append(ch)
                for ob in ch.objects:
                    dn = ob.near(fr)
                    if dn is not None:
                        items.append((ob.layer, -dn, len(items), ob))
        items.sort(key=lambda it: it[:3])
        return [it[3] for it in items], statics

    def render(self, frame_index: int, size: Tuple[int, int],
               view: str = 'front') -> Tuple[np.ndarray, np.ndarray]:
        """RGB (H, W, 3) uint8 image and (H, W) uint8 Cityscapes label ids of one frame."""
        if view not in VIEWS:
            raise ValueError(f'unknown view {view!r}; choose one of {list(VIEWS)}')
        w, h = int(size[0]), int(size[1])
        if w < 16 or h < 16:
            raise ValueError(f'image size {w}x{h} is too small (16x16 at least)')
        p = self.params
        t = int(frame_index) * DT
        front = view == 'front'
        sway = 0.12 * math.sin(0.35 * t + p.seed % 7)
        fr = Frame((w, h), p.front if front else p.rear, t,
                   s_cam=p.speed * t - (0.0 if front else 3.5),
                   l_cam=self.lane_center(p.ego_lane) + sway, direction=1.0 if front else -1.0,
                   curvature=p.curvature, weather=self.weather, sun=p.sun,
                   visibility=p.visibility)
        objects, statics = self._visible(fr)
        for ob in objects:
            ob.prepare(fr)
        fr.run_batch()
        pad = 63
        fr.paint_sky(SKY, (int(p.look.texture_offset[0] * pad),
                           int(p.look.texture_offset[1] * pad)))
        self._skyline(fr, view)
        self._ground(fr, statics)
        for ob in objects:
            ob.shadow(fr)
        fr.ground_light(SKY)
        for ob in objects:
            ob.draw(fr)
        if front and p.bonnet > 0:
            self._bonnet(fr)
        return fr.finish(p.look, GRAIN, BLOTCH, int(frame_index)), fr.lab

    def _skyline(self, fr: Frame, view: str) -> None:
        """Distant buildings and tree lines on the horizon, far beyond the modelled world."""
        cached = self._skylines.get(view)
        if cached is None:
            cached = self._skylines[view] = self._make_skyline(view)
        pts, counts, colors = cached
        px = fr.to_px(pts)
        start = 0
        for label, (n_polys, k) in counts.items():
            polys = fixed(px[start:start + n_polys * k].reshape(n_polys, k, 2))
            start += n_polys * k
            color = fr.fogged(colors[label], 0.8 * FAR_BUILDINGS)
            for poly in polys:          # neighbours share an edge: one fill each
                fr.fill_fx(poly[None], color, label)

    def _make_skyline(self, view: str) -> Tuple[np.ndarray, Dict[int, Tuple[int, int]],
                                                Dict[int, Color]]:
        """Camera-frame outlines of the skyline (1.5 km away) of one view of this drive."""
        rng = np.random.default_rng([self.params.seed, 99, 0 if view == 'front' else 1])
        cam = self.params.front if view == 'front' else self.params.rear
        dist, below = 1500.0, cam.height + 8.0   # camera-frame y of the silhouettes' base
        trees, blocks = [], []
        a = -1.6
        while a < 1.6:
            width = _u(rng, (0.02, 0.09))
            if rng.random() < 0.35:
                xs = np.linspace(a, a + width, 6) * dist
                tops = cam.height - rng.uniform(0.006, 0.02, 6) * dist
                trees.append(np.stack([np.concatenate([xs, xs[::-1]]),
                                       np.concatenate([tops, np.full(6, below)]),
                                       np.full(12, dist)], 1))
            else:
                top = cam.height - _u(rng, (0.005, 0.035)) * dist
                x0, x1 = a * dist, (a + width) * dist
                blocks.append(np.array([[x0, below, dist], [x1, below, dist], [x1, top, dist],
                                        [x0, top, dist]]))
            a += width
        colors = {BUILDING: _pick(rng, self.params.facades),
                  VEGETATION: _scale(_pick(rng, self.style.foliage), 0.9)}
        counts = {BUILDING: (len(blocks), 4), VEGETATION: (len(trees), 12)}
        pts = np.concatenate([np.concatenate(blocks) if blocks else np.zeros((0, 3)),
                              np.concatenate(trees) if trees else np.zeros((0, 3))])
        return pts, counts, colors

    def _ground(self, fr: Frame, statics: List[_Chunk]) -> None:
        p = self.params
        lo, hi = (fr.s_cam, fr.s_cam + FAR_GROUND) if fr.dir > 0 else \
            (fr.s_cam - FAR_GROUND, fr.s_cam)
        for side in (-1, 1):   # pavement beyond the sidewalks, out to the horizon
            fr.strip(self.outer(side), side * 2000.0, 0.0, 0.0, lo, hi, _scale(p.pavement, 0.92),
                     SIDEWALK)
        for ch in statics:
            for s0, s1, side in ch.terrain:
                fr.strip(self.outer(side), side * 2000.0, 0.0, 0.0, s0, s1, p.terrain, TERRAIN)
        for side in (-1, 1):
            fr.strip(self.edge(side), self.outer(side), p.kerb_height, 0, lo, hi, p.pavement,
                     SIDEWALK)
            fr.strip(self.edge(side), 0, 0.0, p.kerb_height, lo, hi, p.kerb, SIDEWALK,
                     vertical=True)
        fr.strip(self.road_left, self.road_right, 0.0, 0.0, lo, hi, p.asphalt, ROAD)
        for ch in statics:
            for s0, s1, l0, l1, col in ch.patches:
                fr.strip(l0, l1, 0.0, 0.0, s0, s1, col, ROAD, far=FAR_STREET)
        self._marks(fr, statics)

    def _marks(self, fr: Frame, statics: List[_Chunk]) -> None:
        """Lane lines (dashed or solid), the centre line and zebra crossings."""
        p, st = self.params, self.style
        w = p.lane_width
        lines = [(i * w, True, st.lane_white) for i in range(1, p.lanes_forward)]
        lines += [(-i * w, True, st.lane_white) for i in range(1, p.lanes_oncoming)]
        if p.lanes_oncoming:
            lines.append((0.0, p.dashed_center, st.center_line))
        if p.edge_lines:
            lines.append((p.lanes_forward * w - 0.25, False, st.lane_white))
            if p.lanes_oncoming:
                lines.append((-p.lanes_oncoming * w + 0.25, False, st.lane_white))
        half, far, period, dash = 0.07, 110.0, 9.0, 3.0
        lo = fr.s_cam + (NEAR if fr.dir > 0 else -far)
        hi = fr.s_cam + (far if fr.dir > 0 else -NEAR)
        for lat, dashed, col in lines:
            col = fr.fogged(col, 15.0)
            if not dashed:
                fr.strip(lat - half, lat + half, 0.0, 0.0, lo, hi, col, ROAD, far=far)
                continue
            starts = np.arange(math.floor(lo / period) * period, hi, period)
            a, b = np.maximum(starts, lo), np.minimum(starts + dash, hi)
            keep = b > a
            if keep.any():
                fr.fill(list(fr.project(*_quads(a[keep], b[keep], lat - half, lat + half, 0.0,
                                                0.0).transpose(2, 0, 1))), col, ROAD)
        for ch in statics:
            if ch.crosswalk is None or not NEAR < fr.depth(ch.crosswalk) < far:
                continue
            x = np.arange(self.road_left + 0.5, self.road_right - 0.5, 1.0)
            q = _quads(ch.crosswalk - 2.0, ch.crosswalk + 2.0, x, x + 0.5, 0.0, 0.0)
            q[:, 1:3, 0], q[:, 2:, 1] = ch.crosswalk + 2.0, (x + 0.5)[:, None]
            q[:, 1, 1] = x
            fr.fill(list(fr.project(*q.transpose(2, 0, 1))), fr.fogged(st.lane_white, 15.0),
                    ROAD)

    def _bonnet(self, fr: Frame) -> None:
        """Paint the ego car's bonnet along the bottom of the front view (label ego vehicle)."""
        top = fr.h * (1 - self.params.bonnet)
        xs = np.linspace(-0.1 * fr.w, 1.1 * fr.w, 24)
        ys = top + (fr.h - top) * 0.9 * ((xs - fr.cx) / (0.6 * fr.w)) ** 2
        poly = np.concatenate([np.stack([xs, ys], 1), [[1.1 * fr.w, fr.h + 2],
                                                       [-0.1 * fr.w, fr.h + 2]]])
        paint = _pick(np.random.default_rng([self.params.seed, 5]),
                      ((40, 40, 44), (24, 26, 30), (70, 72, 78)))
        fr.fill([poly], paint, EGO_VEHICLE)
        band = fr.h - top
        glare = np.concatenate([np.stack([xs[6:18], ys[6:18] + 0.12 * band], 1),
                                np.stack([xs[17:5:-1], ys[17:5:-1] + 0.22 * band], 1)])
        fr.fill([glare], _brighter(paint, 1.6), None)


# --------------------------------------------------------------------------- public helpers

SeedLike = Union[int, np.random.Generator]


def _seed_of(rng_or_seed: SeedLike) -> int:
    if isinstance(rng_or_seed, np.random.Generator):
        return int(rng_or_seed.integers(1 << 62))
    return int(rng_or_seed)


def render_frame(rng_or_seed: SeedLike, size: Tuple[int, int], domain: str = 'source',
                 frame_index: int = 0, sequence_params: Optional[DriveParams] = None,
                 view: str = 'front') -> Tuple[np.ndarray, np.ndarray]:
    """
    One frame: RGB (H, W, 3) uint8 and Cityscapes label ids (H, W) uint8.

    ``sequence_params`` (from :func:`sample_drive`) fixes the drive; without it a drive is drawn
    from ``rng_or_seed`` in ``domain``. ``frame_index`` counts 0.1 s steps along the drive.
    """
    params = sequence_params if sequence_params is not None else \
        sample_drive(_seed_of(rng_or_seed), domain)
    return Drive(params).render(frame_index, size, view)


def render_sequence(seed: int, n_frames: int, size: Tuple[int, int], domain: str = 'source',
                    view: str = 'front', start: int = 0,
                    stride: int = 1) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """
    Consecutive frames (0.1 s x ``stride`` apart) of the drive ``seed``, front or rear view.

    The same seed gives the same world in both views, so front and rear clips show one drive.
    """
    drive = Drive(sample_drive(seed, domain))
    for i in range(n_frames):
        yield drive.render(start + i * stride, size, view)
