"""
Painting for seg-synth: the camera, batched projection, fills, sky and the lens.

A :class:`Frame` is one picture being painted. World objects first register their geometry
(points and boxes, in road coordinates ``(s, l, y)``: metres along the road, to the right of its
centre line, and up), then :meth:`Frame.run_batch` projects everything at once with numpy, and
the objects paint themselves in painter's order with OpenCV fills that go into the RGB image and,
with the very same vertices, into the label map. Per-object numpy calls are what makes a small
frame slow, so they are kept out of the painting loop.
"""

from dataclasses import dataclass
import functools
import math
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from seg_training.synth.style import Color, Weather

NEAR = 1.0            # near clipping distance (m)
DT = 0.1              # seconds between frames
SHIFT = 4             # fixed-point bits of polygon vertices
_SCALE = float(1 << SHIFT)
_LIMIT = 4.0e6 * _SCALE  # fixed-point coordinates are clipped to +-this

# Hexahedron vertices are indexed ia + 2 * ib + 4 * iy (a along, b across, y up); its faces:
FACES = np.array([[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4],
                  [1, 5, 7, 3]])
F_BOTTOM, F_TOP, F_BLOW, F_BHIGH, F_ALOW, F_AHIGH = range(6)
Handle = Tuple[int, int, Tuple[int, ...]]


def box(a0: float, a1: float, b0: float, b1: float, y0: float, y1: float, ia0: float = 0.0,
        ia1: float = 0.0, ib: float = 0.0) -> np.ndarray:
    """(8, 3) hexahedron: bottom a0..a1 x b0..b1 at y0, top at y1 inset by ia0/ia1 and ib."""
    a = np.array([[a0, a1], [a0 + ia0, a1 - ia1]])      # (iy, ia)
    b = np.array([[b0, b1], [b0 + ib, b1 - ib]])        # (iy, ib)
    v = np.empty((2, 2, 2, 3))                          # (iy, ib, ia, xyz)
    v[..., 0] = a[:, None, :]
    v[..., 1] = b[:, :, None]
    v[..., 2] = np.array([y0, y1])[:, None, None]
    return v.reshape(8, 3)


def fixed(pts: np.ndarray) -> np.ndarray:
    """Pixel coordinates (..., 2) as int32 fixed point for OpenCV's ``shift`` argument."""
    a = pts * _SCALE
    np.minimum(a, _LIMIT, out=a)
    np.maximum(a, -_LIMIT, out=a)
    return a.astype(np.int32)


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = np.empty(np.broadcast_shapes(a.shape, b.shape))
    out[..., 0] = a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1]
    out[..., 1] = a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2]
    out[..., 2] = a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]
    return out


@dataclass(frozen=True)
class Camera:
    """A pinhole camera on the car: height (m), pitch down and roll (rad), focal in widths."""

    height: float
    pitch: float
    roll: float
    focal: float
    horizon: float      # row of the horizon as a fraction of the image height


@dataclass(frozen=True)
class Look:
    """Exposure and lens of one drive, applied after painting."""

    gain: float
    saturation: float
    noise: float
    vignette: float
    blur: float
    texture: float
    texture_offset: Tuple[float, float]


class Frame:
    """One frame being painted: camera pose, canvas, light, batch of geometry, fills."""

    def __init__(self, size: Tuple[int, int], camera: Camera, t: float, s_cam: float,
                 l_cam: float, direction: float, curvature: float, weather: Weather,
                 sun: Sequence[float], visibility: float) -> None:
        self.w, self.h = size
        self.t = t
        self.dir = direction
        self.s_cam, self.l_cam = s_cam, l_cam
        self.cam_h = camera.height + 0.01 * math.sin(9.0 * t)
        self.k = curvature
        pitch = camera.pitch + 0.003 * math.sin(7.3 * t)
        self.f = camera.focal * self.w
        self.cx = self.w / 2.0
        self.cy = camera.horizon * self.h + self.f * math.tan(pitch)
        self.horizon_v = camera.horizon * self.h
        cp, sp = math.cos(pitch), math.sin(pitch)
        self._cp, self._sp = cp, sp
        cr, sr = math.cos(camera.roll), math.sin(camera.roll)
        rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
        rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
        self.rot_t = (rz @ rx).T
        self.weather = weather
        self.sunv = np.asarray(sun, np.float64)
        self.ambient, self.sun_k = weather.ambient, weather.sun
        self.fog_rgb = np.asarray(weather.fog_color, np.float64)
        self.vis = visibility
        self.img = np.empty((self.h, self.w, 3), np.uint8)
        self.lab = np.zeros((self.h, self.w), np.uint8)
        self.shadow = np.zeros((self.h, self.w), np.uint8)
        self._pts: List[np.ndarray] = []
        self._n = 0
        self._boxes: List[Tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._nb = 0

    # ---------------------------------------------------------------- geometry
    def depth(self, s: float) -> float:
        """Distance along the view direction of road position ``s``."""
        return self.dir * (s - self.s_cam)

    def cam(self, s, lat, y) -> np.ndarray:
        """Camera-frame points (..., 3): x right, y down, z forward (before pitch and roll)."""
        shape = np.broadcast_shapes(np.shape(s), np.shape(lat), np.shape(y))
        out = np.empty(shape + (3,))
        d = out[..., 2]
        d[...] = s
        d -= self.s_cam
        d *= self.dir
        x = out[..., 0]
        x[...] = lat
        if self.k:
            x += 0.5 * self.k * d * d
        x -= self.l_cam
        x *= self.dir
        out[..., 1] = self.cam_h
        out[..., 1] -= y
        return out

    def to_px(self, c: np.ndarray) -> np.ndarray:
        """Pixels (..., 2) of camera-frame points (..., 3) in front of the camera."""
        r = c @ self.rot_t
        z = np.maximum(r[..., 2], 1e-3)
        out = np.empty(r.shape[:-1] + (2,))
        out[..., 0] = self.cx + self.f * r[..., 0] / z
        out[..., 1] = self.cy + self.f * r[..., 1] / z
        return out

    def clamp_near(self, c: np.ndarray) -> np.ndarray:
        """
        Move camera-frame points (..., 3) forwards, along the road, in front of the near plane.

        After pitching, depth is ``sin(pitch) * y + cos(pitch) * z``; points are pushed along z
        (the road direction) until it reaches NEAR, so edges along the road stay exact.
        """
        z_min = (NEAR - self._sp * c[..., 1]) / self._cp
        np.maximum(c[..., 2], z_min, out=c[..., 2])
        return c

    def project(self, s, lat, y) -> np.ndarray:
        """Pixels (..., 2) of road points, clamped to the near plane."""
        return self.to_px(self.clamp_near(self.cam(s, lat, y)))

    # ---------------------------------------------------------------- batch
    def add_points(self, pts: np.ndarray) -> Handle:
        """Register road points (..., 3) for :meth:`run_batch`; returns their handle."""
        k = pts.size // 3
        handle = (self._n, self._n + k, pts.shape[:-1])
        self._pts.append(pts.reshape(k, 3))
        self._n += k
        return handle

    def add_boxes(self, verts: np.ndarray, colors: np.ndarray, mask: np.ndarray) -> int:
        """
        Register hexahedra (n, 8, 3) with base colours (n, 6, 3) and faces to paint (n, 6).

        Returns the index of the first box for :meth:`paint_boxes`.
        """
        start = self._nb
        self._boxes.append((verts, colors, mask))
        self._nb += len(verts)
        return start

    def run_batch(self) -> None:
        """Project every registered point and box; cull back faces; light the faces."""
        pts = np.concatenate(self._pts) if self._pts else np.zeros((0, 3))
        c = self.cam(pts[:, 0], pts[:, 1], pts[:, 2])
        self.pt_depth = c[:, 2].copy()
        self.pt_px = self.to_px(self.clamp_near(c))
        self.pt_fx = fixed(self.pt_px)
        if not self._boxes:
            return
        verts = np.concatenate([b[0] for b in self._boxes])          # (B, 8, 3)
        base = np.concatenate([b[1] for b in self._boxes])           # (B, 6, 3)
        mask = np.concatenate([b[2] for b in self._boxes])           # (B, 6)
        c = self.cam(verts[..., 0], verts[..., 1], verts[..., 2])    # (B, 8, 3)
        behind = c[..., 2].max(1) < NEAR
        self.clamp_near(c)
        faces = c[:, FACES]                                           # (B, 6, 4, 3)
        ctr = faces.mean(2)                                           # (B, 6, 3)
        n = _cross(faces[:, :, 2] - faces[:, :, 0], faces[:, :, 3] - faces[:, :, 1])
        outward = ((ctr - c.mean(1, keepdims=True)) * n).sum(-1)
        facing = -(ctr * n).sum(-1)
        self.box_vis = (outward * facing > 1e-9) & mask & ~behind[:, None]
        wf = verts[:, FACES]
        nw = _cross(wf[:, :, 2] - wf[:, :, 0], wf[:, :, 3] - wf[:, :, 1])
        sign = np.sign(((wf.mean(2) - verts.mean(1, keepdims=True)) * nw).sum(-1))
        nw *= (sign / (np.linalg.norm(nw, axis=-1) + 1e-12))[..., None]
        lum = self.ambient + self.sun_k * np.maximum(nw @ self.sunv, 0) + 0.12 * nw[..., 2]
        fog = 1.0 - np.exp(-ctr[..., 2] / self.vis)                  # (B, 6)
        col = base * (lum * (1 - fog))[..., None] + self.fog_rgb * fog[..., None]
        self.box_col = np.clip(col, 0, 255).astype(np.int32)
        self.box_fx = fixed(self.to_px(c))                           # (B, 8, 2)

    def px(self, h: Handle) -> np.ndarray:
        return self.pt_px[h[0]:h[1]].reshape(h[2] + (2,))

    def fx(self, h: Handle) -> np.ndarray:
        return self.pt_fx[h[0]:h[1]].reshape(h[2] + (2,))

    def dist(self, h: Handle) -> np.ndarray:
        return self.pt_depth[h[0]:h[1]].reshape(h[2])

    # ---------------------------------------------------------------- colour
    def fogged(self, rgb: Sequence[float], d: float) -> Color:
        """``rgb`` seen through ``d`` metres of haze or fog."""
        w = 1.0 - math.exp(-max(d, 0.0) / self.vis)
        fr, fg, fb = self.fog_rgb
        return (int(min(rgb[0] * (1 - w) + fr * w, 255)),
                int(min(rgb[1] * (1 - w) + fg * w, 255)),
                int(min(rgb[2] * (1 - w) + fb * w, 255)))

    def lit(self, rgb: Sequence[float], normal: Sequence[float], d: float) -> Color:
        """``rgb`` on a face with road-frame ``normal``, lit by sun and sky, then fogged."""
        nd = normal[0] * self.sunv[0] + normal[1] * self.sunv[1] + normal[2] * self.sunv[2]
        lum = self.ambient + self.sun_k * max(0.0, nd) + 0.12 * normal[2]
        return self.fogged((rgb[0] * lum, rgb[1] * lum, rgb[2] * lum), d)

    # ---------------------------------------------------------------- painting
    def fill_fx(self, polys, color: Color, label: Optional[int]) -> None:
        """
        Fill fixed-point polygons (a list of (k, 2) or an (n, k, 2) array).

        Several polygons are filled with the even-odd rule: they must not overlap.
        """
        cv2.fillPoly(self.img, polys, color, cv2.LINE_8, SHIFT)
        if label is not None:
            cv2.fillPoly(self.lab, polys, label, cv2.LINE_8, SHIFT)

    def fill(self, polys: Sequence[np.ndarray], color: Color, label: Optional[int]) -> None:
        """Fill polygons given in pixels (a list of (k, 2) float arrays that do not overlap)."""
        self.fill_fx([fixed(p) for p in polys], color, label)

    def disc(self, center: Sequence[float], radius: float, color: Color,
             label: Optional[int]) -> None:
        c = (int(center[0] * _SCALE), int(center[1] * _SCALE))
        if not (-_LIMIT < c[0] < _LIMIT and -_LIMIT < c[1] < _LIMIT):
            return
        r = int(max(radius, 0.5) * _SCALE)
        cv2.circle(self.img, c, r, color, -1, cv2.LINE_8, SHIFT)
        if label is not None:
            cv2.circle(self.lab, c, r, label, -1, cv2.LINE_8, SHIFT)

    def stick(self, a: Sequence[float], b: Sequence[float], width_px: float, color: Color,
              label: Optional[int]) -> None:
        """Paint a segment from pixel a to pixel b, ``width_px`` wide (one pixel at least)."""
        vx, vy = b[0] - a[0], b[1] - a[1]
        n = math.hypot(vx, vy)
        if n < 1e-6:
            return
        k = max(width_px, 1.0) * 0.5 / n
        ox, oy = -vy * k, vx * k
        quad = np.array([[a[0] - ox, a[1] - oy], [b[0] - ox, b[1] - oy], [b[0] + ox, b[1] + oy],
                         [a[0] + ox, a[1] + oy]])
        self.fill_fx([fixed(quad)], color, label)

    def shade_ground(self, poly_fx: np.ndarray) -> None:
        """Mark a fixed-point polygon (k, 2) of the ground as in shadow."""
        cv2.fillPoly(self.shadow, [poly_fx], 255, cv2.LINE_8, SHIFT)

    def paint_boxes(self, start: int, count: int, label: int,
                    color: Optional[Color] = None) -> np.ndarray:
        """
        Paint the visible faces of registered boxes start..start+count; (count, 6) visible.

        Faces get their lit colours, or all ``color`` if given (one fill per box then).
        """
        vis = self.box_vis[start:start + count]
        ii, ff = np.nonzero(vis)
        if not len(ii):
            return vis
        polys = self.box_fx[start + ii[:, None], FACES[ff]]              # (k, 4, 2)
        cols = self.box_col[start + ii, ff].tolist() if color is None else None
        # OpenCV fills several polygons with the even-odd rule, so one fill per box: the
        # visible faces of a convex box never overlap, but two boxes may.
        boxes = ii.tolist()
        first = 0
        for k, i in enumerate(boxes):
            if cols is not None:
                cv2.fillPoly(self.img, polys[k:k + 1], cols[k], cv2.LINE_8, SHIFT)
            if k + 1 == len(boxes) or boxes[k + 1] != i:
                if cols is None:
                    cv2.fillPoly(self.img, polys[first:k + 1], color, cv2.LINE_8, SHIFT)
                cv2.fillPoly(self.lab, polys[first:k + 1], label, cv2.LINE_8, SHIFT)
                first = k + 1
        return vis

    def strip(self, l0: float, l1: float, y0: float, y1: float, s_lo: float, s_hi: float,
              color: Color, label: Optional[int], vertical: bool = False,
              far: float = 600.0) -> None:
        """Paint a ground strip l0..l1 at height y0 (or a wall y0..y1 at l0) over s_lo..s_hi."""
        d_a, d_b = sorted((self.depth(s_lo), self.depth(s_hi)))
        d_a, d_b = max(d_a, NEAR), min(d_b, far)
        if d_a >= d_b:
            return
        if self.k == 0:
            n, d = 2, np.array([d_a, d_b])
        else:   # a bending road: sample its edges densely near the camera
            n = int(math.log(d_b / d_a) * 6) + 2
            d = d_a * (d_b / d_a) ** np.linspace(0.0, 1.0, n)
        s = self.s_cam + self.dir * d
        ss = np.concatenate([s, s[::-1]])
        if vertical:
            pts = self.project(ss, l0, np.repeat([y0, y1], n))
        else:
            pts = self.project(ss, np.repeat([l0, l1], n), y0)
        self.fill_fx([fixed(pts)], color, label)

    # ---------------------------------------------------------------- whole-image passes
    def paint_sky(self, label: int, cloud_offset: Tuple[int, int]) -> None:
        """
        Sky gradient from horizon to zenith with clouds; everything is ``label`` at first.

        Only rows that can show above the horizon (roll included) are computed; the ground
        covers the rest.
        """
        wth, tex = self.weather, textures(self.w, self.h)
        rows_sky = int(min(self.h, max(0, self.horizon_v + 0.05 * self.w + 3)))
        zen = np.asarray(wth.sky_zenith, np.float32)
        hor = np.asarray(wth.sky_horizon, np.float32)
        fog = 1.0 - math.exp(-160.0 / self.vis)
        fog_rgb = self.fog_rgb.astype(np.float32)
        self.img[rows_sky:] = np.clip(hor * (1 - fog) + fog_rgb * fog, 0, 255).astype(np.uint8)
        self.lab[:] = label
        if rows_sky == 0:
            return
        rows = np.arange(rows_sky, dtype=np.float32)
        t = np.clip((self.horizon_v - rows) / (0.9 * self.h), 0, 1) ** 0.6   # 0 at horizon
        grad = hor[None] * (1 - t[:, None]) + zen[None] * t[:, None]          # (R, 3)
        ox, oy = cloud_offset
        alpha = tex['clouds'][oy:oy + rows_sky, ox:ox + self.w] - (1.2 - 2.2 * wth.clouds)
        alpha *= 0.6
        np.clip(alpha, 0, 0.95 if wth.clouds < 0.8 else 0.7, out=alpha)
        alpha *= np.clip(t * 3, 0.2, 1)[:, None]                              # (R, W)
        cloud = np.asarray(wth.cloud_color, np.float32)
        sky = grad[:, None, :] + (cloud - grad[:, None, :]) * alpha[..., None]
        sky *= 1 - fog
        sky += fog_rgb * fog
        np.clip(sky, 0, 255, out=sky)
        self.img[:rows_sky] = sky.astype(np.uint8)

    def ground_light(self, sky_label: int) -> None:
        """Cast shadows and distance fog on the ground painted so far (before any object)."""
        mask = self.shadow > 0
        if mask.any():
            strength = 0.45 * self.sun_k + 0.25
            self.img[mask] = (self.img[mask] * (1.0 - strength)).astype(np.uint8)
        v0 = int(max(0, math.floor(self.horizon_v - 0.05 * self.w)))
        # below row v1 the ground is near enough for fog to change it by less than 1 %
        v1 = int(min(self.h, self.horizon_v + self.f * self.cam_h / (0.01 * self.vis) + 1))
        if v0 >= v1:
            return
        rows = np.arange(v0, v1, dtype=np.float64) - self.horizon_v + 0.5
        dist = self.f * self.cam_h / np.maximum(rows, 0.5)
        wgt = (1.0 - np.exp(-dist / self.vis)).astype(np.float32)[:, None, None]
        band = self.img[v0:v1].astype(np.float32)
        band += (self.fog_rgb.astype(np.float32) - band) * wgt
        sky = (self.lab[v0:v1] == sky_label)[..., None]
        self.img[v0:v1] = np.where(sky, self.img[v0:v1], band.astype(np.uint8))

    def finish(self, look: Look, grain: np.ndarray, blotch: np.ndarray,
               frame_index: int) -> np.ndarray:
        """
        Make the camera's picture: surface texture by label, exposure, lens, rain and noise.

        ``grain`` and ``blotch`` are (256,) texture strengths per label.
        """
        wth, tex = self.weather, textures(self.w, self.h)
        pad = int(tex['pad'])
        ox, oy = int(look.texture_offset[0] * (pad - 1)), int(look.texture_offset[1] * (pad - 1))
        h, w = self.h, self.w
        t = grain[self.lab] * tex['grain'][oy:oy + h, ox:ox + w]
        t += blotch[self.lab] * tex['blotch'][oy:oy + h, ox:ox + w]
        t *= look.texture
        t += 1.0
        if look.vignette > 0:
            t *= 1.0 - look.vignette * tex['r2']
        img = self.img * t[..., None]                                  # (H, W, 3) float32
        img *= np.asarray(wth.tint, np.float32) * look.gain
        if abs(look.saturation - 1.0) > 1e-3:
            grey = img.mean(2, keepdims=True)
            img -= grey
            img *= look.saturation
            img += grey
        if wth.rain > 0:
            fall = int(frame_index * h * 0.21) % h
            img += (70.0 * wth.rain) * tex['rain'][fall:fall + h][..., None]
        if look.blur > 0.3:
            img = cv2.GaussianBlur(img, (0, 0), look.blur)
        n = frame_index * 7
        nx, ny = (ox + n) % pad, (oy + 3 * n) % pad
        img += look.noise * tex['sensor'][ny:ny + h, nx:nx + w]
        img += 0.5
        np.clip(img, 0, 255, out=img)
        return img.astype(np.uint8)


@functools.lru_cache(maxsize=4)
def textures(width: int, height: int) -> Dict[str, np.ndarray]:
    """Noise fields shared by all frames of one size (fixed seed: deterministic)."""
    pad = 64
    hp, wp = height + pad, width + pad
    rng = np.random.default_rng(20240917)

    def smooth(scale: int) -> np.ndarray:
        small = rng.standard_normal((hp // scale + 3, wp // scale + 3)).astype(np.float32)
        big = cv2.resize(small, (wp + 3 * scale, hp + 3 * scale), interpolation=cv2.INTER_CUBIC)
        big = big[scale:scale + hp, scale:scale + wp]
        return (big - big.mean()) / (big.std() + 1e-6)

    grain = cv2.GaussianBlur(rng.standard_normal((hp, wp)).astype(np.float32), (0, 0), 0.7)
    grain /= grain.std() + 1e-6
    clouds = smooth(max(4, width // 10)) + 0.6 * smooth(max(2, width // 24)) \
        + 0.3 * smooth(max(2, width // 64))
    clouds /= clouds.std() + 1e-6
    sensor = rng.standard_normal((hp, wp, 3)).astype(np.float32)
    rain = np.zeros((2 * height, width), np.float32)
    n_streaks = width * height // 180
    x0 = rng.uniform(0, width, n_streaks)
    y0 = rng.uniform(0, 2 * height, n_streaks)
    length = rng.uniform(0.03, 0.08, n_streaks) * height
    for x, y, ln, a in zip(x0, y0, length, rng.uniform(0.3, 1.0, n_streaks)):
        cv2.line(rain, (int(x), int(y)), (int(x + 0.15 * ln), int(y + ln)), float(a), 1)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r2 = ((xx - width / 2) / (width / 2)) ** 2 + ((yy - height / 2) / (width / 2)) ** 2
    return {'grain': grain, 'blotch': smooth(max(3, width // 40)), 'clouds': clouds,
            'sensor': sensor, 'rain': rain, 'r2': r2 / r2.max(), 'pad': np.array(pad)}
