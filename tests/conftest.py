"""Shared fixtures: the real test data beside the checkout, and a quiet cache for abTEM calibrations."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# pytest-qt has loaded Qt by now: let the package keep triton out before torch is first imported
# (see napari_mx2_defects/learn/__init__.py)
import napari_mx2_defects.learn  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MX2_SHARED_DATA", ROOT.parent / "shared" / "data"))


def _need_shared() -> Path:
    if not SHARED.exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the shared test data at {SHARED}")
        pytest.skip(f"shared test data not found at {SHARED} (set MX2_SHARED_DATA)")
    return SHARED


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real vendor files and real MoS2 images)."""
    return _need_shared()


@pytest.fixture(scope="session", autouse=True)
def _calibration_cache(tmp_path_factory):
    """Keep abTEM calibrations for the whole session in one folder (unless the caller set one)."""
    if "MX2_DEFECTS_CACHE" not in os.environ:
        os.environ["MX2_DEFECTS_CACHE"] = str(tmp_path_factory.mktemp("calibrations"))
    yield


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Name every failure once more, one short line each, as the very last lines before the totals.

    On CI pytest prints each failure's whole message in its short summary (a byte comparison can
    fill thousands of lines), and only the end of the log may be kept: this list keeps the names."""
    result = yield  # pytest's own summaries first (this wrapper is the outermost)
    failed = terminalreporter.stats.get("failed", []) + terminalreporter.stats.get("error", [])
    if not failed:
        return result
    terminalreporter.section("failures, one line each")
    for report in failed:
        try:
            message = report.longrepr.reprcrash.message
        except AttributeError:
            message = str(report.longrepr)
        first = next((line.strip() for line in str(message).splitlines() if line.strip()), "")
        terminalreporter.write_line(f"{report.when:>8} {report.nodeid}: {first[:200]}")
    return result
