"""Scoring and using a trained model.

- ``metrics``: the confusion matrix (summed across ranks) and the one evaluation loop;
- ``predictors``: whole image, sliding window and flip / multi-scale TTA as model wrappers;
- ``logit_bias``: per-class logit biases fitted on the train split (calibrated class priors);
- ``onnx``: ONNX export and its parity check against PyTorch.
"""
