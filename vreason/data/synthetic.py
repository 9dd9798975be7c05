"""A tiny synthetic video benchmark, written offline, in the evaluation files' record schema.

Each video shows a coloured square moving left, right, up or down across a plain background (8 fps,
1-3 s, 96x64 or 64x48 px, H.264 MP4 through PyAV). Each record asks a multiple-choice question about
either the direction or the colour. Everything follows from ``seed``, so two runs write the same records.
It exercises the whole pipeline (records, prompts, video sampling, scoring) without any download.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch

FPS = 8
SIZES = ((96, 64), (64, 48))  # (width, height); both even, as yuv420p needs
DIRECTIONS = ("left", "right", "up", "down")
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
BACKGROUND = (235, 235, 235)
QUESTIONS = {
    "direction": "In which direction does the square move during the video?\n",
    "colour": "What colour is the moving square?\n",
}


@dataclass(frozen=True)
class ClipSpec:
    """What one synthetic clip shows."""

    direction: str
    colour: str
    width: int
    height: int
    seconds: int

    @property
    def num_frames(self) -> int:
        return FPS * self.seconds


def render_frames(spec: ClipSpec) -> np.ndarray:
    """[num_frames, height, width, 3] uint8: the square crosses the frame along ``direction``."""
    side = spec.height // 4
    frames = np.empty((spec.num_frames, spec.height, spec.width, 3), dtype=np.uint8)
    frames[:] = BACKGROUND
    for t in range(spec.num_frames):
        progress = t / max(1, spec.num_frames - 1)
        x = (
            round(progress * (spec.width - side))
            if spec.direction in ("left", "right")
            else (spec.width - side) // 2
        )
        y = (
            round(progress * (spec.height - side))
            if spec.direction in ("up", "down")
            else (spec.height - side) // 2
        )
        if spec.direction == "left":
            x = spec.width - side - x
        if spec.direction == "up":
            y = spec.height - side - y
        frames[t, y : y + side, x : x + side] = COLOURS[spec.colour]
    return frames


def write_mp4(path: Path, frames: np.ndarray, fps: int = FPS) -> None:
    """Encode [n, h, w, 3] uint8 RGB frames as an H.264 MP4 (MPEG-4 part 2 where x264 is missing)."""
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18", "preset": "ultrafast"}
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def pattern_frames(n: int, height: int, width: int, seed: int) -> torch.Tensor:
    """[n, 3, height, width] uint8 frames of a smooth random pattern whose colours drift over time: a
    stand-in video where no file is needed (tests, benchmarks)."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, height // 8 + 1, width // 8 + 1, generator=generator)
    up = torch.nn.functional.interpolate(base, size=(height, width), mode="bilinear", align_corners=False)
    shift = torch.linspace(0, 1, n).view(n, 1, 1, 1)
    return ((up + shift) % 1.0 * 255).to(torch.uint8)


def write_clips(folder: str | Path, specs: dict[str, ClipSpec]) -> dict[str, Path]:
    """Render and encode each named clip as ``folder/<name>.mp4``; returns the paths by name."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / f"{name}.mp4" for name in specs}
    for name, spec in specs.items():
        write_mp4(paths[name], render_frames(spec))
    return paths


def _options(choices: list[str]) -> list[str]:
    return [f"{letter}. {choice}" for letter, choice in zip("ABCD", choices, strict=True)]


def synthetic_record(problem_id: int, spec: ClipSpec, kind: str, rng: random.Random, path: str) -> dict:
    """One multiple-choice record about ``spec``; options are shuffled by ``rng``."""
    choices = list(DIRECTIONS if kind == "direction" else COLOURS)
    rng.shuffle(choices)
    answer = "ABCD"[choices.index(spec.direction if kind == "direction" else spec.colour)]
    return {
        "problem_id": problem_id,
        "problem": QUESTIONS[kind],
        "problem_type": "multiple choice",
        "options": _options(choices),
        "data_type": "video",
        "path": path,
        "solution": f"<answer>{answer}</answer>",
        "data_source": f"synthetic/{kind}",
    }


def write_synthetic_benchmark(root: str | Path, n: int, seed: int = 0) -> Path:
    """Write ``root/synthetic.json`` (n records) and ``root/videos/*.mp4``; return the JSON's path.

    Records alternate between direction and colour questions; paths are relative (``./videos/...``).
    """
    root = Path(root)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    records = []
    for i in range(n):
        width, height = rng.choice(SIZES)
        spec = ClipSpec(rng.choice(DIRECTIONS), rng.choice(list(COLOURS)), width, height, rng.randint(1, 3))
        relative = f"./videos/{i:05d}.mp4"
        write_mp4(root / relative, render_frames(spec))
        records.append(synthetic_record(i, spec, ("direction", "colour")[i % 2], rng, relative))
    path = root / "synthetic.json"
    path.write_text(json.dumps(records, indent=2) + "\n", encoding="utf-8")
    return path
