"""Shared by dbexport and dbshell: find a bound service in VCAP_SERVICES and build the
command line of its client. Passwords go through the environment, never argv."""
import glob
import json
import os
import sys

RELATIONAL = ("postgresql", "mysql")


def bound():
    """(label, name, credentials) of every bound service."""
    try:
        services = json.loads(os.environ.get("VCAP_SERVICES") or "{}")
    except ValueError:
        sys.exit("VCAP_SERVICES is not valid JSON")
    for label, items in services.items():
        for item in items:
            yield label, item.get("name", ""), item.get("credentials", {})


def pick(args, tool):
    """The service named in args, or the only database bound."""
    everything = list(bound())
    if len(args) > 1:
        sys.exit("usage: %s [SERVICE]" % tool)
    if args:
        for label, name, creds in everything:
            if name == args[0]:
                return label, name, creds
        names = ", ".join(n for _, n, _ in everything) or "none"
        sys.exit("%s: no bound service named %s (bound: %s)" % (tool, args[0], names))
    dbs = [s for s in everything if s[0] in RELATIONAL + ("redis",)]
    if len(dbs) == 1:
        return dbs[0]
    names = ", ".join(n for _, n, _ in dbs) or "none"
    sys.exit("usage: %s SERVICE (databases bound: %s)" % (tool, names))


def postgres_bin(program):
    """The newest PostgreSQL client of the host (the Debian wrapper needs files the
    container does not have)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/" + program),
                   key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return found[-1] if found else program


def client_command(label, creds, dump):
    env = dict(os.environ)
    host = creds.get("host") or creds.get("hostname")
    port = str(creds.get("port", ""))
    user = creds.get("username") or creds.get("user") or ""
    name = creds.get("name", "")
    password = creds.get("password", "")
    if label == "postgresql":
        env["PGPASSWORD"] = password
        program = postgres_bin("pg_dump" if dump else "psql")
        extra = ["--no-owner", "--no-privileges"] if dump else []
        return [program, "-h", host, "-p", port, "-U", user] + extra + [name], env
    if label == "mysql":
        env["MYSQL_PWD"] = password
        if dump:
            return ["mysqldump", "--single-transaction", "-h", host, "-P", port, "-u", user, name], env
        return ["mysql", "-h", host, "-P", port, "-u", user, name], env
    if label == "redis" and not dump:
        env["REDISCLI_AUTH"] = password
        return ["redis-cli", "-h", host, "-p", port], env
    return None, env
