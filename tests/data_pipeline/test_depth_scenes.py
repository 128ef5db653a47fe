"""Tests of the procedural depth renderer (data_pipeline/depth_scenes.py): the depth it reports
is the geometry's, checked against independently computed plane depths."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from data_pipeline.depth_scenes import (
    MAX_DEPTH_M,
    camera_rays,
    depth_scene_samples,
    encode_depth_png,
    render_scene,
)


def photos() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)) for _ in range(3)]


def test_camera_rays_are_a_pinhole_with_the_field_of_view() -> None:
    rays = camera_rays(4, fov_deg=90.0)  # focal = 2 px: pixel centres at ±0.5, ±1.5 px
    assert rays.shape == (4, 4, 3) and np.all(rays[..., 2] == 1.0)
    assert rays[0, :, 0] == pytest.approx([-0.75, -0.25, 0.25, 0.75])
    assert rays[:, 0, 1] == pytest.approx([-0.75, -0.25, 0.25, 0.75])


def test_depth_is_the_geometry_of_the_room() -> None:
    rng = np.random.default_rng(3)
    image, depth, scene = render_scene(photos(), 32, rng)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert np.isfinite(depth).all() and 0 < depth.min() and depth.max() < MAX_DEPTH_M
    # Rebuild the rays, rotate them and intersect the five room planes ourselves; wherever the
    # renderer's depth is not that of a box, it must equal the nearest plane's.
    yaw, pitch = np.deg2rad(scene["yaw_deg"]), np.deg2rad(scene["pitch_deg"])
    rot_yaw = np.array([[np.cos(yaw), 0, np.sin(yaw)], [0, 1, 0], [-np.sin(yaw), 0, np.cos(yaw)]])
    rot_pitch = np.array(
        [[1, 0, 0], [0, np.cos(pitch), -np.sin(pitch)], [0, np.sin(pitch), np.cos(pitch)]]
    )
    rays = camera_rays(32) @ (rot_yaw @ rot_pitch).T
    planes = [
        (1, scene["camera_height_m"]),
        (1, scene["ceiling_y_m"]),
        (0, scene["walls_x_m"][0]),
        (0, scene["walls_x_m"][1]),
        (2, scene["back_wall_z_m"]),
    ]
    with np.errstate(divide="ignore", invalid="ignore"):
        ts = np.stack([coord / rays[..., axis] for axis, coord in planes])
    room = np.where(ts > 0, ts, np.inf).min(axis=0)
    assert np.all(depth <= room + 0.02)  # boxes only ever come in front of the room
    on_room = np.abs(depth - room) < 0.02
    assert on_room.mean() > 0.5  # most pixels see the room (params rounded to 1 mm)
    assert (~on_room).any()  # and some a box


def test_samples_store_16_bit_millimetres() -> None:
    rng = np.random.default_rng(1)
    sample = next(depth_scene_samples(photos(), 1, 24, "train", rng))
    assert sample["__key__"] == "depth-train-000000"
    stored = np.asarray(Image.open(io.BytesIO(sample["depth.png"])))
    assert stored.dtype in (np.uint16, np.int32) and stored.shape == (24, 24)
    assert 500 < stored.min() and stored.max() < MAX_DEPTH_M * 1000
    image = Image.open(io.BytesIO(sample["png"]))
    assert image.mode == "RGB" and image.size == (24, 24)
    decoded = np.asarray(Image.open(io.BytesIO(encode_depth_png(np.array([[1.2341, 0.0]])))))
    assert decoded.tolist() == [[1234, 0]]
