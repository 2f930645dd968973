"""Runs a command with a pseudo-terminal as its stdin, stdout and stderr, the way a user at a
terminal would: waits for each prompt, types the answer, and reports what the terminal showed.

Usage: pty_run.py TIMEOUT_S CMD... -- PROMPT ANSWER [PROMPT ANSWER ...]
ANSWER is typed as given after Python escape processing ("s3cret\\r", "\\x03").

Prints one JSON object: {"code": exit status or null on timeout, "output": everything the
terminal showed, "echo": ECHO flag after exit, "icanon": ICANON flag after exit, "isig": ISIG
flag after exit}. The pty starts with the usual settings (echo, canonical mode, signals on), so
the flags show whether the command put the terminal back.
"""

import json
import os
import select
import subprocess
import sys
import termios
import time


def main():
    timeout = float(sys.argv[1])
    rest = sys.argv[2:]
    sep = rest.index("--")
    cmd, script = rest[:sep], rest[sep + 1 :]
    pairs = list(zip(script[0::2], script[1::2]))
    deadline = time.monotonic() + timeout

    master, slave = os.openpty()
    attrs = termios.tcgetattr(slave)
    attrs[3] |= termios.ECHO | termios.ICANON | termios.ISIG
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    proc = subprocess.Popen(
        cmd, stdin=slave, stdout=slave, stderr=slave, start_new_session=True, close_fds=True
    )
    out = b""

    def pump(wait):
        nonlocal out
        ready, _, _ = select.select([master], [], [], wait)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                return False
            out += chunk
            return bool(chunk)
        return True

    pos = 0  # just after the last prompt answered, so a repeated prompt is found anew
    for prompt, answer in pairs:
        needle = prompt.encode()
        while out.find(needle, pos) < 0 and time.monotonic() < deadline:
            if proc.poll() is not None and not select.select([master], [], [], 0)[0]:
                break
            pump(0.05)
        found = out.find(needle, pos)
        if found < 0:
            break  # the command ended or hung without asking: report what it showed
        pos = found + len(needle)
        os.write(master, answer.encode().decode("unicode_escape").encode("latin-1"))

    code = None
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            break
        pump(0.05)
    if code is None:
        proc.kill()
        proc.wait()
    # drain what is left on the terminal
    while select.select([master], [], [], 0.05)[0]:
        if not pump(0):
            break
    attrs = termios.tcgetattr(slave)
    print(
        json.dumps(
            {
                "code": code,
                "output": out.decode("utf-8", "replace"),
                "echo": bool(attrs[3] & termios.ECHO),
                "icanon": bool(attrs[3] & termios.ICANON),
                "isig": bool(attrs[3] & termios.ISIG),
            }
        )
    )


if __name__ == "__main__":
    main()
