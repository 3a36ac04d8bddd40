"""The shared ViT library: models, data, sharding, training core, checkpoints, evaluators."""
import os

# TensorFlow is imported only by TFDS and TensorBoard writers; keep its C++ start-up chatter
# off the console unless the user asked for it (3: also its errors, e.g. a TensorBoard flush on
# a full disk, which the training loop reports in one line of its own).
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')  # TF does no compute here.
