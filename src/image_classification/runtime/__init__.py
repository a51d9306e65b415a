"""Where the model runs: the backend choice (ONNX Runtime or PyTorch), the ONNX export, the one
parity check between them, and the passes over many images.

Modules, each importing only those above it:

- :mod:`.choice`: the device, and the one rule that picks a backend (``runtime.backend``,
  ``predict.backend``);
- :mod:`.graphs`: what a batch of images computes (score, embedding, pooled features, patch
  vectors), in eager PyTorch and as exportable modules;
- :mod:`.export`: those modules as ONNX bytes, and what an export says about itself;
- :mod:`.backends`: predict's backends (ONNX Runtime, PyTorch channels_last, plain PyTorch);
- :mod:`.parity`: the one measure of how far ONNX Runtime is from PyTorch, and its tolerance;
- :mod:`.fast_path`: a pass's batches through ONNX Runtime, checked once against PyTorch;
- :mod:`.loader`: image files decoded and preprocessed in batches;
- :mod:`.extraction`: a frozen backbone over every image (train's feature cache);
- :mod:`.scoring`: a trained model or head over images or cached features.
"""
