"""Shared fixtures: the real CT files and labelled reports in ../shared (skipped with a reason when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from survival_setups import cohorts, pretrained, run  # noqa: F401 (session fixtures shared by several modules)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def realdata() -> Path:
    """Folder of real CT files (env CTSURV_REALDATA, default ../shared/realdata)."""
    path = Path(os.environ.get("CTSURV_REALDATA", ROOT.parent / "shared" / "realdata"))
    if not (path / "MANIFEST.md").is_file():
        pytest.skip(f"real CT files not found at {path}; set CTSURV_REALDATA to the shared/realdata folder")
    return path


@pytest.fixture(scope="session")
def labelled_reports() -> Path:
    """CSV of 800 real chest CT reports with 18 manual labels (env CTSURV_REPORTS, default ../shared/reports)."""
    path = Path(os.environ.get("CTSURV_REPORTS", ROOT.parent / "shared" / "reports")) / "ctrate_reports_labeled.csv"
    if not path.is_file():
        pytest.skip(f"labelled reports not found at {path}; set CTSURV_REPORTS to the shared/reports folder")
    return path
