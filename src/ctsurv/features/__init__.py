"""From CT files to what the models read: preprocessing (:mod:`~ctsurv.features.preprocess`, the MONAI
pipeline with its disk cache), the cohort's volumes streamed from that cache (:mod:`~ctsurv.features.store`)
and frozen-encoder features (:mod:`~ctsurv.features.extract`)."""

from ctsurv.features.extract import Volumes, cells_all, encode_all, preprocess_all
from ctsurv.features.preprocess import Preprocessor
from ctsurv.features.store import VolumeStore, volume_store

__all__ = ["Preprocessor", "VolumeStore", "Volumes", "cells_all", "encode_all", "preprocess_all", "volume_store"]
