"""The README's main command: the toy demo trains and reports sample quality."""

import re

from cmjax import demo


def test_demo_trains_and_reports_better_samples(capsys):
    assert demo.main(["--distribution", "two_moons", "--steps", "300"]) == 0
    out = capsys.readouterr().out
    assert "two independent data draws" in out
    rows = re.findall(r"(\d)-step samples: init ([\d.]+) -> trained \(EMA\) ([\d.]+)", out)
    assert [r[0] for r in rows] == ["1", "2"]
    for _, before, after in rows:
        assert float(after) < float(before)
