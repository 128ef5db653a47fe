"""Procedurally rendered depth scenes: photo-textured rooms with boxes, exact per-pixel depth.

The demo's depth subset (``equirecon data build-demo``) is made here, offline, by ray casting.

Scene (metres, camera frame before the camera's rotation: x right, y down, z forward):

- a room: floor ``y = camera_height`` (1.0-1.6 m below the camera), ceiling ``room_height``
  (2.4-3.2 m) above the floor, side walls ``x = -left`` and ``x = right`` (1.2-3 m each), back
  wall ``z = back`` (3.5-7.5 m); the camera is at the origin;
- 1-3 axis-aligned boxes standing on the floor (0.3-1.2 m wide/deep, 0.3-1.5 m tall) between
  1.2 m and the back wall;
- every surface (each wall, floor, ceiling, each box) carries its own texture: a random square
  crop of one of the photos, tiled every 0.6-1.8 m along the surface's two in-plane axes;
- Lambertian shading from a fixed light direction, plus ambient light, so surface orientation
  shows.

Camera: a pinhole with a horizontal and vertical field of view of ``FOV_DEG`` on a square
image, rotated by a yaw in ±25° and a pitch in ±12°. The colour and the depth of a pixel are
those of the surface point its centre ray hits first; depth is the z coordinate in the camera
frame (what a depth sensor such as NYU's Kinect reports), in metres. Nothing is blurred or
anti-aliased, so depth is exact at every pixel (stored as 16-bit millimetres, which rounds it
to 1 mm). All depths lie below ``MAX_DEPTH_M``.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image

FOV_DEG = 60.0
MAX_DEPTH_M = 10.0  # every rendered depth is below this (the room is at most ~8.6 m deep)
DEPTH_SCALE = 1000  # stored units per metre: millimetres in a 16-bit PNG
TEXTURE_PX = 64
CAMERA_HEIGHT_M = (1.0, 1.6)
ROOM_HEIGHT_M = (2.4, 3.2)
SIDE_WALL_M = (1.2, 3.0)
BACK_WALL_M = (3.5, 7.5)
BOXES_PER_SCENE = (1, 3)
BOX_SIDE_M = (0.3, 1.2)
BOX_HEIGHT_M = (0.3, 1.5)
TILE_M = (0.6, 1.8)
YAW_DEG = (-25.0, 25.0)
PITCH_DEG = (-12.0, 12.0)
AMBIENT = 0.45
LIGHT_DIR = np.array([0.3, -0.8, -0.5]) / np.linalg.norm([0.3, -0.8, -0.5])  # towards the light

_PHOTO_CROP_FRACTION = (0.2, 0.6)


def _texture(photo: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """(TEXTURE_PX, TEXTURE_PX, 3) float32 in [0, 1]: a random square crop of an RGB photo."""
    width, height = photo.size
    side = max(1, int(round(rng.uniform(*_PHOTO_CROP_FRACTION) * min(width, height))))
    left = int(rng.integers(0, width - side + 1))
    top = int(rng.integers(0, height - side + 1))
    crop = photo.resize(
        (TEXTURE_PX, TEXTURE_PX),
        Image.Resampling.BILINEAR,
        box=(left, top, left + side, top + side),
    )
    return np.asarray(crop, dtype=np.float32) / 255.0


def _rotation(yaw_deg: float, pitch_deg: float) -> np.ndarray:
    """(3, 3) camera-to-world rotation: pitch about x, then yaw about y."""
    yaw, pitch = np.deg2rad(yaw_deg), np.deg2rad(pitch_deg)
    cy, sy, cp, sp = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch)
    r_yaw = np.array([[cy, 0.0, sy], [0.0, 1.0, 0.0], [-sy, 0.0, cy]])
    r_pitch = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    return r_yaw @ r_pitch


def camera_rays(side: int, fov_deg: float = FOV_DEG) -> np.ndarray:
    """(side, side, 3) ray directions through the pixel centres, z component 1 (camera frame)."""
    focal = side / (2.0 * np.tan(np.deg2rad(fov_deg) / 2.0))
    coords = (np.arange(side) + 0.5 - side / 2.0) / focal
    x, y = np.meshgrid(coords, coords)
    return np.stack([x, y, np.ones_like(x)], axis=-1)


def render_scene(
    photos: Sequence[Image.Image], side: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Renders one random scene.

    Args:
        photos: RGB photos the textures are cut from.
        side: image side in pixels.
        rng: the source of every random choice.

    Returns:
        (image (side, side, 3) uint8, depth (side, side) float64 metres, scene parameters).
    """
    cam_h = rng.uniform(*CAMERA_HEIGHT_M)
    ceiling = cam_h - rng.uniform(*ROOM_HEIGHT_M)  # y of the ceiling (negative: above)
    left, right = -rng.uniform(*SIDE_WALL_M), rng.uniform(*SIDE_WALL_M)
    back = rng.uniform(*BACK_WALL_M)
    yaw, pitch = rng.uniform(*YAW_DEG), rng.uniform(*PITCH_DEG)
    rays_cam = camera_rays(side).reshape(-1, 3)
    rays = rays_cam @ _rotation(yaw, pitch).T  # world directions; t = camera-frame depth

    depth = np.full(rays.shape[0], np.inf)
    surface = np.full(rays.shape[0], -1)
    hit_point = np.zeros_like(rays)
    normal = np.zeros_like(rays)
    surfaces: list[dict[str, Any]] = []

    def consider(t: np.ndarray, axis_normal: np.ndarray, uv_axes: tuple[int, int]) -> None:
        t = np.where(np.isfinite(t) & (t > 1e-6), t, np.inf)
        closer = t < depth
        index = len(surfaces)
        surfaces.append(
            {
                "texture": _texture(photos[int(rng.integers(len(photos)))], rng),
                "tile_m": rng.uniform(*TILE_M),
                "uv_axes": uv_axes,
            }
        )
        depth[closer] = t[closer]
        surface[closer] = index
        hit_point[closer] = rays[closer] * t[closer, None]
        normal[closer] = axis_normal

    with np.errstate(divide="ignore", invalid="ignore"):
        # Planes of the room: (axis, coordinate, inward normal, texture axes).
        planes = (
            (1, cam_h, (0.0, -1.0, 0.0), (0, 2)),  # floor
            (1, ceiling, (0.0, 1.0, 0.0), (0, 2)),  # ceiling
            (0, left, (1.0, 0.0, 0.0), (2, 1)),  # left wall
            (0, right, (-1.0, 0.0, 0.0), (2, 1)),  # right wall
            (2, back, (0.0, 0.0, -1.0), (0, 1)),  # back wall
        )
        for axis, coord, inward, uv in planes:
            consider(coord / rays[:, axis], np.array(inward), uv)
        boxes = []
        for _ in range(int(rng.integers(BOXES_PER_SCENE[0], BOXES_PER_SCENE[1] + 1))):
            width, deep = rng.uniform(*BOX_SIDE_M, size=2)
            tall = rng.uniform(*BOX_HEIGHT_M)
            x0 = rng.uniform(left + 0.1, max(left + 0.1, right - width - 0.1))
            z0 = rng.uniform(1.2, max(1.2, back - deep - 0.1))
            lo = np.array([x0, cam_h - tall, z0])
            hi = np.array([x0 + width, cam_h, z0 + deep])
            boxes.append({"min": lo.round(3).tolist(), "max": hi.round(3).tolist()})
            t_lo, t_hi = (lo - 0.0) / rays, (hi - 0.0) / rays  # slabs, camera at the origin
            t_near, t_far = np.minimum(t_lo, t_hi), np.maximum(t_lo, t_hi)
            entry_axis = np.argmax(t_near, axis=1)
            t_enter = t_near.max(axis=1)
            hit = (t_enter <= t_far.min(axis=1)) & (t_enter > 1e-6)
            t_box = np.where(hit, t_enter, np.inf)
            closer = t_box < depth
            index = len(surfaces)
            surfaces.append(
                {
                    "texture": _texture(photos[int(rng.integers(len(photos)))], rng),
                    "tile_m": rng.uniform(*TILE_M),
                    "uv_axes": None,  # per face: the two axes other than the entry axis
                }
            )
            depth[closer] = t_box[closer]
            surface[closer] = index
            hit_point[closer] = rays[closer] * t_box[closer, None]
            face_normal = np.zeros((rays.shape[0], 3))
            rows = np.arange(rays.shape[0])
            face_normal[rows, entry_axis] = -np.sign(rays[rows, entry_axis])
            normal[closer] = face_normal[closer]
            surface_axes = np.where(closer, entry_axis, -1)
            surfaces[index]["entry_axis"] = surface_axes

    if not np.isfinite(depth).all():  # cannot happen: the room is closed on every side
        raise RuntimeError("a camera ray left the room")
    colour = np.zeros_like(rays)
    for index, info in enumerate(surfaces):
        mask = surface == index
        if not mask.any():
            continue
        points = hit_point[mask]
        if info["uv_axes"] is not None:
            u_axis, v_axis = info["uv_axes"]
            u, v = points[:, u_axis], points[:, v_axis]
        else:  # a box: the two axes other than the face's normal axis
            entry = info["entry_axis"][mask]
            others = np.array([[1, 2], [0, 2], [0, 1]])[entry]
            rows = np.arange(points.shape[0])
            u, v = points[rows, others[:, 0]], points[rows, others[:, 1]]
        tex = info["texture"]
        iu = (np.mod(u / info["tile_m"], 1.0) * TEXTURE_PX).astype(int) % TEXTURE_PX
        iv = (np.mod(v / info["tile_m"], 1.0) * TEXTURE_PX).astype(int) % TEXTURE_PX
        colour[mask] = tex[iv, iu]
    shade = AMBIENT + (1.0 - AMBIENT) * np.clip(normal @ LIGHT_DIR, 0.0, 1.0)
    image = np.clip(colour * shade[:, None], 0.0, 1.0).reshape(side, side, 3)
    params = {
        "camera_height_m": round(cam_h, 3),
        "ceiling_y_m": round(ceiling, 3),
        "walls_x_m": [round(left, 3), round(right, 3)],
        "back_wall_z_m": round(back, 3),
        "yaw_deg": round(yaw, 2),
        "pitch_deg": round(pitch, 2),
        "boxes": boxes,
    }
    return (image * 255.0 + 0.5).astype(np.uint8), depth.reshape(side, side), params


def encode_depth_png(depth_m: np.ndarray, scale: float = DEPTH_SCALE) -> bytes:
    """(H, W) metres -> 16-bit grey PNG of round(depth × scale) (0 = no measurement)."""
    stored = np.clip(np.round(depth_m * scale), 0, 65535).astype(np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(stored).save(buffer, format="PNG")
    return buffer.getvalue()


def depth_scene_samples(
    photos: Sequence[Image.Image], n_scenes: int, side: int, split: str, rng: np.random.Generator
) -> Iterator[dict[str, Any]]:
    """Yields ``n_scenes`` shard samples: ``png`` (RGB), ``depth.png`` (16-bit mm), ``json``."""
    for i in range(n_scenes):
        image, depth, params = render_scene(photos, side, rng)
        buffer = io.BytesIO()
        Image.fromarray(image, "RGB").save(buffer, format="PNG")
        yield {
            "__key__": f"depth-{split}-{i:06d}",
            "png": buffer.getvalue(),
            "depth.png": encode_depth_png(depth),
            "json": params,
        }
