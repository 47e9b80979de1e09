"""The ``maps`` task: is a method's own attention map better than a post-hoc map of the same trained
network, and is either faithful to the network? Opt-in (``--tasks ... maps``): it costs more than
the default suite's time budget allows.

Map sources (option ``sources``, written ``a+b+c``), each on the same images:
- ``own``: the method's ``localization_maps(x, y)`` (the map the wsol task scores), under
  ``torch.no_grad()``; a method whose ``localization_maps`` raises ``NotImplementedError`` has none,
  and its metrics are stored as null (reported as "n/a", never as zero);
- ``gradcam``, ``gradcampp`` (Grad-CAM++), ``scorecam``, ``layercam``: pytorch-grad-cam's
  ``GradCAM``, ``GradCAMPlusPlus``, ``ScoreCAM`` (batched through its ``batch_size``) and
  ``LayerCAM`` on the *deployed* network (``model.deploy()``) for the ground-truth class
  (``ClassifierOutputTarget`` on the scores it outputs: logits, or SAOL's log-probabilities), at the
  output of the backbone's last stage module (``backbone.stage_names``); the suffix ``-penultimate``
  (``layercam-penultimate``) takes the stage before it. The library's CAM (its ReLU and per-image
  min-max included) is taken at the layer's own resolution (``get_target_width_height`` answers the
  layer's size instead of the input's), so that every source goes through the same single bicubic
  resize below;
- references: ``random``, uniform noise U[0, 1) per input pixel from
  ``numpy.random.default_rng((seed, split, image index))`` (split 0 = test, 1 = holdout), and
  ``centre``, a Gaussian centred on the input with sigma = a quarter of each side.

Scoring, the same for every source:
- localization: the wsol task's protocol and code (``bench.tasks.wsol.holdout_tau`` and
  ``SplitScorer``): maps resized with bicubic interpolation to the image size and min-max
  normalised; tau of GT-known / Top-1 / Top-5 Loc chosen on the holdout split, never on test;
  MaxBoxAccV2 with its parts, MaxBoxAcc V1, and PxAP where the split has masks. Only on datasets
  with boxes or masks;
- faithfulness (``bench.tasks.faithfulness``, whose docstring names the function behind each
  number): deletion and insertion AUC (``deletion_steps``; ``deletion_to``, default ``black``, and
  ``insertion_from``, default ``blur``, each ``black|mean|blur``), ROAD MoRF / LeRF / combined at
  ``road_percentiles``, Average Drop and Increase in Confidence, on the deployed network, each map
  bicubic-resized to the input and min-max normalised; all of them about the probability of the
  class ``target`` names: ``predicted`` (default, the deployed network's top-1 on the unmodified
  image, as RISE explains it) or ``label`` (the ground-truth class). The CAM sources explain the
  ground-truth class either way.
Images: ``images`` evenly spaced test images (indices ``round(linspace(0, n - 1, images))``; 0: all)
and as many holdout images for tau, the same for every method, seed and source, so sources are
compared on the same images (the wsol task scores the whole split, so its numbers differ from
``@own`` here when ``images`` is smaller). Score-CAM costs one forward pass per channel of its layer
and image, deletion and insertion 2 x (``deletion_steps`` + 1) per image and source; ``images``
bounds the task's cost.

Stored as task ``maps`` with metric names ``<metric>@<source>`` (``maxboxacc_v2@gradcam``,
``deletion_auc@own``); each ``extra`` holds the source, the function that made the map, its layer,
the number of images, the substrates, the explained class and the function that computed the
metric. The input and every
source's map on 8 test images (the wsol gallery's choice) are written to
``figures/maps-run<id>.npz`` (artifact ``gallery``) for the report to draw.
"""
from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from bench.data.base import Split
from bench.errors import BenchError
from bench.metrics import METRICS
from bench.registry import TASKS
from bench.tasks import faithfulness
from bench.tasks.base import Metric, RunContext, Task, TaskResult
from bench.tasks.wsol import (MapItem, SplitScorer, check_wsol_options, display_image,
                              gallery_indices, has_annotations, holdout_tau)
from bench.tasks.wsol_metrics import CLASSIC_BOX_RULE, cam_thresholds, prepare_map

log = logging.getLogger(__name__)

# the pytorch_grad_cam class of each CAM source (imported when used: the library is slow to import)
CAMS = {"gradcam": "GradCAM", "gradcampp": "GradCAMPlusPlus", "scorecam": "ScoreCAM",
        "layercam": "LayerCAM"}
REFERENCES = ("random", "centre")
LAYERS = {"last": 1, "penultimate": 2}  # stages counted from the end; "last" is written without
DEFAULT_SOURCES = ("own", "gradcam", "gradcampp", "scorecam", "layercam", "layercam-penultimate",
                   "random", "centre")
CENTRE_SIGMA = 0.25  # of each side
TEST, HOLDOUT = 0, 1  # the split's number in the random map's seed
METRIC_FUNCTIONS = {
    "deletion_auc": "bench.tasks.faithfulness.deletion_insertion",
    "insertion_auc": "bench.tasks.faithfulness.deletion_insertion",
    "road_morf": "pytorch_grad_cam.metrics.road.ROADMostRelevantFirstAverage",
    "road_lerf": "pytorch_grad_cam.metrics.road.ROADLeastRelevantFirstAverage",
    "road_combined": "(LeRF - MoRF) / 2, pytorch_grad_cam.metrics.road.ROADCombined's formula",
    "avg_drop": "pytorch_grad_cam.metrics.cam_mult_image.DropInConfidence, / p(image)",
    "increase_in_confidence": "pytorch_grad_cam.metrics.cam_mult_image.IncreaseInConfidence",
}
FAITHFULNESS = tuple(METRIC_FUNCTIONS)


@dataclass(frozen=True)
class Source:
    """A map source: ``kind`` (own, a CAM, random or centre) and, for a CAM, its ``layer``."""

    name: str  # as stored after the metric's "@"
    kind: str
    layer: str = ""


def parse_source(text: str) -> Source:
    """``gradcam``, ``layercam-penultimate``, ``own``, ... (a BenchError naming the valid ones)."""
    name = str(text).strip().lower()
    kind, _, layer = name.partition("-")
    valid = ", ".join(("own",) + tuple(CAMS) + REFERENCES)
    if kind not in CAMS and kind not in ("own",) + REFERENCES:
        raise BenchError(f"task 'maps': unknown map source {text!r}; valid: {valid} (a CAM at the "
                         f"penultimate stage: add -penultimate, e.g. layercam-penultimate)")
    if layer and kind not in CAMS:
        raise BenchError(f"task 'maps': map source {text!r}: only the CAMs ({', '.join(CAMS)}) "
                         f"take a layer; valid sources: {valid}")
    if layer and layer not in LAYERS:
        raise BenchError(f"task 'maps': unknown layer {layer!r} in map source {text!r}; valid "
                         f"layers: {', '.join(LAYERS)} (the default: {kind} is {kind}-last)")
    layer = layer or ("last" if kind in CAMS else "")
    return Source(kind if layer in ("", "last") else f"{kind}-{layer}", kind, layer)


@dataclass
class Inputs:
    """Images of a split held in memory: their indices in the split, inputs and labels."""

    split: Split
    tag: int  # TEST or HOLDOUT
    indices: np.ndarray
    x: torch.Tensor
    y: torch.Tensor


def select_inputs(split: Split, tag: int, count: int, batch_size: int,
                  device: torch.device) -> Inputs:
    """``count`` evenly spaced images of ``split`` (0: all), read in one pass that stops early."""
    n = len(split)
    indices = np.rint(np.linspace(0, n - 1, min(count, n) if count else n)).astype(np.int64)
    wanted = set(indices.tolist())
    xs, ys, seen = [], [], 0
    for x, y in split.batches(batch_size, train=False, device=device):
        keep = [j for j in range(len(y)) if seen + j in wanted]
        xs.append(x[keep])
        ys.append(y[keep])
        seen += len(y)
        if seen > indices[-1]:
            break
    return Inputs(split, tag, indices, torch.cat(xs), torch.cat(ys))


def centre_map(height: int, width: int) -> np.ndarray:
    """A Gaussian centred on the image, sigma = ``CENTRE_SIGMA`` of each side."""
    rows = (np.arange(height) - (height - 1) / 2) / (CENTRE_SIGMA * height)
    cols = (np.arange(width) - (width - 1) / 2) / (CENTRE_SIGMA * width)
    return np.exp(-0.5 * (rows[:, None] ** 2 + cols[None, :] ** 2))


def library_cam(kind: str, model: torch.nn.Module, layer: torch.nn.Module) -> Any:
    """pytorch_grad_cam's explainer for CAM source ``kind`` on ``layer`` of ``model``, answering
    maps at the layer's resolution."""
    import pytorch_grad_cam

    class AtLayerSize(getattr(pytorch_grad_cam, CAMS[kind])):  # type: ignore[misc]
        def get_target_width_height(self, input_tensor: torch.Tensor) -> tuple[int, int]:
            activation = self.activations_and_grads.activations[0]
            return int(activation.shape[-1]), int(activation.shape[-2])

    return AtLayerSize(model=model, target_layers=[layer])


class MapMaker:
    """One source's raw maps (B, h, w) for the ground-truth classes; ``reason`` says why there are
    none (then ``maps`` answers None)."""

    def __init__(self, source: Source, model: torch.nn.Module, deployed: torch.nn.Module,
                 seed: int, batch_size: int) -> None:
        self.source, self.model, self.deployed, self.seed = source, model, deployed, seed
        self.batch_size, self.chunk = batch_size, batch_size
        self.reason, self.layer, self.cam = "", "", None
        if source.kind in CAMS:
            self._set_up_cam(source)

    def _set_up_cam(self, source: Source) -> None:
        backbone = getattr(self.deployed, "backbone", None)
        stages = list(getattr(backbone, "stage_names", []))
        back = LAYERS[source.layer]
        if back > len(stages):
            self.reason = (f"the deployed network's backbone has {len(stages)} named stage(s), "
                           f"no {source.layer} stage")
            return
        name = stages[-back]
        self.layer = f"backbone.{name} ({source.layer} stage)"
        self.cam = library_cam(source.kind, self.deployed, getattr(backbone, name))
        if source.kind == "scorecam":  # one masked copy of each image per channel of the layer
            self.cam.batch_size = self.batch_size
            self.chunk = max(1, self.batch_size // backbone.stage_channels[-back])

    def function(self) -> str:
        """What computes the map (stored with every metric)."""
        kind = self.source.kind
        if kind in CAMS:
            return f"pytorch_grad_cam.{CAMS[kind]} (grad-cam {version('grad-cam')})"
        if kind == "own":
            return f"{type(self.model).__name__}.localization_maps"
        if kind == "random":
            return "uniform noise U[0, 1) per input pixel, numpy default_rng((seed, split, index))"
        return f"Gaussian centred on the input, sigma = {CENTRE_SIGMA} x each side"

    def maps(self, inputs: Inputs) -> Optional[list[np.ndarray]]:
        """The raw map of every image of ``inputs``, or None when the source has none."""
        if self.reason:
            return None
        out: list[np.ndarray] = []
        for start in range(0, len(inputs.y), self.chunk):
            raw = self._batch(inputs, slice(start, start + self.chunk))
            if raw is None:
                return None
            out.extend(np.asarray(raw, dtype=np.float64))
        return out

    def _batch(self, inputs: Inputs, rows: slice) -> Optional[np.ndarray]:
        x, y = inputs.x[rows], inputs.y[rows]
        kind = self.source.kind
        if kind == "own":
            try:
                with torch.no_grad():
                    return self.model.localization_maps(x, y).detach().float().cpu().numpy()
            except NotImplementedError as error:
                self.reason = f"{type(self.model).__name__} has no own map ({error})"
                return None
        if kind == "random":
            return np.stack([np.random.default_rng((self.seed, inputs.tag, int(i))).random(x.shape[-2:])
                             for i in inputs.indices[rows]])
        if kind == "centre":
            return np.broadcast_to(centre_map(*x.shape[-2:]), (len(y), *x.shape[-2:]))
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        targets = [ClassifierOutputTarget(int(c)) for c in y.tolist()]
        # the library's Score-CAM draws a progress bar per image on stderr: kept off the output
        with torch.enable_grad(), contextlib.redirect_stderr(io.StringIO()):
            maps = self.cam(x, targets)
        self.deployed.zero_grad(set_to_none=True)
        return maps

    def close(self) -> None:
        """Remove the library's hooks from the deployed network."""
        if self.cam is not None:
            self.cam.activations_and_grads.release()


def map_items(inputs: Inputs, raw: list[np.ndarray],
              ranked: Optional[np.ndarray] = None) -> Iterator[MapItem]:
    """The wsol task's items: each map prepared at its image's size (bicubic, min-max); without
    ``ranked`` (holdout images: only their boxes count) no classes are ranked."""
    none = np.zeros(0, dtype=np.int64)
    for k, index in enumerate(inputs.indices.tolist()):
        yield MapItem(index, inputs.x[k], int(inputs.y[k]), none if ranked is None else ranked[k],
                      prepare_map(raw[k], inputs.split.image_size(index)))


def input_maps(inputs: Inputs, raw: list[np.ndarray]) -> np.ndarray:
    """Maps at the network input's resolution (bicubic, min-max): (N, H, W) in [0, 1]."""
    height, width = inputs.x.shape[-2:]
    return np.stack([prepare_map(m, (width, height)) for m in raw])


def ranking(model: torch.nn.Module, inputs: Inputs, batch_size: int) -> np.ndarray:
    """Classes by decreasing score (top 5 at most) per image of ``inputs``."""
    with torch.no_grad():
        scores = torch.cat([model(inputs.x[i:i + batch_size]) for i in range(0, len(inputs.y), batch_size)])
    return scores.topk(min(5, scores.shape[1]), dim=1).indices.cpu().numpy()


def explained_classes(inputs: Inputs, ranked: np.ndarray, target: str) -> torch.Tensor:
    """The class each faithfulness number is about: the top-1 prediction or the label."""
    if target == "label":
        return inputs.y
    return torch.from_numpy(np.ascontiguousarray(ranked[:, 0])).to(inputs.y.device)


def faithfulness_values(model: torch.nn.Module, inputs: Inputs, maps: np.ndarray,
                        classes: torch.Tensor, opts: dict[str, Any], seed: int,
                        batch_size: int) -> dict[str, np.ndarray]:
    """Per image, every faithfulness number of ``FAITHFULNESS`` for ``maps`` (N, H, W), about
    ``classes``, with the task's options ``opts``."""
    deletion, insertion = faithfulness.deletion_insertion(
        model, inputs.x, classes, maps, opts["deletion_steps"], batch_size,
        (inputs.split.mean, inputs.split.std), opts["deletion_to"], opts["insertion_from"])
    return {"deletion_auc": deletion, "insertion_auc": insertion,
            **faithfulness.road(model, inputs.x, classes, maps, tuple(opts["road_percentiles"]),
                                seed, batch_size),
            **faithfulness.confidence_change(model, inputs.x, classes, maps, batch_size)}


def check_maps_options(options: dict[str, Any]) -> list[Source]:
    """The task's options checked (a BenchError naming the option); returns the parsed sources."""
    check_wsol_options(options, "maps")
    sources = [parse_source(s) for s in options["sources"]]
    names = [s.name for s in sources]
    if not sources or len(set(names)) != len(names):
        raise BenchError(f"task 'maps': option sources needs each source once, got "
                         f"{'+'.join(names) or 'none'}; valid: "
                         f"{', '.join(('own',) + tuple(CAMS) + REFERENCES)}")
    for key, low in (("images", 0), ("deletion_steps", 1)):
        if options[key] < low:
            raise BenchError(f"task 'maps': option {key} must be at least {low}"
                             f"{' (0: every test image)' if key == 'images' else ''}, "
                             f"got {options[key]}")
    for key, valid in (("deletion_to", faithfulness.SUBSTRATES), ("insertion_from", faithfulness.SUBSTRATES),
                       ("target", faithfulness.TARGETS)):
        if options[key] not in valid:
            raise BenchError(f"task 'maps': option {key}={options[key]!r}; valid: {', '.join(valid)}")
    percentiles = options["road_percentiles"]
    if not percentiles or any(not 0 < p < 100 for p in percentiles):
        raise BenchError(f"task 'maps': option road_percentiles must be percentiles in 1..99 "
                         f"written a+b+c, got {'+'.join(map(str, percentiles)) or 'none'}")
    return sources


class MapsTask(Task):
    """Own and post-hoc maps of one trained network, localization and faithfulness (see above)."""

    name = "maps"
    needs_training = True
    default = False

    def check(self, options: dict[str, Any]) -> None:
        check_maps_options(options)

    def run(self, ctx: RunContext) -> TaskResult:
        opts = ctx.options
        sources = check_maps_options(opts)
        batch = ctx.recipe.eval_batch_size
        deployed = ctx.model.deploy().eval()
        test = select_inputs(ctx.data.test, TEST, opts["images"], batch, ctx.device)
        holdout = ctx.data.holdout
        holdout_inputs = (select_inputs(holdout, HOLDOUT, opts["images"], batch, ctx.device)
                          if holdout is not None and holdout.boxes is not None else None)
        ranked = ranking(deployed, test, batch)
        classes = explained_classes(test, ranked, opts["target"])
        shown = gallery_indices(test.y.tolist())
        settings = {"images": len(test.y), "split": "test", "dataset": ctx.data.name}
        if holdout_inputs is not None:
            settings["holdout_images"] = len(holdout_inputs.y)
        metrics: list[Metric] = []
        missing: list[tuple[Source, dict[str, Any]]] = []
        gallery: dict[str, Optional[np.ndarray]] = {}
        for source in sources:
            maker = MapMaker(source, ctx.model, deployed, ctx.seed, batch)
            try:
                raw = maker.maps(test)
                common = {**settings, "source": source.name, "map": maker.function(),
                          "layer": maker.layer}
                if raw is None:
                    log.info("maps: %s has no %s map: %s", ctx.method, source.name, maker.reason)
                    missing.append((source, {**common, "available": False, "reason": maker.reason}))
                    gallery[source.name] = None
                    continue
                if has_annotations(ctx.data.test):
                    metrics += [Metric(f"{m.name}@{source.name}", m.value, m.unit, {**m.extra, **common})
                                for m in self._localization(ctx, maker, test, raw, ranked,
                                                            holdout_inputs)]
                maps = input_maps(test, raw)
                gallery[source.name] = maps[shown]
                values = faithfulness_values(deployed, test, maps, classes, opts, ctx.seed, batch)
                metrics += [self._faithfulness_metric(name, values[name], source, common, opts)
                            for name in FAITHFULNESS]
            finally:
                maker.close()
        metrics += self._unavailable(metrics, missing)
        names = ctx.data.class_names or [str(c) for c in range(ctx.data.num_classes)]
        path = save_gallery_maps(ctx.out_dir / "figures" / f"maps-run{ctx.run_id}.npz", test, shown,
                                 ranked, gallery, names)
        return TaskResult(metrics, artifacts={"gallery": str(path)})

    @staticmethod
    def _localization(ctx: RunContext, maker: MapMaker, test: Inputs, raw: list[np.ndarray],
                      ranked: np.ndarray, holdout: Optional[Inputs]) -> list[Metric]:
        """The wsol task's metrics of one source's test maps, tau from its holdout maps."""
        rule, interval = ctx.options["classic_box_rule"], ctx.options["cam_curve_interval"]
        tau, tau_source = holdout_tau(ctx.data.holdout,
                                      lambda _: map_items(holdout, maker.maps(holdout)), rule,
                                      cam_thresholds(interval), ctx.data.name)
        scorer = SplitScorer(ctx.data.test, tau, tau_source, rule, interval)
        for item in map_items(test, raw, ranked):
            scorer.add(item)
        return [Metric(m.name, m.value, m.unit,
                       {**m.extra, "function": "bench.tasks.wsol.SplitScorer (WsolEvaluator)"})
                for m in scorer.metrics(ctx.data.num_classes)]

    @staticmethod
    def _faithfulness_metric(name: str, values: np.ndarray, source: Source, common: dict[str, Any],
                             opts: dict[str, Any]) -> Metric:
        extra = {**common, "function": METRIC_FUNCTIONS[name],
                 "probability": "softmax of the deployed network's scores",
                 "class": f"{opts['target']}: {faithfulness.TARGETS[opts['target']]}"}
        if name == "deletion_auc":
            extra |= {"steps": opts["deletion_steps"], "substrate": (
                f"{opts['deletion_to']}: {faithfulness.SUBSTRATES[opts['deletion_to']]}")}
        elif name == "insertion_auc":
            extra |= {"steps": opts["deletion_steps"], "substrate": (
                f"{opts['insertion_from']}: {faithfulness.SUBSTRATES[opts['insertion_from']]}")}
        elif name.startswith("road"):
            extra |= {"percentiles": list(opts["road_percentiles"]),
                      "imputation": "NoisyLinearImputer (noise 0.01), torch seeded with the run's seed"}
        return Metric(f"{name}@{source.name}", float(np.mean(values)), METRICS.get(name).unit, extra)

    @staticmethod
    def _unavailable(metrics: list[Metric], missing: list[tuple[Source, dict[str, Any]]]) -> list[Metric]:
        """Null values ("n/a") for every metric the sources with maps got, for those without."""
        names = list(dict.fromkeys(m.name.split("@", 1)[0] for m in metrics)) or list(FAITHFULNESS)
        return [Metric(f"{name}@{source.name}", float("nan"), METRICS.get(name).unit, extra)
                for source, extra in missing for name in names]


def save_gallery_maps(path: Path, test: Inputs, shown: list[int], ranked: np.ndarray,
                      maps: dict[str, Optional[np.ndarray]], class_names: list[str]) -> Path:
    """The gallery's inputs (for display, in [0, 1]) and each source's maps as uint8 (a source
    without maps is all zeros, with ``available`` False)."""
    height, width = test.x.shape[-2:]
    empty = np.zeros((len(shown), height, width))
    images = [display_image(test.x[k])[0] for k in shown]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path, images=np.stack(images).astype(np.float16),
        maps=np.stack([(255 * (m if m is not None else empty)).round().astype(np.uint8)
                       for m in maps.values()]),
        sources=np.array(list(maps)), available=np.array([m is not None for m in maps.values()]),
        labels=test.y[shown].cpu().numpy(), predicted=ranked[shown, 0],
        ids=np.array([test.split.ids[test.indices[k]] for k in shown]),
        class_names=np.array(class_names))
    return path


TASKS.add("maps", MapsTask(),
          "opt-in (not in the default task list): each method's own map beside Grad-CAM, "
          "Grad-CAM++, Score-CAM and Layer-CAM (pytorch-grad-cam) of its deployed network and "
          "random/centre references: WSOL metrics, deletion/insertion AUC, ROAD, Average Drop",
          order=30, sources=DEFAULT_SOURCES, images=32, deletion_steps=16,
          deletion_to=faithfulness.DELETION_TO, insertion_from=faithfulness.INSERTION_FROM,
          target=faithfulness.TARGET, road_percentiles=(20, 50, 80), cam_curve_interval=0.01,
          classic_box_rule=CLASSIC_BOX_RULE)

__all__ = ["MapsTask", "Source", "parse_source", "select_inputs", "centre_map", "library_cam",
           "faithfulness_values"]
