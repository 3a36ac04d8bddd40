"""The shared ViT library: models, data, sharding, training core, checkpoints, evaluators."""
import os

# TensorFlow is imported only by TFDS and TensorBoard writers; keep its C++ start-up chatter
# off the console unless the user asked for it.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')  # TF does no compute here.
