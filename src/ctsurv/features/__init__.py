"""From CT files to what the models read: preprocessing (:mod:`~ctsurv.features.preprocess`, the MONAI
pipeline with its disk cache) and frozen-encoder features (:mod:`~ctsurv.features.extract`)."""

from ctsurv.features.extract import encode_all, preprocess_all
from ctsurv.features.preprocess import Preprocessor

__all__ = ["Preprocessor", "encode_all", "preprocess_all"]
