"""The lab's picture and row (d)'s arithmetic, from data (integration/lab_experiment.py,
lab_report.py): sockperf's full log read back, medians, and the PNG matplotlib draws."""

from integration.lab_experiment import median, round_trips
from integration.lab_report import picture

# sockperf 3.x --full-log, as it writes it (two samples of a real run on this host)
FULL_LOG = """------------------------------
test was performed using the following parameters: --mps=50 --burst=1 --reply-every=1
------------------------------
packet, txTime(sec), rxTime(sec), latency(usec)
25, 2.867972908, 2.867979517, 3.305
26, 2.867979567, 2.867985527, 2980.5
------------------------------
"""


def test_round_trips_from_sockperf_full_log(tmp_path):
    log = tmp_path / "mice.csv"
    log.write_text(FULL_LOG)
    assert round_trips(log) == [0.0033, 2.9805]
    assert round_trips(tmp_path / "missing.csv") == []


def test_median_ignores_missing_rounds():
    assert median([3.0, None, 1.0, 2.0]) == 2.0
    assert median([1.0, 4.0]) == 2.5
    assert median([None]) is None


def test_picture_is_a_png_with_both_panels(tmp_path):
    t0 = 1_800_000_000.0
    report = {"experiment": {
        "bottleneck": "tbf rate 40mbit",
        "latency_cdf_ms": {"(a) alone": [0.3, 0.4, 0.5], "(b) beside the elephant": [5, 9, 14],
                           "(c) placed by ovsfoot": [0.3, 0.5], "(d) isolated on hv1": [0.4]},
        "elephant_started": t0,
        "elephant_mbits": [(t0 + i / 2, 38.0) for i in range(40)],
        "marks": [{"kind": "detection", "label": "detected (hv1)", "t": t0 + 1.5},
                  {"kind": "isolation", "label": "first isolated packet", "t": t0 + 1.51}],
        "windows": [(t0 + 2, t0 + 8, "d"), (t0 + 9, t0 + 15, "b")]}}
    png = picture(report, tmp_path / "lab-report.png")
    assert png == tmp_path / "lab-report.png"
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert picture({"experiment": {}}, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
