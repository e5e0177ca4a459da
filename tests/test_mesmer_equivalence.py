"""Optional: our torch Mesmer path equals deepcell's Keras model (random weights), via a real SavedModel.

Needs a separate Python with TensorFlow + deepcell 0.12.10 (+ torch, for `convert-mesmer`): by default
``.venv-tf/bin/python`` in the repository, or $CPDISTILLER_TF_PYTHON. Skipped when that is absent.
Set-up (Python 3.11): tensorflow-cpu==2.12.1 keras==2.12.0 tensorflow-addons==0.20.0 numpy==1.24.3
scikit-image scikit-learn pandas opencv-python-headless torch, and with --no-deps
--ignore-requires-python: deepcell==0.12.10 deepcell-toolbox==0.12.1 spektral. The script below stubs
the modules deepcell imports but that the model does not use (deepcell_tracking, deepcell.training).

What it checks, on a 1080 x 1080 site (36 tiles of 256 px):
1. deepcell's ``PanopticNet`` built as Mesmer is (resnet50, input (256, 256, 2), norm_method=None,
   location=True, semantic heads [1, 3, 1, 3], lite=True), weights randomised, saved as a SavedModel;
2. ``cpdistiller convert-mesmer`` converts that SavedModel (TensorFlow side);
3. our torch network's C5_reduced equals Keras' ``C5_reduced`` output on the same tiles, and the site
   features computed from either agree, to 1e-4 (relative to the largest magnitude).
"""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from cpdistiller_core.extractor.features import Extractor, FeatureSettings, pool_flatten, tile_view
from cpdistiller_core.extractor.run import WeightsSpec, load_model
from cpdistiller_core.extractor.tiling import TileGrid, tile_image, untile

REPO = Path(__file__).resolve().parents[1]
TF_PYTHON = Path(os.environ.get("CPDISTILLER_TF_PYTHON", REPO / ".venv-tf" / "bin" / "python"))

KERAS_SCRIPT = textwrap.dedent('''
    import sys, types
    import numpy as np

    # deepcell imports these at package import time; the model code does not use them.
    class _Stub(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return lambda *a, **k: None

    for name in ("deepcell_tracking", "deepcell_tracking.utils", "deepcell_tracking.trk_io",
                 "deepcell_tracking.test_utils", "deepcell_tracking.isbi_utils", "deepcell_tracking.metrics"):
        sys.modules[name] = _Stub(name)
    sys.modules["deepcell.training"] = _Stub("deepcell.training")

    import tensorflow as tf
    from deepcell.model_zoo.panopticnet import PanopticNet

    out_dir, tiles_file = sys.argv[1], sys.argv[2]
    tf.keras.utils.set_random_seed(0)
    model = PanopticNet("resnet50", input_shape=(256, 256, 2), norm_method=None,
                        num_semantic_classes=[1, 3, 1, 3], location=True, include_top=True, lite=True,
                        use_imagenet=False, interpolation="bilinear")
    rng = np.random.default_rng(0)
    for layer in model.layers:
        new = []
        for w in layer.weights:
            n = w.name
            if "moving_variance" in n:
                new.append(rng.uniform(0.5, 1.5, w.shape))
            elif "moving_mean" in n or "beta" in n or n.endswith("bias:0"):
                new.append(0.1 * rng.normal(size=w.shape))
            elif "gamma" in n:
                new.append(rng.uniform(0.5, 1.0, w.shape))
            else:
                fan_in = int(np.prod(w.shape[:-1]))
                new.append(rng.normal(size=w.shape) * np.sqrt(2.0 / fan_in))
        if new:
            layer.set_weights([x.astype("float32") for x in new])
    model.save(out_dir + "/MultiplexSegmentation", save_format="tf")
    feat = tf.keras.Model(model.input, model.get_layer("C5_reduced").output)
    tiles = np.load(tiles_file)                                   # [n, 2, 256, 256] channels first
    c5 = feat.predict(tiles.transpose(0, 2, 3, 1), batch_size=6, verbose=0)   # [n, 8, 8, 256]
    np.save(out_dir + "/keras_c5.npy", c5.transpose(0, 3, 1, 2))
    from cpdistiller_core.extractor.convert import convert_mesmer
    print(convert_mesmer(out_dir + "/MultiplexSegmentation", out_dir + "/mesmer.pt"))
''')


def _tf_available() -> bool:
    if not TF_PYTHON.is_file():
        return False
    probe = "import tensorflow, torch, deepcell_toolbox, importlib.util; " \
            "assert importlib.util.find_spec('deepcell')"
    r = subprocess.run([str(TF_PYTHON), "-c", probe], capture_output=True, env={**os.environ,
                       "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    return r.returncode == 0


@pytest.mark.slow
def test_torch_matches_keras_mesmer(tmp_path: Path) -> None:
    if not _tf_available():
        pytest.skip(f"TensorFlow + deepcell environment not found at {TF_PYTHON}")
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:1080, 0:1080] / 1080.0
    site = np.stack([np.sin(9 * yy) * np.cos(7 * xx), np.cos(5 * yy + 3 * xx)]) * 0.4 + 0.5
    site = (site + 0.05 * rng.random(site.shape)).astype(np.float32)          # [2, 1080, 1080] in [0, 1]
    grid = TileGrid.for_image(1080, 1080)
    tiles = tile_image(site, grid)                                             # [36, 2, 256, 256]
    np.save(tmp_path / "tiles.npy", tiles)
    script = tmp_path / "keras_side.py"
    script.write_text(KERAS_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([str(TF_PYTHON), str(script), str(tmp_path), str(tmp_path / "tiles.npy")],
                       capture_output=True, text=True, env=env, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    keras_c5 = torch.from_numpy(np.load(tmp_path / "keras_c5.npy"))
    model = load_model(WeightsSpec(path=str(tmp_path / "mesmer.pt")))
    ex = Extractor(model, FeatureSettings(batch_size=12))
    ours_c5 = ex.c5_reduced(tiles)
    scale = keras_c5.abs().max().item()
    c5_err = (ours_c5 - keras_c5).abs().max().item() / scale
    ours = ex.site_features(site)
    theirs = pool_flatten(untile(tile_view(keras_c5), grid), 16).numpy()
    feat_err = np.abs(ours - theirs).max() / np.abs(theirs).max()
    print(f"C5_reduced max |torch - keras| / max |keras| = {c5_err:.2e} (scale {scale:.3g}); "
          f"site features: {feat_err:.2e}; {ours.shape[0]} values")
    assert ours.shape == (1296,)
    assert c5_err < 1e-4 and feat_err < 1e-4
