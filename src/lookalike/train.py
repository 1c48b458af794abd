"""Training a small embedding head for a new domain, on top of a frozen base model, and exporting both as
one ONNX graph that lookalike uses like any other model.

The base model's features are computed once, into a lookalike index in the user cache (so a second run,
with other settings, embeds nothing). The head is a linear projection to `dim` dimensions with a
classifier on top that exists only for training: softmax cross-entropy (the reference's recipe) or ArcFace
(an additive angular margin on normalised weights, a metric-learning loss). Training stops early when the
validation loss has not improved for `patience` epochs; the best checkpoint is kept. The report's P@k and
mAP are measured on a third split, the test images, which neither training nor early stopping saw. The exported graph is
the base graph (fp32) with the head appended: pixels in, L2-normalised embedding out; the model directory
also holds lookalike-model.json (dims, preprocessing, classes, metrics), which is what makes the directory a
model name (`--model MODEL_DIR`). torch is imported here only, and only to train.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lookalike.errors import BadInput, MissingDependency, NotFound, UsageError
from lookalike.evaluation.metrics import folder_labels
from lookalike.evaluation.protocol import evaluate_vectors, index_dataset
from lookalike.fileio import atomic_path, temporary_name
from lookalike.images import absolute
from lookalike.models.registry import SPEC_FILE, ModelSpec, resolve_spec

LOSSES = ("softmax", "arcface")


@dataclass
class TrainSettings:
    base: str = "efficientnet-lite0"
    dim: int = 128
    hidden: int = 512  # 0: a linear projection; else a hidden layer of this width (BatchNorm, ReLU, dropout)
    loss: str = "softmax"
    epochs: int = 300
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    val: float = 0.2  # share of each class that validates early stopping
    test: float = 0.2  # share of each class kept for the report: used by neither training nor early stopping
    patience: int = 15
    seed: int = 0
    k: int = 10  # P@k of the evaluation on the test split
    exclude: tuple[str, ...] = ()  # class folders left out (e.g. Caltech101's BACKGROUND_Google)


@dataclass
class TrainReport:
    classes: list[str]
    train_images: int
    val_images: int
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    val_accuracy: float
    seconds: float
    feature_seconds: float
    base: dict = field(default_factory=dict)  # P@k / mAP of the frozen base features on the test split
    trained: dict = field(default_factory=dict)  # the same with the trained head
    skipped: list[tuple[str, str]] = field(default_factory=list)
    val_paths: list[str] = field(default_factory=list)
    test_images: int = 0
    test_paths: list[str] = field(default_factory=list)


def _torch():
    try:
        import torch
    except ImportError:
        raise MissingDependency("training needs torch: pip install torch==2.13.0 'lookalike[train]'") from None
    return torch


# -- data ----------------------------------------------------------------------------------------------------

def base_features(dataset: Path, base: ModelSpec, progress: Callable[[int, int], None] | None = None,
                  exclude: tuple[str, ...] = ()):
    """(paths, labels, unit features float32 [n, d], failures, seconds embedding): from an index in the user cache
    that is built once per dataset folder and base model, and brought up to date on later runs. Classes in
    `exclude` are neither embedded nor returned."""
    from lookalike.index import Index
    from lookalike.models.files import cache_dir

    key = hashlib.sha256(f"{dataset} {json.dumps(base.fingerprint(), sort_keys=True)}".encode()).hexdigest()[:16]
    path = cache_dir() / "features" / f"{dataset.name}-{key}.lookalike"
    with Index.open(path, model=base, create=True) as index:
        summary = index_dataset(index, dataset, exclude=exclude, progress=progress)
        ids, vectors = index.vectors()
        files = index.files(ids)
        failures = index.failures()
    paths = [files[int(i)].path for i in ids]
    labels = folder_labels(paths, dataset)
    keep = np.array([label.split("/")[0] not in exclude for label in labels], bool)
    return ([p for p, k in zip(paths, keep, strict=True) if k], [lab for lab, k in zip(labels, keep, strict=True) if k],
            vectors[keep], [(p, e) for p, e in failures if Path(p).relative_to(dataset).parts[0] not in exclude],
            summary.seconds)


def split(labels: list[str], val: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified: each class keeps the same share in validation (at least one image where it has two)."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    codes = np.array(labels)
    for name in sorted(set(labels)):
        members = rng.permutation(np.flatnonzero(codes == name))
        n_val = min(len(members) - 1, max(1, round(val * len(members)))) if len(members) > 1 else 0
        held += members[:n_val].tolist()
        train += members[n_val:].tolist()
    return np.sort(np.array(train, np.int64)), np.sort(np.array(held, np.int64))


# -- the head ------------------------------------------------------------------------------------------------

def make_head(torch, in_dims: int, dim: int, classes: int, loss: str, hidden: int = 0):
    nn: Any = torch.nn  # torch is imported lazily (an extra): its classes are Any here

    class Head(nn.Module):
        """Unit features -> a unit embedding of `dim` dims. Normalising the input too makes the graph the
        same whether it is fed the base model's raw pooled features or the unit ones."""

        def __init__(self):
            super().__init__()
            if hidden:
                self.project = nn.Sequential(nn.Linear(in_dims, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                             nn.Dropout(0.2), nn.Linear(hidden, dim))
            else:
                self.project = nn.Linear(in_dims, dim)

        def forward(self, features):
            x = nn.functional.normalize(features, dim=1)
            return nn.functional.normalize(self.project(x), dim=1)

    class Softmax(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(dim, classes)

        def forward(self, embedding, labels):
            return self.fc(embedding)

    class ArcFace(nn.Module):
        """cos(theta + m) for the true class, cos(theta) for the others, times s (Deng et al., 2019)."""

        def __init__(self, s: float = 30.0, m: float = 0.3):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(classes, dim) * 0.01)
            self.s, self.m = s, m

        def forward(self, embedding, labels):
            cosine = embedding @ nn.functional.normalize(self.weight, dim=1).T
            if labels is None:
                return self.s * cosine
            theta = torch.acos(cosine.clamp(-1 + 1e-6, 1 - 1e-6))
            target = torch.cos(theta + self.m)
            onehot = nn.functional.one_hot(labels, classes).bool()
            return self.s * torch.where(onehot, target, cosine)

    return Head(), (ArcFace() if loss == "arcface" else Softmax())


EpochProgress = Callable[[int, float, float, float], None]  # (epoch, train loss, val loss, val accuracy)


def train_head(features: np.ndarray, codes: np.ndarray, train_rows: np.ndarray, val_rows: np.ndarray,
               n_classes: int, settings: TrainSettings, progress: EpochProgress | None = None):
    """Train; returns (head with the best weights, epochs run, best epoch, best val loss, val accuracy)."""
    torch = _torch()
    torch.manual_seed(settings.seed)
    head, classifier = make_head(torch, features.shape[1], settings.dim, n_classes, settings.loss, settings.hidden)
    params = [*head.parameters(), *classifier.parameters()]
    optimiser = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    x_train = torch.from_numpy(features[train_rows])
    y_train = torch.from_numpy(codes[train_rows])
    x_val = torch.from_numpy(features[val_rows])
    y_val = torch.from_numpy(codes[val_rows])
    generator = torch.Generator().manual_seed(settings.seed)
    best: tuple[float, int, dict[str, Any] | None, float] = (math.inf, 0, None, 0.0)
    epoch = 0
    for epoch in range(1, settings.epochs + 1):
        head.train()
        classifier.train()
        order = torch.randperm(len(x_train), generator=generator)
        total, correct, seen = 0.0, 0, 0
        for start in range(0, len(order), settings.batch_size):
            rows = order[start:start + settings.batch_size]
            logits = classifier(head(x_train[rows]), y_train[rows])
            loss = torch.nn.functional.cross_entropy(logits, y_train[rows])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(rows)
            correct += int((logits.argmax(1) == y_train[rows]).sum())
            seen += len(rows)
        head.eval()
        classifier.eval()
        with torch.no_grad():
            if len(x_val):
                val_logits = classifier(head(x_val), y_val)
                val_loss = float(torch.nn.functional.cross_entropy(val_logits, y_val))
                val_acc = float((classifier(head(x_val), None).argmax(1) == y_val).float().mean())
            else:
                val_loss, val_acc = total / seen, correct / seen
        if progress:
            progress(epoch, total / seen, val_loss, val_acc)
        if val_loss < best[0] - 1e-4:
            best = (val_loss, epoch, {k: v.clone() for k, v in head.state_dict().items()}, val_acc)
        elif epoch - best[1] >= settings.patience:
            break
    head.load_state_dict(best[2])
    head.eval()
    return head, epoch, best[1], best[0], best[3]


# -- export --------------------------------------------------------------------------------------------------

def export_model(head, base: ModelSpec, out: Path, classes: list[str], report: TrainReport,
                 settings: TrainSettings) -> Path:
    """Write out/model.onnx (base graph + head: pixels in, unit embedding out) and out/lookalike-model.json."""
    torch = _torch()
    import onnx
    from onnx import compose

    from lookalike.models.files import model_file

    base_fp32 = ModelSpec(**{**asdict(base), "precision": "fp32", "mean": tuple(base.mean), "std": tuple(base.std)})
    base_graph = onnx.load(str(model_file(base_fp32)))
    feature_output = base.output or base_graph.graph.output[0].name
    out.mkdir(parents=True, exist_ok=True)
    head_path = temporary_name(out / "head.onnx")
    dummy = torch.zeros(1, base.dims)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(head, (dummy,), str(head_path), input_names=["features"], output_names=["embedding"],
                          dynamic_axes={"features": {0: "batch"}, "embedding": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    head_graph = compose.add_prefix(onnx.load(str(head_path)), "head/")
    head_path.unlink()
    head_graph.ir_version = base_graph.ir_version
    merged = compose.merge_models(base_graph, head_graph, io_map=[(feature_output, "head/features")],
                                  outputs=["head/embedding"])
    onnx.checker.check_model(merged)
    target = out / "model.onnx"
    with atomic_path(target) as partial:
        onnx.save(merged, str(partial))
    spec = {
        "format": "lookalike-model", "name": out.name, "dims": settings.dim, "input_size": base.input_size,
        "mean": list(base.mean), "std": list(base.std), "output": "head/embedding",
        "base": base.name, "classes": classes, "loss": settings.loss, "settings": asdict(settings),
        "metrics": {"base": report.base, "trained": report.trained, "best_epoch": report.best_epoch,
                    "best_val_loss": report.best_val_loss, "val_accuracy": report.val_accuracy,
                    "train_images": report.train_images, "val_images": report.val_images,
                    "test_images": report.test_images},
        "created_at": time.time(),
    }
    (out / SPEC_FILE).write_text(json.dumps(spec, indent=2))
    return target


def train(dataset: str | Path, out: str | Path, settings: TrainSettings | None = None, *,
          feature_progress: Callable[[int, int], None] | None = None,
          epoch_progress: EpochProgress | None = None,
          steps: Callable[[str, int, int | None], None] | None = None) -> TrainReport:
    """Train a head on a labelled folder dataset (one folder per class) and export it to `out`. `steps` hears
    the one-off waits (the base model's export on first use; see pipeline.Steps)."""
    settings = settings or TrainSettings()
    if settings.loss not in LOSSES:
        raise UsageError(f"--loss must be one of {', '.join(LOSSES)}, not {settings.loss!r}")
    if not 0.0 < settings.val < 1.0:
        raise UsageError(f"--val is the share of images held out, between 0 and 1, not {settings.val}")
    if not 0.0 < settings.test < 1.0 or settings.val + settings.test >= 1.0:
        raise UsageError(f"--test is the share of images kept for the report, above 0 and below 1 - --val, not "
                         f"{settings.test}")
    dataset = absolute(dataset)
    if not dataset.is_dir():
        raise NotFound(f"dataset folder not found: {dataset}")
    _torch()
    empty = [p.name for p in sorted(dataset.iterdir())
             if p.is_dir() and p.name not in settings.exclude and not any(p.iterdir())]
    from lookalike.models.embedder import Embedder

    base = Embedder(resolve_spec(settings.base, precision="fp32"), steps=steps).spec  # with an ONNX file's dims
    started = time.perf_counter()
    paths, labels, features, failures, feature_seconds = base_features(dataset, base, feature_progress,
                                                                       tuple(settings.exclude))
    classes = sorted({label for label in labels if label})
    if len(classes) < 2:
        raise BadInput(f"{dataset} has {len(classes)} class folder(s) with images: training needs at least 2 "
                             "(one folder per class)")
    keep = np.array([bool(label) for label in labels])  # images loose in the dataset root have no class
    paths = [p for p, k in zip(paths, keep, strict=True) if k]
    labels = [lab for lab, k in zip(labels, keep, strict=True) if k]
    features = features[keep]
    codes = np.array([classes.index(label) for label in labels], np.int64)
    rest, test_rows = split(labels, settings.test, settings.seed)
    fit_rows, val_in_rest = split([labels[i] for i in rest], settings.val / (1.0 - settings.test), settings.seed)
    train_rows, val_rows = rest[fit_rows], rest[val_in_rest]
    head, epochs_run, best_epoch, best_loss, val_acc = train_head(features, codes, train_rows, val_rows,
                                                                   len(classes), settings, epoch_progress)
    report = TrainReport(classes, len(train_rows), len(val_rows), epochs_run, best_epoch, best_loss, val_acc,
                         time.perf_counter() - started, feature_seconds,
                         skipped=[(p, e) for p, e in failures] + [(str(dataset / e), "empty class folder")
                                                                  for e in empty],
                         val_paths=[paths[i] for i in val_rows], test_images=len(test_rows),
                         test_paths=[paths[i] for i in test_rows])
    if len(test_rows) > 1:
        test_labels = [labels[i] for i in test_rows]
        trained = embed_with_head(head, features[test_rows])
        for name, vectors in (("base", features[test_rows]), ("trained", trained)):
            result = evaluate_vectors(vectors, test_labels, k=settings.k)
            setattr(report, name, {f"p_at_{settings.k}": result.p_at_k, "map": result.map,
                                   f"recall_at_{settings.k}": result.recall_at_k})
    export_model(head, base, Path(out), classes, report, settings)
    (Path(out) / "report.json").write_text(json.dumps(asdict(report), indent=2))
    return report


def embed_with_head(head, features: np.ndarray) -> np.ndarray:
    torch = _torch()
    with torch.no_grad():
        return head(torch.from_numpy(np.ascontiguousarray(features, np.float32))).numpy()
