"""What ``--interp-cache`` saves: the shipped specs run twice with nothing changed.

    python benchmarks/result_cache.py            # pytest model_specs/ twice; prints both times and the ratio

Both runs are ``pytest`` in a fresh process on a copy of ``model_specs/`` (snapshots included), with
a result cache folder of their own (``INTERP_ASSERT_RESULT_CACHE``, empty before the first run);
the converted SmolLM2 in the usual cache folder serves both, so the first run pays for measuring,
not for converting the GGUF file. The baseline is the first run of this same invocation, on this
machine and at this moment; the target is a second run at most 0.2x the first. Both runs must pass
with identical verdicts (the JUnit records are compared), and the second must take every
expectation from the cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET = 0.2


def run(folder: Path, cache: Path, junit: Path) -> tuple[float, str]:
    env = dict(os.environ, INTERP_ASSERT_RESULT_CACHE=str(cache), PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "pytest", str(folder / "model_specs"), "--interp-cache", "-p", "no:cacheprovider"]
    command += ["-q", f"--junitxml={junit}", "--interp-missing", "skip"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"pytest failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def verdicts(junit: Path) -> dict[str, tuple[str, str]]:
    found = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        properties = {p.get("name"): p.get("value") for p in case.iter("property")}
        outcome = "skipped" if case.find("skipped") is not None else "failed" if case.find("failure") else "passed"
        found[case.get("name", "")] = (outcome, str(properties.get("value", "")))
    return found


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="interp-cache-bench-") as temporary:
        root = Path(temporary)
        shutil.copytree(REPO / "model_specs", root / "model_specs")
        cache = root / "results"
        cache.mkdir(mode=0o700)
        first, _ = run(root, cache, root / "first.xml")
        second, out = run(root, cache, root / "second.xml")
        assert verdicts(root / "first.xml") == verdicts(root / "second.xml"), "the cached run must say the same"
        summary = next((line for line in out.splitlines() if "expectations held" in line), "")
        entries = sum(1 for _ in cache.rglob("*.json"))
        print(f"shipped specs (model_specs/), {len(verdicts(root / 'first.xml'))} items, {entries} cache entries")
        print(f"  first run  (empty cache):   {first:7.1f} s")
        print(f"  second run (nothing changed): {second:5.1f} s   [{summary.strip()}]")
        ratio = second / first
        print(f"  ratio second/first: {ratio:.3f} (target <= {TARGET}) -> {'ok' if ratio <= TARGET else 'MISSED'}")


if __name__ == "__main__":
    main()
