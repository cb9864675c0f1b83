"""ood-bench: out-of-distribution robustness under spurious correlations.

MNIST digits are composited onto CIFAR-10 backgrounds so that, in training,
the background alone predicts the label. Methods are pluggy plugins; the
harness owns data, splits, training budget, evaluation, storage and tables.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ood-bench")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
