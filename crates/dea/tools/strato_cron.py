#!/usr/bin/python3
"""The `cron:` scheduler of a Strato app: started by the DEA next to instance 0's start
command, it runs each crontab line (given as arguments) at its times, in the app dir with
the app's environment; its output and the jobs' go to the app's log.

STRATO_CRON_TICK_SECONDS (tests): check every N seconds instead of every minute, each
check counting as a new minute.
"""

import datetime
import os
import subprocess
import sys
import time

MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
NAMES = {
    "jan": 1, "feb": 2, "mar": 3, "apr": 4, "may": 5, "jun": 6,
    "jul": 7, "aug": 8, "sep": 9, "oct": 10, "nov": 11, "dec": 12,
    "sun": 0, "mon": 1, "tue": 2, "wed": 3, "thu": 4, "fri": 5, "sat": 6,
}
# (low, high) of minute, hour, day of month, month, day of week.
RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def number(text):
    return NAMES[text.lower()] if text.lower() in NAMES else int(text)


def parse_field(spec, low, high):
    values = set()
    for part in spec.split(","):
        step = 1
        if "/" in part:
            part, step_text = part.split("/", 1)
            step = int(step_text)
            if step < 1:
                raise ValueError("step must be at least 1")
        if part == "*":
            first, last = low, high
        elif "-" in part:
            first, last = (number(p) for p in part.split("-", 1))
        else:
            first = number(part)
            last = high if step > 1 else first
        if first < low or last > high or first > last:
            raise ValueError("%s is outside %d-%d" % (part, low, high))
        values.update(range(first, last + 1, step))
    return values


def parse_line(line):
    words = line.split()
    if words and words[0] in MACROS:
        words = MACROS[words[0]].split() + words[1:]
    if len(words) < 6:
        raise ValueError("needs five time fields and a command")
    fields = [parse_field(w, lo, hi) for w, (lo, hi) in zip(words[:5], RANGES)]
    if 7 in fields[4]:
        fields[4].add(0)
    restricted = (words[2] != "*", words[4] != "*")
    command = line.split(None, 5)[5] if not line.split()[0].startswith("@") else line.split(None, 1)[1]
    return fields, restricted, command


def due(job, now):
    (minutes, hours, days, months, weekdays), (dom_set, dow_set), _ = job
    if now.minute not in minutes or now.hour not in hours or now.month not in months:
        return False
    day_ok = now.day in days
    weekday_ok = (now.isoweekday() % 7) in weekdays
    if dom_set and dow_set:
        return day_ok or weekday_ok
    return day_ok and weekday_ok


def say(text):
    print("cron: " + text, flush=True)


def main():
    jobs = []
    for line in sys.argv[1:]:
        try:
            jobs.append(parse_line(line))
        except (ValueError, KeyError, IndexError) as e:
            say("skipping %r: %s" % (line, e))
    if not jobs:
        return
    tick = float(os.environ.get("STRATO_CRON_TICK_SECONDS") or 0)
    home = os.getcwd()
    running = []
    start = datetime.datetime.now().replace(second=0, microsecond=0)
    ticks = 0
    say("%d line(s) scheduled" % len(jobs))
    while True:
        if tick > 0:
            time.sleep(tick)
            ticks += 1
            now = start + datetime.timedelta(minutes=ticks)
        else:
            time.sleep(60 - time.time() % 60 + 0.05)
            now = datetime.datetime.now()
        matches = [job for job in jobs if due(job, now)]
        running = [p for p in running if p.poll() is None]
        for job in matches:
            command = job[2]
            say("running " + command)
            running.append(subprocess.Popen(["/bin/sh", "-c", command], cwd=home))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        pass
