"""The level-follow benchmark's model: the rule it reads is the profile's, and the two policies differ
where they must (a miner ramping over a week; a load growing over a day)."""

from __future__ import annotations

import sys

from support.helpers import ROOT

sys.path.insert(0, str(ROOT / "bench"))

import level_follow


def test_the_model_uses_the_profiles_rule_and_the_policies_differ_on_slow_ramps() -> None:
    threshold, datapoints = level_follow.rule()
    assert (threshold, datapoints) == (20.0, 2)  # known-process-cpu of the built-in profile
    fast = level_follow.simulate(10.0, 10.0, 60.0, 600.0, tau=None)
    assert fast is not None and fast < 600.0
    week = level_follow.WEEK
    assert level_follow.simulate(10.0, 10.0, 60.0, week, tau=None) is not None  # frozen: caught
    assert level_follow.simulate(10.0, 10.0, 60.0, week, tau=level_follow.DAY) is None  # followed: missed
    assert level_follow.simulate(40.0, 40.0, 70.0, level_follow.DAY, tau=level_follow.DAY) is None
    assert level_follow.simulate(40.0, 40.0, 70.0, 600.0, tau=None) is not None
