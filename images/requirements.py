"""Prints pyproject.toml's requirements with the named extras, one a line.

An image installs these in a layer of their own that only pyproject.toml invalidates,
so a change to the code rebuilds one small layer, not the whole dependency tree.

    python3 images/requirements.py backend > requirements.txt
"""

import sys
import tomllib

with open("pyproject.toml", "rb") as f:
    pyproject = tomllib.load(f)
project = pyproject["project"]
lines = [*pyproject["build-system"]["requires"], *project["dependencies"]]
for extra in sys.argv[1:]:
    lines += project["optional-dependencies"][extra]
print("\n".join(lines))
