"""Convert Mesmer's Keras weights into the torch state dict of ``mesmer.MesmerC5Reduced``.

Sources:

* the ``MultiplexSegmentation`` SavedModel folder (what deepcell downloads with a DeepCell token):
  read with TensorFlow (any 2.x; only this step needs it) via ``tf.saved_model.load``, whose
  restored variables keep their Keras names (``conv2_block1_1_conv/kernel:0``); when those names
  are not available, the checkpoint ``SRC/variables/variables`` is read with
  ``tf.train.load_checkpoint`` and matched through ``keras_metadata.pb``.
* a Keras HDF5 weights/model file (``model.save_weights('x.h5')``): read with h5py, no TensorFlow.

Mapping (Keras layer ``L``, variable -> torch key ``layers.L.<name>``):

    Conv2D   kernel [kh, kw, in, out] -> weight [out, in, kh, kw]      bias -> bias
    BatchNorm gamma -> weight, beta -> bias, moving_mean -> running_mean, moving_variance -> running_var

Only the layers of the feature path (up to ``C5_reduced``) are taken; every one must be found.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from ..errors import CpDistillerError
from .mesmer import MesmerC5Reduced

BN_VARS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
CONV_VARS = {"kernel": "weight", "bias": "bias"}
FORMAT = "cpdistiller-mesmer-c5reduced-v1"


def expected_keras_variables(model: MesmerC5Reduced | None = None) -> dict[tuple[str, str], str]:
    """(Keras layer name, variable name) -> torch state-dict key, for every needed variable."""
    model = model or MesmerC5Reduced()
    out: dict[tuple[str, str], str] = {}
    for name, mod in model.layers.items():
        table = BN_VARS if isinstance(mod, torch.nn.BatchNorm2d) else CONV_VARS
        for kvar, tvar in table.items():
            out[(name, kvar)] = f"layers.{name}.{tvar}"
    return out


def keras_to_torch(arrays: Mapping[tuple[str, str], np.ndarray], source: str = "") -> dict[str, torch.Tensor]:
    """Keras (layer, variable) arrays -> torch state dict (conv kernels transposed, shapes checked)."""
    model = MesmerC5Reduced()
    own = model.state_dict()
    wanted = expected_keras_variables(model)
    missing = [f"{layer}/{var}" for (layer, var) in wanted if (layer, var) not in arrays]
    if missing:
        raise CpDistillerError(f"{source}: not the Mesmer (PanopticNet ResNet-50) model: {len(missing)} "
                               f"expected weights are missing, e.g. {missing[:3]}.")
    state: dict[str, torch.Tensor] = {}
    for (layer, var), key in wanted.items():
        a = np.asarray(arrays[(layer, var)], dtype=np.float32)
        if var == "kernel":
            a = a.transpose(3, 2, 0, 1)
        if tuple(a.shape) != tuple(own[key].shape):
            raise CpDistillerError(f"{source}: weight {layer}/{var} has shape {a.shape}, expected "
                                   f"{tuple(own[key].shape)} for Mesmer's network.")
        state[key] = torch.from_numpy(np.ascontiguousarray(a))
    return state


def torch_to_keras(state: Mapping[str, torch.Tensor]) -> dict[tuple[str, str], np.ndarray]:
    """The inverse mapping (to write Keras weights from a torch model, e.g. in tests)."""
    out = {}
    for (layer, var), key in expected_keras_variables().items():
        a = state[key].detach().cpu().numpy()
        out[(layer, var)] = a.transpose(2, 3, 1, 0) if var == "kernel" else a
    return out


_VAR_RE = re.compile(r"^(?:.*/)?(?P<layer>[^/]+)/(?P<var>kernel|bias|gamma|beta|moving_mean|moving_variance)(?::\d+)?$")


def _split_name(name: str) -> tuple[str, str] | None:
    m = _VAR_RE.match(name)
    return (m["layer"], m["var"]) if m else None


def read_h5(path: Path) -> dict[tuple[str, str], np.ndarray]:
    """Keras HDF5 weights (``save_weights`` / ``save`` .h5): layer groups -> arrays."""
    import h5py

    arrays: dict[tuple[str, str], np.ndarray] = {}
    try:
        with h5py.File(path, "r") as f:
            root = f["model_weights"] if "model_weights" in f else f

            def visit(name: str, obj) -> None:
                if isinstance(obj, h5py.Dataset):
                    key = _split_name(name)
                    if key:
                        arrays[key] = obj[()]

            root.visititems(visit)
    except OSError as exc:
        raise CpDistillerError(f"{path}: cannot read as HDF5 ({exc}).") from exc
    return arrays


def read_savedmodel(path: Path) -> dict[tuple[str, str], np.ndarray]:
    """Variables of a Keras SavedModel folder, by Keras layer name (needs TensorFlow)."""
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise CpDistillerError(
            "converting a SavedModel needs TensorFlow (any 2.x), for this step only: "
            "pip install tensorflow-cpu, then run convert-mesmer again."
        ) from exc
    if not (path / "saved_model.pb").is_file():
        raise CpDistillerError(f"{path}: not a SavedModel folder (no saved_model.pb); give the unpacked "
                               "MultiplexSegmentation folder that holds saved_model.pb and variables/.")
    arrays: dict[tuple[str, str], np.ndarray] = {}
    try:
        loaded = tf.saved_model.load(str(path))
        for v in getattr(loaded, "variables", []):
            key = _split_name(v.name)
            if key:
                arrays[key] = v.numpy()
    except Exception:  # fall back to the raw checkpoint
        arrays = {}
    if len(arrays) < len(expected_keras_variables()):
        arrays.update(_read_checkpoint(path, tf))
    return arrays


def _read_checkpoint(path: Path, tf) -> dict[tuple[str, str], np.ndarray]:
    """Checkpoint variables matched to layer names through keras_metadata.pb (object paths)."""
    reader = tf.train.load_checkpoint(str(path / "variables" / "variables"))
    names: dict[str, str] = {}
    meta_file = path / "keras_metadata.pb"
    if meta_file.is_file():
        try:
            from keras.protobuf import saved_metadata_pb2
        except ImportError:  # older TF bundles it
            from tensorflow.python.keras.protobuf import saved_metadata_pb2  # type: ignore
        meta = saved_metadata_pb2.SavedMetadata()
        meta.ParseFromString(meta_file.read_bytes())
        for node in meta.nodes:
            try:
                cfg = json.loads(node.metadata)
            except ValueError:
                continue
            if node.node_path.startswith("root.") and "name" in cfg:
                names[node.node_path[len("root."):].replace(".", "/")] = cfg["name"]
    arrays = {}
    for key in reader.get_variable_to_shape_map():
        m = re.match(r"^(?P<obj>.+)/(?P<var>kernel|bias|gamma|beta|moving_mean|moving_variance)/\.ATTRIBUTES/VARIABLE_VALUE$", key)
        if not m:
            continue
        layer = names.get(m["obj"])
        if layer:
            arrays[(layer, m["var"])] = reader.get_tensor(key)
    return arrays


def convert_mesmer(src: str | Path, dst: str | Path) -> dict:
    """Convert ``src`` (SavedModel folder or Keras .h5) and save ``{'format', 'source', 'state_dict'}``
    to ``dst`` with torch.save. Returns a summary (tensors, parameters)."""
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise CpDistillerError(f"{src}: not found (expected the MultiplexSegmentation SavedModel folder, "
                               "from DeepCell with your token or unpacked from MultiplexSegmentation-9.tar.gz, "
                               "or a Keras .h5 weights file; see docs/extractor.md).")
    arrays = read_savedmodel(src) if src.is_dir() else read_h5(src)
    state = keras_to_torch(arrays, str(src))
    model = MesmerC5Reduced()
    model.load_state_dict(state, strict=False)  # validates once more
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    torch.save({"format": FORMAT, "source": str(src), "state_dict": state}, tmp)
    tmp.replace(dst)
    return {"tensors": len(state), "parameters": int(sum(t.numel() for t in state.values())), "dst": str(dst)}
