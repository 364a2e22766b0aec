"""Run pytest as several processes at once, each on its share of the tests.

    python tests/shards.py N [PYTEST ARGUMENT ...]

``./test.sh --fast`` runs one shard per CPU (conftest.py's ``--shard K/N``
keeps every N-th test from the K-th), each with its own temporary directory,
and prints each shard's report once all have ended.  The exit status is the
first failing shard's (0 when every shard passed or had nothing to run).
Ctrl-C reaches every shard: they share this process's process group.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

#: pytest's exit status when a shard's share holds no test: not a failure.
NO_TESTS = 5


def main(argv: list[str]) -> int:
    count, args = int(argv[0]), argv[1:]
    with tempfile.TemporaryDirectory(prefix="pyrust-shards-") as scratch:
        shards = []
        for k in range(count):
            log = open(os.path.join(scratch, "shard%d.log" % k), "w+b")
            command = [sys.executable, "-m", "pytest", "--shard", "%d/%d" % (k, count),
                       "--basetemp", os.path.join(scratch, "tmp%d" % k)] + args
            shards.append((subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log))
        status = 0
        for k, (process, log) in enumerate(shards):
            code = process.wait()
            log.seek(0)
            sys.stdout.write("--- shard %d of %d (exit %d)\n" % (k + 1, count, code))
            sys.stdout.flush()
            sys.stdout.buffer.write(log.read())
            log.close()
            if code not in (0, NO_TESTS) and not status:
                status = code
        return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
