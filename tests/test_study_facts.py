"""The README's numbers about the published study are what scripts/study_facts.py prints from its CSVs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_readme_quotes_what_the_script_prints():
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "study_facts.py")], capture_output=True, text=True,
                         check=True, timeout=300).stdout
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for printed, quoted in [
        ("amazon_a: +0.94 [+0.02, +1.87] p = 0.048", "[+0.02, +1.87], p = 0.048"),
        ("mean over datasets: +0.25 [-0.35, +0.85] p = 0.320", "[−0.35, +0.85], p = 0.32"),
        ("detectable with 80% power: 0.8 points; seeds per split for 1 point: 3", "0.8 points"),
        ("mean over datasets: +1.23 [+0.24, +2.22] p = 0.023", "+1.23 points ([+0.24, +2.22], p = 0.023)"),
        ("mean over datasets: +0.40 [-0.17, +0.98] p = 0.129", "+0.40 points over ERM ([−0.17, +0.98], p = 0.13)"),
        ("mean over datasets: +0.39 [+0.07, +0.70] p = 0.023", "+0.39 over\nwinning tickets ([+0.07, +0.70]"),
        ("30% balanced: (pruned heads, pruned FFN blocks) of doge/doge-nc/random tickets: [(41, 1)]",
         "`balanced` 41 heads and 1 block"),
        ("30% proportional: (pruned heads, pruned FFN blocks) of doge/doge-nc/random tickets: [(17, 2)]",
         "`proportional` prunes 17 heads and 2 FFN blocks"),
        ("pruning >= 80% of the 72 heads: 1 {('amazon_a', 2, 'winning-global', 0.3): 64}", "pruned 64 of the 72 heads"),
        ("= 10.8 h over 3 splits", "10.8 hours"),
    ]:
        assert printed in out, printed
        assert quoted in readme, quoted
