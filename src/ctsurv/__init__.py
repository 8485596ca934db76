"""ctsurv: a 3D-CT vision-language model and survival prediction from CT plus clinical data."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ctsurv")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"
