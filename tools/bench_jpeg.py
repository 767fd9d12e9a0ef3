"""The image data path, before and after issue 13 item 5, on generated ImageNet-size JPEGs.

Usage:
    python tools/bench_jpeg.py [--folder DIR] [--num-images 2000] [--size 500x375] [--quality 90]
                               [--crop-size 224] [--batch 128] [--repeats 7] [--in-worker] [--stages]
                               [--json OUT]

1. Generates ``--num-images`` JPEGs in ``--folder`` (kept and reused when the settings match its
   ``bench_jpeg.json``): natural-image-like content, a 1/f^1.15 amplitude spectrum in luma and two
   chroma fields plus Gaussian noise (sigma 3 levels), saved by Pillow at ``--quality`` with 4:2:0
   chroma. At 500x375 and quality 90 a file is about 108 KB (4.6 bits per pixel; ImageNet-1K's
   training JPEGs average about 110 KB at about 470x390).
2. Times one loader worker's image work (one process, one intra-op thread, the files already in
   memory): decode every sample, then the training view (RandomResizedCrop scale (0.3, 1.0) to
   ``--crop-size``, normalise) per batch of ``--batch`` with the generator of that batch, for
   each pipeline below. Repeats are interleaved (the order rotates every repeat), because the
   machine is shared; reported are the median images/s over repeats, by wall clock and by the
   process's CPU time, and the ratio to ``old`` (of the medians, and the median of the
   per-repeat ratios). ``--in-worker`` also times the same work in one DataLoader worker feeding
   the main process (batches crossing in shared memory, as in training).
   ``--stages`` splits the new path's time per image into its stages (below).
3. Compares the pixels of every pipeline with ``old`` and with the authors' path (Pillow decode,
   torchvision's RandomResizedCrop on the Pillow image, ToTensor, Normalize) on the same crop
   boxes: max and mean absolute difference of the normalised tensors, and PSNR in [0, 1] pixels.

Pipelines: ``old`` is main before item 5 (commit 41e5951, copied below); ``new`` the image
modality with the default input section; ``new, batch_dtype uint8`` the same handing the crops over as
uint8 (the training loop normalises them on its device, not timed here: on a GPU it is one
elementwise kernel); ``new, jpeg_reduced_decode`` the same with reduced-size JPEG decoding (only
run when some image qualifies at this size: at 500x375 and 224, none does).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import struct
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

SRC = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(SRC))


# --------------------------------------------------------------------------- the JPEGs


def _field(rng: np.random.Generator, amplitude: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    spectrum = amplitude * (rng.normal(size=amplitude.shape) + 1j * rng.normal(size=amplitude.shape))
    x = np.fft.irfft2(spectrum, s=shape)
    return (x - x.mean()) / x.std()


def make_jpeg(rng: np.random.Generator, width: int, height: int, quality: int) -> bytes:
    """One natural-image-like JPEG (module docstring)."""
    from PIL import Image

    f = np.sqrt(np.fft.rfftfreq(width)[None, :] ** 2 + np.fft.fftfreq(height)[:, None] ** 2)
    f[0, 0] = 1.0
    amplitude = f ** -1.15
    luma, c1, c2 = (_field(rng, amplitude, (height, width)) for _ in range(3))
    tint = rng.normal(0, 0.3, 3)
    chroma = np.stack([c1 + tint[0], c2 + tint[1], -c1 - c2 + tint[2]], axis=-1)
    image = 120 + 50 * luma[..., None] + 20 * chroma + rng.normal(0, 3, (height, width, 3))
    buf = io.BytesIO()
    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _write_some(args: tuple[str, int, int, int, int, int]) -> None:
    folder, start, stop, width, height, quality = args
    for i in range(start, stop):
        rng = np.random.default_rng(i)
        (Path(folder) / f"{i:06d}.jpg").write_bytes(make_jpeg(rng, width, height, quality))


def ensure_jpegs(folder: Path, num: int, width: int, height: int, quality: int) -> list[Path]:
    """The folder's JPEGs, generated first unless a previous run left them with these settings."""
    import multiprocessing

    stamp = folder / "bench_jpeg.json"
    settings = {"num": num, "width": width, "height": height, "quality": quality, "version": 1}
    files = [folder / f"{i:06d}.jpg" for i in range(num)]
    if stamp.exists() and json.loads(stamp.read_text()) == settings and all(f.exists() for f in files):
        return files
    folder.mkdir(parents=True, exist_ok=True)
    procs = os.cpu_count() or 1
    chunks = [(str(folder), i, min(num, i + math.ceil(num / procs)), width, height, quality)
              for i in range(0, num, math.ceil(num / procs))]
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        pool.map(_write_some, chunks)
    stamp.write_text(json.dumps(settings))
    return files


# --------------------------------------------------------------------------- the old path (main at 41e5951)


def old_decode_image(sample: dict[str, Any]) -> torch.Tensor:
    """``jepa.modalities.image.transforms.decode_image`` before item 5: the same steps (header, bomb
    check, torchvision for JPEG, Pillow otherwise), error messages shortened."""
    import torchvision.io
    from PIL import Image, ImageOps, UnidentifiedImageError

    from jepa.data.reading import sample_payload, sample_where
    from jepa.modalities.image.decode import IMAGE_KEYS, _pil_to_rgb
    from jepa.vision.pixels import MAX_PIXELS

    key, data = sample_payload(sample, IMAGE_KEYS, "image")
    where = sample_where(sample)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as pil:
                width, height = pil.size
                if width * height > MAX_PIXELS:
                    raise ValueError("too large")
                if pil.format == "JPEG":
                    try:
                        return torchvision.io.decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                                                          mode=torchvision.io.ImageReadMode.RGB,
                                                          apply_exif_orientation=True)
                    except RuntimeError:
                        pass
                return _pil_to_rgb(ImageOps.exif_transpose(pil)).contiguous()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, struct.error) as exc:
        raise ValueError(f"{where}: '{key}' is not a readable image ({exc})") from None


def old_train_batch(items: list[torch.Tensor], cfg: Any, generator: torch.Generator) -> torch.Tensor:
    """``jepa.modalities.image.transforms.train_batch`` before item 5, verbatim but for imports
    (``normalize_uint8`` computes as it did: ``x.float().sub_(255 mean).div_(255 std)``)."""
    import torchvision.transforms.v2.functional as TF

    from jepa.vision.crops import sample_crop_boxes
    from jepa.vision.pixels import normalize_uint8

    s = cfg.crop_size
    heights = torch.tensor([x.shape[1] for x in items])
    widths = torch.tensor([x.shape[2] for x in items])
    boxes = sample_crop_boxes(heights, widths, cfg.crop_scale, generator).tolist()
    out = torch.empty(len(items), cfg.in_chans, s, s, dtype=torch.uint8)
    for i, (x, (top, left, h, w)) in enumerate(zip(items, boxes)):
        out[i] = TF.resized_crop(x, top, left, h, w, [s, s], antialias=True)
    return normalize_uint8(out, cfg.mean, cfg.std)


def authors_train_batch(samples: list[dict[str, Any]], cfg: Any, generator: torch.Generator) -> torch.Tensor:
    """The authors' view of the same boxes: Pillow decode, torchvision (v1) resized_crop on the
    Pillow image (bilinear, Pillow's antialiasing), ToTensor, Normalize."""
    import torchvision.transforms.functional as F1
    from PIL import Image

    from jepa.vision.crops import sample_crop_boxes

    images = [Image.open(io.BytesIO(s["jpg"])).convert("RGB") for s in samples]
    boxes = sample_crop_boxes(torch.tensor([im.height for im in images]), torch.tensor([im.width for im in images]),
                              cfg.crop_scale, generator).tolist()
    views = [F1.normalize(F1.to_tensor(F1.resized_crop(im, t, l, h, w, [cfg.crop_size] * 2,
                                                       F1.InterpolationMode.BILINEAR, antialias=True)),
                          list(cfg.mean), list(cfg.std)) for im, (t, l, h, w) in zip(images, boxes)]
    return torch.stack(views)


# --------------------------------------------------------------------------- timing


Pipeline = tuple[Callable[[dict[str, Any]], Any], Callable[[list[Any], torch.Generator], torch.Tensor]]


def run_pipeline(pipe: Pipeline, samples: list[dict[str, Any]], batch: int) -> int:
    """Decode every sample and make the training view of each batch; returns the images processed."""
    decode, view = pipe
    done = 0
    for b, start in enumerate(range(0, len(samples), batch)):
        items = [decode(s) for s in samples[start:start + batch]]
        done += view(items, torch.Generator().manual_seed(b)).shape[0]
    return done


class _InWorker(torch.utils.data.IterableDataset):
    def __init__(self, pipe: Pipeline, samples: list[dict[str, Any]], batch: int):
        self.pipe, self.samples, self.batch = pipe, samples, batch

    def __iter__(self):
        decode, view = self.pipe
        for b, start in enumerate(range(0, len(self.samples), self.batch)):
            items = [decode(s) for s in self.samples[start:start + self.batch]]
            yield view(items, torch.Generator().manual_seed(b))


def run_in_worker(pipe: Pipeline, samples: list[dict[str, Any]], batch: int) -> int:
    """The same work in one DataLoader worker; the main process receives the batches."""
    loader = torch.utils.data.DataLoader(_InWorker(pipe, samples, batch), batch_size=None, num_workers=1,
                                         multiprocessing_context="fork")
    return sum(x.shape[0] for x in loader)


def interleaved(pipes: dict[str, Pipeline], samples: list[dict[str, Any]], batch: int, repeats: int,
                runner: Callable[[Pipeline, list[dict[str, Any]], int], int]) -> dict[str, dict[str, list[float]]]:
    """Images/s (wall and CPU) of every pipeline per repeat, the order rotated every repeat."""
    names = list(pipes)
    out = {n: {"wall": [], "cpu": []} for n in names}
    runner(pipes[names[0]], samples[:batch], batch)  # warm-up (imports, allocator)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            wall, cpu = time.perf_counter(), _cpu_seconds()
            n = runner(pipes[name], samples, batch)
            out[name]["wall"].append(n / (time.perf_counter() - wall))
            cpu = _cpu_seconds() - cpu  # os.times ticks every 10 ms: zero is possible on tiny test inputs
            out[name]["cpu"].append(n / cpu if cpu > 0 else float("inf"))
    return out


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the DataLoader worker, once joined)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


# --------------------------------------------------------------------------- where the time goes


def stage_times(samples: list[dict[str, Any]], cfg: Any, batch: int, repeats: int) -> dict[str, dict[str, float]]:
    """Per-image milliseconds (median over interleaved repeats, wall and CPU) of each stage of the
    new path on one batch, plus the entropy-decoding floor (libjpeg at 1/8 scale still reads every
    coefficient, so it bounds what any reduced-size decode can save)."""
    import torchvision.io
    import torchvision.transforms.v2.functional as TF
    from PIL import Image

    from jepa.modalities.image.decode import decode_image
    from jepa.vision.crops import sample_crop_boxes
    from jepa.vision.pixels import norm_constants as _norm_constants

    chunk = samples[:batch]
    images = [decode_image(s) for s in chunk]
    boxes = sample_crop_boxes(torch.tensor([x.shape[1] for x in images]), torch.tensor([x.shape[2] for x in images]),
                              cfg.crop_scale, torch.Generator().manual_seed(0)).tolist()
    size = [cfg.crop_size] * 2
    views = [TF.resized_crop(x, *b, size, antialias=True) for x, b in zip(images, boxes)]
    mean, std = _norm_constants(cfg.mean, cfg.std, torch.device("cpu"))
    rows = torch.empty(batch, 3, *size)

    def header():
        for s in chunk:
            with Image.open(io.BytesIO(s["jpg"])) as pil:
                pil.size

    def entropy_floor():
        for s in chunk:
            with Image.open(io.BytesIO(s["jpg"])) as pil:
                pil.draft("RGB", (pil.width // 8, pil.height // 8))
                pil.load()

    def full_decode():
        for s in chunk:
            torchvision.io.decode_jpeg(torch.frombuffer(bytearray(s["jpg"]), dtype=torch.uint8),
                                       mode=torchvision.io.ImageReadMode.RGB, apply_exif_orientation=True)

    def resize():
        for x, b in zip(images, boxes):
            TF.resized_crop(x, *b, size, antialias=True)

    def normalise():
        for row, v in zip(rows, views):
            row.copy_(v).sub_(mean).div_(std)

    def allocate():
        torch.empty(batch, 3, *size).fill_(0)  # first touch of a fresh batch (page faults)

    stages = {"header (Pillow open)": header, "JPEG decode, entropy floor (1/8 scale)": entropy_floor,
              "JPEG decode, full (torchvision)": full_decode, "crop + resize (uint8, antialias)": resize,
              "normalise into the batch row": normalise, "fresh float32 batch (page faults)": allocate}
    times: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in stages}
    names = list(stages)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            wall, cpu = time.perf_counter(), time.process_time()
            stages[name]()
            times[name]["wall"].append((time.perf_counter() - wall) / batch * 1e3)
            times[name]["cpu"].append((time.process_time() - cpu) / batch * 1e3)
    print(f"\nwhere the time goes (new path, {batch} images, ms per image, median of {repeats} interleaved repeats)")
    print("| stage | wall ms | CPU ms |")
    print("|---|---|---|")
    out = {}
    for name, t in times.items():
        out[name] = {"wall_ms": statistics.median(t["wall"]), "cpu_ms": statistics.median(t["cpu"])}
        print(f"| {name} | {out[name]['wall_ms']:.3f} | {out[name]['cpu_ms']:.3f} |")
    return out


# --------------------------------------------------------------------------- pixels


def pixel_differences(a: torch.Tensor, b: torch.Tensor, std: tuple[float, ...]) -> dict[str, float]:
    """Max / mean |a - b| of normalised batches, and PSNR (dB) of the same in [0, 1] pixels."""
    s = torch.tensor(std).view(1, -1, 1, 1)
    mse = (((a - b) * s) ** 2).mean().item()
    return {"max_abs": (a - b).abs().max().item(), "mean_abs": (a - b).abs().mean().item(),
            "psnr_db": math.inf if mse == 0 else 10 * math.log10(1 / mse)}


def compare_pixels(pipes: dict[str, Pipeline], samples: list[dict[str, Any]], cfg: Any, batch: int,
                   num_batches: int) -> dict[str, dict[str, dict[str, float]]]:
    """Every pipeline vs ``old`` and vs the authors' path, over the first ``num_batches`` batches."""
    from jepa.modalities.image.transforms import finish_batch

    outs: dict[str, list[torch.Tensor]] = {name: [] for name in [*pipes, "authors"]}
    for b in range(num_batches):
        chunk = samples[b * batch:(b + 1) * batch]
        if not chunk:
            break
        for name, (decode, view) in pipes.items():
            out = view([decode(s) for s in chunk], torch.Generator().manual_seed(b))
            outs[name].append(finish_batch(out, cfg))  # uint8 batches: normalised as the training loop does
        outs["authors"].append(authors_train_batch(chunk, cfg, torch.Generator().manual_seed(b)))
    cat = {k: torch.cat(v) for k, v in outs.items()}
    return {name: {ref: pixel_differences(cat[name], cat[ref], cfg.std) for ref in ("old", "authors")
                   if ref != name} for name in cat}


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--folder", type=Path, default=Path("/tmp/jepa_bench_jpeg"),
                   help="Where the JPEGs are generated (reused by later runs with the same settings)")
    p.add_argument("--num-images", type=int, default=2000)
    p.add_argument("--size", default="500x375", help="WIDTHxHEIGHT of the generated JPEGs")
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--crop-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=128, help="Images per batch (the paper recipes' micro batch)")
    p.add_argument("--repeats", type=int, default=7, help="Interleaved repeats (medians are reported)")
    p.add_argument("--pixel-batches", type=int, default=4, help="Batches compared pixel by pixel")
    p.add_argument("--in-worker", action="store_true", help="Also time the pipelines in one DataLoader worker")
    p.add_argument("--stages", action="store_true", help="Also split the new path's time into its stages")
    p.add_argument("--json", type=Path, default=None, help="Write the results here")
    args = p.parse_args(argv)

    from jepa.modalities.image import ImageModality
    from jepa.modalities.image.config import ImageConfig, InputConfig
    from jepa.modalities.image.decode import jpeg_reduction

    width, height = (int(v) for v in args.size.lower().split("x"))
    torch.set_num_threads(1)  # as in a loader worker
    start = time.perf_counter()
    files = ensure_jpegs(args.folder, args.num_images, width, height, args.quality)
    samples = [{"__key__": f.stem, "jpg": f.read_bytes()} for f in files]
    kb = statistics.mean(len(s["jpg"]) for s in samples) / 1000
    print(f"{len(samples)} JPEGs {width}x{height} quality {args.quality}, mean {kb:.1f} KB "
          f"({8000 * kb / (width * height):.2f} bits/pixel), ready in {time.perf_counter() - start:.0f} s; "
          f"torch threads 1, batch {args.batch}, crop {args.crop_size}")

    cfg = InputConfig(crop_size=args.crop_size)
    reduced_cfg = cfg.model_copy(update={"jpeg_reduced_decode": True})
    new = ImageModality(ImageConfig(input=cfg))
    compact = ImageModality(ImageConfig(input=cfg.model_copy(update={"batch_dtype": "uint8"})))
    pipes: dict[str, Pipeline] = {
        "old": (old_decode_image, lambda items, g: old_train_batch(items, cfg, g)),
        "new": (new.decode, new.train_batch),
        "new, batch_dtype uint8": (compact.decode, compact.train_batch),
    }
    qualifying = jpeg_reduction(height, width, reduced_cfg) > 1  # every generated image has this size
    if qualifying:
        reduced = ImageModality(ImageConfig(input=reduced_cfg))
        pipes["new, jpeg_reduced_decode"] = (reduced.decode, reduced.train_batch)
    print(f"jpeg_reduced_decode at this size and crop: scale 1/{jpeg_reduction(height, width, reduced_cfg)}"
          + ("" if qualifying else " (no image qualifies: not run)"))

    results: dict[str, Any] = {"settings": {**vars(args), "folder": str(args.folder), "json": None,
                                            "mean_kb": kb, "device": _cpu_name()}}
    modes = {"in-process": run_pipeline, **({"one DataLoader worker": run_in_worker} if args.in_worker else {})}
    for mode, runner in modes.items():
        rates = interleaved(pipes, samples, args.batch, args.repeats, runner)
        results[mode] = _report(mode, rates)
    if args.stages:
        results["stages"] = stage_times(samples, cfg, args.batch, args.repeats)
    diffs = compare_pixels(pipes, samples, cfg, args.batch, args.pixel_batches)
    results["pixels"] = diffs
    n = min(len(samples), args.batch * args.pixel_batches)
    print(f"\npixels vs old and vs the authors' path (Pillow decode + torchvision RandomResizedCrop on Pillow), "
          f"same boxes, {n} images:")
    print("| pipeline | vs | max abs (normalised) | mean abs | PSNR [0,1] |")
    print("|---|---|---|---|---|")
    for name, refs in diffs.items():
        for ref, d in refs.items():
            print(f"| {name} | {ref} | {d['max_abs']:.4g} | {d['mean_abs']:.4g} | {d['psnr_db']:.1f} dB |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return results


def _report(mode: str, rates: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    base = rates["old"]
    print(f"\n{mode}: images/s per worker, median of {len(base['wall'])} interleaved repeats")
    print("| pipeline | wall: median | range | ratio | paired ratio | CPU time: median | ratio |")
    print("|---|---|---|---|---|---|---|")
    out = {}
    for name, r in rates.items():
        wall, cpu = statistics.median(r["wall"]), statistics.median(r["cpu"])
        paired = statistics.median(a / b for a, b in zip(r["wall"], base["wall"]))
        out[name] = {**r, "wall_median": wall, "cpu_median": cpu, "ratio": wall / statistics.median(base["wall"]),
                     "paired_ratio": paired, "cpu_ratio": cpu / statistics.median(base["cpu"])}
        print(f"| {name} | {wall:,.0f} | {min(r['wall']):,.0f} .. {max(r['wall']):,.0f} | {out[name]['ratio']:.2f}x "
              f"| {paired:.2f}x | {cpu:,.0f} | {out[name]['cpu_ratio']:.2f}x |")
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return f"{os.cpu_count()} cores"


if __name__ == "__main__":
    main()
