"""User-facing errors.

Everything that is the user's to fix (a bad file, a wrong column, a config typo) raises a
subclass of :class:`CtsurvError` with a message that says what is wrong, where, and how to
fix it. The CLI prints that message on one line and exits non-zero, without a traceback;
anything else is a bug and keeps its traceback.
"""


class CtsurvError(Exception):
    """Base class of errors caused by input the user can fix."""


class ConfigError(CtsurvError):
    """A config file or a key=value override is invalid."""


class VolumeError(CtsurvError):
    """A CT volume file or folder cannot be read as a 3D CT volume."""


class CohortError(CtsurvError):
    """A cohort table is malformed or inconsistent with the config."""
