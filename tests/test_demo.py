"""The README's 30-second look (``cmjax-demo``): the toy demo trains and reports sample quality."""

import re

from cmjax.cli import demo


def test_demo_trains_and_reports_better_samples(capsys):
    assert demo.COMMAND(["cmjax-demo", "--distribution=two_moons", "--steps=300"]) == 0
    out = capsys.readouterr().out
    assert "two independent data draws" in out
    rows = re.findall(r"(\d)-step samples: init ([\d.]+) -> trained \(EMA\) ([\d.]+)", out)
    assert [r[0] for r in rows] == ["1", "2"]
    for _, before, after in rows:
        assert float(after) < float(before)
