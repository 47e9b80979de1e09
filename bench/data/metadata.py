"""Read and write a WSOL metadata folder, the format of the reference evaluator (clovaai/wsolevaluation,
data_loaders.py), so that any dataset and any tool's score maps can be evaluated.

One folder per split, one line per image (or per box / mask), comma-separated, no header:

- ``image_ids.txt``: ``path`` - the image id, e.g. ``val/a.jpg`` (its score map is ``<id>.npy``);
- ``class_labels.txt``: ``path,class_index``;
- ``image_sizes.txt``: ``path,width,height`` - needed when there are boxes; a missing or empty file
  means none (the reference's OpenImages metadata, masks only, ships an empty one);
- ``localization.txt``: ``path,x0,y0,x1,y1``, one line per box, several lines for several boxes, in
  image pixels with inclusive corners (0 <= x0 <= x1 <= width - 1, likewise y); or, for masks,
  ``path,mask_png,ignore_png``, one line per instance mask; the ignore mask is given on the image's first
  line and left empty (or repeated) on the others.

Mask and ignore paths are relative to a mask root (absolute paths stay as they are): by default the
metadata folder (bench's convention, what ``save_scoremaps`` writes); the reference resolves them
under its ``--mask_root`` (``dataset/OpenImages``), so pass that folder as ``mask_root`` to read its
metadata unmodified. Choices beyond the reference: an empty ignore path means no ignore region; one
``localization.txt`` may hold both box lines and mask lines (told apart by their number of fields),
and then every image needs both; blank lines are skipped and ``\\r\\n`` line ends accepted. Masks are
read in grayscale, resized to the score map's grid with nearest-neighbour interpolation and
thresholded at 0.5, as the reference does; the ignore region is the ignore mask minus the foreground.
Every problem is a one-line ``BenchError`` naming the file, and the line where there is one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import cv2
import numpy as np

from bench.errors import BenchError

IMAGE_IDS = "image_ids.txt"
CLASS_LABELS = "class_labels.txt"
IMAGE_SIZES = "image_sizes.txt"
LOCALIZATION = "localization.txt"


@dataclass(frozen=True)
class MaskEntry:
    """An image's instance masks and its ignore mask, as paths written in localization.txt."""

    masks: tuple[str, ...]
    ignore: str = ""


@dataclass
class WsolMetadata:
    """One split's annotations. ``boxes`` / ``masks`` are empty when the split has none."""

    root: Path  # where mask paths resolve: the mask root, by default the metadata folder
    image_ids: list[str]
    class_labels: dict[str, int]
    image_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (width, height)
    boxes: dict[str, np.ndarray] = field(default_factory=dict)  # id -> (m, 4) int64 x0, y0, x1, y1
    masks: dict[str, MaskEntry] = field(default_factory=dict)

    def resolve(self, path: str) -> Path:
        """A mask path of localization.txt as a file path (relative paths are under ``root``)."""
        return self.root / path


def _lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, comma-separated fields) of each non-blank line; a missing file is a BenchError."""
    if not path.is_file():
        raise BenchError(f"{path}: missing; a WSOL metadata folder holds {IMAGE_IDS}, {CLASS_LABELS}, "
                         f"{IMAGE_SIZES} (for boxes) and {LOCALIZATION}")
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield number, line.split(",")


def _int(text: str, path: Path, number: int, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise BenchError(f"{path}:{number}: {what} must be an integer, got {text!r}") from None


def _known_id(image_id: str, ids: dict[str, int], path: Path, number: int) -> None:
    if image_id not in ids:
        raise BenchError(f"{path}:{number}: image {image_id!r} is not in {IMAGE_IDS}")


def check_box(box: tuple[int, int, int, int], size: tuple[int, int], where: str) -> None:
    """A BenchError unless 0 <= x0 <= x1 <= width - 1 and 0 <= y0 <= y1 <= height - 1."""
    x0, y0, x1, y1 = box
    width, height = size
    if not (0 <= x0 <= x1 <= width - 1 and 0 <= y0 <= y1 <= height - 1):
        raise BenchError(f"{where}: box ({x0},{y0},{x1},{y1}) is outside the {width}x{height} image or "
                         f"inverted; need 0 <= x0 <= x1 <= {width - 1} and 0 <= y0 <= y1 <= {height - 1}")


def _read_image_ids(path: Path) -> dict[str, int]:
    ids: dict[str, int] = {}
    for number, fields in _lines(path):
        image_id = ",".join(fields)
        if len(fields) != 1:
            raise BenchError(f"{path}:{number}: expected one image path without commas, got {image_id!r}")
        if image_id in ids:
            raise BenchError(f"{path}:{number}: image {image_id!r} is listed twice "
                             f"(first on line {ids[image_id]})")
        ids[image_id] = number
    if not ids:
        raise BenchError(f"{path}: no image ids")
    return ids


def _read_per_image(path: Path, ids: dict[str, int], what: str, arity: int) -> dict[str, list[int]]:
    """A file with one ``path,<arity integers>`` line for every image of ``ids``."""
    values: dict[str, list[int]] = {}
    for number, fields in _lines(path):
        if len(fields) != arity + 1:
            raise BenchError(f"{path}:{number}: expected path,{what}, got {','.join(fields)!r}")
        image_id = fields[0]
        _known_id(image_id, ids, path, number)
        if image_id in values:
            raise BenchError(f"{path}:{number}: image {image_id!r} appears twice")
        names = what.split(",")
        values[image_id] = [_int(t, path, number, n) for t, n in zip(fields[1:], names)]
    _require_all(values, ids, path)
    return values


def _require_all(found: dict, ids: dict[str, int], path: Path, what: str = "line") -> None:
    for image_id, number in ids.items():
        if image_id not in found:
            raise BenchError(f"{path}: no {what} for image {image_id!r} ({IMAGE_IDS} line {number})")


def read_labels(folder: str | Path) -> tuple[dict[str, int], dict[str, int]]:
    """The image ids (id -> line) and class labels of a metadata folder, validated."""
    root = Path(folder)
    ids = _read_image_ids(root / IMAGE_IDS)
    labels = {k: v[0] for k, v in _read_per_image(root / CLASS_LABELS, ids, "class_index", 1).items()}
    for image_id, label in labels.items():
        if label < 0:
            raise BenchError(f"{root / CLASS_LABELS}: image {image_id!r} has a negative class index {label}")
    return ids, labels


def read_metadata(folder: str | Path, mask_root: Optional[str | Path] = None) -> WsolMetadata:
    """Read and validate a metadata folder; its mask paths resolve under ``mask_root`` (default:
    the folder itself)."""
    root = Path(folder)
    if not root.is_dir():
        raise BenchError(f"{root}: not a directory; expected a WSOL metadata folder")
    ids, labels = read_labels(root)
    sizes_path = root / IMAGE_SIZES
    sizes: dict[str, tuple[int, int]] = {}
    if sizes_path.is_file() and next(_lines(sizes_path), None) is not None:  # empty: absent
        for image_id, (w, h) in _read_per_image(sizes_path, ids, "width,height", 2).items():
            if w <= 0 or h <= 0:
                raise BenchError(f"{sizes_path}: image {image_id!r} has a non-positive size {w}x{h}")
            sizes[image_id] = (w, h)
    boxes: dict[str, list[tuple[int, int, int, int]]] = {}
    masks: dict[str, MaskEntry] = {}
    path = root / LOCALIZATION
    for number, fields in _lines(path):
        image_id = fields[0]
        if len(fields) == 5:
            _known_id(image_id, ids, path, number)
            if image_id not in sizes:
                raise BenchError(f"{sizes_path}: missing or empty; boxes ({path}:{number}) need image "
                                 f"sizes")
            box = tuple(_int(t, path, number, n) for t, n in zip(fields[1:], ("x0", "y0", "x1", "y1")))
            check_box(box, sizes[image_id], f"{path}:{number}")
            boxes.setdefault(image_id, []).append(box)
        elif len(fields) == 3:
            _known_id(image_id, ids, path, number)
            mask, ignore = fields[1], fields[2]
            if not mask:
                raise BenchError(f"{path}:{number}: empty mask path")
            entry = masks.get(image_id)
            if entry is None:
                masks[image_id] = MaskEntry((mask,), ignore)
            elif ignore and ignore != entry.ignore:
                raise BenchError(f"{path}:{number}: a second ignore mask {ignore!r} for image {image_id!r}; "
                                 f"give it on the image's first line only")
            else:
                masks[image_id] = MaskEntry(entry.masks + (mask,), entry.ignore)
        else:
            raise BenchError(f"{path}:{number}: expected path,x0,y0,x1,y1 (a box) or "
                             f"path,mask_png,ignore_png (a mask), got {','.join(fields)!r}")
    if not boxes and not masks:
        raise BenchError(f"{path}: no box or mask lines")
    if boxes:
        _require_all(boxes, ids, path, "box")
    if masks:
        _require_all(masks, ids, path, "mask")
    order = list(ids)
    return WsolMetadata(root if mask_root is None else Path(mask_root), order,
                        {i: labels[i] for i in order}, {i: sizes[i] for i in sizes},
                        {i: np.array(b, dtype=np.int64) for i, b in boxes.items()}, masks)


def check_mask_files(meta: WsolMetadata, listed_in: Path) -> None:
    """A BenchError naming the first mask or ignore mask of ``meta`` that is not a file under its
    mask root (checked before any map is scored)."""
    for image_id, entry in meta.masks.items():
        for path in entry.masks + ((entry.ignore,) if entry.ignore else ()):
            if not meta.resolve(path).is_file():
                raise BenchError(f"{listed_in}: mask {path!r} of image {image_id!r} not found at "
                                 f"{meta.resolve(path)} (mask paths resolve under the mask root "
                                 f"{meta.root})")


def _read_png(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A grayscale PNG resized to ``size`` = (width, height) by nearest neighbour, thresholded at 0.5."""
    if not path.is_file():  # before OpenCV, which warns on stderr about a missing file
        raise BenchError(f"{path}: missing (a mask named in {LOCALIZATION})")
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise BenchError(f"{path}: not a readable image (a mask named in {LOCALIZATION})")
    resized = cv2.resize(image.astype(np.float32), tuple(size), interpolation=cv2.INTER_NEAREST)
    return resized > 0.5


def read_masks(meta: WsolMetadata, image_id: str,
               size: tuple[int, int]) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(foreground, ignore) boolean masks of an image on a ``size`` = (width, height) grid; ignore is
    None without an ignore mask."""
    entry = meta.masks[image_id]
    foreground = np.stack([_read_png(meta.resolve(m), size) for m in entry.masks]).any(axis=0)
    if not entry.ignore:
        return foreground, None
    return foreground, _read_png(meta.resolve(entry.ignore), size) & ~foreground


def write_metadata(meta: WsolMetadata, folder: str | Path) -> Path:
    """Write ``meta`` as a metadata folder (mask paths as given: write the PNGs there yourself)."""
    root = Path(folder)
    root.mkdir(parents=True, exist_ok=True)
    for image_id in meta.image_ids:
        if "," in image_id or "\n" in image_id or not image_id.strip():
            raise BenchError(f"image id {image_id!r} cannot be written to {IMAGE_IDS}: "
                             f"it must be non-empty, without commas or newlines")
    ids = meta.image_ids

    def write(name: str, lines: list[str]) -> None:
        (root / name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")

    write(IMAGE_IDS, ids)
    write(CLASS_LABELS, [f"{i},{meta.class_labels[i]}" for i in ids])
    if meta.image_sizes:
        write(IMAGE_SIZES, [f"{i},{meta.image_sizes[i][0]},{meta.image_sizes[i][1]}" for i in ids])
    lines = []
    for i in ids:
        if meta.boxes:
            lines += [f"{i},{x0},{y0},{x1},{y1}" for x0, y0, x1, y1 in np.asarray(meta.boxes[i]).tolist()]
        if meta.masks:
            entry = meta.masks[i]
            lines += [f"{i},{m},{entry.ignore if k == 0 else ''}" for k, m in enumerate(entry.masks)]
    write(LOCALIZATION, lines)
    return root
