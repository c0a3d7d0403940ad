"""
Camera-size work around the network, free of ROS: labels, colours and overlay at device speed.

Two implementations of one contract (see :class:`seg_perception.pipeline.Result`):

* CPU: OpenCV and numpy on uint8 arrays. The frame is shrunk to the network's size before any
  conversion to float; labels come from an argmax at a chosen grid (the network's size, a multiple
  of it, or the camera's), are enlarged by nearest neighbour, and the palette is looked up on the
  grid before enlarging (the same pixels, far fewer lookups). No float image at camera size
  exists, except the confidence map when it is asked for.
* CUDA: torch on the device. Logits are enlarged bilinearly to the camera size before the argmax,
  palette gather and blend run there, and every output of every frame is packed into one buffer
  that comes back in ONE copy into pinned host memory, with one synchronisation per batch.

Label upsampling modes (``label_upsampling``): ``nearest`` (argmax at the network's size, labels
copied to camera pixels), ``bilinear`` (logits enlarged to the camera size, then argmax: class
boundaries follow the logits to the pixel), ``bilinear_x2``/``bilinear_x4`` (the argmax at 2x/4x
the network's size, at most the camera's, then nearest) and ``auto`` (``bilinear`` on CUDA,
``bilinear_x2`` on the CPU, where a camera-size argmax costs more than the network).
"""

from typing import List, Optional, Sequence, Tuple
import weakref

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from seg_perception.image_codec import ENCODINGS, overlay_encoding

LABEL_UPSAMPLING = ('auto', 'nearest', 'bilinear', 'bilinear_x2', 'bilinear_x4')
# Segments of the packed CUDA output start at multiples of this (float32 views need 4).
_ALIGN = 64


def resolve_label_upsampling(mode: str, device: torch.device) -> str:
    """Return the mode ``auto`` stands for on ``device``; ValueError for an unknown mode."""
    if mode not in LABEL_UPSAMPLING:
        raise ValueError(f'label_upsampling {mode!r} not in {list(LABEL_UPSAMPLING)}')
    if mode == 'auto':
        return 'bilinear' if device.type == 'cuda' else 'bilinear_x2'
    return mode


def label_grid(mode: str, network_hw: Tuple[int, int],
               camera_hw: Tuple[int, int]) -> Tuple[int, int]:
    """(h, w) at which the argmax runs for a resolved ``mode``."""
    if mode == 'nearest':
        return network_hw
    if mode == 'bilinear':
        return camera_hw
    factor = int(mode.rsplit('x', 1)[1])
    return (min(camera_hw[0], factor * network_hw[0]),
            min(camera_hw[1], factor * network_hw[1]))


def scaled_size(hw: Tuple[int, int], scale: float) -> Tuple[int, int]:
    """(h, w) of an output at ``scale`` of the camera size (at least 1 px per side)."""
    if scale == 1.0:
        return hw
    return max(1, round(hw[0] * scale)), max(1, round(hw[1] * scale))


def _resize(img: np.ndarray, hw: Tuple[int, int], interpolation: int) -> np.ndarray:
    """cv2.resize to (h, w) that keeps a trailing channel axis of size 1."""
    if img.shape[:2] == hw:
        return img
    out = cv2.resize(img, (hw[1], hw[0]), interpolation=interpolation)
    return out[..., None] if img.ndim == 3 and out.ndim == 2 else out


# --- CPU -------------------------------------------------------------------------------------

def cpu_area_input(image: np.ndarray, encoding: str, hw: Tuple[int, int],
                   method: str) -> Optional[np.ndarray]:
    """
    Shrink a camera frame by area averaging in integers: (h, w, 3) float32 RGB, or None.

    Only where the model's resize is ``area`` and the frame is a whole multiple of the network
    size (2048x1024 to 256x128: 8x8 pixels per output pixel); the sums are exact and the
    division is the same float division, so the result is bit for bit what
    ``seg_training.nets.preprocess`` computes on a float image, without making one. The channel
    order is fixed on the small image.
    """
    (h, w), (big_h, big_w, c) = hw, image.shape
    if method != 'area' or big_h % h or big_w % w:
        return None
    fy, fx = big_h // h, big_w // w
    acc_type = np.uint16 if fy * fx * 255 < 2 ** 16 else np.uint32
    rows = image.reshape(h, fy, big_w * c)  # a view (rows may be strided)
    acc = rows[:, 0].astype(acc_type)  # (h, W * C)
    for k in range(1, fy):
        np.add(acc, rows[:, k], out=acc, casting='unsafe')
    cols = acc.reshape(h, w, fx, c)
    sums = cols[:, :, 0].copy()  # (h, w, C)
    for k in range(1, fx):
        sums += cols[:, :, k]
    total = sums.astype(np.float32)  # integers below 2**24: exact
    total /= np.float32(fy * fx)
    if c == 1:
        return np.repeat(total, 3, axis=2)  # (h, w, 3)
    order = ENCODINGS[encoding][1]
    return np.ascontiguousarray(total[..., list(order)])  # (h, w, 3) RGB


def cpu_labels(logits: np.ndarray, grid_hw: Tuple[int, int]) -> np.ndarray:
    """Argmax of (h, w, K) float32 logits enlarged bilinearly to ``grid_hw``: (gh, gw) uint8."""
    up = _resize(logits, grid_hw, cv2.INTER_LINEAR)  # (gh, gw, K)
    k = logits.shape[-1]
    # torch's max over the last axis is the fastest argmax here (numpy's ~1.4x, torch.argmax
    # ~5x slower); ties go to the first class, as numpy's.
    flat = torch.from_numpy(np.ascontiguousarray(up)).view(-1, k)  # (gh * gw, K)
    return flat.max(dim=1).indices.to(torch.uint8).numpy().reshape(grid_hw)  # (gh, gw)


def cpu_camera_labels(grid_labels: np.ndarray, camera_hw: Tuple[int, int]) -> np.ndarray:
    """(gh, gw) uint8 labels -> (H, W) by nearest neighbour."""
    return _resize(grid_labels, camera_hw, cv2.INTER_NEAREST)


def cpu_confidence(logits: np.ndarray, camera_hw: Tuple[int, int]) -> np.ndarray:
    """Max softmax probability of (h, w, K) logits, bilinear to the camera size, (H, W) f32."""
    z = logits - logits.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    conf = (1.0 / z.sum(axis=-1)).astype(np.float32)  # (h, w): the max term is exp(0) = 1
    conf = _resize(conf, camera_hw, cv2.INTER_LINEAR)
    return np.clip(conf, 0.0, 1.0, out=conf)


class CpuPainter:
    """Palette lookup and alpha overlay with uint8 tables and OpenCV (no float images)."""

    def __init__(self, palette: np.ndarray) -> None:
        self.rgb = np.ascontiguousarray(palette, dtype=np.uint8)  # (256, 3)
        self.bgr = np.ascontiguousarray(self.rgb[:, ::-1])

    def color(self, grid_labels: np.ndarray, hw: Tuple[int, int], bgr: bool = False) -> np.ndarray:
        """(h, w, 3) uint8 class colours at ``hw``: lookup on the label grid, then nearest."""
        table = self.bgr if bgr else self.rgb
        return _resize(table[grid_labels], hw, cv2.INTER_NEAREST)

    def overlay(self, image: np.ndarray, encoding: str, grid_labels: np.ndarray,
                hw: Tuple[int, int], alpha: float,
                color_rgb: Optional[np.ndarray] = None) -> np.ndarray:
        """
        Blend the frame with the class colours at ``hw``, in the overlay encoding's order.

        ``color_rgb`` (already computed at ``hw``) is reused for rgb-ordered overlays. An alpha
        channel of the input is kept as it is.
        """
        enc = overlay_encoding(encoding)
        base = _resize(image, hw, cv2.INTER_AREA if hw[0] * hw[1] < image.shape[0] *
                       image.shape[1] else cv2.INTER_LINEAR)  # (h, w, C) input order
        bgr = enc in ('bgr8', 'bgra8')
        color = color_rgb if (color_rgb is not None and not bgr) else self.color(
            grid_labels, hw, bgr=bgr)  # (h, w, 3) in the overlay's order
        if encoding == 'mono8':
            base = cv2.cvtColor(base, cv2.COLOR_GRAY2RGB)  # (h, w, 3)
        if ENCODINGS[enc][2]:  # 4 channels: blend the colours, copy the alpha channel
            color4 = np.empty(base.shape, np.uint8)  # (h, w, 4)
            cv2.mixChannels([color, base], [color4], [0, 0, 1, 1, 2, 2, 6, 3])
            return cv2.addWeighted(base, 1.0 - alpha, color4, alpha, 0.0)
        return cv2.addWeighted(base, 1.0 - alpha, color, alpha, 0.0)  # (h, w, 3)


# --- CUDA ------------------------------------------------------------------------------------

class PinnedPool:
    """
    Page-locked host buffers for the one device-to-host copy per batch.

    Each buffer is handed out with a fresh numpy array over it; the result arrays are views of
    that array and keep it alive. A buffer is reused only once that array is gone (a weak
    reference tells), so results stay valid however long the caller keeps them.
    """

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self._buffers: List[torch.Tensor] = []
        self._users: List[Optional[weakref.ref]] = []

    def get(self, nbytes: int) -> Tuple[torch.Tensor, np.ndarray]:
        """Return a free pinned uint8 buffer of at least ``nbytes`` and a numpy array over it."""
        index = next((i for i, (buf, users) in enumerate(zip(self._buffers, self._users))
                      if buf.numel() >= nbytes and (users is None or users() is None)), None)
        if index is None:
            self._buffers.append(torch.empty(max(nbytes, 1), dtype=torch.uint8,
                                             pin_memory=True))
            self._users.append(None)
            if len(self._buffers) > self.keep:  # forget the oldest; its arrays keep it alive
                del self._buffers[0], self._users[0]
            index = len(self._buffers) - 1
        buf = self._buffers[index]
        flat = buf.numpy()
        self._users[index] = weakref.ref(flat)
        return buf, flat


class CudaUploader:
    """
    Frames to the device: one host copy into pinned memory, one asynchronous copy up.

    The pinned buffer is refilled only after the copy that read it last has finished (an event).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._host: Optional[torch.Tensor] = None
        self._done: Optional[torch.cuda.Event] = None

    def upload(self, images: Sequence[np.ndarray]) -> List[torch.Tensor]:
        """(H, W, C) uint8 arrays (any row stride) -> the same shapes on the device."""
        offsets, total = [], 0
        for a in images:
            offsets.append(total)
            total += -(-a.nbytes // _ALIGN) * _ALIGN
        if self._done is not None:
            self._done.synchronize()
        if self._host is None or self._host.numel() < total:
            self._host = torch.empty(max(total, 1), dtype=torch.uint8, pin_memory=True)
        flat = self._host.numpy()
        for a, offset in zip(images, offsets):
            flat[offset:offset + a.nbytes].reshape(a.shape)[...] = a  # compacts padded rows
        device = self._host[:total].to(self.device, non_blocking=True)
        self._done = torch.cuda.Event()
        self._done.record(torch.cuda.current_stream(self.device))
        return [device[o:o + a.nbytes].view(a.shape) for a, o in zip(images, offsets)]


class CudaPainter:
    """Palette gather, blend and the packed download, all on one CUDA device."""

    def __init__(self, palette: np.ndarray, device: torch.device) -> None:
        self.device = device
        rgb = torch.from_numpy(np.ascontiguousarray(palette, dtype=np.uint8)).to(device)
        self.tables = {'rgb': rgb, 'bgr': rgb.flip(-1).contiguous()}  # (256, 3) each
        self.pool = PinnedPool()

    def labels(self, logits: torch.Tensor, grid_hw: Tuple[int, int],
               camera_hw: Tuple[int, int]) -> torch.Tensor:
        """(K, h, w) logits -> (H, W) uint8 labels: bilinear to the grid, argmax, nearest."""
        x = logits[None]
        if tuple(x.shape[-2:]) != grid_hw:
            x = F.interpolate(x, size=grid_hw, mode='bilinear', align_corners=False)
        labels = x[0].argmax(dim=0).to(torch.uint8)  # (gh, gw)
        return _nearest(labels, camera_hw)

    def confidence(self, logits: torch.Tensor, camera_hw: Tuple[int, int]) -> torch.Tensor:
        """(K, h, w) logits -> (H, W) float32 max softmax probability, bilinear to the camera."""
        conf = torch.softmax(logits.float(), dim=0).amax(dim=0)  # (h, w)
        if tuple(conf.shape) != camera_hw:
            conf = F.interpolate(conf[None, None], size=camera_hw, mode='bilinear',
                                 align_corners=False)[0, 0]
        return conf.clamp_(0, 1)

    def color(self, labels: torch.Tensor, hw: Tuple[int, int], bgr: bool = False) -> torch.Tensor:
        """(H, W) uint8 labels -> (h, w, 3) uint8 colours at ``hw`` (nearest)."""
        return self.tables['bgr' if bgr else 'rgb'][_nearest(labels, hw).long()]

    def overlay(self, image: torch.Tensor, encoding: str, labels: torch.Tensor,
                hw: Tuple[int, int], alpha: float) -> torch.Tensor:
        """(H, W, C) uint8 frame on the device -> (h, w, C') uint8 overlay at ``hw``."""
        enc = overlay_encoding(encoding)
        base = image
        if tuple(base.shape[:2]) != hw:
            # As the CPU path's OpenCV: area averaging to shrink, bilinear to enlarge.
            shrink = hw[0] <= base.shape[0] and hw[1] <= base.shape[1]
            x = base.permute(2, 0, 1)[None].float()  # (1, C, H, W)
            base = (F.interpolate(x, size=hw, mode='area') if shrink else
                    F.interpolate(x, size=hw, mode='bilinear', align_corners=False))
            base = base[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8)
        if encoding == 'mono8':
            base = base.expand(-1, -1, 3)  # (h, w, 3)
        color = self.color(labels, hw, bgr=enc in ('bgr8', 'bgra8')).float()  # (h, w, 3)
        mixed = base[..., :3].float().mul_(1.0 - alpha).add_(color, alpha=alpha)
        mixed = mixed.round_().to(torch.uint8)  # (h, w, 3)
        if ENCODINGS[enc][2]:
            mixed = torch.cat([mixed, base[..., 3:]], dim=-1)  # (h, w, 4), alpha kept
        return mixed

    def download(self, tensors: Sequence[Optional[torch.Tensor]]) -> List[Optional[np.ndarray]]:
        """
        Bring device tensors to the host in ONE copy and ONE synchronisation.

        They are packed into one device buffer (each at an aligned offset), copied into a pinned
        host buffer, and returned as numpy views of it with their own shapes and dtypes.
        """
        layout: List[Tuple[int, int]] = []
        total = 0
        for t in tensors:
            n = 0 if t is None else t.numel() * t.element_size()
            layout.append((total, n))
            total += -(-n // _ALIGN) * _ALIGN
        packed = torch.empty(max(total, 1), dtype=torch.uint8, device=self.device)
        for t, (offset, n) in zip(tensors, layout):
            if t is not None and n:
                packed[offset:offset + n].copy_(t.contiguous().view(-1).view(torch.uint8))
        host, flat = self.pool.get(total)
        host[:total].copy_(packed[:total], non_blocking=True)
        torch.cuda.current_stream(self.device).synchronize()
        out: List[Optional[np.ndarray]] = []
        for t, (offset, n) in zip(tensors, layout):
            if t is None:
                out.append(None)
                continue
            dtype = np.float32 if t.dtype == torch.float32 else np.uint8
            out.append(flat[offset:offset + n].view(dtype).reshape(tuple(t.shape)))
        return out


def _nearest(labels: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
    """(h, w) uint8 -> (H, W) uint8 by nearest neighbour (the same pixels as cv2's)."""
    if tuple(labels.shape) == hw:
        return labels
    return F.interpolate(labels[None, None], size=hw, mode='nearest')[0, 0]
