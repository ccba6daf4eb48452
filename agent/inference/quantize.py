"""Static int8 quantization of an ONNX classifier, checked against its float source.

``quantize(...)`` reads a float model through its card, calibrates ONNX Runtime's
static int8 quantizer on images preprocessed exactly as the card says, holds a
share of the images aside, and compares the int8 model with the float one on
those held-out images:

* top-1 agreement on all held-out images,
* top-1 agreement on the images where the float model is confident
  (softmax >= 0.5): the figure the threshold applies to by default, because
  near-tie inputs (float top-2 within a hair) flip on any perturbation and say
  nothing about the quantization (see docs/models.md),
* float top-1 contained in the int8 top-5.

It also times both models with the same session options, interleaved.  When the
chosen agreement figure is under the threshold nothing is written and
:class:`~agent.errors.QuantizationRefusedError` says why; otherwise the model
and a card beside it are written atomically.

Every figure is measured on *this* CPU, and ONNX Runtime's int8 arithmetic
depends on the CPU class (:mod:`agent.inference.cpu_class`): the report names
the class and its features, the card records the figure under that class, and
:func:`fleet_warnings` says when the gate ran on arithmetic the fleet does not
use.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from agent.errors import BackendUnavailableError, ConfigError, ModelError, QuantizationRefusedError
from agent.inference.cards import ClassificationDecoder, InputSpec, LoadedCard, load_card
from agent.inference.cpu_class import ARITHMETIC_TEXT, CpuClass, detect
from agent.inference.quantize_card import int8_card, percent

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
Metric = Literal["confident", "all", "top5"]
METRICS: tuple[Metric, ...] = ("confident", "all", "top5")
CONFIDENT = 0.5  # float softmax at or above this counts as a confident input
MIN_CALIBRATION = 1
SPLIT_SEED = 0


@dataclass(frozen=True)
class Recipe:
    """How to quantize.  The defaults are the recipe chosen for the shipped model (docs/models.md).

    ``reduce_range`` (7-bit weights) keeps x86 without VNNI exact: its u8 x s8 kernel sums pairs
    of products in a saturating int16, which 8-bit weights overflow and 7-bit ones cannot
    (2 * 255 * 64 < 32768), so every CPU class computes the same integers.
    """

    quant_format: Literal["qdq", "qoperator"] = "qdq"
    activation_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["uint8", "int8"] = "int8"
    per_channel: bool = True
    reduce_range: bool = True
    calibrate_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    percentile: float = 99.999
    exclude_nodes: tuple[str, ...] = ()
    pre_process: bool = True  # onnxruntime.quantization.shape_inference.quant_pre_process


@dataclass(frozen=True)
class Agreement:
    holdout: int
    top1_all: float
    confident: int  # held-out inputs with float softmax >= CONFIDENT
    top1_confident: float | None  # None when no held-out input is confident
    top5_contains: float
    top1_confident_ci95: tuple[float, float] = (0.0, 1.0)  # Wilson interval of top1_confident


@dataclass
class Report:
    """Everything one quantization run measured (also the --json output)."""

    card: str
    out: str
    written: bool
    metric: Metric
    threshold: float
    calibration_images: int
    agreement: Agreement
    fp32_ms: float
    int8_ms: float
    speedup: float
    fp32_bytes: int
    int8_bytes: int
    threads: int
    recipe: Recipe
    cpu: str = ""  # cpu_class name of the machine every figure was measured on
    cpu_features: list[str] = field(default_factory=list)
    arithmetic: str = ""  # its int8 kernel family (cpu_class.ARITHMETIC_TEXT)
    eval_set: str = ""
    int8_sha256: str = ""
    out_card: str = ""
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def value(self) -> float | None:
        return metric_value(self.agreement, self.metric)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["recipe"]["exclude_nodes"] = list(self.recipe.exclude_nodes)
        data["metric_value"] = self.value
        return data


Progress = Callable[[str, int], Callable[[int], None]]


def _no_progress(_description: str, _total: int) -> Callable[[int], None]:
    return lambda _n: None


# ----------------------------------------------------------------------------- images


def list_images(calib_dir: Path) -> list[Path]:
    """The images in a calibration directory, sorted by name; a clear error when there are none."""
    if not calib_dir.exists():
        raise ConfigError(
            f"calibration directory {calib_dir} does not exist",
            hint="pass --calib DIR with images (jpg/png) like the ones the model will see",
        )
    if not calib_dir.is_dir():
        raise ConfigError(
            f"calibration path {calib_dir} is not a directory", hint="pass a directory of images"
        )
    images = sorted(p for p in calib_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise ConfigError(
            f"calibration directory {calib_dir} has no images ({', '.join(IMAGE_SUFFIXES)})",
            hint="put representative images in it; tests/data/calib has a small example set",
        )
    return images


def holdout_count(total: int, holdout: float) -> int:
    """Number of images held aside: a fraction in (0, 1) or a count >= 1."""
    if holdout <= 0 or math.isnan(holdout):
        raise ConfigError(f"--holdout must be a fraction in (0, 1) or a count >= 1, got {holdout:g}")
    n = round(total * holdout) if holdout < 1 else int(holdout)
    if holdout >= 1 and holdout != int(holdout):
        raise ConfigError(f"--holdout count must be a whole number, got {holdout:g}")
    if n < 1 or total - n < MIN_CALIBRATION:
        raise ConfigError(
            f"--holdout {holdout:g} leaves {total - n} of {total} images for calibration and {n} held out",
            hint="both sets need at least one image; add images or change --holdout",
        )
    return n


def split_images(images: Sequence[Path], holdout: float) -> tuple[list[Path], list[Path]]:
    """(calibration, held-out): a fixed-seed shuffle of the sorted names, so the split is reproducible."""
    n = holdout_count(len(images), holdout)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    shuffled = [images[int(i)] for i in order]
    return sorted(shuffled[n:]), sorted(shuffled[:n])


def load_tensors(paths: Sequence[Path], spec: InputSpec, advance: Callable[[int], None]) -> list[np.ndarray]:
    from agent.inference.preprocess import Preprocessor

    prep = Preprocessor(spec)
    tensors = []
    for path in paths:
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise ConfigError(
                f"calibration image {path} cannot be read as an image", hint="remove or replace it"
            )
        tensors.append(prep(frame).tensor)
        advance(1)
    return tensors


# ----------------------------------------------------------------------------- runtime


def _ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise BackendUnavailableError(
            "onnxruntime is not installed", hint="pip install onnxruntime (it is a dependency of edgeproof)"
        ) from exc
    return onnxruntime


def _require_quantize_extra() -> None:
    """onnxruntime's quantization pre-processing needs ``onnx`` and ``sympy`` (the ``quantize`` extra)."""
    missing = [name for name in ("onnx", "sympy") if importlib.util.find_spec(name) is None]
    if missing:
        raise BackendUnavailableError(
            f"quantization needs {' and '.join(missing)}, which is not installed",
            hint="pip install 'edgeproof[quantize]'",
        )


def session(model: Path | bytes, threads: int) -> Any:
    """A CPU session with the options used for every timing here (default graph optimisations)."""
    ort = _ort()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise ModelError(f"onnxruntime cannot load the model: {exc}") from exc


def run_all(
    sess: Any, name: str, tensors: Sequence[np.ndarray], advance: Callable[[int], None]
) -> np.ndarray:
    outputs = []
    for tensor in tensors:
        outputs.append(np.asarray(sess.run(None, {name: tensor})[0]).reshape(-1))
        advance(1)
    return np.stack(outputs)


def time_pair(
    a: Any,
    b: Any,
    name: str,
    tensors: Sequence[np.ndarray],
    rounds: int,
    per_round: int,
    advance: Callable[[int], None] = lambda _n: None,
) -> tuple[float, float]:
    """Median ms per inference of two sessions, timed in interleaved rounds (alternating order)."""
    for sess in (a, b):
        for tensor in tensors[:3]:
            sess.run(None, {name: tensor})
    times: tuple[list[float], list[float]] = ([], [])
    k = 0
    for r in range(rounds):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for which in order:
            sess = (a, b)[which]
            start = time.perf_counter()
            for i in range(per_round):
                sess.run(None, {name: tensors[(k + i) % len(tensors)]})
            times[which].append((time.perf_counter() - start) * 1000.0 / per_round)
        k += per_round
        advance(1)
    return statistics.median(times[0]), statistics.median(times[1])


# ----------------------------------------------------------------------------- agreement


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def agreement(fp32_scores: np.ndarray, int8_scores: np.ndarray, *, apply_softmax: bool) -> Agreement:
    """Compare two (N, classes) score arrays: top-1 all, top-1 where float is confident, top-5 containment."""
    p32 = softmax(fp32_scores) if apply_softmax else fp32_scores
    p8 = softmax(int8_scores) if apply_softmax else int8_scores
    top1_32 = p32.argmax(axis=1)
    top1_8 = p8.argmax(axis=1)
    same = top1_32 == top1_8
    confident = p32.max(axis=1) >= CONFIDENT
    k = min(5, p8.shape[1])
    top5 = np.argsort(-p8, axis=1, kind="stable")[:, :k]
    contains = (top5 == top1_32[:, None]).any(axis=1)
    n_conf = int(confident.sum())
    hits = int(same[confident].sum())
    return Agreement(
        holdout=len(same),
        top1_all=float(same.mean()),
        confident=n_conf,
        top1_confident=hits / n_conf if n_conf else None,
        top5_contains=float(contains.mean()),
        top1_confident_ci95=wilson_interval(hits, n_conf),
    )


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (default 95%); (0.0, 1.0) when ``n`` is 0.

    Chosen over the normal approximation because the figures sit near 100%, where that
    interval overshoots 1 and collapses to a point at 100%.
    """
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes} outside 0..{n}")
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def metric_value(figures: Agreement, metric: Metric) -> float | None:
    if metric == "confident":
        return figures.top1_confident
    if metric == "all":
        return figures.top1_all
    return figures.top5_contains


METRIC_TEXT = {
    "confident": "top-1 agreement where fp32 softmax >= 0.5",
    "all": "top-1 agreement on all held-out images",
    "top5": "fp32 top-1 in int8 top-5",
}


# ----------------------------------------------------------------------------- quantization


class _Reader:
    """onnxruntime CalibrationDataReader over preprocessed tensors."""

    def __init__(self, name: str, tensors: Sequence[np.ndarray], advance: Callable[[int], None]) -> None:
        self._items: Iterator[np.ndarray] = iter(tensors)
        self._name = name
        self._advance = advance

    def get_next(self) -> dict[str, np.ndarray] | None:
        item = next(self._items, None)
        if item is None:
            return None
        self._advance(1)
        return {self._name: item}

    def rewind(self) -> None:  # part of the reader protocol; one pass is all we need
        pass


def quantize_file(
    fp32_path: Path,
    out_path: Path,
    input_name: str,
    calibration: Sequence[np.ndarray],
    recipe: Recipe,
    advance: Callable[[int], None] = lambda _n: None,
) -> None:
    """Run onnxruntime's static quantizer with ``recipe``; writes ``out_path``."""
    _ort()
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if recipe.pre_process:
        _require_quantize_extra()
    source = fp32_path
    with tempfile.TemporaryDirectory(prefix="edgeproof-quant-") as tmp:
        if recipe.pre_process:
            source = Path(tmp) / "pre.onnx"
            quant_pre_process(str(fp32_path), str(source), skip_symbolic_shape=False)
        reader = _Reader(input_name, calibration, advance)
        CalibrationDataReader.register(_Reader)
        types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
        methods = {
            "minmax": CalibrationMethod.MinMax,
            "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile,
        }
        extra: dict[str, Any] = {}
        if recipe.calibrate_method == "percentile":
            extra["CalibPercentile"] = recipe.percentile
        quantize_static(
            str(source),
            str(out_path),
            reader,
            quant_format=QuantFormat.QDQ if recipe.quant_format == "qdq" else QuantFormat.QOperator,
            per_channel=recipe.per_channel,
            reduce_range=recipe.reduce_range,
            activation_type=types[recipe.activation_type],
            weight_type=types[recipe.weight_type],
            nodes_to_exclude=list(recipe.exclude_nodes) or None,
            calibrate_method=methods[recipe.calibrate_method],
            extra_options=extra,
        )


def _classification(loaded: LoadedCard) -> ClassificationDecoder:
    card = loaded.card
    if card.format != "onnx":
        raise ConfigError(
            f"card {loaded.path} describes a {card.format} model; quantize takes an ONNX float model",
            hint="pass the card of the float32 .onnx model",
        )
    if card.input.dtype != "float32":
        raise ConfigError(
            f"card {loaded.path} input is {card.input.dtype}; quantize takes a float32 model",
            hint="pass the card of the float32 model, not of an already quantized one",
        )
    if not isinstance(card.decoder, ClassificationDecoder):
        raise ConfigError(
            f"card {loaded.path} has decoder kind '{card.decoder.kind}'; agreement is measured on "
            "classification models only",
            hint='use a card with [decoder] kind = "classification"',
        )
    return card.decoder


FLEET_ARITHMETIC = "arm-int32"  # the fleet: Raspberry Pi / Jetson / phones (aarch64)


def fleet_warnings(cpu: CpuClass, recipe: Recipe, fleet: str = FLEET_ARITHMETIC) -> list[str]:
    """What the gate's figure does not say about the fleet, measured on ``cpu`` with ``recipe``."""
    if cpu.arithmetic == fleet:
        return []
    head = (
        f"the agreement gate ran on {cpu.name} ({ARITHMETIC_TEXT[cpu.arithmetic]}); the fleet runs "
        f"{ARITHMETIC_TEXT[fleet]}"
    )
    if cpu.arithmetic == "x86-saturating-int16" and not recipe.reduce_range and recipe.weight_type == "int8":
        return [
            f"{head}. With 8-bit int8 weights this CPU saturates where the fleet does not, so the "
            "figures here are not the fleet's (and challenge sketches will not match across the two): "
            "use --reduce-range (the default) or --weight-type uint8"
        ]
    return [
        f"{head}. This recipe computes the same integers on both "
        "(no saturation), but only an aarch64 run proves it: make test-arm64"
    ]


def quantize(
    card_path: Path,
    calib_dir: Path,
    out: Path,
    *,
    eval_dir: Path | None = None,
    threshold: float = 0.95,
    holdout: float = 0.5,
    metric: Metric = "confident",
    recipe: Recipe | None = None,
    threads: int | None = None,
    rounds: int = 20,
    per_round: int = 10,
    produced_by: str = "",
    progress: Progress = _no_progress,
) -> Report:
    """Quantize the float model of ``card_path``; write ``out`` and its card only if it passes."""
    recipe = recipe or Recipe()
    if not threshold >= 0.0 or math.isnan(threshold):
        raise ConfigError(f"--threshold must be >= 0, got {threshold}")
    if metric not in METRICS:
        raise ConfigError(f"unknown agreement metric '{metric}'", hint=f"use one of: {', '.join(METRICS)}")
    loaded = load_card(card_path)
    decoder = _classification(loaded)
    out = Path(out)
    if out.suffix != ".onnx":
        raise ConfigError(f"--out {out} must end in .onnx", hint="e.g. --out models/my-model-int8.onnx")
    if out.resolve() == loaded.model_path:
        raise ConfigError(f"--out {out} is the float model itself; choose another file name")
    if not out.parent.is_dir():
        raise ConfigError(f"output directory {out.parent} does not exist", hint=f"mkdir -p {out.parent}")
    fp32_bytes = loaded.read_verified_model()
    spec = loaded.card.input
    images = list_images(calib_dir)
    calib_paths, holdout_paths = split_images(images, holdout)
    eval_set = f"{len(holdout_paths)} held out of {calib_dir} (seed {SPLIT_SEED})"
    if eval_dir is not None:
        holdout_paths = list_images(eval_dir)
        eval_set = f"{len(holdout_paths)} images of {eval_dir}{_source_note(eval_dir)}"
    threads = threads or os.cpu_count() or 1
    cpu = detect()
    log.info(
        "quantize split",
        extra={"calibration": len(calib_paths), "holdout": len(holdout_paths), "cpu": cpu.name},
    )

    tick = progress("preprocessing images", len(calib_paths) + len(holdout_paths))
    calib = load_tensors(calib_paths, spec, tick)
    held = load_tensors(holdout_paths, spec, tick)

    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out.stem}-", dir=out.parent))
    try:
        tmp_model = tmp_dir / out.name
        fp32_file = tmp_dir / "fp32.onnx"
        fp32_file.write_bytes(fp32_bytes)  # the verified bytes, not whatever is on disk now
        tick = progress("calibrating", len(calib))
        try:
            quantize_file(fp32_file, tmp_model, spec.name, calib, recipe, tick)
        except (ValueError, RuntimeError, KeyError) as exc:
            raise ModelError(f"onnxruntime could not quantize {loaded.model_path}: {exc}") from exc
        fp32_sess = session(fp32_bytes, threads)
        int8_sess = session(tmp_model, threads)
        tick = progress("comparing on held-out images", 2 * len(held))
        scores32 = run_all(fp32_sess, spec.name, held, tick)
        scores8 = run_all(int8_sess, spec.name, held, tick)
        figures = agreement(scores32, scores8, apply_softmax=decoder.softmax)
        tick = progress("timing fp32 vs int8", rounds)
        ms32, ms8 = time_pair(fp32_sess, int8_sess, spec.name, held, rounds, per_round, tick)
        int8_data = tmp_model.read_bytes()
        report = Report(
            card=str(card_path),
            out=str(out),
            written=False,
            metric=metric,
            threshold=threshold,
            calibration_images=len(calib),
            agreement=figures,
            fp32_ms=round(ms32, 3),
            int8_ms=round(ms8, 3),
            speedup=round(ms32 / ms8, 3) if ms8 > 0 else 0.0,
            fp32_bytes=len(fp32_bytes),
            int8_bytes=len(int8_data),
            threads=threads,
            recipe=recipe,
            cpu=cpu.name,
            cpu_features=list(cpu.features),
            arithmetic=cpu.arithmetic,
            eval_set=eval_set,
            warnings=fleet_warnings(cpu, recipe),
        )
        for warning in report.warnings:
            log.info("quantize gate arithmetic", extra={"warning": warning, "cpu": cpu.name})
        value = report.value
        if value is None or value < threshold:
            raise QuantizationRefusedError(_refusal(report), hint=_refusal_hint(report))
        report.int8_sha256 = hashlib.sha256(int8_data).hexdigest()
        card_out = out.with_suffix(".toml")
        card_text = int8_card(loaded, out, report, produced_by)
        tmp_card = tmp_dir / card_out.name
        tmp_card.write_text(card_text, encoding="utf-8")
        load_card(tmp_card)  # never write a card that does not load
        _fsync(tmp_model)
        _fsync(tmp_card)
        os.replace(tmp_model, out)
        os.replace(tmp_card, card_out)
        report.written = True
        report.out_card = str(card_out)
        return report
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _source_note(directory: Path) -> str:
    """`` (first line of DIR/SOURCE.txt)`` when the image directory says where it came from."""
    source = directory / "SOURCE.txt"
    if not source.is_file():
        return ""
    first = source.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    return f" ({first[0].strip()})" if first else ""


def _fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _refusal(report: Report) -> str:
    a = report.agreement
    value = report.value
    if value is None:
        head = (
            f"refused: none of the {a.holdout} held-out images has fp32 softmax >= {CONFIDENT}, "
            "so confident top-1 agreement cannot be measured"
        )
    else:
        head = (
            f"refused: {METRIC_TEXT[report.metric]} is {percent(value)}, "
            f"under the threshold {percent(report.threshold)}"
        )
    lo, hi = a.top1_confident_ci95
    return (
        f"{head} (all: {percent(a.top1_all)}, confident: {percent(a.top1_confident)} of {a.confident} "
        f"[95% CI {percent(lo)}-{percent(hi)}], top-5: {percent(a.top5_contains)}, {a.holdout} held-out "
        f"images, measured on {report.cpu}); {report.out} was not written"
    )


def _refusal_hint(report: Report) -> str:
    if report.value is None:
        return "add images the model recognises to the calibration directory, or use --metric all"
    return "calibrate on more representative images, keep sensitive layers in float (--exclude), or lower --threshold"


# ----------------------------------------------------------------------------- card
