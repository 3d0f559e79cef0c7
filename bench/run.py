"""Run every benchmark in bench/ (what `make bench` calls) and keep each one's output in bench/out/.

Usage: python bench/run.py [--quick] [NAME ...]
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    names = [a for a in argv if not a.startswith("-")]
    scripts = sorted(
        p for p in HERE.glob("*.py") if p.name != "run.py" and not p.name.startswith("_")
    )
    if names:
        scripts = [p for p in scripts if p.stem in names]
    out_dir = HERE / "out"
    out_dir.mkdir(exist_ok=True)
    failed = []
    for script in scripts:
        print(f"\n===== {script.stem} =====", flush=True)
        t0 = time.perf_counter()
        cmd = [sys.executable, str(script)] + (["--quick"] if quick else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        text = proc.stdout + (f"\n[stderr]\n{proc.stderr[-4000:]}" if proc.returncode else "")
        (out_dir / f"{script.stem}.txt").write_text(text)
        print(text, flush=True)
        print(
            f"({script.stem}: {time.perf_counter() - t0:.0f} s, exit {proc.returncode})", flush=True
        )
        if proc.returncode:
            failed.append(script.stem)
    if failed:
        print(f"\nbenchmarks that failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
