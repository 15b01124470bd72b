"""Benchmark: how fast the ``vmtrust`` command starts, against ``python -c pass``.

Issue 17's target: ``vmtrust --help`` and ``vmtrust list verify`` (a signed
list of 1,000 images, the trust directory given in a configuration file) each
within 250 ms as a new process.  Every command runs ``--repeat`` times,
interleaved with the others and with ``python -c pass`` (the interpreter's own
start, the floor no change to vmtrust can go below), and the medians are
printed with their difference from that floor, the CPU time the processes used
(rusage, which other load on a shared machine disturbs less) and the load
average.

The processes run with their bytecode cached, as after ``pip install`` (which
compiles every module): ``PYTHONDONTWRITEBYTECODE`` is dropped from their
environment and ``PYTHONPYCACHEPREFIX`` points into the benchmark's temporary
directory, warmed by one run.  The project's environments set
``PYTHONDONTWRITEBYTECODE=1``, which makes every start compile vmtrust's own
modules from source again (20-30 ms more); ``--as-environment`` measures that.

It also times, in this process, what start-up is made of: reading the
``vmtrust.commands`` entry points (importlib.metadata scans every installed
distribution; only ``--help`` and plug-in commands pay it now) and the import
of each part ``list verify`` needs.

Usage: ``python benchmarks/startup.py [--repeat 21] [--as-environment]``
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vmtrust import devpki, imagelist, smime

sys.path.insert(0, str(Path(__file__).resolve().parent))
from verify import make_list  # the same 1,000-image list as benchmarks/verify.py

TARGET = 0.250  # seconds, per command


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _vmtrust() -> list[str]:
    """The installed ``vmtrust`` script next to this interpreter, as a user runs it."""
    script = Path(sys.executable).parent / "vmtrust"
    return [str(script)] if script.exists() else [sys.executable, "-m", "vmtrust"]


def _import_cost(statement: str, env: dict[str, str]) -> float:
    """Seconds a fresh interpreter spends on ``statement`` (its own clock, start excluded)."""
    code = (
        f"import time\nstart = time.perf_counter()\n{statement}\nprint(time.perf_counter() - start)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    return float(done.stdout.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=21, help="runs of each command")
    parser.add_argument(
        "--as-environment",
        action="store_true",
        help="keep this environment's PYTHONDONTWRITEBYTECODE (no bytecode cache)",
    )
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    )
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="vmtrust-startup-") as tmp:
        pki = devpki.DevPKI(Path(tmp))
        ca_dir = pki.install()
        signed = Path(tmp) / "bench.list"
        content = imagelist.dumps(make_list(pki, 1000))
        signed.write_bytes(smime.sign(content, pki.endorser.cert, pki.endorser.key))
        conf = Path(tmp) / "vmtrust.conf"
        conf.write_text(f"[trust]\nca_dir = {ca_dir}\n")
        vmtrust = _vmtrust()
        env = dict(os.environ)
        if not args.as_environment:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        commands = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "vmtrust --help": [*vmtrust, "--help"],
            "vmtrust list verify": [
                *vmtrust,
                "list",
                "verify",
                str(signed),
                "--config-file",
                str(conf),
            ],
        }
        for argv in commands.values():  # warm the caches (pages, bytecode); each must succeed
            subprocess.run(argv, check=True, capture_output=True, env=env)
        wall: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.repeat):
            for name, argv in commands.items():
                before = _children_cpu()
                start = time.perf_counter()
                subprocess.run(argv, check=True, capture_output=True, env=env)
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(_children_cpu() - before)

        parts = {
            "entry points (importlib.metadata + scan)": (
                "from importlib.metadata import entry_points; "
                "entry_points(group='vmtrust.commands')"
            ),
            "vmtrust.cli.main": "import vmtrust.cli.main",
            "vmtrust.verify (cryptography, asn1crypto, pyOpenSSL)": "import vmtrust.verify",
            "vmtrust.conf (oslo.config)": "import vmtrust.conf",
            "vmtrust.cli.listcmd (all list verify imports)": "import vmtrust.cli.listcmd",
        }
        costs = {
            label: statistics.median(_import_cost(statement, env) for _ in range(5))
            for label, statement in parts.items()
        }

    floor = statistics.median(wall["python -c pass"])
    cache = "no bytecode cache" if args.as_environment else "bytecode cached"
    print(f"\n{args.repeat} runs each, interleaved, medians ({' '.join(vmtrust)}; {cache})")
    print(f"  {'':<22} {'wall':>9} {'- python':>9} {'cpu':>9}")
    met = met_cpu = True
    for name in commands:
        median = statistics.median(wall[name])
        median_cpu = statistics.median(cpu[name])
        print(
            f"  {name:<22} {median * 1e3:6.1f} ms {(median - floor) * 1e3:6.1f} ms "
            f"{median_cpu * 1e3:6.1f} ms"
        )
        if name.startswith("vmtrust"):
            met = met and median <= TARGET
            met_cpu = met_cpu and median_cpu <= TARGET
    # Wall time is the target; with the machine's cores busy a process waits for one,
    # which its CPU time does not count: both are printed, with the load average.
    print(
        f"  target each vmtrust command <= {TARGET * 1e3:.0f} ms: "
        f"wall {'met' if met else 'NOT met'}, cpu {'met' if met_cpu else 'NOT met'}"
    )

    print("\nparts, in a fresh interpreter each (its own clock, medians of 5):")
    for label, cost in costs.items():
        print(f"  {label:<55} {cost * 1e3:6.1f} ms")
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
