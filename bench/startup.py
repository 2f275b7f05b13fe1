"""Check: start-up time of the light CLI commands (target: ``tuneforge plugins`` under 0.5 s).

Times ``tuneforge plugins``, ``tuneforge --help`` and ``tuneforge components`` as real
subprocesses of the installed console script (the one beside this interpreter, else the one on
PATH), and, measured the same way in the same run as the baseline, ``python -c pass``,
``python -c "import pandas"`` and ``python -c "import torch"``. Each command runs once to warm
the file cache, then ``--repeats`` times; the median wall time is printed with its ratio to
``python -c pass`` (the interpreter's own start-up) and to ``import pandas``.

    python bench/startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def tuneforge_script() -> str:
    """The console script of this interpreter's environment, else the one on PATH."""
    beside = Path(sys.executable).with_name("tuneforge")
    if beside.exists():
        return str(beside)
    found = shutil.which("tuneforge")
    if found is None:
        sys.exit("bench/startup.py: no `tuneforge` console script (pip install -e . first)")
    return found


def median_wall(cmd: list[str], repeats: int, env: dict[str, str]) -> float:
    """Median wall seconds of ``repeats`` runs of ``cmd`` (after one warm-up run)."""
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip().splitlines()
            sys.exit(f"bench/startup.py: {' '.join(cmd)} failed: {err[-1] if err else ''}")
        if i:  # the first run only warms the file cache
            times.append(wall)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    tf = tuneforge_script()
    py = sys.executable
    commands = {
        "python -c pass": [py, "-c", "pass"],
        "python -c 'import pandas'": [py, "-c", "import pandas"],
        "python -c 'import torch'": [py, "-c", "import torch"],
        "tuneforge plugins": [tf, "plugins"],
        "tuneforge --help": [tf, "--help"],
        "tuneforge components": [tf, "components"],
    }
    medians = {name: median_wall(cmd, args.repeats, env) for name, cmd in commands.items()}
    base = medians["python -c pass"]
    pandas = medians["python -c 'import pandas'"]
    print(f"median of {args.repeats} wall times ({os.cpu_count()} CPUs, {sys.version.split()[0]})")
    print(f"{'command':<28} {'seconds':>8} {'x pass':>8} {'x pandas':>9}")
    for name, t in medians.items():
        print(f"{name:<28} {t:>8.3f} {t / base:>8.2f} {t / pandas:>9.2f}")
    verdict = "ok" if medians["tuneforge plugins"] < 0.5 else "over the 0.5 s target"
    print(f"tuneforge plugins: {medians['tuneforge plugins']:.3f} s ({verdict})")


if __name__ == "__main__":
    main()
