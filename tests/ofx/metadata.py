"""Checks MLT's description of the DPIR Restore filter (`melt -query filter=openfx.org.dpir.Restore`): what
Kdenlive builds its panel from.

    metadata.py QUERY.yml NAME=TYPE:DEFAULT:TITLE ...

Each NAME must be a parameter of that type, default and title; exit status 1 otherwise.
"""

import sys

import yaml


def main() -> int:
    with open(sys.argv[1]) as text:
        described = yaml.safe_load(text)
    parameters = {p["identifier"]: p for p in described.get("parameters", [])}
    failed = 0
    for expectation in sys.argv[2:]:
        name, spec = expectation.split("=", 1)
        kind, default, title = spec.split(":", 2)
        p = parameters.get(name)
        found = p and (str(p.get("type")), str(p.get("default")), str(p.get("title")))
        if found != (kind, default, title):
            print(f"FAILED: {name} is described as {found}, expected {(kind, default, title)}")
            failed = 1
    if not failed:
        print(f"MLT describes {', '.join(a.split('=')[0] for a in sys.argv[2:])} as expected")
    return failed


if __name__ == "__main__":
    sys.exit(main())
